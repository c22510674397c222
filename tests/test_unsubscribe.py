"""One-click unsubscribe (RFC 8058): the campaign's [unsubscribe] table, the headers every email
then carries, and `bulksend serve`'s /u/{token} endpoint recording unsubscribes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest

from bulksend.campaign.load import campaign_from_dict
from bulksend.campaign.render import RenderedEmail, Renderer
from bulksend.cli.main import main
from bulksend.daemon.config import load_daemon_config
from bulksend.daemon.service import Daemon
from bulksend.deliverability.tokens import SECRET_ENV, UnsubscribeSigner
from bulksend.deliverability.unsubscribe import RateLimit
from bulksend.errors import CampaignError
from bulksend.sandbox import Sandbox, SandboxConfig, ThreadedSandbox, sandbox_in_thread
from bulksend.secret import Secret
from bulksend.suppression import SuppressionReason, SuppressionSource
from bulksend.tem.config import TemSettings
from bulksend.testing import FakeClock
from tests.conftest import PROJECT, SECRET, read_jsonl
from tests.test_cli import env_for
from tests.test_daemon import WELCOME, running, write_config
from tests.test_send_preflight import people, write_campaign

UNSUBSCRIBE_SECRET = "unsubscribe-test-secret-0123456789"
ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, UNSUBSCRIBE_SECRET)


def campaign_data(tmp_path: Path, **unsubscribe: Any) -> dict[str, Any]:
    (tmp_path / "people.csv").write_text("email,first_name\nann@example.org,Ann\n", encoding="utf-8")
    return {
        "campaign": {
            "id": "spring",
            "from": {"email": "news@example.com"},
            "subject": "Hello {{ first_name }}",
            "text": "Hi {{ first_name }}. Leave: {{ unsubscribe_url }}",
            "recipients": "people.csv",
        },
        "unsubscribe": unsubscribe,
    }


def _headers(rendered: RenderedEmail) -> dict[str, str]:
    body = orjson.loads(rendered.body)
    return {h["key"]: h["value"] for h in body["additional_headers"]}


def test_every_email_carries_a_signed_link_and_the_one_click_header(tmp_path: Path) -> None:
    """List-Unsubscribe holds the recipient's /u/ link and the mailto; List-Unsubscribe-Post, One-Click."""
    data = campaign_data(tmp_path, url="https://mail.example.com/", mailto="leave@example.com")
    campaign = campaign_from_dict(data, base_dir=tmp_path, source="test")
    rendered = Renderer(campaign, project_id=PROJECT).render(
        "Ann@Example.org", "Ann", {"first_name": "Ann"}, correlation="r1"
    )
    assert isinstance(rendered, RenderedEmail)
    headers = _headers(rendered)
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link, mailto = headers["List-Unsubscribe"].split(", ")
    assert mailto == "<mailto:leave@example.com?subject=unsubscribe>"
    assert link.startswith("<https://mail.example.com/u/")
    assert link.endswith(">")
    token = link[len("<https://mail.example.com/u/") : -1]
    found = UnsubscribeSigner(UNSUBSCRIBE_SECRET).verify(token)
    assert (found.project_id, found.address, found.campaign_id) == (PROJECT, "ann@example.org", "spring")
    assert abs(found.issued_at - time.time()) < 60
    assert f"Leave: {link[1:-1]}" in orjson.loads(rendered.body)["text"]
    assert list(headers)[-1] == "X-Bulksend-Ref"


@pytest.mark.parametrize(
    ("unsubscribe", "headers", "message"),
    [
        ({"url": "http://mail.example.com"}, {}, "unsubscribe.url must be the https:// base URL"),
        ({"url": "https://mail.example.com/?a=1"}, {}, "no query"),
        ({}, {}, "'url'"),
        ({"url": "https://mail.example.com", "mailto": "nobody"}, {}, "unsubscribe.mailto"),
        (
            {"url": "https://mail.example.com"},
            {"List-Unsubscribe": "<https://x>"},
            "written by [unsubscribe]",
        ),
    ],
)
def test_a_bad_unsubscribe_table_is_refused(
    tmp_path: Path, unsubscribe: dict[str, str], headers: dict[str, str], message: str
) -> None:
    """A plain-http or query URL, a missing url, a bad mailto, or a hand-written header is refused."""
    data = campaign_data(tmp_path, **unsubscribe)
    data["campaign"]["headers"] = headers
    with pytest.raises(CampaignError, match=message.replace("[", r"\[").replace("?", r"\?")):
        campaign_from_dict(data, base_dir=tmp_path, source="test")


