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
__all__ = ["Summary", "print_reasons", "print_summary", "summarize_outcomes", "tally_line"]


MAX_KINDS_SHOWN = 10
"""Kinds of reason listed; the others are counted in one closing line."""


def print_summary(
    summary: Summary, console: Console | None = None, *, always: tuple[str, ...] = ("sent", "failed")
) -> None:
    """Render the summary as tables; ``always`` are the statuses shown even at 0 (none in a dry run).

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
        if n or status in always:
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
        print_reasons(summary, console)
    extra: list[str] = []
    if summary.api_calls is not None:
        calls = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.api_calls.items()))
        extra.append(f"API calls: {sum(summary.api_calls.values()):,} ({calls})")
    if summary.throttled is not None:
        extra.append(f"429 answers: {summary.throttled:,}")
    if summary.sent_this_run:
        span = f" over {summary.send_span_s:,.1f} s, first send to last" if summary.send_span_s else ""
        extra.append(
            f"submitted to TEM: {summary.sent_this_run:,} at {summary.send_rate_per_s:,.0f} emails/s{span}"
        )
    if summary.wall_time_s is not None:
        extra.append(
            f"wall time: {summary.wall_time_s:.1f} s, from reading the first recipient to the last "
            "final status and the outcomes file"
        )
    for line in extra + summary.notes:
        # A pipe or a log file has no width: a note (a path, say) stays on one line there.
        console.print(Text(line), soft_wrap=not console.is_terminal)


def _rows(n: int) -> str:
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def _entry(summary: Summary, kind: str, n: int) -> tuple[str, str]:
    """``(where, reason)`` of one kind: its first row, and for a kind of one row its own reason."""
    example = summary.examples.get(kind)
    if example is None:
        return "", kind
    row, reason = example
    return (f"row {row:,}", reason) if n == 1 else (f"first row {row:,}", kind)


def print_reasons(summary: Summary, console: Console) -> None:
    """Why rows were not sent, one entry per kind of reason with its count, most common first.

    On a terminal, a table whose reason cells wrap at word boundaries; elsewhere (a pipe, a log
    file), one line per kind, ``202 rows (first row 2): missing template variable 'city' …``, never cut.
    """
    kinds = summary.reasons.most_common()
    shown, rest = kinds[:MAX_KINDS_SHOWN], kinds[MAX_KINDS_SHOWN:]
    more = None
    if rest:
        more = f"… and {len(rest):,} more kinds ({_rows(sum(n for _, n in rest))}): see the outcomes"
    title = "why not sent, by kind of reason"
    if console.is_terminal:
        table = Table(title=title, show_header=True, header_style="bold")
        table.add_column("rows", justify="right", no_wrap=True)
        table.add_column("where", no_wrap=True)
        table.add_column("reason", overflow="fold")
        for kind, n in shown:
            where, reason = _entry(summary, kind, n)
            table.add_row(Text(f"{n:,}"), Text(where), Text(reason))
        console.print(table)
        if more is not None:
            console.print(Text(more))
        return
    console.print(Text(f"{title}:"), soft_wrap=True)
    for kind, n in shown:
        where, reason = _entry(summary, kind, n)
        count = where if n == 1 and where else f"{_rows(n)} ({where})" if where else _rows(n)
        console.print(Text(f"  {count}: {reason}"), soft_wrap=True)
    if more is not None:
        console.print(Text(f"  {more}"), soft_wrap=True)
