"""End-to-end campaign runs against the sandbox on loopback, with a real SQLite store."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
import structlog.contextvars
import structlog.testing

from bulksend.pipeline.run import CampaignRun
from bulksend.pipeline.stats import RunStats
from bulksend.sandbox import Sandbox
from bulksend.sinks.outcomes import OUTCOME_FIELDS
from tests.conftest import CampaignWriter, outcomes_from_store, read_jsonl, run_once


def people(n: int, prefix: str = "user") -> list[dict[str, Any]]:
    return [{"email": f"{prefix}{i}@example.com", "name": f"P {i}", "first_name": f"P{i}"} for i in range(n)]


async def test_every_sandbox_outcome_kind(sandbox: Sandbox, write_campaign: CampaignWriter) -> None:
    """Each sandbox outcome kind ends with the matching status and flags, one line per input row."""
    kinds = ("ok", "bounce1", "softbounce1", "blocked1", "spam1", "full1", "greylist1")
    rows = [{"email": f"{kind}@example.com", "first_name": kind.title()} for kind in kinds]
    campaign = write_campaign(rows)
    result = await run_once(campaign, sandbox)
    assert result.complete
    lines = {line["email"]: line for line in read_jsonl(campaign.output.outcomes)}
    assert len(lines) == len(rows)
    assert all(set(line) == set(OUTCOME_FIELDS) for line in lines.values())
    assert lines["ok@example.com"]["status"] == "sent"
    assert lines["bounce1@example.com"]["status"] == "failed"
    assert set(lines["bounce1@example.com"]["flags"]) >= {"hard_bounce", "mailbox_not_found"}
    assert lines["softbounce1@example.com"]["status"] == "sent"
    assert "soft_bounce" in lines["softbounce1@example.com"]["flags"]
    assert lines["softbounce1@example.com"]["try_count"] == 2
    assert lines["blocked1@example.com"]["status"] == "failed"
    assert "blocklisted" in lines["blocked1@example.com"]["flags"]
    assert "spam" in lines["spam1@example.com"]["flags"]
    assert "mailbox_full" in lines["full1@example.com"]["flags"]
    assert lines["greylist1@example.com"]["status"] == "sent"
    ok = lines["ok@example.com"]
    assert ok["email_id"]
    assert ok["message_id"]
    assert ok["submitted_at"]
    assert ok["final_at"]
    assert ok["attempts"] == 1
    assert ok["row"] == 1
    counts = sandbox.stats().accepted_by_recipient
    assert all(counts[r["email"]] == 1 for r in rows)


async def test_bad_input_becomes_outcomes(sandbox: Sandbox, write_campaign: CampaignWriter) -> None:
    """Every kind of bad row gets a rejected/skipped outcome with a reason, and the rest is sent."""
    rows: list[dict[str, Any] | bytes] = [
        {"email": "good@example.com", "first_name": "G", "token": "a"},
        {"email": "not-an-email", "first_name": "X", "token": "b"},
        {"email": "GOOD@example.com", "first_name": "Dup", "token": "c"},
        {"email": "novar@example.com", "token": "d"},
        {"email": "inject@example.com", "first_name": "E", "token": "x\r\nBcc: all@example.com"},
        {"email": "huge@example.com", "first_name": "H", "token": "e", "note": "x" * (2 * 1024 * 1024 + 1)},
        b'{"email": "broken@example.com", "first',
        b'{"email": "latin@example.com", "first_name": "Fran\xe7ois", "token": "f"}',
        {"email": "last@example.com", "first_name": "L", "token": "g"},
    ]
    campaign = write_campaign(
        rows,
        subject="Hi {{ first_name }}",
        text="Hi {{ first_name }} {{ note | default('') }}",
        headers={"List-Unsubscribe": "<https://example.com/u/{{ token }}>"},
    )
    result = await run_once(campaign, sandbox)
    assert result.complete
    lines = read_jsonl(campaign.output.outcomes)
    assert [line["row"] for line in lines] == list(range(1, len(rows) + 1))
    by_row = {line["row"]: line for line in lines}
    assert {row: (line["status"], line.get("reason")) for row, line in by_row.items()} == {
        1: ("sent", None),
        2: (
            "rejected",
            "invalid recipient address: 'not-an-email' is not an email address (it needs exactly one '@')",
        ),
        3: ("skipped", "duplicate of row 1"),
        4: (
            "rejected",
            "missing template variable 'first_name' in the subject template; add a 'first_name' "
            "column/key for this recipient or use {{ first_name | default('') }}",
        ),
        5: (
            "rejected",
            "after rendering, header 'List-Unsubscribe' has a line break in its value "
            "(header injection is refused)",
        ),
        6: (  # the recipient file's line limit
            "rejected",
            "the line is longer than 1,000,000 bytes, the most a line may have (and a value at most "
            "100,000 characters); shorten it",
        ),
        7: (
            "rejected",
            "the line is not valid JSON (unexpected control character in string at column 39); "
            "write one JSON object per line",
        ),
        8: (
            "rejected",
            "the line is not valid UTF-8 (byte 0xe7 at byte offset 50); save the file as UTF-8",
        ),
        9: ("sent", None),
    }
    assert sandbox.stats().accepted_by_recipient == {"good@example.com": 1, "last@example.com": 1}


async def test_permanent_api_error_rejects_one_recipient(
    sandbox: Sandbox, write_campaign: CampaignWriter
) -> None:
    """A 400 from TEM for one email becomes `rejected` with TEM's message; the others are sent."""
    sandbox.update(allowed_from_domains=("other.example",))
    campaign = write_campaign(people(3))
    result = await run_once(campaign, sandbox)
    lines = read_jsonl(campaign.output.outcomes)
    refused = (
        "TEM refused the email (400 invalid_arguments): Invalid email from address — from: "
        "the domain 'example.com' is not a checked domain of this project"
    )
    assert [(line["status"], line["reason"]) for line in lines] == [("rejected", refused)] * 3
    assert result.complete


