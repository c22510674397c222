"""The local TEM sandbox, driven over real HTTP on loopback with raw aiohttp requests."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bulksend.sandbox import Sandbox, SandboxConfig, SandboxStats, sandbox_in_thread
from bulksend.sandbox.app import is_loopback_host
from bulksend.sandbox.cli import config_from_args, configure
from bulksend.sandbox.request import CreateEmail
from bulksend.sandbox.state import EmailFilter, EmailStore, Timing, format_timestamp
from bulksend.tem.models import parse_rfc3339
from bulksend.testing import FakeClock

PREFIX = "/transactional-email/v1alpha1/regions/fr-par"
SECRET = "test-secret"
PROJECT = "11111111-2222-4333-8444-555555555555"
OTHER_PROJECT = "99999999-8888-4777-8666-555555555555"
T0 = 1_700_000_000.0
NS_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$")
EMAIL_FIELDS = {
    "id",
    "message_id",
    "project_id",
    "mail_from",
    "rcpt_to",
    "mail_rcpt",
    "rcpt_type",
    "subject",
    "created_at",
    "updated_at",
    "status",
    "status_details",
    "try_count",
    "last_tries",
    "flags",
}


class Api:
    """Raw HTTP calls to one sandbox; each returns (status, parsed JSON or text)."""

    def __init__(self, session: aiohttp.ClientSession, sandbox: Sandbox, token: str | None = SECRET) -> None:
        self.session = session
        self.sandbox = sandbox
        self.token = token

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Auth-Token": self.token} if self.token is not None else {}

    async def _call(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {**self.headers, **(headers or {})}
        async with self.session.request(method, self.sandbox.url + path, headers=headers, **kwargs) as r:
            raw = await r.read()
            if r.content_type == "application/json":
                return r.status, orjson.loads(raw)
            return r.status, raw.decode()

    async def send(self, body: dict[str, Any] | bytes, region: str = "fr-par") -> tuple[int, Any]:
        path = f"/transactional-email/v1alpha1/regions/{region}/emails"
        if isinstance(body, bytes):
            # A file object: aiohttp warns (ResourceWarning) of raw bytes bodies over 1 MB.
            data = io.BytesIO(body)
            return await self._call("POST", path, data=data, headers={"Content-Type": "application/json"})
        return await self._call("POST", path, json=body)

    async def send_to(self, *rcpts: str, **extra: Any) -> list[dict[str, Any]]:
        body = message(*rcpts, **extra)
        status, data = await self.send(body)
        assert status == 200, data
        emails: list[dict[str, Any]] = data["emails"]
        return emails

    async def get(self, email_id: str) -> tuple[int, Any]:
        return await self._call("GET", f"{PREFIX}/emails/{email_id}")

    async def email(self, email_id: str) -> dict[str, Any]:
        status, data = await self.get(email_id)
        assert status == 200, data
        result: dict[str, Any] = data
        return result

    async def list_emails(self, params: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
        return await self._call("GET", f"{PREFIX}/emails", params=params or [])

    async def cancel(self, email_id: str) -> tuple[int, Any]:
        return await self._call("POST", f"{PREFIX}/emails/{email_id}/cancel", json={})

    async def statistics(self, params: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
        return await self._call("GET", f"{PREFIX}/statistics", params=params or [])

    async def inspect(self) -> SandboxStats:
        async with self.session.get(self.sandbox.url + "/_sandbox/stats") as r:
            assert r.status == 200
            return SandboxStats.from_json(orjson.loads(await r.read()))


def message(*rcpts: str, **extra: Any) -> dict[str, Any]:
    """A valid send body to ``rcpts`` (all in ``to``), with ``extra`` fields merged in."""
    body: dict[str, Any] = {
        "from": {"email": "news@example.com", "name": "News"},
        "to": [{"email": r} for r in rcpts],
        "subject": "Hello",
        "text": "Hello there",
        "html": "<p>Hello there</p>",
        "project_id": PROJECT,
    }
    body.update(extra)
    return body


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0, allow_backwards=True)


@pytest.fixture
def config() -> SandboxConfig:
    return SandboxConfig(secret_key=SECRET, project_id=PROJECT, seed=7)


@pytest.fixture
async def sandbox(config: SandboxConfig, clock: FakeClock) -> AsyncIterator[Sandbox]:
    async with Sandbox(config, clock=clock) as sb:
        yield sb


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def api(session: aiohttp.ClientSession, sandbox: Sandbox) -> Api:
    return Api(session, sandbox)


# ---------------------------------------------------------------------------------------------
# Send and get
# ---------------------------------------------------------------------------------------------


async def test_send_creates_one_email_per_recipient_sharing_a_message_id(api: Api) -> None:
    """A send with to, cc and bcc answers one `new` Email per recipient, all with one message_id."""
    body = message("ann@example.org", cc=[{"email": "cc@example.org"}], bcc=[{"email": "bcc@example.org"}])
    status, data = await api.send(body)
    assert status == 200
    emails = data["emails"]
    assert [(e["mail_rcpt"], e["rcpt_type"]) for e in emails] == [
        ("ann@example.org", "to"),
        ("cc@example.org", "cc"),
        ("bcc@example.org", "bcc"),
    ]
    assert len({e["message_id"] for e in emails}) == 1
    assert len({e["id"] for e in emails}) == 3
    for e in emails:
        assert set(e) == EMAIL_FIELDS
        assert e["status"] == "new"
        assert e["rcpt_to"] == e["mail_rcpt"]
        assert e["mail_from"] == "news@example.com"
        assert e["project_id"] == PROJECT
        assert e["subject"] == "Hello"
        assert NS_TIMESTAMP.match(e["created_at"])
        assert NS_TIMESTAMP.match(e["updated_at"])
        assert parse_rfc3339(e["created_at"]) is not None
        assert abs(parse_rfc3339(e["created_at"]).timestamp() - T0) < 1e-3  # type: ignore[union-attr]
    stats = await api.inspect()
    assert stats.emails_total == 3
    assert stats.accepted_by_recipient == {"ann@example.org": 1, "cc@example.org": 1, "bcc@example.org": 1}


async def test_get_returns_the_email_and_unknown_ids_are_not_found(api: Api) -> None:
    """GET /emails/{id} returns the stored email; an unknown id answers 404 not_found naming it."""
    [created] = await api.send_to("ann@example.org")
    fetched = await api.email(created["id"])
    assert fetched["id"] == created["id"]
    assert fetched["message_id"] == created["message_id"]
    assert fetched["status"] == "sent"  # zero timings: final as soon as it is read
    for unknown in ("6170692e-7363-616c-6577-61792e636f6d", created["id"][:-1] + "f", "not-a-uuid"):
        status, data = await api.get(unknown)
        assert status == 404
        assert data == {
            "message": "resource is not found",
            "resource": "email",
            "resource_id": unknown,
            "type": "not_found",
        }


@pytest.mark.parametrize("tail", ["-00000000001", "+00000000000", " 00000000000", "0000_0000000"])
async def test_ids_whose_number_is_not_12_hex_digits_are_not_found(api: Api, tail: str) -> None:
    """An id with our prefix but a sign, space or underscore in its number is unknown: it
    never reaches another email (\"-00000000001\" used to fetch and cancel the last one)."""
    await api.send_to("ann@example.org")
    [last] = await api.send_to("hold-1@example.org")
    forged = last["id"][:24] + tail
    assert len(forged) == 36
    assert (await api.get(forged))[0] == 404
    assert (await api.cancel(forged))[0] == 404
    assert (await api.email(last["id"]))["status"] == "new"  # not canceled through the forged id


async def test_accepted_by_recipient_counts_every_email_per_lowercased_address(api: Api) -> None:
    """Sending twice to the same address (in any case) counts 2 for its lower-cased form."""
    await api.send_to("Ann@Example.org")
    await api.send_to("ann@example.org", "bob@example.org")
    stats = await api.inspect()
    assert stats.accepted_by_recipient == {"ann@example.org": 2, "bob@example.org": 1}
    assert stats.emails_total == 3


async def test_missing_project_id_uses_the_default_project(api: Api) -> None:
    """A send without project_id lands in the configured default project."""
    body = message("ann@example.org")
    del body["project_id"]
    status, data = await api.send(body)
    assert status == 200
    assert data["emails"][0]["project_id"] == PROJECT


# ---------------------------------------------------------------------------------------------
# Auth, region, validation
# ---------------------------------------------------------------------------------------------

UNAUTHORIZED = {
    "message": "authentication is denied",
    "method": "api_key",
    "reason": "invalid_argument",
    "type": "denied_authentication",
}


@pytest.mark.parametrize("token", [None, "wrong-secret", ""])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/emails"),
        ("GET", "/emails"),
        ("GET", "/emails/6170692e-7363-616c-6577-61792e636f6d"),
        ("POST", "/emails/6170692e-7363-616c-6577-61792e636f6d/cancel"),
        ("GET", "/statistics"),
    ],
)
async def test_every_endpoint_refuses_a_missing_or_wrong_token(
    session: aiohttp.ClientSession, sandbox: Sandbox, token: str | None, method: str, path: str
) -> None:
    """Each TEM endpoint answers 401 denied_authentication without the right X-Auth-Token."""
    api = Api(session, sandbox, token=token)
    status, data = await api._call(method, PREFIX + path, json=message("ann@example.org"))
    assert status == 401
    assert data == UNAUTHORIZED
    assert (await api.inspect()).emails_total == 0


