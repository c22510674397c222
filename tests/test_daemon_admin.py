"""The admin HTTP API of a real daemon (in-process) against the sandbox: auth, campaigns, metrics.

Campaign states are read through the API, as a client would, each time the daemon's store has
committed a write (so the tests wait on events, never on the clock).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
import structlog

from bulksend.daemon.admin.control import Submission
from bulksend.daemon.config import load_daemon_config
from bulksend.daemon.service import Daemon
from bulksend.errors import CampaignError, ConfigError
from bulksend.sandbox import Sandbox
from bulksend.sinks.outcomes import OUTCOME_FIELDS
from bulksend.store.base import CANCELED_BEFORE_SENDING
from bulksend.testing import campaign_toml
from tests.conftest import SECRET, settings_for
from tests.test_daemon import (
    CollectingPublisher,
    DaemonWatch,
    ObservedStore,
    RecordingSource,
    job,
    running,
    write_config,
)
from tests.waiting import wait_until

TOKEN = "admin-token-7c1d9e"


@pytest.fixture(autouse=True)
def _plain_logging() -> None:
    """Log through structlog's defaults (the current stdout): a test that ran a CLI command
    in-process may have left structlog writing to its captured stream, closed since."""
    structlog.reset_defaults()


def campaign_file(campaign_id: str, concurrency: int = 2) -> str:
    """A campaign file to submit: its recipients come with it, their columns ``email,first_name,n``."""
    return campaign_toml(
        campaign_id,
        campaign={"text": "Hi {{ first_name }}, row {{ n }}."},
        sending={"concurrency": concurrency},
        tracking={"poll_interval_s": 0.05, "settle_s": 0.05},
    )


def recipients_csv(addresses: list[str]) -> bytes:
    lines = ["email,first_name,n"] + [f"{a},P{i},{i}" for i, a in enumerate(addresses)]
    return ("\n".join(lines) + "\n").encode()


class Admin:
    """A client of one daemon's admin API."""

    def __init__(self, daemon: Daemon, http: aiohttp.ClientSession, store: ObservedStore) -> None:
        assert daemon.admin_url is not None
        self.url = daemon.admin_url
        self.http = http
        self.store = store

    async def call(
        self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: Any
    ) -> tuple[int, Any]:
        """(status, decoded JSON body or text), with ``token`` as the bearer token (None: none)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as response:
            text = await response.text()
            if response.content_type == "application/json":
                return response.status, orjson.loads(text)
            return response.status, text

    async def submit(self, campaign_id: str, addresses: list[str], *, concurrency: int = 2) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("campaign", campaign_file(campaign_id, concurrency))
        csv = recipients_csv(addresses)
        form.add_field("recipients", csv, filename="people.csv", content_type="text/csv")
        status, body = await self.call("POST", "/v1/campaigns", data=form)
        assert status == 201, body
        return dict(body)

    async def campaign(self, campaign_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/v1/campaigns/{campaign_id}")
        assert status == 200, body
        return dict(body)

    async def wait_until(
        self, campaign_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float = 20
    ) -> dict[str, Any]:
        """Read the campaign through the API after each store write until ``done(campaign)``."""
        seen: list[dict[str, Any]] = []

        async def check() -> bool:
            seen.append(await self.campaign(campaign_id))
            return done(seen[-1])

        await self.store.wait_until(check, timeout_s)
        return seen[-1]

    async def outcomes(self, campaign_id: str) -> list[dict[str, Any]]:
        url = f"{self.url}/v1/campaigns/{campaign_id}/outcomes"
        async with self.http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
            assert response.content_type == "application/x-ndjson"
            return [orjson.loads(line) for line in (await response.read()).splitlines()]


@asynccontextmanager
async def admin_daemon(
    tmp_path: Path, sandbox: Sandbox, *, admin: Mapping[str, Any] | None = None, **config: Any
) -> AsyncIterator[tuple[Daemon, Admin, RecordingSource, DaemonWatch]]:
    """A running daemon with an admin token and one memory job source, and a client for its API;
    ``admin`` adds to its [admin] table, ``config`` to the other tables."""
    path = write_config(
        tmp_path,
        sources=[{"kind": "memory", "name": "jobs"}],
        admin={"listen": "127.0.0.1:0", "token": TOKEN, **(admin or {})},
        **config,
    )
    loaded = load_daemon_config(path)
    store = ObservedStore(loaded.data_dir / "bulksend.db")
    daemon = Daemon(loaded, settings_for(sandbox), store=store)
    source = RecordingSource()
    daemon.sources = [source]
    daemon.publisher = CollectingPublisher()
    watch = DaemonWatch(daemon)
    with anyio.fail_after(60):
        async with running(daemon), aiohttp.ClientSession() as http:
            yield daemon, Admin(daemon, http, store), source, watch


def sent_to(sandbox: Sandbox, addresses: list[str]) -> int:
    """Emails the sandbox accepted for these addresses."""
    counts = sandbox.stats().accepted_by_recipient
    return sum(counts.get(a, 0) for a in addresses)


def is_over(campaign: dict[str, Any]) -> bool:
    """Every recipient of the campaign has its outcome (nothing pending, sending or submitted)."""
    counts = campaign["counts"]
    return not any(counts.get(state, 0) for state in ("pending", "sending", "submitted"))


async def test_auth_health_and_metrics(tmp_path: Path, sandbox: Sandbox) -> None:
    """Without or with a wrong token the API answers 401; /healthz and /readyz are open; /readyz
    is 200 while the store and the sources are up and 503 once a source is down; /metrics shows
    the email, API call, limiter and job series."""
    async with admin_daemon(tmp_path, sandbox) as (_, admin, source, watch):
        assert (await admin.call("GET", "/v1/campaigns", token=None))[0] == 401
        wrong = await admin.call("GET", "/v1/campaigns", token="nope")
        assert wrong == (401, {"error": "invalid admin token"})
        assert (await admin.call("GET", "/metrics", token=None))[0] == 401
        assert await admin.call("GET", "/healthz", token=None) == (200, {"status": "ok"})
        status, ready = await admin.call("GET", "/readyz", token=None)
        assert status == 200, ready
        checks = {
            "store": True,
            f"source:{source.name}": True,
            "results:memory:results": True,
            "results_backlog": True,
            "tem": True,
        }
        assert ready["checks"] == checks
        assert ready["details"] == {"results_backlog": 0}
        assert (await admin.call("GET", "/v1/campaigns"))[1] == {"campaigns": []}

        source.publish(job("order-1", "ann@example.com"))
        await watch.wait(outcomes=1)
        status, text = await admin.call("GET", "/metrics")
        assert status == 200
        for series in (
            'bulksend_emails_total{campaign="jobs.welcome",status="sent"} 1.0',
            'bulksend_api_calls_total{code="200",endpoint="send"} 1.0',
            "bulksend_limiter_rate_per_second 5000.0",
            f'bulksend_jobs_total{{result="admitted",source="{source.name}"}} 1.0',
            f'bulksend_queue_lag_messages{{source="{source.name}"}}',
            "bulksend_tracker_backlog_emails",
            "\nbulksend_in_flight_emails ",
            'bulksend_reconciliations_total{outcome="adopted"} 0.0',
            "\nbulksend_ready 1.0",
        ):
            assert series in text, series

        await source.close()  # the broker connection is gone: not ready
        status, ready = await admin.call("GET", "/readyz", token=None)
        assert status == 503
        assert ready["failing"] == [f"source:{source.name}"]


async def test_campaign_runs_to_finished_with_one_outcome_line_per_row(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A campaign submitted as TOML + CSV runs to `finished`; its outcomes stream one line per row,
    in order, and every valid recipient got exactly one email."""
    addresses = [f"user{i}@example.com" for i in range(20)]
    rows = [*addresses[:10], "not-an-address", addresses[3], *addresses[10:]]
    async with admin_daemon(tmp_path, sandbox) as (_, admin, _, _):
        created = await admin.submit("spring", rows, concurrency=4)
        assert (created["id"], created["state"]) == ("spring", "running")
        info = await admin.wait_until("spring", lambda c: c["state"] == "finished")
        lines = await admin.outcomes("spring")
        status, again = await admin.call("POST", "/v1/campaigns", data=_resubmit("spring"))
    assert info["counts"]["final"] == 20
    assert info["done"] == len(rows)
    assert [line["row"] for line in lines] == list(range(2, len(rows) + 2))  # CSV line numbers
    assert all(set(line) == set(OUTCOME_FIELDS) for line in lines)
    by_email = {line["email"]: line for line in lines}
    assert by_email["not-an-address"]["status"] == "rejected"
    assert [line["status"] for line in lines].count("skipped") == 1  # the repeated address
    assert [line["status"] for line in lines].count("sent") == 20
    assert sandbox.stats().accepted_by_recipient == dict.fromkeys(addresses, 1)
    assert status == 409, again


