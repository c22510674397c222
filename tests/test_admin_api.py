"""Admin HTTP API: a real aiohttp server on loopback over MemoryControl (real store, real campaign rules)."""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from bulksend.daemon.admin import (
    CampaignInfo,
    DaemonControl,
    MemoryControl,
    Submission,
    check_listen_address,
    create_admin_app,
)
from bulksend.errors import ConfigError
from bulksend.metrics import Metrics
from bulksend.secret import Secret
from bulksend.sinks.outcomes import OUTCOME_FIELDS
from bulksend.testing import campaign_toml

TOKEN = "adm-3f9c1e7b52d04a8e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

Client = TestClient[aiohttp.web.Request, aiohttp.web.Application]
MakeClient = Callable[..., Awaitable[Client]]


def toml(campaign_id: str = "spring") -> str:
    return campaign_toml(
        campaign_id,
        campaign={
            "subject": "Hello {{ first_name | default('there') }}",
            "text": "Hi {{ first_name | default('there') }}",
        },
        sending={"rate_per_s": 50},
    )


SENDER = {"email": "news@example.com", "name": "News"}


def campaign_json(campaign_id: str = "autumn", **extra: Any) -> dict[str, Any]:
    return {
        "campaign": {
            "id": campaign_id,
            "from": "Example News <news@example.com>",
            "subject": "Autumn news",
            "html": "<p>Hi {{ name }}</p>",
            **extra,
        }
    }


def jsonl(*emails: str) -> bytes:
    return b"".join(orjson.dumps({"email": e, "name": e.split("@")[0]}) + b"\n" for e in emails)


def form(
    campaign: str | Mapping[str, Any],
    recipients: bytes,
    filename: str = "recipients.jsonl",
) -> aiohttp.FormData:
    data = aiohttp.FormData()
    if isinstance(campaign, str):
        data.add_field("campaign", campaign, content_type="application/toml", filename="campaign.toml")
    else:
        data.add_field("campaign", orjson.dumps(campaign).decode(), content_type="application/json")
    data.add_field("recipients", recipients, filename=filename, content_type="application/octet-stream")
    return data


@pytest.fixture
def control(tmp_path: Path) -> MemoryControl:
    return MemoryControl(tmp_path / "spool", clock=lambda: NOW)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(process_metrics=False)


@pytest.fixture
async def make_client(control: MemoryControl, metrics: Metrics) -> AsyncIterator[MakeClient]:
    clients: list[Client] = []

    async def make(
        token: str | None = TOKEN, *, metrics_public: bool = False, ctl: DaemonControl | None = None
    ) -> Client:
        app = create_admin_app(
            ctl or control,
            token=Secret(token) if token is not None else None,
            metrics=metrics,
            metrics_public=metrics_public,
        )
        client: Client = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()
    await control.aclose()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


def multipart(boundary: str, *parts: tuple[str, str, str | None, bytes]) -> bytes:
    """A multipart/form-data body written by hand: (name, content type, file name, content) parts."""
    out = b""
    for name, content_type, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n"
        ).encode()
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def submit(client: Client, campaign: str | Mapping[str, Any], recipients: bytes, **kw: Any) -> Any:
    resp = await client.post("/v1/campaigns", data=form(campaign, recipients, **kw), headers=AUTH)
    assert resp.status == 201, await resp.text()
    return await resp.json()


