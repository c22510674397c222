"""TemSettings.load: precedence, scw config profiles, and errors that say what to set."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from bulksend.cli import send
from bulksend.errors import ConfigError
from bulksend.secret import Secret
from bulksend.tem import TemSettings
from bulksend.tem.config import default_config_path

P_FILE = "11111111-1111-4111-8111-111111111111"
P_PROFILE = "22222222-2222-4222-8222-222222222222"
P_ENV = "33333333-3333-4333-8333-333333333333"
P_ARG = "44444444-4444-4444-8444-444444444444"

CONFIG = f"""
access_key: SCWXXXXXXXXXXXXXXXXX
secret_key: file-secret
default_project_id: {P_FILE}
default_region: nl-ams
api_url: https://file.example
active_profile: work
profiles:
  work:
    secret_key: work-secret
    default_project_id: {P_PROFILE}
  staging:
    secret_key: staging-secret
    api_url: https://staging.example/
  broken: just-a-string
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def env_for(path: Path, **extra: str) -> dict[str, str]:
    return {"SCW_CONFIG_PATH": str(path), **extra}


def test_defaults_apply_when_only_the_required_values_are_given(tmp_path: Path) -> None:
    """With only a key and a project (no file), region and api_url take their defaults."""
    settings = TemSettings.load(
        env={"SCW_CONFIG_PATH": str(tmp_path / "missing.yaml")}, secret_key="k", project_id=P_ARG
    )
    assert settings.region == "fr-par"
    assert settings.api_url == "https://api.scaleway.com"
    assert settings.base_url == ("https://api.scaleway.com/transactional-email/v1alpha1/regions/fr-par")
    assert settings.secret_key.reveal() == "k"


def test_active_profile_overrides_top_level_keys_one_by_one(config_file: Path) -> None:
    """The file's active profile wins over its top-level keys, which fill what the profile lacks."""
    settings = TemSettings.load(env=env_for(config_file))
    assert settings.secret_key.reveal() == "work-secret"
    assert settings.project_id == P_PROFILE
    assert settings.region == "nl-ams"
    assert settings.api_url == "https://file.example"


def test_scw_profile_selects_another_profile(config_file: Path) -> None:
    """SCW_PROFILE overrides the file's active_profile; a trailing slash of api_url is dropped."""
    settings = TemSettings.load(env=env_for(config_file, SCW_PROFILE="staging"))
    assert settings.secret_key.reveal() == "staging-secret"
    assert settings.project_id == P_FILE
    assert settings.api_url == "https://staging.example"


def test_profile_argument_beats_scw_profile(config_file: Path) -> None:
    """The ``profile`` argument wins over SCW_PROFILE; ``default`` means the top-level keys."""
    settings = TemSettings.load(env=env_for(config_file, SCW_PROFILE="staging"), profile="default")
    assert settings.secret_key.reveal() == "file-secret"
    assert settings.project_id == P_FILE


def test_environment_beats_the_config_file(config_file: Path) -> None:
    """SCW_* variables override every value of the selected profile."""
    env = env_for(
        config_file,
        SCW_SECRET_KEY="env-secret",
        SCW_DEFAULT_PROJECT_ID=P_ENV,
        SCW_DEFAULT_REGION="pl-waw",
        SCW_API_URL="http://127.0.0.1:8025",
    )
    settings = TemSettings.load(env=env)
    assert settings.secret_key.reveal() == "env-secret"
    assert settings.project_id == P_ENV
    assert settings.region == "pl-waw"
    assert settings.api_url == "http://127.0.0.1:8025"


def test_explicit_arguments_beat_the_environment(config_file: Path) -> None:
    """Explicit arguments win over environment and file; an empty environment value counts as unset."""
    env = env_for(config_file, SCW_SECRET_KEY="env-secret", SCW_DEFAULT_PROJECT_ID=P_ENV, SCW_API_URL="")
    settings = TemSettings.load(env=env, secret_key=Secret("arg-secret"), project_id=P_ARG, region="fr-par")
    assert settings.secret_key.reveal() == "arg-secret"
    assert settings.project_id == P_ARG
    assert settings.region == "fr-par"
    assert settings.api_url == "https://file.example"


def test_config_path_argument_beats_scw_config_path(config_file: Path, tmp_path: Path) -> None:
    """An explicit ``config_path`` is read instead of SCW_CONFIG_PATH."""
    other = tmp_path / "other.yaml"
    other.write_text(f"secret_key: other-secret\ndefault_project_id: {P_ARG}\n")
    settings = TemSettings.load(env=env_for(config_file), config_path=other)
    assert settings.secret_key.reveal() == "other-secret"
    assert settings.project_id == P_ARG


