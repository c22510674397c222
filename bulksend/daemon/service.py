"""``bulksend serve``: the long-lived daemon — job queues, admin campaigns, one pipeline.

One anyio task group owns everything the process runs::

    admin API (aiohttp.web) ─► DaemonControl methods below ─► CampaignRun per submitted campaign
    sources (NATS, RabbitMQ, Redis) ─► JobIntake ─► a lane's stream ─► SendEngine ─► TEM
    one Tracker per job template ─► outcome hook ─► results publisher + metrics
                                                       (a journal in the store makes a result
                                                        survive a crash: see "job results")

Job streams and campaign runs send through the same engine (:mod:`bulksend.pipeline.engine`:
dispatch, reconciliation, resends). Everything shares one aiohttp session, one store and one rate
limiter, the account's budget; a campaign's own ``rate_per_s`` and a job stream's are ceilings
nested inside it (:mod:`bulksend.pipeline.nested`).

Stopping (SIGTERM, or :meth:`Daemon.request_stop`) is two-phase: first stop pulling from the
brokers and stop starting sends, let in-flight requests finish and record them, acknowledging
nothing that is not recorded; after ``grace_s`` everything left is cancelled. Rows left ``pending``
or ``sending`` are picked up (resent or reconciled) by the next start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson
import structlog
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from bulksend.brokers import publisher_from_config, source_from_config
from bulksend.brokers.base import JobSource, ResultPublisher
from bulksend.campaign.load import Campaign, FileAccess, campaign_from_dict
from bulksend.campaign.render import Rejection
from bulksend.daemon.admin.api import AdminServer, check_listen_address, create_admin_app, serve_admin
from bulksend.daemon.admin.control import (
    CampaignInfo,
    CampaignStatus,
    Conflict,
    JobStreamInfo,
    NotFound,
    Overview,
    Submission,
    campaign_folder_error,
    count_recipients,
    new_campaign_folder,
    safe_filename,
    spool_private,
    spooled_name,
    write_private,
)
from bulksend.daemon.cancel import settle_canceled
from bulksend.daemon.config import DaemonConfig
from bulksend.daemon.deadletters import DeadLetterBook
from bulksend.daemon.results import RESULTS_BACKLOG_UNREADY, ResultBacklog, result_message
from bulksend.daemon.stopping import end_reconciliations
from bulksend.daemon.summaries import row_states, unsettled_deliveries
from bulksend.deliverability.blocklists import sync_blocklists
from bulksend.deliverability.preflight import DomainRefused, check_domain
from bulksend.deliverability.tokens import SECRET_ENV, UnsubscribeSigner
from bulksend.deliverability.unsubscribe import UnsubscribeEndpoint
from bulksend.errors import (
    BulksendError,
    CampaignError,
    StoreError,
    first_bulksend_error,
)
from bulksend.events.http import SnsHttpReceiver
from bulksend.events.router import EventRouter
from bulksend.events.sns import SnsVerifier, UrlAllowlist
from bulksend.jobs.intake import (
    JobIntake,
    JobSink,
    JobTemplate,
    compile_template,
    item_from_job_row,
    job_campaign_id,
)
from bulksend.metrics import RECONCILE_OUTCOMES, Metrics
from bulksend.pipeline.account import account_limiter
from bulksend.pipeline.context import SendContext
from bulksend.pipeline.dispatch import AccountRefusedError, SendItem
from bulksend.pipeline.engine import EngineSettings, SendEngine, campaign_tracker
from bulksend.pipeline.flow import FlowLimiter, flow_stats
from bulksend.pipeline.guard import BounceGuard
from bulksend.pipeline.nested import NestedLimiter, nested
from bulksend.pipeline.retry import RetryPolicy
from bulksend.pipeline.run import CampaignRun
from bulksend.pipeline.stats import RunStats
from bulksend.pipeline.suppress import Screen, is_suppressed
from bulksend.pipeline.tracker import Tracker
from bulksend.sinks.outcomes import outcome_lines
from bulksend.store import open_store
from bulksend.store.base import (
    AdmitResult,
    CampaignRecord,
    CampaignState,
    FinalUpdate,
    NewRecipient,
    RowState,
    Store,
)
from bulksend.tem.client import TemClient
from bulksend.tem.config import TemSettings

__all__ = ["Daemon"]

log = structlog.get_logger("bulksend.daemon")

_UNFINISHED = "still in progress"
_SUBMIT_ROLE = "submit"
_SUBMIT_RESERVATION_S = 600.0
"""How long a submission holds its id in the store without news (renewed while uploading)."""
_GAUGES_EVERY_S = 2.0
"""How often the gauges read from the store and the brokers (backlog, queue lag) are refreshed."""
_PUBLISH_BUDGET_S = 30.0
"""Most time one batch of results may take to publish (and at most ``grace_s``, as it holds up a
stop); what is left is published at the next start."""


def _reconciled(stats: RunStats, outcome: str) -> int:
    """Reconciliations of one pipeline that ended with ``outcome``."""
    if outcome == "adopted":
        return stats.reconciled_adopted
    if outcome == "resent":
        return stats.reconciled_resent
    return stats.reconcile_deferred


def _journal_id(job_campaign: str) -> str:
    """The hidden campaign that journals due results of a job campaign (``:`` is not allowed in
    submitted campaign ids, so the two can never collide)."""
    return f"results:{job_campaign}"


class Daemon:
    """The daemon: runs until :meth:`request_stop`; implements the admin API's ``DaemonControl``."""

    def __init__(self, config: DaemonConfig, settings: TemSettings, *, store: Store | None = None) -> None:
        self.config = config
        self.settings = settings
        self.store: Store = store or open_store(config.store_url)
        self.metrics = Metrics()
        self.stats = RunStats()
        s = config.sending
        self.rate_per_s = float(s.rate_per_s)
        self.concurrency = s.concurrency
        self.limiter = account_limiter(self.rate_per_s)
        self._retry = RetryPolicy(max_attempts=s.max_attempts, max_elapsed_s=s.max_retry_s)
        self._templates: dict[str, JobTemplate] = {}
        self.sources: list[JobSource] = [source_from_config(c) for c in config.sources]
        self.source_rates: dict[str, float] = {
            source.name: rate
            for source, rate in zip(self.sources, config.source_rates, strict=False)
            if rate is not None
        }
        """Job streams with a rate of their own (by source name): each is a lane of its own."""
        self.publisher: ResultPublisher | None = (
            publisher_from_config(config.results) if config.results is not None else None
        )
        self._tem: TemClient | None = None
        self._tg: TaskGroup | None = None
        self._tracker_tg: TaskGroup | None = None
        self._trackers: dict[str, Tracker] = {}
        self._known_job_campaigns: set[str] = set()
        self._queued: set[int] = set()
        self._runs: dict[str, CampaignRun] = {}
        self._errors: dict[str, str] = {}
        self._tem_refused: str | None = None
        """Why TEM refused the account at run time (401/403): sending stopped, not ready."""
        self._canceling: set[str] = set()
        """Campaigns canceled by this process (the store says so too, once its write is done)."""
        self._intakes: list[JobIntake] = []
        self._screen = Screen(self.store, settings.project_id)
        """The suppression list: the daemon's store keeps it (docs/deliverability.md)."""
        self._guards: dict[str, BounceGuard] = {}
        """Job campaign → the guardrail of its stream."""
        self._held: dict[str, str] = {}
        """Job campaigns whose stream a guardrail paused → why; their new jobs wait `pending`."""
        self._lanes: dict[str, MemoryObjectSendStream[SendItem]] = {}
        """The job lanes' queues, by stream name ("" is the default lane), while jobs run."""
        self._result_due: dict[int, int] = {}
        """Job row id → its entry in the results journal, while its result is not published yet."""
        self._journals: set[str] = set()
        self.results_backlog = ResultBacklog(self._publish_batch, self.metrics)
        """Results whose publish failed, retried in the background."""
        self.results_backlog_unready = RESULTS_BACKLOG_UNREADY
        self.dead_letter_book = DeadLetterBook()
        self._reconciled_seen: dict[str, int] = dict.fromkeys(RECONCILE_OUTCOMES, 0)
        """Reconciliations already counted in the metrics, by outcome."""
        self._reconciled_ended: dict[str, int] = dict.fromkeys(RECONCILE_OUTCOMES, 0)
        """Reconciliations of campaign runs that have ended, by outcome."""
        self._started = False
        self._in_flight_at_stop = 0
        self._stop_summary: dict[str, Any] = {}
        """The fields of ``daemon.stopped``, filled while stopping."""
        self._stop = anyio.Event()
        self._stopping = False
        self.forced = False
        """A second signal forced the stop (``serve`` exits 130)."""
        self._root: anyio.CancelScope | None = None
        self._gauges_scope: anyio.CancelScope | None = None
        self._job_counts: dict[str, dict[str, int]] = {}
        self._queue_lag: dict[str, int] = {}
        self._tracker_backlog = 0
        """The last figures the gauges read from the store and the brokers (``overview`` shows
        them, so a dashboard's polling costs neither a query nor a broker call)."""
        self._sync_scope: anyio.CancelScope | None = None
        self.admin_url: str | None = None
        self.events: EventRouter | None = EventRouter() if config.tracking.mode == "events" else None
        """Where webhook events go to the trackers (``tracking.mode = "events"``)."""
        self.events_http: SnsHttpReceiver | None = None
        self._event_scopes: list[anyio.CancelScope] = []
        self.unsubscribe: UnsubscribeEndpoint | None = None
        """``/u/{token}``, served when ``BULKSEND_UNSUBSCRIBE_SECRET`` is set."""
        if os.environ.get(SECRET_ENV):
            self.unsubscribe = UnsubscribeEndpoint(
                UnsubscribeSigner.from_env(),
                self.store,
                settings.project_id,
                max_age_s=config.deliverability.unsubscribe_max_age_s,
            )

    # -- lifecycle -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Graceful stop: stop pulling and sending, finish in-flight within ``grace_s``."""
        self._stop.set()

    def abort(self) -> None:
        """Stop now (second signal): what is in flight is cancelled, the next start reconciles it."""
        if not self.forced:
            log.warning(
                "daemon.forced_stop",
                hint="stopping now: requests in flight stay `sending` and the next start reconciles them",
            )
        self.forced = True
        self._stop.set()
        if self._root is not None:
            self._root.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped. ``task_status.started()`` fires once the admin API listens."""
        check_listen_address(self.config.admin.host, self.config.admin.token)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        try:
            async with TemClient(
                self.settings,
                timeout_s=self.config.sending.timeout_s,
                limit_per_host=self.concurrency + 16,
                on_response=self._on_response,
            ) as tem:
                self._tem = tem
                await self._load_templates()
                for sender in sorted({t.campaign.from_.email for t in self._templates.values()}):
                    await self._check_sender(sender)
                await self._open_brokers()
                runner = await self._start_admin()
                await self._log_recovery()
                try:
                    with anyio.CancelScope() as root:
                        self._root = root
                        async with anyio.create_task_group() as tg:
                            self._tg = tg
                            tg.start_soon(self._jobs_main)
                            tg.start_soon(self._refresh_gauges)
                            if self.events is not None and self.config.events.sqs is not None:
                                tg.start_soon(self._read_event_queue, self.events)
                            tg.start_soon(self.results_backlog.run)
                            tg.start_soon(self._sync_blocklists)
                            await self._resume_campaigns()
                            task_status.started()
                            log.info(
                                "daemon.started",
                                admin=self.admin_url,
                                sources=[s.name for s in self.sources],
                                templates=sorted(self._templates),
                            )
                            await self._stop.wait()
                            self._begin_stop()
                finally:
                    with anyio.CancelScope(shield=True):
                        self._stop_summary["released"] = unsettled_deliveries(self.sources)
                        await runner.cleanup()
                        await self._close_brokers()
        finally:
            with anyio.CancelScope(shield=True):
                await self._summarise_stop()
                await self.store.close()
            log.info("daemon.stopped", **self._stop_summary)

    async def _campaigns_to_recover(self) -> tuple[list[str], list[str]]:
        """(job campaigns, submitted campaigns not finished) known to the store."""
        jobs = []
        for template in self._templates.values():
            if await self.store.get_campaign(template.campaign.id) is not None:
                jobs.append(template.campaign.id)
        submitted = [
            r.id
            for r in await self.store.list_campaigns()
            if r.spec.get("daemon_dir") and r.state is not CampaignState.FINISHED
        ]
        return jobs, submitted

    async def _log_recovery(self) -> None:
        """One line saying what this start takes over from the previous run (``daemon.recovery``)."""
        jobs, submitted = await self._campaigns_to_recover()
        job_rows = await row_states(self.store, jobs)
        campaign_rows = await row_states(self.store, submitted)
        results_due = 0
        if self.publisher is not None:
            for cid in jobs:
                results_due += (await self.store.counts(_journal_id(cid))).get(RowState.PENDING.value, 0)
        log.info(
            "daemon.recovery",
            rows_to_reconcile=job_rows["sending"] + campaign_rows["sending"],
            jobs_resumed=job_rows["pending"] + job_rows["sending"],
            jobs_to_track=job_rows["submitted"],
            campaigns_resumed=len(submitted),
            campaign_rows_to_send=campaign_rows["pending"],
            campaign_rows_to_track=campaign_rows["submitted"],
            results_due=results_due,
        )
        self._started = True

    async def _summarise_stop(self) -> None:
        """Fill ``daemon.stopped``: what was drained, released, and left for the next start."""
        summary = self._stop_summary
        summary["forced"] = self._root is not None and self._root.cancel_called
        summary["in_flight_at_stop"] = self._in_flight_at_stop
        summary["results_held"] = len(self.results_backlog)
        summary.setdefault("released", 0)
        if not self._started:
            return
        try:
            with anyio.fail_after(5):
                jobs, submitted = await self._campaigns_to_recover()
                summary["left"] = await row_states(self.store, [*jobs, *submitted])
        except Exception as exc:  # the store is what failed: say so rather than hide the line
            summary["left"] = None
            summary["left_error"] = f"{type(exc).__name__}: {exc}"

    def _begin_stop(self) -> None:
        self._stopping = True
        self._in_flight_at_stop = self._in_flight()
        log.info("daemon.stopping", grace_s=self.config.grace_s)
        for intake in self._intakes:
            intake.stop_scope.cancel()
        self._close_lanes()
        for run in list(self._runs.values()):
            run.request_stop()
        if self._tracker_tg is not None:
            self._tracker_tg.cancel_scope.cancel()
        if self._gauges_scope is not None:
            self._gauges_scope.cancel()
        for scope in self._event_scopes:
            scope.cancel()
        if self._sync_scope is not None:
            self._sync_scope.cancel()
        self.results_backlog.stop()
        if self._root is not None:
            self._root.deadline = anyio.current_time() + self.config.grace_s

    def _account_refused(self, reason: str) -> None:
        """TEM refused the secret key or its permissions: stop sending, stay up, not ready.

        The key cannot change while the process runs, so every further send would be refused
        too. Exiting would leave requests in flight unrecorded; staying up keeps /readyz and
        /metrics answering with the reason, and the state stays consistent: refused rows are
        `pending` again, messages not taken stay on their brokers, and a restart with a valid
        key goes on. One error line says so.
        """
        if self._tem_refused is not None:
            return
        self._tem_refused = reason
        log.error(
            "daemon.tem_refused",
            error=reason,
            hint="sending stopped and /readyz answers 503; fix the key or its permissions and "
            "restart the daemon: nothing is lost, unsent rows and queued jobs are sent then",
        )
        for intake in self._intakes:
            intake.stop_scope.cancel()
        if self._tracker_tg is not None:
            self._tracker_tg.cancel_scope.cancel()
        for run in list(self._runs.values()):
            run.request_stop()

    def _end_sending(self, reconciling: int) -> bool:
        """Sending is over (the engine's ``drain``): a graceful stop lets the reconciliations
        under way finish within grace_s, so rows are not left `sending` (daemon/stopping.py)."""
        self._stop_summary["reconciling_at_stop"] = reconciling
        return end_reconciliations(reconciling, graceful=self._stopping and not self.forced)

    def _sending_stopped(self) -> bool:
        return self._stopping or self._tem_refused is not None

    def _on_response(self, kind: str, status: int, elapsed_s: float) -> None:
        self.stats.on_response(kind, status, elapsed_s)
        self.metrics.on_api_response(kind, status, elapsed_s)

    async def _open_brokers(self) -> None:
        for source in self.sources:
            await source.open()
        if self.publisher is not None:
            await self.publisher.open()

    async def _close_brokers(self) -> None:
        for source in self.sources:
            try:
                await source.close()
            except BulksendError as exc:
                log.warning("daemon.source_close_failed", source=source.name, error=str(exc))
        if self.publisher is not None:
            try:
                await self.publisher.close()
            except BulksendError as exc:
                log.warning("daemon.publisher_close_failed", error=str(exc))

    async def _read_event_queue(self, router: EventRouter) -> None:
        """Read webhook events off the ``[events.sqs]`` queue until the daemon stops."""
        from bulksend.events.sqs import SqsEventSettings, SqsEventSource

        settings = SqsEventSettings.from_mapping(self.config.events.sqs)
        with anyio.CancelScope() as scope:
            self._event_scopes.append(scope)
            await SqsEventSource(settings, router.deliver, verifier=self._verifier()).run()

    def _verifier(self) -> SnsVerifier:
        e = self.config.events
        return SnsVerifier(
            e.cert_urls,
            trust_chain=e.trust_chain.read_bytes() if e.trust_chain else None,
            ssl_context=ssl.create_default_context(cafile=e.cert_ca_file) if e.cert_ca_file else None,
        )

    async def _start_admin(self) -> AdminServer:
        a = self.config.admin
        e = self.config.events
        if self.events is not None and e.http:
            self.events_http = SnsHttpReceiver(
                self.events.deliver, self._verifier(), UrlAllowlist(e.subscribe_urls), topics=e.topics
            )
        app = create_admin_app(
            self,
            token=a.token,
            metrics=self.metrics,
            metrics_public=a.metrics_public,
            read_timeout_s=a.read_timeout_s,
            events=self.events_http,
        )
        if self.unsubscribe is not None:
            self.unsubscribe.add_routes(app)
        server = await serve_admin(
            app, a.host, a.port, idle_timeout_s=a.idle_timeout_s, max_connections=a.max_connections
        )
        self.admin_url = server.url
        return server

    async def _check_sender(self, sender: str) -> None:
        """Refuse (``DomainRefused``) a sender whose domain must not send; log the warnings."""
        assert self._tem is not None
        try:
            check = await check_domain(self._tem, sender, force=self.config.deliverability.force)
        except AccountRefusedError as exc:
            # The daemon stays up when TEM refuses its key (not ready): the first send says so.
            log.warning("domain.not_checked", domain=sender.rpartition("@")[2], error=str(exc))
            return
        for warning in check.warnings:
            log.warning("domain.warning", domain=check.name, warning=warning)

    async def _sync_blocklists(self) -> None:
        """Copy TEM's blocklists into the suppression list now and every ``blocklist_sync_s``."""
        every = self.config.deliverability.blocklist_sync_s
        if not every or self._tem is None:
            return
        with anyio.CancelScope() as self._sync_scope:
            while not self._stopping:
                try:
                    await sync_blocklists(self._tem, self.store)
                except BulksendError as exc:
                    log.warning("blocklists.sync_failed", error=str(exc), retry_in_s=every)
                await anyio.sleep(every)

    def _in_flight(self) -> int:
        return self.stats.in_flight + sum(r.stats.in_flight for r in self._runs.values())

    async def _refresh_gauges(self) -> None:
        """Keep the documented gauges current: limiter rate, sends in flight, backlog, queue lag."""
        with anyio.CancelScope() as self._gauges_scope:
            while not self._stopping:
                await self._set_gauges()
                await anyio.sleep(_GAUGES_EVERY_S)

    async def _set_gauges(self) -> None:
        self.metrics.set_limiter_rate(self.limiter.rate_per_s)
        self.metrics.set_flow(flow_stats(self.limiter))
        self.metrics.set_in_flight(self._in_flight())
        self._count_reconciliations()
        backlog = 0
        for cid in [*self._known_job_campaigns, *self._runs]:
            try:
                counts = await self.store.counts(cid)
            except BulksendError:
                self.metrics.store_error("counts")
                continue
            backlog += counts.get(RowState.SUBMITTED.value, 0)
            if cid in self._known_job_campaigns:
                self._job_counts[cid] = counts
        self.metrics.set_backlog(backlog)
        self._tracker_backlog = backlog
        await self.health()  # keeps bulksend_ready current
        for source in self.sources:
            lag = await source.lag()
            if lag is not None:
                self.metrics.set_queue_lag(source.name, lag)
                self._queue_lag[source.name] = lag

    def _count_reconciliations(self) -> None:
        """Bring ``bulksend_reconciliations_total`` up to what the pipelines counted so far."""
        live = [self.stats, *(run.stats for run in self._runs.values())]
        for outcome, done in self._reconciled_ended.items():
            total = done + sum(_reconciled(stats, outcome) for stats in live)
            self.metrics.reconciled(outcome, total - self._reconciled_seen[outcome])
            self._reconciled_seen[outcome] = max(total, self._reconciled_seen[outcome])

    # -- templates -------------------------------------------------------------------------------
    def _compile(self, name: str, spec: Mapping[str, Any], source: str) -> JobTemplate:
        empty = self.config.data_dir / "templates" / "no-recipients.jsonl"
        empty.parent.mkdir(parents=True, exist_ok=True)
        empty.touch(exist_ok=True)
        return compile_template(
            name,
            spec,
            base_dir=self.config.base_dir,
            empty_recipients=empty,
            project_id=self.settings.project_id,
            sending=self.config.sending,
            tracking=self.config.tracking,
            outcomes=self.config.data_dir / f"{job_campaign_id(name)}.jsonl",
            source=source,
        )

    async def _load_templates(self) -> None:
        for name, spec in self.config.templates.items():
            self._templates[name] = self._compile(name, spec, f"{self.config.path} [templates.{name}]")
        folder = self.config.data_dir / "templates"
        for path in sorted(folder.glob("*.json")) if folder.exists() else []:
            spec = orjson.loads(path.read_bytes())
            self._templates[path.stem] = self._compile(path.stem, spec, str(path))

    async def _ensure_job_campaign(self, template: JobTemplate) -> None:
        cid = template.campaign.id
        if cid in self._known_job_campaigns:
            return
        record = await self.store.get_campaign(cid)
        if record is None:
            record = await self.store.create_campaign(cid, {"kind": "jobs", "template": template.name})
        self._known_job_campaigns.add(cid)
        self._start_tracker(template, record)

    def _send_context(self) -> SendContext:
        """What the job streams' engine and trackers work with (once TEM's client is open)."""
        assert self._tem is not None
        return SendContext(self.store, self._tem, self.limiter, self.stats, self._retry)

    def _start_tracker(self, template: JobTemplate, record: CampaignRecord) -> None:
        cid = template.campaign.id
        if cid in self._trackers or self._tem is None or self._tracker_tg is None:
            return
        if self._sending_stopped():
            return  # the trackers' group is closing or closed: the next start tracks these
        tracker = campaign_tracker(
            template.campaign,
            self._send_context(),
            since=record.created_at - timedelta(minutes=1),
            on_outcome=self._on_job_outcome,
            on_finals=self._on_job_finals,
        )
        if record.state is CampaignState.PAUSED:
            self._hold(cid, record.state_reason or "paused")
        self._trackers[cid] = tracker
        if self.events is not None:
            self.events.register(cid, tracker)
        self._tracker_tg.start_soon(tracker.run, None)

    # -- the job pipeline ------------------------------------------------------------------------
    async def _jobs_main(self) -> None:
        assert self._tem is not None
        async with anyio.create_task_group() as jobs_tg:
            await jobs_tg.start(self._host_trackers)
            await self._recover_results()
            for template in self._templates.values():
                record = await self.store.get_campaign(template.campaign.id)
                if record is not None:
                    self._known_job_campaigns.add(template.campaign.id)
                    self._start_tracker(template, record)
            engine = SendEngine(
                context=self._send_context(),
                sink=JobSink(self._trackers, self.store, self._on_job_outcome),
                settings=EngineSettings(
                    settle_s=self.config.tracking.settle_s,
                    timeout_s=self.config.sending.timeout_s,
                ),
                should_stop=self._sending_stopped,
                on_done=self._queued.discard,
                on_refused=lambda exc: self._account_refused(str(exc)),
                # Refused key: the daemon stays up, its queues are emptied without sending.
                drain_queue=lambda: not self._stopping,
                log_items=True,
            )
            # One lane per job stream with a rate of its own (a ceiling inside the account's
            # limiter, with its own queue so a slow stream never holds up the others' sends);
            # every other stream, and rows resumed from a stream no longer configured, share
            # the default lane.
            lanes = {"": anyio.create_memory_object_stream[SendItem](max_buffer_size=self.concurrency * 2)}
            for source in self.sources:
                rate = self.source_rates.get(source.name)
                if rate is not None and source.name not in lanes:
                    engine.add_lane(source.name, NestedLimiter(self.limiter, rate))
                    lanes[source.name] = anyio.create_memory_object_stream[SendItem](
                        max_buffer_size=self.concurrency * 2
                    )
            async with engine.running(drain=self._end_sending), anyio.create_task_group() as work_tg:
                # Sending stops with the feeders. A graceful stop lets the reconciliations under
                # way finish within grace_s (``_end_sending``); a forced one leaves their rows
                # `sending` for the next start to reconcile.
                queues = {name: send.clone() for name, (send, _) in lanes.items()}
                # Kept open for streams resumed later; closed when the daemon stops.
                self._lanes = {name: send.clone() for name, (send, _) in lanes.items()}
                if self._stopping:
                    self._close_lanes()
                work_tg.start_soon(self._resume_jobs, engine, queues)
                for source in self.sources:
                    send, _ = lanes.get(source.name, lanes[""])
                    intake = JobIntake(
                        source=source,
                        store=self.store,
                        templates=self._templates,
                        dispatch=send.clone(),
                        metrics=self.metrics,
                        batch=self.config.job_batch,
                        receive_timeout_s=self.config.receive_timeout_s,
                        is_queued=self._queued.__contains__,
                        on_queued=self._queued.add,
                        ensure_campaign=self._ensure_job_campaign,
                        after_admit=self._note_results_due,
                        on_dead_letter=self.dead_letter_book.record,
                        screen=self._screen,
                        on_suppressed=self._on_jobs_suppressed,
                        is_held=self._held.__contains__,
                    )
                    self._intakes.append(intake)
                    work_tg.start_soon(self._run_intake, intake)
                    if self._stopping:
                        intake.stop_scope.cancel()
                for send, receive in lanes.values():
                    for _ in range(self.concurrency):
                        work_tg.start_soon(engine.work, receive.clone())
                    send.close()
                    receive.close()

    async def _host_trackers(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the trackers' task group. A stop cancels this group alone: it must not reach the
        job workers, whose requests in flight are let finish and recorded (nothing left `sending`)."""
        async with anyio.create_task_group() as tg:
            self._tracker_tg = tg
            if self._stopping:
                tg.cancel_scope.cancel()
            task_status.started()
            await anyio.sleep_forever()

    async def _run_intake(self, intake: JobIntake) -> None:
        # BrokenResourceError: the workers are gone (stopping); what was admitted is pending in
        # the store and the next start sends it.
        with contextlib.suppress(anyio.BrokenResourceError):
            await intake.run()

    async def _resume_jobs(
        self, engine: SendEngine, queues: Mapping[str, MemoryObjectSendStream[SendItem]]
    ) -> None:
        """Rows an earlier run left behind: `sending` ones are reconciled, `pending` ones sent
        (each through the lane of the stream it came from)."""
        with contextlib.ExitStack() as closing:
            for queue in queues.values():
                closing.callback(queue.close)
            try:
                for template in list(self._templates.values()):
                    cid = template.campaign.id
                    if await self.store.get_campaign(cid) is None:
                        continue
                    async for row in self.store.iter_rows(cid, states=[RowState.SENDING]):
                        item = item_from_job_row(row, template)
                        if isinstance(item, SendItem) and row.attempt_started_at is not None:
                            self._queued.add(row.id)
                            await engine.reconcile(item, row.attempt_started_at, row.attempt_ended_at)
                    if cid not in self._held:
                        await self._send_pending_jobs(template, queues)
            except anyio.BrokenResourceError:
                return

    async def _send_pending_jobs(
        self, template: JobTemplate, queues: Mapping[str, MemoryObjectSendStream[SendItem]]
    ) -> None:
        """Queue the jobs of a template that wait `pending` (after a restart, or a paused stream)."""
        cid = template.campaign.id
        async for row in self.store.iter_rows(cid, states=[RowState.PENDING]):
            if self._stopping:
                return
            if row.id in self._queued:
                continue
            item = item_from_job_row(row, template)
            if isinstance(item, Rejection):
                await self.store.mark_rejected(row.id, reason=item.reason)
                await self._on_job_outcome(cid, [(row.id, "rejected")])
                continue
            self._queued.add(row.id)
            await queues.get(item.lane, queues[""]).send(item)

    # -- job results -----------------------------------------------------------------------------
    # A result is published after its row is final in the store, so a crash in between would lose
    # it. Hence a journal (a hidden campaign per job campaign): when a job is admitted, and before
    # it is acknowledged, an entry `pending` says its result is due; once published, the entry
    # becomes `skipped`. At start, due results of rows already final are published again; results
    # the broker refuses at run time are held and retried in the background (daemon/results.py).
    # Results are therefore published at least once (a crash right after a publish repeats it).
    def _wants_result(self, payload: Mapping[str, Any]) -> bool:
        want = payload.get("want_result")
        return self.publisher is not None and (want is True or (want is None and self.config.results_default))

    async def _note_results_due(
        self, campaign_id: str, admitted: Sequence[tuple[NewRecipient, AdmitResult]]
    ) -> None:
        """Journal the results these admitted jobs will owe (JobIntake's ``after_admit``)."""
        due = {
            new.row: res.id
            for new, res in admitted
            if (not res.state.is_terminal or is_suppressed(res.reason))
            and res.id not in self._result_due
            and self._wants_result(new.payload)
        }
        if not due:
            return
        journal = _journal_id(campaign_id)
        if journal not in self._journals:
            spec = {"kind": "jobs", "journal": "results", "of": campaign_id}
            await self.store.create_campaign(journal, spec)
            self._journals.add(journal)
        entries = [
            NewRecipient(new.row, new.email, "", None, RowState.PENDING, payload={"row_id": due[new.row]})
            for new, _ in admitted
            if new.row in due
        ]
        for entry in await self.store.admit(journal, entries):
            if entry.state is RowState.PENDING:
                self._result_due[due[entry.row]] = entry.id

    async def _recover_results(self) -> None:
        """Publish the results an earlier run recorded as final but did not get out."""
        if self.publisher is None:
            return
        for template in list(self._templates.values()):
            cid = template.campaign.id
            journal = _journal_id(cid)
            if await self.store.get_campaign(journal) is None:
                continue
            self._journals.add(journal)
            finished: list[int] = []
            async for entry in self.store.iter_rows(journal, states=[RowState.PENDING]):
                row_id = int(entry.payload.get("row_id") or 0)
                self._result_due[row_id] = entry.id
                row = await self.store.get_row(row_id)
                if row is None or row.state.is_terminal:
                    finished.append(row_id)
            if finished:
                log.info("results.republish", campaign=cid, results=len(finished))
                await self._publish_results(cid, finished)

    async def _on_jobs_suppressed(self, campaign_id: str, rows: Sequence[tuple[int, str]]) -> None:
        """Jobs admitted `skipped` as suppressed: counted, and their results published once
        (a redelivered job's result is not due again)."""
        for _, status in rows:
            self.metrics.observe_outcome(campaign_id, status)
        self.metrics.suppressed.labels(campaign_id).inc(len(rows))
        await self._publish_results(campaign_id, [row_id for row_id, _ in rows if row_id in self._result_due])

    # -- guardrails of the job streams -----------------------------------------------------------
    async def _on_job_finals(self, campaign_id: str, finals: Sequence[tuple[FinalUpdate, str]]) -> None:
        """Final emails of a job stream: suppress hard bounces and complaints; hold the stream on
        a bounce storm."""
        template = campaign_id.removeprefix("jobs.")
        await self._screen.learn(finals, f"job stream {template}")
        compiled = self._templates.get(template)
        if compiled is None:
            return
        guard = self._guards.setdefault(campaign_id, BounceGuard(compiled.campaign.guardrails))
        reason = guard.observe(update.flags for update, _ in finals)
        if reason is None or campaign_id in self._held:
            return
        await self.store.set_campaign_state(campaign_id, CampaignState.PAUSED, reason=reason)
        self._hold(campaign_id, reason)
        log.warning(
            "jobs.paused_by_guardrail",
            template=template,
            reason=reason,
            hint=f"new jobs wait; resume with POST /v1/campaigns/{campaign_id}/resume",
        )

    def _close_lanes(self) -> None:
        lanes, self._lanes = self._lanes, {}
        for queue in lanes.values():
            queue.close()

    async def _send_resumed(self, template: JobTemplate) -> None:
        """Queue the jobs a resumed stream kept waiting (a stop meanwhile leaves them `pending`)."""
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._send_pending_jobs(template, self._lanes)

    def _hold(self, campaign_id: str, reason: str) -> None:
        self._held[campaign_id] = reason
        self.metrics.guardrail(campaign_id, paused=True)

    async def _resume_stream(self, record: CampaignRecord) -> CampaignInfo:
        """Send again the jobs of a stream its guardrail paused (the admin API's resume)."""
        cid = record.id
        if record.state is CampaignState.PAUSED:
            await self.store.set_campaign_state(cid, CampaignState.RUNNING)
        self._held.pop(cid, None)
        guard = self._guards.get(cid)
        if guard is not None:
            guard.reset()
        self.metrics.guardrail(cid, paused=False)
        template = self._templates.get(cid.removeprefix("jobs."))
        if template is not None and self._lanes and self._tg is not None:
            self._tg.start_soon(self._send_resumed, template)
        log.info("jobs.resumed", template=cid.removeprefix("jobs."))
        return await self._info(cid)

    async def _on_job_outcome(self, campaign_id: str, rows: Sequence[tuple[int, str]]) -> None:
        for _, status in rows:
            self.metrics.observe_outcome(campaign_id, status)
        await self._publish_results(campaign_id, [row_id for row_id, _ in rows])

    async def _publish_results(self, campaign_id: str, row_ids: Sequence[int]) -> None:
        if self.publisher is None or not row_ids:
            return
        if self.results_backlog.active:
            # The broker refused the last attempt: join the backlog, which its retry publishes in
            # order, rather than have every new outcome knock on a broker that is away.
            self.results_backlog.hold(campaign_id, row_ids)
            return
        self.results_backlog.hold(campaign_id, await self._publish_batch(campaign_id, row_ids))

    async def _publish_batch(self, campaign_id: str, row_ids: Sequence[int]) -> list[int]:
        """Publish the results of these rows; returns the row ids whose result did not go out."""
        if self.publisher is None:
            return []
        # Shielded, within a bound: a stop must not cut a batch between "final" and "published".
        # What is cut anyway (a crash, a dead broker) stays due and is published by the next start.
        budget_s = min(_PUBLISH_BUDGET_S, max(1.0, self.config.grace_s))
        published: list[int] = []
        done = 0
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(budget_s):
                for row_id in row_ids:
                    row = await self.store.get_row(row_id)
                    if row is not None and self._wants_result(row.payload):
                        try:
                            await self.publisher.publish(
                                result_message(row, campaign_id, unfinished=_UNFINISHED)
                            )
                        except BulksendError as exc:
                            # The rest of the batch is held too: a broker that refused one
                            # outcome will likely refuse the next.
                            self.metrics.result_failed()
                            first = not self.results_backlog.active
                            (log.warning if first else log.debug)(
                                "results.publish_failed",
                                row=row.row,
                                error=str(exc),
                                hint="held, and published again in the background",
                            )
                            break
                        self.metrics.result_published()
                    done += 1
                    entry = self._result_due.pop(row_id, None)
                    if entry is not None:
                        published.append(entry)
            # Outside the budget: what went out is recorded even when the budget ran out.
            if published:
                await self._mark_published(published)
        return list(row_ids[done:])

    async def _mark_published(self, entries: Sequence[int]) -> None:
        async def one(entry: int) -> None:
            try:
                await self.store.mark_skipped(entry, reason="result published")
            except BulksendError as exc:
                self.metrics.store_error("results_journal")
                log.warning("results.journal_failed", entry=entry, error=str(exc))

        # Concurrent, so a store with group commit writes the batch in one commit.
        async with anyio.create_task_group() as tg:
            for entry in entries:
                tg.start_soon(one, entry)

    async def _on_campaign_outcome(self, campaign_id: str, rows: Sequence[tuple[int, str]]) -> None:
        for _, status in rows:
            self.metrics.observe_outcome(campaign_id, status)

    # -- admin campaigns -------------------------------------------------------------------------
    async def _resume_campaigns(self) -> None:
        for record in await self.store.list_campaigns():
            folder = record.spec.get("daemon_dir")
            if not folder or record.state is CampaignState.FINISHED:
                continue
            try:
                campaign = self._load_submitted(Path(folder))
            except (OSError, BulksendError) as exc:
                self._errors[record.id] = f"cannot resume: {exc}"
                continue
            self._start_run(campaign, Path(folder))

    def _load_submitted(self, folder: Path) -> Campaign:
        data = orjson.loads((folder / "campaign.json").read_bytes())
        return campaign_from_dict(
            data, base_dir=folder, source=f"campaign {folder.name}", files=self._submitted_files()
        )

    def _submitted_files(self) -> FileAccess:
        return FileAccess.confined_to(self.config.admin.files_root)

    def _start_run(self, campaign: Campaign, folder: Path) -> CampaignRun:
        assert self._tem is not None
        assert self._tg is not None
        # A campaign's own `rate_per_s` is a ceiling inside the account's limiter; without one,
        # the campaign is paced by the account's limiter alone.
        given = campaign.sending.rate_given
        run = CampaignRun(
            campaign,
            store=self.store,
            tem=self._tem,
            limiter=nested(self.limiter, campaign.sending.rate_per_s if given else None),
            project_id=self.settings.project_id,
            stats=RunStats(),
            grace_s=self.config.grace_s,
            on_outcome=self._on_campaign_outcome,
            spec_extra={"daemon_dir": str(folder)},
            after_sending=self._after_sending,
            on_paused=lambda cid, _: self.metrics.guardrail(cid, paused=True),
            events=self.events,
        )
        self._runs[campaign.id] = run
        self._errors.pop(campaign.id, None)
        self._tg.start_soon(self._drive, run)
        return run

    async def _drive(self, run: CampaignRun) -> None:
        cid = run.campaign.id
        try:
            await run.run()
        except (BulksendError, BaseExceptionGroup) as raised:
            error = first_bulksend_error(raised)
            if error is None:
                raise
            self._errors[cid] = str(error)
            if isinstance(error, AccountRefusedError):
                self._account_refused(str(error))  # the daemon's one line says it all
            else:
                if isinstance(error, StoreError):
                    self.metrics.store_error("campaign_run")
                log.error("campaign.failed", campaign=cid, error=str(error))
        finally:
            if self._runs.get(cid) is run:
                del self._runs[cid]
            for outcome in self._reconciled_ended:
                self._reconciled_ended[outcome] += _reconciled(run.stats, outcome)
            await self._forget_if_over(cid)

    async def _forget_if_over(self, cid: str) -> None:
        """Drop an ended campaign's per-campaign series: a long-lived daemon must not grow labels
        without bound. Its figures stay in the API (``GET /v1/campaigns/{id}``)."""
        if cid in self._runs:
            return
        with anyio.CancelScope(shield=True):
            try:
                record = await self.store.get_campaign(cid)
            except BulksendError:
                self.metrics.store_error("get_campaign")
                return
        over = (CampaignState.FINISHED, CampaignState.CANCELED)
        if cid in self._errors or (record is not None and record.state in over):
            self.metrics.forget_campaign(cid)

    async def submit_campaign(self, submission: Submission) -> CampaignInfo:
        if self._stopping:
            raise Conflict("the daemon is shutting down; submit again once it is back")
        data, cid = await submission.parse()
        await self._refuse_taken(cid)
        # Reserved in the store before the disk is touched: of two submissions of one id (in this
        # process or another sharing the store), one gets the folder and the other a 409.
        token = f"submit-{uuid.uuid4().hex}"
        if not await self.store.acquire_role(cid, _SUBMIT_ROLE, worker_id=token, ttl_s=_SUBMIT_RESERVATION_S):
            raise Conflict(f"campaign id {cid!r} is being submitted right now; choose another id")
        folder: Path | None = None
        try:
            await self._refuse_taken(cid)
            folder = await anyio.to_thread.run_sync(
                new_campaign_folder, self.config.data_dir / "campaigns", cid
            )
            filename = spooled_name(submission.recipients_filename)
            chunks = self._renewing(cid, token, submission.recipients)
            await spool_private(chunks, folder / filename)
            data["campaign"] = {**data["campaign"], "recipients": filename}
            # Outcomes stay inside the campaign's folder whatever the submission asked for.
            data["output"] = {"outcomes": "outcomes.jsonl"}
            loaded = await anyio.to_thread.run_sync(
                partial(
                    campaign_from_dict,
                    data,
                    base_dir=folder,
                    source=f"campaign {cid}",
                    files=self._submitted_files(),
                )
            )
            try:
                await self._check_sender(loaded.from_.email)
            except DomainRefused as refused:
                raise CampaignError(str(refused)) from None
            total = await anyio.to_thread.run_sync(count_recipients, loaded.recipients)
            await anyio.to_thread.run_sync(write_private, folder / "campaign.json", orjson.dumps(data))
            # The record exists before the reservation ends, so a later submission of this id
            # finds it; the run finds it too (same fingerprint) and goes on from it.
            await self.store.create_campaign(
                cid,
                {
                    "fingerprint": loaded.fingerprint,
                    "path": str(loaded.path),
                    "recipients": str(loaded.recipients),
                    "outcomes": str(loaded.output.outcomes),
                    "daemon_dir": str(folder),
                    "total": total,
                },
            )
        except BaseException as exc:
            if folder is not None:
                created = folder
                # Only the folder this request created, never a path built from the id alone.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(lambda: shutil.rmtree(created, ignore_errors=True))
            if isinstance(exc, CampaignError) and folder is not None:
                raise campaign_folder_error(exc, folder) from None
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self.store.release_role(cid, _SUBMIT_ROLE, worker_id=token)
        self._start_run(loaded, folder)
        log.info("campaign.submitted", campaign=cid, total=total)
        return await self._info(cid)

    async def _refuse_taken(self, cid: str) -> None:
        if cid in self._runs or await self.store.get_campaign(cid) is not None:
            raise Conflict(f"a campaign with id {cid!r} already exists; choose another id")

    async def _renewing(
        self, cid: str, token: str, recipients: AsyncIterator[bytes] | bytes
    ) -> AsyncIterator[bytes]:
        """The upload, renewing the id's reservation as it arrives (an upload may outlast it)."""
        if isinstance(recipients, bytes | bytearray):
            yield bytes(recipients)
            return
        renewed = anyio.current_time()
        async for chunk in recipients:
            if anyio.current_time() - renewed > _SUBMIT_RESERVATION_S / 4:
                if not await self.store.acquire_role(
                    cid, _SUBMIT_ROLE, worker_id=token, ttl_s=_SUBMIT_RESERVATION_S
                ):
                    # Lost while this upload stalled: another submission may own the id now.
                    raise Conflict(f"campaign id {cid!r} was taken while this upload stalled; submit again")
                renewed = anyio.current_time()
            yield chunk

    async def _info(self, cid: str) -> CampaignInfo:
        # Everything comes from the store's record, never from a clock read now: two reads of a
        # campaign agree on `created_at` (and the 201 answer with both).
        record = await self.store.get_campaign(cid)
        if record is None:
            raise NotFound(f"no campaign {cid!r}")
        stored = await self.store.counts(cid)
        counts = {s.value: 0 for s in RowState} | stored
        state: CampaignStatus = "failed" if cid in self._errors else record.state.value
        total = record.spec.get("total")
        if not isinstance(total, int) and record.admitted_all:
            # Submitted before the total was recorded: every row is admitted, so they are all.
            total = sum(stored.get(s.value, 0) for s in RowState)
        return CampaignInfo(
            id=cid,
            state=state,
            created_at=record.created_at,
            counts=counts,
            total=total if isinstance(total, int) else None,
            error=self._errors.get(cid),
            reason=record.state_reason or None,
        )

    async def list_campaigns(self) -> list[CampaignInfo]:
        out = []
        for record in sorted(await self.store.list_campaigns(), key=lambda r: r.created_at):
            if record.spec.get("kind") == "jobs":
                continue
            out.append(await self._info(record.id))
        return out

    async def get_campaign(self, campaign_id: str) -> CampaignInfo | None:
        record = await self.store.get_campaign(campaign_id)
        if record is None or record.spec.get("kind") == "jobs":
            return None
        return await self._info(campaign_id)

    async def outcomes(self, campaign_id: str, *, live: bool = False) -> AsyncIterator[dict[str, Any]]:
        if await self.store.get_campaign(campaign_id) is None:
            raise NotFound(f"no campaign {campaign_id!r}")
        async for line in outcome_lines(self.store, campaign_id, unfinished=_UNFINISHED, live=live):
            yield line

    async def _record_or_404(self, campaign_id: str) -> CampaignRecord:
        record = await self.store.get_campaign(campaign_id)
        if record is None or record.spec.get("kind") == "jobs":
            raise NotFound(f"no campaign {campaign_id!r}")
        return record

    async def pause(self, campaign_id: str) -> CampaignInfo:
        record = await self._record_or_404(campaign_id)
        if record.state is CampaignState.PAUSED:
            return await self._info(campaign_id)
        if record.state is not CampaignState.RUNNING or campaign_id in self._errors:
            raise Conflict(f"campaign {campaign_id!r} is {record.state.value}; only a running one can pause")
        await self.store.set_campaign_state(campaign_id, CampaignState.PAUSED)
        run = self._runs.get(campaign_id)
        if run is not None:
            run.request_stop(keep_tracking=True)
        return await self._info(campaign_id)

    async def resume(self, campaign_id: str) -> CampaignInfo:
        stream = await self.store.get_campaign(campaign_id)
        if stream is not None and stream.spec.get("kind") == "jobs" and "journal" not in stream.spec:
            return await self._resume_stream(stream)
        record = await self._record_or_404(campaign_id)
        if record.state is CampaignState.RUNNING and campaign_id not in self._errors:
            return await self._info(campaign_id)
        if record.state not in (CampaignState.PAUSED, CampaignState.RUNNING):
            raise Conflict(f"campaign {campaign_id!r} is {record.state.value}; it cannot resume")
        old = self._runs.pop(campaign_id, None)
        if old is not None:
            old.abort()  # a paused run only tracks; the new run tracks too
        await self.store.set_campaign_state(campaign_id, CampaignState.RUNNING)
        if record.state_reason:
            self.metrics.guardrail(campaign_id, paused=False)
        folder = Path(str(record.spec.get("daemon_dir")))
        self._start_run(self._load_submitted(folder), folder)
        return await self._info(campaign_id)

    async def cancel(self, campaign_id: str) -> CampaignInfo:
        record = await self._record_or_404(campaign_id)
        if record.state is CampaignState.CANCELED:
            return await self._info(campaign_id)
        if record.state is CampaignState.FINISHED:
            raise Conflict(f"campaign {campaign_id!r} is finished; there is nothing left to cancel")
        await self.store.set_campaign_state(campaign_id, CampaignState.CANCELED)
        # From here to the end, no checkpoint: either the run has not yet passed its
        # `after_sending` hook, which then sees `_canceling` and settles every row, or it has
        # (a paused run only tracking), and a new run of the canceled campaign settles them.
        self._canceling.add(campaign_id)
        run = self._runs.get(campaign_id)
        if run is not None and not run.sending_over.is_set():
            run.request_stop(keep_tracking=True)
        else:
            if run is not None:
                del self._runs[campaign_id]
                run.abort()  # it only tracks; the new run tracks too
            folder = Path(str(record.spec.get("daemon_dir")))
            self._start_run(self._load_submitted(folder), folder)
        return await self._info(campaign_id)

    async def _after_sending(self, run: CampaignRun) -> None:
        """A run sends nothing more: if its campaign is canceled, give every row its outcome."""
        cid = run.campaign.id
        record = await self.store.get_campaign(cid)
        # No checkpoint between this test and the return (see `cancel`).
        if cid in self._canceling or (record is not None and record.state is CampaignState.CANCELED):
            await settle_canceled(run, self._on_campaign_outcome)

    async def templates(self) -> list[str]:
        return sorted(self._templates)

    async def register_template(self, name: str, template: Mapping[str, Any]) -> None:
        compiled = self._compile(name, template, f"template {name}")
        try:
            await self._check_sender(compiled.campaign.from_.email)
        except DomainRefused as refused:
            raise CampaignError(str(refused)) from None
        folder = self.config.data_dir / "templates"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{safe_filename(name)}.json").write_bytes(orjson.dumps(dict(template)))
        self._templates[name] = compiled
        log.info("template.registered", template=name)

    async def health(self) -> dict[str, bool]:
        checks: dict[str, bool] = {}
        try:
            await self.store.counts("__readyz__")
            checks["store"] = True
        except Exception:  # any failure at all means "not ready"
            checks["store"] = False
            self.metrics.store_error("health_check")
        for source in self.sources:
            checks[f"source:{source.name}"] = await source.healthy()
        if self.publisher is not None:
            checks[f"results:{self.publisher.name}"] = await self.publisher.healthy()
            checks["results_backlog"] = len(self.results_backlog) <= self.results_backlog_unready
        checks["tem"] = self._tem_refused is None
        self.metrics.set_ready(all(checks.values()))
        return checks

    async def dead_letters(self) -> dict[str, Any]:
        return self.dead_letter_book.as_json([s.name for s in self.sources])

    async def overview(self) -> Overview:
        budget = self.limiter.budget if isinstance(self.limiter, FlowLimiter) else None
        zero = {s.value: 0 for s in RowState}
        return Overview(
            flow=flow_stats(self.limiter),
            rate_per_s=self.rate_per_s,
            retry_tokens_max=budget.max_tokens if budget is not None else None,
            in_flight=self._in_flight(),
            tracker_backlog=self._tracker_backlog,
            queue_lag={s.name: self._queue_lag.get(s.name) for s in self.sources},
            job_streams=[
                JobStreamInfo(name, t.campaign.id, zero | self._job_counts.get(t.campaign.id, {}))
                for name, t in sorted(self._templates.items())
            ],
        )

    async def health_details(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.publisher is not None:
            details["results_backlog"] = len(self.results_backlog)
        if self._tem_refused is not None:
            details["tem"] = self._tem_refused
        paused = dict(self._held)
        for cid, run in self._runs.items():
            if run.paused_reason:
                paused[cid] = run.paused_reason
        if paused:
            details["guardrails"] = paused
        return details