# -- auth ----------------------------------------------------------------------------------------
async def test_healthz_is_open_without_token(client: Client) -> None:
    """/healthz answers 200 {"status": "ok"} with no token at all."""
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer wrong-token"}, "invalid admin token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "invalid admin token"),
        ({"Authorization": f"Basic {TOKEN}"}, "must be 'Bearer"),
        ({"Authorization": "Bearer "}, "must be 'Bearer"),
    ],
)
async def test_missing_or_bad_token_is_401(client: Client, headers: dict[str, str], message: str) -> None:
    """A protected route without the right bearer token answers 401 JSON with a Bearer challenge."""
    resp = await client.get("/v1/campaigns", headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert message in (await resp.json())["error"]


async def test_right_token_is_accepted(client: Client) -> None:
    """The configured token opens the protected routes."""
    resp = await client.get("/v1/campaigns", headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {"campaigns": []}


async def test_unknown_route_needs_the_token_then_is_json_404(client: Client) -> None:
    """An unknown path is 401 without a token (routes are not revealed) and JSON 404 with it."""
    assert (await client.get("/v1/nothing")).status == 401
    resp = await client.get("/v1/nothing", headers=AUTH)
    assert resp.status == 404
    assert "error" in await resp.json()


async def test_tokens_never_reach_the_logs(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    """Neither the right token nor a wrong one appears in any structlog event or stdlib log record."""
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-but-secret-7a61"
    with structlog.testing.capture_logs() as events:
        await client.get("/v1/campaigns", headers={"Authorization": f"Bearer {wrong}"})
        await client.get("/v1/campaigns", headers=AUTH)
        await client.post("/v1/campaigns/none/pause", headers=AUTH)
    assert any(e["event"] == "admin.unauthorized" for e in events)
    text = repr(events) + caplog.text
    assert TOKEN not in text
    assert wrong not in text


async def test_metrics_need_the_token_unless_public(make_client: MakeClient) -> None:
    """/metrics is protected by default and open with metrics_public=True; /readyz is always open."""
    closed = await make_client()
    assert (await closed.get("/metrics")).status == 401
    assert (await closed.get("/metrics", headers=AUTH)).status == 200
    assert (await closed.get("/readyz")).status == 200
    public = await make_client(metrics_public=True)
    assert (await public.get("/metrics")).status == 200
    assert (await public.get("/v1/campaigns")).status == 401


async def test_without_a_token_the_api_is_open(make_client: MakeClient) -> None:
    """With no token configured (loopback only), every route answers without Authorization."""
    client = await make_client(token=None)
    assert (await client.get("/v1/campaigns")).status == 200
    assert (await client.get("/metrics")).status == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "127.4.5.6", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"])
def test_loopback_may_listen_without_token(host: str) -> None:
    """Loopback addresses are allowed without an admin token."""
    check_listen_address(host, None)
    check_listen_address(host, Secret(""))


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.0.0.7", "192.168.1.2", "admin.example.com"])
def test_other_addresses_need_a_token(host: str) -> None:
    """Any non-loopback address (or a host name) is refused without a token and allowed with one."""
    with pytest.raises(
        ConfigError, match=r"without an admin token; set admin\.token or BULKSEND_ADMIN_TOKEN"
    ):
        check_listen_address(host, None)
    with pytest.raises(ConfigError):
        check_listen_address(host, Secret(""))
    check_listen_address(host, Secret(TOKEN))


def test_refusal_message_names_the_address() -> None:
    """The refusal says which address was refused."""
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without an admin token"):
        check_listen_address("0.0.0.0", None)


# -- campaigns -----------------------------------------------------------------------------------
async def test_submit_toml_campaign_with_csv(client: Client) -> None:
    """A TOML campaign with a CSV upload is admitted: 201, Location, counts, and it is listed."""
    csv = b"email,name,first_name\nann@example.com,Ann,Ann\nnot-an-address,Bob,Bob\nann@EXAMPLE.com,Ann2,A\n"
    resp = await client.post(
        "/v1/campaigns", data=form(toml("spring"), csv, filename="people.csv"), headers=AUTH
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["Location"] == "/v1/campaigns/spring"
    info = await resp.json()
    assert info["id"] == "spring"
    assert info["state"] == "running"
    assert info["created_at"] == "2026-01-02T03:04:05Z"
    assert info["total"] == 3
    assert info["counts"]["pending"] == 1
    assert info["counts"]["rejected"] == 1
    assert info["counts"]["skipped"] == 1  # the same address twice: first wins
    assert info["done"] == 2
    assert info["error"] is None
    listed = await (await client.get("/v1/campaigns", headers=AUTH)).json()
    assert [c["id"] for c in listed["campaigns"]] == ["spring"]
    one = await (await client.get("/v1/campaigns/spring", headers=AUTH)).json()
    assert one == info


async def test_submit_json_campaign_with_jsonl(client: Client) -> None:
    """A JSON campaign part (application/json) with a JSONL upload is admitted like a TOML one."""
    info = await submit(client, campaign_json("autumn"), jsonl("a@example.com", "b@example.com"))
    assert info["id"] == "autumn"
    assert info["counts"]["pending"] == 2
    listed = await (await client.get("/v1/campaigns", headers=AUTH)).json()
    assert [c["id"] for c in listed["campaigns"]] == ["autumn"]


@pytest.mark.parametrize(
    ("campaign", "message"),
    [
        (toml("spring").replace('subject = "Hello', 'subjekt = "Hello'), "subject"),
        (toml("spring").replace("[sending]", "[sending"), "TOML syntax error"),
        (toml("no spaces allowed"), "id"),
        (toml("spring").replace("{{ first_name", "{{ first_name |"), "subject"),
        (campaign_json("autumn", text_file="/nonexistent/body.txt"), "text_file"),
        (campaign_json("autumn", text_file="/etc/passwd"), "files_root"),
        (campaign_json("x/welcome"), "letters, digits"),
        (campaign_json(".."), "letters, digits"),
        (campaign_json("jobs.welcome"), "reserved"),
        ({"campaign": "not a table"}, "campaign"),
        ({"sending": {"rate_per_s": 10}}, "campaign"),
        (campaign_json("autumn", **{"from": None}), '"campaign.from" is required: the sender address'),
        (toml("spring").replace("from = ", "# from = "), "[campaign] needs 'from' (the sender)"),
    ],
)
async def test_bad_campaign_is_400_with_the_reason(client: Client, campaign: Any, message: str) -> None:
    """A campaign the rules refuse is a 400 whose error carries the CampaignError message."""
    resp = await client.post("/v1/campaigns", data=form(campaign, jsonl("a@example.com")), headers=AUTH)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert message in error
    assert (await (await client.get("/v1/campaigns", headers=AUTH)).json()) == {"campaigns": []}


async def test_bad_recipients_file_is_400(client: Client) -> None:
    """A CSV without an email column, or an unknown suffix, is refused before anything is admitted."""
    resp = await client.post(
        "/v1/campaigns", data=form(toml(), b"name\nAnn\n", filename="people.csv"), headers=AUTH
    )
    assert resp.status == 400
    assert "email" in (await resp.json())["error"]
    resp = await client.post("/v1/campaigns", data=form(toml(), b"x", filename="people.xlsx"), headers=AUTH)
    assert resp.status == 400
    assert ".xlsx" in (await resp.json())["error"]


async def test_upload_shape_errors(client: Client) -> None:
    """Wrong content type is 415; a campaign part over 1 MiB is 413; other malformed uploads are 400."""
    resp = await client.post("/v1/campaigns", json={"campaign": {}}, headers=AUTH)
    assert resp.status == 415
    only_campaign = aiohttp.FormData()
    only_campaign.add_field("campaign", toml(), filename="c.toml")
    resp = await client.post("/v1/campaigns", data=only_campaign, headers=AUTH)
    assert resp.status == 400
    assert "recipients" in (await resp.json())["error"]
    reversed_order = aiohttp.FormData()
    reversed_order.add_field("recipients", jsonl("a@example.com"), filename="r.jsonl")
    reversed_order.add_field("campaign", toml(), filename="c.toml")
    resp = await client.post("/v1/campaigns", data=reversed_order, headers=AUTH)
    assert resp.status == 400
    assert "must come before" in (await resp.json())["error"]
    resp = await client.post(
        "/v1/campaigns", data=b"x", headers={**AUTH, "Content-Type": "multipart/form-data"}
    )
    assert resp.status == 400
    assert "multipart" in (await resp.json())["error"]
    huge = aiohttp.FormData()
    # As a file object: aiohttp warns that a body this large given as bytes blocks its loop.
    huge.add_field("campaign", io.BytesIO((toml() + "#" * (1024 * 1024)).encode()), filename="c.toml")
    huge.add_field("recipients", jsonl("a@example.com"), filename="r.jsonl")
    resp = await client.post("/v1/campaigns", data=huge, headers=AUTH)
    assert resp.status == 413
    assert "larger than" in (await resp.json())["error"]
    array = aiohttp.FormData()
    array.add_field("campaign", "[1, 2]", content_type="application/json")
    array.add_field("recipients", jsonl("a@example.com"), filename="r.jsonl")
    resp = await client.post("/v1/campaigns", data=array, headers=AUTH)
    assert resp.status == 400
    assert "object" in (await resp.json())["error"]


async def test_recipients_filename_is_reduced_to_its_base_name(
    client: Client, control: MemoryControl
) -> None:
    """A path in the upload's file name never reaches the control: only its last component does."""
    body = multipart(
        "b0undary",
        ("campaign", "text/plain", None, toml().encode()),
        ("recipients", "application/x-ndjson", "../../etc/evil.jsonl", jsonl("a@example.com")),
    )
    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=b0undary"}
    resp = await client.post("/v1/campaigns", data=body, headers=headers)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["counts"]["pending"] == 1
    spooled = list(control.spool_dir.rglob("*.jsonl"))
    assert [p.name for p in spooled] == ["evil.jsonl"]
    assert all(control.spool_dir in p.parents for p in spooled)


async def test_duplicate_campaign_id_is_409(client: Client) -> None:
    """Submitting a second campaign with an id already in use is a 409 Conflict."""
    await submit(client, toml("spring"), jsonl("a@example.com"))
    resp = await client.post("/v1/campaigns", data=form(toml("spring"), jsonl("b@example.com")), headers=AUTH)
    assert resp.status == 409
    assert "already exists" in (await resp.json())["error"]


class _FirstChunkSignal(MemoryControl):
    """MemoryControl that signals when the first recipients chunk reaches it."""

    def __init__(self, spool_dir: Path) -> None:
        super().__init__(spool_dir, clock=lambda: NOW)
        self.first_chunk = anyio.Event()

    async def submit_campaign(self, submission: Submission) -> CampaignInfo:
        assert not isinstance(submission.recipients, bytes)
        source = submission.recipients

        async def signalling() -> AsyncIterator[bytes]:
            async for chunk in source:
                self.first_chunk.set()
                yield chunk

        return await super().submit_campaign(dataclasses.replace(submission, recipients=signalling()))


async def test_recipients_reach_the_control_before_the_upload_ends(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """The upload is streamed: the control gets recipient bytes while the client is still sending."""
    ctl = _FirstChunkSignal(tmp_path / "spool2")
    client = await make_client(ctl=ctl)
    boundary = "bulksend-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="campaign"\r\n'
        f"Content-Type: text/plain\r\n\r\n{toml('streamed')}\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="recipients"; filename="r.jsonl"\r\n'
        "Content-Type: application/x-ndjson\r\n\r\n"
    ).encode()
    # Each half is several read chunks long: the multipart reader looks one read ahead (for the
    # boundary), so the control can only see bytes once more than one chunk has arrived.
    note = "x" * 1000
    first = b"".join(orjson.dumps({"email": f"u{i}@example.com", "note": note}) + b"\n" for i in range(1000))
    rest = b"".join(orjson.dumps({"email": f"v{i}@example.com", "note": note}) + b"\n" for i in range(1000))

    async def body() -> AsyncIterator[bytes]:
        yield head + first
        # The rest is held back until the control has seen recipient bytes: a server that
        # buffered the whole body first would never get there (and the guard below fails).
        await ctl.first_chunk.wait()
        yield rest + f"\r\n--{boundary}--\r\n".encode()

    with anyio.fail_after(10):
        resp = await client.post(
            "/v1/campaigns",
            data=body(),
            headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert resp.status == 201, await resp.text()
    info = await resp.json()
    assert info["total"] == 2000
    assert info["counts"]["pending"] == 2000
    size, chunks = ctl.uploads["streamed"]
    assert size == len(first) + len(rest)
    assert chunks >= 2
    await ctl.aclose()


# -- outcomes ------------------------------------------------------------------------------------
async def test_outcomes_are_streamed_as_jsonl(client: Client, control: MemoryControl) -> None:
    """Outcomes come as chunked application/x-ndjson, one line per input row, in input order."""
    emails = [f"user{i}@example.com" for i in range(1500)]
    await submit(client, toml("big"), jsonl(*emails, "broken"))
    resp = await client.get("/v1/campaigns/big/outcomes", headers=AUTH)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    assert resp.headers["Transfer-Encoding"] == "chunked"
    lines = [orjson.loads(line) async for line in resp.content if line.strip()]
    assert [line["row"] for line in lines] == list(range(1, 1502))
    assert set(lines[0]) == set(OUTCOME_FIELDS)
    assert {line["status"] for line in lines[:-1]} == {"unknown"}
    assert lines[-1]["status"] == "rejected"
    await control.finish("big", "sent")
    resp = await client.get("/v1/campaigns/big/outcomes", headers=AUTH)
    lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert [line["status"] for line in lines].count("sent") == 1500
    assert lines[0]["email_id"] is not None


async def test_outcomes_of_unknown_campaign_is_404(client: Client) -> None:
    """Outcomes of an id nobody submitted answer 404 JSON, not an empty stream."""
    resp = await client.get("/v1/campaigns/ghost/outcomes", headers=AUTH)
    assert resp.status == 404
    assert "ghost" in (await resp.json())["error"]


class _BreaksMidStream(MemoryControl):
    """MemoryControl whose outcome stream fails after a few lines (a store that went away)."""

    async def outcomes(self, campaign_id: str, *, live: bool = False) -> AsyncIterator[dict[str, Any]]:
        n = 0
        async for line in super().outcomes(campaign_id, live=live):
            yield line
            n += 1
            if n == 3:
                raise RuntimeError("store connection lost")


async def test_error_mid_stream_truncates_the_body(make_client: MakeClient, tmp_path: Path) -> None:
    """An error after streaming began ends the connection so the client sees a broken body."""
    ctl = _BreaksMidStream(tmp_path / "spool3", clock=lambda: NOW)
    client = await make_client(ctl=ctl)
    await submit(client, toml("c"), jsonl("a@example.com", "b@example.com", "c@example.com", "d@example.com"))
    resp = await client.get("/v1/campaigns/c/outcomes", headers=AUTH)
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    await ctl.aclose()


# -- state changes -------------------------------------------------------------------------------
async def test_pause_resume_cancel(client: Client) -> None:
    """pause/resume/cancel move the state; repeats are no-ops; cancel skips unsent rows; then 409."""
    await submit(client, toml("spring"), jsonl("a@example.com", "b@example.com"))

    async def post(action: str) -> tuple[int, Any]:
        resp = await client.post(f"/v1/campaigns/spring/{action}", headers=AUTH)
        return resp.status, await resp.json()

    status, info = await post("pause")
    assert (status, info["state"]) == (200, "paused")
    status, info = await post("pause")
    assert (status, info["state"]) == (200, "paused")
    status, info = await post("resume")
    assert (status, info["state"]) == (200, "running")
    status, info = await post("cancel")
    assert (status, info["state"]) == (200, "canceled")
    assert info["counts"]["pending"] == 0
    assert info["counts"]["skipped"] == 2
    status, info = await post("cancel")
    assert (status, info["state"]) == (200, "canceled")
    for action in ("resume", "pause"):
        status, body = await post(action)
        assert status == 409
        assert "canceled" in body["error"]


@pytest.mark.parametrize("action", ["pause", "resume", "cancel"])
async def test_state_change_of_unknown_campaign_is_404(client: Client, action: str) -> None:
    """pause/resume/cancel of an unknown id answer 404."""
    resp = await client.post(f"/v1/campaigns/ghost/{action}", headers=AUTH)
    assert resp.status == 404
    assert "ghost" in (await resp.json())["error"]


async def test_finished_campaign_cannot_be_resumed_or_canceled(
    client: Client, control: MemoryControl
) -> None:
    """A finished campaign shows its final counts; resume, pause and cancel of it are 409."""
    await submit(client, toml("done"), jsonl("a@example.com", "b@example.com"))
    await control.finish("done", "sent")
    info = await (await client.get("/v1/campaigns/done", headers=AUTH)).json()
    assert info["state"] == "finished"
    assert info["counts"]["final"] == 2
    assert info["counts"]["status:sent"] == 2
    for action in ("resume", "pause", "cancel"):
        assert (await client.post(f"/v1/campaigns/done/{action}", headers=AUTH)).status == 409


async def test_failed_campaign_reports_its_error(client: Client, control: MemoryControl) -> None:
    """A failed campaign is listed as failed with its error, and cannot be resumed."""
    await submit(client, toml("broken"), jsonl("a@example.com"))
    await control.fail("broken", "TEM refused the key (401)")
    info = await (await client.get("/v1/campaigns/broken", headers=AUTH)).json()
    assert (info["state"], info["error"]) == ("failed", "TEM refused the key (401)")
    assert (await client.post("/v1/campaigns/broken/resume", headers=AUTH)).status == 409


async def test_get_unknown_campaign_is_404(client: Client) -> None:
    """GET of an unknown campaign id answers 404 JSON."""
    resp = await client.get("/v1/campaigns/ghost", headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"] == "no campaign with id 'ghost'"


# -- templates -----------------------------------------------------------------------------------
async def test_templates_put_then_list(client: Client, control: MemoryControl) -> None:
    """PUT stores a template (204) and GET lists it by name; a second PUT replaces it."""
    template = {
        "from": {"email": "news@example.com", "name": "News"},
        "subject": "Hi {{ name }}",
        "text": "Hello {{ name }}",
        "headers": {"List-Unsubscribe": "<https://example.com/u/{{ id }}>"},
    }
    resp = await client.put("/v1/templates/welcome", json=template, headers=AUTH)
    assert resp.status == 204
    other = {"from": "news@example.com", "subject": "S", "html": "<p>x</p>"}
    resp = await client.put("/v1/templates/a.b-c_1", json=other, headers=AUTH)
    assert resp.status == 204
    assert await (await client.get("/v1/templates", headers=AUTH)).json() == {
        "templates": ["a.b-c_1", "welcome"]
    }
    assert control.template("welcome") == template
    replaced = {**template, "subject": "New subject"}
    assert (await client.put("/v1/templates/welcome", json=replaced, headers=AUTH)).status == 204
    assert control.template("welcome") == replaced


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("t", {"from": SENDER, "text": "x"}, "subject"),
        ("t", {"from": SENDER, "subject": "s"}, "'text' or an 'html'"),
        ("t", {"from": SENDER, "subject": "s\nBcc: x@example.com", "text": "x"}, "one line"),
        ("t", {"from": SENDER, "subject": "s", "text": "x", "reply_to": "a@x.com"}, "unknown template keys"),
        ("t", {"from": SENDER, "subject": "s", "text": "x", "headers": {"X-A": "1\r\nBcc: x"}}, "line break"),
        ("t", {"from": SENDER, "subject": "s", "text": "x", "headers": {"X-Bulksend-Ref": "r"}}, "reserved"),
        ("t", {"subject": "s", "text": "x", "from": "not an address"}, "'from'"),
        ("t", {"subject": "s", "text": "x"}, '"from" is required: the sender address, e.g. {"email"'),
        ("t", ["subject"], "JSON object"),
        ("-bad", {"subject": "s", "text": "x"}, "template name"),
    ],
)
async def test_bad_template_is_400(client: Client, name: str, body: Any, message: str) -> None:
    """A template with a bad shape or name is refused with a 400 saying what is wrong."""
    resp = await client.put(f"/v1/templates/{name}", json=body, headers=AUTH)
    assert resp.status == 400
    assert message in (await resp.json())["error"]
    assert (await (await client.get("/v1/templates", headers=AUTH)).json()) == {"templates": []}


async def test_template_must_be_json(client: Client) -> None:
    """A template body that is not JSON is 415 (wrong type) or 400 (broken JSON)."""
    resp = await client.put("/v1/templates/t", data=b"subject = 's'", headers=AUTH)
    assert resp.status == 415
    resp = await client.put(
        "/v1/templates/t", data=b"{", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status == 400


# -- health, metrics, errors ---------------------------------------------------------------------
async def test_readyz_reports_failing_checks(client: Client, control: MemoryControl) -> None:
    """/readyz is 200 when every check passes and 503 naming the failing ones otherwise."""
    control.checks["source:nats"] = True
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ready"
    control.checks["source:nats"] = False
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["failing"] == ["source:nats"]
    assert body["checks"] == {"store": True, "source:nats": False}


async def test_metrics_endpoint_serves_prometheus_text(client: Client, metrics: Metrics) -> None:
    """/metrics serves the Metrics registry as parseable Prometheus text."""
    metrics.on_api_response("send", 200, 0.1)
    metrics.observe_outcome("spring", "sent")
    resp = await client.get("/metrics", headers=AUTH)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"bulksend_api_calls", "bulksend_emails", "bulksend_in_flight_emails"} <= names
    assert "bulksend_queue_lag_messages" in names
    assert 'bulksend_emails_total{campaign="spring",status="sent"} 1.0' in text


class _Exploding(MemoryControl):
    async def list_campaigns(self) -> list[CampaignInfo]:
        raise RuntimeError("password=hunter2 at /var/lib/bulksend/state.db")

    async def health(self) -> dict[str, bool]:
        raise RuntimeError("password=hunter2")


async def test_unexpected_errors_are_500_without_internals(make_client: MakeClient, tmp_path: Path) -> None:
    """An unexpected exception becomes a generic 500 (or 503 for readyz) that leaks nothing."""
    client = await make_client(ctl=_Exploding(tmp_path / "spool4"))
    resp = await client.get("/v1/campaigns", headers=AUTH)
    assert resp.status == 500
    text = await resp.text()
    assert "hunter2" not in text
    assert "error" in orjson.loads(text)
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert "hunter2" not in await resp.text()


async def test_method_not_allowed_is_json(client: Client) -> None:
    """A wrong method on a known route is a JSON 405 with an Allow header."""
    resp = await client.delete("/v1/campaigns", headers=AUTH)
    assert resp.status == 405
    assert "Allow" in resp.headers
    assert "error" in await resp.json()