async def test_unknown_region_is_not_found(api: Api) -> None:
    """Only fr-par offers TEM: another region answers 404 not_found naming the region."""
    status, data = await api.send(message("ann@example.org"), region="nl-ams")
    assert status == 404
    assert data["type"] == "not_found"
    assert data["resource"] == "region"
    assert (await api.inspect()).emails_total == 0


def _too_long_body() -> bytes:
    big = base64.b64encode(b"x" * (2 * 1024 * 1024)).decode()
    return orjson.dumps(
        message("ann@example.org", attachments=[{"name": "a.txt", "type": "text/plain", "content": big}])
    )


@pytest.mark.parametrize(
    ("argument", "change"),
    [
        ("to", {"to": []}),
        (
            "to",
            {
                "to": [{"email": f"r{i}@example.org"} for i in range(6)],
                "cc": [{"email": f"c{i}@example.org"} for i in range(5)],
            },
        ),
        ("to", {"to": [{"email": "not-an-address"}]}),
        ("to", {"to": "ann@example.org"}),
        ("cc", {"cc": [{"email": "two@@example.org"}]}),
        ("bcc", {"bcc": [{"email": "spaced out@example.org"}]}),
        ("from", {"from": {"email": "nobody"}}),
        ("from", {"from": None}),
        ("subject", {"subject": ""}),
        ("subject", {"subject": "line\nbreak"}),
        ("subject", {"subject": "s" * 999}),
        ("additional_headers", {"additional_headers": [{"key": "", "value": "v"}]}),
        ("additional_headers", {"additional_headers": [{"key": "X-Tag", "value": ""}]}),
        (
            "attachments",
            {
                "attachments": [
                    {"name": f"{i}.txt", "type": "text/plain", "content": "eA=="} for i in range(11)
                ]
            },
        ),
        (
            "attachments",
            {"attachments": [{"name": "a.exe", "type": "application/x-msdownload", "content": "eA=="}]},
        ),
        ("attachments", {"attachments": [{"name": "a.txt", "type": "text/plain", "content": "not base64!"}]}),
        ("project_id", {"project_id": "my-project"}),
        ("send_before", {"send_before": "tomorrow"}),
        # Past the end (or before the start) of years 1..9999 once in UTC.
        ("send_before", {"send_before": "9999-12-31T23:59:59-14:00"}),
        ("send_before", {"send_before": "0001-01-01T00:00:00+14:00"}),
        # Control characters, like TEM.
        ("subject", {"subject": "Hello G\x00"}),
        ("subject", {"subject": "Hello\x0bG"}),
        ("subject", {"subject": "Hello\u2028G"}),
        ("additional_headers", {"additional_headers": [{"key": "X B", "value": "v"}]}),
        ("additional_headers", {"additional_headers": [{"key": "X-Tag", "value": "a\x0cb"}]}),
        ("from", {"from": {"email": "news@example.com", "name": "News\x85"}}),
        ("to", {"to": [{"email": "ann@example.org", "name": "Ann\x00"}]}),
        ("cc", {"cc": [{"email": "cc@example.org", "name": "C\u2029C"}]}),
    ],
)
async def test_each_validation_rule_answers_400_naming_the_field(
    api: Api, argument: str, change: dict[str, Any]
) -> None:
    """An invalid send answers 400 invalid_arguments naming the offending field and creates nothing."""
    status, data = await api.send(message("ann@example.org", **change))
    assert status == 400, data
    assert data["type"] == "invalid_arguments"
    assert data["message"] == "invalid argument(s)"
    assert argument in {d["argument_name"] for d in data["details"]}
    assert all(d["reason"] == "constraint" and d["help_message"] for d in data["details"])
    assert (await api.inspect()).emails_total == 0