async def test_resume_after_hard_stop_sends_nobody_twice(
    sandbox: Sandbox, write_campaign: CampaignWriter
) -> None:
    """A run aborted mid-way and run again submits every recipient exactly once."""
    campaign = write_campaign(people(600), concurrency=16)
    stats = RunStats()

    def arm(runner: CampaignRun) -> None:
        stats.on_submitted = lambda n: runner.abort() if n == 150 else None

    first = await run_once(campaign, sandbox, stats=stats, on_start=arm)
    assert not first.complete
    assert 150 <= sum(sandbox.stats().accepted_by_recipient.values()) < 600
    second = await run_once(campaign, sandbox)
    assert second.complete
    counts = sandbox.stats().accepted_by_recipient
    assert len(counts) == 600
    assert set(counts.values()) == {1}
    lines = read_jsonl(campaign.output.outcomes)
    assert len(lines) == 600
    assert {line["status"] for line in lines} == {"sent"}


async def test_graceful_stop_then_resume(sandbox: Sandbox, write_campaign: CampaignWriter) -> None:
    """A graceful stop records what was in flight, and the rerun completes with no duplicates."""
    campaign = write_campaign(people(500), concurrency=16)
    stats = RunStats()

    def arm(runner: CampaignRun) -> None:
        stats.on_submitted = lambda n: runner.request_stop() if n == 100 else None

    first = await run_once(campaign, sandbox, stats=stats, on_start=arm)
    assert first.stopped
    assert not first.complete
    assert first.counts.get("sending", 0) == 0  # everything in flight was recorded
    second = await run_once(campaign, sandbox)
    assert second.complete
    counts = sandbox.stats().accepted_by_recipient
    assert len(counts) == 500
    assert set(counts.values()) == {1}


async def test_finished_campaign_reruns_as_summary_only(
    sandbox: Sandbox, write_campaign: CampaignWriter
) -> None:
    """Rerunning a finished campaign sends nothing and reports it as already finished."""
    campaign = write_campaign(people(20))
    assert (await run_once(campaign, sandbox)).complete
    before = sandbox.stats().requests.get("send", 0)
    again = await run_once(campaign, sandbox)
    assert again.already_finished
    assert again.complete
    assert sandbox.stats().requests.get("send", 0) == before


