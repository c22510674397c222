"""Rows a graceful stop leaves ``sending``: the daemon stopped mid-run while TEM loses answers.

Runs the daemon in-process against the sandbox on loopback, with a share of answers lost after
TEM created the email (``--ambiguous-p``, the ambiguous case), feeds ``--jobs`` queued jobs, and
asks for a graceful stop (what SIGTERM does) once ``--stop-after`` emails have an outcome. Then
it reads the store the daemon left: rows ``sending`` (to be reconciled by the next start), and
how long the stop took. ``--runs`` repeats it with fresh state.

    python -m benchmarks.stop_settle --jobs 2000 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import orjson

from bulksend.brokers.memory import MemoryQueue, MemorySource
from bulksend.daemon.config import load_daemon_config
from bulksend.daemon.service import Daemon
from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.secret import Secret
from bulksend.store.sqlite import SqliteStore
from bulksend.tem.config import TemSettings
from bulksend.testing import TEST_SENDER, toml_document

_SECRET = "bench-stop-secret"
_PROJECT = "00000000-0000-4000-8000-000000000001"


def _config(args: argparse.Namespace) -> str:
    """The daemon's configuration: a SQLite store under ``state``, jobs from a memory queue."""
    return toml_document(
        {
            "store": {"url": "state/bulksend.db"},
            "daemon": {
                "data_dir": "state",
                "grace_s": args.grace_s,
                "job_batch": 50,
                "receive_timeout_s": 0.05,
            },
            "sending": {"rate_per_s": args.rate_per_s, "concurrency": 32, "timeout_s": 5},
            "tracking": {"poll_interval_s": 0.2, "settle_s": args.settle_s},
            "admin": {"listen": "127.0.0.1:0"},
            "sources": [{"kind": "memory", "name": "jobs"}],
            "templates.welcome": {
                "from": TEST_SENDER,
                "subject": "Welcome, {{ first_name }}",
                "text": "Hi {{ first_name }}.",
            },
        }
    )


def _job(i: int) -> bytes:
    return orjson.dumps(
        {
            "version": 1,
            "template": "welcome",
            "idempotency_key": f"stop-{i}",
            "recipient": {"email": f"user{i}@example.com"},
            "variables": {"first_name": f"P{i}"},
        }
    )


async def one_run(args: argparse.Namespace, run: int) -> dict[str, Any]:
    """One daemon, stopped mid-run; what it left."""
    sandbox_config = SandboxConfig(
        secret_key=_SECRET,
        project_id=_PROJECT,
        fault_5xx_after_p=args.ambiguous_p,
        latency_ms=args.latency_ms,
        seed=run,
    )
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        path = folder / "daemon.toml"
        path.write_text(_config(args), encoding="utf-8")
        async with Sandbox(sandbox_config, host="127.0.0.1", port=0) as sandbox:
            settings = TemSettings(secret_key=Secret(_SECRET), project_id=_PROJECT, api_url=sandbox.url)
            daemon = Daemon(load_daemon_config(path), settings)
            source = MemorySource(MemoryQueue("jobs"))
            daemon.sources = [source]
            for i in range(args.jobs):
                source.publish(_job(i))
            async with anyio.create_task_group() as tg:
                await tg.start(daemon.run)
                # Polled: the sandbox's count of emails it accepted (nothing to wait on otherwise).
                with anyio.fail_after(args.budget_s):
                    while sum(sandbox.stats().accepted_by_recipient.values()) < args.stop_after:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                stop_begun = time.monotonic()
                daemon.request_stop()
            stop_s = time.monotonic() - stop_begun
            ambiguous = sandbox.stats().faults.get("5xx_after", 0)
        store = SqliteStore(folder / "state" / "bulksend.db")
        await store.open()
        try:
            counts = await store.counts("jobs.welcome")
        finally:
            await store.close()
    return {
        "run": run,
        "left_sending": counts.get("sending", 0),
        "ambiguous_answers": ambiguous,
        "stop_s": round(stop_s, 2),
        "counts": counts,
    }


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for run in range(1, args.runs + 1):
        result = await one_run(args, run)
        print(orjson.dumps(result).decode(), flush=True)
        runs.append(result)
    return runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stop-after", type=int, default=500, help="emails accepted before the stop")
    parser.add_argument(
        "--ambiguous-p", type=float, default=0.05, help="share of answers lost after creation"
    )
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--rate-per-s", type=float, default=400.0)
    parser.add_argument("--settle-s", type=float, default=2.0)
    parser.add_argument("--grace-s", type=float, default=30.0)
    parser.add_argument("--budget-s", type=float, default=120.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    results = anyio.run(main, arguments)
    left = [r["left_sending"] for r in results]
    stops = [r["stop_s"] for r in results]
    print(
        f"left sending: {left} (median {statistics.median(left)}); "
        f"stop took {stops} s (median {statistics.median(stops)} s)"
    )