@pytest.mark.parametrize(
    "body", [b"{not json", b"[1, 2]", _too_long_body()], ids=["not-json", "not-object", "over-2MB"]
)
async def test_bad_bodies_answer_400_naming_the_body(api: Api, body: bytes) -> None:
    """Invalid JSON, a non-object body and a body over 2 MB each answer 400 naming `body`."""
    status, data = await api.send(body)
    assert status == 400
    assert data["type"] == "invalid_arguments"
    assert [d["argument_name"] for d in data["details"]] == ["body"]
    assert (await api.inspect()).emails_total == 0


async def test_valid_attachments_and_headers_are_accepted(api: Api) -> None:
    """Ten allowed attachments, headers and a send_before in the future make a valid send."""
    attachments = [{"name": f"{i}.pdf", "type": "application/pdf", "content": "JVBERi0="} for i in range(10)]
    emails = await api.send_to(
        "ann@example.org",
        attachments=attachments,
        additional_headers=[{"key": "List-Unsubscribe", "value": "<https://example.com/u>"}],
        send_before="2030-01-01T00:00:00Z",
    )
    assert emails[0]["status"] == "new"


async def test_sender_outside_allowed_domains_is_refused(api: Api, sandbox: Sandbox) -> None:
    """With allowed_from_domains set, another sender domain answers 400 "Invalid email from address"."""
    sandbox.update(allowed_from_domains=("example.com",))
    assert (await api.send(message("ann@example.org")))[0] == 200
    status, data = await api.send(message("ann@example.org", **{"from": {"email": "x@unchecked.net"}}))
    assert status == 400
    assert data["message"] == "Invalid email from address"
    assert data["details"][0]["argument_name"] == "from"
    assert (await api.inspect()).emails_total == 1


# ---------------------------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------------------------


async def test_lifecycle_moves_new_sending_sent_with_the_clock(
    api: Api, sandbox: Sandbox, clock: FakeClock
) -> None:
    """An email is `new` for sending_after_s, then `sending` for final_after_s, then `sent`."""
    sandbox.update(sending_after_s=10.0, final_after_s=5.0)
    [e] = await api.send_to("ann@example.org")
    clock.advance(9.9)
    assert (await api.email(e["id"]))["status"] == "new"
    clock.advance(0.2)
    got = await api.email(e["id"])
    assert (got["status"], got["try_count"], got["last_tries"]) == ("sending", 0, [])
    assert abs(parse_rfc3339(got["updated_at"]).timestamp() - (T0 + 10)) < 1e-3  # type: ignore[union-attr]
    clock.advance(5.0)
    got = await api.email(e["id"])
    assert (got["status"], got["try_count"], got["status_details"], got["flags"]) == (
        "sent",
        1,
        "250 2.0.0 OK",
        [],
    )
    assert got["last_tries"][0]["rank"] == 1
    assert got["last_tries"][0]["code"] == 250
    assert abs(parse_rfc3339(got["updated_at"]).timestamp() - (T0 + 15)) < 1e-3  # type: ignore[union-attr]


async def test_live_timing_changes_only_affect_new_emails(
    api: Api, sandbox: Sandbox, clock: FakeClock
) -> None:
    """Emails keep the timings they were created with when the config changes later."""
    sandbox.update(sending_after_s=100.0)
    [slow] = await api.send_to("slow@example.org")
    sandbox.update(sending_after_s=0.0)
    [fast] = await api.send_to("fast@example.org")
    clock.advance(1.0)
    assert (await api.email(slow["id"]))["status"] == "new"
    assert (await api.email(fast["id"]))["status"] == "sent"


@pytest.mark.parametrize(
    ("local", "status", "flags", "try_count", "details", "codes"),
    [
        ("someone", "sent", [], 1, "250 2.0.0 OK", [250]),
        ("bounce", "failed", ["hard_bounce", "mailbox_not_found"], 1, "550 5.1.1 mailbox not found", [550]),
        ("SoftBounce.x", "sent", ["soft_bounce"], 2, "250 2.0.0 OK", [451, 250]),
        ("blocked", "failed", ["blocklisted"], 0, "recipient is blocklisted", []),
        ("spam", "failed", ["spam"], 1, "554 5.7.1 message rejected as spam", [554]),
        ("full", "failed", ["mailbox_full"], 1, "552 5.2.2 mailbox full", [552]),
        ("greylist", "sent", ["greylisted"], 2, "250 2.0.0 OK", [451, 250]),
        ("hold", "sent", [], 1, "250 2.0.0 OK", [250]),
    ],
)
async def test_each_outcome_of_the_table_ends_as_documented(
    api: Api,
    sandbox: Sandbox,
    clock: FakeClock,
    local: str,
    status: str,
    flags: list[str],
    try_count: int,
    details: str,
    codes: list[int],
) -> None:
    """The recipient's local-part prefix picks the final status, flags, tries and details."""
    sandbox.update(sending_after_s=1.0, final_after_s=2.0, soft_bounce_retry_s=30.0, hold_s=50.0)
    [e] = await api.send_to(f"{local}1@example.org")
    clock.advance(1000.0)
    got = await api.email(e["id"])
    assert got["status"] == status
    assert got["flags"] == flags
    assert got["try_count"] == try_count
    assert got["status_details"] == details
    assert [t["code"] for t in got["last_tries"]] == codes
    assert [t["rank"] for t in got["last_tries"]] == list(range(1, len(codes) + 1))
    assert all(NS_TIMESTAMP.match(t["tried_at"]) for t in got["last_tries"])