async def test_429_storm_backs_off_and_completes(sandbox: Sandbox, write_campaign: CampaignWriter) -> None:
    """Against a rate-limited sandbox the limiter slows down and every recipient is sent once."""
    sandbox.update(rate_limit_per_s=300.0, rate_limit_burst=5.0)
    campaign = write_campaign(people(800), rate_per_s=3000, concurrency=32)
    stats = RunStats()
    result = await run_once(campaign, sandbox, stats=stats)
    assert result.complete
    assert stats.throttled > 0
    counts = sandbox.stats().accepted_by_recipient
    assert len(counts) == 800
    assert set(counts.values()) == {1}
    assert {line["status"] for line in read_jsonl(campaign.output.outcomes)} == {"sent"}


async def test_ambiguous_faults_reconciled_exactly_once(
    sandbox: Sandbox, write_campaign: CampaignWriter
) -> None:
    """5xx after create, 5xx before create and dropped connections still give exactly one email each."""
    sandbox.update(fault_5xx_before_p=0.05, fault_5xx_after_p=0.05, fault_drop_p=0.03)
    campaign = write_campaign(people(600), concurrency=16)
    stats = RunStats()
    result = await run_once(campaign, sandbox, stats=stats)
    assert result.complete
    counts = sandbox.stats().accepted_by_recipient
    assert len(counts) == 600
    assert set(counts.values()) == {1}
    assert stats.reconciled_adopted > 0
    assert stats.reconciled_resent > 0
    lines = read_jsonl(campaign.output.outcomes)
    assert len(lines) == 600
    assert {line["status"] for line in lines} == {"sent"}


@pytest.mark.slow
async def test_tracking_is_cheap_on_10k(sandbox: Sandbox, write_campaign: CampaignWriter) -> None:
    """Tracking 10,000 emails costs at most 0.02 list/get calls per email."""
    sandbox.update(sending_after_s=0.05, final_after_s=0.2)
    campaign = write_campaign(people(10_000), rate_per_s=20_000, concurrency=64, poll_interval_s=0.5)
    stats = RunStats()
    result = await run_once(campaign, sandbox, stats=stats)
    assert result.complete
    tracking_calls = stats.calls("list", "get")
    assert tracking_calls / 10_000 <= 0.02, tracking_calls
    assert stats.calls("send") == 10_000


async def test_stuck_email_ends_unknown(
    sandbox: Sandbox, write_campaign: CampaignWriter, tmp_path: Path
) -> None:
    """An email still transient after give_up_after_s ends `unknown` with that reason, and with
    an empty `final_at` in JSONL and CSV (it never became final)."""
    campaign = write_campaign(
        [{"email": "stuck1@example.com"}, {"email": "fine@example.com"}], give_up_after_s=0.3
    )
    result = await run_once(campaign, sandbox)
    assert result.complete
    lines = {line["email"]: line for line in read_jsonl(campaign.output.outcomes)}
    assert lines["fine@example.com"]["status"] == "sent"
    assert lines["fine@example.com"]["final_at"]
    assert lines["stuck1@example.com"]["status"] == "unknown"
    assert lines["stuck1@example.com"]["final_at"] is None
    await outcomes_from_store(campaign, tmp_path / "outcomes.csv")
    cells = {r["email"]: r for r in csv.DictReader(io.StringIO((tmp_path / "outcomes.csv").read_text()))}
    assert cells["stuck1@example.com"]["final_at"] == ""
    assert cells["fine@example.com"]["final_at"] != ""
    assert lines["stuck1@example.com"]["reason"] == (
        "still not final at TEM 0.3 s after submission (tracking.give_up_after_s); TEM may still "
        "deliver it: run `bulksend recheck` on the outcomes file later to look it up again"
    )


async def test_log_lines_carry_the_campaign(sandbox: Sandbox, write_campaign: CampaignWriter) -> None:
    """Events logged by the run's tasks name the campaign even when the call site does not."""
    sandbox.update(allowed_from_domains=("other.example",))  # TEM refuses every email: 400s
    campaign = write_campaign(people(3), campaign_id="logged")
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        await run_once(campaign, sandbox)
    rejected = [e for e in events if e["event"] == "email.rejected"]
    assert len(rejected) == 3
    assert all(e.get("campaign") == "logged" for e in events), events
