"""The sandbox's request parsers against generated hostile input: they refuse, they never raise."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bulksend.sandbox import SandboxConfig, ThreadedSandbox, sandbox_in_thread
from bulksend.sandbox.request import CreateEmail, parse_create_email, parse_timestamp
from bulksend.tem.models import parse_rfc3339
from tests.strategies import extreme_times, json_values, odd_text, to_wire

PROJECT = "11111111-2222-4333-8444-555555555555"
VALID: dict[str, Any] = {
    "from": {"email": "news@example.com", "name": "News"},
    "to": [{"email": "ann@example.org", "name": "Ann"}],
    "subject": "Hello",
    "text": "Hi",
    "project_id": PROJECT,
}


@settings(max_examples=400, deadline=None)
@given(st.one_of(extreme_times, odd_text))
@example("9999-12-31T23:59:59-14:00")
@example("0001-01-01T00:00:00+14:00")
@example("9999-12-31 23:59:59 14:00")
def test_timestamps_parse_or_raise_value_error(value: str) -> None:
    """since, until and send_before either parse to a finite time or raise ValueError, and
    parse_rfc3339 gives a UTC time (or None for empty) or raises ValueError: nothing else."""
    with contextlib.suppress(ValueError):
        assert math.isfinite(parse_timestamp(value))
    with contextlib.suppress(ValueError):
        parsed = parse_rfc3339(value)
        assert parsed is None or parsed.utcoffset() == timedelta(0)


def _check_answer(body: bytes | None, data: Any) -> None:
    request, errors, refused = parse_create_email(
        body, data, default_project_id=PROJECT, allowed_from_domains=None
    )
    if request is None:
        assert errors, "a refused request says why"
        assert all(isinstance(arg, str) and isinstance(help_, str) and help_ for arg, help_ in errors)
    else:
        assert isinstance(request, CreateEmail)
        assert errors == []
        assert refused is False


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_body_is_answered_without_raising(data: Any) -> None:
    """Whatever JSON a client posts, the send parser answers: a request, or errors naming fields."""
    body = to_wire(data)
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return  # the handler answers "not valid JSON" before this parser
    _check_answer(body, decoded)


_FIELDS = st.sampled_from(
    [
        *("from", "to", "cc", "bcc", "subject", "text", "html", "project_id", "attachments"),
        *("send_before", "additional_headers"),
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(_FIELDS, json_values, max_size=4),
    st.one_of(odd_text, extreme_times),
    st.one_of(odd_text, st.just("X-Tag")),
)
@example({"send_before": "9999-12-31T23:59:59-14:00"}, "x", "X-Tag")
@example({}, "Hello G\x00", "X B")
def test_valid_request_with_hostile_fields_is_answered_without_raising(
    changes: dict[str, Any], text: str, header_name: str
) -> None:
    """A valid send with any field replaced by junk (or odd subject, names, headers) never raises."""
    data = {**VALID, **changes}
    _check_answer(None, data)
    for field, value in (
        ("subject", text),
        ("send_before", text),
        ("from", {"email": "news@example.com", "name": text}),
        ("to", [{"email": "ann@example.org", "name": text}]),
        ("additional_headers", [{"key": header_name, "value": text}]),
    ):
        _check_answer(None, {**VALID, field: value})


_SETTINGS = st.sampled_from(sorted(SandboxConfig.field_names()))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_SETTINGS, json_values, max_size=3))
@example({"secret_key": 5})
@example({"latency_ms": 1e308})
def test_sandbox_settings_from_json_are_checked_or_refused(changes: dict[str, Any]) -> None:
    """Settings as PATCH /_sandbox/config receives them give a usable config or a ValueError."""
    try:
        config = dataclasses.replace(SandboxConfig(), **changes)
    except ValueError:
        return
    assert isinstance(config.secret_key, str)
    assert config.latency_ms + config.latency_jitter_ms <= 2 * 600_000
    assert config.burst >= 1
    config.to_public_json()


# -- over HTTP: junk in the query or the body gets 200 or 400, never a 500 ------------------------

_PREFIX = "/transactional-email/v1alpha1/regions/fr-par"
_QUERY_NAMES = st.sampled_from(
    [
        *("page", "page_size", "since", "until", "order_by", "statuses", "flags", "search"),
        *("mail_from", "mail_rcpt", "mail_to", "subject", "message_id", "project_id", "domain_id"),
    ]
)
_QUERY_VALUES = st.one_of(
    odd_text, extreme_times, st.integers().map(str), st.sampled_from(["9" * 5000, "-0"])
)


@pytest.fixture(scope="module")
def threaded_sandbox() -> Iterator[ThreadedSandbox]:
    """One sandbox for every generated request (each example only reads or adds emails)."""
    with sandbox_in_thread(SandboxConfig(secret_key="s", project_id=PROJECT)) as sb:
        yield sb


def _call(url: str, *, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers={"X-Auth-Token": "s"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()  # the error is the response: it holds the connection open
        return int(exc.code)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_QUERY_NAMES, _QUERY_VALUES), max_size=4))
@example([("since", "9999-12-31T23:59:59-14:00")])
@example([("page", "9" * 5000), ("page_size", "\u0661")])
def test_list_and_statistics_answer_junk_queries_with_200_or_400(
    threaded_sandbox: ThreadedSandbox, params: list[tuple[str, str]]
) -> None:
    """Any query string on GET /emails and /statistics is answered 200 or 400, never 500."""
    query = urllib.parse.urlencode(params)
    for path in ("/emails", "/statistics"):
        assert _call(f"{threaded_sandbox.url}{_PREFIX}{path}?{query}") in (200, 400), (path, params)


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.builds(to_wire, json_values),
        st.binary(max_size=40),
        st.builds(lambda d: to_wire({**VALID, **d}), st.dictionaries(_FIELDS, json_values, max_size=3)),
    )
)
@example(to_wire({**VALID, "send_before": "9999-12-31T23:59:59-14:00"}))
@example(to_wire({**VALID, "subject": "Hello G\x00"}))
def test_send_answers_junk_bodies_with_200_or_400(threaded_sandbox: ThreadedSandbox, body: bytes) -> None:
    """Any POST /emails body is answered 200 or 400, never 500."""
    assert _call(f"{threaded_sandbox.url}{_PREFIX}/emails", data=body) in (200, 400), body[:80]
