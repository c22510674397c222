"""Every TEM error shape, and every transport failure, becomes the right bulksend error.

The answers are served by a tiny real aiohttp.web server on loopback and read through
:class:`TemClient`, so the whole path (HTTP → client → ``error_from_response``) is exercised.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from bulksend import errors
from bulksend.secret import Secret
from bulksend.tem import CreateEmailRequest, TemClient, TemProtocolError, TemSettings
from bulksend.tem.errors import error_from_response, parse_retry_after
from bulksend.tem.models import Address

PROJECT_ID = "11111111-2222-4333-8444-555555555555"
EMAIL_ID = "8c3a1f0e-7b55-4c8e-9a4b-0f3d3e8f2a61"
PREFIX = "/transactional-email/v1alpha1/regions/{region}"


# ---------------------------------------------------------------------------------------------
# A crafted TEM stand-in (also used by test_tem_client and test_secrets)
# ---------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """One crafted HTTP answer; ``hang`` waits until the server is released, ``drop`` cuts the line."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    hang: bool = False
    drop: bool = False

    @classmethod
    def json(cls, status: int, data: Any, headers: dict[str, str] | None = None) -> Answer:
        return cls(status=status, body=orjson.dumps(data), headers=headers or {})


@dataclass
class Seen:
    """A request as the server received it."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes


class CraftedTem:
    """A real HTTP server on loopback that answers each TEM endpoint with a crafted ``Answer``.

    The answer is chosen by case name: the email id for get/cancel, the ``subject`` of a send
    body, the ``subject`` query parameter of a list (else ``"list"``), ``"statistics"``.
    """

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.seen: list[Seen] = []
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(PREFIX + "/emails", self._send)
        app.router.add_get(PREFIX + "/emails", self._list)
        app.router.add_get(PREFIX + "/emails/{case}", self._by_id)
        app.router.add_post(PREFIX + "/emails/{case}/cancel", self._by_id)
        app.router.add_get(PREFIX + "/statistics", self._statistics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        # Release hanging handlers first, or cleanup would wait for them.
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def settings(self, secret: str = "s3cr3t-crafted") -> TemSettings:
        return TemSettings(secret_key=Secret(secret), project_id=PROJECT_ID, api_url=self.url)

    async def _record(self, request: web.Request) -> bytes:
        body = await request.read()
        self.seen.append(
            Seen(request.method, request.path, list(request.query.items()), dict(request.headers), body)
        )
        return body

    async def _answer(self, request: web.Request, case: str) -> web.StreamResponse:
        answer = self.answers.get(case)
        if answer is None:
            return web.Response(status=599, text=f"no crafted answer for {case!r}")
        if answer.hang:
            await self.release.wait()
        if answer.drop:
            assert request.transport is not None
            request.transport.close()
        return web.Response(
            status=answer.status,
            body=answer.body,
            headers=answer.headers,
            content_type=answer.content_type if answer.body else None,
        )

    async def _send(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        return await self._answer(request, str(orjson.loads(body).get("subject", "")))

    async def _list(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return await self._answer(request, request.query.get("subject", "list"))

    async def _by_id(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return await self._answer(request, request.match_info["case"])

    async def _statistics(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return await self._answer(request, "statistics")


@pytest.fixture
async def crafted() -> AsyncIterator[CraftedTem]:
    server = CraftedTem()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def send_request(subject: str) -> CreateEmailRequest:
    return CreateEmailRequest(
        from_=Address("news@example.com"), to=(Address("ann@example.org"),), subject=subject, text="hello"
    )


# ---------------------------------------------------------------------------------------------
# API error shapes
# ---------------------------------------------------------------------------------------------

RESOURCE = {"resource": "email", "resource_id": EMAIL_ID}

# case → (answer, class, type, message, details)
API_CASES: dict[str, tuple[Answer, type[errors.TemApiError], str, str, Any]] = {
    "invalid-arguments": (
        Answer.json(
            400,
            {
                "details": [
                    {"argument_name": "to", "reason": "constraint", "help_message": "at most 10 recipients"}
                ],
                "message": "invalid argument(s)",
                "type": "invalid_arguments",
            },
        ),
        errors.InvalidArgumentsError,
        "invalid_arguments",
        "invalid argument(s)",
        [{"argument_name": "to", "reason": "constraint", "help_message": "at most 10 recipients"}],
    ),
    "validation-error": (
        Answer.json(400, {"message": "Validation Error", "fields": {"subject": ["is too short"]}}),
        errors.InvalidArgumentsError,
        "",
        "Validation Error",
        {"subject": ["is too short"]},
    ),
    "invalid-from": (
        Answer.json(400, {"message": "Invalid email from address"}),
        errors.InvalidArgumentsError,
        "",
        "Invalid email from address",
        None,
    ),
    "denied": (
        Answer.json(
            401,
            {
                "message": "authentication is denied",
                "method": "api_key",
                "reason": "invalid_argument",
                "type": "denied_authentication",
            },
        ),
        errors.AuthenticationError,
        "denied_authentication",
        "authentication is denied",
        {"method": "api_key", "reason": "invalid_argument"},
    ),
    "permissions": (
        Answer.json(
            403,
            {
                "details": [{"action": "create", "resource": "transactional_email_email"}],
                "message": "insufficient permissions",
                "type": "permissions_denied",
            },
        ),
        errors.PermissionsDeniedError,
        "permissions_denied",
        "insufficient permissions",
        [{"action": "create", "resource": "transactional_email_email"}],
    ),
    "quota": (
        Answer.json(
            403,
            {
                "details": [{"resource": "emails_per_month", "quota": 10000, "current": 10000}],
                "message": "quota(s) exceeded for this resource",
                "type": "quotas_exceeded",
            },
        ),
        errors.QuotaExceededError,
        "quotas_exceeded",
        "quota(s) exceeded for this resource",
        [{"resource": "emails_per_month", "quota": 10000, "current": 10000}],
    ),
    "not-found": (
        Answer.json(404, {"message": "resource is not found", "type": "not_found", **RESOURCE}),
        errors.NotFoundError,
        "not_found",
        "resource is not found",
        RESOURCE,
    ),
    "transient-state": (
        Answer.json(
            409,
            {
                "message": "resource is in a transient state",
                "type": "transient_state",
                "current_state": "sending",
                **RESOURCE,
            },
        ),
        errors.TransientStateError,
        "transient_state",
        "resource is in a transient state",
        {"current_state": "sending", **RESOURCE},
    ),
    "precondition": (
        Answer.json(
            412,
            {
                "message": "precondition is not respected",
                "type": "precondition_failed",
                "precondition": "email_not_new",
                "help_message": "only new emails can be canceled",
            },
        ),
        errors.PreconditionFailedError,
        "precondition_failed",
        "precondition is not respected",
        {"precondition": "email_not_new", "help_message": "only new emails can be canceled"},
    ),
    "locked": (
        Answer.json(423, {"message": "resource is locked", "type": "locked", **RESOURCE}),
        errors.LockedError,
        "locked",
        "resource is locked",
        RESOURCE,
    ),
    "rate-limited-json": (
        Answer.json(429, {"message": "too many requests", "type": "too_many_requests"}),
        errors.RateLimitedError,
        "too_many_requests",
        "too many requests",
        None,
    ),
    "rate-limited-bare": (
        Answer(429, b"Too Many Requests", content_type="text/plain"),
        errors.RateLimitedError,
        "",
        "Too Many Requests",
        None,
    ),
    "internal-500": (
        Answer.json(500, {"message": "internal error", "type": "internal_error"}),
        errors.ServerError,
        "internal_error",
        "internal error",
        None,
    ),
    "bad-gateway-json": (
        Answer.json(502, {"message": "bad gateway"}),
        errors.ServerError,
        "",
        "bad gateway",
        None,
    ),
    "out-of-stock": (
        Answer.json(503, {"message": "out of stock", "type": "out_of_stock", "resource": "smtp"}),
        errors.OutOfStockError,
        "out_of_stock",
        "out of stock",
        {"resource": "smtp"},
    ),
    "unavailable-503": (
        Answer(503, b"", content_type="text/plain"),
        errors.ServerError,
        "",
        "server error",
        None,
    ),
    "html-502": (
        Answer(
            502,
            b"<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>",
            content_type="text/html",
        ),
        errors.ServerError,
        "",
        "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>",
        None,
    ),
    "empty-400": (Answer(400, b""), errors.InvalidArgumentsError, "", "request refused", None),
    "empty-500": (Answer(500, b""), errors.ServerError, "", "server error", None),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
async def test_api_error_shapes_map_to_typed_errors(crafted: CraftedTem, case: str) -> None:
    """Each documented error answer becomes its typed class with status, type, message, details, raw body."""
    answer, cls, type_, message, details = API_CASES[case]
    crafted.answers[case] = answer
    async with TemClient(crafted.settings()) as tem:
        with pytest.raises(errors.TemApiError) as info:
            await tem.get_email(case)
    err = info.value
    assert type(err) is cls
    assert err.status == answer.status
    assert err.type == type_
    assert err.message == message
    assert err.details == details
    assert err.raw_body == answer.body.decode()
    assert err.transient is (answer.status == 429 or answer.status >= 500)
    assert isinstance(err, errors.TemTransientError if err.transient else errors.TemPermanentError)
    assert str(answer.status) in str(err)


async def test_validation_fields_are_readable_for_both_400_shapes(crafted: CraftedTem) -> None:
    """``fields`` gives per-argument reasons for the typed and the older 400 shape alike."""
    crafted.answers["invalid-arguments"] = API_CASES["invalid-arguments"][0]
    crafted.answers["validation-error"] = API_CASES["validation-error"][0]
    async with TemClient(crafted.settings()) as tem:
        with pytest.raises(errors.InvalidArgumentsError) as typed:
            await tem.send_email(send_request("invalid-arguments"))
        with pytest.raises(errors.InvalidArgumentsError) as old:
            await tem.send_email(send_request("validation-error"))
    assert typed.value.fields == {"to": "at most 10 recipients"}
    assert old.value.fields == {"subject": ["is too short"]}


async def test_bare_429_without_retry_after_has_no_hint(crafted: CraftedTem) -> None:
    """The gateway's bare text 429 with no header is a RateLimitedError with ``retry_after_s`` None."""
    crafted.answers["bare"] = Answer(429, b"Too Many Requests", content_type="text/plain")
    async with TemClient(crafted.settings()) as tem:
        with pytest.raises(errors.RateLimitedError) as info:
            await tem.send_email(send_request("bare"))
    assert info.value.retry_after_s is None
    assert info.value.transient


