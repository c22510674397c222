"""A campaign's report for the dashboard: the sections of the HTML report, drawn by the daemon.

``GET /v1/campaigns/{id}/report`` answers with what :func:`bulksend.reporting.html.render_sections`
draws from a :class:`~bulksend.reporting.aggregate.ReportAggregate` of the campaign's outcome
lines, so the dashboard and the report file show the same charts, escaped on the server. The
lines are the live ones (``live=True``): a row the store does not hold as final yet counts as
``in progress``, not ``unknown`` (which says tracking gave up).

A build reads every outcome line, so builds are bounded, whoever asks and however often: one at
a time for the whole daemon (concurrent requests for one campaign share it), and a report is
kept and served again while the campaign's counts have not moved, or for ``min_age_s`` (2 s) —
longer for a large campaign, ``cost_factor`` (10) times what its last build took, so a report a
dashboard keeps asking for takes at most a tenth of the daemon's time. The event loop is given
back every ``YIELD_EVERY`` rows. At most ``max_entries`` reports are kept, the least recently
read go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import anyio.lowlevel

from bulksend.clock import SYSTEM_CLOCK, Clock
from bulksend.daemon.admin.control import CampaignInfo
from bulksend.reporting.aggregate import ReportAggregate
from bulksend.reporting.html import render_sections

__all__ = ["YIELD_EVERY", "CampaignReport", "CampaignReports"]

YIELD_EVERY: Final = 1000
"""Outcome lines counted between two yields to the event loop while a report is built."""


@dataclass(frozen=True, slots=True)
class CampaignReport:
    """One built report: the HTML fragment, the aggregate's JSON, and when it was built."""

    html: str
    summary: dict[str, Any]
    built_at: datetime


@dataclass(slots=True)
class _Entry:
    report: CampaignReport
    counts: tuple[str, tuple[tuple[str, int], ...]]
    fresh_until: float


def _counts_key(info: CampaignInfo) -> tuple[str, tuple[tuple[str, int], ...]]:
    return info.state, tuple(sorted(info.counts.items()))


class CampaignReports:
    """Builds and keeps campaign reports within the bounds of the module docstring."""

    def __init__(
        self,
        *,
        min_age_s: float = 2.0,
        cost_factor: float = 10.0,
        max_entries: int = 16,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.min_age_s = min_age_s
        self.cost_factor = cost_factor
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._building = anyio.Lock()
        self.builds = 0
        """Reports built so far (the others were served as kept)."""

    def __repr__(self) -> str:
        return f"CampaignReports({len(self._entries)} kept, {self.builds} built)"

    async def report(
        self, info: CampaignInfo, lines: Callable[[], AsyncIterator[dict[str, Any]]]
    ) -> CampaignReport:
        """The report of the campaign ``info`` describes, built from ``lines()`` when the one
        kept is stale."""
        kept = self._fresh(info)
        if kept is not None:
            return kept
        async with self._building:
            kept = self._fresh(info)  # built by the request this one waited for
            if kept is not None:
                return kept
            started = self._clock.monotonic()
            report = await _build(lines())
            took = self._clock.monotonic() - started
        self.builds += 1
        fresh_for = max(self.min_age_s, self.cost_factor * took)
        self._entries[info.id] = _Entry(report, _counts_key(info), self._clock.monotonic() + fresh_for)
        self._entries.move_to_end(info.id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return report

    def _fresh(self, info: CampaignInfo) -> CampaignReport | None:
        entry = self._entries.get(info.id)
        if entry is None:
            return None
        if entry.counts != _counts_key(info) and self._clock.monotonic() >= entry.fresh_until:
            return None
        self._entries.move_to_end(info.id)
        return entry.report


async def _build(lines: AsyncIterator[dict[str, Any]]) -> CampaignReport:
    aggregate = ReportAggregate()
    try:
        n = 0
        async for line in lines:
            aggregate.add(line)
            n += 1
            if n % YIELD_EVERY == 0:
                await anyio.lowlevel.checkpoint()
    finally:
        aclose = getattr(lines, "aclose", None)
        if aclose is not None:
            await aclose()
    return CampaignReport(
        html=render_sections(aggregate), summary=aggregate.to_json(), built_at=datetime.now(UTC)
    )
