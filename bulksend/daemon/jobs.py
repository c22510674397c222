"""Job streams: queue messages → durable outbox rows → acknowledgement → the shared send pipeline.

Each registered template is one long-lived "job campaign" (``jobs.<template>``) in the store. A
job's row number is a 63-bit hash of its idempotency key, and the key is the row's dedupe key, so a
redelivered or republished job lands on the row it already has: admission is idempotent without a
lookup and without coordination between daemons.

Order for every message, and why:

1. parse and validate (format, template, address, variables) — anything wrong is dead-lettered
   with the reason: a poison message never blocks the consumer;
2. admit the batch into the store in one commit (shielded);
3. only then acknowledge each message to its broker (a crash before this point redelivers, and
   step 2 absorbs the redelivery);
4. queue the new rows for sending; stop pulling while the queue is full (backpressure).

A broker or store failure (a pull, an admission) does not end the intake: the messages of the
batch not yet settled are released (nothing unacknowledged is lost: they come back) and pulling
resumes after a backoff.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
import structlog
from anyio.abc import ObjectSendStream

from bulksend.campaign import Campaign, campaign_from_dict
from bulksend.errors import BulksendError, CampaignError
from bulksend.jobs import JobError, SendJob, parse_job
from bulksend.metrics import Metrics
from bulksend.pipeline.dispatch import SendItem
from bulksend.render import Rejection, Renderer, RenderPacer
from bulksend.sources.base import Delivery, JobSource
from bulksend.store.base import AdmitResult, NewRecipient, RecipientRow, RowState, Store
from bulksend.tem.models import format_rfc3339

__all__ = ["JobIntake", "JobTemplate", "compile_template", "job_campaign_id", "job_row"]

log = structlog.get_logger("bulksend.jobs")

AfterAdmit = Callable[[str, Sequence[tuple[NewRecipient, AdmitResult]]], Awaitable[None]]
"""Called with (campaign id, [(row as sent to admit, its admission result)]) right after each
admission commit, before the batch is acknowledged."""

# Backoff of the intake after a broker or store failure (doubling from the first to the second).
_RETRY_MIN_S = 0.1
_RETRY_MAX_S = 5.0

TEMPLATE_KEYS = frozenset(
    {"from", "subject", "text", "html", "text_file", "html_file", "headers", "attachments", "send_before"}
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
    sending: Mapping[str, Any],
    tracking: Mapping[str, Any],
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
    data = {
        "campaign": {**spec, "id": job_campaign_id(name), "recipients": str(empty_recipients)},
        "sending": dict(sending),
        "tracking": dict(tracking),
        "output": {"outcomes": str(outcomes)},
    }
    campaign = campaign_from_dict(data, base_dir=base_dir, source=source)
    return JobTemplate(name, campaign, Renderer(campaign, project_id=project_id), dict(spec))


class JobIntake:
    """Consumes one source: parse, admit, ack, queue; dead-letters what cannot be sent."""

    def __init__(
        self,
        *,
        source: JobSource,
        store: Store,
        templates: Mapping[str, JobTemplate],
        dispatch: ObjectSendStream[SendItem],
        metrics: Metrics,
        batch: int,
        receive_timeout_s: float,
        is_queued: Callable[[int], bool],
        on_queued: Callable[[int], None],
        ensure_campaign: Callable[[JobTemplate], Awaitable[None]],
        after_admit: AfterAdmit | None = None,
    ) -> None:
        self.source = source
        self._store = store
        self._templates = templates
        self._dispatch = dispatch
        self._metrics = metrics
        self._batch = batch
        self._timeout_s = receive_timeout_s
        self._is_queued = is_queued
        self._on_queued = on_queued
        self._ensure_campaign = ensure_campaign
        self._after_admit = after_admit
        self.stop_scope = anyio.CancelScope()

    async def run(self) -> None:
        """Pull until stopped. Blocking on a full dispatch queue is the backpressure.

        A broker or store failure does not stop the intake: the batch's unsettled messages are
        given back (so they are redelivered, never lost), and pulling resumes after a backoff.
        """
        async with self._dispatch:
            with self.stop_scope:
                backoff_s = _RETRY_MIN_S
                while True:
                    deliveries: Sequence[Delivery] = ()
                    try:
                        deliveries = await self.source.receive(self._batch, self._timeout_s)
                        if deliveries:
                            await self.handle(deliveries)
                    except BulksendError as exc:
                        await self._give_back(deliveries)
                        log.warning(
                            "job.intake_failed",
                            source=self.source.name,
                            error=str(exc),
                            given_back=sum(d.settled == "released" for d in deliveries),
                            retry_in_s=backoff_s,
                        )
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
                    # consumer, ack timeout).
                    with contextlib.suppress(BulksendError):
                        await delivery.release()

    async def handle(self, deliveries: Sequence[Delivery]) -> None:
        """Admit one received batch; shielded so a stop cannot cut between commit and ack."""
        name = self.source.name
        accepted: list[tuple[Delivery, SendJob, JobTemplate, NewRecipient, bytes, str]] = []
        pacer = RenderPacer()
        with anyio.CancelScope(shield=True):
            for delivery in deliveries:
                if pacer.due():
                    # Slow templates: let health checks and signals run between renders.
                    await anyio.lowlevel.checkpoint()
                try:
                    job = parse_job(delivery.body)
                except JobError as exc:
                    await self._dead_letter(delivery, exc.reason, exc.kind)
                    continue
                template = self._templates.get(job.template)
                if template is None:
                    known = ", ".join(sorted(self._templates)) or "none"
                    await self._dead_letter(
                        delivery, f"unknown template {job.template!r} (registered: {known})", "template"
                    )
                    continue
                row = job_row(job.idempotency_key)
                correlation = f"{template.campaign.id}/{row}"
                rendered = template.renderer.render(
                    job.email, job.name or "", job.variables, correlation=correlation
                )
                if isinstance(rendered, Rejection):
                    await self._dead_letter(delivery, rendered.reason, "render")
                    continue
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
                    "source": name,
                    "send_before": format_rfc3339(job.send_before) if job.send_before else None,
                }
                new = NewRecipient(
                    row, job.email, job.name or "", job.idempotency_key, RowState.PENDING, payload=payload
                )
                accepted.append((delivery, job, template, new, body, rendered.subject))
            by_campaign: dict[str, list[NewRecipient]] = {}
            for _, _, template, new, _, _ in accepted:
                by_campaign.setdefault(template.campaign.id, []).append(new)
            results: dict[tuple[str, int], Any] = {}
            for campaign_id, rows in by_campaign.items():
                await self._ensure_campaign(self._templates[rows[0].payload["template"]])
                admitted = {res.row: res for res in await self._store.admit(campaign_id, rows)}
                for row_number, res in admitted.items():
                    results[(campaign_id, row_number)] = res
                if self._after_admit is not None:
                    # Still before any ack: what the hook records is durable with the rows.
                    await self._after_admit(campaign_id, [(new, admitted[new.row]) for new in rows])
            # Durable now: acknowledge (a crash before this line means a redelivery, absorbed above).
            items: list[SendItem] = []
            for delivery, job, template, new, body, subject in accepted:
                res = results[(template.campaign.id, new.row)]
                fresh = res.state is RowState.PENDING and not self._is_queued(res.id)
                try:
                    await delivery.ack()
                except BulksendError as exc:
                    # The row is durable, so it is sent all the same; the broker redelivers the
                    # message and that copy is acked as a duplicate.
                    log.warning("job.ack_failed", source=name, message_id=delivery.message_id, error=str(exc))
                self._metrics.job(name, "admitted" if fresh else "duplicate")
                if fresh:
                    self._on_queued(res.id)
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
                        )
                    )
                else:
                    log.info(
                        "job.duplicate",
                        source=name,
                        idempotency_key=job.idempotency_key,
                        state=res.state.value,
                    )
        for item in items:
            await self._dispatch.send(item)

    async def _dead_letter(self, delivery: Delivery, reason: str, kind: str) -> None:
        try:
            await delivery.dead_letter(reason)
        except BulksendError as exc:
            # The broker redelivers it; it will be dead-lettered again then.
            log.warning("job.dead_letter_failed", source=self.source.name, error=str(exc))
            return
        self._metrics.job(self.source.name, "dead_lettered")
        self._metrics.dead_letter(self.source.name, kind)
        log.info("job.dead_lettered", source=self.source.name, message_id=delivery.message_id, reason=reason)


def item_from_job_row(row: RecipientRow, template: JobTemplate) -> SendItem | Rejection:
    """Rebuild a stored job's request (resume after a restart)."""
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
    )
