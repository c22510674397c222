"""The send engine: dispatch, retries, reconciliation and the resends it decides, written once.

Both a campaign run (:class:`~bulksend.pipeline.run.CampaignRun`, in ``bulksend send`` and in
the daemon) and the daemon's job streams send through a :class:`SendEngine`::

    feeders (intake, resume) ──► stream of a lane ──► work() tasks ──► Dispatcher ──► TEM
                                                                          │ ambiguous
      reconcile() (rows a previous run left ``sending``) ──► Reconciler ◄─┘
                                                              │ TEM has not got it
                                                              ▼
                                                           resend() ──► the item's lane again

A **lane** is a stream of sends with its own limiter: the account's limiter, or a ceiling nested
inside it (:mod:`bulksend.pipeline.nested`); ``SendItem.lane`` names it, and an unknown or empty
name is the engine's default lane. What happens to the rows goes to one :class:`OutcomeSink`.

The engine keeps the pipeline's guarantees: every outcome write is shielded (in the dispatcher
and the reconciler), a row is acknowledged to its source by the caller only once it is durable,
and once ``should_stop`` says so nothing new is sent (rows stay ``pending``, durable, for the next
run).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from bulksend.campaign.model import Campaign
from bulksend.pipeline.context import SendContext
from bulksend.pipeline.dispatch import AccountRefusedError, Dispatcher, OutcomeSink, SendItem
from bulksend.pipeline.limiter import RateLimiter
from bulksend.pipeline.reconcile import Reconciler, ReconcileSettings
from bulksend.pipeline.stats import OutcomeHook
from bulksend.pipeline.tracker import FinalsHook, Tracker, TrackerSettings
from bulksend.tem.models import Email

__all__ = ["EngineSettings", "OutcomeSink", "SendEngine", "TrackerSink", "campaign_tracker"]


EngineSettings = ReconcileSettings
"""The engine's settings: how it reconciles ambiguous sends."""


class TrackerSink:
    """An :class:`OutcomeSink` for one campaign: its tracker, and an optional outcome hook."""

    def __init__(self, tracker: Tracker, on_outcome: OutcomeHook | None = None) -> None:
        self._tracker = tracker
        self._on_outcome = on_outcome

    def on_submitted(self, item: SendItem, email_id: str) -> None:
        self._tracker.expect(email_id, item.row_id)

    async def on_found(self, email: Email, row_id: int) -> None:
        await self._tracker.record_known(email, row_id)

    async def on_outcome(self, campaign_id: str, rows: Sequence[tuple[int, str]]) -> None:
        if self._on_outcome is not None:
            await self._on_outcome(campaign_id, rows)


def campaign_tracker(
    campaign: Campaign,
    context: SendContext,
    *,
    since: datetime,
    on_outcome: OutcomeHook | None,
    on_refused: Callable[[AccountRefusedError], object] | None = None,
    on_finals: FinalsHook | None = None,
) -> Tracker:
    """The tracker of a campaign's submitted emails, with the campaign's ``[tracking]`` settings."""
    t = campaign.tracking
    return Tracker(
        context,
        campaign_id=campaign.id,
        settings=TrackerSettings(
            poll_interval_s=t.poll_interval_s,
            give_up_after_s=t.give_up_after_s,
            page_size=t.page_size,
            mode=t.mode,
            fallback_after_s=t.fallback_after_s,
        ),
        since=since,
        mail_from=campaign.from_.email,
        on_outcome=on_outcome,
        on_refused=on_refused,
        on_finals=on_finals,
    )


