"""Reading an outcomes file again: which rows to keep, counts by recipient domain, rows worth resending.

For ``bulksend report``; printing is the command line's business (:mod:`bulksend.cli.report`).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from bulksend.errors import ConfigError
from bulksend.sinks.outcomes import OUTCOME_FIELDS, csv_cell, write_file_atomically

__all__ = [
    "KNOWN_FLAGS",
    "PERMANENT_FLAGS",
    "DomainCount",
    "OutcomeFilter",
    "by_domain",
    "parse_list",
    "worth_resending",
    "write_resend_file",
]

KNOWN_FLAGS: Final = (
    "soft_bounce",
    "hard_bounce",
    "spam",
    "mailbox_full",
    "mailbox_not_found",
    "greylisted",
    "send_before_expiration",
    "blocklisted",
)
"""TEM's flags, as the outcomes file names them."""

PERMANENT_FLAGS: Final = frozenset({"hard_bounce", "mailbox_not_found", "blocklisted", "spam"})
"""Flags that say sending again would fail again (or hurt the account): never resent."""


def parse_list(option: str, text: str, valid: Collection[str]) -> frozenset[str]:
    """The comma list ``text`` of ``option``; a ConfigError naming the valid values otherwise."""
    wanted = frozenset(v.strip() for v in text.split(",") if v.strip())
    unknown = sorted(wanted - set(valid))
    if not wanted or unknown:
        what = f"unknown value {', '.join(map(repr, unknown))}" if unknown else "no value"
        raise ConfigError(f"{option}: {what}; give a comma list of {', '.join(valid)}")
    return wanted


@dataclass(frozen=True)
class OutcomeFilter:
    """Rows with one of ``statuses`` (any when empty) and one of ``flags`` (any when empty)."""

    statuses: frozenset[str] = frozenset()
    flags: frozenset[str] = frozenset()

    def matches(self, line: Mapping[str, Any]) -> bool:
        if self.statuses and str(line.get("status")) not in self.statuses:
            return False
        return not self.flags or any(str(f) in self.flags for f in line.get("flags") or ())


@dataclass
class DomainCount:
    """Rows of one recipient domain."""

    domain: str
    rows: int = 0
    by_status: Counter[str] = field(default_factory=Counter)

    @property
    def other(self) -> int:
        return self.rows - self.by_status["sent"] - self.by_status["failed"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "rows": self.rows,
            "sent": self.by_status["sent"],
            "failed": self.by_status["failed"],
            "other": self.other,
        }


def domain_of(email: object) -> str:
    """The recipient's domain in lower case, or ``(none)`` for a row without one."""
    _, at, domain = str(email or "").rpartition("@")
    return domain.strip().lower() if at and domain.strip() else "(none)"


def by_domain(lines: Iterable[Mapping[str, Any]]) -> list[DomainCount]:
    """Counts per recipient domain, most rows first (then by name)."""
    counts: dict[str, DomainCount] = {}
    for line in lines:
        domain = domain_of(line.get("email"))
        entry = counts.get(domain) or counts.setdefault(domain, DomainCount(domain))
        entry.rows += 1
        entry.by_status[str(line.get("status"))] += 1
    return sorted(counts.values(), key=lambda d: (-d.rows, d.domain))


def worth_resending(line: Mapping[str, Any]) -> bool:
    """Whether sending the row again may work: ``canceled``, ``unknown``, or ``failed`` with a
    temporary flag (soft bounce, mailbox full, greylisted, expired) and no permanent one."""
    if not line.get("email"):
        return False
    status = line.get("status")
    if status in ("canceled", "unknown"):
        return True
    flags = {str(f) for f in line.get("flags") or ()}
    return status == "failed" and bool(flags) and not flags & PERMANENT_FLAGS


def write_resend_file(path: Path, lines: Iterable[Mapping[str, Any]]) -> tuple[int, list[str]]:
    """Write ``lines`` as a recipients CSV (``email``, ``name``, and any column the outcome lines
    carry besides the outcome fields: variables), atomically and ``0600``; (rows, columns)."""
    columns: list[str] = []
    count = 0

    def chunks() -> Iterator[bytes]:
        nonlocal count
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\r\n")
        for line in lines:
            if not columns:
                columns.extend(["email", "name", *(k for k in line if k not in OUTCOME_FIELDS)])
                writer.writerow(columns)
            writer.writerow([csv_cell(_text(line.get(c))) for c in columns])
            count += 1
            if text.tell() > 1 << 16:
                yield text.getvalue().encode()
                text.seek(0)
                text.truncate()
        if not columns:
            columns.extend(["email", "name"])
            writer.writerow(columns)
        yield text.getvalue().encode()

    write_file_atomically(path, chunks())
    return count, columns


def _text(value: Any) -> str | None:
    """A variable as a CSV cell: objects and lists as JSON (a recipients CSV holds text)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)
