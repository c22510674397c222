"""``bulksend send CAMPAIGN.toml``: run a campaign to the end with live progress and a summary.

Exit codes: 0 every recipient has its final outcome; 1 the campaign or the settings are wrong
(nothing was sent); 2 TEM refused the account (key, permissions, quota); 3 the run ended with
recipients still open (retries ran out, or tracking gave up early) — rerun to resume;
4 the state store lost sends its journal recorded (nothing was sent) — rerun with
``--reconcile-all``; 130 stopped by Ctrl-C / SIGTERM — rerun to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import shlex
import socket
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import structlog
from rich.console import Console
from rich.text import Text

from bulksend.campaign.load import Campaign, load_campaign
from bulksend.campaign.preflight import check_template_variables
from bulksend.campaign.preview import PreviewWriter
from bulksend.campaign.recipients import (
    CSV_SUFFIXES,
    RECIPIENT_SUFFIXES,
    BadRow,
    RecipientInput,
    iter_recipients,
)
from bulksend.campaign.rejects import RejectsWriter
from bulksend.campaign.render import Rejection, Renderer
from bulksend.campaign.validate import check_address, normalize_address
from bulksend.cli.args import configure_send as configure
from bulksend.cli.display import print_error, print_text
from bulksend.cli.html_report import campaign_report, record_campaign_timeline
from bulksend.cli.progress import PLAIN_EVERY_S, show_progress
from bulksend.cli.runtime import stop_on_signals, uvloop_available
from bulksend.cli.sample import SAMPLE_PREFIX, SampleResult, render_samples, send_samples
from bulksend.cli.summary import print_summary
from bulksend.deliverability.before import before_sending
from bulksend.deliverability.preflight import DEFAULT_MONTHLY_QUOTA
from bulksend.errors import BulksendError, CampaignError, ConfigError, StateLostError, first_bulksend_error
from bulksend.events.router import EventRouter
from bulksend.log import configure_logging, register_secret
from bulksend.pipeline.account import account_limiter, shared_limiter_client
from bulksend.pipeline.dispatch import AccountRefusedError
from bulksend.pipeline.flow import flow_stats
from bulksend.pipeline.limiter import RateLimiter
from bulksend.pipeline.nested import NestedLimiter
from bulksend.pipeline.presence import worker_presence
from bulksend.pipeline.run import CampaignRun, RunResult, attachments_of, correlation_of
from bulksend.pipeline.stats import RunStats
from bulksend.pipeline.suppress import open_suppression_list
from bulksend.settings import (
    DEFAULT_LIMITER_PREFIX,
    AccountSettings,
    Bound,
    SendingSettings,
    load_account_settings,
    redact_url,
)
from bulksend.sinks.outcomes import read_outcomes
from bulksend.sinks.summary import Summary, summarize_outcomes, tally_line
from bulksend.store import open_store
from bulksend.store.base import RowState
from bulksend.store.rules import duplicate_reason
from bulksend.tem.client import TemClient
from bulksend.tem.config import TemSettings

if TYPE_CHECKING:
    import redis.asyncio

    from bulksend.events.sqs import SqsEventSettings
    from bulksend.metrics import Metrics

__all__ = [
    "DryRunOptions",
    "RunOptions",
    "configure",
    "count_rows",
    "dry_run",
    "run",
    "run_campaign",
    "sample_run",
]

log = structlog.get_logger("bulksend.send")

EXIT_OK, EXIT_CONFIG, EXIT_ACCOUNT, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_STATE_LOST = 4


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    console = Console(stderr=True, soft_wrap=True)
    try:
        check_arguments(args)
        campaign = load_campaign(args.campaign, overrides=sending_overrides(args))
        campaign = _with_overrides(campaign, outcomes=args.outcomes)
        if args.dry_run or args.preview is not None:
            return dry_run(campaign, console=console, options=_dry_run_options(args, campaign))
        settings = TemSettings.load(
            api_url=args.api_url, project_id=args.project_id, region=args.region, profile=args.profile
        )
        account = load_account_settings(
            settings_file=args.settings, store_url=args.store, redis_url=args.shared_limiter
        )
    except (CampaignError, ConfigError) as exc:
        print_error(console, exc)
        return EXIT_CONFIG
    store_url = account.store_url
    worker_id = None
    if args.worker or args.worker_id:
        if not store_url or "://" not in store_url or store_url.startswith("sqlite"):
            print_error(
                console,
                "--worker needs a store shared by every worker: --store postgresql://user@host/db",
            )
            return EXIT_CONFIG
        if args.reconcile_all:
            # Its adoptions are not fenced by leases: one process must do it while no worker runs.
            print_error(
                console,
                "--reconcile-all cannot run as one of several workers: run it once without --worker, "
                "with no worker running, then start the workers",
            )
            return EXIT_CONFIG
        if args.prefetch is not None and args.prefetch < 0:
            print_error(console, f"--prefetch must be 0 or more, got {args.prefetch}")
            return EXIT_CONFIG
        worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    try:
        events = events_settings(campaign, account)
    except ConfigError as exc:
        print_error(console, exc)
        return EXIT_CONFIG
    options = RunOptions(
        resume_command=resume_command(args),
        events=events,
        progress=not args.no_progress,
        progress_json=args.log_format == "json",
        grace_s=args.grace_s,
        store_url=store_url,
        worker_id=worker_id,
        shared_limiter_url=account.redis_url,
        limiter_prefix=account.limiter_prefix,
        account_rate_per_s=account.account_rate_per_s,
        lease_s=args.lease_s,
        prefetch=args.prefetch,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        reconcile_all=args.reconcile_all,
        suppression_url=account.suppression_url,
        resume_paused=args.resume_paused,
        force=args.force,
        monthly_quota=args.monthly_quota or None,
    )
    if args.sample is not None:
        return sample_run(
            campaign, settings, to=args.to.strip(), count=args.sample, console=console, options=options
        )
    return run_campaign(campaign, settings, console=console, options=options)


def _problem(flag: str, value: object, bound: Bound) -> None:
    """Raise a ConfigError naming ``flag`` when ``value`` is outside ``bound``."""
    problem = bound.problem(value)
    if problem is not None:
        raise ConfigError(f"{flag} {problem}")


_AT_LEAST_ONE = Bound(1, integer=True)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse option values and combinations that cannot work, saying what to change (ConfigError)."""
    for flag, value, key in (
        ("--rate", args.rate, "rate_per_s"),
        ("--concurrency", args.concurrency, "concurrency"),
    ):
        if value is not None:
            _problem(flag, value, SendingSettings.BOUNDS[key])
    for flag in ("preview", "sample"):
        if getattr(args, flag) is not None:
            _problem(f"--{flag}", getattr(args, flag), _AT_LEAST_ONE)
    if args.preview_dir is not None and args.preview is None:
        raise ConfigError("--preview-dir needs --preview N (how many emails to write)")
    if args.rejects is not None and not args.dry_run:
        raise ConfigError("--rejects is where --dry-run writes the rejected rows: add --dry-run")
    if (args.sample is None) != (args.to is None):
        raise ConfigError(
            "--sample N and --to ADDRESS go together: the first N valid rows are sent to ADDRESS only"
        )
    if args.sample is None:
        return
    for flag in ("dry_run", "preview", "worker", "reconcile_all"):
        if getattr(args, flag) not in (None, False):
            raise ConfigError(f"--sample sends to --to only; run --{flag.replace('_', '-')} on its own")
    reason = check_address(args.to.strip())
    if reason is not None:
        raise ConfigError(f"--to: {reason}; give the address that should receive the samples")


