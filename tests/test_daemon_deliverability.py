"""The daemon's job streams and the suppression list and guardrails: a job to a bounced address is
never sent again, and a bounce storm holds the stream (metrics, /readyz) until resumed."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import anyio
import pytest
import structlog

from bulksend.jobs.intake import job_campaign_id
from bulksend.sandbox import Sandbox
from bulksend.store import CampaignState
from tests.test_daemon import RecordingSource, job, make_daemon, running
from tests.waiting import wait_until

STREAM = job_campaign_id("welcome")


@pytest.fixture(autouse=True)
def _plain_logging() -> None:
    """Log through structlog's defaults (a CLI test may have left it on a closed stream)."""
    structlog.reset_defaults()


def sample(daemon_metrics: object, name: str, **labels: str) -> float | None:
    registry = daemon_metrics.registry  # type: ignore[attr-defined]
    value: float | None = registry.get_sample_value(name, labels)
    return value


async def test_a_job_to_a_bounced_address_is_never_sent_again(tmp_path: Path, sandbox: Sandbox) -> None:
    """A later job to an address that hard-bounced is acked, not sent, and its one result says
    it was suppressed, why and since when; a redelivery of it publishes nothing more."""
    daemon, source, results = make_daemon(tmp_path, sandbox)
    assert isinstance(source, RecordingSource)
    with anyio.fail_after(30):
        async with running(daemon):
            source.publish(job("first", "Bounce7@example.com"))
            await results.wait_for_keys({"first"})
            source.publish(job("second", "bounce7@EXAMPLE.com"))
            await results.wait_for_keys({"second"})
            source.publish(job("second", "bounce7@EXAMPLE.com"))  # redelivered
            await source.wait_settled(3)
    by_key = {r["idempotency_key"]: r for r in results.outcomes}
    assert [r["idempotency_key"] for r in results.outcomes] == ["first", "second"]
    assert by_key["first"]["status"] == "failed"
    second = by_key["second"]
    assert second["status"] == "skipped"
    assert second["suppressed"] is True
    assert second["reason"].startswith("suppressed: hard_bounce since ")
    assert second["reason"].endswith("(job stream welcome)")
    assert "suppressed" not in by_key["first"]
    assert sum(sandbox.stats().accepted_by_recipient.values()) == 1
    assert [d.settled for d in source.deliveries] == ["acked"] * 3
    assert sample(daemon.metrics, "bulksend_jobs_total", source=source.name, result="suppressed") == 2
    assert sample(daemon.metrics, "bulksend_suppressed_total", campaign=STREAM) == 2


async def readyz(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
        assert response.status == 200
        body: dict[str, object] = await response.json()
        return body


async def test_a_bounce_storm_holds_the_job_stream_until_resumed(tmp_path: Path, sandbox: Sandbox) -> None:
    """Once more than 5 % of a stream's last final emails bounce, its new jobs are acked but wait;
    /metrics and /readyz say so; the admin API's resume sends them."""
    daemon, source, results = make_daemon(tmp_path, sandbox)
    assert isinstance(source, RecordingSource)
    # 60 jobs, a quarter bouncing: the guard judges once 50 are final, so it trips with at most 10
    # storm jobs still held, and those plus the 10 later ones are too few for it to trip again
    # after the resume, however the machine's load orders the sends.
    storm = {f"s{n}": f"bounce{n}@example.com" if n % 4 == 0 else f"user{n}@example.com" for n in range(60)}
    later = {f"later{n}": f"later{n}@example.com" for n in range(10)}
    with anyio.fail_after(60):
        async with running(daemon):
            for key, address in storm.items():
                source.publish(job(key, address))
            await wait_until(
                lambda: sample(daemon.metrics, "bulksend_guardrail_paused", campaign=STREAM) == 1,
                what="the stream is paused",
            )
            record = await daemon.store.get_campaign(STREAM)
            assert record is not None
            assert record.state is CampaignState.PAUSED
            assert "hard bounces or spam complaints" in record.state_reason
            assert daemon.admin_url is not None
            body = await readyz(daemon.admin_url)
            assert body["details"]["guardrails"] == {STREAM: record.state_reason}  # type: ignore[index]
            settled = sum(d.settled is not None for d in source.deliveries)
            for key, address in later.items():
                source.publish(job(key, address))
            await source.wait_settled(settled + len(later))
            assert not set(later.values()) & set(sandbox.stats().accepted_by_recipient)

            async def nothing_in_flight() -> bool:
                counts = await daemon.store.counts(STREAM)
                return counts.get("sending", 0) == 0 and counts.get("submitted", 0) == 0

            # The resume forgets the window: emails sent before it must be final by then, or
            # their bounces would count again after it.
            await wait_until(nothing_in_flight, what="the storm's sent emails are final")
            info = await daemon.resume(STREAM)
            assert info.state == "running"
            await results.wait_for_keys(set(later))
            assert sample(daemon.metrics, "bulksend_guardrail_paused", campaign=STREAM) == 0
    assert sample(daemon.metrics, "bulksend_guardrail_trips_total", campaign=STREAM) == 1
    accepted = sandbox.stats().accepted_by_recipient
    assert all(accepted[a] == 1 for a in later.values())
