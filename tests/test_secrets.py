"""The secret key never leaks: not in reprs, errors (nor aiohttp errors chained to them), logs or output."""

from __future__ import annotations

import copy
import io
import logging
import pickle
import re
import sys
import traceback
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from bulksend.errors import BulksendError, ConfigError, TemError
from bulksend.log import configure_logging
from bulksend.secret import Secret
from bulksend.tem import TemClient, TemSettings
from tests.test_tem_errors import (
    API_CASES,
    PROJECT_ID,
    Answer,
    CraftedTem,
    closed_port,
    crafted,  # noqa: F401  (fixture)
    send_request,
)

SECRET = "SCWSECRET-7f3e9a2c-d41b-4c8e-b5a0-1e2f3a4b5c6d"


def assert_no_secret(text: str) -> None:
    """Neither the key nor any 12-character piece of it (parsers quote truncated lines) is in ``text``."""
    for start in range(len(SECRET) - 11):
        assert SECRET[start : start + 12] not in text, text


class Leaks:
    """Collects every text a secret could hide in, and checks them all."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []

    def collect(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        self.events.append(dict(event))
        return event


def texts_of(err: BaseException) -> Iterator[str]:
    """repr, str, args and the formatted traceback of an error and of everything chained to it."""
    yield "".join(traceback.format_exception(err))
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield repr(current)
        yield str(current)
        yield repr(current.args)
        yield repr(getattr(current, "__dict__", {}))
        todo += [current.__cause__, current.__context__]


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at call time (pytest swaps it between test phases)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture
def leaks(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[Leaks]:
    """structlog configured to record every event dict and render to stderr; stdlib at DEBUG.

    Depends on ``capfd`` so that the rendered lines go to the captured stderr.
    """
    saved = structlog.get_config()
    found = Leaks()
    structlog.configure(
        processors=[
            found.collect,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    caplog.set_level(logging.DEBUG)
    try:
        yield found
    finally:
        structlog.configure(**saved)


async def catch(errors: list[BaseException], call: Callable[[], Any]) -> None:
    try:
        await call()
    except BulksendError as exc:
        errors.append(exc)
    else:
        raise AssertionError("the call was expected to fail")


def settings_for(url: str) -> TemSettings:
    return TemSettings(secret_key=Secret(SECRET), project_id=PROJECT_ID, api_url=url)


async def test_secret_never_leaks_from_any_tem_failure(
    crafted: CraftedTem,  # noqa: F811
    leaks: Leaks,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Every API error, transport failure and protocol error keeps the key out of errors, logs and output."""
    for case, (answer, *_rest) in API_CASES.items():
        crafted.answers[case] = answer
    crafted.answers["drop"] = Answer(drop=True)
    crafted.answers["hang"] = Answer(hang=True)
    crafted.answers["not-json"] = Answer(200, b"<html>", content_type="text/html")
    errors: list[BaseException] = []

    def broken_observer(kind: str, status: int, elapsed_s: float) -> None:
        raise RuntimeError("observer bug")

    settings = settings_for(crafted.url)
    async with TemClient(settings, timeout_s=0.2, on_response=broken_observer) as tem:
        for case in [*API_CASES, "drop", "hang", "not-json"]:
            await catch(errors, lambda case=case: tem.send_email(send_request(case)))  # type: ignore[misc]
            await catch(errors, lambda case=case: tem.get_email(case))  # type: ignore[misc]
        for text in (repr(tem), str(tem), repr(settings), str(settings), f"{settings.secret_key}"):
            assert_no_secret(text)
    async with TemClient(settings_for(f"http://127.0.0.1:{closed_port()}")) as tem:
        await catch(errors, lambda: tem.list_emails())
        await catch(errors, lambda: tem.cancel_email("e1"))

    assert crafted.seen
    assert all(s.headers["X-Auth-Token"] == SECRET for s in crafted.seen)
    kinds = {type(e).__name__ for e in errors}
    assert {"AuthenticationError", "RateLimitedError", "ServerError", "TemConnectionError"} <= kinds
    assert {"TemTimeoutError", "TemProtocolError", "InvalidArgumentsError"} <= kinds
    assert all(isinstance(e, TemError) for e in errors)
    for err in errors:
        for text in texts_of(err):
            assert_no_secret(text)
        assert SECRET.encode() not in pickle.dumps(err)

    assert leaks.events, "the client logs failures; the check below must have something to read"
    assert_no_secret(repr(leaks.events))
    assert_no_secret(caplog.text)
    for record in caplog.records:
        assert_no_secret(repr(record.args) + str(record.msg))
    out, err_text = capfd.readouterr()
    assert "tem.request_failed" in err_text  # the rendered structlog lines went to stderr
    assert_no_secret(out + err_text)


