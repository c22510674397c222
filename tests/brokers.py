"""One test's view of each real broker (local servers): unique names, an admin client, sources.

A :class:`Harness` creates names no other test uses (for jobs, dead letters and results), opens
a separate admin connection for publishing and inspecting, opens sources on those names and, on
exit, closes them and deletes what the test created. The broker contract suite runs over all
of them; each broker's own tests and the daemon's broker tests use its harness directly. SQS
runs on the session's moto server (:mod:`tests.moto`), which :meth:`Harness.for_test` asks for.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import nats
import nats.js.errors
import orjson
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractChannel, AbstractConnection
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from bulksend.brokers.base import BrokerSource, Delivery, JobSource
from bulksend.brokers.nats import NatsSource
from bulksend.brokers.rabbitmq import RabbitSource
from bulksend.brokers.redis_streams import RedisStreamSource
from bulksend.brokers.sqs import SqsSettings, SqsSource, sqs_client
from tests.moto import MOTO_ACCESS_KEY, MOTO_REGION, MOTO_SECRET_KEY

NATS_URL = "nats://127.0.0.1:4222"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"

S = TypeVar("S", bound=BrokerSource[Any, Any])


class Harness(Generic[S]):
    """Sources of one broker on names unique to one test; ``async with`` cleans up after it."""

    source_type: ClassVar[type[Any]]
    kind: ClassVar[str]
    url: str
    """The broker's URL (a class default, or set per instance for a server the session starts)."""
    bound_key: ClassVar[str]
    """The setting bounding a consumer's unsettled jobs."""
    takeover: ClassVar[Mapping[str, Any]] = {}
    """Settings of a consumer that soon takes over jobs left unsettled by another."""
    stable_ids: ClassVar[bool] = True
    """A redelivered job keeps its ``message_id`` (not so for RabbitMQ's per-channel delivery tags)."""
    results_key: ClassVar[str]
    """The results publisher's setting that names its destination."""

    def __init__(self) -> None:
        self.uid = uuid.uuid4().hex[:12]
        self.names = self.make_names(self.uid)
        self._opened: list[S] = []

    @classmethod
    def for_test(cls, request: pytest.FixtureRequest) -> Self:
        """A harness for the test of ``request`` (one on a server the session starts asks for it)."""
        return cls()

    def make_names(self, uid: str) -> dict[str, str]:
        """The job source's settings that name what it uses: queues, streams, subjects."""
        raise NotImplementedError

    @property
    def unreachable_url(self) -> str:
        """A URL of this broker with the password ``s3cr3tpw``, on a closed port."""
        return urlunsplit(urlsplit(self.url)._replace(netloc="u:s3cr3tpw@127.0.0.1:1"))

    def unreachable_config(self) -> dict[str, Any]:
        """A source's configuration for this broker on a closed port, with the secret ``s3cr3tpw``."""
        return {"kind": self.kind, "url": self.unreachable_url, "connect_timeout_s": 1}

    def source_config(self, **overrides: Any) -> dict[str, Any]:
        """The configuration of a job source on the test's names (``overrides`` replace settings)."""
        return {"kind": self.kind, "url": self.url, **self.names, **overrides}

    @property
    def results_destination(self) -> str:
        """The test's results destination: a subject, queue or stream."""
        raise NotImplementedError

    def results_config(self) -> dict[str, Any]:
        """The configuration of a results publisher to the test's results destination."""
        return {"kind": self.kind, "url": self.url, self.results_key: self.results_destination}

    async def publish(self, bodies: Sequence[bytes]) -> None:
        """Publish one job message per body to the test's job queue."""
        raise NotImplementedError

    async def publish_jobs(self, count: int) -> None:
        """Publish ``count`` jobs ``{"n": 0}``, ``{"n": 1}``, ... to the test's job queue."""
        await self.publish([job(i) for i in range(count)])

    async def make_source(self, **overrides: Any) -> S:
        """An open source on the test's names (``overrides`` replace settings); closed at exit."""
        source: S = self.source_type.from_config(self.source_config(**overrides))
        await source.open()
        self._opened.append(source)
        return source

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for source in self._opened:
            await source.close()


H = TypeVar("H", bound=Harness[Any])