@pytest.mark.parametrize(
    ("local", "flag", "message"),
    [
        ("softbounce", "soft_bounce", "4.7.1 try again later"),
        ("greylist", "greylisted", "4.7.1 greylisted, please try again later"),
    ],
)
async def test_retried_outcomes_stay_sending_between_tries(
    api: Api, sandbox: Sandbox, clock: FakeClock, local: str, flag: str, message: str
) -> None:
    """After the first 451 a soft bounce or greylisting is `sending` with one try until the retry."""
    sandbox.update(final_after_s=2.0, soft_bounce_retry_s=30.0)
    [e] = await api.send_to(f"{local}@example.org")
    clock.advance(2.0)
    got = await api.email(e["id"])
    assert (got["status"], got["try_count"], got["flags"]) == ("sending", 1, [flag])
    assert got["last_tries"] == [
        {"rank": 1, "tried_at": got["last_tries"][0]["tried_at"], "code": 451, "message": message}
    ]
    assert got["status_details"] == f"451 {message}"
    clock.advance(31.9)
    assert (await api.email(e["id"]))["status"] == "sending"
    clock.advance(0.2)
    assert (await api.email(e["id"]))["status"] == "sent"


async def test_stuck_recipient_stays_sending_with_growing_tries(
    api: Api, sandbox: Sandbox, clock: FakeClock
) -> None:
    """A `stuck` recipient never becomes final; tries keep coming and only the last three are shown."""
    sandbox.update(final_after_s=1.0, soft_bounce_retry_s=9.0)
    [e] = await api.send_to("stuck@example.org")
    clock.advance(72 * 3600.0)
    got = await api.email(e["id"])
    assert got["status"] == "sending"
    assert got["flags"] == ["soft_bounce"]
    assert got["try_count"] == 1 + (72 * 3600 - 1) // 10
    assert [t["rank"] for t in got["last_tries"]] == [
        got["try_count"] - 2,
        got["try_count"] - 1,
        got["try_count"],
    ]
    assert {t["code"] for t in got["last_tries"]} == {451}


async def test_send_before_in_the_past_fails_with_expiration(
    api: Api, sandbox: Sandbox, clock: FakeClock
) -> None:
    """An email whose send_before passes while it is still `new` fails with send_before_expiration."""
    sandbox.update(sending_after_s=60.0)
    [expired] = await api.send_to("ann@example.org", send_before="2023-11-14T22:13:50+00:00")  # T0 + 30 s
    [fine] = await api.send_to("bob@example.org", send_before="2030-01-01T00:00:00Z")
    clock.advance(61.0)
    got = await api.email(expired["id"])
    assert (got["status"], got["flags"], got["try_count"]) == ("failed", ["send_before_expiration"], 0)
    assert (await api.email(fine["id"]))["status"] == "sent"


async def test_hold_recipient_stays_new_until_hold_s(api: Api, sandbox: Sandbox, clock: FakeClock) -> None:
    """A `hold` recipient is `new` for hold_s, then goes on to `sent`."""
    sandbox.update(hold_s=100.0)
    [e] = await api.send_to("hold-me@example.org")
    clock.advance(99.0)
    assert (await api.email(e["id"]))["status"] == "new"
    clock.advance(1.0)
    assert (await api.email(e["id"]))["status"] == "sent"


async def test_clock_stepping_back_keeps_creation_order(api: Api, clock: FakeClock) -> None:
    """A clock that steps backwards never makes a later email older than an earlier one."""
    [first] = await api.send_to("a@example.org")
    clock.advance(-50.0)
    [second] = await api.send_to("b@example.org")
    assert second["created_at"] >= first["created_at"]
    _status, data = await api.list_emails([("order_by", "created_at_asc")])
    assert [e["id"] for e in data["emails"]] == [first["id"], second["id"]]


# ---------------------------------------------------------------------------------------------
# Cancel
# ---------------------------------------------------------------------------------------------


async def test_cancel_while_new_cancels_and_later_is_refused(
    api: Api, sandbox: Sandbox, clock: FakeClock
) -> None:
    """Cancel answers the `canceled` email while `new`; once sending or sent it answers 412."""
    sandbox.update(sending_after_s=10.0, final_after_s=10.0)
    [held, sending, sent] = await api.send_to("hold@example.org", "b@example.org", "c@example.org")
    clock.advance(5.0)
    status, data = await api.cancel(held["id"])
    assert status == 200
    assert (data["status"], data["id"]) == ("canceled", held["id"])
    clock.advance(10.0)
    status, data = await api.cancel(sending["id"])
    assert status == 412
    assert data["type"] == "precondition_failed"
    clock.advance(10.0)
    assert (await api.cancel(sent["id"]))[0] == 412
    assert (await api.cancel(held["id"]))[0] == 412  # already canceled
    clock.advance(10_000.0)
    got = await api.email(held["id"])
    assert (got["status"], got["try_count"]) == ("canceled", 0)
    assert abs(parse_rfc3339(got["updated_at"]).timestamp() - (T0 + 5)) < 1e-3  # type: ignore[union-attr]


