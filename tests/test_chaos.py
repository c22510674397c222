"""Crash safety: SIGKILL the sender at random moments against a faulty sandbox; nobody gets two emails."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.store import open_store
from scripts.chaos import PROJECT, SECRET, _drain, _wait_for_event, run_chaos, start_sender, write_campaign
from tests.waiting import wait_until


@pytest.mark.slow
async def test_sigkill_chaos_delivers_exactly_once(tmp_path: Path) -> None:
    """3,000 recipients, 3 % 5xx before / 2 % after create, 1 % drops, 20 ms latency, >= 5 SIGKILLs:
    every valid recipient is emailed exactly once and every input row has exactly one outcome line."""
    result = await run_chaos(tmp_path, recipients=3000, kills=6, seed=7, timeout_s=240)
    assert result.kills >= 5, result
    assert result.duplicates == 0, result
    assert result.missing == 0, result
    assert result.outcome_lines == 3000, result
    assert result.outcome_rows_unique == 3000, result
    assert result.final_exit_code == 0, result
    assert result.faults.get("5xx_after", 0) > 0, result


async def test_sigterm_drains_and_rerun_completes(tmp_path: Path) -> None:
    """SIGTERM mid-campaign stops intake, records every in-flight request (no row left `sending`),
    exits 130, and the rerun completes with every recipient emailed exactly once."""
    campaign, valid = write_campaign(tmp_path, 10_000, rate_per_s=1000, concurrency=64)
    config = SandboxConfig(secret_key=SECRET, project_id=PROJECT, latency_ms=20, final_after_s=0.1)
    async with Sandbox(config, host="127.0.0.1", port=0) as sandbox:
        proc = await start_sender(campaign, sandbox.url)
        assert await _wait_for_event(proc, "campaign.start")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, proc)
            # Well into sending (by the sandbox's count: it answers from this process, so nothing
            # more is accepted between the check and the signal): the stop must land mid-flight.
            await wait_until(
                lambda: len(sandbox.stats().accepted_by_recipient) >= 1000, what="1000 emails accepted"
            )
            proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
        assert code == 130
        sent_before = sum(sandbox.stats().accepted_by_recipient.values())
        assert 0 < sent_before < len(valid)
        store = open_store(tmp_path / "outcomes.db")
        await store.open()
        try:
            counts = await store.counts("chaos")
        finally:
            await store.close()
        assert counts.get("sending", 0) == 0, counts

        proc = await start_sender(campaign, sandbox.url)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, proc)
            assert await proc.wait() == 0
        accepted = sandbox.stats().accepted_by_recipient
    assert set(accepted) == valid
    assert set(accepted.values()) == {1}