def test_default_config_path_follows_scw_conventions(tmp_path: Path) -> None:
    """SCW_CONFIG_PATH, then $XDG_CONFIG_HOME/scw, then ~/.config/scw locate config.yaml."""
    assert default_config_path({"SCW_CONFIG_PATH": "/x/c.yaml"}) == Path("/x/c.yaml")
    assert default_config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "scw" / "config.yaml"
    assert default_config_path({}) == Path("~/.config/scw/config.yaml").expanduser()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SCW_DEFAULT_PROJECT_ID": P_ENV}, "SCW_SECRET_KEY"),
        ({"SCW_SECRET_KEY": "k"}, "SCW_DEFAULT_PROJECT_ID"),
    ],
)
def test_missing_required_value_names_the_variable(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    """A missing secret key or project id raises ConfigError naming the variable and option to set."""
    env = {**env, "SCW_CONFIG_PATH": str(tmp_path / "none.yaml")}
    with pytest.raises(ConfigError) as info:
        TemSettings.load(env=env)
    message = str(info.value)
    assert f"set {variable}" in message
    assert "none.yaml" in message


def test_invalid_values_are_refused_with_the_variable_to_fix(tmp_path: Path) -> None:
    """A non-UUID project, a bad region or an api_url with credentials is a ConfigError naming the fix."""
    env = {"SCW_CONFIG_PATH": str(tmp_path / "none.yaml"), "SCW_SECRET_KEY": "k"}
    with pytest.raises(ConfigError, match="SCW_DEFAULT_PROJECT_ID"):
        TemSettings.load(env={**env, "SCW_DEFAULT_PROJECT_ID": "my-project"})
    with pytest.raises(ConfigError, match="SCW_DEFAULT_REGION"):
        TemSettings.load(env={**env, "SCW_DEFAULT_PROJECT_ID": P_ENV, "SCW_DEFAULT_REGION": "Paris!"})
    with pytest.raises(ConfigError, match="SCW_API_URL"):
        TemSettings.load(
            env={**env, "SCW_DEFAULT_PROJECT_ID": P_ENV, "SCW_API_URL": "https://u:p@api.example"}
        )
    with pytest.raises(ConfigError, match="SCW_API_URL"):
        TemSettings.load(env={**env, "SCW_DEFAULT_PROJECT_ID": P_ENV, "SCW_API_URL": "api.example"})


def test_unknown_or_malformed_profile_is_refused(config_file: Path) -> None:
    """Selecting a profile that is absent or not a mapping raises ConfigError listing the profiles."""
    with pytest.raises(ConfigError, match=r"profile 'nope' not found.*SCW_PROFILE.*'staging'"):
        TemSettings.load(env=env_for(config_file, SCW_PROFILE="nope"))
    with pytest.raises(ConfigError, match="profile 'broken'"):
        TemSettings.load(env=env_for(config_file), profile="broken")


def test_profile_without_a_config_file_is_refused(tmp_path: Path) -> None:
    """Asking for a named profile when the config file does not exist is a ConfigError."""
    with pytest.raises(ConfigError, match="does not exist"):
        TemSettings.load(
            env={"SCW_CONFIG_PATH": str(tmp_path / "none.yaml"), "SCW_SECRET_KEY": "k"}, profile="work"
        )


def test_invalid_yaml_gives_the_position_but_not_the_content(tmp_path: Path) -> None:
    """A YAML syntax error names the file and line, never quotes the file (it holds the key)."""
    path = tmp_path / "config.yaml"
    path.write_text("default_region: fr-par\nsecret_key: yaml-secret-value: oops\n")
    with pytest.raises(ConfigError) as info:
        TemSettings.load(env={"SCW_CONFIG_PATH": str(path)})
    assert "line 2" in str(info.value)
    assert "yaml-secret-value" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


def test_config_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    """A config file holding a list instead of keys is a ConfigError naming the file."""
    path = tmp_path / "config.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        TemSettings.load(env={"SCW_CONFIG_PATH": str(path)})


def test_empty_config_file_is_like_no_file(tmp_path: Path) -> None:
    """An empty config file contributes nothing; environment values still load."""
    path = tmp_path / "config.yaml"
    path.write_text("")
    settings = TemSettings.load(
        env={"SCW_CONFIG_PATH": str(path), "SCW_SECRET_KEY": "k", "SCW_DEFAULT_PROJECT_ID": P_ENV}
    )
    assert settings.project_id == P_ENV


def test_settings_repr_hides_the_secret(config_file: Path) -> None:
    """``repr``/``str`` of settings show the project and URL but mask the key."""
    settings = TemSettings.load(env=env_for(config_file))
    for text in (repr(settings), str(settings), f"{settings}"):
        assert "work-secret" not in text
        assert "Secret('****')" in text
        assert P_PROFILE in text


def _config_errors(tmp_path: Path, **load: object) -> list[str]:
    """The message of every ConfigError TemSettings.load gives for a missing or invalid setting."""
    base = {"SCW_CONFIG_PATH": str(tmp_path / "none.yaml")}
    ok = {**base, "SCW_SECRET_KEY": "k", "SCW_DEFAULT_PROJECT_ID": P_ENV}
    messages = []
    for env in (
        base,
        {**base, "SCW_SECRET_KEY": "k"},
        {**ok, "SCW_DEFAULT_PROJECT_ID": "my-project"},
        {**ok, "SCW_DEFAULT_REGION": "Paris!"},
        {**ok, "SCW_API_URL": "api.example"},
    ):
        with pytest.raises(ConfigError) as info:
            TemSettings.load(env=env, **load)  # type: ignore[arg-type]
        messages.append(str(info.value))
    return messages


def test_hints_name_only_options_bulksend_send_has(tmp_path: Path) -> None:
    """Every option a settings error tells the user to pass is an option of `bulksend send`
    (there is no --secret-key: the key comes from SCW_SECRET_KEY or the scw config file)."""
    parser = argparse.ArgumentParser()
    send.configure(parser)
    options = {opt for action in parser._actions for opt in action.option_strings}
    messages = _config_errors(tmp_path)
    named = {opt for message in messages for opt in re.findall(r"--[a-z][a-z-]*", message)}
    assert named, messages  # the hints do name options
    assert named <= options, named - options
    assert "SCW_SECRET_KEY" in messages[0]
    assert "--secret-key" not in messages[0]


def test_daemon_hints_name_its_config_file_not_command_line_options(tmp_path: Path) -> None:
    """With the daemon's overrides, the hints name the [api] keys of its config file, no option."""
    where = {key: f"set {key} in [api] of daemon.toml" for key in ("project_id", "region", "api_url")}
    messages = _config_errors(tmp_path, overrides=where)
    assert not any("--" in message for message in messages), messages
    assert "set project_id in [api] of daemon.toml" in messages[1]
    assert "set region in [api] of daemon.toml" in messages[3]