@pytest.mark.parametrize(
    ("retry_after", "check"),
    [
        ("7", lambda s: s == 7.0),
        ("1.5", lambda s: s == 1.5),
        ("Wed, 21 Oct 2015 07:28:00 GMT", lambda s: s == 0.0),  # a date in the past: go now
        ("soon, please", lambda s: s is None),  # garbage is ignored
        ("Thu, 31 Dec 2099 23:59:59 GMT", lambda s: s is not None and s > 365 * 86400),
        ("inf", lambda s: s is None),
    ],
)
async def test_bare_429_honours_retry_after(crafted: CraftedTem, retry_after: str, check: Any) -> None:
    """A bare 429's ``Retry-After`` (seconds or HTTP date) becomes ``retry_after_s``; nonsense is ignored."""
    crafted.answers["bare"] = Answer(
        429, b"Too Many Requests", headers={"Retry-After": retry_after}, content_type="text/plain"
    )
    async with TemClient(crafted.settings()) as tem:
        with pytest.raises(errors.RateLimitedError) as info:
            await tem.get_email("bare")
    assert check(info.value.retry_after_s), info.value.retry_after_s


def test_parse_retry_after_uses_the_given_now() -> None:
    """An HTTP-date ``Retry-After`` is measured from the injected ``now``."""
    from datetime import UTC, datetime

    now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 30.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("  ") is None