def harness_fixture(harness_type: type[H]) -> Callable[[], AsyncIterator[H]]:
    """A fixture ``harness``: a ``harness_type`` on names unique to one test, cleaned up after it."""

    async def harness(request: pytest.FixtureRequest) -> AsyncIterator[H]:
        async with harness_type.for_test(request) as h:
            yield h

    return pytest.fixture(harness)


async def receive_exactly(source: JobSource, count: int) -> list[Delivery]:
    """Receive until ``count`` deliveries arrived (a broker may push them over a few moments)."""
    got: list[Delivery] = []
    while len(got) < count:
        batch = await source.receive(count - len(got), timeout_s=5)
        assert batch, f"only {len(got)} of {count} deliveries arrived"
        got += batch
    return got


def job(n: int) -> bytes:
    return orjson.dumps({"n": n})


class NatsHarness(Harness[NatsSource]):
    """JetStream: job and dead-letter streams and a results subject per test; ``admin`` is a
    JetStream context."""

    source_type = NatsSource
    kind = "nats"
    url = NATS_URL
    results_key = "subject"
    bound_key = "max_ack_pending"
    takeover: ClassVar[Mapping[str, Any]] = {"ack_wait_s": 0.3}
    admin: JetStreamContext

    def make_names(self, uid: str) -> dict[str, str]:
        return {
            "stream": f"TJOBS_{uid}",
            "subject": f"test.{uid}.jobs",
            "dead_letter_subject": f"test.{uid}.dlq",
            "durable": "bulksend",
        }

    @property
    def results_subject(self) -> str:
        return f"test.{self.uid}.results"

    @property
    def results_stream(self) -> str:
        """The name for a stream on the results subject, which a test may create."""
        return f"TRESULTS_{self.uid}"

    results_destination = results_subject

    async def __aenter__(self) -> Self:
        self._nc: NatsClient = await nats.connect(self.url)
        self.admin = self._nc.jetstream()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await super().__aexit__(*exc_info)
        for stream in (self.names["stream"], f"{self.names['stream']}_DLQ", self.results_stream):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.admin.delete_stream(stream)
        await self._nc.close()

    async def publish(self, bodies: Sequence[bytes]) -> None:
        for body in bodies:
            await self.admin.publish(self.names["subject"], body)


class RabbitHarness(Harness[RabbitSource]):
    """RabbitMQ: a job queue, dead-letter exchange and queue and a results queue per test;
    ``admin`` is a channel."""

    source_type = RabbitSource
    kind = "rabbitmq"
    url = RABBIT_URL
    results_key = "queue"
    bound_key = "prefetch"
    stable_ids = False
    admin: AbstractChannel

    def make_names(self, uid: str) -> dict[str, str]:
        return {
            "queue": f"test.{uid}.jobs",
            "dead_letter_exchange": f"test.{uid}.dlx",
            "dead_letter_queue": f"test.{uid}.dlq",
        }

    @property
    def results_queue(self) -> str:
        return f"test.{self.uid}.results"

    results_destination = results_queue

    async def __aenter__(self) -> Self:
        self._conn: AbstractConnection = await aio_pika.connect(self.url)
        self.admin = await self._conn.channel()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await super().__aexit__(*exc_info)
        names = self.names
        cleanup = await self._conn.channel()
        for queue in (names["queue"], names["dead_letter_queue"], self.results_queue):
            await cleanup.queue_delete(queue)
        await cleanup.exchange_delete(names["dead_letter_exchange"])
        await self._conn.close()

    async def publish(self, bodies: Sequence[bytes]) -> None:
        for body in bodies:
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await self.admin.default_exchange.publish(message, routing_key=self.names["queue"])