@dataclass(kw_only=True, eq=False)
class SendEngine:
    """Sends items through their lane's limiter, reconciles ambiguous attempts, resends what TEM
    does not have. Use :meth:`running` around everything that feeds it.

    ``context`` is what every stage works with; its limiter is the default lane's.
    """

    context: SendContext
    sink: OutcomeSink
    settings: EngineSettings
    should_stop: Callable[[], bool]
    """Once true, nothing new is sent (items stay ``pending``)."""
    on_done: Callable[[int], object] | None = None
    """Called with each item the engine is done with (sent, deferred or refused), so the caller
    can forget what it holds for it (a lease, a "queued" mark)."""
    on_refused: Callable[[AccountRefusedError], object] | None = None
    """Called when TEM refuses the account (401/403): the caller stops sending (through
    ``should_stop``); the requests already out come back refused too, and their rows go back to
    ``pending``. Without it, the error propagates."""
    drain_queue: Callable[[], bool] | None = None
    """Once sending stopped, whether the dispatch tasks still take queued items (without sending
    them) so that feeders never block: a daemon that stays up after TEM refused its key."""
    log_items: bool = False
    """Bind ``campaign`` and ``row`` to every log line of a send (job streams, whose items belong
    to different campaigns)."""
    _default: Dispatcher = field(init=False, repr=False)
    _lanes: dict[str, Dispatcher] = field(default_factory=dict, init=False, repr=False)
    _reconciler: Reconciler | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._default = self._dispatcher(self.context.limiter)

    @property
    def reconciler(self) -> Reconciler | None:
        """The reconciliations under way, while :meth:`running` (None outside it)."""
        return self._reconciler

    def add_lane(self, name: str, limiter: RateLimiter) -> None:
        """Send the items whose ``lane`` is ``name`` through ``limiter`` (a ceiling nested in the
        account's limiter, typically)."""
        self._lanes[name] = self._dispatcher(limiter)

    def _dispatcher(self, limiter: RateLimiter) -> Dispatcher:
        return Dispatcher(
            replace(self.context, limiter=limiter),
            on_ambiguous=self.reconcile,
            sink=self.sink,
            should_stop=self.should_stop,
        )

    @asynccontextmanager
    async def running(self, *, drain: bool | Callable[[int], bool] = True) -> AsyncIterator[SendEngine]:
        """Host the reconciliations while the body feeds the engine.

        ``drain``: on leaving, wait for the reconciliations still pending (a run that ends when
        its rows are done); otherwise cancel them, leaving their rows ``sending`` for the next
        start to reconcile (the daemon, once its feeders stopped: no need to sit out their settle
        time). A callable is asked on leaving, with the number of reconciliations under way (a
        graceful stop lets them finish within its grace).
        """
        try:
            async with anyio.create_task_group() as tg:
                # Outlives the body while draining: a resend may be ambiguous again.
                self._reconciler = Reconciler(
                    self.context,
                    self.settings,
                    task_group=tg,
                    resend=self.resend,
                    on_final=self.sink.on_found,
                )
                yield self
                keep = drain(self._reconciler.pending) if callable(drain) else drain
                if not keep:
                    tg.cancel_scope.cancel()
        finally:
            self._reconciler = None

    async def reconcile(self, item: SendItem, started_at: datetime, ended_at: datetime | None) -> None:
        """Look the item's ``sending`` row up at TEM (after its settle time); resend it if absent."""
        if self._reconciler is None:
            raise RuntimeError("SendEngine.reconcile outside SendEngine.running()")
        await self._reconciler.submit(item, started_at, ended_at)

    async def send(self, item: SendItem) -> bool:
        """Send one item through its lane. False when it was left ``pending`` (or not ours)."""
        dispatcher = self._lanes.get(item.lane, self._default) if item.lane else self._default
        try:
            if self.log_items:
                # Every log line about this job says which job stream and row it concerns.
                with structlog.contextvars.bound_contextvars(campaign=item.campaign_id, row=item.row):
                    return await dispatcher.send(item)
            return await dispatcher.send(item)
        except AccountRefusedError as exc:
            if self.on_refused is None:
                raise
            self.on_refused(exc)
            return False
        finally:
            if self.on_done is not None:
                self.on_done(item.row_id)

    async def resend(self, item: SendItem) -> bool:
        """Send again an item reconciliation proved TEM never created: the one path of every
        resend after an ambiguous answer."""
        if self.should_stop():
            return False  # the row is `pending`: the next run sends it
        return await self.send(item)

    async def work(self, receive: MemoryObjectReceiveStream[SendItem]) -> None:
        """One dispatch task: send the items of ``receive`` until it ends or the engine stops."""
        async with receive:
            while True:
                # Take a queued item without a checkpoint (``receive`` yields to the loop first,
                # once per email for nothing); wait only when the queue is empty. Every send
                # suspends anyway, so no task can starve the others.
                try:
                    try:
                        item = receive.receive_nowait()
                    except anyio.WouldBlock:
                        item = await receive.receive()
                except anyio.EndOfStream:
                    return
                if self.should_stop():
                    # The item's row stays `pending`: durable, and resumed by the next run.
                    if self.on_done is not None:
                        self.on_done(item.row_id)
                    if self.drain_queue is not None and self.drain_queue():
                        continue
                    return
                await self.send(item)
