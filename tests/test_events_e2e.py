"""A campaign tracked by events end to end: the sandbox publishes its webhook events to an SNS
topic (moto), an SQS queue subscribed to the topic holds them, bulksend reads the queue."""

from __future__ import annotations

import dataclasses
import uuid

import anyio
import pytest

from bulksend.events.router import EventRouter
from bulksend.events.sqs import SqsEventSettings, SqsEventSource
from bulksend.pipeline.stats import RunStats
from bulksend.sandbox import Sandbox
from bulksend.testing import campaign_run, topic_with_queue
from tests.conftest import CampaignWriter, read_jsonl, settings_for
from tests.moto import MOTO_ACCESS_KEY, MOTO_REGION, MOTO_SECRET_KEY
from tests.test_sandbox_webhooks import watch_example_com


@pytest.fixture
async def queue_of_events(sandbox: Sandbox, moto_endpoint: str) -> SqsEventSettings:
    """A webhook of example.com publishing to a moto topic, and the settings of its queue."""
    name = f"tem-events-{uuid.uuid4().hex[:8]}"
    arn, queue = await topic_with_queue(
        moto_endpoint, MOTO_REGION, name, access_key=MOTO_ACCESS_KEY, secret_key=MOTO_SECRET_KEY
    )
    sandbox.update(webhook_sns_url=moto_endpoint)
    await watch_example_com(sandbox, arn)
    return SqsEventSettings(
        url=moto_endpoint,
        region=MOTO_REGION,
        access_key=MOTO_ACCESS_KEY,
        secret_key=MOTO_SECRET_KEY,
        queue=queue,
        wait_s=1,
    )


async def test_a_campaign_tracked_by_events_needs_no_list_call(
    sandbox: Sandbox, write_campaign: CampaignWriter, queue_of_events: SqsEventSettings
) -> None:
    """Every recipient ends with the outcome the sandbox chose, learned from events alone: no
    list call, no read by id. A blocklisted address (whose event names no email) and a soft
    bounce (deferred, then delivered) included."""
    recipients = [{"email": f"user{i}@example.org"} for i in range(20)]
    recipients += [{"email": "bounce1@example.org"}, {"email": "blocked1@example.org"}]
    recipients += [{"email": "softbounce1@example.org"}, {"email": "spam1@example.org"}]
    campaign = write_campaign(recipients, poll_interval_s=0.05)
    campaign = dataclasses.replace(campaign, tracking=dataclasses.replace(campaign.tracking, mode="events"))
    stats = RunStats()
    router = EventRouter()
    source = SqsEventSource(queue_of_events, router.deliver)
    async with (
        campaign_run(campaign, settings_for(sandbox), stats=stats, events=router) as run,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(source.run)
        result = await run.run()
        tg.cancel_scope.cancel()
    assert result.complete
    lines = {line["email"]: line for line in read_jsonl(campaign.output.outcomes)}
    assert {e for e, line in lines.items() if line["status"] == "sent"} == {
        *(f"user{i}@example.org" for i in range(20)),
        "softbounce1@example.org",
    }
    assert lines["bounce1@example.org"]["flags"] == ["hard_bounce", "mailbox_not_found"]
    assert lines["blocked1@example.org"]["flags"] == ["blocklisted"]
    assert lines["spam1@example.org"]["status"] == "failed"
    assert stats.calls("list", "get") == 0
    assert router.counts.final == 24
