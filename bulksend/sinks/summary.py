"""What a campaign's outcomes add up to: recipients by status and by flag, and why not sent.

Counted by the run while it writes the outcomes file (and by ``bulksend report`` from one read
back); printing it is the command line's business (:mod:`bulksend.cli.summary`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "MAX_REASON_KINDS",
    "OTHER_REASONS",
    "Summary",
    "reason_kind",
    "shorten",
    "summarize_outcomes",
    "tally_line",
]


@dataclass
class Summary:
    """Numbers a person wants at the end of a campaign."""

    title: str
    by_status: Counter[str] = field(default_factory=Counter)
    by_flag: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    """Rows not sent (rejected, skipped, unknown) by kind of reason (:func:`reason_kind`)."""
    examples: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Kind → the first row of that kind and its reason as written (where the outcome has a row)."""
    api_calls: Mapping[str, int] | None = None
    throttled: int | None = None
    wall_time_s: float | None = None
    sent_this_run: int = 0
    send_rate_per_s: float = 0.0
    send_span_s: float = 0.0
    """Seconds from this run's first accepted send to its last (what ``send_rate_per_s`` is over)."""
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


MAX_REASON_KINDS: Final = 1000
"""Distinct kinds a summary counts; rows of further kinds are counted together (memory stays flat)."""
OTHER_REASONS: Final = "other reasons (see the outcomes file)"
_MAX_KIND_CHARS: Final = 400

# Parts of a reason that differ from row to row. Replacing them gives the reason's *kind*, so that
# 200 rows rejected for the same cause are one line of the summary instead of 200.
_ROW_SPECIFIC: Final = (
    # A quoted value holding an '@' (an address), but not a lone '@' as in "exactly one '@'".
    (re.compile(r"'(?!@')[^'\n]*@[^'\n]*'"), "<address>"),
    (re.compile(r"\brows? \d[\d,]*"), "row N"),
    (re.compile(r"\b(byte offset|position|column|line) \d[\d,]*"), r"\1 N"),
    (re.compile(r"\bbyte 0x[0-9a-f]{2}\b"), "byte 0xNN"),
    (re.compile(r"\b(is|has) \d[\d,]* (bytes|characters|values|keys)\b"), r"\1 N \2"),
)


def reason_kind(reason: str, *, email: str = "") -> str:
    """The kind of a rejection reason: its row-specific parts (row numbers, addresses, offsets)
    replaced, so rows refused for the same cause count together.

    ``email`` is the row's address: wherever the reason quotes it, it becomes ``<address>``.
    A kind longer than a few hundred characters is shortened at a word boundary, never inside a word.
    """
    # TEM's refusals append the fields it named (which may repeat the address) after " — ".
    text = reason.split(" — ")[0]
    if email and len(email) > 1:
        text = text.replace(repr(email), "<address>").replace(email, "<address>")
    for pattern, replacement in _ROW_SPECIFIC:
        text = pattern.sub(replacement, text)
    return shorten(text)


def shorten(text: str, limit: int = _MAX_KIND_CHARS) -> str:
    """``text``, or its first words and `` …`` when it is longer than ``limit``: never cut in a word."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " …"


def tally_line(summary: Summary, line: Mapping[str, Any]) -> None:
    """Count one outcome line into ``summary`` (by status, by flag, and why when not sent)."""
    status = str(line.get("status") or "unknown")
    summary.by_status[status] += 1
    for flag in line.get("flags") or ():
        summary.by_flag[str(flag)] += 1
    if status in ("rejected", "skipped", "unknown") and line.get("reason"):
        kind = reason_kind(str(line["reason"]), email=str(line.get("email") or ""))
        reasons = summary.reasons
        if kind not in reasons:
            if len(reasons) >= MAX_REASON_KINDS:
                kind = OTHER_REASONS
            elif isinstance(line.get("row"), int):
                summary.examples[kind] = (line["row"], shorten(str(line["reason"])))
        reasons[kind] += 1


def summarize_outcomes(title: str, lines: Iterable[Mapping[str, Any]]) -> Summary:
    """Build a summary from outcome lines (a file read back, or the store's rows)."""
    summary = Summary(title)
    for line in lines:
        tally_line(summary, line)
    return summary
