"""The daemon end to end on each real broker (NATS JetStream, RabbitMQ, Redis Streams, SQS on moto)
and the sandbox.

Each test gets its own stream/queue names (a uuid) and deletes them afterwards. The broker
adapters below, built on the harnesses of :mod:`tests.brokers`, are shared with the process tests.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import anyio
import nats
import nats.errors
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from nats.js.client import JetStreamContext

from bulksend.brokers.nats import HEADER_REASON as NATS_REASON
from bulksend.brokers.rabbitmq import HEADER_REASON as RABBIT_REASON
from bulksend.brokers.sqs import HEADER_REASON as SQS_REASON
from bulksend.daemon.config import load_daemon_config
from bulksend.daemon.service import Daemon
from bulksend.sandbox import Sandbox
from tests.brokers import Harness, NatsHarness, RabbitHarness, RedisHarness, SqsHarness
from tests.conftest import settings_for
from tests.test_daemon import (
    DaemonWatch,
    check_results,
    check_sandbox_once,
    job_set,
    running,
    write_config,
)

Result = dict[str, Any]


class Broker(Harness[Any]):
    """A :class:`~tests.brokers.Harness` that also reads what the daemon sends back: its results
    and dead letters."""

    source_defaults: ClassVar[Mapping[str, Any]] = {}
    """Settings of the daemon's job source besides the test's names (a test may override them)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.results: list[Result] = []
        """Every result read from the results destination so far, in order."""

    def carries(self, body: bytes) -> bool:
        """Whether a producer can publish ``body`` on this broker (all bytes, unless said otherwise)."""
        return True

    def source_config(self, **overrides: Any) -> dict[str, Any]:
        return super().source_config(**{**self.source_defaults, **overrides})

    async def open(self) -> None:
        """Connect, and create what must exist before the daemon starts."""
        await self.__aenter__()
        await self._prepare_results()

    async def _prepare_results(self) -> None:
        """Create what reading the results needs (nothing by default)."""

    async def close(self) -> None:
        """Delete everything the test created, then disconnect."""
        await self.__aexit__(None, None, None)

    async def _read(self, timeout_s: float) -> list[Result]:
        """Results that arrive within ``timeout_s`` (a blocking read; possibly none)."""
        raise NotImplementedError

    async def read_results(self, keys: set[str], timeout_s: float = 20) -> None:
        """Read results (blocking reads) into :attr:`results` until every key in ``keys`` has one."""
        with anyio.fail_after(timeout_s):
            while not keys <= {r.get("idempotency_key") for r in self.results}:
                self.results += await self._read(1.0)

    async def read_rest(self) -> None:
        """Read whatever else is in the results destination (without waiting long)."""
        self.results += await self._read(0.2)

    async def dead_letters(self, n: int, timeout_s: float = 10) -> list[tuple[bytes, str]]:
        """The first ``n`` dead letters, as (body, reason)."""
        raise NotImplementedError

    async def jobs_left(self) -> int:
        """Job messages still in the queue: waiting, or delivered and not acknowledged."""
        raise NotImplementedError


class NatsBroker(Broker, NatsHarness):
    source_defaults: ClassVar[Mapping[str, Any]] = {"ack_wait_s": 5}
    _results: Any

    @property
    def js(self) -> JetStreamContext:
        return self.admin

    async def _prepare_results(self) -> None:
        # A stream on the results subject makes the daemon publish through JetStream (stored,
        # confirmed), and lets the test read results that arrived before it asked.
        await self.js.add_stream(name=self.results_stream, subjects=[self.results_subject])
        self._results = await self.js.pull_subscribe(self.results_subject, durable="reader")

    async def _read(self, timeout_s: float) -> list[Result]:
        try:
            msgs = await self._results.fetch(100, timeout=timeout_s)
        except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either, by code path
            return []
        for msg in msgs:
            await msg.ack()
        return [orjson.loads(m.data) for m in msgs]

    async def dead_letters(self, n: int, timeout_s: float = 10) -> list[tuple[bytes, str]]:
        stream = f"{self.names['stream']}_DLQ"
        subject = self.names["dead_letter_subject"]
        sub = await self.js.pull_subscribe(subject, durable="dlq-reader", stream=stream)
        got: list[tuple[bytes, str]] = []
        with anyio.fail_after(timeout_s):
            while len(got) < n:
                with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
                    for msg in await sub.fetch(n - len(got), timeout=1.0):
                        got.append((msg.data, unquote((msg.headers or {})[NATS_REASON])))
        return got

    async def jobs_left(self) -> int:
        consumer = await self.js.consumer_info(self.names["stream"], "bulksend")
        stream = await self.js.stream_info(self.names["stream"])
        unacked = int(consumer.num_pending or 0) + int(consumer.num_ack_pending or 0)
        return unacked + int(stream.state.messages)


class RabbitBroker(Broker, RabbitHarness):
    source_defaults: ClassVar[Mapping[str, Any]] = {"prefetch": 50}

    @property
    def channel(self) -> AbstractChannel:
        return self.admin

    async def _prepare_results(self) -> None:
        await self.channel.set_qos(prefetch_count=200)
        # Declared as the daemon's publisher declares it, so it exists before anything is published.
        self._results: AbstractQueue = await self.channel.declare_queue(self.results_queue, durable=True)

    async def _take(self, queue: AbstractQueue, n: int, timeout_s: float) -> list[AbstractIncomingMessage]:
        got: list[AbstractIncomingMessage] = []
        with contextlib.suppress(TimeoutError):
            async with queue.iterator(timeout=timeout_s) as messages:
                async for message in messages:
                    await message.ack()
                    got.append(message)
                    if len(got) >= n:
                        break
        return got

    async def _read(self, timeout_s: float) -> list[Result]:
        # Waits for one result at most timeout_s, then takes what follows without a long wait.
        first = await self._take(self._results, 1, timeout_s)
        rest = await self._take(self._results, 1000, 0.05) if first else []
        return [orjson.loads(m.body) for m in first + rest]

    async def dead_letters(self, n: int, timeout_s: float = 10) -> list[tuple[bytes, str]]:
        queue = await self.channel.get_queue(self.names["dead_letter_queue"])
        got = await self._take(queue, n, timeout_s)
        return [(m.body, str((m.headers or {})[RABBIT_REASON])) for m in got]

    async def jobs_left(self) -> int:
        # Passive declare: ready messages. Unacknowledged ones went back to ready when the
        # daemon's connection closed, so after a stop this counts them too.
        queue = await self.channel.declare_queue(self.names["queue"], passive=True)
        return int(queue.declaration_result.message_count or 0)


