"""``GET /v1/dead-letters``: what the daemon dead-lettered, per source, from a real Redis stream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import anyio
import pytest
import structlog

from bulksend.daemon import deadletters
from bulksend.daemon.config import load_daemon_config
from bulksend.daemon.deadletters import DeadLetterBook
from bulksend.daemon.service import Daemon
from bulksend.sandbox import Sandbox
from tests.conftest import settings_for
from tests.test_daemon import DaemonWatch, job_set, running, write_config
from tests.test_daemon_brokers import RedisBroker

TOKEN = "dead-letter-test-token-8c1e"


@pytest.fixture(autouse=True)
def _plain_logging() -> None:
    """Log through structlog's defaults (a CLI test may have left it on a closed stream)."""
    structlog.reset_defaults()


@pytest.mark.services
async def test_dead_letters_endpoint_counts_and_explains(tmp_path: Path, sandbox: Sandbox) -> None:
    """Bad jobs on Redis show up in GET /v1/dead-letters with their count, kinds and reasons
    (newest first), behind the admin token like every other route."""
    broker = RedisBroker()
    await broker.open()
    jobs = job_set(6)
    try:
        path = write_config(
            tmp_path,
            sources=[broker.source_config()],
            results=broker.results_config(),
            admin={"token": TOKEN},
        )
        daemon = Daemon(load_daemon_config(path), settings_for(sandbox))
        watch = DaemonWatch(daemon)
        with anyio.fail_after(30):
            async with running(daemon), aiohttp.ClientSession() as http:
                await broker.publish(jobs.bodies)
                await watch.wait(jobs=len(jobs.bodies))
                url = f"{daemon.admin_url}/v1/dead-letters"
                async with http.get(url) as refused:
                    assert refused.status == 401
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with http.get(url, headers=headers) as response:
                    assert response.status == 200
                    body = await response.json()
    finally:
        await broker.close()
    source = daemon.sources[0].name
    assert body["total"] == len(jobs.bad)
    [entry] = body["sources"]
    assert entry["source"] == source
    assert entry["count"] == len(jobs.bad)
    assert entry["by_kind"] == {"not_json": 1, "render": 2, "template": 1, "unknown_field": 1}
    reasons = [r["reason"] for r in entry["recent"]]
    fragments = [fragment for _, fragment in reversed(jobs.bad)]
    assert len(reasons) == len(fragments)
    for reason, fragment in zip(reasons, fragments, strict=True):
        assert fragment in reason, (reason, fragment)
    assert all(r["message_id"] and r["at"].endswith("Z") for r in entry["recent"])


def test_dead_letter_book_memory_is_bounded() -> None:
    """However many dead letters arrive, the book keeps a fixed number of reasons per source and
    a fixed number of sources, cuts long reasons, and still counts everything."""
    book = DeadLetterBook()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(500):
        book.record(
            "redis:jobs",
            f"id-{i}",
            "x" * 10_000 if i == 499 else f"reason {i}",
            "schema",
            at=start + timedelta(seconds=i),
        )
    for i in range(deadletters.MAX_SOURCES + 10):
        book.record(f"nats:{i}", "m", "bad", "json")
    body = book.as_json(["redis:jobs", "rabbitmq:idle"])
    by_source = {s["source"]: s for s in body["sources"]}
    redis = by_source["redis:jobs"]
    assert redis["count"] == 500
    assert len(redis["recent"]) == deadletters.RECENT_PER_SOURCE
    assert redis["recent"][0]["message_id"] == "id-499"  # newest first
    assert len(redis["recent"][0]["reason"]) == deadletters.MAX_REASON_CHARS
    assert by_source["rabbitmq:idle"]["count"] == 0  # a configured source without dead letters
    assert len(body["sources"]) == deadletters.MAX_SOURCES + 2  # redis, rabbitmq:idle, …, other
    assert by_source["other"]["count"] == 11
    assert body["total"] == 500 + deadletters.MAX_SOURCES + 10