def test_typed_body_never_contradicts_the_status_family() -> None:
    """A 5xx is never permanent and a 4xx never transient, whatever ``type`` the body claims."""
    body = orjson.dumps({"message": "x", "type": "not_found"})
    assert type(error_from_response(500, body)) is errors.ServerError
    body = orjson.dumps({"message": "x", "type": "out_of_stock"})
    assert type(error_from_response(404, body)) is errors.NotFoundError
    assert type(error_from_response(418, b"")) is errors.TemPermanentError
    assert type(error_from_response(504, b"")) is errors.ServerError


def test_api_errors_survive_pickling() -> None:
    """Errors cross process boundaries with their class and attributes intact."""
    err = error_from_response(429, b"Too Many Requests", {"Retry-After": "3"})
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is errors.RateLimitedError
    assert (copy.status, copy.retry_after_s, copy.message) == (429, 3.0, "Too Many Requests")


async def test_error_on_send_comes_from_the_send_endpoint(crafted: CraftedTem) -> None:
    """A non-2xx on ``send`` raises the mapped error too (send and get share one mapping)."""
    crafted.answers["quota"] = API_CASES["quota"][0]
    async with TemClient(crafted.settings()) as tem:
        with pytest.raises(errors.QuotaExceededError):
            await tem.send_email(send_request("quota"))
    assert crafted.seen[-1].method == "POST"


# ---------------------------------------------------------------------------------------------
# Transport failures
# ---------------------------------------------------------------------------------------------


