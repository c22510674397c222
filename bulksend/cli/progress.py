"""Live progress display for ``bulksend send`` (rich): counts, current rate, ETA."""

from __future__ import annotations

import time

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from bulksend.pipeline.flow import BreakerState, flow_stats
from bulksend.pipeline.limiter import RateLimiter
from bulksend.pipeline.stats import RunStats

__all__ = ["show_progress"]


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


async def show_progress(
    stats: RunStats, limiter: RateLimiter, *, console: Console | None = None, refresh_s: float = 0.25
) -> None:
    """Render until cancelled. The bar counts recipients that reached a final outcome."""
    console = console or Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("done", total=stats.total_rows)
    last_t, last_submitted, rate_now = time.monotonic(), 0, 0.0
    with Live(Group(progress, Text("")), console=console, refresh_per_second=8, transient=False) as live:
        while True:
            now = time.monotonic()
            if now - last_t >= 1.0:
                rate_now = (stats.submitted - last_submitted) / (now - last_t)
                last_t, last_submitted = now, stats.submitted
            done = stats.final + stats.rejected + stats.skipped
            progress.update(task, completed=done, total=stats.total_rows)
            live.update(Group(progress, _line(stats, limiter, rate_now)))
            await anyio.sleep(refresh_s)
