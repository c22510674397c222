"""One campaign's run: admit → dispatch → reconcile → track → outcomes, in one task group.

::

    intake ──(bounded stream)──► N dispatch workers ──► TEM
      │  resume: pending rows first, then the file after the last admitted row
      │                         │ ambiguous
      │                         ▼
      │                    reconciler (GET /emails, then adopt or resend)
      ▼
    store ◄──────────────── tracker (list final emails in batches, stragglers by id)

Dispatch, reconciliation and resends are the :class:`~bulksend.pipeline.engine.SendEngine`'s (the
daemon's job streams use the same engine); this module feeds it and owns the campaign's lifecycle.

Stopping: :meth:`CampaignRun.request_stop` stops intake at once, lets in-flight requests finish
and records them, and gives up after ``grace_s`` (rows left ``sending`` are reconciled by the next
run). :meth:`CampaignRun.abort` cancels at once; the store writes are shielded, so the next run
still finds every row where it really is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from bulksend.campaign.model import Campaign
from bulksend.campaign.recipients import (
    BadRow,
    RecipientInput,
    iter_recipients,
    read_batch,
    split_attachments,
)
from bulksend.campaign.render import Rejection, RenderedEmail, Renderer, RenderPacer
from bulksend.campaign.validate import normalize_address
from bulksend.errors import CampaignError, StateLostError
from bulksend.events.router import EventRouter
from bulksend.pipeline.context import SendContext
from bulksend.pipeline.dispatch import AccountRefusedError, SendItem, utcnow
from bulksend.pipeline.engine import EngineSettings, SendEngine, TrackerSink, campaign_tracker
from bulksend.pipeline.guard import BounceGuard
from bulksend.pipeline.limiter import RateLimiter
from bulksend.pipeline.reconcile import CampaignReconcile, reconcile_campaign
from bulksend.pipeline.retry import RetryPolicy
from bulksend.pipeline.stats import OutcomeHook, RunStats
from bulksend.pipeline.suppress import Screen
from bulksend.pipeline.tracker import Tracker, final_update
from bulksend.sinks.outcomes import outcome_lines, write_outcomes
from bulksend.sinks.summary import Summary, tally_line
from bulksend.store import describe_store
from bulksend.store.base import (
    CampaignRecord,
    CampaignState,
    FinalUpdate,
    JournalledStore,
    NewRecipient,
    RecipientRow,
    RowState,
    Store,
)
from bulksend.suppression import SuppressionStore
from bulksend.tem.client import TemClient
from bulksend.tem.models import Email

__all__ = ["AfterSending", "CampaignRun", "RunResult", "Waiting", "attachments_of", "correlation_of"]

log = structlog.get_logger("bulksend.run")

ADMIT_BATCH = 500
"""Rows admitted per store commit: large enough to amortise the commit, small enough to start fast."""


AfterSending = Callable[["CampaignRun"], Awaitable[None]]
"""Called once a run sends nothing more, before it only tracks (a canceled campaign settles its
rows there)."""


def correlation_of(campaign_id: str, row: int) -> str:
    """The per-recipient correlation reference carried in the ``X-Bulksend-Ref`` header."""
    return f"{campaign_id}/{row}"


@dataclass(frozen=True)
class Waiting:
    """What a run is waiting for while it sends nothing (see :meth:`CampaignRun.waiting_for`)."""

    what: str
    """``stopping`` (requests in flight after a stop), ``lookup`` (ambiguous sends to look up at
    TEM), or ``final`` (submitted emails TEM has not finished with)."""
    count: int
    in_s: float | None = None
    """For ``lookup``: seconds until the next lookup (None or 0: under way)."""

    def describe(self) -> str:
        """The wait in words, for a progress line."""
        n = f"{self.count:,}"
        if self.what == "stopping":
            return f"stopping: waiting for {n} requests in flight"
        if self.what == "lookup":
            sends = "ambiguous send" if self.count == 1 else "ambiguous sends"
            when = f"in {self.in_s:,.0f} s" if self.in_s is not None and self.in_s >= 0.5 else "now"
            return f"{n} {sends}: looking them up at TEM {when}"
        emails = "email" if self.count == 1 else "emails"
        return f"waiting for {n} {emails} to become final"


@dataclass
class RunResult:
    """How a run ended."""

    campaign_id: str
    complete: bool
    """Every admitted row reached a terminal state (and the whole source was admitted)."""
    stopped: bool
    already_finished: bool
    counts: dict[str, int]
    stats: RunStats
    outcomes_path: Path | None = None
    outcome_lines: int = 0
    notes: list[str] = field(default_factory=list)
    summary: Summary | None = None
    """Outcomes by status and flag, counted while the outcomes file was written."""
    admitted_all: bool = False
    """Every row of the recipient file was read (admitted); False: a stop came first."""
    paused: bool = False
    """The campaign is paused (by its guardrail, or by a person): it sends again only when
    resumed (``--resume-paused``), not by running it again."""


class CampaignRun:
    """Runs one campaign to the end (or until stopped), resuming whatever a previous run left."""

    def __init__(
        self,
        campaign: Campaign,
        *,
        store: Store,
        tem: TemClient,
        limiter: RateLimiter,
        project_id: str,
        stats: RunStats | None = None,
        grace_s: float = 30.0,
        skew_s: float = 5.0,
        on_outcome: OutcomeHook | None = None,
        spec_extra: dict[str, Any] | None = None,
        worker_id: str | None = None,
        lease_s: float = 30.0,
        claim_batch: int = 100,
        claim_idle_s: float = 0.2,
        prefetch: int | None = None,
        after_sending: AfterSending | None = None,
        suppression: SuppressionStore | None = None,
        resume_paused: bool = False,
        on_paused: Callable[[str, str], object] | None = None,
        events: EventRouter | None = None,
    ) -> None:
        self.campaign = campaign
        self._events = events
        """Where webhook events arrive (``tracking.mode = "events"``): the run's tracker joins it."""
        self.worker_id = worker_id
        """Set for scale-out: several processes share the campaign through leases in the store."""
        self.lease_s = lease_s
        self.prefetch = campaign.sending.concurrency * 4 if prefetch is None else max(0, prefetch)
        """Rows queued for the dispatch tasks beyond those they hold (scale-out: claimed ahead)."""
        self.claim_batch = max(1, min(claim_batch, self.prefetch))
        self.claim_idle_s = claim_idle_s
        self._held: set[int] = set()
        self.store = store
        self.tem = tem
        self.limiter = limiter
        self.stats = stats or RunStats()
        self.grace_s = grace_s
        self._skew_s = skew_s
        self._renderer = Renderer(campaign, project_id=project_id)
        self._screen = Screen(suppression or store, project_id, campaign.suppression_ignore)
        """The suppression list (the run's store's own unless another is given)."""
        self.guard = BounceGuard(campaign.guardrails)
        self._resume_paused = resume_paused
        self._on_paused = on_paused
        """Called with (campaign id, reason) when the guardrail pauses the campaign."""
        self.paused_reason: str | None = None
        """Why the campaign is paused (by its guardrail, now or in an earlier run), if it is."""
        self._retry = RetryPolicy(
            max_attempts=campaign.sending.max_attempts, max_elapsed_s=campaign.sending.max_retry_s
        )
        self._on_outcome = on_outcome
        self._after_sending = after_sending
        self.sending_over = anyio.Event()
        """Set once this run sends nothing more (and ``after_sending`` has returned)."""
        self._spec_extra = dict(spec_extra or {})
        self._stopping = False
        self.account_refused: AccountRefusedError | None = None
        """Set when TEM refused the account (401/403): the run stopped sending and raises it."""
        self._keep_tracking = False
        self._root_scope: anyio.CancelScope | None = None
        self._intake_scope = anyio.CancelScope()
        self._reconcile_all_scope = anyio.CancelScope()
        self._reconciling: set[int] = set()
        self._engine: SendEngine | None = None
        self._dispatch_done = False
        self._sent_since: datetime | None = None
        """Set by :meth:`reconcile_all`: when the campaign's first send may have happened."""

    @property
    def context(self) -> SendContext:
        """What the run sends with: its store, TEM client, limiter, counters and retry policy."""
        return SendContext(self.store, self.tem, self.limiter, self.stats, self._retry)

    @property
    def skew_s(self) -> float:
        """Clock skew allowed between this machine and TEM in lookups."""
        return self._skew_s

    async def item_from_row(self, row: RecipientRow) -> SendItem | None:
        """The email of a stored row, rendered again (None when it no longer renders)."""
        return await self._item_from_row(row)

    # -- control -----------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping

    def request_stop(self, *, keep_tracking: bool = False) -> None:
        """Graceful stop: no new recipients; in-flight requests finish within ``grace_s``.

        With ``keep_tracking`` (pause, cancel), the run then goes on tracking what was submitted
        until it is final, without the grace deadline.
        """
        if self._stopping:
            return
        self._stopping = True
        self._keep_tracking = keep_tracking
        self._intake_scope.cancel()
        self._reconcile_all_scope.cancel()
        if self._root_scope is not None and not keep_tracking:
            self._root_scope.deadline = min(self._root_scope.deadline, anyio.current_time() + self.grace_s)
        log.info("campaign.stopping", campaign=self.campaign.id, grace_s=self.grace_s)

    def abort(self) -> None:
        """Immediate stop. Recorded state stays consistent; the next run reconciles."""
        self._stopping = True
        self._intake_scope.cancel()
        self._reconcile_all_scope.cancel()
        if self._root_scope is not None:
            self._root_scope.cancel()

    def waiting_for(self) -> Waiting | None:
        """What the run waits for while it sends nothing, or None while it sends (or reads).

        Read by the progress display, so that a run that sits with nothing in flight says why.
        """
        s = self.stats
        if self._stopping and s.in_flight:
            return Waiting("stopping", s.in_flight)
        reconciler = self._engine.reconciler if self._engine is not None else None
        if self._dispatch_done and reconciler is not None and reconciler.pending > 0:
            due = reconciler.next_lookup_at
            in_s = None if due is None else max(0.0, (due - utcnow()).total_seconds())
            return Waiting("lookup", reconciler.pending, in_s)
        outstanding = s.submitted - s.final
        if self.sending_over.is_set() and outstanding > 0:
            return Waiting("final", outstanding)
        return None

    # -- run ---------------------------------------------------------------------------------
    async def run(self) -> RunResult:
        """Run the campaign; every log line of the run (its tasks included) carries its id."""
        with structlog.contextvars.bound_contextvars(campaign=self.campaign.id):
            return await self._run()

    async def _run(self) -> RunResult:
        c = self.campaign
        self._check_state()
        record = await self._open_campaign()
        if record.state is CampaignState.FINISHED:
            counts = await self.store.counts(c.id)
            lines = 0
            if not c.output.outcomes.exists():
                lines = await write_outcomes(c.output.outcomes, outcome_lines(self.store, c.id))
            return RunResult(
                c.id,
                complete=True,
                stopped=False,
                already_finished=True,
                counts=counts,
                stats=self.stats,
                outcomes_path=c.output.outcomes,
                outcome_lines=lines,
                admitted_all=True,
            )
        if record.state is CampaignState.PAUSED:
            record = await self._unpause(record)
        await self._baseline()
        log.info(
            "campaign.start",
            campaign=c.id,
            rate_per_s=c.sending.rate_per_s,
            concurrency=c.sending.concurrency,
        )
        # Emails of this campaign were all created after the campaign record; the margin covers
        # clock skew between this machine and TEM.
        since = min(record.created_at, self._sent_since or record.created_at) - timedelta(minutes=1)
        tracker = campaign_tracker(
            c,
            self.context,
            since=since,
            on_outcome=self._on_outcome,
            on_refused=self._refused,
            on_finals=self._on_finals,
        )
        sending_done = anyio.Event()
        if self._events is not None:
            self._events.register(c.id, tracker)
        with anyio.CancelScope() as root:
            self._root_scope = root
            if self._stopping:
                root.cancel()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._track, tracker, sending_done)
                if record.state is CampaignState.RUNNING:
                    await self._send_all(record, tracker)
                # A paused or canceled campaign sends nothing more; its run only tracks what
                # was already submitted (and, through the hook, settles a cancel first).
                if self._after_sending is not None:
                    await self._after_sending(self)
                # No checkpoint between the hook's return and this: whoever looks at
                # `sending_over` knows whether the hook can still see what it set.
                self.sending_over.set()
                sending_done.set()
        self._root_scope = None
        if self._events is not None:
            self._events.unregister(c.id, tracker)
        result = await self._finish(hard_stopped=root.cancelled_caught)
        if self.account_refused is not None:
            raise self.account_refused
        return result

    # -- suppression and guardrails ---------------------------------------------------------------
    async def _unpause(self, record: CampaignRecord) -> CampaignRecord:
        """A paused campaign sends again only when asked (``--resume-paused``); else it only tracks."""
        if not self._resume_paused:
            self.paused_reason = record.state_reason
            return record
        await self.store.set_campaign_state(record.id, CampaignState.RUNNING)
        log.info("campaign.resumed", campaign=record.id, was=record.state_reason or "paused")
        return dataclasses.replace(record, state=CampaignState.RUNNING, state_reason="")

    async def _on_finals(self, campaign_id: str, finals: Sequence[tuple[FinalUpdate, str]]) -> None:
        """Final emails: suppress hard bounces and complaints; pause on a bounce storm."""
        await self._screen.learn(finals, f"campaign {campaign_id}")
        reason = self.guard.observe(update.flags for update, _ in finals)
        if reason is not None and not self._stopping:
            await self.pause_for(reason)

    async def pause_for(self, reason: str) -> None:
        """Pause the campaign for ``reason``: recorded in the store, sending stops, tracking goes on."""
        c = self.campaign
        record = await self.store.get_campaign(c.id)
        if record is None or record.state is not CampaignState.RUNNING:
            return  # paused, canceled or finished meanwhile: that stands
        await self.store.set_campaign_state(c.id, CampaignState.PAUSED, reason=reason)
        self.paused_reason = reason
        log.warning(
            "campaign.paused_by_guardrail",
            campaign=c.id,
            reason=reason,
            hint="check the recipient list; resume with `bulksend send --resume-paused` or the admin API",
        )
        self.request_stop(keep_tracking=True)
        if self._on_paused is not None:
            self._on_paused(c.id, reason)

    # -- lost state ----------------------------------------------------------------------------
    def _check_state(self) -> None:
        """Refuse to send from a state that lost sends its journal recorded: the recipients whose
        `sending` marks were lost would be emailed again."""
        loss = self.store.state_loss(self.campaign.id) if isinstance(self.store, JournalledStore) else None
        if loss is None:
            return
        raise StateLostError(
            f"campaign {self.campaign.id!r}: {loss.what}. Some recipients TEM already has may look "
            "unsent, so nothing was sent. Run the same command with --reconcile-all "
            f"(bulksend send {self.campaign.path} --reconcile-all): it looks every unfinished "
            "recipient up at TEM first and then sends only to those TEM does not have."
        )

    async def reconcile_all(self) -> CampaignReconcile:
        """Before sending: admit the whole recipient file, look every unfinished row up at TEM in
        batched lists, adopt the emails TEM already has, then take that as the journal's baseline.

        For a state store that lost sends (``bulksend send … --reconcile-all``); see
        docs/delivery-guarantees.md. Sends nothing. A TEM error propagates and accepts nothing; a
        stop (:meth:`request_stop`, :meth:`abort`) ends it at once, ``interrupted``, accepting nothing.
        """
        report = CampaignReconcile(interrupted=True)
        with self._reconcile_all_scope, structlog.contextvars.bound_contextvars(campaign=self.campaign.id):
            c = self.campaign
            record = await self._open_campaign()
            if not record.admitted_all:
                # Every row must exist before the lists are matched: one admitted later would be sent.
                start = await self.store.max_admitted_row(c.id)
                reader = iter_recipients(c.recipients, start_after_row=start)
                while await self._admit_batch(reader, None):
                    pass
                await self.store.mark_admitted_all(c.id)
            journal = self.store if isinstance(self.store, JournalledStore) else None
            sends = journal.send_record(c.id) if journal is not None else None
            since = record.created_at if sends is None else min(record.created_at, sends.first_at)
            # No send the journal recorded can still reach TEM once its client timeout is over.
            not_before = None
            if sends is not None:
                not_before = sends.last_at + timedelta(seconds=c.sending.timeout_s + c.tracking.settle_s)
            self._sent_since = since

            async def subject_of(row: RecipientRow) -> str | None:
                item = await self._item_from_row(row)
                return None if item is None else item.subject

            async def on_final(email: Email, row_id: int) -> None:
                with anyio.CancelScope(shield=True):
                    await self.store.mark_final([final_update(row_id, email)])
                if self._on_outcome is not None:
                    await self._on_outcome(c.id, [(row_id, email.status.value)])

            report = await reconcile_campaign(
                self.context,
                campaign_id=c.id,
                mail_from=c.from_.email,
                since=since - timedelta(minutes=1),
                subject_of=subject_of,
                on_final=on_final,
                timeout_s=c.sending.timeout_s,
                settle_s=c.tracking.settle_s,
                skew_s=self._skew_s,
                not_before=not_before,
            )
            if journal is not None:
                await journal.accept_state(c.id)
        return report

    async def _baseline(self) -> None:
        """Start the counters from what earlier runs already did (progress of a resumed run)."""
        counts = await self.store.counts(self.campaign.id)
        s = self.stats
        s.rejected = counts.get(RowState.REJECTED.value, 0)
        s.skipped = counts.get(RowState.SKIPPED.value, 0)
        s.final = counts.get(RowState.FINAL.value, 0)
        s.submitted = s.final + counts.get(RowState.SUBMITTED.value, 0)
        s.admitted = (
            s.submitted + counts.get(RowState.PENDING.value, 0) + counts.get(RowState.SENDING.value, 0)
        )
        for key, n in counts.items():
            if key.startswith("status:"):
                s.final_by_status[key.removeprefix("status:")] = n

    async def _track(self, tracker: Tracker, sending_done: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            if self.worker_id is None:
                tg.start_soon(tracker.run, sending_done)
            else:
                tg.start_soon(self._track_shared, tracker, sending_done)
            await sending_done.wait()
            if self._stopping and not self._keep_tracking:
                # A stopped run does not wait for TEM to finish delivering: the next run tracks.
                tg.cancel_scope.cancel()

    async def _track_shared(self, tracker: Tracker, sending_done: anyio.Event) -> None:
        """Scale-out tracking: one worker at a time holds the campaign's "track" role and polls;
        the others stand by and take over within the role's TTL if it dies."""
        c = self.campaign
        assert self.worker_id is not None
        ttl_s = max(self.lease_s, 5 * c.tracking.poll_interval_s)
        try:
            while True:
                if await self.store.acquire_role(c.id, "track", worker_id=self.worker_id, ttl_s=ttl_s):
                    await tracker.step()
                if sending_done.is_set() and await self._open_rows() == 0:
                    return
                await anyio.sleep(c.tracking.poll_interval_s)
        finally:
            with anyio.CancelScope(shield=True):
                await self.store.release_role(c.id, "track", worker_id=self.worker_id)

    async def _open_rows(self) -> int:
        counts = await self.store.counts(self.campaign.id)
        return sum(counts.get(s.value, 0) for s in (RowState.PENDING, RowState.SENDING, RowState.SUBMITTED))

    async def _send_all(self, record: CampaignRecord, tracker: Tracker) -> None:
        c = self.campaign
        send, receive = anyio.create_memory_object_stream[SendItem](max_buffer_size=self.prefetch)
        engine = SendEngine(
            context=self.context,
            sink=TrackerSink(tracker, self._on_outcome),
            settings=EngineSettings(
                settle_s=c.tracking.settle_s,
                timeout_s=c.sending.timeout_s,
                skew_s=self._skew_s,
                mail_from=c.from_.email,
            ),
            should_stop=lambda: self._stopping,
            on_done=self._held.discard,
            on_refused=self._refused,
        )
        self._engine = engine
        # The queue is closed however this ends: a run stopped before its tasks start never
        # reaches their own `async with` (the tasks close their ends as they finish).
        async with send, receive, engine.running():
            if self.worker_id is None:
                # Rows a previous run left `sending` may have reached TEM: reconcile, never resend.
                async for row in self.store.iter_rows(c.id, states=[RowState.SENDING]):
                    item = await self._item_from_row(row)
                    if item is not None and row.attempt_started_at is not None:
                        self._reconciling.add(row.id)
                        await engine.reconcile(item, row.attempt_started_at, row.attempt_ended_at)
            async with anyio.create_task_group() as renew_tg:
                if self.worker_id is not None:
                    renew_tg.start_soon(self._renew_leases)
                async with anyio.create_task_group() as dispatch_tg:
                    if self.worker_id is None:
                        dispatch_tg.start_soon(self._intake, send, record)
                    else:
                        dispatch_tg.start_soon(self._intake_claiming, send, record, engine)
                    # Twice as many tasks as HTTP slots (the connection pool holds the HTTP
                    # concurrency): while some wait for their `sending`/`submitted` commits,
                    # others keep every connection busy.
                    for _ in range(2 * c.sending.concurrency):
                        dispatch_tg.start_soon(engine.work, receive.clone())
                    receive.close()
                # Nothing is left to send: only lookups of ambiguous sends may still be pending.
                self._dispatch_done = True
                renew_tg.cancel_scope.cancel()
            if self.worker_id is not None and self._held:
                # Give back what this worker still holds (stopped early): others take it at once.
                with anyio.CancelScope(shield=True):
                    await self.store.release(worker_id=self.worker_id, row_ids=sorted(self._held))

    def _refused(self, exc: AccountRefusedError) -> None:
        """TEM refused the account: stop sending, but let the requests already out come back and
        be recorded (they are refused too: their rows go back to `pending`, none stays `sending`).
        The run then ends and raises ``exc``."""
        if self.account_refused is None:
            self.account_refused = exc
        self.request_stop()

    # -- scale-out intake --------------------------------------------------------------------
    async def _intake_claiming(
        self, send: MemoryObjectSendStream[SendItem], record: CampaignRecord, engine: SendEngine
    ) -> None:
        """Scale-out intake: admit the file if this worker holds the "admit" role, and send the
        rows this worker claims (leases with fencing tokens). Rows a dead worker held become
        claimable when its leases expire: `pending` ones are sent, `sending` ones reconciled.
        Runs until nothing of the campaign is left to send, by anyone."""
        c = self.campaign
        assert self.worker_id is not None
        worker = self.worker_id
        admitted_all = record.admitted_all
        reader: Iterator[RecipientInput | BadRow] | None = None
        async with send:
            with self._intake_scope:
                while True:
                    if await self._paused_elsewhere():
                        return
                    if not admitted_all:
                        if await self.store.acquire_role(c.id, "admit", worker_id=worker, ttl_s=self.lease_s):
                            if reader is None:
                                start = await self.store.max_admitted_row(c.id)
                                reader = iter_recipients(c.recipients, start_after_row=start)
                            if not await self._admit_batch(reader, None):
                                await self.store.mark_admitted_all(c.id)
                                await self.store.release_role(c.id, "admit", worker_id=worker)
                                admitted_all = True
                        else:
                            reader = None  # another worker admits; re-read from its progress if we take over
                            fresh = await self.store.get_campaign(c.id)
                            admitted_all = bool(fresh and fresh.admitted_all)
                    stale = await self.store.claim(
                        c.id,
                        worker_id=worker,
                        limit=self.claim_batch,
                        lease_s=self.lease_s,
                        states=(RowState.SENDING,),
                    )
                    for row in stale:
                        item = await self._item_from_row(row)
                        if item is not None:
                            self._held.add(row.id)
                            started = row.attempt_started_at or utcnow()
                            await engine.reconcile(item, started, row.attempt_ended_at)
                    claimed = await self.store.claim(
                        c.id, worker_id=worker, limit=self.claim_batch, lease_s=self.lease_s
                    )
                    for row in await self._unsuppressed(claimed):
                        item = await self._item_from_row(row)
                        if item is not None:
                            self._held.add(row.id)
                            await send.send(item)
                    if claimed or stale:
                        continue
                    if admitted_all:
                        counts = await self.store.counts(c.id)
                        if counts.get(RowState.PENDING.value, 0) + counts.get(RowState.SENDING.value, 0) == 0:
                            return
                    # Rows may still be leased by others (or a dead worker): look again shortly.
                    await anyio.sleep(self.claim_idle_s)

    async def _paused_elsewhere(self) -> bool:
        """Whether another worker's guardrail (or the daemon) paused the campaign: then this
        worker stops sending too, and only tracks (one read per claim batch)."""
        record = await self.store.get_campaign(self.campaign.id)
        if record is None or record.state is not CampaignState.PAUSED:
            return False
        self.paused_reason = record.state_reason
        self.request_stop(keep_tracking=True)
        return True

    async def _renew_leases(self) -> None:
        """Keep this worker's leases alive while its rows wait, are in flight or are reconciled."""
        assert self.worker_id is not None
        while True:
            await anyio.sleep(self.lease_s / 3)
            if self._held:
                held = sorted(self._held)
                kept = await self.store.renew(worker_id=self.worker_id, row_ids=held, lease_s=self.lease_s)
                # Not kept: finished (a terminal state clears the lease) or taken over by another
                # worker, whose fencing token now makes our writes for that row fail harmlessly.
                self._held.difference_update(set(held) - kept)

    # -- intake ------------------------------------------------------------------------------
    async def _intake(self, send: MemoryObjectSendStream[SendItem], record: CampaignRecord) -> None:
        c = self.campaign
        async with send:
            with self._intake_scope:
                # Resume first: rows admitted by an earlier run but never sent. Reading by id means
                # a row this run re-queues (a retry) is never picked up twice.
                batch: list[RecipientRow] = []
                async for row in self.store.iter_rows(c.id, states=[RowState.PENDING]):
                    if row.id not in self._reconciling:
                        batch.append(row)
                    if len(batch) == ADMIT_BATCH:
                        await self._send_held(send, batch)
                        batch = []
                await self._send_held(send, batch)
                if not record.admitted_all:
                    start = await self.store.max_admitted_row(c.id)
                    await self._admit_file(send, start)
                    await self.store.mark_admitted_all(c.id)

    async def _send_held(self, send: MemoryObjectSendStream[SendItem], rows: list[RecipientRow]) -> None:
        """Queue rows an earlier run admitted, but for those suppressed since."""
        for row in await self._unsuppressed(rows):
            item = await self._item_from_row(row)
            if item is not None:
                await send.send(item)

    async def _unsuppressed(self, rows: list[RecipientRow]) -> list[RecipientRow]:
        """``rows`` (pending, admitted earlier) less those suppressed since: those are skipped."""
        if not rows:
            return rows
        hits = await self._screen.held(rows)
        if not hits:
            return rows
        skipped: list[tuple[int, str]] = []
        with anyio.CancelScope(shield=True):
            for row in rows:
                entry = hits.get(row.id)
                if entry is not None:
                    token = row.lease_token if self.worker_id is not None else None
                    await self.store.mark_skipped(row.id, reason=entry.describe(), lease_token=token)
                    skipped.append((row.id, "skipped"))
        self.stats.skipped += len(skipped)
        self.stats.admitted -= len(skipped)
        if self._on_outcome is not None:
            await self._on_outcome(self.campaign.id, skipped)
        return [row for row in rows if row.id not in hits]

    async def _admit_file(self, send: MemoryObjectSendStream[SendItem], start_after_row: int) -> None:
        reader = iter_recipients(self.campaign.recipients, start_after_row=start_after_row)
        while await self._admit_batch(reader, send):
            pass

    async def _admit_batch(
        self, reader: Iterator[RecipientInput | BadRow], send: MemoryObjectSendStream[SendItem] | None
    ) -> bool:
        """Admit the next batch of the source (one commit); False once the source is exhausted.

        With ``send``, the new pending rows go straight to dispatch; without (scale-out), they
        wait in the store for whichever worker claims them.
        """
        c = self.campaign
        chunk = await anyio.to_thread.run_sync(read_batch, reader, ADMIT_BATCH)
        if not chunk:
            return False
        rows: list[NewRecipient] = []
        rendered: dict[int, RenderedEmail] = {}
        pacer = RenderPacer()
        for rec in chunk:
            new, email = self._prepare(rec)
            rows.append(new)
            if email is not None:
                rendered[new.row] = email
            if pacer.due():
                # Slow templates: let signals and sends run between renders (nothing of this
                # batch is stored yet, so a stop here loses nothing).
                await anyio.lowlevel.checkpoint()
        # One lookup for the batch: a suppressed recipient is admitted `skipped`, with why.
        rows = await self._screen.admission(rows)
        # Durable before anything is sent: a crash from here on loses no accepted recipient.
        with anyio.CancelScope(shield=True):
            results = await self.store.admit(c.id, rows)
        by_row = {r.row: r for r in rows}
        terminal: list[tuple[int, str]] = []
        for res in results:
            if res.state is RowState.PENDING:
                self.stats.admitted += 1
                email = rendered.get(res.row)
                if email is not None and send is not None:
                    new = by_row[res.row]
                    item = SendItem(
                        res.id,
                        res.row,
                        new.email,
                        email.subject,
                        email.body,
                        correlation_of(c.id, res.row),
                        c.id,
                        c.from_.email,
                    )
                    # Without a checkpoint while the queue has room (``send`` yields first, once
                    # per email); wait for room only when dispatch is behind.
                    try:
                        send.send_nowait(item)
                    except anyio.WouldBlock:
                        await send.send(item)
            elif res.state is RowState.REJECTED:
                self.stats.rejected += 1
                terminal.append((res.id, "rejected"))
            elif res.state is RowState.SKIPPED:
                self.stats.skipped += 1
                terminal.append((res.id, "skipped"))
        if terminal and self._on_outcome is not None:
            await self._on_outcome(c.id, terminal)
        return True

    def _prepare(self, rec: RecipientInput | BadRow) -> tuple[NewRecipient, RenderedEmail | None]:
        if isinstance(rec, BadRow):
            return NewRecipient(rec.row, rec.email, rec.name, None, RowState.REJECTED, rec.reason), None
        attachments = attachments_of(rec.vars)
        result = self._renderer.render(
            rec.email,
            rec.name,
            rec.vars,
            correlation=correlation_of(self.campaign.id, rec.row),
            attachments=attachments,
        )
        if isinstance(result, Rejection):
            return NewRecipient(rec.row, rec.email, rec.name, None, RowState.REJECTED, result.reason), None
        payload: dict[str, Any] = {"vars": rec.vars}
        return (
            NewRecipient(
                rec.row, rec.email, rec.name, normalize_address(rec.email), RowState.PENDING, payload=payload
            ),
            result,
        )

    async def _item_from_row(self, row: RecipientRow) -> SendItem | None:
        """Render a stored row again (resume). A row that no longer renders is rejected."""
        variables = dict(row.payload.get("vars") or {})
        correlation = row.correlation or correlation_of(self.campaign.id, row.row)
        result = self._renderer.render(
            row.email, row.name, variables, correlation=correlation, attachments=attachments_of(variables)
        )
        if isinstance(result, Rejection):
            if row.state is RowState.PENDING:
                with anyio.CancelScope(shield=True):
                    await self.store.mark_rejected(row.id, reason=result.reason)
                return None
            # A `sending` row must still be reconciled: build a lookup-only item.
            return None
        return SendItem(
            row.id,
            row.row,
            row.email,
            result.subject,
            result.body,
            correlation,
            row.campaign_id,
            self.campaign.from_.email,
            row.lease_token if self.worker_id is not None else None,
        )

    # -- end ---------------------------------------------------------------------------------
    async def _open_campaign(self) -> CampaignRecord:
        c = self.campaign
        spec = {
            "fingerprint": c.fingerprint,
            "path": str(c.path),
            "recipients": str(c.recipients),
            "outcomes": str(c.output.outcomes),
            **self._spec_extra,
        }
        record = await self.store.get_campaign(c.id)
        if record is None:
            return await self.store.create_campaign(c.id, spec)
        if record.spec.get("fingerprint") not in (None, c.fingerprint, c.legacy_fingerprint or None):
            raise CampaignError(
                f"campaign {c.id!r} already ran from different content (template, sender, attachments "
                f"or recipients changed) in the {describe_store(self.store)}. Resuming would mix two "
                "versions: give the campaign a new `id`, or restore the original files to resume it.",
                path=str(c.path),
            )
        return record

    async def _finish(self, *, hard_stopped: bool) -> RunResult:
        c = self.campaign
        counts = await self.store.counts(c.id)
        record = await self.store.get_campaign(c.id)
        open_rows = sum(
            counts.get(s.value, 0) for s in (RowState.PENDING, RowState.SENDING, RowState.SUBMITTED)
        )
        canceled = record is not None and record.state is CampaignState.CANCELED
        complete = (bool(record and record.admitted_all) or canceled) and open_rows == 0 and not hard_stopped
        result = RunResult(
            c.id,
            complete=complete,
            stopped=self._stopping or hard_stopped,
            already_finished=False,
            counts=counts,
            stats=self.stats,
            admitted_all=bool(record and record.admitted_all),
        )
        if complete and record is not None and record.state is CampaignState.RUNNING:
            await self.store.set_campaign_state(c.id, CampaignState.FINISHED)
        if not hard_stopped:
            with anyio.CancelScope(shield=True):
                summary = Summary(f"campaign {c.id}")
                result.outcome_lines = await write_outcomes(
                    c.output.outcomes,
                    outcome_lines(self.store, c.id),
                    observe=lambda line: tally_line(summary, line),
                )
                result.summary = summary
            result.outcomes_path = c.output.outcomes
        if record is not None and record.state is CampaignState.PAUSED:
            result.paused = True
            result.notes.append(
                f"campaign paused: {self.paused_reason}." if self.paused_reason else "campaign paused."
            )
        log.info("campaign.end", campaign=c.id, complete=complete, **counts)
        return result


def attachments_of(variables: dict[str, Any]) -> tuple[str, ...]:
    """The per-recipient attachment paths carried in a row's ``attachments`` variable."""
    raw = variables.get("attachments")
    return split_attachments(raw) if isinstance(raw, str) else ()
