"""Reconciliation: decide whether an ambiguous send created an email before sending again.

TEM has no idempotency key, so after a 5xx, a timeout, a dropped connection or a crash between
the POST and recording its answer, the only way to know is to ask: ``GET /emails`` filtered by
sender and a creation-time window around the attempts, matched by recipient and subject. The
lookup waits until the window is safely past (``settle_s`` after the attempt could last have
reached TEM), so that an email TEM was still creating cannot be missed, and answers every row due
around the same time with one listing (:class:`Reconciler`):

* found → adopt its id (``sending`` → ``submitted``): nobody gets a second copy;
* not found → ``sending`` → ``pending`` and send again.

:func:`reconcile_campaign` does the same for a whole campaign at once, in pages of 1000 emails,
when the state store lost sends it had recorded (``bulksend send … --reconcile-all``).

See docs/delivery-guarantees.md for the remaining window.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

import anyio
import structlog
from anyio.abc import TaskGroup

from bulksend.campaign.validate import normalize_address
from bulksend.errors import TemError
from bulksend.pipeline.context import SendContext
from bulksend.pipeline.dispatch import SendItem, record_submitted, utcnow
from bulksend.pipeline.flow import spend_retry
from bulksend.store.base import LeaseLostError, RecipientRow, RowState, Store
from bulksend.tem.models import FINAL_STATUSES, Email, ListEmailsQuery, OrderBy

__all__ = ["CampaignReconcile", "ReconcileSettings", "Reconciler", "find_final_emails", "reconcile_campaign"]

log = structlog.get_logger("bulksend.reconcile")


@dataclass(frozen=True)
class ReconcileSettings:
    """How ambiguous sends are reconciled."""

    settle_s: float
    """Wait after an ambiguous attempt before looking it up (TEM may still be creating it)."""
    timeout_s: float
    """The client's request timeout: how late an attempt with no recorded end may reach TEM."""
    skew_s: float = 5.0
    """Clock skew allowed between this machine and TEM, on each side of the lookup window."""
    mail_from: str = ""
    """The sender to look emails up by when an item does not carry its own."""


@dataclass(frozen=True, slots=True)
class _Ambiguous:
    item: SendItem
    started_at: datetime
    ended_at: datetime
    """When the attempt could last have reached TEM (its end, or its start plus the timeout)."""


