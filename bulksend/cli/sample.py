"""``bulksend send CAMPAIGN --sample N --to ADDRESS``: the first N valid rows, each rendered with its
own variables, all sent to one address with the subject prefixed ``[sample] ``.

The samples go through the same client, limiter, retries and dispatch as a campaign's emails, but
their outbox is an in-memory store thrown away at the end: nothing is recorded in the campaign's
state or outcomes, so the real run that follows still sends to every recipient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import anyio
import orjson

from bulksend.campaign.model import Campaign
from bulksend.campaign.recipients import RecipientInput, iter_recipients
from bulksend.campaign.render import RenderedEmail, Renderer
from bulksend.campaign.validate import check_subject
from bulksend.pipeline.context import SendContext
from bulksend.pipeline.dispatch import Dispatcher, SendItem
from bulksend.pipeline.limiter import RateLimiter
from bulksend.pipeline.retry import RetryPolicy
from bulksend.pipeline.run import attachments_of
from bulksend.pipeline.stats import RunStats
from bulksend.store.base import NewRecipient, RowState
from bulksend.store.memory import MemoryStore
from bulksend.tem.client import TemClient
from bulksend.tem.config import TemSettings

__all__ = ["SAMPLE_PREFIX", "Sample", "SampleResult", "render_samples", "send_samples"]

SAMPLE_PREFIX = "[sample] "


@dataclass(frozen=True)
class Sample:
    """One row's email, rendered with its own variables, addressed to the sample address."""

    row: int
    subject: str
    body: bytes
    correlation: str


@dataclass
class SampleResult:
    """What happened to each sample, by input row."""

    sent: list[int] = field(default_factory=list)
    not_sent: list[tuple[int, str]] = field(default_factory=list)
    """Rows whose sample was not sent, with the reason."""
    rendered: int = 0


def _as_sample(email: RenderedEmail, to: str) -> tuple[str, bytes]:
    """The email's request body sent to ``to`` instead, with the sample subject."""
    body = orjson.loads(email.body)
    subject = SAMPLE_PREFIX + email.subject
    body["to"] = [{"email": to}]
    body["subject"] = subject
    return subject, orjson.dumps(body)


def render_samples(campaign: Campaign, *, to: str, count: int, project_id: str) -> list[Sample]:
    """The first ``count`` rows that render, each as an email to ``to`` (rows that do not render are
    passed over, as a dry run would reject them)."""
    renderer = Renderer(campaign, project_id=project_id)
    samples: list[Sample] = []
    rows = (r for r in iter_recipients(campaign.recipients) if isinstance(r, RecipientInput))
    for rec in rows:
        correlation = f"{campaign.id}/sample/{rec.row}"
        email = renderer.render(
            rec.email, rec.name, rec.vars, correlation=correlation, attachments=attachments_of(rec.vars)
        )
        if not isinstance(email, RenderedEmail):
            continue
        subject, body = _as_sample(email, to)
        if check_subject(subject) is not None:
            continue  # the prefix made it too long; a real send of this row is unaffected
        samples.append(Sample(rec.row, subject, body, correlation))
        if len(samples) >= count:
            break
    return samples


async def send_samples(
    campaign: Campaign,
    settings: TemSettings,
    samples: list[Sample],
    *,
    to: str,
    limiter: RateLimiter,
    stats: RunStats,
) -> SampleResult:
    """Send ``samples`` to ``to`` through a dispatcher over a throwaway in-memory outbox."""
    result = SampleResult(rendered=len(samples))
    store = MemoryStore()
    await store.open()
    ambiguous: dict[int, str] = {}

    async def on_ambiguous(item: SendItem, started_at: datetime, ended_at: datetime) -> None:
        # Never resent: a second sample in the inbox is worse than a missing one.
        ambiguous[item.row] = "TEM's answer was lost; the sample may or may not have been sent"

    try:
        sample_id = f"{campaign.id}.sample"
        await store.create_campaign(sample_id, {})
        # Keys by row: every sample has the same address, which would otherwise be a duplicate.
        admitted = await store.admit(
            sample_id, [NewRecipient(s.row, to, key=f"row-{s.row}") for s in samples]
        )
        ids = {a.row: a.id for a in admitted}
        items = [
            SendItem(
                ids[s.row], s.row, to, s.subject, s.body, s.correlation, campaign.id, campaign.from_.email
            )
            for s in samples
        ]
        async with TemClient(
            settings,
            timeout_s=campaign.sending.timeout_s,
            limit_per_host=campaign.sending.concurrency + 2,
            on_response=stats.on_response,
        ) as tem:
            retry = RetryPolicy(
                max_attempts=campaign.sending.max_attempts, max_elapsed_s=campaign.sending.max_retry_s
            )
            dispatcher = Dispatcher(SendContext(store, tem, limiter, stats, retry), on_ambiguous=on_ambiguous)
            for item in items:
                await dispatcher.send(item)
        for item in items:
            row = await store.get_row(item.row_id)
            if row is not None and row.state is RowState.SUBMITTED:
                result.sent.append(item.row)
            elif item.row in ambiguous:
                result.not_sent.append((item.row, ambiguous[item.row]))
            else:
                reason = row.reason if row is not None and row.reason else "not sent"
                result.not_sent.append((item.row, reason))
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
    return result
