"""Job results: the message each final job outcome becomes, and the backlog of those not yet out.

A result whose publish failed (the results broker away, or refusing) is *held*: kept in memory,
still due in the store's journal, and published again by :meth:`ResultBacklog.run` in the
background with a backoff, without waiting for a restart. While anything is held, new results
join the backlog rather than each trying the broker on its own: one task probes, and once the
broker answers again the whole backlog goes out in order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import anyio
import structlog

from bulksend.clock import SYSTEM_CLOCK, Clock
from bulksend.metrics import Metrics
from bulksend.pipeline.suppress import is_suppressed
from bulksend.sinks.outcomes import outcome_of
from bulksend.store.base import RecipientRow

__all__ = [
    "RESULTS_BACKLOG_UNREADY",
    "ResultBacklog",
    "result_id",
    "result_message",
]

log = structlog.get_logger("bulksend.daemon.results")

RESULTS_BACKLOG_UNREADY: Final = 10_000
"""Held results beyond which ``/readyz`` says not ready (below it, ready with the backlog stated)."""
RETRY_MIN_S: Final = 0.5
"""First wait before publishing held results again; doubles after each failed attempt."""
RETRY_MAX_S: Final = 5.0
"""Longest wait between two attempts: a broker that is back gets its backlog within this."""

PublishBatch = Callable[[str, Sequence[int]], Awaitable[list[int]]]
"""Publishes the results of (campaign, row ids); returns the row ids it could not publish."""


def result_id(campaign_id: str, row: int, status: str) -> str:
    """A stable id of one result: the same job (campaign and row) with the same status always has
    the same id, so a consumer can drop a repeat (results are published at least once)."""
    digest = hashlib.blake2b(f"{campaign_id}/{row}/{status}".encode(), digest_size=16)
    return digest.hexdigest()


def result_message(row: RecipientRow, campaign_id: str, *, unfinished: str) -> dict[str, Any]:
    """The JSON object published for one job's outcome (docs/message-format.md, Result messages)."""
    outcome = outcome_of(row, unfinished=unfinished)
    message = {
        "result_id": result_id(campaign_id, row.row, str(outcome.get("status"))),
        **outcome,
        "idempotency_key": row.payload.get("idempotency_key"),
        "template": row.payload.get("template"),
        "campaign": campaign_id,
    }
    if is_suppressed(row.reason):
        # Skipped because the address is on the suppression list (the reason says why).
        message["suppressed"] = True
    return message


class ResultBacklog:
    """Results whose publish failed, published again in the background until the broker takes them.

    :meth:`hold` keeps row ids (by campaign); :meth:`run` retries them with a backoff from
    :data:`RETRY_MIN_S` doubling to :data:`RETRY_MAX_S`, and goes on at once after a success
    until nothing is held. :meth:`stop` ends :meth:`run`; what is still held then stays due in
    the journal, and the next start publishes it.
    """

    def __init__(self, publish: PublishBatch, metrics: Metrics, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._publish = publish
        self._metrics = metrics
        self._clock = clock
        self._held: dict[str, dict[int, None]] = {}
        """campaign → row ids held, in the order they became due (a dict keeps insertion order)."""
        # Made in run(): anyio objects need the event loop, and the daemon is built before it.
        self._wake: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = False
        self._attempting = False
        self.attempts = 0
        """Retry attempts made so far (each one publishes what is held, until one fails)."""

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._held.values())

    def __repr__(self) -> str:
        return f"ResultBacklog(held={len(self)}, attempts={self.attempts})"

    @property
    def active(self) -> bool:
        """Whether results are held or being published again: new results should queue behind."""
        return self._attempting or bool(self._held)

    @property
    def held(self) -> Mapping[str, Sequence[int]]:
        """Row ids held, by campaign (a copy)."""
        return {cid: list(rows) for cid, rows in self._held.items() if rows}

    def hold(self, campaign_id: str, row_ids: Sequence[int]) -> None:
        """Keep these results for the background retry."""
        if not row_ids:
            return
        rows = self._held.setdefault(campaign_id, {})
        for row_id in row_ids:
            rows[row_id] = None
        self._changed()
        if self._wake is not None:
            self._wake.set()

    def _changed(self) -> None:
        self._metrics.set_results_backlog(len(self))

    def stop(self) -> None:
        """End :meth:`run` (at a stop; what is held stays due for the next start)."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        """Publish what is held, with a backoff between failed attempts, until :meth:`stop`."""
        self._wake = anyio.Event()
        with anyio.CancelScope() as self._scope:
            if self._stopped:
                return
            wait_s = RETRY_MIN_S
            while True:
                if not self._held:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    # A failure just happened: give the broker a moment before the first retry.
                    await self._clock.sleep(wait_s)
                    continue
                if await self._attempt():
                    wait_s = RETRY_MIN_S
                    continue
                log.debug("results.retry_later", held=len(self), retry_in_s=wait_s)
                await self._clock.sleep(wait_s)
                wait_s = min(wait_s * 2, RETRY_MAX_S)

    async def _attempt(self) -> bool:
        """Publish everything held, campaign by campaign; False at the first refusal."""
        self.attempts += 1
        self._attempting = True
        try:
            return await self._attempt_all()
        finally:
            self._attempting = False

    async def _attempt_all(self) -> bool:
        for campaign_id in list(self._held):
            rows = self._held.pop(campaign_id, {})
            try:
                left = await self._publish(campaign_id, list(rows))
            except BaseException:
                self._put_back(campaign_id, list(rows))
                raise
            if left:
                self._put_back(campaign_id, left)
                self._changed()
                return False
            published = len(rows)
            self._changed()
            log.info("results.published_late", campaign=campaign_id, results=published, held=len(self))
        return True

    def _put_back(self, campaign_id: str, row_ids: Sequence[int]) -> None:
        # Ahead of anything held meanwhile: the backlog stays in the order results became due.
        later = self._held.pop(campaign_id, {})
        self._held = {campaign_id: {**dict.fromkeys(row_ids), **later}, **self._held}
