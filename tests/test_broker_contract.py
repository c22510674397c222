"""The job-source contract, on each real broker (NATS JetStream, RabbitMQ, Redis Streams, SQS).

What every source promises (see :class:`bulksend.brokers.base.JobSource`), run against the local
servers through :mod:`tests.brokers`. Behaviour only one broker has is tested in its own file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bulksend.brokers import source_from_config
from bulksend.brokers.base import BrokerError, JobSource
from tests.brokers import HARNESSES, Harness, receive_exactly


@pytest.fixture(params=list(HARNESSES))
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Harness[Any]]:
    """Each broker in turn, on names unique to the test."""
    async with HARNESSES[request.param].for_test(request) as harness:
        yield harness


async def test_bound_holds_back_jobs_until_one_is_settled(broker: Harness[Any]) -> None:
    """At its bound on unsettled jobs (NATS max_ack_pending, RabbitMQ prefetch, Redis and SQS
    max_in_flight) a consumer gets nothing more until it settles one; lag() counts the rest."""
    source = await broker.make_source(**{broker.bound_key: 4})
    await broker.publish_jobs(10)
    held = await receive_exactly(source, 4)
    assert await source.receive(10, timeout_s=0.3) == []
    assert await source.lag() == 6
    await held[0].ack()
    more = await receive_exactly(source, 1)
    assert len(more) == 1
    assert await source.lag() == 5


async def test_acked_job_is_not_redelivered(broker: Harness[Any]) -> None:
    """An acked job stays gone when its consumer closes and another one starts."""
    source = await broker.make_source(**broker.takeover)
    await broker.publish_jobs(1)
    [delivery] = await receive_exactly(source, 1)
    await delivery.ack()
    assert delivery.settled == "acked"
    await source.close()
    again = await broker.make_source(**broker.takeover)
    # Longer than NATS's ack_wait here: an unacked job would have come back within this wait.
    assert await again.receive(10, timeout_s=0.6) == []
    assert await again.lag() == 0


async def test_job_of_a_dead_consumer_is_redelivered(broker: Harness[Any]) -> None:
    """A job held unsettled by a consumer that goes away comes back to another one, marked
    redelivered; settling it through the closed consumer fails and leaves it unsettled."""
    first = await broker.make_source()
    await broker.publish_jobs(1)
    [lost] = await receive_exactly(first, 1)
    assert lost.redelivered is False
    await first.close()  # gone without acking, as if the process had crashed
    second = await broker.make_source(**broker.takeover)
    [again] = await receive_exactly(second, 1)
    assert again.redelivered is True
    assert again.body == lost.body
    assert again.message_id == lost.message_id or not broker.stable_ids
    with pytest.raises(BrokerError):
        await lost.ack()  # its connection is gone
    assert (lost.settled, again.settled) == (None, None)


async def test_release_redelivers(broker: Harness[Any]) -> None:
    """A released job is delivered again, marked redelivered; settling it again does nothing."""
    source = await broker.make_source(**broker.takeover)
    await broker.publish_jobs(1)
    [delivery] = await receive_exactly(source, 1)
    await delivery.release()
    await delivery.ack()  # already settled: ignored
    assert delivery.settled == "released"
    [again] = await receive_exactly(source, 1)
    assert again.redelivered is True
    assert again.body == delivery.body
    assert again.message_id == delivery.message_id or not broker.stable_ids


async def test_healthy_and_lag_follow_the_connection(broker: Harness[Any]) -> None:
    """healthy() is True while connected and False after close; lag() counts jobs not yet delivered."""
    source = await broker.make_source(**{broker.bound_key: 1})
    assert isinstance(source, JobSource)
    assert await source.healthy() is True
    assert await source.lag() == 0
    await broker.publish_jobs(5)
    await receive_exactly(source, 1)
    assert await source.lag() == 4
    await source.close()
    assert await source.healthy() is False
    assert await source.lag() is None
    with pytest.raises(BrokerError, match="not open"):
        await source.receive(1, timeout_s=0)


async def test_unreachable_server_fails_without_password(broker: Harness[Any]) -> None:
    """Opening against a closed port raises BrokerError whose text hides the password or secret key."""
    source = source_from_config(broker.unreachable_config())
    with pytest.raises(BrokerError) as info:
        await source.open()
    assert "s3cr3tpw" not in str(info.value)
