"""Jobs from a RabbitMQ queue, with manual acks and a dead-letter exchange.

Configuration keys (``kind = "rabbitmq"``) and their defaults: docs/daemon.md, "Broker keys".

On :meth:`RabbitSource.open` (all idempotent): the dead-letter exchange (direct, durable), the
dead-letter queue bound to it with the job queue's name as routing key, and the job queue with
``x-dead-letter-exchange`` / ``x-dead-letter-routing-key`` pointing there, so that messages the
broker itself dead-letters (rejected, expired, over a length limit) land in the same place. A
queue that already exists with other arguments is refused by the broker; the error says so.

The connection is robust (aio-pika reconnects and restores the channel, its QoS and the
consumer). The broker pushes at most ``prefetch`` unacknowledged jobs; they wait in a buffer of
that size and ``receive(n, timeout_s)`` hands out at most ``n`` of them. Jobs still in the buffer
when a connection drops were requeued by the broker and are skipped here.

Settling: ``ack`` is ``basic.ack``; ``release`` is ``basic.nack`` with requeue; ``dead_letter``
publishes the body, with its original properties and headers plus ``x-bulksend-reason`` and
``x-bulksend-source-queue``, to the dead-letter exchange with publisher confirms (and
``mandatory``, so an unbound dead-letter queue is an error, not a silent drop), then acks the
original. Closing the connection requeues whatever is unacked.

``message_id`` is the delivery tag (per channel); ``lag()`` is the queue's count of ready jobs.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
import anyio
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from bulksend.errors import ConfigError
from bulksend.sources.base import (
    BaseDelivery,
    BrokerError,
    ConfigReader,
    Delivery,
    OpenClose,
    redact_url,
    scrub,
)

__all__ = [
    "HEADER_REASON",
    "HEADER_SOURCE_QUEUE",
    "RabbitDelivery",
    "RabbitSource",
    "RabbitSourceConfig",
    "connect_rabbit",
]

log = structlog.get_logger("bulksend.sources.rabbitmq")

HEADER_REASON: Final = "x-bulksend-reason"
HEADER_SOURCE_QUEUE: Final = "x-bulksend-source-queue"

# Exceptions aio-pika/aiormq raise for a broker that is gone or refuses an operation.
_AMQP_ERRORS: Final = (aiormq.exceptions.AMQPError, OSError, TimeoutError, RuntimeError)
_KNOWN_KEYS: Final = (
    "url",
    "queue",
    "dead_letter_exchange",
    "dead_letter_queue",
    "prefetch",
    "queue_type",
    "connect_timeout_s",
)


@dataclass(frozen=True, slots=True)
class RabbitSourceConfig:
    """Settings of a :class:`RabbitSource` (see the module docstring for each key)."""

    url: str = field(default="amqp://guest:guest@127.0.0.1:5672/", repr=False)
    queue: str = "bulksend.jobs"
    dead_letter_exchange: str = "bulksend.dlx"
    dead_letter_queue: str = "bulksend.jobs.dlq"
    prefetch: int = 256
    queue_type: str = "classic"
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        where = "job source (rabbitmq)"
        if self.queue == self.dead_letter_queue:
            raise ConfigError(f"{where}: queue and dead_letter_queue must differ")
        if self.queue_type not in ("classic", "quorum"):
            raise ConfigError(f"{where}: queue_type must be classic or quorum")
        if not 1 <= self.prefetch <= 65535:
            raise ConfigError(f"{where}: prefetch must be 1..65535 (AMQP's limit)")
        if self.connect_timeout_s <= 0:
            raise ConfigError(f"{where}: connect_timeout_s must be > 0")

    @classmethod
    def from_mapping(cls, cfg: Any) -> RabbitSourceConfig:
        r = ConfigReader(cfg, where="job source (rabbitmq)", known=_KNOWN_KEYS)
        d = cls()
        return cls(
            url=r.text("url", d.url),
            queue=r.text("queue", d.queue),
            dead_letter_exchange=r.text("dead_letter_exchange", d.dead_letter_exchange),
            dead_letter_queue=r.text("dead_letter_queue", d.dead_letter_queue),
            prefetch=r.integer("prefetch", d.prefetch),
            queue_type=r.choice("queue_type", d.queue_type, ("classic", "quorum")),
            connect_timeout_s=r.seconds("connect_timeout_s", d.connect_timeout_s),
        )


async def connect_rabbit(url: str, *, connect_timeout_s: float) -> AbstractRobustConnection:
    """A robust connection (reconnects by itself once up); errors never show the password."""
    try:
        return await aio_pika.connect_robust(
            url,
            timeout=connect_timeout_s,
            client_properties={"connection_name": "bulksend"},
        )
    except _AMQP_ERRORS as exc:
        raise BrokerError(
            f"cannot connect to RabbitMQ at {redact_url(url)}: {scrub(str(exc), url) or type(exc).__name__}"
        ) from None


class RabbitDelivery(BaseDelivery):
    """A job from a :class:`RabbitSource`; ``message`` is the aio-pika message."""

    __slots__ = ("_dead_lettered", "_owner", "message")

    def __init__(self, owner: RabbitSource, message: AbstractIncomingMessage) -> None:
        super().__init__(
            body=message.body,
            source=owner.name,
            message_id=str(message.delivery_tag),
            redelivered=bool(message.redelivered),
        )
        self._owner = owner
        self.message = message
        self._dead_lettered = False

    async def _ack(self) -> None:
        await self._call(self.message.ack(), "ack")

    async def _release(self) -> None:
        await self._call(self.message.nack(requeue=True), "nack")

    async def _dead_letter(self, reason: str) -> None:
        # Confirmed publish first, ack second: a crash in between redelivers the job (and it is
        # dead-lettered again) instead of losing it.
        if not self._dead_lettered:
            m = self.message
            headers: dict[str, Any] = dict(m.headers or {})
            headers[HEADER_REASON] = reason
            headers[HEADER_SOURCE_QUEUE] = self._owner.config.queue
            dead = aio_pika.Message(
                m.body,
                headers=headers,
                content_type=m.content_type,
                content_encoding=m.content_encoding,
                message_id=m.message_id,
                correlation_id=m.correlation_id,
                timestamp=m.timestamp,
                type=m.type,
                app_id=m.app_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            exchange = self._owner._dead_letter_exchange()
            publish = exchange.publish(dead, routing_key=self._owner.config.queue, mandatory=True)
            await self._call(publish, "dead-letter publish")
            self._dead_lettered = True
        await self._call(self.message.ack(), "ack")

    async def _call(self, op: Any, what: str) -> None:
        try:
            await op
        except _AMQP_ERRORS as exc:
            raise BrokerError(
                f"{self.source}: {what} of message {self.message_id} failed "
                f"({exc or type(exc).__name__}); the broker redelivers it"
            ) from None


class RabbitSource(OpenClose):
    """A :class:`~bulksend.sources.base.JobSource` over a RabbitMQ queue."""

    def __init__(self, config: RabbitSourceConfig | None = None) -> None:
        self.config = config or RabbitSourceConfig()
        self._conn: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._info_channel: AbstractChannel | None = None
        self._dlx: AbstractExchange | None = None
        # Pushed by the broker, at most `prefetch` of them (basic.qos); drained by receive().
        self._buffer: deque[AbstractIncomingMessage] = deque()
        self._buffer_event: anyio.Event | None = None
        self._receive_lock = anyio.Lock()

    @classmethod
    def from_config(cls, cfg: Any) -> RabbitSource:
        """Build from a configuration mapping (keys in the module docstring)."""
        return cls(RabbitSourceConfig.from_mapping(cfg))

    @property
    def name(self) -> str:
        return f"rabbitmq:{self.config.queue}"

    def _dead_letter_exchange(self) -> AbstractExchange:
        if self._dlx is None:
            raise BrokerError(f"{self.name}: not open")
        return self._dlx

    async def open(self) -> None:
        if self._conn is not None:
            return
        cfg = self.config
        conn = await connect_rabbit(cfg.url, connect_timeout_s=cfg.connect_timeout_s)
        try:
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            await channel.set_qos(prefetch_count=cfg.prefetch)
            type_args: dict[str, Any] = {"x-queue-type": "quorum"} if cfg.queue_type == "quorum" else {}
            dlx = await channel.declare_exchange(
                cfg.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
            )
            dlq = await channel.declare_queue(
                cfg.dead_letter_queue, durable=True, arguments=type_args or None
            )
            await dlq.bind(dlx, routing_key=cfg.queue)
            queue = await channel.declare_queue(
                cfg.queue,
                durable=True,
                arguments={
                    "x-dead-letter-exchange": cfg.dead_letter_exchange,
                    "x-dead-letter-routing-key": cfg.queue,
                    **type_args,
                },
            )
            # A second channel for lag(): a failed passive declare closes its channel, and that
            # must never be the one consuming.
            info_channel = await conn.channel(publisher_confirms=False)
            await queue.consume(self._on_message, no_ack=False)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            await conn.close()
            raise BrokerError(
                f"{self.name}: the broker refused a declaration ({exc}); a queue or exchange with "
                "this name exists with other settings: delete it or pick other names"
            ) from None
        except _AMQP_ERRORS as exc:
            await conn.close()
            raise BrokerError(f"{self.name}: cannot set up queues: {exc or type(exc).__name__}") from None
        except BaseException:
            await conn.close()
            raise
        self._conn, self._channel, self._info_channel, self._dlx = conn, channel, info_channel, dlx
        log.info("rabbitmq source open", source=self.name, prefetch=cfg.prefetch)

    async def close(self) -> None:
        conn = self._conn
        self._conn = self._channel = self._info_channel = self._dlx = None
        # Unacked jobs (buffered or handed out) are requeued by the broker when the channel closes.
        self._buffer.clear()
        if conn is None:
            return
        with contextlib.suppress(*_AMQP_ERRORS):
            await conn.close()
        log.info("rabbitmq source closed", source=self.name)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._buffer.append(message)
        if self._buffer_event is not None:
            self._buffer_event.set()

    async def receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        if self._conn is None:
            raise BrokerError(f"{self.name}: receive() on a source that is not open")
        if max_messages < 1:
            return []
        async with self._receive_lock:
            with anyio.move_on_after(max(0.0, timeout_s)):
                while not self._buffer:
                    self._buffer_event = anyio.Event()
                    try:
                        await self._buffer_event.wait()
                    finally:
                        self._buffer_event = None
            out: list[Delivery] = []
            while self._buffer and len(out) < max_messages:
                message = self._buffer.popleft()
                try:
                    message.channel  # noqa: B018 - raises when the channel it came on is closed
                except aio_pika.exceptions.ChannelInvalidStateError:
                    continue  # its channel is gone, so the broker has requeued it
                out.append(RabbitDelivery(self, message))
            return out

    async def healthy(self) -> bool:
        conn, channel = self._conn, self._channel
        if conn is None or channel is None:
            return False
        return not conn.is_closed and conn.connected.is_set() and not channel.is_closed

    async def lag(self) -> int | None:
        channel = self._info_channel
        if channel is None:
            return None
        try:
            with anyio.fail_after(5):
                raw = await channel.get_underlay_channel()
                declared = await raw.queue_declare(self.config.queue, passive=True)
        except (*_AMQP_ERRORS, aio_pika.exceptions.ChannelInvalidStateError) as exc:
            log.debug("rabbitmq lag unavailable", source=self.name, error=str(exc))
            return None
        count = declared.message_count
        return int(count) if count is not None else None

    def __repr__(self) -> str:
        state = "open" if self._conn is not None else "closed"
        return f"RabbitSource({self.name!r}, url={redact_url(self.config.url)!r}, {state})"
