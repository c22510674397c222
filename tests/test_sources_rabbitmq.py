"""RabbitMQ job source and result publisher, against the local broker (127.0.0.1:5672, guest/guest)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bulksend.brokers import publisher_from_config, source_from_config
from bulksend.brokers.base import BrokerError, Delivery, JobSource
from bulksend.brokers.rabbitmq import HEADER_REASON, HEADER_SOURCE_QUEUE, RabbitResultPublisher, RabbitSource
from bulksend.errors import ConfigError

URL = "amqp://guest:guest@127.0.0.1:5672/"

SourceFactory = Callable[..., Awaitable[RabbitSource]]


@pytest.fixture
def names() -> dict[str, str]:
    """Queue and exchange names unique to one test."""
    uid = uuid.uuid4().hex[:12]
    return {
        "queue": f"test.{uid}.jobs",
        "dead_letter_exchange": f"test.{uid}.dlx",
        "dead_letter_queue": f"test.{uid}.dlq",
    }


@pytest.fixture
async def admin(names: dict[str, str]) -> AsyncIterator[AbstractChannel]:
    """A separate channel for publishing and inspecting; deletes the test's queues and exchange."""
    conn = await aio_pika.connect(URL)
    channel = await conn.channel()
    yield channel
    cleanup = await conn.channel()
    for queue in (names["queue"], names["dead_letter_queue"], names["queue"] + ".results"):
        await cleanup.queue_delete(queue)
    await cleanup.exchange_delete(names["dead_letter_exchange"])
    await conn.close()


@pytest.fixture
async def make_source(names: dict[str, str], admin: AbstractChannel) -> AsyncIterator[SourceFactory]:
    """Open RabbitSources on the test's queue; closes whatever is still open at the end."""
    opened: list[RabbitSource] = []

    async def make(**overrides: Any) -> RabbitSource:
        source = RabbitSource.from_config({"kind": "rabbitmq", "url": URL, **names, **overrides})
        await source.open()
        opened.append(source)
        return source

    yield make
    for source in opened:
        await source.close()


async def publish(channel: AbstractChannel, queue: str, count: int) -> None:
    for i in range(count):
        await channel.default_exchange.publish(aio_pika.Message(orjson.dumps({"n": i})), routing_key=queue)


async def receive_exactly(source: RabbitSource, count: int) -> list[Delivery]:
    """Receive until ``count`` deliveries arrived (the broker pushes them over a few moments)."""
    got: list[Delivery] = []
    while len(got) < count:
        batch = await source.receive(count - len(got), timeout_s=5)
        assert batch, f"only {len(got)} of {count} deliveries arrived"
        got += batch
    return got


async def get_one(channel: AbstractChannel, queue: str) -> AbstractIncomingMessage:
    """The next message of ``queue``, waiting for it to arrive (up to 5 s)."""
    q = await channel.get_queue(queue)
    async with q.iterator(timeout=5) as messages:
        async for message in messages:
            return message
    raise AssertionError(f"no message in {queue}")


async def test_receive_never_returns_more_than_asked(
    make_source: SourceFactory, admin: AbstractChannel, names: dict[str, str]
) -> None:
    """With 100 jobs waiting, receive(3) hands out at most 3; the rest come in later calls."""
    source = await make_source(prefetch=10)
    await publish(admin, names["queue"], 100)
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


async def test_prefetch_bounds_unacked_jobs(
    make_source: SourceFactory, admin: AbstractChannel, names: dict[str, str]
) -> None:
    """With prefetch=4, four unacked jobs are all one consumer gets until it acks one."""
    source = await make_source(prefetch=4)
    await publish(admin, names["queue"], 10)
    held = await receive_exactly(source, 4)
    assert await source.receive(10, timeout_s=0.3) == []
    assert await source.lag() == 6
    await held[0].ack()
    more = await receive_exactly(source, 1)
    assert len(more) == 1
    assert await source.lag() == 5


async def test_acked_job_is_not_redelivered(
    make_source: SourceFactory, admin: AbstractChannel, names: dict[str, str]
) -> None:
    """An acked job stays gone when its consumer closes and another one starts."""
    source = await make_source()
    await publish(admin, names["queue"], 1)
    [delivery] = await receive_exactly(source, 1)
    await delivery.ack()
    await source.close()
    again = await make_source()
    assert await again.receive(10, timeout_s=0.3) == []
    assert await again.lag() == 0


