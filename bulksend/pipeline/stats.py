"""Live counters of one run, read by the progress display, the summary and the metrics.

Plain integers mutated from the event loop only (no locks needed: every stage runs on one loop).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["OutcomeHook", "RunStats"]

OutcomeHook = Callable[[str, Sequence[tuple[int, str]]], Awaitable[None]]
"""Called with (campaign id, [(row id, outcome status)]) after rows reach a terminal state."""


@dataclass
class RunStats:
    """Counters of one campaign run (this process only; the store holds the totals)."""

    started_monotonic: float = field(default_factory=time.monotonic)
    total_rows: int | None = None
    """Rows in the source when known (None while streaming an unknown-length file)."""
    admitted: int = 0
    rejected: int = 0
    skipped: int = 0
    submitted: int = 0
    final: int = 0
    final_by_status: Counter[str] = field(default_factory=Counter)
    final_by_flag: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    reconciled_adopted: int = 0
    reconciled_resent: int = 0
    ambiguous: int = 0
    reconcile_deferred: int = 0
    """Ambiguous rows whose lookup at TEM failed: left ``sending`` for a later reconciliation."""
    deferred: int = 0
    """Rows left pending after retries ran out (a rerun resumes them)."""
    api_calls: Counter[tuple[str, int]] = field(default_factory=Counter)
    """(endpoint kind, HTTP status or 0 for a transport error) → calls."""

    submitted_this_run: int = 0
    sent_this_run: int = 0
    """Emails this process's own sends got accepted (not those reconciliation adopted)."""
    first_submit_monotonic: float | None = None
    last_submit_monotonic: float | None = None
    """The sending span: this process's first and last accepted send."""
    on_submitted: Callable[[int], None] | None = field(default=None, repr=False)
    """Called with the new ``submitted`` count after each submission (progress hooks, tests)."""

    def add_submitted(self, *, adopted: bool = False) -> None:
        """Count one email accepted by TEM, or (``adopted``) found there by reconciliation: an
        adoption may come long after the send (a settle time, a dead worker's row), so it does
        not stretch the sending span."""
        if not adopted:
            now = time.monotonic()
            if self.first_submit_monotonic is None:
                self.first_submit_monotonic = now
            self.last_submit_monotonic = now
            self.sent_this_run += 1
        self.submitted_this_run += 1
        self.submitted += 1
        if self.on_submitted is not None:
            self.on_submitted(self.submitted)

    def on_response(self, kind: str, status: int, elapsed_s: float) -> None:
        """Hook for ``TemClient(on_response=…)``: counts every API call."""
        self.api_calls[(kind, status)] += 1

    def calls(self, *kinds: str) -> int:
        """API calls of these kinds (all kinds when none given)."""
        return sum(n for (k, _), n in self.api_calls.items() if not kinds or k in kinds)

    @property
    def throttled(self) -> int:
        """429 answers seen."""
        return sum(n for (_, s), n in self.api_calls.items() if s == 429)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    @property
    def send_span_s(self) -> float:
        """Seconds from this process's first accepted send to its last (0 before two sends)."""
        first, last = self.first_submit_monotonic, self.last_submit_monotonic
        return 0.0 if first is None or last is None else last - first

    def submit_rate_per_s(self) -> float:
        """Sends per second of this run over its sending span (first to last accepted send), not
        over the process's lifetime: a worker may wait for rows, and then for TEM, much longer."""
        span = self.send_span_s
        if span <= 0:
            return 0.0
        return (self.sent_this_run - 1) / span
