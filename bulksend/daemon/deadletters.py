"""What the daemon dead-lettered since it started: counts and the latest reasons, per source.

The dead letters themselves are on the brokers (docs/daemon.md, Dead letters); this is the view
``GET /v1/dead-letters`` serves. Memory is bounded: a few recent reasons per source, and a fixed
number of sources (the configured ones; anything beyond is counted under ``other``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["DeadLetterBook"]

RECENT_PER_SOURCE: Final = 20
"""Reasons kept per source, newest first in the answer."""
MAX_SOURCES: Final = 64
"""Sources counted apart; more are lumped under ``other`` (sources come from the config)."""
MAX_REASON_CHARS: Final = 500
"""A reason is cut to this length: it quotes the message, which a producer controls."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Source:
    count: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_PER_SOURCE))


class DeadLetterBook:
    """Counts dead letters by source and kind of reason, and keeps the latest reasons."""

    def __init__(self, *, started_at: datetime | None = None) -> None:
        self.started_at = started_at or _now()
        self._sources: dict[str, _Source] = {}

    def __repr__(self) -> str:
        return f"DeadLetterBook({sum(s.count for s in self._sources.values())} dead letters)"

    def record(
        self, source: str, message_id: str, reason: str, kind: str, *, at: datetime | None = None
    ) -> None:
        """Note one message of ``source`` dead-lettered for ``reason`` (of kind ``kind``)."""
        if source not in self._sources and len(self._sources) >= MAX_SOURCES:
            source = "other"
        book = self._sources.setdefault(source, _Source())
        book.count += 1
        book.by_kind[kind] = book.by_kind.get(kind, 0) + 1
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        book.recent.append(
            {"at": at or _now(), "message_id": message_id[:200], "kind": kind, "reason": reason}
        )

    def as_json(self, sources: list[str] | None = None) -> dict[str, Any]:
        """The answer of ``GET /v1/dead-letters``; ``sources`` lists every source, even those
        with no dead letter yet."""
        names = list(dict.fromkeys([*(sources or []), *self._sources]))
        out = []
        for name in names:
            book = self._sources.get(name, _Source())
            out.append(
                {
                    "source": name,
                    "count": book.count,
                    "by_kind": dict(sorted(book.by_kind.items())),
                    "recent": list(reversed(book.recent)),
                }
            )
        return {
            "since": self.started_at,
            "total": sum(s["count"] for s in out),
            "sources": out,
        }