@dataclass(eq=False)
class Reconciler:
    """Reconciles ambiguous rows in batches, inside the caller's task group.

    Rows wait until their window is settled (``settle_s`` after their attempt ended), then every
    row due within ``batch_window_s`` of the first is answered by one ``GET /emails`` listing of
    the sender's emails created in the span of their attempts (pages of 1000), matched by
    recipient, subject and each row's own window. Found rows adopt the email; the others go back
    to ``pending`` and are sent again, each resend spending a token of the retry budget.
    """

    context: SendContext
    settings: ReconcileSettings
    task_group: TaskGroup
    resend: Callable[[SendItem], Awaitable[bool]]
    on_final: Callable[[Email, int], Awaitable[None]]
    batch_window_s: float = 1.0
    pending: int = field(default=0, init=False)
    """Rows queued and not decided yet."""
    list_calls: int = field(default=0, init=False)
    """``GET /emails`` calls made to reconcile (pages included)."""
    _due: list[tuple[datetime, int, _Ambiguous]] = field(default_factory=list, init=False, repr=False)
    _seq: Iterator[int] = field(default_factory=itertools.count, init=False, repr=False)
    _flushing: bool = field(default=False, init=False, repr=False)

    @property
    def next_lookup_at(self) -> datetime | None:
        """When the next listing is due (None: none is waiting for its window to settle)."""
        if not self._due:
            return None
        return self._due[0][0] + timedelta(seconds=self.batch_window_s)

    async def submit(self, item: SendItem, started_at: datetime, ended_at: datetime | None) -> None:
        """Queue ``item`` (whose row is ``sending``) for reconciliation; returns at once."""
        self.pending += 1
        # Without a recorded end (a crash mid-POST), the request could have reached TEM up to the
        # client timeout after it started.
        end = ended_at or started_at + timedelta(seconds=self.settings.timeout_s)
        due = end + timedelta(seconds=self.settings.settle_s)
        heapq.heappush(self._due, (due, next(self._seq), _Ambiguous(item, started_at, end)))
        if not self._flushing:
            # The flusher ends when nothing is left, so that the caller's task group can finish.
            self._flushing = True
            self.task_group.start_soon(self._flush)

    async def _flush(self) -> None:
        try:
            while self._due:
                first_due = self._due[0][0]
                # Wait for the first row's window to settle, and a little more so that the rows
                # that went ambiguous just after it share its listing.
                delay = (first_due - utcnow()).total_seconds() + self.batch_window_s
                if delay > 0:
                    await self.context.sleep(delay)
                now = utcnow()
                batch: list[_Ambiguous] = []
                while self._due and self._due[0][0] <= now:
                    batch.append(heapq.heappop(self._due)[2])
                if batch:
                    await self._reconcile(batch)
        finally:
            self._flushing = False

    async def _reconcile(self, batch: list[_Ambiguous]) -> None:
        by_sender: dict[str, list[_Ambiguous]] = {}
        for amb in batch:
            by_sender.setdefault(amb.item.mail_from or self.settings.mail_from, []).append(amb)
        for mail_from, rows in by_sender.items():
            try:
                listed = await self._list(mail_from, rows)
            except TemError as exc:
                # Unknown is not "not sent": leave the rows `sending`; the next run reconciles them.
                for amb in rows:
                    self.pending -= 1
                    self.context.stats.deferred += 1
                    self.context.stats.reconcile_deferred += 1
                    log.warning(
                        "email.reconcile_failed",
                        row=amb.item.row,
                        error=str(exc),
                        hint="left for reconciliation; rerun the same command to resume",
                    )
                continue
            for amb in rows:
                await self._decide(amb, _matches(amb, listed, self.settings.skew_s))

    async def _list(self, mail_from: str, rows: list[_Ambiguous]) -> dict[str, list[Email]]:
        """The sender's emails created over the rows' attempts, by lower-cased recipient."""
        skew = timedelta(seconds=self.settings.skew_s)
        query = ListEmailsQuery(
            mail_from=mail_from or None,
            since=min(a.started_at for a in rows) - skew,
            until=max(a.ended_at for a in rows) + skew,
            order_by=OrderBy.CREATED_AT_ASC,
        )
        by_rcpt: dict[str, list[Email]] = {}
        async for result in self.context.list_pages(query):
            self.list_calls += 1
            for email in result.emails:
                by_rcpt.setdefault(email.mail_rcpt.lower(), []).append(email)
        return by_rcpt

    async def _decide(self, amb: _Ambiguous, matches: list[Email]) -> None:
        item = amb.item
        try:
            if len(matches) > 1:
                log.warning("email.duplicate_found", row=item.row, email_ids=[e.id for e in matches])
            if matches:
                found = matches[0]
                await record_submitted(self.context, item, found, adopted=True)
                self.context.stats.reconciled_adopted += 1
                if found.is_final:
                    # The lookup already tells the final status: record it now, as the tracker's
                    # incremental lists may have passed this email's update while no row owned it.
                    await self.on_final(found, item.row_id)
                log.debug("email.reconciled", row=item.row, outcome="adopted", email_id=found.id)
                return
            with anyio.CancelScope(shield=True):
                await self.context.store.mark_retry(
                    item.row_id, reason="reconciled: TEM had not created it", lease_token=item.lease_token
                )
        except LeaseLostError:
            # Another worker took the row over (our lease expired): it reconciles it itself.
            log.warning("email.lease_lost", row=item.row)
            return
        finally:
            self.pending -= 1
        self.context.stats.reconciled_resent += 1
        log.debug("email.reconciled", row=item.row, outcome="resend")
        self.task_group.start_soon(self._send_again, item)

    async def _send_again(self, item: SendItem) -> None:
        # A resend is a retry: it spends the retry budget like any other.
        await spend_retry(self.context.limiter)
        await self.resend(item)


