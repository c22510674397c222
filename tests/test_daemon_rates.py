"""Nested rates in the daemon: a campaign's own rate_per_s and a job stream's, inside the account's.

Nothing here measures time against a bound that load could break: the pace is read from the
creation times the sandbox recorded, and only a lower bound on their span is checked (a loaded
machine makes sends later, never earlier), with a wide margin.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import aiohttp
import anyio
import pytest

from bulksend.brokers.memory import MemoryQueue
from bulksend.daemon.config import load_daemon_config
from bulksend.errors import ConfigError
from bulksend.pipeline.nested import NestedLimiter
from bulksend.sandbox import Sandbox
from tests.test_daemon import RecordingSource, job, make_daemon, running, write_config
from tests.test_daemon_admin import admin_daemon, campaign_file, is_over, recipients_csv


def _campaign(campaign_id: str, rate_per_s: float | None) -> str:
    text = campaign_file(campaign_id, 4)
    if rate_per_s is not None:
        text = text.replace("[sending]\n", f"[sending]\nrate_per_s = {rate_per_s}\n")
    return text


async def test_a_daemon_campaign_keeps_its_own_rate(tmp_path: Path, sandbox: Sandbox) -> None:
    """Inside an account of 5,000/s, a campaign with rate_per_s = 10 runs with that ceiling nested
    in the account's limiter and its 30 emails are created over at least 1.5 s (2.9 s at 10/s;
    the account's rate alone would send them within a few hundredths); a campaign without
    rate_per_s is paced by the account's limiter alone."""
    addresses = [f"r{i}@example.com" for i in range(30)]
    async with admin_daemon(tmp_path, sandbox) as (daemon, admin, _, _):
        for cid, rate in (("paced", 10), ("free", None)):
            form = aiohttp.FormData()
            form.add_field("campaign", _campaign(cid, rate))
            people = recipients_csv([a.replace("@", f"+{cid}@") for a in addresses])
            form.add_field("recipients", people, filename="people.csv", content_type="text/csv")
            status, body = await admin.call("POST", "/v1/campaigns", data=form)
            assert status == 201, body
        paced = daemon._runs["paced"].limiter
        assert isinstance(paced, NestedLimiter)
        assert paced.ceiling_per_s == 10
        assert paced.outer is daemon.limiter
        if "free" in daemon._runs:  # it may be over already
            assert daemon._runs["free"].limiter is daemon.limiter
        await admin.wait_until("paced", is_over, timeout_s=120)
        lines = await admin.outcomes("paced")
    created = sorted(datetime.fromisoformat(line["submitted_at"]) for line in lines)
    assert len(created) == 30
    assert (created[-1] - created[0]).total_seconds() >= 1.5


def test_a_job_stream_may_set_its_own_rate(tmp_path: Path) -> None:
    """`rate_per_s` in a [[sources]] table is taken out of the broker's settings and kept as that
    stream's rate; a value that is not a number > 0 is refused with the source named."""
    path = write_config(
        tmp_path,
        sources=[{"kind": "memory", "name": "a", "rate_per_s": 40}, {"kind": "memory", "name": "b"}],
    )
    config = load_daemon_config(path)
    assert config.source_rates == [40.0, None]
    assert all("rate_per_s" not in s for s in config.sources)
    for bad in (0, -1, "fast", True):
        path = write_config(tmp_path / str(bad), sources=[{"kind": "memory", "rate_per_s": bad}])
        with pytest.raises(ConfigError, match=r"sources\[0\]\.rate_per_s must be a number > 0"):
            load_daemon_config(path)


async def test_a_job_stream_with_a_rate_is_paced_in_its_own_lane(tmp_path: Path, sandbox: Sandbox) -> None:
    """Two job streams under an account of 5,000/s: the one with rate_per_s = 10 has its 20 jobs
    created over at least 1 s (1.9 s at 10/s), the other is not held to that pace, and every job
    of both is sent once."""
    slow_source = RecordingSource(MemoryQueue("slow"))
    fast_source = RecordingSource(MemoryQueue("fast"))
    daemon, _, results = make_daemon(tmp_path, sandbox, source=slow_source)
    daemon.sources = [slow_source, fast_source]
    daemon.source_rates = {slow_source.name: 10}
    slow = {f"slow-{i}": f"slow{i}@example.com" for i in range(20)}
    fast = {f"fast-{i}": f"fast{i}@example.com" for i in range(20)}
    for key, address in slow.items():
        slow_source.publish(job(key, address))
    for key, address in fast.items():
        fast_source.publish(job(key, address))
    with anyio.fail_after(60):
        async with running(daemon):
            await results.wait_for_keys(set(slow) | set(fast), timeout_s=60)
    submitted = {o["idempotency_key"]: datetime.fromisoformat(o["submitted_at"]) for o in results.outcomes}
    slow_times = sorted(submitted[k] for k in slow)
    assert (slow_times[-1] - slow_times[0]).total_seconds() >= 1.0
    counts = sandbox.stats().accepted_by_recipient
    assert all(counts.get(a) == 1 for a in [*slow.values(), *fast.values()])
