"""CPU per row of the store operations on a campaign's hot path, SQLite against memory.

Per email a campaign looks its address up in the suppression list (one query per admission
batch, against a list of ``--suppressed`` entries, one row in a hundred on it), admits the row (in
batches), marks it ``sending`` (durable before the POST)
and ``submitted`` (after it), finalises it (in batches from the tracker) and reads it back for the
outcomes file. This script plays exactly that against a store, with no HTTP in between, and prints
the CPU time of the whole process (every thread: the event loop, the SQLite writer, the read
threads) per row for each phase, plus the event loop thread's and the SQLite writer thread's own
share. The memory store runs the same sequence as the floor: what is left is the store's cost.

Usage::

    python -m benchmarks.store_ops --rows 20000
    python -m benchmarks.store_ops --rows 20000 --repeat 5 --durability normal --json store_ops.json

Each phase is measured ``--repeat`` times (a fresh store each time) and the median is printed. CPU
is ``time.process_time`` (user + system of every thread), so the figures hold on a busy machine
better than wall time does, though a busy machine still adds noise: compare runs made side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio

from benchmarks.common import write_report
from bulksend.cli.runtime import uvloop_available
from bulksend.pipeline.suppress import Screen
from bulksend.sinks.outcomes import outcome_lines
from bulksend.store import FinalUpdate, MemoryStore, NewRecipient, RowState, SqliteStore, Store
from bulksend.suppression import SuppressionEntry, SuppressionReason, SuppressionSource

PHASES = ("suppress", "admit", "send", "final", "outcomes")
StoreKind = Literal["sqlite", "memory"]
_PROJECT = "11111111-2222-4333-8444-555555555555"


@dataclass(frozen=True)
class StoreOpsOptions:
    rows: int = 20_000
    repeat: int = 3
    concurrency: int = 128
    admit_batch: int = 500
    final_batch: int = 100
    durability: Literal["full", "normal"] = "full"
    stores: tuple[StoreKind, ...] = ("sqlite", "memory")
    suppressed: int = 50_000
    """Entries on the suppression list of the project, besides the campaign's own 1 %."""


@dataclass(frozen=True)
class PhaseCpu:
    """CPU seconds spent in one phase: the whole process, the loop thread, the writer thread."""

    process_s: float
    loop_s: float
    writer_s: float | None


class _CpuClock:
    """Reads the process, event loop thread and (if there is one) writer thread CPU clocks."""

    def __init__(self, writer: threading.Thread | None) -> None:
        self._writer_clock: int | None = None
        if writer is not None and writer.ident is not None and hasattr(time, "pthread_getcpuclockid"):
            self._writer_clock = time.pthread_getcpuclockid(writer.ident)

    def read(self) -> tuple[float, float, float | None]:
        writer = None if self._writer_clock is None else time.clock_gettime(self._writer_clock)
        return time.process_time(), time.thread_time(), writer


async def _phase(clock: _CpuClock, work: Callable[[], Awaitable[None]]) -> PhaseCpu:
    p0, l0, w0 = clock.read()
    await work()
    p1, l1, w1 = clock.read()
    return PhaseCpu(p1 - p0, l1 - l0, None if w0 is None or w1 is None else w1 - w0)


def _new_rows(start: int, stop: int) -> list[NewRecipient]:
    return [
        NewRecipient(
            row=n,
            email=f"user{n}@example.com",
            name=f"User {n}",
            key=f"user{n}@example.com",
            payload={"vars": {"first_name": f"User{n}", "plan": "pro", "n": n}},
        )
        for n in range(start, stop)
    ]


async def _play(store: Store, writer: threading.Thread | None, opts: StoreOpsOptions) -> dict[str, PhaseCpu]:
    """One campaign's worth of store operations; the CPU of each phase."""
    clock = _CpuClock(writer)
    campaign_id = "bench"
    await store.create_campaign(campaign_id, {"benchmark": "store_ops"})
    # Built before the clock runs: the rows stand for what the reader hands over.
    batches = [
        _new_rows(s, min(s + opts.admit_batch, opts.rows + 1))
        for s in range(1, opts.rows + 1, opts.admit_batch)
    ]
    ids: list[int] = []
    out: dict[str, PhaseCpu] = {}
    since = datetime.now(UTC)
    listed = [f"gone{n}@example.org" for n in range(opts.suppressed)]
    listed += [f"user{n}@example.com" for n in range(1, opts.rows + 1, 100)]
    for start in range(0, len(listed), 5000):
        await store.suppress(
            _PROJECT,
            [
                SuppressionEntry(a, SuppressionReason.HARD_BOUNCE, SuppressionSource.AUTO, since)
                for a in listed[start : start + 5000]
            ],
        )
    screen = Screen(store, _PROJECT)

    async def suppress() -> None:
        # What admission adds per batch: one lookup, and the suppressed rows turned `skipped`.
        for i, batch in enumerate(batches):
            batches[i] = await screen.admission(batch)

    out["suppress"] = await _phase(clock, suppress)

    async def admit() -> None:
        for batch in batches:
            ids.extend(r.id for r in await store.admit(campaign_id, batch) if r.state is RowState.PENDING)

    out["admit"] = await _phase(clock, admit)
    now = datetime.now(UTC)

    async def send() -> None:
        todo = iter(ids)

        async def sender() -> None:
            # Like the dispatcher: sending (durable) before the POST, submitted after it.
            for row_id in todo:
                await store.mark_sending(row_id, started_at=now, correlation=f"{campaign_id}/{row_id}")
                await store.mark_submitted(
                    row_id, email_id=f"e-{row_id:08d}", message_id=f"<m{row_id}@tem>", submitted_at=now
                )

        async with anyio.create_task_group() as tg:
            for _ in range(opts.concurrency):
                tg.start_soon(sender)

    out["send"] = await _phase(clock, send)

    async def final() -> None:
        for start in range(0, len(ids), opts.final_batch):
            await store.mark_final(
                [
                    FinalUpdate(
                        row_id,
                        status="sent",
                        smtp_code=250,
                        smtp_message="2.0.0 Ok: queued",
                        try_count=1,
                        final_at=now,
                    )
                    for row_id in ids[start : start + opts.final_batch]
                ]
            )

    out["final"] = await _phase(clock, final)

    async def outcomes() -> None:
        n = 0
        # What the outcomes file reads: the lines, through the store's cheapest path.
        async for _line in outcome_lines(store, campaign_id):
            n += 1
        if n != opts.rows:
            raise RuntimeError(f"outcome_lines gave {n} lines for {opts.rows} admitted")

    out["outcomes"] = await _phase(clock, outcomes)
    return out


