"""Printing the end-of-run summary (and ``bulksend report``): outcomes by status and by flag, API usage.

The numbers are counted by the library (:mod:`bulksend.sinks.summary`); this module only lays them out.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bulksend.sinks.outcomes import OUTCOME_STATUSES
from bulksend.sinks.summary import Summary, summarize_outcomes, tally_line

# Summary and the counting are re-exported: whoever prints a summary usually builds one first.
__all__ = ["Summary", "print_summary", "summarize_outcomes", "tally_line"]


def print_summary(summary: Summary, console: Console | None = None) -> None:
    """Render the summary as tables.

    Every title, cell and note is a :class:`~rich.text.Text`: statuses, flags, reasons and the
    campaign id come from data (TEM's answers, recipient rows, the campaign file), and Rich
    would read their ``[...]`` as markup.
    """
    console = console or Console(stderr=False)
    table = Table(title=Text(summary.title), show_header=True, header_style="bold")
    table.add_column("status")
    table.add_column("recipients", justify="right")
    table.add_column("share", justify="right")
    total = summary.total or 1
    order = list(OUTCOME_STATUSES) + sorted(set(summary.by_status) - set(OUTCOME_STATUSES))
    for status in order:
        n = summary.by_status.get(status, 0)
        if n or status in ("sent", "failed"):
            table.add_row(Text(status), Text(f"{n:,}"), Text(f"{100 * n / total:.1f} %"))
    table.add_row(Text("total", style="bold"), Text(f"{summary.total:,}", style="bold"), Text(""))
    console.print(table)
    if summary.by_flag:
        flags = Table(title="flags", show_header=True, header_style="bold")
        flags.add_column("flag")
        flags.add_column("emails", justify="right")
        for flag, n in summary.by_flag.most_common():
            flags.add_row(Text(flag), Text(f"{n:,}"))
        console.print(flags)
    if summary.reasons:
        reasons = Table(title="why not sent (most common)", show_header=True, header_style="bold")
        reasons.add_column("reason")
        reasons.add_column("rows", justify="right")
        for reason, n in summary.reasons.most_common(10):
            reasons.add_row(Text(reason), Text(f"{n:,}"))
        console.print(reasons)
    extra: list[str] = []
    if summary.api_calls is not None:
        calls = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.api_calls.items()))
        extra.append(f"API calls: {sum(summary.api_calls.values()):,} ({calls})")
    if summary.throttled is not None:
        extra.append(f"429 answers: {summary.throttled:,}")
    if summary.sent_this_run:
        extra.append(
            f"submitted to TEM: {summary.sent_this_run:,} at {summary.send_rate_per_s:,.0f} emails/s"
        )
    if summary.wall_time_s is not None:
        extra.append(
            f"wall time: {summary.wall_time_s:.1f} s, from reading the first recipient to the last "
            "final status and the outcomes file"
        )
    for line in extra + summary.notes:
        console.print(Text(line))
