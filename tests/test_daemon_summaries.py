"""The daemon's summary lines (``daemon.recovery`` at start, ``daemon.stopped`` at stop) and the
rate limit of ``admin.unauthorized`` warnings, asserted on captured event dicts."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import structlog

from bulksend.clock import FakeClock
from bulksend.daemon.admin.throttle import OTHER_CLIENTS, UnauthorizedLog
from bulksend.daemon.config import load_daemon_config
from bulksend.daemon.service import Daemon
from bulksend.jobs.intake import job_campaign_id, job_row
from bulksend.sandbox import Sandbox
from bulksend.store.base import NewRecipient, RowState
from bulksend.store.sqlite import SqliteStore
from tests.conftest import settings_for
from tests.test_daemon import ObservedStore, job, make_daemon, running, write_config
from tests.test_daemon_brokers import RedisBroker


@pytest.fixture(autouse=True)
def _plain_logging() -> None:
    """Log through structlog's defaults (a CLI test may have left it on a closed stream)."""
    structlog.reset_defaults()


def only(events: Sequence[MutableMapping[str, Any]], name: str) -> MutableMapping[str, Any]:
    """The one captured event called ``name``."""
    found = [e for e in events if e["event"] == name]
    assert len(found) == 1, [e["event"] for e in events]
    return found[0]


async def seed_leftovers(path: Path, keys: list[str]) -> None:
    """Leave what a crashed daemon leaves: job rows `pending`, one of them `sending`, and each
    job's result still due in the journal."""
    store = SqliteStore(path)
    await store.open()
    try:
        cid = job_campaign_id("welcome")
        await store.create_campaign(cid, {"kind": "jobs", "template": "welcome"})
        rows = [
            NewRecipient(
                job_row(key),
                f"{key}@example.com",
                "",
                key,
                RowState.PENDING,
                payload={"vars": {"first_name": "Ann"}, "idempotency_key": key, "template": "welcome"},
            )
            for key in keys
        ]
        admitted = await store.admit(cid, rows)
        await store.mark_sending(
            admitted[0].id,
            started_at=datetime.now(UTC) - timedelta(minutes=1),
            correlation=f"{cid}/{admitted[0].row}",
        )
        journal = f"results:{cid}"
        await store.create_campaign(journal, {"kind": "jobs", "journal": "results", "of": cid})
        await store.admit(
            journal,
            [
                NewRecipient(r.row, new.email, "", None, RowState.PENDING, payload={"row_id": r.id})
                for r, new in zip(admitted, rows, strict=True)
            ],
        )
    finally:
        await store.close()


@pytest.mark.services
async def test_recovery_and_stop_summaries(tmp_path: Path, sandbox: Sandbox) -> None:
    """A start after a crash logs one daemon.recovery line counting the rows it takes over (one to
    reconcile, three jobs, three results due); the stop logs one daemon.stopped line saying nothing
    was forced, released or left."""
    keys = ["left-0", "left-1", "left-2"]
    await seed_leftovers(tmp_path / "state" / "bulksend.db", keys)
    broker = RedisBroker()
    await broker.open()
    try:
        path = write_config(tmp_path, sources=[broker.source_config()], results=broker.results_config())
        daemon = Daemon(load_daemon_config(path), settings_for(sandbox))
        with structlog.testing.capture_logs() as events, anyio.fail_after(30):
            async with running(daemon):
                await broker.read_results(set(keys))
    finally:
        await broker.close()
    recovery = only(events, "daemon.recovery")
    assert recovery["log_level"] == "info"
    assert recovery["rows_to_reconcile"] == 1
    assert recovery["jobs_resumed"] == 3
    assert recovery["results_due"] == 3
    assert recovery["campaigns_resumed"] == 0
    names = [e["event"] for e in events]
    assert names.index("daemon.recovery") < names.index("daemon.started")
    stopped = only(events, "daemon.stopped")
    assert stopped["log_level"] == "info"
    assert stopped["forced"] is False
    assert stopped["released"] == 0
    assert stopped["results_held"] == 0
    assert stopped["left"] == {"pending": 0, "sending": 0, "submitted": 0}


@pytest.mark.services
async def test_stop_summary_says_what_is_left(tmp_path: Path, sandbox: Sandbox) -> None:
    """Stopped before a slow TEM could take everything, daemon.stopped counts the rows left exactly
    as the store holds them afterwards (the next start's work)."""
    keys = [f"slow-{i}" for i in range(20)]
    db = tmp_path / "state" / "bulksend.db"
    await seed_leftovers(db, keys)
    sandbox.update(latency_ms=200)
    broker = RedisBroker()
    await broker.open()
    try:
        path = write_config(
            tmp_path,
            sources=[broker.source_config()],
            results=broker.results_config(),
            sending={"rate_per_s": 2, "concurrency": 1},
        )
        daemon = Daemon(load_daemon_config(path), settings_for(sandbox))
        with structlog.testing.capture_logs() as events, anyio.fail_after(30):
            async with running(daemon):
                while not broker.results:  # stop once sending is under way
                    broker.results += await broker._read(1.0)
    finally:
        await broker.close()
    stopped = only(events, "daemon.stopped")
    store = SqliteStore(db)
    await store.open()
    try:
        counts = await store.counts(job_campaign_id("welcome"))
    finally:
        await store.close()
    truth = {state: counts.get(state, 0) for state in ("pending", "sending", "submitted")}
    assert stopped["left"] == truth
    assert sum(truth.values()) > 0  # stopped with work left
    assert isinstance(stopped["in_flight_at_stop"], int)


