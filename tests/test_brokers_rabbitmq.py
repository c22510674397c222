"""RabbitMQ job source and result publisher, against the local broker (127.0.0.1:5672, guest/guest).

What only this broker does; the contract all sources keep is in test_broker_contract.py.
"""

from __future__ import annotations

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bulksend.brokers import publisher_from_config, source_from_config
from bulksend.brokers.base import BrokerError
from bulksend.brokers.rabbitmq import HEADER_REASON, HEADER_SOURCE_QUEUE, RabbitResultPublisher
from bulksend.errors import ConfigError
from tests.brokers import RabbitHarness, harness_fixture, receive_exactly

harness = harness_fixture(RabbitHarness)


async def get_one(channel: AbstractChannel, queue: str) -> AbstractIncomingMessage:
    """The next message of ``queue``, waiting for it to arrive (up to 5 s)."""
    q = await channel.get_queue(queue)
    async with q.iterator(timeout=5) as messages:
        async for message in messages:
            return message
    raise AssertionError(f"no message in {queue}")


async def test_receive_never_returns_more_than_asked(harness: RabbitHarness) -> None:
    """With 100 jobs waiting, receive(3) hands out at most 3; the rest come in later calls."""
    source = await harness.make_source(prefetch=10)
    await harness.publish_jobs(100)
    first = await source.receive(3, timeout_s=5)
    assert 1 <= len(first) <= 3
    seen = list(first)
    while len(seen) < 100:
        batch = await source.receive(3, timeout_s=5)
        assert 1 <= len(batch) <= 3
        for d in batch:
            await d.ack()
        seen += batch
    for d in first:
        await d.ack()
    assert sorted(orjson.loads(d.body)["n"] for d in seen) == list(range(100))
    assert not any(d.redelivered for d in seen)
    assert await source.receive(3, timeout_s=0.2) == []


async def test_dead_letter_carries_reason_and_removes_original(harness: RabbitHarness) -> None:
    """dead_letter puts the body, its headers and the reason in the DLQ and acks the original."""
    source = await harness.make_source()
    await harness.admin.default_exchange.publish(
        aio_pika.Message(b"{oops", headers={"trace-id": "t-7"}, message_id="m-7"),
        routing_key=harness.names["queue"],
    )
    [delivery] = await receive_exactly(source, 1)
    await delivery.dead_letter("not JSON: unexpected end of data")
    dead = await get_one(harness.admin, harness.names["dead_letter_queue"])
    assert dead.body == b"{oops"
    headers = dead.headers or {}
    assert headers[HEADER_REASON] == "not JSON: unexpected end of data"
    assert headers[HEADER_SOURCE_QUEUE] == harness.names["queue"]
    assert headers["trace-id"] == "t-7"
    assert dead.message_id == "m-7"
    await dead.ack()
    assert await source.lag() == 0
    assert await source.receive(1, timeout_s=0.2) == []


async def test_broker_dead_lettering_lands_in_the_same_dlq(harness: RabbitHarness) -> None:
    """A job the broker dead-letters itself (rejected without requeue) reaches the configured DLQ."""
    source = await harness.make_source()
    await source.close()  # the queues stay; nobody consumes them now
    await harness.publish_jobs(1)
    message = await get_one(harness.admin, harness.names["queue"])
    await message.reject(requeue=False)
    dead = await get_one(harness.admin, harness.names["dead_letter_queue"])
    assert orjson.loads(dead.body) == {"n": 0}
    await dead.ack()


async def test_redeclaring_with_other_arguments_is_explained(harness: RabbitHarness) -> None:
    """A job queue that exists with different settings (here: its type) gives a BrokerError that says so."""
    await harness.make_source()
    with pytest.raises(BrokerError, match="exists with other settings"):
        await harness.make_source(queue_type="quorum")


def test_config_refuses_unknown_keys_and_bad_values() -> None:
    """Unknown keys and out-of-range values are configuration errors naming the key."""
    with pytest.raises(ConfigError, match="'prefech'"):
        source_from_config({"kind": "rabbitmq", "prefech": 10})
    with pytest.raises(ConfigError, match="prefetch"):
        source_from_config({"kind": "rabbitmq", "prefetch": 0})
    with pytest.raises(ConfigError, match="queue_type"):
        source_from_config({"kind": "rabbitmq", "queue_type": "stream"})
    source = source_from_config({"kind": "rabbitmq"})
    assert "guest:guest" not in repr(source)
    assert source.name == "rabbitmq:bulksend.jobs"


async def test_result_publisher_delivers_to_a_durable_queue(harness: RabbitHarness) -> None:
    """Outcomes are published as persistent JSON messages readable from the results queue."""
    queue = harness.results_queue
    publisher = publisher_from_config(harness.results_config())
    assert isinstance(publisher, RabbitResultPublisher)
    async with publisher:
        assert await publisher.healthy()
        await publisher.publish({"idempotency_key": "k-2", "status": "sent", "try_count": 1})
    assert not await publisher.healthy()
    message = await get_one(harness.admin, queue)
    assert orjson.loads(message.body) == {"idempotency_key": "k-2", "status": "sent", "try_count": 1}
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    await message.ack()