def test_unsubscribe_without_the_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no BULKSEND_UNSUBSCRIBE_SECRET, [unsubscribe] cannot be turned on; the error names it."""
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(CampaignError, match=SECRET_ENV):
        campaign_from_dict(
            campaign_data(tmp_path, url="https://mail.example.com"), base_dir=tmp_path, source="t"
        )


def test_the_rate_limit_refuses_beyond_the_burst_and_refills() -> None:
    """The burst goes through, the next request is refused, and time refills the bucket."""
    clock = FakeClock(0.0)
    limit = RateLimit(per_s=2.0, burst=3.0, clock=clock)
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert limit.allow()
    assert not limit.allow()


@dataclass
class Served:
    daemon: Daemon
    http: aiohttp.ClientSession
    signer: UnsubscribeSigner

    def url(self, token: str) -> str:
        assert self.daemon.admin_url is not None
        return f"{self.daemon.admin_url}/u/{token}"

    def token(self, address: str, **options: Any) -> str:
        return self.signer.token(PROJECT, address, "jobs.welcome", **options)

    async def entries(self, *addresses: str) -> dict[str, Any]:
        return await self.daemon.store.suppressed(PROJECT, list(addresses))


@asynccontextmanager
async def serving(tmp_path: Path, sandbox: Sandbox | ThreadedSandbox) -> AsyncIterator[Served]:
    """`bulksend serve` with an admin token, a template with [unsubscribe] and links valid 30 days
    (run in the test's own task: a fixture's teardown runs in another)."""
    template = {**WELCOME, "unsubscribe": {"url": "https://mail.example.com"}}
    path = write_config(
        tmp_path,
        admin={"token": "admin-token-0123456789"},
        templates={"welcome": template},
    )
    path.write_text(
        path.read_text(encoding="utf-8") + "[deliverability]\nunsubscribe_max_age_days = 30\n",
        encoding="utf-8",
    )
    settings = TemSettings(secret_key=Secret(SECRET), project_id=PROJECT, api_url=sandbox.url)
    daemon = Daemon(load_daemon_config(path), settings)
    async with running(daemon), aiohttp.ClientSession() as http:
        yield Served(daemon, http, UnsubscribeSigner(UNSUBSCRIBE_SECRET))


async def test_one_click_post_suppresses_the_address_in_one_request(tmp_path: Path, sandbox: Sandbox) -> None:
    """RFC 8058's exact POST, no auth: 200, no redirect, and the address is suppressed when it returns."""
    async with serving(tmp_path, sandbox) as served:
        token = served.token("Ann@Example.org")
        async with served.http.post(
            served.url(token), data=ONE_CLICK, headers=FORM, allow_redirects=False
        ) as r:
            assert r.status == 200
            assert "ann@example.org" in await r.text()
            assert r.headers["Cache-Control"] == "no-store"
        entry = (await served.entries("ann@example.org"))["ann@example.org"]
        assert (entry.reason, entry.source, entry.until) == (
            SuppressionReason.UNSUBSCRIBE,
            SuppressionSource.UNSUBSCRIBE,
            None,
        )
        assert entry.origin == "unsubscribe link of jobs.welcome"
        async with served.http.get(f"{served.daemon.admin_url}/v1/campaigns") as r:
            assert r.status == 401  # the admin API still needs its token


async def test_get_shows_a_confirmation_page_and_unsubscribes_nobody(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A link scanner's GET gets a page whose button POSTs back; nothing is recorded."""
    async with serving(tmp_path, sandbox) as served:
        async with served.http.get(served.url(served.token("bob@example.org")), allow_redirects=False) as r:
            assert r.status == 200
            page = await r.text()
        assert '<form method="post">' in page
        assert 'name="List-Unsubscribe" value="One-Click"' in page
        assert await served.entries("bob@example.org") == {}


async def test_bad_tokens_all_get_the_same_refusal(tmp_path: Path, sandbox: Sandbox) -> None:
    """Forged, tampered, truncated, expired, other-project and oversized tokens: one status, one body."""
    async with serving(tmp_path, sandbox) as served:
        good = served.token("carl@example.org")
        tampered = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
        other = UnsubscribeSigner("another-secret-0123456789abcdef")
        bad = [
            other.token(PROJECT, "carl@example.org", "jobs.welcome"),
            tampered,
            good[:40],
            served.token("carl@example.org", issued_at=time.time() - 31 * 86_400),
            served.signer.token("6170692e-7363-616c-6577-61792e636f6d", "carl@example.org", "jobs.welcome"),
            "x" * 2000,
            "not.base64",
        ]
        answers = set()
        for token in bad:
            for method in ("GET", "POST"):
                async with served.http.request(method, served.url(token), data=ONE_CLICK, headers=FORM) as r:
                    answers.add((r.status, await r.text()))
        assert len(answers) == 1, answers
        [(status, body)] = answers
        assert status == 404
        assert "not valid" in body
        assert await served.entries("carl@example.org") == {}


def test_an_unsubscribed_address_is_skipped_by_the_next_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After one POST to /u/, a campaign sent with the daemon's list skips the address and says why."""
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sandbox:

        async def unsubscribe() -> None:
            async with serving(tmp_path / "daemon", sandbox) as served:
                token = served.token("p1@example.com")
                async with served.http.post(served.url(token), data=ONE_CLICK, headers=FORM) as r:
                    assert r.status == 200

        anyio.run(unsubscribe)
        path = write_campaign(tmp_path / "campaign", people(3))
        env_for(monkeypatch, sandbox.url)
        monkeypatch.setenv("BULKSEND_SUPPRESSION_URL", str(tmp_path / "daemon" / "state" / "bulksend.db"))
        assert main(["send", str(path), "--no-progress"]) == 0
        assert sandbox.stats().accepted_by_recipient == {"p0@example.com": 1, "p2@example.com": 1}
    outcomes = {line["email"]: line for line in read_jsonl(tmp_path / "campaign" / "out" / "pre.jsonl")}
    assert outcomes["p1@example.com"]["status"] == "skipped"
    assert outcomes["p1@example.com"]["reason"].startswith("suppressed: unsubscribe since ")
    assert {outcomes[f"p{i}@example.com"]["status"] for i in (0, 2)} == {"sent"}