def config_failures(tmp_path: Path) -> Iterator[Callable[[], TemSettings]]:
    """Every way loading settings can fail while the secret key is at hand."""
    missing = str(tmp_path / "missing.yaml")
    yield lambda: TemSettings.load(env={"SCW_SECRET_KEY": SECRET, "SCW_CONFIG_PATH": missing})
    # A key pasted into the wrong variable must not be echoed back in the complaint.
    yield lambda: TemSettings.load(
        env={"SCW_SECRET_KEY": "k", "SCW_DEFAULT_PROJECT_ID": SECRET, "SCW_CONFIG_PATH": missing}
    )
    yield lambda: TemSettings.load(
        env={"SCW_DEFAULT_REGION": SECRET, "SCW_CONFIG_PATH": missing},
        secret_key=SECRET,
        project_id=PROJECT_ID,
    )
    yield lambda: TemSettings.load(
        env={"SCW_CONFIG_PATH": missing},
        secret_key="k",
        project_id=PROJECT_ID,
        api_url=f"https://user:{SECRET}@api.example",
    )
    bad_yaml = tmp_path / "bad.yaml"
    # The YAML parser quotes the offending line: make it the key's line.
    bad_yaml.write_text(f"default_project_id: {PROJECT_ID}\nsecret_key: {SECRET}: oops\n")
    yield lambda: TemSettings.load(env={"SCW_CONFIG_PATH": str(bad_yaml)})
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(f"secret_key: {SECRET}\nprofiles:\n  other:\n    secret_key: {SECRET}\n")
    yield lambda: TemSettings.load(env={"SCW_CONFIG_PATH": str(profiles), "SCW_PROFILE": "nope"})
    yield lambda: TemSettings.load(env={"SCW_CONFIG_PATH": str(profiles)})  # no project id


def test_secret_never_leaks_from_config_errors(
    tmp_path: Path, leaks: Leaks, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Each ConfigError (missing values, misplaced key, bad YAML, unknown profile) omits the key."""
    count = 0
    for load in config_failures(tmp_path):
        with pytest.raises(ConfigError) as info:
            load()
        count += 1
        for text in texts_of(info.value):
            assert_no_secret(text)
    assert count == 7
    assert_no_secret(repr(leaks.events) + caplog.text)
    out, err = capfd.readouterr()
    assert_no_secret(out + err)


def test_secret_wrapper_masks_every_rendering() -> None:
    """Secret shows ``Secret('****')`` in repr, str and format, compares by value, and reveals on demand."""
    secret = Secret(SECRET)
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>80}", "%s" % secret):  # noqa: UP031
        assert text == "Secret('****')"
    assert repr([secret]) == "[Secret('****')]"
    assert secret.reveal() == SECRET
    assert secret == Secret(SECRET)
    assert secret != Secret("other")
    assert secret != SECRET
    assert len({secret, Secret(SECRET)}) == 1
    assert bool(secret)
    assert not Secret("")
    assert Secret(secret).reveal() == SECRET
    assert copy.deepcopy(secret).reveal() == SECRET
    assert pickle.loads(pickle.dumps(secret)).reveal() == SECRET
    with pytest.raises(TypeError):
        Secret(123)  # type: ignore[arg-type]


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (so console logs use colours and Rich tracebacks)."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("fmt", "stream_type"), [("console", io.StringIO), ("console", _Terminal), ("json", io.StringIO)]
)
def test_logged_tracebacks_never_show_the_secret_held_in_a_local(
    fmt: str, stream_type: type[io.StringIO]
) -> None:
    """A traceback logged with log.exception (console, on a terminal or not, or JSON) shows no
    frame's local variables, so a secret key held in one (a header dict) stays out of the log."""
    stream = stream_type()
    configure_logging(fmt, "info", stream=stream)  # type: ignore[arg-type]

    def call_tem() -> None:
        headers = {"X-Auth-Token": SECRET}  # what a client frame holds
        raise RuntimeError(f"request failed with {len(headers)} header")

    try:
        call_tem()
    except RuntimeError:
        structlog.get_logger("test").exception("test.failed")
    text = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())
    assert "RuntimeError" in text
    assert "call_tem" in text  # a traceback was logged
    assert_no_secret(text)