def sending_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The campaign's [sending] keys that ``--rate`` and ``--concurrency`` replace."""
    overrides: dict[str, Any] = {}
    if args.rate is not None:
        overrides["sending.rate_per_s"] = args.rate
    if args.concurrency is not None:
        overrides["sending.concurrency"] = args.concurrency
    return overrides


def _with_overrides(campaign: Campaign, *, outcomes: Path | None) -> Campaign:
    if outcomes is not None:
        campaign = dataclasses.replace(
            campaign, output=dataclasses.replace(campaign.output, outcomes=outcomes)
        )
    return campaign


def run_campaign(
    campaign: Campaign,
    settings: TemSettings,
    *,
    serve: Callable[[], AbstractAsyncContextManager[str]] | None = None,
    console: Console,
    options: RunOptions | None = None,
    before_run: Callable[[CampaignRun], None] | None = None,
) -> int:
    """Run ``campaign`` against the API in ``settings``; prints progress and the summary.

    ``serve``, when given, is entered inside the run's event loop and yields the API URL to use
    instead of ``settings.api_url`` (the demo runs its sandbox that way, in-process).
    """
    register_secret(settings.secret_key.reveal())
    options = options or RunOptions()
    try:
        check_template_variables(campaign)
    except CampaignError as exc:
        print_error(console, exc)
        return EXIT_CONFIG
    total = options.total_rows if options.total_rows is not None else count_rows(campaign.recipients)
    options = dataclasses.replace(options, total_rows=total)
    remind_unsubscribe(campaign, total, console)
    holder: dict[str, Any] = {}
    try:
        result = anyio.run(
            _main,
            campaign,
            settings,
            serve,
            options,
            holder,
            before_run,
            backend_options={"use_uvloop": uvloop_available()},
        )
    except (BulksendError, BaseExceptionGroup) as raised:
        return _exit_code_of(raised, console)
    code = _report(result, console, resume=options.resume_command or resume_command_of(campaign.path))
    campaign_report(campaign, result.outcomes_path)
    return code


