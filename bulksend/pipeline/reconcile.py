"""Reconciliation: decide whether an ambiguous send created an email before sending again.

TEM has no idempotency key, so after a 5xx, a timeout, a dropped connection or a crash between
the POST and recording its answer, the only way to know is to ask: ``GET /emails`` filtered by
recipient, sender, subject and a creation-time window around the attempt. The lookup waits until
the window is safely past (``settle_s`` after the attempt could last have reached TEM), so that an
email TEM was still creating cannot be missed:

* found → adopt its id (``sending`` → ``submitted``): nobody gets a second copy;
* not found → ``sending`` → ``pending`` and send again.

See docs/delivery-guarantees.md for the remaining window.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial

import anyio
import structlog
from anyio.abc import TaskGroup

from bulksend.errors import TemError
from bulksend.pipeline.dispatch import SendItem, utcnow
from bulksend.pipeline.limiter import RateLimiter
from bulksend.pipeline.paced import paced_call
from bulksend.pipeline.retry import RetryPolicy
from bulksend.pipeline.stats import RunStats
from bulksend.store.base import LeaseLostError, Store
from bulksend.tem.client import TemClient
from bulksend.tem.models import Email, ListEmailsQuery, OrderBy

__all__ = ["Reconciler"]

log = structlog.get_logger("bulksend.reconcile")


class Reconciler:
    """Runs one task per ambiguous row inside the caller's task group."""

    def __init__(
        self,
        *,
        task_group: TaskGroup,
        store: Store,
        tem: TemClient,
        limiter: RateLimiter,
        stats: RunStats,
        mail_from: str,
        settle_s: float,
        skew_s: float,
        timeout_s: float,
        retry: RetryPolicy,
        resend: Callable[[SendItem], Awaitable[bool]],
        on_final: Callable[[Email, int], Awaitable[None]],
        sleep: Callable[[float], Awaitable[None]] | None = None,
        max_parallel: int = 16,
    ) -> None:
        self._tg = task_group
        self._store = store
        self._tem = tem
        self._limiter = limiter
        self._stats = stats
        self._mail_from = mail_from
        self._settle_s = settle_s
        self._skew_s = skew_s
        self._timeout_s = timeout_s
        self._retry = retry
        self._resend = resend
        self._on_final = on_final
        self._sleep = sleep or anyio.sleep
        self._slots = anyio.CapacityLimiter(max_parallel)
        self.pending = 0

    async def submit(self, item: SendItem, started_at: datetime, ended_at: datetime | None) -> None:
        """Queue ``item`` (whose row is ``sending``) for reconciliation; returns at once."""
        self.pending += 1
        self._tg.start_soon(self._one, item, started_at, ended_at)

    async def _one(self, item: SendItem, started_at: datetime, ended_at: datetime | None) -> None:
        try:
            # Without a recorded end (a crash mid-POST), the request could have reached TEM up to
            # the client timeout after it started.
            end = ended_at or started_at + timedelta(seconds=self._timeout_s)
            delay = (end - utcnow()).total_seconds() + self._settle_s
            if delay > 0:
                await self._sleep(delay)
            try:
                async with self._slots:
                    found = await self._lookup(
                        item,
                        started_at - timedelta(seconds=self._skew_s),
                        end + timedelta(seconds=self._skew_s),
                    )
            except TemError as exc:
                # Unknown is not "not sent": leave the row `sending`; the next run reconciles it.
                self._stats.deferred += 1
                log.warning(
                    "email.reconcile_failed",
                    row=item.row,
                    error=str(exc),
                    hint="left for reconciliation; rerun the same command to resume",
                )
                return
            try:
                if found is not None:
                    with anyio.CancelScope(shield=True):
                        await self._store.mark_submitted(
                            item.row_id,
                            email_id=found.id,
                            message_id=found.message_id,
                            submitted_at=found.created_at or utcnow(),
                            lease_token=item.lease_token,
                        )
                    self._stats.reconciled_adopted += 1
                    self._stats.add_submitted()
                    if found.is_final:
                        # The lookup already tells the final status: record it now, as the
                        # tracker's incremental lists may have passed this email's update while
                        # no row owned it.
                        await self._on_final(found, item.row_id)
                    log.debug("email.reconciled", row=item.row, outcome="adopted", email_id=found.id)
                    return
                with anyio.CancelScope(shield=True):
                    await self._store.mark_retry(
                        item.row_id, reason="reconciled: TEM had not created it", lease_token=item.lease_token
                    )
            except LeaseLostError:
                # Another worker took the row over (our lease expired): it reconciles it itself.
                log.warning("email.lease_lost", row=item.row)
                return
            self._stats.reconciled_resent += 1
            log.debug("email.reconciled", row=item.row, outcome="resend")
        finally:
            self.pending -= 1
        await self._resend(item)

    async def _lookup(self, item: SendItem, since: datetime, until: datetime) -> Email | None:
        query = ListEmailsQuery(
            mail_rcpt=item.email,
            mail_from=item.mail_from or self._mail_from or None,
            subject=item.subject,
            since=since,
            until=until,
            order_by=OrderBy.CREATED_AT_ASC,
        )
        wanted = item.email.strip().lower()
        matches: list[Email] = []
        page = 1
        while True:
            result = await paced_call(
                self._limiter,
                self._retry,
                "list",
                partial(self._tem.list_emails, query, page=page, page_size=100),
                sleep=self._sleep,
            )
            # The server-side filters may be looser than exact equality; check ourselves.
            matches.extend(
                e for e in result.emails if e.mail_rcpt.lower() == wanted and e.subject == item.subject
            )
            if len(result.emails) < 100:
                break
            page += 1
        if len(matches) > 1:
            log.warning("email.duplicate_found", row=item.row, email_ids=[e.id for e in matches])
        return matches[0] if matches else None