def _matches(amb: _Ambiguous, by_rcpt: dict[str, list[Email]], skew_s: float) -> list[Email]:
    """The listed emails that are this row's: same recipient and subject, created in its window."""
    item = amb.item
    since = amb.started_at - timedelta(seconds=skew_s)
    until = amb.ended_at + timedelta(seconds=skew_s)
    # The listing's filters may be looser than exact equality; check ourselves.
    return [
        e
        for e in by_rcpt.get(item.email.strip().lower(), ())
        if e.subject == item.subject and (e.created_at is None or since <= e.created_at <= until)
    ]


@dataclass
class CampaignReconcile:
    """What :func:`reconcile_campaign` found and did."""

    listed: int = 0
    """Emails TEM listed for the sender in the campaign's window."""
    adopted: int = 0
    """Unfinished rows TEM already had an email for: now ``submitted`` (never sent again)."""
    final: int = 0
    """Of those, the ones already final at TEM (recorded ``final`` at once)."""
    requeued: int = 0
    """``sending`` rows TEM proved it never created: back to ``pending``, to be sent."""
    left_sending: int = 0
    """``sending`` rows whose attempt may still reach TEM: looked up one by one later."""
    duplicates: int = 0
    """Rows TEM holds more than one email for (emailed twice before this reconciliation)."""
    list_calls: int = 0
    interrupted: bool = False
    """Stopped before the end: nothing was accepted, the campaign stays refused."""


async def reconcile_campaign(
    context: SendContext,
    *,
    campaign_id: str,
    mail_from: str,
    since: datetime,
    subject_of: Callable[[RecipientRow], Awaitable[str | None]],
    on_final: Callable[[Email, int], Awaitable[None]],
    timeout_s: float,
    settle_s: float,
    skew_s: float,
    not_before: datetime | None = None,
) -> CampaignReconcile:
    """Look every unfinished row of the campaign up at TEM in batched lists; adopt what TEM has.

    Lists the sender's emails created since ``since`` (pages of 1000, oldest first), finds each
    one's row by recipient (the dedupe key) and keeps it when the row's rendered subject
    (``subject_of``) is the email's: a ``pending`` or ``sending`` row becomes ``submitted`` with
    that email's id (and ``final`` through ``on_final`` when TEM says so). A ``sending`` row with
    no email, whose attempt ended ``settle_s`` before the listing began, goes back to ``pending``.
    Waits first until ``not_before`` (when the last send the journal recorded can no longer be
    in flight). A TEM error propagates: nothing is taken as "not sent" on a failed lookup.
    """
    store = context.store
    if not_before is not None:
        delay = (not_before - utcnow()).total_seconds()
        if delay > 0:
            await context.sleep(delay)
    report = CampaignReconcile()
    listed_at = utcnow()
    query = ListEmailsQuery(
        mail_from=mail_from or None,
        since=since,
        until=listed_at + timedelta(seconds=skew_s),
        order_by=OrderBy.CREATED_AT_ASC,
    )
    async for result in context.list_pages(query):
        report.list_calls += 1
        report.listed += len(result.emails)
        await _adopt_page(store, campaign_id, result.emails, subject_of, on_final, report)
    # A `sending` row TEM does not have: not created, if its attempt was over (plus the time TEM
    # may take to list an email) before the listing began and it started inside the window.
    settled = listed_at - timedelta(seconds=settle_s)
    async for row in store.iter_rows(campaign_id, states=[RowState.SENDING]):
        started = row.attempt_started_at
        end = row.attempt_ended_at or (started + timedelta(seconds=timeout_s) if started else None)
        if started is None or end is None or end > settled or started < since + timedelta(seconds=skew_s):
            report.left_sending += 1
            continue
        with anyio.CancelScope(shield=True):
            await store.mark_retry(row.id, reason="reconciled: TEM had not created it")
        report.requeued += 1
    log.info("campaign.reconciled_all", campaign=campaign_id, **vars(report))
    if report.duplicates:
        log.warning(
            "campaign.duplicates_found",
            campaign=campaign_id,
            recipients=report.duplicates,
            hint="TEM holds more than one email for these recipients, sent before this reconciliation "
            "(--log-level debug lists them); none was sent again now",
        )
    return report


