"""Settling a canceled campaign: every row gets an outcome, one line per input row.

Run as the campaign run's ``after_sending`` hook, once nothing of the campaign can be sent any
more (its dispatch tasks, retries after a 429 included, have returned), so no send races it:

1. rows never read from the recipients file are admitted as ``canceled``;
2. rows never sent (``pending``: queued, or waiting to retry) become ``canceled``;
3. rows left ``sending`` (an answer never came) are looked up at TEM: an email TEM has is
   adopted and goes on like any other, one TEM never created becomes ``canceled``;
4. emails TEM still holds as ``new`` are canceled there (``POST /emails/{id}/cancel``) and end
   ``canceled``; the rest are tracked to their final status by the run.

Each step is idempotent, so a stop in the middle is taken up again by the next start.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import anyio
import anyio.to_thread
import structlog

from bulksend.campaign.recipients import iter_recipients, read_batch
from bulksend.errors import BulksendError, TemError, TemPermanentError
from bulksend.pipeline.dispatch import SendItem
from bulksend.pipeline.reconcile import Reconciler, ReconcileSettings
from bulksend.pipeline.run import CampaignRun
from bulksend.pipeline.stats import OutcomeHook
from bulksend.pipeline.tracker import final_update
from bulksend.store.base import CANCELED_BEFORE_SENDING, NewRecipient, RowState
from bulksend.tem.models import Email, EmailStatus, ListEmailsQuery, OrderBy

__all__ = ["settle_canceled"]

log = structlog.get_logger("bulksend.daemon.cancel")

_ADMIT_BATCH = 500
_CANCELED = "canceled"


async def settle_canceled(run: CampaignRun, on_outcome: OutcomeHook) -> None:
    """Give every row of ``run``'s canceled campaign its outcome (see the module docstring)."""
    cid = run.campaign.id
    never_read = await _cancel_unread(run, on_outcome)
    never_sent = await _cancel_pending(run, on_outcome)
    unknown = await _reconcile_sending(run, on_outcome)
    at_tem = await _cancel_new_at_tem(run, on_outcome)
    log.info(
        "campaign.canceled",
        campaign=cid,
        never_read=never_read,
        never_sent=never_sent,
        looked_up=unknown,
        canceled_at_tem=at_tem,
    )


async def _cancel_unread(run: CampaignRun, on_outcome: OutcomeHook) -> int:
    """Admit the rows the run never read as ``canceled``: the outcomes keep one line per row."""
    store, cid = run.store, run.campaign.id
    record = await store.get_campaign(cid)
    if record is None or record.admitted_all:
        return 0
    start = await store.max_admitted_row(cid)
    reader = iter_recipients(run.campaign.recipients, start_after_row=start)
    total = 0
    while True:
        chunk = await anyio.to_thread.run_sync(read_batch, reader, _ADMIT_BATCH)
        if not chunk:
            break
        rows = [
            NewRecipient(rec.row, rec.email, rec.name, None, RowState.SKIPPED, CANCELED_BEFORE_SENDING)
            for rec in chunk
        ]
        with anyio.CancelScope(shield=True):
            results = await store.admit(cid, rows)
        await on_outcome(cid, [(res.id, _CANCELED) for res in results if res.state is RowState.SKIPPED])
        total += len(rows)
    await store.mark_admitted_all(cid)
    return total


async def _cancel_pending(run: CampaignRun, on_outcome: OutcomeHook) -> int:
    """``pending`` rows (never sent, or waiting to retry) become ``canceled``."""
    store, cid = run.store, run.campaign.id
    ids = [row.id async for row in store.iter_rows(cid, states=[RowState.PENDING])]
    done: list[tuple[int, str]] = []
    for row_id in ids:
        try:
            with anyio.CancelScope(shield=True):
                await store.mark_skipped(row_id, reason=CANCELED_BEFORE_SENDING)
        except BulksendError:
            continue  # no longer pending: another worker sent it, and its outcome follows
        done.append((row_id, _CANCELED))
    if done:
        await on_outcome(cid, done)
    return len(done)


async def _reconcile_sending(run: CampaignRun, on_outcome: OutcomeHook) -> int:
    """Look rows left ``sending`` up at TEM: adopt what it has, cancel what it never created."""
    store, cid, c = run.store, run.campaign.id, run.campaign
    rows = [row async for row in store.iter_rows(cid, states=[RowState.SENDING])]
    if not rows:
        return 0

    async def never_created(item: SendItem) -> bool:
        # The reconciler proved TEM has no email for it and moved it back to `pending`.
        with anyio.CancelScope(shield=True):
            await store.mark_skipped(item.row_id, reason=CANCELED_BEFORE_SENDING)
        await on_outcome(cid, [(item.row_id, _CANCELED)])
        return True

    async def already_final(email: Email, row_id: int) -> None:
        with anyio.CancelScope(shield=True):
            await store.mark_final([final_update(row_id, email)])
        await on_outcome(cid, [(row_id, email.status.value)])

    async with anyio.create_task_group() as tg:
        settings = ReconcileSettings(
            settle_s=c.tracking.settle_s,
            timeout_s=c.sending.timeout_s,
            skew_s=run.skew_s,
            mail_from=c.from_.email,
        )
        reconciler = Reconciler(
            run.context,
            settings,
            task_group=tg,
            resend=never_created,
            on_final=already_final,
        )
        for row in rows:
            item = await run.item_from_row(row)
            if item is not None and row.attempt_started_at is not None:
                await reconciler.submit(item, row.attempt_started_at, row.attempt_ended_at)
    return len(rows)


async def _cancel_new_at_tem(run: CampaignRun, on_outcome: OutcomeHook) -> int:
    """Cancel at TEM every email of the campaign still ``new``; they end ``canceled``."""
    store, cid, c, context = run.store, run.campaign.id, run.campaign, run.context
    record = await store.get_campaign(cid)
    if record is None:
        return 0
    query = ListEmailsQuery(
        since=record.created_at - timedelta(minutes=1),
        mail_from=c.from_.email,
        statuses=(EmailStatus.NEW,),
        order_by=OrderBy.CREATED_AT_ASC,
    )
    emails: list[Email] = []
    try:
        async for result in context.list_pages(query):
            emails.extend(result.emails)
    except TemError as exc:
        # Not fatal: those emails are tracked to whatever TEM does with them.
        log.warning("campaign.cancel_list_failed", campaign=cid, error=str(exc))
        return 0
    rows = await store.rows_by_email_id(cid, [e.id for e in emails])
    canceled = 0
    for email in emails:
        row = rows.get(email.id)
        if row is None or row.state is not RowState.SUBMITTED:
            continue
        try:
            answer = await context.paced("cancel", partial(context.tem.cancel_email, email.id))
        except TemPermanentError:
            continue  # already past `new`: its real status comes from tracking
        except TemError as exc:
            log.warning("campaign.cancel_failed", campaign=cid, email_id=email.id, error=str(exc))
            continue
        if answer.status is EmailStatus.CANCELED:
            with anyio.CancelScope(shield=True):
                await store.mark_final([final_update(row.id, answer)])
            await on_outcome(cid, [(row.id, _CANCELED)])
            canceled += 1
    return canceled