def _resubmit(campaign_id: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("campaign", campaign_file(campaign_id))
    form.add_field("recipients", recipients_csv(["x@example.com"]), filename="people.csv")
    return form


async def test_pause_stops_sending_and_resume_finishes_exactly_once(tmp_path: Path, sandbox: Sandbox) -> None:
    """After pause returns and in-flight requests are recorded, the campaign sends nothing more
    (while another campaign keeps the daemon busy); resume sends the rest, each recipient once."""
    sandbox.update(latency_ms=40)  # two workers: about 50 sends/s, so there is time to pause
    addresses = [f"slow{i}@example.com" for i in range(40)]
    others = [f"other{i}@example.com" for i in range(6)]
    async with admin_daemon(tmp_path, sandbox) as (_, admin, _, watch):
        await admin.submit("slow", addresses, concurrency=2)
        await watch.wait(outcomes=3)
        status, paused = await admin.call("POST", "/v1/campaigns/slow/pause")
        assert (status, paused["state"]) == (200, "paused"), paused
        drained = await admin.wait_until("slow", lambda c: c["counts"].get("sending", 0) == 0)
        before = sent_to(sandbox, addresses)
        # While "slow" is paused the daemon goes on sending another campaign to its end.
        await admin.submit("other", others, concurrency=2)
        await admin.wait_until("other", lambda c: c["state"] == "finished")
        after = sent_to(sandbox, addresses)
        assert (await admin.campaign("slow"))["state"] == "paused"
        assert (await admin.call("POST", "/v1/campaigns/slow/pause"))[0] == 200  # harmless repeat
        status, resumed = await admin.call("POST", "/v1/campaigns/slow/resume")
        assert (status, resumed["state"]) == (200, "running"), resumed
        await admin.wait_until("slow", lambda c: c["state"] == "finished")
        lines = await admin.outcomes("slow")
    assert drained["counts"].get("pending", 0) > 0  # paused with work left
    assert after == before < len(addresses)
    assert sent_to(sandbox, others) == len(others)
    assert sandbox.stats().accepted_by_recipient == dict.fromkeys(addresses + others, 1)
    assert [line["status"] for line in lines] == ["sent"] * len(addresses)


async def test_pause_under_the_rate_limit_sends_nothing_more(tmp_path: Path, sandbox: Sandbox) -> None:
    """Paused while its workers wait for the rate limiter, a campaign sends nothing more."""
    addresses = [f"slow{i}@example.com" for i in range(60)]
    others = [f"other{i}@example.com" for i in range(3)]
    async with admin_daemon(tmp_path, sandbox, sending={"rate_per_s": 20}) as (_, admin, _, watch):
        await admin.submit("slow", addresses, concurrency=4)
        await watch.wait(outcomes=3)
        assert (await admin.call("POST", "/v1/campaigns/slow/pause"))[0] == 200
        await admin.wait_until("slow", lambda c: c["counts"].get("sending", 0) == 0)
        before = sent_to(sandbox, addresses)
        await admin.submit("other", others, concurrency=2)
        await admin.wait_until("other", lambda c: c["state"] == "finished")
        assert sent_to(sandbox, addresses) == before


async def test_cancel_skips_pending_rows_and_cancels_new_emails_at_tem(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Cancel gives rows not sent yet the outcome `canceled` (with the reason) and cancels at TEM
    the emails still `new` (hold…): they end `canceled`; the campaign ends `canceled` with one
    outcome per row."""
    sandbox.update(latency_ms=40)
    holds = [f"hold{i}@example.com" for i in range(4)]
    rest = [f"user{i}@example.com" for i in range(40)]
    async with admin_daemon(tmp_path, sandbox) as (_, admin, _, watch):
        await admin.submit("autumn", holds + rest, concurrency=2)
        await watch.wait(outcomes=3)  # the first recipients after the holds are final by now
        assert sent_to(sandbox, holds) == len(holds)
        status, canceled = await admin.call("POST", "/v1/campaigns/autumn/cancel")
        assert (status, canceled["state"]) == (200, "canceled"), canceled
        info = await admin.wait_until("autumn", is_over)
        lines = await admin.outcomes("autumn")
        assert (await admin.call("POST", "/v1/campaigns/autumn/cancel"))[0] == 200  # harmless repeat
        assert (await admin.call("POST", "/v1/campaigns/autumn/resume"))[0] == 409
    assert info["state"] == "canceled"
    statuses = {line["email"]: line["status"] for line in lines}
    assert len(lines) == len(holds) + len(rest)
    assert all(statuses[a] == "canceled" for a in holds)
    never_sent = [line for line in lines if line["status"] == "canceled" and not line["email_id"]]
    assert never_sent
    assert all(line["reason"] == CANCELED_BEFORE_SENDING for line in never_sent)
    assert {line["status"] for line in lines} == {"canceled", "sent"}
    counts = sandbox.stats().accepted_by_recipient
    assert set(counts.values()) == {1}
    assert not {line["email"] for line in never_sent} & set(counts)
    assert info["counts"].get("status:canceled") == len(holds)


async def test_cancel_gives_every_row_an_outcome_through_429s_and_ambiguous_answers(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Canceled early, while TEM answers 429s (rows waiting to retry), some answers are lost after
    the email was created (rows left `sending`), and most of the file is not read yet: the
    campaign still ends `canceled` with exactly one outcome line per input row, none `unknown`;
    nobody got two emails, and no row canceled before sending reached TEM."""
    sandbox.update(rate_limit_per_s=40, rate_limit_burst=5, fault_5xx_after_p=0.2, seed=14)
    holds = [f"hold{i}@example.com" for i in range(3)]
    rest = [f"user{i}@example.com" for i in range(1400)]
    async with admin_daemon(tmp_path, sandbox) as (_, admin, _, watch):
        await admin.submit("winter", holds + rest, concurrency=8)
        await watch.wait(outcomes=3)
        status, canceled = await admin.call("POST", "/v1/campaigns/winter/cancel")
        assert (status, canceled["state"]) == (200, "canceled"), canceled
        info = await admin.wait_until("winter", lambda c: is_over(c) and c["done"] == c["total"], 60)
        lines = await admin.outcomes("winter")
    assert info["state"] == "canceled"
    assert info["total"] == len(holds) + len(rest)
    assert [line["row"] for line in lines] == list(range(2, len(holds) + len(rest) + 2))
    statuses = [line["status"] for line in lines]
    assert set(statuses) <= {"sent", "canceled"}, set(statuses)
    assert sandbox.stats().rate_limited > 0
    accepted = sandbox.stats().accepted_by_recipient
    assert set(accepted.values()) == {1}
    never_sent = {line["email"] for line in lines if line["reason"] == CANCELED_BEFORE_SENDING}
    assert len(never_sent) > 500  # most of the file was never read when it was canceled
    assert not never_sent & set(accepted)
    assert {line["email"] for line in lines if line["status"] == "sent"} <= set(accepted)


async def test_refuses_every_interface_without_a_token(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On 0.0.0.0 without an admin token the daemon refuses to start (ConfigError), before it binds."""
    monkeypatch.delenv("BULKSEND_ADMIN_TOKEN", raising=False)
    path = write_config(tmp_path, admin={"listen": "0.0.0.0:0"})
    daemon = Daemon(load_daemon_config(path), settings_for(sandbox))
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without an admin token"):
        await daemon.run()
    assert daemon.admin_url is None


async def test_job_campaign_ids_are_reserved(tmp_path: Path, sandbox: Sandbox) -> None:
    """A submitted campaign may not take an id of the `jobs.` namespace, where queued jobs live."""
    async with admin_daemon(tmp_path, sandbox) as (daemon, admin, _, _):
        form = aiohttp.FormData()
        form.add_field("campaign", campaign_file("jobs.welcome"))
        form.add_field("recipients", recipients_csv(["x@example.com"]), filename="people.csv")
        status, body = await admin.call("POST", "/v1/campaigns", data=form)
        with pytest.raises(CampaignError):
            await daemon.submit_campaign(Submission(campaign_file("jobs.x"), b"email\n", "r.csv"))
    assert status == 400
    assert "reserved" in body["error"], body


async def test_total_counts_and_created_at_are_known_from_the_first_answer(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The 201 answer already gives `total` (rows of the upload) and `counts` with every state;
    `created_at` is the same in the 201 answer, every later read and the list; at the end
    `done == total`."""
    rows = ["a@example.com", "not-an-address", "b@example.com", "a@example.com"]
    async with admin_daemon(tmp_path, sandbox) as (_, admin, _, _):
        created = await admin.submit("totals", rows)
        read = await admin.campaign("totals")
        finished = await admin.wait_until("totals", lambda c: c["state"] == "finished")
        listed = (await admin.call("GET", "/v1/campaigns"))[1]["campaigns"]
    assert created["total"] == len(rows)
    assert set(created["counts"]) >= {"pending", "sending", "submitted", "final", "rejected", "skipped"}
    assert read["total"] == finished["total"] == len(rows)
    assert finished["done"] == finished["total"]
    assert created["created_at"] == read["created_at"] == finished["created_at"] == listed[0]["created_at"]


def test_a_template_without_a_sender_is_refused_by_name(tmp_path: Path) -> None:
    """A daemon template without `from` is refused with its name and how to add the sender,
    not with the campaign file's `[campaign]` wording."""
    from bulksend.jobs.intake import compile_template

    empty = tmp_path / "none.jsonl"
    empty.touch()
    with pytest.raises(CampaignError, match=r"template 'welcome' needs 'from' \(the sender"):
        compile_template(
            "welcome",
            {"subject": "Hi", "text": "Hello"},
            base_dir=tmp_path,
            empty_recipients=empty,
            project_id="p",
            sending={},
            tracking={},
            outcomes=tmp_path / "out.jsonl",
            source="daemon.toml [templates.welcome]",
        )


async def test_an_ended_campaign_leaves_no_series_behind(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a submitted campaign is finished its `campaign` label is gone from /metrics (the label
    must not grow without bound), while the API still gives its figures; job streams keep theirs."""
    async with admin_daemon(tmp_path, sandbox) as (daemon, admin, source, watch):
        forgotten = anyio.Event()
        forget = daemon.metrics.forget_campaign

        def forget_and_tell(campaign: str) -> None:
            forget(campaign)
            if campaign == "brief":
                forgotten.set()

        monkeypatch.setattr(daemon.metrics, "forget_campaign", forget_and_tell)
        source.publish(job("order-1", "ann@example.com"))
        await watch.wait(outcomes=1)
        await admin.submit("brief", ["a@example.com", "b@example.com"])
        info = await admin.wait_until("brief", lambda c: c["state"] == "finished")
        with anyio.fail_after(20):
            await forgotten.wait()
        text = (await admin.call("GET", "/metrics"))[1]
    assert 'campaign="brief"' not in text
    assert info["counts"]["status:sent"] == 2
    assert 'bulksend_emails_total{campaign="jobs.welcome",status="sent"} 1.0' in text


async def test_a_refused_key_at_run_time_stops_sending_and_the_daemon_stays_up_not_ready(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """TEM starts refusing the key (401) while jobs and a campaign are being sent: the daemon does
    not exit; it stops sending, /readyz answers 503 with a `tem` check and the reason (never the
    key), `bulksend_ready` is 0, no row is left `sending`, and one error line says so."""
    addresses = [f"late{i}@example.com" for i in range(200)]
    with structlog.testing.capture_logs() as events:
        async with admin_daemon(tmp_path, sandbox, sending={"rate_per_s": 100}) as (
            _,
            admin,
            source,
            watch,
        ):
            source.publish(job("order-1", "ann@example.com"))
            await watch.wait(outcomes=1)
            await admin.submit("late", addresses, concurrency=4)
            await watch.wait(outcomes=5)
            sandbox.update(secret_key="rotated-key-9f2c")
            for i in range(2, 30):
                source.publish(job(f"order-{i}", f"job{i}@example.com"))

            async def settled() -> bool:
                status, _ = await admin.call("GET", "/readyz", token=None)
                late = await admin.campaign("late")
                jobs_sending = (await admin.store.counts("jobs.welcome")).get("sending", 0)
                return (
                    status == 503
                    and late["counts"]["sending"] == 0
                    and late["state"] == "failed"
                    and jobs_sending == 0
                )

            # Polled: the last step (the run's end) writes nothing the store could signal. The job
            # stream's sends in flight when the key was refused settle on their own schedule, so
            # the wait covers them too; a row stuck in `sending` makes it time out.
            await wait_until(settled, what="readyz 503, campaign 'late' failed, no job row sending")
            status, ready = await admin.call("GET", "/readyz", token=None)
            metrics = (await admin.call("GET", "/metrics"))[1]
            late = await admin.campaign("late")
            jobs = await admin.store.counts("jobs.welcome")
            assert (await admin.call("GET", "/healthz", token=None))[0] == 200  # still serving
    assert status == 503
    assert ready["failing"] == ["tem"], ready
    assert "refused the secret key" in ready["details"]["tem"]
    assert SECRET not in str(ready)
    assert "rotated-key-9f2c" not in str(ready)
    assert "\nbulksend_ready 0.0" in metrics
    assert late["counts"]["sending"] == 0
    assert late["counts"]["pending"] > 0  # left for a restart with a valid key
    assert jobs.get("sending", 0) == 0
    errors = [e for e in events if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["daemon.tem_refused"], errors