class RedisBroker(Broker, RedisHarness):
    def __init__(self) -> None:
        super().__init__()
        self._last_id = "0"

    @property
    def _client(self) -> Any:
        return self.admin

    async def _read(self, timeout_s: float) -> list[Result]:
        reply = await self._client.xread(
            {self.results_stream: self._last_id}, count=1000, block=max(1, int(timeout_s * 1000))
        )
        out: list[Result] = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self._last_id = entry_id.decode()
                out.append(orjson.loads(fields[b"body"]))
        return out

    async def dead_letters(self, n: int, timeout_s: float = 10) -> list[tuple[bytes, str]]:
        # Dead letters are written (in one transaction with the ack) before the message counts as
        # handled, so they are all there once the daemon has handled every message.
        entries = await self._client.xrange(self.names["dead_letter_stream"], count=n)
        return [(fields[b"body"], fields[b"reason"].decode()) for _, fields in entries]

    async def jobs_left(self) -> int:
        stream = self.names["stream"]
        pending = await self._client.xpending(stream, "bulksend")
        return int(pending["pending"]) + int(await self._client.xlen(stream))


# The characters an SQS message body may hold (anything else, SQS refuses to take).
_SQS_TEXT = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]+$")


class SqsBroker(Broker, SqsHarness):
    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self._dead: list[tuple[bytes, str]] = []

    def carries(self, body: bytes) -> bool:
        try:
            return bool(_SQS_TEXT.match(body.decode()))
        except UnicodeDecodeError:
            return False

    async def _prepare_results(self) -> None:
        # Created as the daemon's publisher creates it, so the test can read it from the start.
        self.urls[self.results_queue] = (await self.admin.create_queue(QueueName=self.results_queue))[
            "QueueUrl"
        ]

    async def _take(self, name: str, wait_s: int) -> list[dict[str, Any]]:
        messages = await self.receive_raw(name, wait_s=wait_s)
        url = await self.queue_url(name)
        for m in messages:
            await self.admin.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return messages

    async def _read(self, timeout_s: float) -> list[Result]:
        return [orjson.loads(m["Body"]) for m in await self._take(self.results_queue, round(timeout_s))]

    async def dead_letters(self, n: int, timeout_s: float = 10) -> list[tuple[bytes, str]]:
        # Dead letters are sent (and confirmed) before the message counts as handled, so once the
        # daemon has handled every message they are all there. Reading deletes them: keep them.
        while messages := await self._take(self.names["dead_letter_queue"], 0):
            self._dead += [
                (m["Body"].encode(), m["MessageAttributes"][SQS_REASON]["StringValue"]) for m in messages
            ]
        return self._dead[:n]

    async def jobs_left(self) -> int:
        attributes = (
            await self.admin.get_queue_attributes(
                QueueUrl=await self.queue_url(self.names["queue"]),
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )
        )["Attributes"]
        return sum(int(v) for v in attributes.values())


BROKERS: dict[str, type[Broker]] = {
    "nats": NatsBroker,
    "rabbitmq": RabbitBroker,
    "redis": RedisBroker,
    "sqs": SqsBroker,
}


@pytest.fixture(params=sorted(BROKERS))
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A broker with names unique to the test; everything is deleted afterwards."""
    b = BROKERS[request.param].for_test(request)
    await b.open()
    try:
        yield b
    finally:
        await b.close()


async def test_daemon_on_broker(tmp_path: Path, sandbox: Sandbox, broker: Broker) -> None:
    """Valid jobs on the broker each get one email and one result on the same broker; bad ones land
    in its dead-letter destination with their reasons; the duplicate sends nothing; no job is left."""
    jobs = job_set(30)
    path = write_config(tmp_path, sources=[broker.source_config()], results=broker.results_config())
    daemon = Daemon(load_daemon_config(path), settings_for(sandbox))
    watch = DaemonWatch(daemon)
    with anyio.fail_after(30):
        async with running(daemon):
            await broker.publish(jobs.bodies)
            await broker.read_results(set(jobs.valid))
            await watch.wait(jobs=len(jobs.bodies))  # every message handled: acked or dead-lettered
            dead = await broker.dead_letters(len(jobs.bad))
        await broker.read_rest()
        left = await broker.jobs_left()
    by_key = check_results(jobs, broker.results)
    assert {k: len(v) for k, v in by_key.items() if len(v) != 1} == {}  # the duplicate published nothing
    check_sandbox_once(sandbox, jobs.addresses)
    assert [body for body, _ in dead] == [body for body, _ in jobs.bad]
    for (_, reason), (_, fragment) in zip(dead, jobs.bad, strict=True):
        assert fragment in reason, reason
    assert left == 0
    assert sorted(result for _, result in watch.jobs) == sorted(
        ["admitted"] * len(jobs.valid) + ["duplicate"] + ["dead_lettered"] * len(jobs.bad)
    )