def _exit_code_of(raised: BaseException, console: Console) -> int:
    """Print the bulksend error a run raised (alone or in a group) and give its exit code;
    anything else is raised again."""
    found = first_bulksend_error(raised)
    if found is None:
        raise raised
    if isinstance(found, StateLostError):
        print_error(console, found, label="refused")
        return EXIT_STATE_LOST
    if isinstance(found, AccountRefusedError):
        print_error(console, found, label="stopped")
        print_text(console, "Nothing was lost: rerun the same command to resume once this is fixed.")
        return EXIT_ACCOUNT
    print_error(console, found)
    return EXIT_CONFIG


UNSUBSCRIBE_REMINDER_ROWS: Final = 5_000
"""More recipients than this, and no List-Unsubscribe header: ``bulksend send`` prints a reminder."""


def remind_unsubscribe(campaign: Campaign, rows: int, console: Console) -> None:
    """One line on stderr when a large campaign gives its recipients no way to unsubscribe."""
    if rows <= UNSUBSCRIBE_REMINDER_ROWS or campaign.unsubscribe is not None:
        return
    if any(k.lower() == "list-unsubscribe" for k, _ in campaign.headers):
        return
    print_text(
        console,
        f"reminder: {rows:,} recipients and no List-Unsubscribe header. TEM is for transactional email "
        "(newsletters and mass marketing break Scaleway's anti-spam policy); if these people can opt "
        "out, add an [unsubscribe] table (one-click links, docs/deliverability.md) or "
        'headers = { "List-Unsubscribe" = "<https://…>" } to [campaign].',
    )


def count_rows(path: Path) -> int:
    """Recipients in the file, counted cheaply as lines (minus a CSV header): blank lines and
    values spanning lines make it a little high. For the ETA and the unsubscribe reminder."""
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
    return max(0, n - 1) if path.suffix.lower() in CSV_SUFFIXES else n


@dataclass(frozen=True)
class RunOptions:
    """How to run a campaign, beyond the campaign file itself."""

    progress: bool = True
    progress_every_s: float = PLAIN_EVERY_S
    """Off a terminal: seconds between two progress lines."""
    progress_json: bool = False
    """Off a terminal: progress lines as JSON log lines (``--log-format json``)."""
    grace_s: float = 30.0
    store_url: str | None = None
    """Overrides the campaign's store: a SQLite path, or ``postgresql://…`` to share state."""
    worker_id: str | None = None
    """Scale-out: this process is one of several workers on the campaign (needs a shared store)."""
    shared_limiter_url: str | None = None
    """``redis://…``: one rate limit for every process of the account."""
    limiter_prefix: str = DEFAULT_LIMITER_PREFIX
    """The shared limiter's key is ``<prefix>:<project_id>:<region>``."""
    account_rate_per_s: float | None = None
    """The account's rate (account settings); the campaign's ``rate_per_s`` is a ceiling inside it.
    None: the campaign's rate is the account's, as before account settings existed."""
    lease_s: float = 30.0
    prefetch: int | None = None
    """Rows claimed ahead of the sends (scale-out); None: 4 × the campaign's concurrency."""
    metrics_port: int | None = None
    """Serve Prometheus metrics on this port (0: any free port; None: no metrics)."""
    metrics_host: str = "127.0.0.1"
    reconcile_all: bool = False
    """Look every unfinished recipient up at TEM before sending (after a loss of state)."""
    suppression_url: str | None = None
    """Where the suppression list lives (None: see bulksend.pipeline.suppress)."""
    resume_paused: bool = False
    """Send again a campaign that is paused (``--resume-paused``)."""
    total_rows: int | None = None
    """Recipients in the file (:func:`count_rows`), for the ETA; None: counted when the run starts."""
    resume_command: str | None = None
    """The command that resumes the run, for the summary of a stopped run (default
    ``bulksend send CAMPAIGN``)."""
    events: SqsEventSettings | None = None
    """The queue of TEM's webhook events, when the campaign tracks by events."""
    force: bool = False
    """Send even from a domain whose reputation score is under 50."""
    monthly_quota: int | None = DEFAULT_MONTHLY_QUOTA
    """The project's monthly quota, to warn past 70 % of it; None: no check."""