async def test_cancel_unknown_email_is_not_found(api: Api) -> None:
    """Cancelling an id the sandbox never issued answers 404 not_found."""
    status, data = await api.cancel("6170692e-7363-616c-6577-61792e636f6d")
    assert status == 404
    assert (data["type"], data["resource"]) == ("not_found", "email")


# ---------------------------------------------------------------------------------------------
# List and statistics
# ---------------------------------------------------------------------------------------------


async def _mixed_population(api: Api, sandbox: Sandbox, clock: FakeClock) -> dict[str, str]:
    """Five emails one second apart, ending sent/failed/new(hold)/canceled(hold)/sent; returns ids."""
    sandbox.update(hold_s=1_000_000.0)
    ids: dict[str, str] = {}
    for rcpt, subject, sender in [
        ("ann@example.org", "Alpha", "a@example.com"),
        ("bounce@example.org", "Bravo", "b@example.com"),
        ("hold-1@example.org", "Charlie", "a@example.com"),
        ("hold-2@example.org", "Alpha", "c@example.com"),
        ("Zed@Example.org", "Delta", "a@example.com"),
    ]:
        [e] = await api.send_to(rcpt, subject=subject, **{"from": {"email": sender}})
        ids[rcpt.lower()] = e["id"]
        clock.advance(1.0)
    assert (await api.cancel(ids["hold-2@example.org"]))[0] == 200
    return ids


async def test_list_filters_by_status_flags_addresses_subject_and_message(
    api: Api, sandbox: Sandbox, clock: FakeClock
) -> None:
    """Each list filter returns exactly the matching emails, with total_count and X-Total-Count."""
    ids = await _mixed_population(api, sandbox, clock)
    [other] = await api.send_to("other@example.org", project_id=OTHER_PROJECT)
    by_id = {v: k for k, v in ids.items()}
    by_id[other["id"]] = "other@example.org"

    async def rcpts(params: list[tuple[str, str]]) -> set[str]:
        async with api.session.get(
            api.sandbox.url + f"{PREFIX}/emails", params=params, headers=api.headers
        ) as r:
            assert r.status == 200
            data = orjson.loads(await r.read())
            assert r.headers["X-Total-Count"] == str(data["total_count"])
        assert data["total_count"] == len(data["emails"])
        return {by_id[e["id"]] for e in data["emails"]}

    assert await rcpts([("statuses", "sent"), ("statuses", "canceled")]) == {
        "ann@example.org",
        "hold-2@example.org",
        "zed@example.org",
        "other@example.org",
    }
    assert await rcpts([("statuses", "new")]) == {"hold-1@example.org"}
    assert await rcpts([("flags", "hard_bounce")]) == {"bounce@example.org"}
    assert await rcpts([("mail_rcpt", "ZED@example.org")]) == {"zed@example.org"}
    assert await rcpts([("mail_to", "ann@example.org")]) == {"ann@example.org"}
    assert await rcpts([("mail_from", "a@example.com"), ("project_id", PROJECT)]) == {
        "ann@example.org",
        "hold-1@example.org",
        "zed@example.org",
    }
    assert await rcpts([("subject", "Alpha")]) == {"ann@example.org", "hold-2@example.org"}
    assert await rcpts([("project_id", OTHER_PROJECT)]) == {"other@example.org"}
    assert await rcpts([("message_id", other["message_id"])]) == {"other@example.org"}
    assert await rcpts([("domain_id", "6170692e-7363-616c-6577-61792e636f6d"), ("subject", "Delta")]) == {
        "zed@example.org"
    }
    assert await rcpts([("search", "HOLD-")]) == {"hold-1@example.org", "hold-2@example.org"}
    assert await rcpts([("search", "bravo")]) == {"bounce@example.org"}
    assert await rcpts([("search", ids["ann@example.org"][-12:])]) == {"ann@example.org"}
    assert await rcpts([("mail_rcpt", "nobody@example.org")]) == set()


async def test_list_since_until_window_is_inclusive_on_creation_time(
    api: Api, sandbox: Sandbox, clock: FakeClock
) -> None:
    """since/until select emails by creation time, both ends included, in any RFC 3339 spelling."""
    ids = await _mixed_population(api, sandbox, clock)
    status, data = await api.list_emails(
        [
            ("since", format_timestamp(T0 + 1)),
            ("until", "2023-11-14T23:13:23+01:00"),
            ("order_by", "created_at_asc"),
        ]
    )  # until = T0 + 3
    assert status == 200
    assert [e["id"] for e in data["emails"]] == [
        ids["bounce@example.org"],
        ids["hold-1@example.org"],
        ids["hold-2@example.org"],
    ]


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
@pytest.mark.parametrize("name", ["since", "until"])
async def test_since_or_until_out_of_range_answers_400_naming_it(api: Api, name: str, value: str) -> None:
    """A since/until outside years 1..9999 in UTC answers 400 naming it, on the list and statistics."""
    for call in (api.list_emails, api.statistics):
        status, data = await call([(name, value)])
        assert status == 400, data
        assert [d["argument_name"] for d in data["details"]] == [name]
        assert "out of range" in data["details"][0]["help_message"]


@pytest.mark.parametrize("value", ["1_0", " 7 ", "\u0661\u0662", "1e3", "99999999999", "-1"])
async def test_page_and_page_size_take_only_plain_whole_numbers(api: Api, value: str) -> None:
    """page and page_size are plain ASCII whole numbers within uint32, like TEM's; others answer 400."""
    for name in ("page", "page_size"):
        status, data = await api.list_emails([(name, value)])
        assert status == 400, (name, value, data)
        assert [d["argument_name"] for d in data["details"]] == [name]


