"""One outcome line as the report reads it: typed, whichever file (JSONL or CSV) it came from.

JSONL keeps values exactly; CSV holds every value as text, ``flags`` joined with ``;``, and a text
cell a spreadsheet would run as a formula prefixed with ``'`` (:func:`~bulksend.sinks.outcomes.csv_cell`).
:func:`parse_outcome` reads both back to the same :class:`Outcome`, and never raises on a value
of the wrong type: a hand-edited file gives ``None`` or ``""`` where a value cannot be read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bulksend.sinks.outcomes import read_outcomes

__all__ = ["Outcome", "outcome_lines", "parse_outcome", "read_outcome_file"]


@dataclass(slots=True)
class Outcome:
    """The fields of an outcome line the report uses; times are Unix seconds (UTC).

    Not frozen: a frozen dataclass's ``__init__`` costs twice as much, and a report makes one
    of these per row."""

    row: int | None
    email: str
    name: str
    status: str
    flags: tuple[str, ...]
    smtp_code: int | None
    smtp_message: str
    status_details: str
    try_count: int
    attempts: int
    submitted_at: float | None
    final_at: float | None
    reason: str


def _int(value: Any) -> int | None:
    if type(value) is int:  # the usual case first (and not a bool, a subclass of int)
        return value
    if isinstance(value, str) and value.strip():
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(value)


def _epoch(value: Any) -> float | None:
    if type(value) is not str or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _flags(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        return tuple(f for f in value.split(";") if f)
    if isinstance(value, list | tuple):
        return tuple(str(f) for f in value if f)
    return ()


def parse_outcome(line: Mapping[str, Any]) -> Outcome:
    """``line`` (as :func:`~bulksend.sinks.outcomes.read_outcomes` gives it, from JSONL or CSV)
    as an :class:`Outcome`."""
    get = line.get
    # A million times over: each value's usual type is checked inline, the helpers only
    # see what a hand-edited file may hold.
    row, email, name, status = get("row"), get("email"), get("name"), get("status")
    code, message, details = get("smtp_code"), get("smtp_message"), get("status_details")
    tries, attempts, reason, flags = get("try_count"), get("attempts"), get("reason"), get("flags")
    return Outcome(
        row if type(row) is int else _int(row),
        email if type(email) is str else _text(email),
        name if type(name) is str else _text(name),
        (status if type(status) is str else _text(status)).strip() or "unknown",
        () if not flags else _flags(flags),
        code if type(code) is int or code is None else _int(code),
        message if type(message) is str else _text(message),
        details if type(details) is str else _text(details),
        tries if type(tries) is int else _int(tries) or 0,
        attempts if type(attempts) is int else _int(attempts) or 0,
        _epoch(get("submitted_at")),
        _epoch(get("final_at")),
        reason if type(reason) is str else _text(reason),
    )


def outcome_lines(path: Path) -> Iterator[tuple[Mapping[str, Any], Outcome]]:
    """Stream a .jsonl or .csv outcomes file: each line as written and as an :class:`Outcome`
    (raises ValueError on a line that is not a JSON object)."""
    for line in read_outcomes(path):
        yield line, parse_outcome(line)


def read_outcome_file(path: Path) -> Iterator[Outcome]:
    """Stream the outcomes of a .jsonl or .csv file (see :func:`outcome_lines`)."""
    for _, outcome in outcome_lines(path):
        yield outcome