def events_settings(campaign: Campaign, account: AccountSettings) -> SqsEventSettings | None:
    """The queue of webhook events a campaign with ``tracking.mode = "events"`` reads (None in
    polling mode); :class:`ConfigError` when that mode has no queue configured."""
    if campaign.tracking.mode != "events":
        return None
    if not account.events_queue:
        raise ConfigError(
            'tracking.mode = "events" needs the queue TEM\'s events arrive on: set BULKSEND_EVENTS_QUEUE '
            "(or events_queue in the settings file) to its name or URL, and the queue's SQS credentials "
            "in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (see `bulksend webhooks setup`)"
        )
    from bulksend.events.sqs import SqsEventSettings

    settings = SqsEventSettings(queue=account.events_queue)
    if account.events_sqs_url or account.events_sqs_region:
        settings = dataclasses.replace(
            settings,
            url=account.events_sqs_url or settings.url,
            region=account.events_sqs_region or settings.region,
        )
    settings.credentials()  # missing credentials are told now, not after the first sends
    return settings


async def _main(
    campaign: Campaign,
    settings: TemSettings,
    serve: Callable[[], AbstractAsyncContextManager[str]] | None,
    options: RunOptions,
    holder: dict[str, Any],
    before_run: Callable[[CampaignRun], None] | None,
) -> RunResult:
    if serve is None:
        return await _run(campaign, settings, options, holder, before_run)
    async with serve() as api_url:
        return await _run(
            campaign, dataclasses.replace(settings, api_url=api_url), options, holder, before_run
        )


def campaign_limiter(
    campaign: Campaign,
    settings: TemSettings,
    options: RunOptions,
    shared: redis.asyncio.Redis | None = None,
) -> RateLimiter:
    """The account's limiter, with the campaign's own ``rate_per_s`` as a ceiling inside it when the
    account's rate comes from the account settings; ``shared``: the Redis client of
    ``options.shared_limiter_url``, owned by the caller."""
    if options.shared_limiter_url is not None and shared is None:
        # Without it the run would pace itself alone, against the account's other processes.
        raise ValueError("options.shared_limiter_url is set: pass its client (shared_limiter_client)")
    account_rate = options.account_rate_per_s or campaign.sending.rate_per_s
    limiter = account_limiter(
        account_rate,
        shared=shared,
        project_id=settings.project_id,
        region=settings.region,
        prefix=options.limiter_prefix,
    )
    if campaign.sending.rate_per_s < account_rate:
        return NestedLimiter(limiter, campaign.sending.rate_per_s)
    return limiter


@dataclass
class _WorkerMetrics:
    """The daemon's Prometheus series, fed by one ``send`` run (``--metrics-port``)."""

    metrics: Metrics
    stats: RunStats
    limiter: RateLimiter

    def on_response(self, kind: str, status: int, elapsed_s: float) -> None:
        self.stats.on_response(kind, status, elapsed_s)
        self.metrics.on_api_response(kind, status, elapsed_s)

    async def on_outcome(self, campaign_id: str, outcomes: Sequence[tuple[int, str]]) -> None:
        for _row_id, status in outcomes:
            self.metrics.observe_outcome(campaign_id, status)

    def refresh(self) -> None:
        """Copy the gauges whose values live in the run (called at each scrape)."""
        self.metrics.set_limiter_rate(self.limiter.rate_per_s)
        self.metrics.set_flow(flow_stats(self.limiter))
        self.metrics.set_in_flight(self.stats.in_flight)
        self.metrics.set_backlog(max(0, self.stats.submitted - self.stats.final))