@pytest.mark.parametrize("direction", ["asc", "desc"])
@pytest.mark.parametrize("key", ["created_at", "updated_at", "status", "mail_from", "mail_rcpt", "subject"])
async def test_list_orders_by_every_order_by_value(
    api: Api, sandbox: Sandbox, clock: FakeClock, key: str, direction: str
) -> None:
    """Each of the 12 order_by values (a field, then asc or desc) sorts the page by that field in that
    direction."""
    order_by = f"{key}_{direction}"
    await _mixed_population(api, sandbox, clock)
    status, data = await api.list_emails([("order_by", order_by), ("page_size", "100")])
    assert status == 200
    values = [e[key].lower() for e in data["emails"]]
    assert values == sorted(values, reverse=direction == "desc")
    assert len(set(values)) > 1


async def test_default_order_is_newest_first(api: Api, sandbox: Sandbox, clock: FakeClock) -> None:
    """Without order_by the list is created_at_desc."""
    ids = await _mixed_population(api, sandbox, clock)
    _, data = await api.list_emails()
    assert data["emails"][0]["id"] == ids["zed@example.org"]
    assert data["emails"][-1]["id"] == ids["ann@example.org"]


async def test_list_paginates_with_total_count(api: Api, clock: FakeClock) -> None:
    """Pages of page_size cover every email exactly once; total_count is the full match count."""
    for i in range(25):
        await api.send_to(f"user{i}@example.org")
        clock.advance(0.5)
    seen: list[str] = []
    for page in (1, 2, 3, 4):
        status, data = await api.list_emails(
            [("page", str(page)), ("page_size", "10"), ("order_by", "created_at_asc")]
        )
        assert status == 200
        assert data["total_count"] == 25
        seen += [e["mail_rcpt"] for e in data["emails"]]
    assert seen == [f"user{i}@example.org" for i in range(25)]
    _, data = await api.list_emails()
    assert len(data["emails"]) == 10  # the default page size


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("page_size", "0"),
        ("page_size", "1001"),
        ("page_size", "ten"),
        ("page", "0"),
        ("order_by", "random"),
        ("statuses", "delivered"),
        ("flags", "weird"),
        ("search", "ab"),
        ("search", "x" * 101),
        ("since", "yesterday"),
        ("until", "2024-13-01"),
        ("project_id", "nope"),
        ("message_id", "nope"),
    ],
)
async def test_list_rejects_invalid_parameters(api: Api, param: str, value: str) -> None:
    """An invalid list parameter answers 400 invalid_arguments naming it."""
    status, data = await api.list_emails([(param, value)])
    assert status == 400
    assert data["type"] == "invalid_arguments"
    assert [d["argument_name"] for d in data["details"]] == [param]


async def test_statistics_count_by_status_with_filters(api: Api, sandbox: Sandbox, clock: FakeClock) -> None:
    """Statistics count emails by status over project, sender and creation window."""
    await _mixed_population(api, sandbox, clock)
    status, data = await api.statistics()
    assert status == 200
    assert data == {
        "total_count": 5,
        "new_count": 1,
        "sending_count": 0,
        "sent_count": 2,
        "failed_count": 1,
        "canceled_count": 1,
    }
    _, data = await api.statistics([("mail_from", "A@example.com"), ("project_id", PROJECT)])
    assert (data["total_count"], data["sent_count"], data["new_count"]) == (3, 2, 1)
    _, data = await api.statistics(
        [("since", format_timestamp(T0 + 3)), ("until", format_timestamp(T0 + 10))]
    )
    assert (data["total_count"], data["canceled_count"], data["sent_count"]) == (2, 1, 1)
    assert (await api.statistics([("since", "soon")]))[0] == 400


# ---------------------------------------------------------------------------------------------
# Rate limit and faults
# ---------------------------------------------------------------------------------------------


async def test_rate_limit_answers_a_bare_429_and_refills_with_the_clock(
    api: Api, sandbox: Sandbox, clock: FakeClock
) -> None:
    """Past the bucket, every API request gets 429 "Too Many Requests" as text, no Retry-After."""
    sandbox.update(rate_limit_per_s=1.0, rate_limit_burst=2.0)
    assert (await api.send(message("a@example.org")))[0] == 200
    assert (await api.list_emails())[0] == 200
    async with api.session.post(
        api.sandbox.url + f"{PREFIX}/emails", json=message("b@example.org"), headers=api.headers
    ) as r:
        assert r.status == 429
        assert r.content_type == "text/plain"
        assert await r.text() == "Too Many Requests"
        assert "Retry-After" not in r.headers
        assert not any(h.lower().startswith("x-ratelimit") for h in r.headers)
    assert (await api.statistics())[0] == 429
    clock.advance(1.0)
    assert (await api.statistics())[0] == 200
    stats = await api.inspect()  # the inspection endpoint itself is never rate limited
    assert stats.rate_limited == 2
    assert stats.emails_total == 1


async def test_fault_5xx_before_creates_nothing(api: Api, sandbox: Sandbox) -> None:
    """With fault_5xx_before_p=1 every send answers a 5xx and no email exists afterwards."""
    sandbox.update(fault_5xx_before_p=1.0)
    for i in range(6):
        status, _ = await api.send(message(f"u{i}@example.org"))
        assert status in (500, 502, 503)
    stats = await api.inspect()
    assert stats.emails_total == 0
    assert stats.faults["5xx_before"] == 6


async def test_fault_5xx_after_creates_the_email(api: Api, sandbox: Sandbox) -> None:
    """With fault_5xx_after_p=1 every send answers a 5xx although its email was created, and never
    a bare gateway 502/503 (which says the request was not handed over)."""
    sandbox.update(fault_5xx_after_p=1.0)
    statuses = set()
    for i in range(12):
        status, data = await api.send(message(f"u{i}@example.org"))
        statuses.add(status)
        if status in (502, 503):
            assert isinstance(data, dict)
            assert data["message"]
    assert statuses <= {500, 503, 504}
    assert len(statuses) > 1
    stats = await api.inspect()
    assert stats.emails_total == 12
    assert stats.faults["5xx_after"] == 12
    assert sum(stats.accepted_by_recipient.values()) == 12