async def test_connection_refused_is_not_sent() -> None:
    """A closed port raises TemConnectionError with ``sent=False``: nothing can have reached TEM."""
    settings = TemSettings(
        secret_key=Secret("k"), project_id=PROJECT_ID, api_url=f"http://127.0.0.1:{closed_port()}"
    )
    async with TemClient(settings) as tem:
        with pytest.raises(errors.TemConnectionError) as info:
            await tem.send_email(send_request("anything"))
    assert info.value.sent is False
    assert info.value.transient


async def test_connection_dropped_mid_request_is_ambiguous(crafted: CraftedTem) -> None:
    """A server that closes the connection after reading the request gives ``sent=True``."""
    crafted.answers["drop"] = Answer(drop=True)
    async with TemClient(crafted.settings()) as tem:
        with pytest.raises(errors.TemConnectionError) as info:
            await tem.send_email(send_request("drop"))
    assert info.value.sent is True
    assert len(crafted.seen) == 1  # the request did arrive: that is why it is ambiguous


async def test_no_answer_in_time_is_a_timeout(crafted: CraftedTem) -> None:
    """A server that never answers raises TemTimeoutError (``sent=True``) after ``timeout_s``."""
    crafted.answers["hang"] = Answer(hang=True)
    async with TemClient(crafted.settings(), timeout_s=0.2) as tem:
        with pytest.raises(errors.TemTimeoutError) as info:
            await tem.send_email(send_request("hang"))
    assert info.value.sent is True
    assert info.value.transient


def test_transport_errors_keep_sent_through_pickling() -> None:
    """``sent`` is a keyword with a backwards-compatible default and survives pickling."""
    assert errors.TemConnectionError("boom").sent is True
    err = errors.TemConnectionError("refused", sent=False)
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), copy.sent, str(copy)) == (errors.TemConnectionError, False, "refused")


# ---------------------------------------------------------------------------------------------
# Protocol errors (2xx with an unexpected body)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "answer"),
    [
        ("not-json", Answer(200, b"<html>maintenance</html>", content_type="text/html")),
        ("empty", Answer(200, b"")),
        ("no-emails", Answer.json(200, {"total_count": 1})),
        ("empty-emails", Answer.json(200, {"emails": []})),
        ("emails-without-id", Answer.json(200, {"emails": [{"status": "new"}]})),
        ("not-an-object", Answer.json(200, ["x"])),
    ],
)
async def test_unexpected_2xx_body_on_send_is_a_transient_protocol_error(
    crafted: CraftedTem, case: str, answer: Answer
) -> None:
    """A 200 send answer that is not ``{"emails": [...ids]}`` is an ambiguous, transient TemProtocolError."""
    crafted.answers[case] = answer
    async with TemClient(crafted.settings()) as tem:
        with pytest.raises(TemProtocolError) as info:
            await tem.send_email(send_request(case))
        # The lean send of the campaign hot path refuses exactly the same answers.
        with pytest.raises(TemProtocolError) as lean:
            await tem.submit(orjson.dumps(send_request(case).to_json(default_project_id="p")))
    assert info.value.transient
    assert info.value.sent is True
    assert info.value.status == 200
    assert lean.value.sent is True
    assert lean.value.status == 200


async def test_unexpected_body_on_read_endpoints_is_a_protocol_error(crafted: CraftedTem) -> None:
    """get, list and statistics refuse 200 bodies of the wrong shape instead of returning junk."""
    crafted.answers["no-id"] = Answer.json(200, {"status": "sent"})
    crafted.answers["list"] = Answer.json(200, {"emails": {"id": "x"}})
    crafted.answers["statistics"] = Answer.json(200, [1, 2])
    async with TemClient(crafted.settings()) as tem:
        with pytest.raises(TemProtocolError):
            await tem.get_email("no-id")
        with pytest.raises(TemProtocolError):
            await tem.list_emails()
        with pytest.raises(TemProtocolError):
            await tem.get_statistics()


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (429, b"Too Many Requests", {}),
        (503, b"", {"x-envoy-ratelimited": "true"}),
        (400, b"", {"X-Envoy-RateLimited": ""}),
        (503, b'{"type": "too_many_requests", "message": "slow down"}', {}),
        (400, b'{"type": "too_many_requests", "message": "slow down"}', {}),
    ],
)
def test_every_form_of_throttling_is_a_rate_limited_error(
    status: int, body: bytes, headers: dict[str, str]
) -> None:
    """A 429, the gateway's x-envoy-ratelimited header and a too_many_requests type all mean
    "slow down", whatever status carries them: the one signal that moves the send rate."""
    err = error_from_response(status, body, headers)
    assert isinstance(err, errors.RateLimitedError)
    assert err.status == status
    assert err.transient
