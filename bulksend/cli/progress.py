"""Live progress for ``bulksend send``: a Rich display on a terminal, plain lines elsewhere.

On a terminal: a bar of recipients done, the counters, and what the run waits for when it sends
nothing. Piped or redirected to a file, where a live display would leave one stale frame: a plain
line every few seconds (a JSON line with ``--log-format json``), and at once when the run starts
waiting for something.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from bulksend.pipeline.flow import BreakerState, flow_stats
from bulksend.pipeline.limiter import RateLimiter
from bulksend.pipeline.run import Waiting
from bulksend.pipeline.stats import RunStats

__all__ = ["PLAIN_EVERY_S", "plain_line", "progress_fields", "show_progress"]

PLAIN_EVERY_S = 5.0
"""Seconds between two plain progress lines when the output is not a terminal."""


def _line(stats: RunStats, limiter: RateLimiter, rate_now: float) -> Text:
    failed = stats.final_by_status.get("failed", 0)
    line = Text.assemble(
        ("submitted ", "dim"),
        (f"{stats.submitted:,}", "bold"),
        ("  final ", "dim"),
        (f"{stats.final:,}", "bold green"),
        ("  failed ", "dim"),
        (f"{failed:,}", "bold red" if failed else "bold"),
        ("  rejected ", "dim"),
        (f"{stats.rejected:,}", "bold yellow" if stats.rejected else "bold"),
        ("  skipped ", "dim"),
        (f"{stats.skipped:,}", "bold"),
        ("  in flight ", "dim"),
        (f"{stats.in_flight}", "bold"),
        ("  rate ", "dim"),
        (f"{rate_now:,.0f}/s", "bold"),
        ("  limit ", "dim"),
        (f"{limiter.rate_per_s:,.0f}/s", "bold"),
        ("  429s ", "dim"),
        (f"{stats.throttled:,}", "bold"),
    )
    flow = flow_stats(limiter)
    if flow is not None:
        measured = flow.measured_rate_per_s
        circuit = flow.circuit.name.lower().replace("_", "-")
        line.append_text(
            Text.assemble(
                ("  measured ", "dim"),
                (f"{measured:,.0f}/s" if measured is not None else "–", "bold"),
                ("  ceiling ", "dim"),
                (f"{flow.ceiling_per_s:,.0f}/s", "bold"),
                ("  retry budget ", "dim"),
                (f"{flow.retry_tokens:,.0f}", "bold"),
                ("  circuit ", "dim"),
                (circuit, "bold" if flow.circuit is BreakerState.CLOSED else "bold red"),
            )
        )
    return line


def _done(stats: RunStats) -> int:
    return stats.final + stats.rejected + stats.skipped


class _Rate:
    """Submissions per second over the last second or more, and the run's pace for the ETA."""

    def __init__(self, stats: RunStats) -> None:
        self._stats = stats
        self._t = self._t0 = time.monotonic()
        self._submitted = stats.submitted
        self._done0 = _done(stats)
        self.now = 0.0

    def update(self) -> None:
        now = time.monotonic()
        if now - self._t >= 1.0:
            self.now = (self._stats.submitted - self._submitted) / (now - self._t)
            self._t, self._submitted = now, self._stats.submitted

    def eta_s(self) -> float | None:
        """Seconds left at this run's pace so far (None: unknown total, or no pace yet)."""
        total = self._stats.total_rows
        done = _done(self._stats)
        pace = (done - self._done0) / max(1e-9, time.monotonic() - self._t0)
        if total is None or pace <= 0:
            return None
        return max(0.0, (total - done) / pace)


def progress_fields(
    stats: RunStats, rate_now: float, eta_s: float | None, waiting: Waiting | None
) -> dict[str, Any]:
    """What a plain or JSON progress line says."""
    return {
        "done": _done(stats),
        "total": stats.total_rows,
        "submitted": stats.submitted,
        "final": stats.final,
        "rate_per_s": round(rate_now, 1),
        "eta_s": None if eta_s is None else round(eta_s),
        "throttled": stats.throttled,
        "in_flight": stats.in_flight,
        "waiting": None if waiting is None else waiting.describe(),
    }


def plain_line(fields: dict[str, Any]) -> str:
    """``progress: 3,000/5,000 done (60 %), 120 emails/s, ETA 17 s, 429s 3, in flight 12; …``"""
    done, total = fields["done"], fields["total"]
    share = f" ({100 * done / total:.0f} %)" if total else ""
    eta = "–" if fields["eta_s"] is None else _duration(fields["eta_s"])
    line = f"progress: {done:,}/{total:,} done{share}" if total is not None else f"progress: {done:,} done"
    line += (
        f", {fields['rate_per_s']:,.0f} emails/s, ETA {eta}, 429s {fields['throttled']:,}, "
        f"in flight {fields['in_flight']:,}"
    )
    if fields["waiting"]:
        line += f"; {fields['waiting']}"
    return line


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


async def show_progress(
    stats: RunStats,
    limiter: RateLimiter,
    *,
    waiting: Callable[[], Waiting | None] | None = None,
    console: Console | None = None,
    refresh_s: float = 0.25,
    plain_every_s: float = PLAIN_EVERY_S,
    json_lines: bool = False,
) -> None:
    """Show progress until cancelled: live on a terminal, else a line every ``plain_every_s``
    (JSON with ``json_lines``). ``waiting`` says what the run waits for (the runner's
    :meth:`~bulksend.pipeline.run.CampaignRun.waiting_for`)."""
    console = console or Console(stderr=True)
    ask = waiting or (lambda: None)
    if console.is_terminal:
        await _live(stats, limiter, ask, console, refresh_s)
    else:
        await _plain(stats, ask, console, refresh_s, plain_every_s, json_lines)


async def _live(
    stats: RunStats,
    limiter: RateLimiter,
    waiting: Callable[[], Waiting | None],
    console: Console,
    refresh_s: float,
) -> None:
    """The bar counts recipients that reached a final outcome."""
    progress = Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("done", total=stats.total_rows)
    rate = _Rate(stats)
    with Live(Group(progress, Text("")), console=console, refresh_per_second=8, transient=False) as live:
        while True:
            rate.update()
            progress.update(task, completed=_done(stats), total=stats.total_rows)
            parts: list[Text] = [_line(stats, limiter, rate.now)]
            wait = waiting()
            if wait is not None:
                parts.append(Text(wait.describe(), style="bold yellow"))
            live.update(Group(progress, *parts))
            await anyio.sleep(refresh_s)


async def _plain(
    stats: RunStats,
    waiting: Callable[[], Waiting | None],
    console: Console,
    refresh_s: float,
    every_s: float,
    json_lines: bool,
) -> None:
    """A line every ``every_s``, and one as soon as the run starts waiting for something new."""
    rate = _Rate(stats)
    last_at = time.monotonic()
    last_what: str | None = None
    while True:
        await anyio.sleep(min(refresh_s, every_s))
        rate.update()
        wait = waiting()
        what = None if wait is None else wait.what
        now = time.monotonic()
        if now - last_at < every_s and (what is None or what == last_what):
            last_what = what
            continue
        last_at, last_what = now, what
        fields = progress_fields(stats, rate.now, rate.eta_s(), wait)
        if json_lines:
            record = {
                "event": "campaign.progress",
                **fields,
                "level": "info",
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
            text = orjson.dumps(record).decode()
        else:
            text = plain_line(fields)
        # Straight to the file: no Rich wrapping or markup, one whole line at a time.
        console.file.write(text + "\n")
        console.file.flush()