async def test_fault_drop_closes_the_connection_without_an_answer(api: Api, sandbox: Sandbox) -> None:
    """With fault_drop_p=1 the TCP connection closes with no response; a coin decides creation."""
    sandbox.update(fault_drop_p=1.0)
    for i in range(10):
        with pytest.raises(aiohttp.ClientConnectionError):
            await api.send(message(f"u{i}@example.org"))
    stats = await api.inspect()
    assert stats.faults["drop_created"] + stats.faults["drop_not_created"] == 10
    assert stats.faults["drop_created"] > 0
    assert stats.faults["drop_not_created"] > 0
    assert stats.emails_total == stats.faults["drop_created"]


async def test_seeded_faults_are_reproducible(session: aiohttp.ClientSession, clock: FakeClock) -> None:
    """Two sandboxes with the same seed inject the same faults for the same request sequence."""
    cfg = SandboxConfig(secret_key=SECRET, seed=42, fault_5xx_before_p=0.3, fault_5xx_after_p=0.3)
    runs = []
    for _ in range(2):
        async with Sandbox(cfg, clock=clock) as sb:
            api = Api(session, sb)
            runs.append([(await api.send(message(f"u{i}@example.org")))[0] for i in range(20)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1


async def test_latency_setting_still_answers(api: Api, sandbox: Sandbox) -> None:
    """With added latency and jitter configured, requests still complete normally."""
    sandbox.update(latency_ms=1.0, latency_jitter_ms=1.0)
    assert (await api.send(message("ann@example.org")))[0] == 200


# ---------------------------------------------------------------------------------------------
# Inspection endpoints and the Python API
# ---------------------------------------------------------------------------------------------


async def test_inspection_counts_requests_by_kind(api: Api) -> None:
    """The stats endpoint counts TEM requests by kind, including unknown paths as `other`."""
    [e] = await api.send_to("ann@example.org")
    await api.get(e["id"])
    await api.get(e["id"])
    await api.list_emails()
    await api.cancel(e["id"])
    await api.statistics()
    await api._call("GET", f"{PREFIX}/project-consumption?project_id={PROJECT}")
    status, data = await api._call("GET", f"{PREFIX}/pools")
    assert (status, data["type"]) == (404, "not_found")
    stats = await api.inspect()
    assert stats.requests == {
        "send": 1,
        "get": 2,
        "list": 1,
        "cancel": 1,
        "statistics": 1,
        "webhook": 0,
        "blocklists": 0,
        "domains": 0,
        "consumption": 1,
        "other": 1,
    }
    assert stats == api.sandbox.stats()


async def test_inspection_reset_forgets_emails_and_counters(api: Api) -> None:
    """POST /_sandbox/reset empties the store and counters; old ids become unknown."""
    [e] = await api.send_to("ann@example.org")
    async with api.session.post(api.sandbox.url + "/_sandbox/reset") as r:
        assert r.status == 200
    stats = await api.inspect()
    assert (stats.emails_total, stats.accepted_by_recipient, sum(stats.requests.values())) == (0, {}, 0)
    assert (await api.get(e["id"]))[0] == 404


async def test_inspection_config_patch_changes_settings_live(api: Api, sandbox: Sandbox) -> None:
    """PATCH /_sandbox/config applies changes, masks the secret, and refuses unknown or bad values."""
    url = api.sandbox.url + "/_sandbox/config"
    async with api.session.patch(
        url, json={"fault_5xx_before_p": 1.0, "allowed_from_domains": ["example.com"]}
    ) as r:
        assert r.status == 200
        data = orjson.loads(await r.read())
    assert data["fault_5xx_before_p"] == 1.0
    assert data["secret_key"] == "***"
    assert sandbox.config.allowed_from_domains == ("example.com",)
    assert (await api.send(message("ann@example.org")))[0] >= 500
    for bad in ({"no_such_setting": 1}, {"fault_drop_p": 2.0}, [1]):
        async with api.session.patch(url, json=bad) as r:
            assert r.status == 400
    async with api.session.get(url) as r:
        assert SECRET not in await r.text()


@pytest.mark.parametrize(
    "bad",
    [
        {"secret_key": 5},
        {"project_id": None},
        {"latency_ms": 1e308},
        {"latency_ms": "x"},
        {"sending_after_s": 1e308},
        {"hold_s": True},
        {"allowed_from_domains": [1, None]},
        {"allowed_from_domains": "example.com"},
        {"seed": 1.5},
    ],
)
async def test_inspection_config_patch_refuses_wrong_types_and_huge_values(
    api: Api, sandbox: Sandbox, bad: dict[str, Any]
) -> None:
    """A PATCH with a wrong type or an unbounded value answers 400 naming the setting and changes
    nothing: the sandbox keeps answering sends (it used to answer 500, or hang on a huge latency)."""
    before = sandbox.config
    async with api.session.patch(api.sandbox.url + "/_sandbox/config", json=bad) as r:
        assert r.status == 400
        assert next(iter(bad)) in (await r.json())["message"]
    assert sandbox.config == before
    status, _ = await api.send(message("ann@example.org"))
    assert status == 200


def test_config_validation_and_repr_hide_the_secret() -> None:
    """SandboxConfig refuses inconsistent values and never shows the secret in its repr."""
    cfg = SandboxConfig(secret_key="super-secret-value")
    assert "super-secret-value" not in repr(cfg)
    with pytest.raises(ValueError, match="project_id"):
        SandboxConfig(project_id="x")
    with pytest.raises(ValueError, match="add up"):
        SandboxConfig(fault_5xx_before_p=0.6, fault_drop_p=0.6)
    with pytest.raises(ValueError, match="rate_limit_per_s"):
        SandboxConfig(rate_limit_per_s=0)
    assert SandboxConfig(rate_limit_per_s=5).burst == 1.0
    assert SandboxConfig(rate_limit_per_s=100).burst == 10.0


async def test_update_refuses_unknown_settings(sandbox: Sandbox) -> None:
    """Sandbox.update only accepts SandboxConfig field names."""
    with pytest.raises(ValueError, match="unknown"):
        sandbox.update(colour="blue")
    assert sandbox.update(hold_s=5.0).hold_s == 5.0


def test_timestamps_carry_nanoseconds() -> None:
    """Timestamps are RFC 3339 UTC with nine fraction digits, which the project's parser accepts."""
    text = format_timestamp(1_711_958_136.758671147)
    assert NS_TIMESTAMP.match(text)
    assert text.startswith("2024-04-01T07:55:36.758671")
    assert parse_rfc3339(text).timestamp() == pytest.approx(1_711_958_136.758671, abs=1e-6)  # type: ignore[union-attr]


def test_store_window_query_uses_creation_order() -> None:
    """A since/until window over many emails returns exactly the emails created inside it."""
    store = EmailStore()
    timing = Timing()
    for i in range(10_000):
        send = CreateEmail(PROJECT, "a@example.com", "s", None, ((f"u{i}@example.org", "to"),))
        store.create(send, timing=timing, now=T0 + i)
    selected = store.select(
        EmailFilter(since=T0 + 100, until=T0 + 199, statuses=frozenset({"sent"})), T0 + 20_000
    )
    assert selected == list(range(100, 200))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_options_build_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI options map onto SandboxConfig; the secret falls back to BULKSEND_SANDBOX_SECRET."""
    import argparse

    monkeypatch.setenv("BULKSEND_SANDBOX_SECRET", "from-env")
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(
        [
            "--port",
            "0",
            "--rate-limit",
            "50",
            "--fault-5xx-after",
            "0.1",
            "--fault-drop",
            "0.05",
            "--latency-ms",
            "3",
            "--jitter-ms",
            "2",
            "--sending-after-s",
            "1",
            "--final-after-s",
            "2",
            "--seed",
            "9",
            "--allow-from-domain",
            "example.com",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.secret_key, cfg.rate_limit_per_s, cfg.fault_5xx_after_p, cfg.fault_drop_p) == (
        "from-env",
        50.0,
        0.1,
        0.05,
    )
    assert (cfg.latency_ms, cfg.latency_jitter_ms, cfg.sending_after_s, cfg.final_after_s, cfg.seed) == (
        3,
        2,
        1,
        2,
        9,
    )
    assert cfg.allowed_from_domains == ("example.com",)
    assert config_from_args(parser.parse_args(["--secret-key", "explicit"])).secret_key == "explicit"


def test_loopback_detection_for_the_exposure_warning() -> None:
    """Only loopback hosts count as safe for the unauthenticated inspection endpoints."""
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback_host(h) for h in ("0.0.0.0", "::", "192.0.2.10", "example.com"))


def test_cli_process_serves_and_stops_on_sigterm() -> None:
    """`python -m bulksend.sandbox --port 0` prints its URL, answers TEM calls and exits 0 on SIGTERM."""
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulksend.sandbox", "--port", "0", "--secret-key", "cli-secret"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+) ", line)
        assert m, line
        assert "SCW_API_URL=" in line
        assert "cli-secret" not in line
        request = urllib.request.Request(
            m.group(1) + f"{PREFIX}/emails",
            data=orjson.dumps(message("ann@example.org")),
            headers={"X-Auth-Token": "cli-secret", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=20) as r:
            assert r.status == 200
            assert len(orjson.loads(r.read())["emails"]) == 1
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # What Popen's with block would do: its pipes are open until garbage collection otherwise.
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


async def test_timed_outage_answers_bare_5xx_creates_nothing_and_ends(
    api: Api, sandbox: Sandbox, clock: FakeClock
) -> None:
    """POST /_sandbox/outage makes every TEM request answer a bare 5xx for that many seconds of the
    sandbox clock, creates nothing, leaves the inspection endpoints alone, and then ends by itself."""
    async with api.session.post(sandbox.url + "/_sandbox/outage", json={"seconds": 8, "status": 502}) as r:
        assert r.status == 200
        assert (await r.json())["status"] == 502
    for i in range(3):
        status, body = await api.send(message(f"u{i}@example.org"))
        assert status == 502
        assert isinstance(body, str)
        assert "upstream" in body
    assert (await api.list_emails())[0] == 502
    stats = await api.inspect()
    assert stats.emails_total == 0
    assert stats.outage_answers == 4
    clock.advance(8.0)
    assert (await api.send(message("after@example.org")))[0] == 200
    assert (await api.inspect()).emails_total == 1


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"status": 503}',
        b'{"seconds": -1}',
        b'{"seconds": 8, "status": 404}',
        b'{"seconds": 1e9}',
        b'{"seconds": 8, "extra": 1}',
        b'{"seconds": true}',
    ],
)
async def test_outage_refuses_bad_bodies(api: Api, sandbox: Sandbox, body: bytes) -> None:
    """A malformed outage request is a 400 that says what to send, and starts no outage."""
    async with api.session.post(sandbox.url + "/_sandbox/outage", data=body) as r:
        assert r.status == 400
        hint = (await r.json())["message"]
        assert "seconds" in hint or "status" in hint
    assert (await api.send(message("ok@example.org")))[0] == 200


def test_threaded_sandbox_settings_and_counters_cross_into_its_loop() -> None:
    """From a plain thread, config follows update(), stats() sees requests and reset() forgets them."""
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET)) as sb:
        changed = sb.update(latency_ms=5.0)
        assert sb.config == changed
        assert sb.config.latency_ms == 5.0
        url = f"{sb.url}{PREFIX}/emails/unknown"
        request = urllib.request.Request(url, headers={"X-Auth-Token": SECRET})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=30)
        answer.value.close()  # the error is the response: it holds the connection open
        assert answer.value.code == 404
        assert sb.stats().requests["get"] == 1
        sb.reset()
        assert sb.stats().requests["get"] == 0
