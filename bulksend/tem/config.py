"""TEM connection settings, loaded the way Scaleway tooling does.

Precedence, highest first: explicit arguments, environment (``SCW_SECRET_KEY``,
``SCW_DEFAULT_PROJECT_ID``, ``SCW_DEFAULT_REGION``, ``SCW_API_URL``), the selected profile of the
``scw`` config file, then defaults (region ``fr-par``, api_url ``https://api.scaleway.com``).

The ``scw`` config file (``SCW_CONFIG_PATH``, else ``$XDG_CONFIG_HOME/scw/config.yaml``, else
``~/.config/scw/config.yaml``) holds a default profile as top-level keys, named profiles under
``profiles:`` and the ``active_profile`` name; a named profile overrides the top-level keys one by
one. The profile is chosen by the ``profile`` argument, else ``SCW_PROFILE``, else
``active_profile``, else ``default``.

No message built here ever contains the secret key, not even a YAML parser's excerpt of the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bulksend.errors import ConfigError
from bulksend.secret import Secret

__all__ = [
    "CLI_OVERRIDES",
    "DEFAULT_API_URL",
    "DEFAULT_REGION",
    "ENV_API_URL",
    "ENV_CONFIG_PATH",
    "ENV_PROFILE",
    "ENV_PROJECT_ID",
    "ENV_REGION",
    "ENV_SECRET_KEY",
    "TemSettings",
    "default_config_path",
]

DEFAULT_REGION = "fr-par"
DEFAULT_API_URL = "https://api.scaleway.com"
API_PREFIX = "/transactional-email/v1alpha1/regions"

ENV_SECRET_KEY = "SCW_SECRET_KEY"
ENV_PROJECT_ID = "SCW_DEFAULT_PROJECT_ID"
ENV_REGION = "SCW_DEFAULT_REGION"
ENV_API_URL = "SCW_API_URL"
ENV_CONFIG_PATH = "SCW_CONFIG_PATH"
ENV_PROFILE = "SCW_PROFILE"

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_REGION = re.compile(r"^[a-z]{2,}-[a-z0-9-]+$")

# setting → (environment variable, scw config-file key)
_SOURCES: dict[str, tuple[str, str]] = {
    "secret_key": (ENV_SECRET_KEY, "secret_key"),
    "project_id": (ENV_PROJECT_ID, "default_project_id"),
    "region": (ENV_REGION, "default_region"),
    "api_url": (ENV_API_URL, "api_url"),
}

CLI_OVERRIDES: Mapping[str, str] = {
    "project_id": "pass --project-id",
    "region": "pass --region",
    "api_url": "pass --api-url",
}
"""How ``bulksend send`` lets a user override each setting, for error hints. The secret key has no
option on purpose (a command line is visible to every user of the machine), so none is named."""


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the ``scw`` config file is looked for, as the Scaleway CLI and SDKs do."""
    env = os.environ if env is None else env
    if env.get(ENV_CONFIG_PATH):
        return Path(env[ENV_CONFIG_PATH]).expanduser()
    xdg = env.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path("~/.config").expanduser()
    return base / "scw" / "config.yaml"


