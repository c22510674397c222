"""Tracking by events: API calls per email and the delay from TEM's final status to the outcome.

The sandbox publishes its webhook events to an SNS topic of a moto server (in this process), an
SQS queue subscribed to the topic holds them, and a campaign with ``tracking.mode = "events"``
reads the queue. Prints the list and read calls per email, and the median and 90th percentile of
the delay between the moment an email turned final at the sandbox and the moment bulksend
recorded its outcome. ``--lose 0.01`` drops that share of the final events before bulksend sees
them: those emails must still end final, through the fallback, which looks each one up between
``fallback_after_s`` and ``fallback_after_s + fallback_tick_s`` after its submission (then its read
waits for the account limiter); their delays are printed apart::

    python -m benchmarks.webhook_events --recipients 1000 --rate 25
    python -m benchmarks.webhook_events --recipients 1000 --rate 25 --lose 0.02 --fallback-after-s 5
"""

from __future__ import annotations

import argparse
import functools
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import orjson

from bulksend.campaign.load import load_campaign
from bulksend.events.router import EventRouter
from bulksend.events.sqs import SqsEventSettings, SqsEventSource
from bulksend.pipeline.limiter import AimdLimiter
from bulksend.pipeline.run import CampaignRun
from bulksend.pipeline.stats import RunStats
from bulksend.pipeline.tracker import TrackerSettings
from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.sandbox.state import final_at
from bulksend.sandbox.webhooks import domain_id_of
from bulksend.secret import Secret
from bulksend.store import open_store
from bulksend.tem.client import TemClient
from bulksend.tem.config import TemSettings
from bulksend.tem.webhooks import EMAIL_EVENT_TYPES, EmailEvent
from bulksend.testing import campaign_toml, topic_with_queue

SECRET = "webhook-bench-secret"
PROJECT = "11111111-2222-4333-8444-555555555555"
REGION = "eu-west-3"
ACCESS_KEY, SECRET_KEY = "SCWBENCHACCESSKEY000", "bench-secret-key"
READERS = 4
"""Queue readers at once (each receives up to 10 messages per call)."""
POLL_INTERVAL_S = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main(
    recipients: int, *, rate: float, final_after_s: float, lose: float, fallback_after_s: float
) -> None:
    # moto in a process of its own: in this one it would share the interpreter lock with bulksend.
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    moto = await anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:  # polled: another process's readiness has no event to wait on
            try:
                await anyio.connect_tcp("127.0.0.1", port)
                break
            except OSError:
                await anyio.sleep(0.05)
        await _bench(url, recipients, rate, final_after_s, lose, fallback_after_s)
    finally:
        moto.terminate()
        await moto.wait()


