"""Suppression lists as CSV: ``address,reason,source,since,until,origin``, for import and export.

Import files are untrusted (lists from other tools, from other people): every line is bounded
(:data:`MAX_LINE_CHARS`), a record is one physical line (no address holds a line break), and a
line that is not an entry is a :class:`CsvProblem` naming the line and the fix, never an
exception. Only ``address`` is required; missing columns take the importer's defaults. Dates are
RFC 3339 or ``YYYY-MM-DD`` (midnight UTC). On export, a cell a spreadsheet would run as a formula
gets a leading ``'`` (as in outcome files), which import takes off again.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final, TextIO

from bulksend.errors import StoreError
from bulksend.sinks.outcomes import CSV_FORMULA_TRIGGERS
from bulksend.suppression import SuppressionEntry, SuppressionReason, SuppressionSource
from bulksend.tem.models import parse_rfc3339

__all__ = [
    "COLUMNS",
    "MAX_LINE_CHARS",
    "CsvProblem",
    "parse_when",
    "read_suppression_csv",
    "write_suppression_csv",
]

COLUMNS: Final = ("address", "reason", "source", "since", "until", "origin")
MAX_LINE_CHARS: Final = 2048
"""The longest line an import reads (an address is at most 254 characters)."""
MAX_ORIGIN_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class CsvProblem:
    """A line of an import file that is not an entry, and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def parse_when(text: str) -> datetime:
    """A date (``YYYY-MM-DD``, midnight UTC) or an RFC 3339 time; ``ValueError`` otherwise."""
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
    parsed = parse_rfc3339(text)
    if parsed is None:
        raise ValueError(f"not a time: {text[:40]!r}")
    return parsed


def _when(text: str, column: str) -> datetime | str:
    """The time of a ``since``/``until`` cell, or why it is not one."""
    try:
        return parse_when(text)
    except ValueError:
        return f"{column} {text[:40]!r} is not a date (write 2026-12-01 or 2026-12-01T08:00:00Z)"


def _guarded(text: str) -> bool:
    """Whether export gives ``text`` a leading quote: it looks like a formula, or like a guarded
    cell already (so that import, which takes one quote off, gives it back as it was)."""
    return text.lstrip("'").startswith(CSV_FORMULA_TRIGGERS)


def _cell(text: str) -> str:
    return text[1:] if text.startswith("'") and _guarded(text) else text


def read_suppression_csv(
    lines: TextIO,
    *,
    reason: SuppressionReason = SuppressionReason.MANUAL,
    source: SuppressionSource = SuppressionSource.MANUAL,
    now: datetime,
    origin: str = "",
) -> Iterator[SuppressionEntry | CsvProblem]:
    """The entries of a CSV file (its first line the header), one per line, or the problems.

    ``reason``, ``source``, ``now`` (for ``since``) and ``origin`` fill the columns a file lacks
    or leaves empty. Reads at most :data:`MAX_LINE_CHARS` + 1 characters at a time.
    """
    header: list[str] | None = None
    number = 0
    while True:
        line = lines.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_CHARS:
            yield CsvProblem(number, f"the line is longer than {MAX_LINE_CHARS:,} characters")
            while line and not line.endswith("\n"):  # skip the rest of it, bounded per read
                line = lines.readline(MAX_LINE_CHARS + 1)
            continue
        try:
            cells = next(csv.reader([line.rstrip("\r\n")]), [])
        except csv.Error as exc:
            yield CsvProblem(number, f"not a CSV line ({exc}); quote a value with a comma in it")
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
            unknown = [c for c in header if c not in COLUMNS]
            if "address" not in header or unknown or len(set(header)) != len(header):
                yield CsvProblem(
                    number,
                    "the header must name an 'address' column, and other columns only among "
                    f"{', '.join(COLUMNS)}, each once",
                )
                return
            continue
        if not any(c.strip() for c in cells):
            continue  # a blank line
        if len(cells) != len(header):
            yield CsvProblem(number, f"{len(cells)} values for the {len(header)} columns of the header")
            continue
        yield _entry(
            number,
            dict(zip(header, (_cell(c.strip()) for c in cells), strict=True)),
            reason,
            source,
            now,
            origin,
        )


def _entry(
    number: int,
    row: dict[str, str],
    reason: SuppressionReason,
    source: SuppressionSource,
    now: datetime,
    origin: str,
) -> SuppressionEntry | CsvProblem:
    for column, kind in (("reason", SuppressionReason), ("source", SuppressionSource)):
        text = row.get(column, "")
        if text and text not in kind.__members__.values():
            known = ", ".join(k.value for k in kind)
            return CsvProblem(number, f"{column} {text[:40]!r} is not one of {known}")
    times: dict[str, datetime | None] = {"since": now, "until": None}
    for column in times:
        text = row.get(column, "")
        if text:
            when = _when(text, column)
            if isinstance(when, str):
                return CsvProblem(number, when)
            times[column] = when
    note = row.get("origin") or origin
    if len(note) > MAX_ORIGIN_CHARS or not note.isprintable():
        return CsvProblem(number, f"origin is longer than {MAX_ORIGIN_CHARS} characters or not printable")
    try:
        return SuppressionEntry(
            row.get("address", ""),
            SuppressionReason(row.get("reason") or reason),
            SuppressionSource(row.get("source") or source),
            times["since"] or now,
            times["until"],
            note,
        )
    except StoreError as exc:
        return CsvProblem(number, f"{exc}; write one address per line")


def write_suppression_csv(out: TextIO, entries: Iterable[SuppressionEntry], *, header: bool = True) -> int:
    """Write the header (unless told not to) and one line per entry; how many entries."""
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    n = 0
    for e in entries:
        until = e.until.isoformat().replace("+00:00", "Z") if e.until is not None else ""
        since = e.since.isoformat().replace("+00:00", "Z")
        cells = (e.address, e.reason.value, e.source.value, since, until, e.origin)
        writer.writerow(["'" + c if _guarded(c) else c for c in cells])
        n += 1
    return n