def test_unauthorized_burst_from_one_client_becomes_two_lines() -> None:
    """159 refused calls from one client in a minute log one admin.unauthorized line and, when the
    minute ends, one admin.unauthorized_repeated line with the count; another client is apart."""
    clock = FakeClock()
    refusals = UnauthorizedLog(window_s=60, clock=clock)
    with structlog.testing.capture_logs() as events:
        for _ in range(159):
            refusals.refused("10.0.0.7", "GET", "/metrics")
            clock.advance(0.1)
        refusals.refused("10.0.0.8", "GET", "/v1/campaigns")
        assert [e["event"] for e in events] == ["admin.unauthorized", "admin.unauthorized"]
        clock.advance(60)
        refusals.flush()
        clock.advance(60)
        refusals.flush()  # quiet minute: nothing to say, and the client is forgotten
        refusals.refused("10.0.0.7", "GET", "/metrics")
    assert [e["event"] for e in events] == [
        "admin.unauthorized",
        "admin.unauthorized",
        "admin.unauthorized_repeated",
        "admin.unauthorized",
    ]
    first, other, repeated, again = events
    assert (first["remote"], first["path"], first["log_level"]) == ("10.0.0.7", "/metrics", "warning")
    assert other["remote"] == "10.0.0.8"
    assert (repeated["remote"], repeated["count"], repeated["window_s"]) == ("10.0.0.7", 158, 60)
    assert again["remote"] == "10.0.0.7"


def test_unauthorized_clients_are_bounded() -> None:
    """Past max_clients, new clients are counted together, so a scan from many addresses cannot
    grow memory nor the log without bound."""
    refusals = UnauthorizedLog(window_s=60, max_clients=3, clock=FakeClock())
    with structlog.testing.capture_logs() as events:
        for i in range(50):
            refusals.refused(f"10.0.1.{i}", "GET", "/")
    remotes = [e["remote"] for e in events]
    assert remotes == ["10.0.1.0", "10.0.1.1", "10.0.1.2", OTHER_CLIENTS]


async def test_admin_api_logs_a_burst_of_refusals_once(tmp_path: Path, sandbox: Sandbox) -> None:
    """159 calls with a wrong token to a running daemon are all refused (401) but log one
    admin.unauthorized line."""
    path = write_config(tmp_path, admin={"token": "summary-test-token-0b2d"})
    daemon = Daemon(load_daemon_config(path), settings_for(sandbox))
    with structlog.testing.capture_logs() as events, anyio.fail_after(30):
        async with running(daemon), aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(159):
                headers = {"Authorization": "Bearer wrong"}
                async with http.get(f"{daemon.admin_url}/v1/campaigns", headers=headers) as response:
                    statuses.append(response.status)
    assert statuses == [401] * 159
    assert [e["event"] for e in events].count("admin.unauthorized") == 1


async def test_stop_right_after_start_is_clean(tmp_path: Path, sandbox: Sandbox) -> None:
    """A stop requested as soon as the daemon has started (job rows to resume, trackers not yet
    started) ends cleanly with its daemon.stopped line, rather than failing to start a tracker."""
    await seed_leftovers(tmp_path / "state" / "bulksend.db", ["early-0", "early-1"])
    path = write_config(tmp_path, sources=[{"kind": "memory", "name": "jobs"}])
    daemon = Daemon(load_daemon_config(path), settings_for(sandbox))
    with structlog.testing.capture_logs() as events, anyio.fail_after(30):
        async with running(daemon):
            pass
    assert only(events, "daemon.stopped")["forced"] is False


async def test_stop_summary_of_a_forced_stop(tmp_path: Path, sandbox: Sandbox) -> None:
    """A stop whose send outlasts grace_s is forced: daemon.stopped says so, with the request that
    was in flight and its row left `sending` for the next start to reconcile."""
    sandbox.update(latency_ms=20_000)  # the send stays on the wire past the grace period
    store = ObservedStore(tmp_path / "state" / "bulksend.db")
    daemon, source, _ = make_daemon(
        tmp_path, sandbox, store=store, daemon={"grace_s": 0.2}, sending={"timeout_s": 60}
    )
    source.publish(job("slow-1", "slow@example.com"))

    async def sending() -> bool:
        return (await store.counts(job_campaign_id("welcome"))).get("sending", 0) == 1

    with structlog.testing.capture_logs() as events, anyio.fail_after(30):
        async with running(daemon):
            await store.wait_until(sending)
    stopped = only(events, "daemon.stopped")
    assert stopped["forced"] is True
    assert stopped["in_flight_at_stop"] == 1
    assert stopped["left"] == {"pending": 0, "sending": 1, "submitted": 0}