def _worker_metrics(stats: RunStats, limiter: RateLimiter) -> _WorkerMetrics:
    # Imported here: prometheus-client is only needed by runs that serve metrics.
    from bulksend.metrics import Metrics

    return _WorkerMetrics(Metrics(), stats, limiter)


async def _run(
    campaign: Campaign,
    settings: TemSettings,
    options: RunOptions,
    holder: dict[str, Any],
    before_run: Callable[[CampaignRun], None] | None,
) -> RunResult:
    stats = RunStats()
    stats.total_rows = (
        options.total_rows
        if options.total_rows is not None
        else await anyio.to_thread.run_sync(count_rows, campaign.recipients)
    )
    store = open_store(options.store_url or campaign.store_path)
    await store.open()
    suppression = store
    url = options.shared_limiter_url
    shared = shared_limiter_client(url) if url is not None else None
    try:
        suppression = await open_suppression_list(
            store, suppression_url=options.suppression_url, store_chosen=options.store_url is not None
        )
        limiter = campaign_limiter(campaign, settings, options, shared)
        metrics = _worker_metrics(stats, limiter) if options.metrics_port is not None else None
        async with TemClient(
            settings,
            timeout_s=campaign.sending.timeout_s,
            # The pool is what bounds requests in flight to `concurrency` (plus two connections
            # so that tracking never queues behind sends).
            limit_per_host=campaign.sending.concurrency + 2,
            on_response=stats.on_response if metrics is None else metrics.on_response,
        ) as tem:
            router = EventRouter() if options.events is not None else None
            runner = CampaignRun(
                campaign,
                store=store,
                tem=tem,
                limiter=limiter,
                project_id=settings.project_id,
                stats=stats,
                grace_s=options.grace_s,
                worker_id=options.worker_id,
                lease_s=options.lease_s,
                prefetch=options.prefetch,
                on_outcome=None if metrics is None else metrics.on_outcome,
                suppression=suppression,
                resume_paused=options.resume_paused,
                events=router,
            )
            holder["runner"] = runner
            if before_run is not None:
                before_run(runner)
            await before_sending(tem, store, campaign, options, stats.total_rows, suppression=suppression)
            presence = worker_presence(
                store, worker_id=options.worker_id, campaign_id=campaign.id, stats=stats
            )
            async with presence, anyio.create_task_group() as tg:
                tg.start_soon(
                    functools.partial(
                        stop_on_signals,
                        runner.request_stop,
                        runner.abort,
                        stopping=lambda: runner.stopping,
                        notice="\nstopping: finishing in-flight requests (Ctrl-C again to stop now)\n",
                    )
                )
                if metrics is not None and options.metrics_port is not None:
                    from bulksend.metrics_server import serve_metrics

                    await tg.start(
                        functools.partial(
                            serve_metrics,
                            metrics.metrics,
                            host=options.metrics_host,
                            port=options.metrics_port,
                            refresh=metrics.refresh,
                        )
                    )
                if options.progress:
                    tg.start_soon(
                        functools.partial(
                            show_progress,
                            stats,
                            limiter,
                            waiting=runner.waiting_for,
                            plain_every_s=options.progress_every_s,
                            json_lines=options.progress_json,
                        )
                    )
                if options.events is not None and router is not None:
                    # aiobotocore is the optional `sqs` extra: imported only by who reads a queue.
                    from bulksend.events.sqs import SqsEventSource

                    tg.start_soon(SqsEventSource(options.events, router.deliver).run)
                if options.worker_id is None:  # a worker sees only its share of the campaign
                    tg.start_soon(record_campaign_timeline, campaign, stats, limiter)
                reconciled = await runner.reconcile_all() if options.reconcile_all else None
                if reconciled is not None and reconciled.interrupted:
                    result = RunResult(
                        campaign.id,
                        complete=False,
                        stopped=True,
                        already_finished=False,
                        counts=await store.counts(campaign.id),
                        stats=stats,
                        notes=["stopped during --reconcile-all: nothing was sent; run it again to finish."],
                    )
                    tg.cancel_scope.cancel()
                    return result
                result = await runner.run()
                tg.cancel_scope.cancel()
            result.notes.extend(flow_notes(limiter, stats))
            if reconciled is not None:
                result.notes.insert(
                    0,
                    f"reconciled before sending: {reconciled.listed:,} emails listed at TEM in "
                    f"{reconciled.list_calls:,} list calls; {reconciled.adopted:,} recipients TEM already "
                    f"had were not sent again ({reconciled.duplicates:,} had been emailed more than once "
                    "before).",
                )
            return result
    finally:
        with anyio.CancelScope(shield=True):
            if shared is not None:
                await shared.aclose()
            await store.close()
            if suppression is not store:
                await suppression.close()


