"""Job streams: queue messages → durable outbox rows → acknowledgement → the shared send pipeline.

Each registered template is one long-lived "job campaign" (``jobs.<template>``) in the store. A
job's row number is a 63-bit hash of its idempotency key, and the key is the row's dedupe key, so a
redelivered or republished job lands on the row it already has: admission is idempotent without a
lookup and without coordination between daemons.

Order for every message: (1) parse and validate — anything wrong is dead-lettered with the
reason; (2) admit the batch in one shielded commit; (3) only then acknowledge each message (a
crash before this redelivers, and step 2 absorbs the redelivery); (4) queue the new rows for
sending, and stop pulling while the queue is full (backpressure).

No message can stop the intake. The line between "the message's fault" and "not":

- any exception while parsing, validating or rendering one message, expected or not, is its
  fault: it is dead-lettered with the reason (kind ``internal`` when unexpected);
- an admission failing with a store or OS error is an outage: the batch's unsettled messages are
  released (they come back, nothing is lost) and pulling resumes after a backoff;
- any other admission error is retried one message at a time, and only a message whose own
  admission still fails is dead-lettered;
- cancellation is never caught; an unexpected error outside any one message is an outage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
import structlog
from anyio.abc import ObjectSendStream

from bulksend.brokers.base import Delivery, JobSource
from bulksend.campaign.load import Campaign, campaign_from_dict
from bulksend.campaign.render import Rejection, Renderer, RenderPacer
from bulksend.errors import BulksendError, CampaignError, StoreError
from bulksend.jobs.format import JobError, SendJob, parse_job
from bulksend.metrics import Metrics
from bulksend.pipeline.dispatch import SendItem
from bulksend.pipeline.stats import OutcomeHook
from bulksend.pipeline.suppress import Screen, is_suppressed
from bulksend.pipeline.tracker import Tracker
from bulksend.settings import SendingSettings, TrackingSettings
from bulksend.store.base import AdmitResult, NewRecipient, RecipientRow, RowState, Store
from bulksend.tem.models import Email, format_rfc3339

__all__ = ["JobIntake", "JobSink", "JobTemplate", "compile_template", "job_campaign_id", "job_row"]

_OUTAGE = (BulksendError, OSError)
"""Errors that say the store or the broker is unwell, not the message: redeliver, never dead-letter."""

_Accepted = tuple[Delivery, SendJob, "JobTemplate", NewRecipient, bytes, str]
"""A message ready for admission: (delivery, job, template, its new row, request body, subject)."""


@dataclass(frozen=True, slots=True)
class _Refusal:
    """Why a message is dead-lettered, and the short ``kind`` for the metrics label."""

    reason: str
    kind: str


log = structlog.get_logger("bulksend.jobs")

OnDeadLetter = Callable[[str, str, str, str], None]
"""Called with (source, message id, reason, kind) once a message is dead-lettered."""

AfterAdmit = Callable[[str, Sequence[tuple[NewRecipient, AdmitResult]]], Awaitable[None]]
"""Called with (campaign id, [(row as sent to admit, its admission result)]) right after each
admission commit, before the batch is acknowledged."""

# Backoff of the intake after a broker or store failure (doubling from the first to the second).
_RETRY_MIN_S = 0.1
_RETRY_MAX_S = 5.0

TEMPLATE_KEYS = frozenset(
    {
        "from",
        "subject",
        "text",
        "html",
        "text_file",
        "html_file",
        "headers",
        "attachments",
        "send_before",
        "unsubscribe",
    }
)


def job_campaign_id(template: str) -> str:
    return f"jobs.{template}"


def job_row(idempotency_key: str) -> int:
    """The row number of a job: a stable 63-bit hash of its idempotency key."""
    digest = hashlib.blake2b(idempotency_key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class JobTemplate:
    """A registered template, compiled once."""

    name: str
    campaign: Campaign
    renderer: Renderer
    spec: dict[str, Any]


def compile_template(
    name: str,
    spec: Mapping[str, Any],
    *,
    base_dir: Any,
    empty_recipients: Any,
    project_id: str,
    sending: SendingSettings | Mapping[str, Any],
    tracking: TrackingSettings | Mapping[str, Any],
    outcomes: Any,
    source: str,
) -> JobTemplate:
    """Check and compile a template (keys of a campaign's ``[campaign]`` table, minus recipients)."""
    unknown = set(spec) - TEMPLATE_KEYS
    if unknown:
        raise CampaignError(
            f"template {name!r}: unknown key(s) {', '.join(sorted(unknown))} "
            f"(allowed: {', '.join(sorted(TEMPLATE_KEYS))})",
            path=source,
        )
    if spec.get("from") is None:
        raise CampaignError(
            f"template {name!r} needs 'from' (the sender of its emails); write "
            'from = { email = "news@example.com", name = "Example News" }',
            path=source,
        )
    fields = {k: v for k, v in spec.items() if k != "unsubscribe"}
    data = {
        "campaign": {**fields, "id": job_campaign_id(name), "recipients": str(empty_recipients)},
        "sending": dict(sending) if isinstance(sending, Mapping) else sending.table(),
        "tracking": dict(tracking) if isinstance(tracking, Mapping) else tracking.table(),
        "output": {"outcomes": str(outcomes)},
    }
    if "unsubscribe" in spec:
        # A template's `unsubscribe` is a campaign file's [unsubscribe] table.
        data["unsubscribe"] = spec["unsubscribe"]
    campaign = campaign_from_dict(data, base_dir=base_dir, source=source)
    return JobTemplate(name, campaign, Renderer(campaign, project_id=project_id), dict(spec))


@dataclass(kw_only=True, eq=False)
class JobIntake:
    """Consumes one source: parse, admit, ack, queue; dead-letters what cannot be sent."""

    source: JobSource
    store: Store
    templates: Mapping[str, JobTemplate]
    dispatch: ObjectSendStream[SendItem]
    metrics: Metrics
    batch: int
    receive_timeout_s: float
    is_queued: Callable[[int], bool]
    on_queued: Callable[[int], None]
    ensure_campaign: Callable[[JobTemplate], Awaitable[None]]
    after_admit: AfterAdmit | None = None
    on_dead_letter: OnDeadLetter | None = None
    screen: Screen | None = None
    """The suppression list: a job to a suppressed address is admitted ``skipped`` and acked."""
    on_suppressed: OutcomeHook | None = None
    """Called after the acks with (job campaign, [(row id, "skipped")]) for suppressed jobs."""
    is_held: Callable[[str], bool] | None = None
    """Whether a job campaign's stream is paused (its guardrail): its jobs are admitted and acked
    but not sent, and wait ``pending`` until it is resumed."""
    stop_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope, init=False)

    async def run(self) -> None:
        """Pull until stopped. Blocking on a full dispatch queue is the backpressure.

        A broker or store failure does not stop the intake: the batch's unsettled messages are
        given back (so they are redelivered, never lost), and pulling resumes after a backoff.
        """
        async with self.dispatch:
            with self.stop_scope:
                backoff_s = _RETRY_MIN_S
                while True:
                    deliveries: Sequence[Delivery] = ()
                    try:
                        deliveries = await self.source.receive(self.batch, self.receive_timeout_s)
                        if deliveries:
                            await self.handle(deliveries)
                    except anyio.BrokenResourceError:
                        raise  # the send workers are gone: the daemon is stopping
                    except Exception as exc:
                        # An outage (store, broker), or a fault that no one message can be blamed
                        # for: give the batch back and retry later, rather than let the daemon die.
                        await self._give_back(deliveries)
                        fields = {
                            "source": self.source.name,
                            "error": f"{type(exc).__name__}: {exc}",
                            "given_back": sum(d.settled == "released" for d in deliveries),
                            "retry_in_s": backoff_s,
                        }
                        if isinstance(exc, StoreError):
                            self.metrics.store_error("admit")
                        if isinstance(exc, _OUTAGE):
                            log.warning("job.intake_failed", **fields)
                        else:
                            log.exception("job.intake_failed", **fields)
                        await anyio.sleep(backoff_s)
                        backoff_s = min(backoff_s * 2, _RETRY_MAX_S)
                        continue
                    backoff_s = _RETRY_MIN_S

    async def _give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Release what was not settled: nothing of it was acknowledged, so it comes back."""
        with anyio.CancelScope(shield=True):
            for delivery in deliveries:
                if delivery.settled is None:
                    # A failed release is no loss: the broker redelivers it anyway (closed
                    # consumer, ack timeout). Whatever it raised must not end the intake.
                    try:
                        await delivery.release()
                    except Exception as exc:
                        log.warning("job.release_failed", source=self.source.name, error=repr(exc))

    async def handle(self, deliveries: Sequence[Delivery]) -> None:
        """Admit one received batch; shielded so a stop cannot cut between commit and ack."""
        name = self.source.name
        accepted: list[_Accepted] = []
        pacer = RenderPacer()
        with anyio.CancelScope(shield=True):
            for delivery in deliveries:
                if pacer.due():
                    # Slow templates: let health checks and signals run between renders.
                    await anyio.lowlevel.checkpoint()
                try:
                    prepared = self._prepare(delivery)
                except Exception as exc:  # whatever this one message does, it is its own fault
                    log.exception("job.handle_failed", source=name, message_id=delivery.message_id)
                    prepared = _Refusal(
                        f"this message could not be handled ({type(exc).__name__}: {exc}); check it "
                        "against docs/message-format.md",
                        "internal",
                    )
                if isinstance(prepared, _Refusal):
                    await self._dead_letter(delivery, prepared.reason, prepared.kind)
                else:
                    accepted.append(prepared)
            accepted, results = await self._admit_isolated(accepted)
            # Durable now: acknowledge (a crash before this line means a redelivery, absorbed above).
            items: list[SendItem] = []
            suppressed: dict[str, list[tuple[int, str]]] = {}
            for delivery, job, template, new, body, subject in accepted:
                cid = template.campaign.id
                res = results[(cid, new.row)]
                fresh = res.state is RowState.PENDING and not self.is_queued(res.id)
                try:
                    await delivery.ack()
                except Exception as exc:
                    # The row is durable, so it is sent all the same; the broker redelivers the
                    # message and that copy is acked as a duplicate. Any error: one the broker
                    # client did not wrap must not drop the batch's rows, admitted already.
                    log.warning(
                        "job.ack_failed", source=name, message_id=delivery.message_id, error=repr(exc)
                    )
                if res.state is RowState.SKIPPED and is_suppressed(res.reason):
                    self.metrics.job(name, "suppressed")
                    suppressed.setdefault(cid, []).append((res.id, RowState.SKIPPED.value))
                    log.info(
                        "job.suppressed", source=name, idempotency_key=job.idempotency_key, reason=res.reason
                    )
                    continue
                self.metrics.job(name, "admitted" if fresh else "duplicate")
                if fresh and self.is_held is not None and self.is_held(cid):
                    continue  # pending and durable: sent once the stream is resumed
                if fresh:
                    self.on_queued(res.id)
                    items.append(
                        SendItem(
                            res.id,
                            new.row,
                            job.email,
                            subject,
                            body,
                            f"{template.campaign.id}/{new.row}",
                            template.campaign.id,
                            template.campaign.from_.email,
                            lane=name,
                        )
                    )
                else:
                    log.info(
                        "job.duplicate",
                        source=name,
                        idempotency_key=job.idempotency_key,
                        state=res.state.value,
                    )
        if self.on_suppressed is not None:
            for cid, rows in suppressed.items():
                await self.on_suppressed(cid, rows)
        for item in items:
            await self.dispatch.send(item)

    def _prepare(self, delivery: Delivery) -> _Accepted | _Refusal:
        """Parse, check and render one message (no I/O): what to admit, or why not."""
        try:
            job = parse_job(delivery.body)
        except JobError as exc:
            return _Refusal(exc.reason, exc.kind)
        template = self.templates.get(job.template)
        if template is None:
            known = ", ".join(sorted(self.templates)) or "none"
            return _Refusal(f"unknown template {job.template!r} (registered: {known})", "template")
        row = job_row(job.idempotency_key)
        correlation = f"{template.campaign.id}/{row}"
        rendered = template.renderer.render(job.email, job.name or "", job.variables, correlation=correlation)
        if isinstance(rendered, Rejection):
            return _Refusal(rendered.reason, "render")
        body = rendered.body
        if job.send_before is not None:
            request = orjson.loads(body)
            request["send_before"] = format_rfc3339(job.send_before)
            body = orjson.dumps(request)
        payload = {
            "vars": job.variables,
            "idempotency_key": job.idempotency_key,
            "template": job.template,
            "want_result": job.want_result,
            "source": self.source.name,
            "send_before": format_rfc3339(job.send_before) if job.send_before else None,
        }
        new = NewRecipient(
            row, job.email, job.name or "", job.idempotency_key, RowState.PENDING, payload=payload
        )
        return (delivery, job, template, new, body, rendered.subject)

    async def _admit_isolated(
        self, accepted: list[_Accepted]
    ) -> tuple[list[_Accepted], dict[tuple[str, int], AdmitResult]]:
        """Admit the batch; if it fails for a reason other than an outage, one message at a time.

        Returns what was admitted and the admission results. An outage propagates (the caller
        gives the batch back); a message whose own admission fails otherwise is dead-lettered.
        """
        try:
            return accepted, await self._admit(accepted)
        except _OUTAGE:
            raise
        except Exception:
            log.exception("job.admit_failed", source=self.source.name, batch=len(accepted))
        kept: list[_Accepted] = []
        results: dict[tuple[str, int], AdmitResult] = {}
        for item in accepted:
            try:
                results.update(await self._admit([item]))
            except _OUTAGE:
                raise
            except Exception as exc:
                await self._dead_letter(
                    item[0],
                    f"this job could not be stored ({type(exc).__name__}: {exc}); check it against "
                    "docs/message-format.md",
                    "internal",
                )
                continue
            kept.append(item)
        return kept, results

    async def _admit(self, accepted: Sequence[_Accepted]) -> dict[tuple[str, int], AdmitResult]:
        """Admit rows per job campaign, in one commit each; results by (campaign, row)."""
        by_campaign: dict[str, list[NewRecipient]] = {}
        for _, _, template, new, _, _ in accepted:
            by_campaign.setdefault(template.campaign.id, []).append(new)
        results: dict[tuple[str, int], AdmitResult] = {}
        for campaign_id, rows in by_campaign.items():
            await self.ensure_campaign(self.templates[rows[0].payload["template"]])
            if self.screen is not None:
                # One lookup for the batch; a suppressed job is admitted `skipped`, with why.
                rows = await self.screen.admission(rows)
            admitted = {res.row: res for res in await self.store.admit(campaign_id, rows)}
            for row_number, res in admitted.items():
                results[(campaign_id, row_number)] = res
            if self.after_admit is not None:
                # Still before any ack: what the hook records is durable with the rows.
                await self.after_admit(campaign_id, [(new, admitted[new.row]) for new in rows])
        return results

    async def _dead_letter(self, delivery: Delivery, reason: str, kind: str) -> None:
        try:
            await delivery.dead_letter(reason)
        except Exception as exc:
            # The broker redelivers it; it will be dead-lettered again then. Any error: the rest
            # of the batch must still be admitted.
            log.warning("job.dead_letter_failed", source=self.source.name, error=repr(exc))
            return
        self.metrics.job(self.source.name, "dead_lettered")
        self.metrics.dead_letter(self.source.name, kind)
        if self.on_dead_letter is not None:
            self.on_dead_letter(self.source.name, delivery.message_id, reason, kind)
        log.info("job.dead_lettered", source=self.source.name, message_id=delivery.message_id, reason=reason)


class JobSink:
    """The job streams' :class:`~bulksend.pipeline.engine.OutcomeSink`: the tracker of each job
    campaign, and the job outcome hook (metrics, results)."""

    def __init__(self, trackers: Mapping[str, Tracker], store: Store, on_outcome: OutcomeHook) -> None:
        self._trackers = trackers
        self._store = store
        self._on_outcome = on_outcome

    def on_submitted(self, item: SendItem, email_id: str) -> None:
        tracker = self._trackers.get(item.campaign_id)
        if tracker is not None:
            tracker.expect(email_id, item.row_id)

    async def on_found(self, email: Email, row_id: int) -> None:
        row = await self._store.get_row(row_id)
        if row is None:
            return
        tracker = self._trackers.get(row.campaign_id)
        if tracker is not None:
            await tracker.record_known(email, row_id)

    async def on_outcome(self, campaign_id: str, rows: Sequence[tuple[int, str]]) -> None:
        await self._on_outcome(campaign_id, rows)


def item_from_job_row(row: RecipientRow, template: JobTemplate) -> SendItem | Rejection:
    """Rebuild a stored job's request (resume after a restart), or say why it cannot be.

    Never raises: a row admitted by an older, laxer version must not stop every later start.
    """
    try:
        return _item_from_job_row(row, template)
    except Exception as exc:
        log.exception("job.resume_failed", campaign=template.campaign.id, row=row.row)
        return Rejection(f"the stored job could not be rebuilt: {type(exc).__name__}: {exc}")


def _item_from_job_row(row: RecipientRow, template: JobTemplate) -> SendItem | Rejection:
    payload = row.payload
    correlation = row.correlation or f"{template.campaign.id}/{row.row}"
    rendered = template.renderer.render(
        row.email, row.name, dict(payload.get("vars") or {}), correlation=correlation
    )
    if isinstance(rendered, Rejection):
        return rendered
    body = rendered.body
    if payload.get("send_before"):
        request = orjson.loads(body)
        request["send_before"] = payload["send_before"]
        body = orjson.dumps(request)
    return SendItem(
        row.id,
        row.row,
        row.email,
        rendered.subject,
        body,
        correlation,
        template.campaign.id,
        template.campaign.from_.email,
        lane=str(payload.get("source") or ""),
    )
