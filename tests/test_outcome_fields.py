"""Outcome fields as the README defines them, on outcomes of a real run against the sandbox."""

from __future__ import annotations

import csv
from pathlib import Path

import anyio

from bulksend.sandbox import Sandbox
from bulksend.sinks.outcomes import outcome_lines, write_outcomes
from bulksend.store import open_store
from tests.conftest import CampaignWriter, read_jsonl, run_once


async def test_unknown_outcomes_have_no_final_at(
    sandbox: Sandbox, write_campaign: CampaignWriter, tmp_path: Path
) -> None:
    """An email tracking gave up on is `unknown` with an empty `final_at` (it never became final),
    in JSONL and in CSV, while a sent one carries the time it became final."""
    campaign = write_campaign(
        [{"email": "ann@example.com"}, {"email": "stuck1@example.com"}], give_up_after_s=0.3
    )
    result = await run_once(campaign, sandbox)
    assert result.complete
    lines = {line["email"]: line for line in read_jsonl(campaign.output.outcomes)}
    assert lines["stuck1@example.com"]["status"] == "unknown"
    assert lines["stuck1@example.com"]["final_at"] is None
    assert "tracking.give_up_after_s" in lines["stuck1@example.com"]["reason"]
    assert lines["ann@example.com"]["status"] == "sent"
    assert lines["ann@example.com"]["final_at"]
    path = tmp_path / "outcomes.csv"
    store = open_store(campaign.store_path)
    await store.open()
    try:
        await write_outcomes(path, outcome_lines(store, campaign.id))
    finally:
        await store.close()
    text = await anyio.Path(path).read_text(encoding="utf-8")
    rows = {r["email"]: r for r in csv.DictReader(text.splitlines())}
    assert rows["stuck1@example.com"]["status"] == "unknown"
    assert rows["stuck1@example.com"]["final_at"] == ""
    assert rows["ann@example.com"]["final_at"] != ""