def flow_notes(limiter: RateLimiter, stats: RunStats) -> list[str]:
    """What flow control did, for the summary: the limit found, the outage waited out."""
    flow = flow_stats(limiter)
    if flow is None:
        return []
    notes: list[str] = []
    if flow.found_limit_per_s is not None and stats.throttled:
        share = stats.throttled / max(1, stats.calls())
        notes.append(
            f"found the account's limit at ~{_about(flow.found_limit_per_s)}/s "
            f"({stats.throttled:,} requests throttled, {share:.1%} of all)"
        )
    if flow.circuit_opened:
        notes.append(
            f"TEM failed {flow.failures:,} requests in a row or in a bad stretch: sending paused "
            f"{flow.circuit_opened:,} times while probing until it answered again"
        )
    if flow.retries_waited:
        notes.append(f"{flow.retries_waited:,} retries waited for the retry budget (20 % of requests)")
    return notes


def _about(rate: float) -> str:
    """Two significant figures: 197.3 → "200", 48.6 → "49", 1013 → "1,000"."""
    if rate <= 0:
        return "0"
    digits = max(0, 1 - math.floor(math.log10(rate)))
    rounded = round(rate, 1 - math.floor(math.log10(rate)))
    return f"{rounded:,.{digits}f}" if digits else f"{rounded:,.0f}"


_RESUME_OPTIONS: Final = (
    ("--outcomes", "outcomes"),
    ("--store", "store"),
    ("--settings", "settings"),
    ("--worker-id", "worker_id"),
    ("--shared-limiter", "shared_limiter"),
    ("--api-url", "api_url"),
    ("--project-id", "project_id"),
    ("--region", "region"),
    ("--profile", "profile"),
)
"""The options of ``bulksend send`` that say which campaign state and account a run used."""


def resume_command_of(campaign: Path, *options: str) -> str:
    """``bulksend send CAMPAIGN [OPTIONS…]``, quoted for a shell."""
    return shlex.join(["bulksend", "send", str(campaign), *options])


def resume_command(args: argparse.Namespace) -> str:
    """The command that resumes this run: the same campaign file, store, outcomes and account
    (a URL's password masked: keep it in the environment)."""
    words: list[str] = ["--worker"] if args.worker else []
    for flag, name in _RESUME_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            words += [flag, redact_url(str(value))]
    return resume_command_of(args.campaign, *words)


def _stopped_notes(result: RunResult, total_rows: int | None, resume: str) -> tuple[int, list[str]]:
    """For a run that ended before every row was final: the rows of the file never read, and
    what was read, sent and left, with the command that resumes."""
    counts = result.counts
    read = sum(counts.get(state.value, 0) for state in RowState)
    submitted = counts.get("submitted", 0)
    sent = submitted + counts.get(RowState.FINAL.value, 0)
    unsent = counts.get("pending", 0) + counts.get("sending", 0)
    not_reached = 0 if result.admitted_all or total_rows is None else max(0, total_rows - read)
    of_file = "" if result.admitted_all or total_rows is None else f" of about {total_rows:,}"
    line = f"stopped before the end: read {read:,}{of_file} rows; {sent:,} submitted to TEM"
    if submitted:
        line += f" ({submitted:,} not final yet: tracking resumes)"
    if unsent:
        line += f"; {unsent:,} read but not sent yet"
    if not_reached:
        line += f"; about {not_reached:,} rows not reached (never read)"
    if result.paused:
        # Running it again only tracks: sending again is an explicit act.
        then = f"Check the recipient list, then send the rest with: {resume} --resume-paused"
    else:
        then = f"To resume, run the same command again: {resume}"
    return not_reached, [line + ".", f"{then} (nobody already submitted is sent again)."]