async def _adopt_page(
    store: Store,
    campaign_id: str,
    emails: tuple[Email, ...],
    subject_of: Callable[[RecipientRow], Awaitable[str | None]],
    on_final: Callable[[Email, int], Awaitable[None]],
    report: CampaignReconcile,
) -> None:
    by_key: dict[str, list[Email]] = {}
    for email in emails:
        by_key.setdefault(normalize_address(email.mail_rcpt), []).append(email)
    rows = await store.rows_by_keys(campaign_id, list(by_key))

    async def adopt(row: RecipientRow, found: Email) -> None:
        with anyio.CancelScope(shield=True):
            if row.state is RowState.PENDING:
                # pending → sending → submitted: the row's history says an attempt reached TEM.
                await store.mark_sending(
                    row.id,
                    started_at=found.created_at or utcnow(),
                    correlation=row.correlation or f"{campaign_id}/{row.row}",
                )
            await store.mark_submitted(
                row.id,
                email_id=found.id,
                message_id=found.message_id,
                submitted_at=found.created_at or utcnow(),
            )
        report.adopted += 1
        if found.is_final:
            await on_final(found, row.id)
            report.final += 1

    async with anyio.create_task_group() as tg:
        for key, found in by_key.items():
            row = rows.get(key)
            if row is None:
                continue  # another campaign's email, or a recipient this campaign never admitted
            if row.state is RowState.SUBMITTED or row.state is RowState.FINAL:
                if any(e.id != row.email_id for e in found):
                    report.duplicates += 1
                continue
            if row.state is not RowState.PENDING and row.state is not RowState.SENDING:
                continue
            subject = await subject_of(row)
            matches = [e for e in found if e.subject == subject]
            if not matches:
                continue
            if len(matches) > 1:
                report.duplicates += 1
                # One line per row at debug: after a lost state there may be thousands of them.
                log.debug("email.duplicate_found", row=row.row, email_ids=[e.id for e in matches])
            tg.start_soon(adopt, row, matches[0])


WINDOW_GAP = timedelta(hours=1)
"""Emails submitted further apart than this are looked up in separate listings: one window over
a long gap would list every other email created in it."""


async def find_final_emails(
    context: SendContext,
    *,
    submitted: Mapping[str, datetime | None],
    mail_from: str | None = None,
    skew_s: float = 60.0,
) -> dict[str, Email]:
    """The emails among ``submitted`` (email id → when TEM accepted it) that are final at TEM now.

    TEM's list filters by one ``message_id`` at a time, not by a set of ids, so the ids are found
    in batched listings instead: the final emails (of ``mail_from``, when given) created in each
    window of submissions, pages of 1000, oldest first, until every id of the window is seen. An
    email without a submission time is read by id. A TEM error propagates (nothing is known then).
    """
    found: dict[str, Email] = {}
    timed = sorted((at, email_id) for email_id, at in submitted.items() if at is not None)
    windows: list[list[tuple[datetime, str]]] = []
    for at, email_id in timed:
        if windows and at - windows[-1][-1][0] <= WINDOW_GAP:
            windows[-1].append((at, email_id))
        else:
            windows.append([(at, email_id)])
    skew = timedelta(seconds=skew_s)
    for window in windows:
        wanted = {email_id for _, email_id in window}
        query = ListEmailsQuery(
            mail_from=mail_from or None,
            since=window[0][0] - skew,
            until=window[-1][0] + skew,
            statuses=tuple(sorted(FINAL_STATUSES)),
            order_by=OrderBy.CREATED_AT_ASC,
        )
        async for page in context.list_pages(query):
            for email in page.emails:
                if email.id in wanted and email.status.is_final:
                    wanted.discard(email.id)
                    found[email.id] = email
            if not wanted:
                break
    for email_id in (email_id for email_id, at in submitted.items() if at is None):
        email = await context.paced("get", partial(context.tem.get_email, email_id))
        if email.status.is_final:
            found[email_id] = email
    return found
