"""What a campaign's outcomes add up to: recipients by status and by flag, and why not sent.

Counted by the run while it writes the outcomes file (and by ``bulksend report`` from one read
back); printing it is the command line's business (:mod:`bulksend.cli.summary`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Summary", "summarize_outcomes", "tally_line"]


@dataclass
class Summary:
    """Numbers a person wants at the end of a campaign."""

    title: str
    by_status: Counter[str] = field(default_factory=Counter)
    by_flag: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    """Most common reasons for rejected/skipped/unknown (first words, to group similar ones)."""
    api_calls: Mapping[str, int] | None = None
    throttled: int | None = None
    wall_time_s: float | None = None
    sent_this_run: int = 0
    send_rate_per_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def _reason_group(reason: str) -> str:
    # Group "…: 'x@y' is not…" variants by the text that does not depend on the row.
    text = reason.split(" — ")[0]
    if "'" in text:
        head, _, rest = text.partition("'")
        _, _, tail = rest.partition("'")
        text = f"{head}…{tail}"
    if len(text) > 140:
        text = text[:140].rsplit(" ", 1)[0] + " …"
    return text


def tally_line(summary: Summary, line: Mapping[str, Any]) -> None:
    """Count one outcome line into ``summary`` (by status, by flag, and why when not sent)."""
    status = str(line.get("status") or "unknown")
    summary.by_status[status] += 1
    for flag in line.get("flags") or ():
        summary.by_flag[str(flag)] += 1
    if status in ("rejected", "skipped", "unknown") and line.get("reason"):
        summary.reasons[_reason_group(str(line["reason"]))] += 1


def summarize_outcomes(title: str, lines: Iterable[Mapping[str, Any]]) -> Summary:
    """Build a summary from outcome lines (a file read back, or the store's rows)."""
    summary = Summary(title)
    for line in lines:
        tally_line(summary, line)
    return summary