def _report(result: RunResult, console: Console, *, resume: str) -> int:
    stats = result.stats
    counts = result.counts
    title = f"campaign {result.campaign_id}"
    summary = Summary(title)
    if result.already_finished:
        summary.notes.append("This campaign had already finished: nothing was sent.")
    for key, n in counts.items():
        if key.startswith("status:"):
            summary.by_status[key.removeprefix("status:")] += n
        elif key in ("rejected", "skipped"):
            summary.by_status[key] += n
        elif key in ("pending", "sending", "submitted"):
            summary.by_status["unknown"] += n
    if not result.complete:
        not_reached, stopped = _stopped_notes(result, stats.total_rows, resume)
        if not_reached:
            summary.by_status["not reached"] = not_reached  # the total is then the file's
    full = result.summary
    if full is None and result.outcomes_path is not None and result.outcomes_path.exists():
        # An already finished campaign: its outcomes file is the record of flags and reasons.
        full = summarize_outcomes(title, read_outcomes(result.outcomes_path))
    if full is not None:
        summary.by_flag, summary.reasons, summary.examples = full.by_flag, full.reasons, full.examples
    if not result.already_finished:
        by_kind: dict[str, int] = {}
        for (kind, _status), n in stats.api_calls.items():
            by_kind[kind] = by_kind.get(kind, 0) + n
        summary.api_calls = by_kind
        summary.throttled = stats.throttled
        summary.wall_time_s = stats.elapsed_s
        summary.sent_this_run = stats.submitted_this_run
        summary.send_rate_per_s = stats.submit_rate_per_s()
        summary.send_span_s = stats.send_span_s
    if result.outcomes_path is not None:
        lines = f" ({result.outcome_lines:,} lines)" if result.outcome_lines else ""
        summary.notes.append(f"outcomes: {result.outcomes_path}{lines}")
    summary.notes.extend(result.notes)
    if not result.complete:
        summary.notes.extend(stopped)
    print_summary(summary, Console())
    if result.complete:
        return EXIT_OK
    # A campaign that paused itself was not interrupted: recipients are still open (3).
    return EXIT_INTERRUPTED if result.stopped and not result.paused else EXIT_INCOMPLETE


@dataclass(frozen=True)
class DryRunOptions:
    """What a dry run writes besides its summary."""

    rejects: Path | None = None
    """Where the rejected rows go; None: no file."""
    preview: int = 0
    """How many rendered emails to write as ``.eml`` files."""
    preview_dir: Path | None = None
    whole_file: bool = True
    """Render every row and print the summary (``--dry-run``); False: only until the previews
    are written (``--preview`` alone)."""


def default_rejects_path(campaign: Campaign) -> Path:
    """``<campaign id>.rejected.csv`` (or the recipient file's own suffix) next to the outcomes file."""
    return campaign.output.outcomes.parent / f"{campaign.id}.rejected{campaign.recipients.suffix.lower()}"


def default_preview_dir(campaign: Campaign) -> Path:
    """``<campaign id>-preview`` next to the campaign file."""
    folder = campaign.path if campaign.path.is_dir() else campaign.path.parent
    return folder / f"{campaign.id}-preview"


def _dry_run_options(args: argparse.Namespace, campaign: Campaign) -> DryRunOptions:
    rejects = None
    if args.dry_run:
        rejects = args.rejects or default_rejects_path(campaign)
        wanted = campaign.recipients.suffix.lower() in CSV_SUFFIXES
        suffix = rejects.suffix.lower()
        if (suffix in CSV_SUFFIXES) != wanted or suffix not in RECIPIENT_SUFFIXES:
            raise ConfigError(
                f"--rejects {str(rejects)!r}: the rejected rows are written in the recipients file's "
                f"format; name the file with a {campaign.recipients.suffix} suffix"
            )
    return DryRunOptions(
        rejects=rejects,
        preview=args.preview or 0,
        preview_dir=args.preview_dir or default_preview_dir(campaign),
        whole_file=args.dry_run,
    )


