"""API calls of ``bulksend send --reconcile-all`` after the state file was lost.

Sends a campaign of ``--recipients`` to a sandbox (in this process), then truncates the state file
to 0 bytes with its WAL gone (the send journal survives), and runs the reconcile-all entry point
followed by the campaign: prints the list calls the reconciliation made per email TEM had, its
wall time, and the emails sent again (must be 0)::

    python -m benchmarks.reconcile_all --recipients 20000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anyio
import orjson

from bulksend.campaign.load import load_campaign
from bulksend.pipeline.reconcile import CampaignReconcile
from bulksend.pipeline.stats import RunStats
from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.secret import Secret
from bulksend.tem.config import TemSettings
from bulksend.testing import campaign_run, campaign_toml

SECRET = "reconcile-bench-secret"
PROJECT = "11111111-2222-4333-8444-555555555555"
CAMPAIGN = campaign_toml(
    "bench",
    campaign={"from": {"email": "news@example.com"}, "recipients": "recipients.jsonl"},
    sending={"rate_per_s": 20000, "concurrency": 64, "timeout_s": 1},
    tracking={"poll_interval_s": 0.5, "settle_s": 0.1},
    output={"outcomes": "outcomes.jsonl"},
)


async def _run(folder: Path, sb: Sandbox, *, reconcile: bool) -> tuple[CampaignReconcile | None, float]:
    campaign = load_campaign(folder / "campaign.toml")
    settings = TemSettings(secret_key=Secret(SECRET), project_id=PROJECT, api_url=sb.url)
    async with campaign_run(campaign, settings, stats=RunStats()) as runner:
        took, report = 0.0, None
        if reconcile:
            start = time.perf_counter()
            report = await runner.reconcile_all()
            took = time.perf_counter() - start
        await runner.run()
        return report, took


def _lose_state(db: Path) -> None:
    """A killed run's state file truncated to 0 bytes, its WAL gone; the send journal is kept."""
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"")


async def main(recipients: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "campaign.toml").write_text(CAMPAIGN, encoding="utf-8")
        lines = (
            orjson.dumps({"email": f"u{i}@example.com", "first_name": f"P{i}"}) for i in range(recipients)
        )
        (folder / "recipients.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        config = SandboxConfig(secret_key=SECRET, project_id=PROJECT, final_after_s=0.05, seed=1)
        async with Sandbox(config, host="127.0.0.1", port=0) as sb:
            await _run(folder, sb, reconcile=False)
            _lose_state(folder / "outcomes.db")
            before = sb.stats().requests.get("send", 0)
            report, took = await _run(folder, sb, reconcile=True)
            resent = sb.stats().requests.get("send", 0) - before
            duplicates = sum(1 for n in sb.stats().accepted_by_recipient.values() if n > 1)
    assert report is not None
    lists = report.list_calls
    print(f"recipients {recipients:,}; state file truncated to 0 bytes after the campaign")
    print(f"reconcile-all: {took:.1f} s, {report.listed:,} emails listed, {report.adopted:,} adopted")
    per_call = recipients / lists
    print(f"list calls: {lists:,} = {lists / recipients:.5f} per email ({per_call:,.0f} emails per call)")
    print(f"emails sent again: {resent}, recipients with more than one email: {duplicates}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    anyio.run(main, parser.parse_args().recipients)