async def _bench(
    moto: str, recipients: int, rate: float, final_after_s: float, lose: float, fallback_after_s: float
) -> None:
    arn, queue = await topic_with_queue(
        moto, REGION, "tem-events", access_key=ACCESS_KEY, secret_key=SECRET_KEY
    )
    config = SandboxConfig(
        secret_key=SECRET, project_id=PROJECT, final_after_s=final_after_s, seed=1, webhook_sns_url=moto
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "campaign.toml").write_text(
            campaign_toml(
                "bench",
                campaign={"from": {"email": "news@example.com"}, "recipients": "recipients.jsonl"},
                sending={"rate_per_s": rate, "concurrency": 32},
                tracking={
                    "poll_interval_s": POLL_INTERVAL_S,
                    "mode": "events",
                    "fallback_after_s": fallback_after_s,
                },
                output={"outcomes": "outcomes.jsonl"},
            ),
            encoding="utf-8",
        )
        lines = (
            orjson.dumps({"email": f"u{i}@example.org", "first_name": f"P{i}"}) for i in range(recipients)
        )
        (folder / "recipients.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        campaign = load_campaign(folder / "campaign.toml")
        async with Sandbox(config, host="127.0.0.1", port=0) as sb:
            settings = TemSettings(secret_key=Secret(SECRET), project_id=PROJECT, api_url=sb.url)
            async with TemClient(settings) as tem:
                await tem.create_webhook(
                    domain_id=domain_id_of("example.com"),
                    name="bench",
                    event_types=[t.value for t in EMAIL_EVENT_TYPES],
                    sns_arn=arn,
                )
            outcome_at: dict[int, float] = {}
            stats, router = RunStats(), EventRouter()
            rng = random.Random(7)
            dropped = 0
            dropped_ids: set[str] = set()
            kept_ids: set[str] = set()

            async def on_outcome(campaign_id: str, rows: Sequence[tuple[int, str]]) -> None:
                now = time.time()
                for row_id, _ in rows:
                    outcome_at.setdefault(row_id, now)

            async def deliver(events: Sequence[EmailEvent]) -> None:
                nonlocal dropped
                kept: list[EmailEvent] = []
                for e in events:
                    if e.final_status is None or rng.random() >= lose:
                        kept.append(e)
                        if e.final_status is not None:
                            kept_ids.add(e.email_id)
                    else:
                        dropped_ids.add(e.email_id)
                dropped += len(events) - len(kept)
                await router.deliver(kept)

            source = SqsEventSettings(
                url=moto, region=REGION, queue=queue, wait_s=1, access_key=ACCESS_KEY, secret_key=SECRET_KEY
            )
            store = open_store(folder / "state.db")
            await store.open()
            started = time.perf_counter()
            async with TemClient(settings, on_response=stats.on_response) as tem:
                run = CampaignRun(
                    campaign,
                    store=store,
                    tem=tem,
                    limiter=AimdLimiter(rate, burst=10),
                    project_id=PROJECT,
                    stats=stats,
                    on_outcome=on_outcome,
                    events=router,
                )
                async with anyio.create_task_group() as tg:
                    for _ in range(READERS):
                        tg.start_soon(SqsEventSource(source, deliver).run)
                    result = await run.run()
                    tg.cancel_scope.cancel()
            took = time.perf_counter() - started
            delays, lost_delays, lost_since_submitted = [], [], []
            lost = dropped_ids - kept_ids  # a duplicate delivery of a final event may have come
            async for row in store.iter_rows(campaign.id):
                position = sb.store.position_of(row.email_id)
                done = outcome_at.get(row.id)
                final = final_at(sb.store.emails[position]) if position is not None else None
                if done is not None and final is not None:
                    delays.append(done - final)
                    if row.email_id in lost and row.submitted_at is not None:
                        lost_delays.append(done - final)
                        lost_since_submitted.append(done - row.submitted_at.timestamp())
            await store.close()
    delays.sort()
    lists, gets = stats.calls("list"), stats.calls("get")
    print(
        f"recipients {recipients:,} at {rate:g}/s, final {final_after_s:g} s after the send; run {took:.1f} s"
    )
    print(f"complete: {result.complete}; outcomes {dict(sorted(result.counts.items()))}")
    print(
        f"events: {router.counts.received:,} applied, {router.counts.final:,} rows final; {dropped} dropped"
    )
    print(f"list calls: {lists} = {lists / recipients:.5f} per email")
    print(f"reads by id: {gets} = {gets / recipients:.5f} per email")
    p90 = delays[int(len(delays) * 0.9)] if delays else float("nan")
    print(
        f"TEM final → bulksend outcome: median {statistics.median(delays):.3f} s, p90 {p90:.3f} s, "
        f"max {delays[-1]:.3f} s over {len(delays):,} emails"
    )
    if lost_delays:
        tick_s = TrackerSettings(
            poll_interval_s=POLL_INTERVAL_S, fallback_after_s=fallback_after_s
        ).fallback_tick_s
        print(
            f"the {len(lost_delays)} whose final event was lost: TEM final → outcome median "
            f"{statistics.median(lost_delays):.3f} s, max {max(lost_delays):.3f} s; submission → outcome "
            f"max {max(lost_since_submitted):.3f} s (lookup due by fallback_after_s + fallback_tick_s = "
            f"{fallback_after_s + tick_s:g} s, then the limiter's queue)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument(
        "--rate", type=float, default=25, help="emails/s (moto's SNS to SQS path handles about 70 events/s)"
    )
    parser.add_argument("--final-after-s", type=float, default=1.0, help="sandbox: time to each delivery try")
    parser.add_argument("--lose", type=float, default=0.0, help="share of final events dropped (0..1)")
    parser.add_argument("--fallback-after-s", type=float, default=300.0)
    a = parser.parse_args()
    anyio.run(
        functools.partial(
            main,
            a.recipients,
            rate=a.rate,
            final_after_s=a.final_after_s,
            lose=a.lose,
            fallback_after_s=a.fallback_after_s,
        )
    )