async def test_job_of_a_closed_consumer_is_redelivered(
    make_source: SourceFactory, admin: AbstractChannel, names: dict[str, str]
) -> None:
    """An unacked job is requeued when its consumer's connection closes and comes back redelivered."""
    first = await make_source()
    await publish(admin, names["queue"], 1)
    [lost] = await receive_exactly(first, 1)
    assert lost.redelivered is False
    await first.close()
    second = await make_source()
    [again] = await receive_exactly(second, 1)
    assert again.redelivered is True
    assert again.body == lost.body
    with pytest.raises(BrokerError):
        await lost.ack()  # its channel is gone
    assert (lost.settled, again.settled) == (None, None)


async def test_release_requeues_for_redelivery(
    make_source: SourceFactory, admin: AbstractChannel, names: dict[str, str]
) -> None:
    """A released job goes back to the queue and is delivered again, marked redelivered."""
    source = await make_source()
    await publish(admin, names["queue"], 1)
    [delivery] = await receive_exactly(source, 1)
    await delivery.release()
    assert delivery.settled == "released"
    [again] = await receive_exactly(source, 1)
    assert again.redelivered is True
    assert again.body == delivery.body


async def test_dead_letter_carries_reason_and_removes_original(
    make_source: SourceFactory, admin: AbstractChannel, names: dict[str, str]
) -> None:
    """dead_letter puts the body, its headers and the reason in the DLQ and acks the original."""
    source = await make_source()
    await admin.default_exchange.publish(
        aio_pika.Message(b"{oops", headers={"trace-id": "t-7"}, message_id="m-7"), routing_key=names["queue"]
    )
    [delivery] = await receive_exactly(source, 1)
    await delivery.dead_letter("not JSON: unexpected end of data")
    dead = await get_one(admin, names["dead_letter_queue"])
    assert dead.body == b"{oops"
    headers = dead.headers or {}
    assert headers[HEADER_REASON] == "not JSON: unexpected end of data"
    assert headers[HEADER_SOURCE_QUEUE] == names["queue"]
    assert headers["trace-id"] == "t-7"
    assert dead.message_id == "m-7"
    await dead.ack()
    assert await source.lag() == 0
    assert await source.receive(1, timeout_s=0.2) == []


async def test_broker_dead_lettering_lands_in_the_same_dlq(
    make_source: SourceFactory, admin: AbstractChannel, names: dict[str, str]
) -> None:
    """A job the broker dead-letters itself (rejected without requeue) reaches the configured DLQ."""
    source = await make_source()
    await source.close()  # the queues stay; nobody consumes them now
    await publish(admin, names["queue"], 1)
    message = await get_one(admin, names["queue"])
    await message.reject(requeue=False)
    dead = await get_one(admin, names["dead_letter_queue"])
    assert orjson.loads(dead.body) == {"n": 0}
    await dead.ack()


async def test_healthy_and_lag_follow_the_connection(
    make_source: SourceFactory, admin: AbstractChannel, names: dict[str, str]
) -> None:
    """healthy() is True while connected and False after close; lag() counts ready jobs."""
    source = await make_source()
    assert isinstance(source, JobSource)
    assert await source.healthy() is True
    assert await source.lag() == 0
    await source.close()
    await publish(admin, names["queue"], 5)
    reopened = await make_source(prefetch=1)
    await receive_exactly(reopened, 1)
    assert await reopened.lag() == 4
    assert await source.healthy() is False
    assert await source.lag() is None


async def test_redeclaring_with_other_arguments_is_explained(
    make_source: SourceFactory, names: dict[str, str]
) -> None:
    """A job queue that exists with different settings (here: its type) gives a BrokerError that says so."""
    await make_source()
    with pytest.raises(BrokerError, match="exists with other settings"):
        await make_source(queue_type="quorum")


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


async def test_unreachable_broker_fails_without_password() -> None:
    """Opening against a closed port raises BrokerError whose text hides the URL's password."""
    source = RabbitSource.from_config(
        {"kind": "rabbitmq", "url": "amqp://u:s3cr3tpw@127.0.0.1:1/", "connect_timeout_s": 2}
    )
    with pytest.raises(BrokerError) as info:
        await source.open()
    assert "s3cr3tpw" not in str(info.value)


async def test_result_publisher_delivers_to_a_durable_queue(
    admin: AbstractChannel, names: dict[str, str]
) -> None:
    """Outcomes are published as persistent JSON messages readable from the results queue."""
    queue = names["queue"] + ".results"
    publisher = publisher_from_config({"kind": "rabbitmq", "url": URL, "queue": queue})
    assert isinstance(publisher, RabbitResultPublisher)
    async with publisher:
        assert await publisher.healthy()
        await publisher.publish({"idempotency_key": "k-2", "status": "sent", "try_count": 1})
    assert not await publisher.healthy()
    message = await get_one(admin, queue)
    assert orjson.loads(message.body) == {"idempotency_key": "k-2", "status": "sent", "try_count": 1}
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    await message.ack()