def dry_run(campaign: Campaign, *, console: Console, options: DryRunOptions | None = None) -> int:
    """Render and validate every recipient without sending; report what would be rejected, write
    the rejected rows and the previews ``options`` ask for.

    Raises :class:`CampaignError` when the campaign is refused before any row is read.
    """
    options = options or DryRunOptions()
    check_template_variables(campaign)
    if options.whole_file:
        remind_unsubscribe(campaign, count_rows(campaign.recipients), console)
    renderer = Renderer(campaign, project_id="00000000-0000-4000-8000-000000000000")
    summary = Summary(f"dry run of campaign {campaign.id} (nothing sent)")
    previews = None
    if options.preview:
        previews = PreviewWriter(options.preview_dir or default_preview_dir(campaign), options.preview)
    rejects = RejectsWriter(campaign.recipients, options.rejects) if options.rejects else None
    seen: dict[str, int] = {}
    try:
        for rec in iter_recipients(campaign.recipients):
            if not options.whole_file and previews is not None and previews.full:
                break
            status, reason = _dry_outcome(campaign, renderer, rec, seen, previews)
            if rejects is not None:
                rejects.row(rec.row, reason if status == "rejected" else None)
            tally_line(summary, {"row": rec.row, "status": status, "reason": reason, "email": rec.email})
        rejected = rejects.finish() if rejects is not None else 0
    except BaseException:
        if rejects is not None:
            rejects.discard()
        raise
    if previews is not None:
        where = f"{len(previews.written):,} emails as .eml files in {previews.folder}"
        summary.notes.append(f"preview: {where}" if previews.written else "preview: no row renders")
    if rejects is not None and rejected:
        summary.notes.append(
            f"rejected rows: {rejects.target} ({rejected:,}, with a reason column); fix them there and "
            "send that file as a campaign of its own"
        )
    if options.whole_file:
        print_summary(summary, Console(), always=())
    else:
        out = Console()
        for note in summary.notes:
            out.print(Text(note), soft_wrap=not out.is_terminal)
    return EXIT_OK


def _dry_outcome(
    campaign: Campaign,
    renderer: Renderer,
    rec: RecipientInput | BadRow,
    seen: dict[str, int],
    previews: PreviewWriter | None,
) -> tuple[str, str | None]:
    """``(status, reason)`` a row would get: rejected, skipped (a duplicate) or would send."""
    if isinstance(rec, BadRow):
        return "rejected", rec.reason
    result = renderer.render(
        rec.email,
        rec.name,
        rec.vars,
        correlation=correlation_of(campaign.id, rec.row),
        attachments=attachments_of(rec.vars),
    )
    if isinstance(result, Rejection):
        return "rejected", result.reason
    first = seen.setdefault(normalize_address(rec.email), rec.row)
    if first != rec.row:
        return "skipped", duplicate_reason(first)
    if previews is not None:
        previews.add(rec.row, result)
    return "would send", None


def sample_run(
    campaign: Campaign,
    settings: TemSettings,
    *,
    to: str,
    count: int,
    console: Console,
    options: RunOptions,
) -> int:
    """``--sample N --to ADDRESS``: the first N valid rows sent to ADDRESS, nothing recorded."""
    register_secret(settings.secret_key.reveal())
    try:
        check_template_variables(campaign)
        samples = render_samples(campaign, to=to, count=count, project_id=settings.project_id)
    except CampaignError as exc:
        print_error(console, exc)
        return EXIT_CONFIG
    if not samples:
        print_error(console, "no row of the recipients file renders: run --dry-run to see why")
        return EXIT_CONFIG

    async def main() -> SampleResult:
        url = options.shared_limiter_url
        shared = shared_limiter_client(url) if url is not None else None
        try:
            limiter = campaign_limiter(campaign, settings, options, shared)
            return await send_samples(campaign, settings, samples, to=to, limiter=limiter, stats=RunStats())
        finally:
            if shared is not None:
                with anyio.CancelScope(shield=True):
                    await shared.aclose()

    try:
        result = anyio.run(main, backend_options={"use_uvloop": uvloop_available()})
    except (BulksendError, BaseExceptionGroup) as raised:
        return _exit_code_of(raised, console)
    out = Console()
    rows = ", ".join(map(str, result.sent))
    print_text(
        out,
        f"sent {len(result.sent):,} of {count:,} samples of campaign {campaign.id} to {to}"
        + (f" (rows {rows})" if rows else "")
        + f", subject prefixed {SAMPLE_PREFIX.strip()!r}. Nothing was recorded: "
        f"`bulksend send {campaign.path}` still sends to every recipient.",
    )
    if result.rendered < count:
        print_text(out, f"only {result.rendered:,} rows render: run --dry-run to see why the others do not")
    for row, reason in result.not_sent:
        print_text(out, f"row {row}: not sent: {reason}")
    return EXIT_OK if not result.not_sent else EXIT_INCOMPLETE