class RedisHarness(Harness[RedisStreamSource]):
    """Redis Streams: job, dead-letter and results streams per test; ``admin`` is an untyped client."""

    source_type = RedisStreamSource
    kind = "redis"
    url = REDIS_URL
    results_key = "stream"
    bound_key = "max_in_flight"
    takeover: ClassVar[Mapping[str, Any]] = {"consumer": "second", "claim_idle_s": 0}
    admin: Any

    def make_names(self, uid: str) -> dict[str, str]:
        return {"stream": f"test:{uid}:jobs", "dead_letter_stream": f"test:{uid}:dlq", "group": "bulksend"}

    @property
    def results_stream(self) -> str:
        return f"test:{self.uid}:results"

    results_destination = results_stream

    async def __aenter__(self) -> Self:
        self.admin = aioredis.from_url(self.url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await super().__aexit__(*exc_info)
        names = self.names
        await self.admin.delete(names["stream"], names["dead_letter_stream"], self.results_stream)
        await self.admin.aclose()

    async def publish(self, bodies: Sequence[bytes]) -> None:
        for body in bodies:
            await self.admin.xadd(self.names["stream"], {"body": body})


async def xadd_jobs(client: Any, stream: str, count: int) -> list[str]:
    """Add ``count`` jobs ``{"n": i}`` to a Redis ``stream``; returns their entry ids."""
    return [(await client.xadd(stream, {"body": job(i)})).decode() for i in range(count)]


class SqsHarness(Harness[SqsSource]):
    """SQS on the session's moto server: job, dead-letter and results queues per test; ``admin``
    is an SQS client with the queues' URLs in ``urls``."""

    source_type = SqsSource
    kind = "sqs"
    bound_key = "max_in_flight"
    admin: Any

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.url = endpoint
        self.urls: dict[str, str] = {}
        self._stack = contextlib.AsyncExitStack()

    @classmethod
    def for_test(cls, request: pytest.FixtureRequest) -> Self:
        return cls(request.getfixturevalue("moto_endpoint"))

    def make_names(self, uid: str) -> dict[str, str]:
        return {"queue": f"test-{uid}-jobs", "dead_letter_queue": f"test-{uid}-dlq"}

    @property
    def settings(self) -> dict[str, Any]:
        """Endpoint, region and credentials: the keys every SQS configuration of the test shares."""
        return {
            "url": self.url,
            "region": MOTO_REGION,
            "access_key": MOTO_ACCESS_KEY,
            "secret_key": MOTO_SECRET_KEY,
        }

    @property
    def results_queue(self) -> str:
        return f"test-{self.uid}-results"

    def source_config(self, **overrides: Any) -> dict[str, Any]:
        return {"kind": self.kind, **self.settings, **self.names, **overrides}

    def results_config(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.settings, "queue": self.results_queue}

    def unreachable_config(self) -> dict[str, Any]:
        return {
            **self.source_config(),
            "url": "http://127.0.0.1:1",
            "secret_key": "s3cr3tpw",
            "connect_timeout_s": 1,
        }

    async def queue_url(self, name: str) -> str:
        """The URL of the test's queue ``name`` (created by a source's or publisher's open)."""
        if name not in self.urls:
            self.urls[name] = (await self.admin.get_queue_url(QueueName=name))["QueueUrl"]
        return self.urls[name]

    async def __aenter__(self) -> Self:
        self.admin = await self._stack.enter_async_context(
            sqs_client(SqsSettings.from_mapping({"kind": self.kind, **self.settings}))
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await super().__aexit__(*exc_info)
        for name in (self.names["queue"], self.names["dead_letter_queue"], self.results_queue):
            with contextlib.suppress(self.admin.exceptions.QueueDoesNotExist):
                await self.admin.delete_queue(QueueUrl=await self.queue_url(name))
        await self._stack.aclose()

    async def publish(self, bodies: Sequence[bytes]) -> None:
        url = await self.queue_url(self.names["queue"])
        for start in range(0, len(bodies), 10):
            chunk = bodies[start : start + 10]
            entries = [{"Id": str(i), "MessageBody": body.decode()} for i, body in enumerate(chunk)]
            answer = await self.admin.send_message_batch(QueueUrl=url, Entries=entries)
            assert not answer.get("Failed"), answer["Failed"]

    async def receive_raw(
        self, name: str, *, wait_s: int = 5, visibility_s: int = 30
    ) -> list[dict[str, Any]]:
        """Messages of the test's queue ``name`` as the admin client receives them (not deleted)."""
        answer = await self.admin.receive_message(
            QueueUrl=await self.queue_url(name),
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=visibility_s,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(answer.get("Messages", []))


HARNESSES: dict[str, type[Harness[Any]]] = {
    "nats": NatsHarness,
    "rabbitmq": RabbitHarness,
    "redis": RedisHarness,
    "sqs": SqsHarness,
}