async def _run_once(kind: StoreKind, opts: StoreOpsOptions) -> dict[str, PhaseCpu]:
    if kind == "memory":
        async with MemoryStore() as memory:
            return await _play(memory, None, opts)
    with tempfile.TemporaryDirectory(prefix="bulksend-store-ops-") as tmp:
        store = SqliteStore(Path(tmp) / "outbox.db", durability=opts.durability)
        async with store:
            # The writer thread is private; the benchmark reads its CPU clock and nothing else.
            return await _play(store, store._writer, opts)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _run(opts: StoreOpsOptions) -> dict[str, Any]:
    # The event loop bulksend itself would run on.
    backend_options: dict[str, Any] = {"use_uvloop": True} if uvloop_available() else {}
    results: dict[str, Any] = {"options": asdict(opts), "uvloop": bool(backend_options), "stores": {}}
    for kind in opts.stores:
        runs = [anyio.run(_run_once, kind, opts, backend_options=backend_options) for _ in range(opts.repeat)]
        per_row: dict[str, dict[str, float | None]] = {}
        for phase in (*PHASES, "total"):

            def pick(run: dict[str, PhaseCpu], field: str, phase: str = phase) -> float | None:
                chosen = PHASES if phase == "total" else (phase,)
                values = [getattr(run[p], field) for p in chosen]
                return None if any(v is None for v in values) else sum(values)

            per_row[phase] = {
                field: (
                    None if (m := _median([pick(r, field) for r in runs])) is None else m / opts.rows * 1e6
                )
                for field in ("process_s", "loop_s", "writer_s")
            }
        results["stores"][kind] = per_row
    return results


def format_report(results: dict[str, Any]) -> str:
    opts = results["options"]
    lines = [
        f"store operations, {opts['rows']} rows, median of {opts['repeat']} "
        f"(concurrency {opts['concurrency']}, admit batches of {opts['admit_batch']}, "
        f"final batches of {opts['final_batch']}, sqlite durability={opts['durability']}, "
        f"uvloop={'yes' if results['uvloop'] else 'no'})",
        "CPU µs per row: process (all threads) / event loop thread / SQLite writer thread",
    ]
    header = f"{'phase':<10}" + "".join(f"{kind:>28}" for kind in results["stores"])
    lines.append(header)
    for phase in (*PHASES, "total"):
        cells = []
        for per_row in results["stores"].values():
            f = per_row[phase]
            writer = "-" if f["writer_s"] is None else f"{f['writer_s']:.1f}"
            cells.append(f"{f['process_s']:>10.1f} / {f['loop_s']:>6.1f} / {writer:>6}")
        lines.append(f"{phase:<10}" + "".join(f"{c:>28}" for c in cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=StoreOpsOptions.rows)
    parser.add_argument("--repeat", type=int, default=StoreOpsOptions.repeat)
    parser.add_argument("--concurrency", type=int, default=StoreOpsOptions.concurrency)
    parser.add_argument("--durability", choices=("full", "normal"), default=StoreOpsOptions.durability)
    parser.add_argument("--suppressed", type=int, default=StoreOpsOptions.suppressed)
    parser.add_argument("--store", choices=("sqlite", "memory"), action="append", dest="stores")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.rows <= 0 or args.repeat <= 0 or args.concurrency <= 0:
        parser.error("--rows, --repeat and --concurrency must be positive")
    opts = StoreOpsOptions(
        rows=args.rows,
        repeat=args.repeat,
        concurrency=args.concurrency,
        durability=args.durability,
        suppressed=max(0, args.suppressed),
        stores=tuple(args.stores or StoreOpsOptions.stores),
    )
    results = _run(opts)
    write_report(format_report(results), results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
