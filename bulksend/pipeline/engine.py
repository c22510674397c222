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

import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from bulksend.campaign.model import Campaign
from bulksend.pipeline.context import SendContext
from bulksend.pipeline.dispatch import AccountRefusedError, Dispatcher, OutcomeSink, SendItem
from bulksend.pipeline.limiter import RateLimiter
from bulksend.pipeline.reconcile import Reconciler, ReconcileSettings
from bulksend.pipeline.retry import RetryPolicy
from bulksend.pipeline.stats import OutcomeHook, RunStats
from bulksend.pipeline.tracker import Tracker, TrackerSettings
from bulksend.store.base import Store
from bulksend.tem.client import TemClient
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
    *,
    store: Store,
    tem: TemClient,
    limiter: RateLimiter,
    stats: RunStats,
    retry: RetryPolicy,
    since: datetime,
    on_outcome: OutcomeHook | None,
) -> Tracker:
    """The tracker of a campaign's submitted emails, with the campaign's ``[tracking]`` settings."""
    t = campaign.tracking
    return Tracker(
        SendContext(store, tem, limiter, stats, retry),
        campaign_id=campaign.id,
        settings=TrackerSettings(
            poll_interval_s=t.poll_interval_s, give_up_after_s=t.give_up_after_s, page_size=t.page_size
        ),
        since=since,
        mail_from=campaign.from_.email,
        on_outcome=on_outcome,
    )


class SendEngine:
    """Sends items through their lane's limiter, reconciles ambiguous attempts, resends what TEM
    does not have. Use :meth:`running` around everything that feeds it.

    :param limiter: the default lane's limiter.
    :param should_stop: once true, nothing new is sent (items stay ``pending``).
    :param on_done: called with each item the engine is done with (sent, deferred or refused),
        so the caller can forget what it holds for it (a lease, a "queued" mark).
    :param on_refused: called when TEM refuses the account (401/403): the caller stops sending
        (through ``should_stop``); the requests already out come back refused too, and their rows
        go back to ``pending``. Without it, the error propagates.
    :param drain_queue: once sending stopped, whether the dispatch tasks still take queued items
        (without sending them) so that feeders never block: a daemon that stays up after TEM
        refused its key.
    :param log_items: bind ``campaign`` and ``row`` to every log line of a send (job streams,
        whose items belong to different campaigns).
    """

    def __init__(
        self,
        *,
        store: Store,
        tem: TemClient,
        limiter: RateLimiter,
        stats: RunStats,
        retry: RetryPolicy,
        sink: OutcomeSink,
        settings: EngineSettings,
        should_stop: Callable[[], bool],
        on_done: Callable[[int], object] | None = None,
        on_refused: Callable[[AccountRefusedError], object] | None = None,
        drain_queue: Callable[[], bool] | None = None,
        log_items: bool = False,
    ) -> None:
        self._ctx = SendContext(store, tem, limiter, stats, retry)
        self._sink = sink
        self._settings = settings
        self._should_stop = should_stop
        self._on_done = on_done
        self._on_refused = on_refused
        self._drain_queue = drain_queue
        self._log_items = log_items
        self._default = self._dispatcher(limiter)
        self._lanes: dict[str, Dispatcher] = {}
        self._reconciler: Reconciler | None = None

    def add_lane(self, name: str, limiter: RateLimiter) -> None:
        """Send the items whose ``lane`` is ``name`` through ``limiter`` (a ceiling nested in the
        account's limiter, typically)."""
        self._lanes[name] = self._dispatcher(limiter)

    def _dispatcher(self, limiter: RateLimiter) -> Dispatcher:
        return Dispatcher(
            dataclasses.replace(self._ctx, limiter=limiter),
            self._sink,
            on_ambiguous=self.reconcile,
            should_stop=self._should_stop,
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
                    self._ctx,
                    self._settings,
                    task_group=tg,
                    resend=self.resend,
                    on_final=self._sink.on_found,
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
            if self._log_items:
                # Every log line about this job says which job stream and row it concerns.
                with structlog.contextvars.bound_contextvars(campaign=item.campaign_id, row=item.row):
                    return await dispatcher.send(item)
            return await dispatcher.send(item)
        except AccountRefusedError as exc:
            if self._on_refused is None:
                raise
            self._on_refused(exc)
            return False
        finally:
            if self._on_done is not None:
                self._on_done(item.row_id)

    async def resend(self, item: SendItem) -> bool:
        """Send again an item reconciliation proved TEM never created: the one path of every
        resend after an ambiguous answer."""
        if self._should_stop():
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
                if self._should_stop():
                    # The item's row stays `pending`: durable, and resumed by the next run.
                    if self._on_done is not None:
                        self._on_done(item.row_id)
                    if self._drain_queue is not None and self._drain_queue():
                        continue
                    return
                await self.send(item)