@dataclass(frozen=True, slots=True)
class TemSettings:
    """Everything needed to reach TEM. ``secret_key`` is a :class:`Secret`, so ``repr`` hides it."""

    secret_key: Secret
    project_id: str
    region: str = DEFAULT_REGION
    api_url: str = DEFAULT_API_URL

    @property
    def base_url(self) -> str:
        """Prefix of every TEM endpoint, e.g. ``https://api.scaleway.com/transactional-email/v1alpha1/regions/fr-par``."""
        return f"{self.api_url}{API_PREFIX}/{self.region}"

    @classmethod
    def load(
        cls,
        *,
        secret_key: str | Secret | None = None,
        project_id: str | None = None,
        region: str | None = None,
        api_url: str | None = None,
        env: Mapping[str, str] | None = None,
        config_path: str | os.PathLike[str] | None = None,
        profile: str | None = None,
        overrides: Mapping[str, str] = CLI_OVERRIDES,
    ) -> TemSettings:
        """Resolve the settings: explicit argument > environment > config-file profile > default.

        Raises :class:`ConfigError` naming the variable or option to set when the secret key or the
        project id is missing, or when a value, the config file or the requested profile is invalid.
        ``overrides`` says, per setting, how the caller's user overrides it (such as
        ``"pass --region"``); the hints name only those, so they never name an option that the
        caller does not have.
        """

        def hint(name: str) -> str:
            env_var = _SOURCES[name][0]
            return f"set {env_var} or {overrides[name]}" if name in overrides else f"set {env_var}"

        env = os.environ if env is None else env
        path_from = "config_path argument"
        if config_path is not None:
            path = Path(config_path).expanduser()
        else:
            path = default_config_path(env)
            path_from = ENV_CONFIG_PATH if env.get(ENV_CONFIG_PATH) else "default location"
        file_values = _profile_values(path, profile if profile else env.get(ENV_PROFILE) or None)

        explicit: dict[str, str | None] = {
            "secret_key": secret_key.reveal() if isinstance(secret_key, Secret) else secret_key,
            "project_id": project_id,
            "region": region,
            "api_url": api_url,
        }
        resolved: dict[str, str | None] = {}
        for name, (env_var, file_key) in _SOURCES.items():
            value = explicit[name]
            if not value:
                value = env.get(env_var) or None
            if not value:
                raw = file_values.get(file_key)
                value = str(raw) if raw not in (None, "") else None
            resolved[name] = value.strip() if isinstance(value, str) else None

        for name in ("secret_key", "project_id"):
            if not resolved[name]:
                file_key = _SOURCES[name][1]
                raise ConfigError(
                    f"no TEM {name.replace('_', ' ')}: {hint(name)} "
                    f"(or set {file_key} in the scw config file {path}, found via {path_from})"
                )
        project = resolved["project_id"] or ""
        if not _UUID.match(project):
            raise ConfigError(
                # The value is not echoed: a misplaced secret key must not end up in the message.
                f"the TEM project id is not a UUID: {hint('project_id')} with the Scaleway project id "
                "(Console → Project settings)"
            )
        region_value = resolved["region"] or DEFAULT_REGION
        if not _REGION.match(region_value):
            raise ConfigError(
                f"the TEM region is not a Scaleway region name: {hint('region')} "
                f"(TEM runs in {DEFAULT_REGION})"
            )
        url = (resolved["api_url"] or DEFAULT_API_URL).rstrip("/")
        if not url.startswith(("http://", "https://")) or "@" in url:
            # Credentials in a URL would be logged with it; the key goes in X-Auth-Token only.
            raise ConfigError(f"api url must be http(s)://host[:port] without credentials: {hint('api_url')}")
        return cls(
            secret_key=Secret(resolved["secret_key"] or ""),
            project_id=project,
            region=region_value,
            api_url=url,
        )


def _profile_values(path: Path, profile: str | None) -> dict[str, Any]:
    """The merged key/values of ``profile`` from the scw config file at ``path`` ({} if absent)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if profile and profile != "default":
            raise ConfigError(
                f"profile {profile!r} requested (--profile or {ENV_PROFILE}) but the scw config file "
                f"{path} does not exist: set {ENV_CONFIG_PATH} to the right file"
            ) from None
        return {}
    except OSError as exc:
        raise ConfigError(
            f"cannot read the scw config file {path} ({exc.strerror}): fix its permissions or set "
            f"{ENV_CONFIG_PATH}"
        ) from None
    where: str | None = None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The parser's message quotes the offending line, which may be the secret_key line: keep
        # only the position, and raise outside this block so the YAML error is not even kept as
        # __context__ (error reporters walk it).
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if where is not None:
        raise ConfigError(f"the scw config file {path} is not valid YAML{where}: fix it")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"the scw config file {path} must be a mapping of keys (scw config format)")

    values = {k: v for k, v in data.items() if k not in ("profiles", "active_profile")}
    name = profile or (str(data["active_profile"]) if data.get("active_profile") else None)
    if name and name != "default":
        profiles = data.get("profiles")
        chosen = profiles.get(name) if isinstance(profiles, Mapping) else None
        if not isinstance(chosen, Mapping):
            known = sorted(str(p) for p in profiles) if isinstance(profiles, Mapping) else []
            raise ConfigError(
                f"profile {name!r} not found in the scw config file {path}: set {ENV_PROFILE} to one of "
                f"{['default', *known]}"
            )
        # A named profile overrides the top-level (default) profile key by key, as scw does.
        values.update({k: v for k, v in chosen.items() if v not in (None, "")})
    return values
