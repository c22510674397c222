"""The daemon's two summary lines: what a start recovers (``daemon.recovery``) and what a stop
leaves (``daemon.stopped``), read from the store so they say what is true, not what was meant.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bulksend.store.base import RowState, Store

__all__ = ["row_states", "unsettled_deliveries"]

_STATES = (RowState.PENDING, RowState.SENDING, RowState.SUBMITTED)


async def row_states(store: Store, campaign_ids: Iterable[str]) -> dict[str, int]:
    """Rows not final yet across these campaigns: ``pending`` (to send), ``sending`` (to
    reconcile: the answer of their POST is unknown), ``submitted`` (to track)."""
    totals = dict.fromkeys((s.value for s in _STATES), 0)
    for campaign_id in dict.fromkeys(campaign_ids):
        counts = await store.counts(campaign_id)
        for state in totals:
            totals[state] += int(counts.get(state, 0))
    return totals


def unsettled_deliveries(sources: Iterable[Any]) -> int:
    """Messages handed out by the sources and not settled yet: closing a source gives them back
    to the broker (sources that cannot tell count as 0)."""
    total = 0
    for source in sources:
        n = getattr(source, "in_flight", 0)
        total += n if isinstance(n, int) else 0
    return total
