"""RabbitMQ (``kind = "rabbitmq"``): jobs from a queue with a dead-letter exchange, outcomes to a queue.

:class:`RabbitSource` reads jobs with manual acks, :class:`RabbitResultPublisher` publishes
outcomes with confirms and :func:`connect_rabbit` connects; their docstrings list every
configuration key.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeVar

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

from bulksend.brokers.base import (
    BrokerClient,
    BrokerError,
    BrokerPublisher,
    BrokerSettings,
    BrokerSource,
    Delivery,
    Inbox,
    PublishThenAck,
    connect_error,
)
from bulksend.errors import ConfigError

__all__ = [
    "HEADER_REASON",
    "HEADER_SOURCE_QUEUE",
    "RabbitDelivery",
    "RabbitSource",
    "RabbitSourceConfig",
    "connect_rabbit",
]

log = structlog.get_logger("bulksend.brokers.rabbitmq")

HEADER_REASON: Final = "x-bulksend-reason"
HEADER_SOURCE_QUEUE: Final = "x-bulksend-source-queue"

# Exceptions aio-pika/aiormq raise for a broker that is gone or refuses an operation.
_AMQP_ERRORS: Final = (aiormq.exceptions.AMQPError, OSError, TimeoutError, RuntimeError)


@dataclass(frozen=True, slots=True)
class RabbitSettings(BrokerSettings):
    """The settings a RabbitMQ source and publisher share: the broker and the connection timeout."""

    url: str = field(default="amqp://guest:guest@127.0.0.1:5672/", repr=False)
    connect_timeout_s: float = 5.0


async def connect_rabbit(url: str, *, connect_timeout_s: float) -> AbstractRobustConnection:
    """A robust connection (reconnects by itself once up); errors never show the password."""
    try:
        return await aio_pika.connect_robust(
            url,
            timeout=connect_timeout_s,
            client_properties={"connection_name": "bulksend"},
        )
    except _AMQP_ERRORS as exc:
        raise connect_error("RabbitMQ", url, exc) from None


RabbitSettingsT = TypeVar("RabbitSettingsT", bound=RabbitSettings)


class RabbitConnection(BrokerClient[RabbitSettingsT, AbstractRobustConnection]):
    """How a RabbitMQ source or publisher connects (:func:`connect_rabbit`), opens its channel
    and disconnects."""

    errors = _AMQP_ERRORS

    async def _connect(self) -> AbstractRobustConnection:
        return await connect_rabbit(self.config.url, connect_timeout_s=self.config.connect_timeout_s)

    async def _disconnect(self, conn: AbstractRobustConnection) -> None:
        with contextlib.suppress(*_AMQP_ERRORS):
            await conn.close()

    @staticmethod
    async def _confirming_channel(conn: AbstractRobustConnection) -> AbstractChannel:
        """A channel with publisher confirms, on which an unroutable ``mandatory`` publish raises."""
        return await conn.channel(publisher_confirms=True, on_return_raises=True)


@dataclass(frozen=True, slots=True)
class RabbitSourceConfig(RabbitSettings):
    """Settings of a :class:`RabbitSource` (its docstring describes each key)."""

    where: ClassVar[str] = "job source (rabbitmq)"

    queue: str = "bulksend.jobs"
    dead_letter_exchange: str = "bulksend.dlx"
    dead_letter_queue: str = "bulksend.jobs.dlq"
    prefetch: int = 256
    queue_type: str = field(default="classic", metadata={"choices": ("classic", "quorum")})

    def __post_init__(self) -> None:
        where = self.where
        if self.queue == self.dead_letter_queue:
            raise ConfigError(f"{where}: queue and dead_letter_queue must differ")
        if self.queue_type not in ("classic", "quorum"):
            raise ConfigError(f"{where}: queue_type must be classic or quorum")
        if not 1 <= self.prefetch <= 65535:
            raise ConfigError(f"{where}: prefetch must be 1..65535 (AMQP's limit)")
        if self.connect_timeout_s <= 0:
            raise ConfigError(f"{where}: connect_timeout_s must be > 0")


# The properties of a refused job that its dead letter keeps (besides body and headers).
_KEPT_PROPERTIES: Final = (
    "content_type",
    "content_encoding",
    "message_id",
    "correlation_id",
    "timestamp",
    "type",
    "app_id",
)


class RabbitDelivery(PublishThenAck):
    """A job from a :class:`RabbitSource`; ``message`` is the aio-pika message."""

    __slots__ = ("_owner", "message")

    errors = _AMQP_ERRORS

    def __init__(self, owner: RabbitSource, message: AbstractIncomingMessage) -> None:
        super().__init__(
            body=message.body,
            source=owner.name,
            message_id=str(message.delivery_tag),
            redelivered=bool(message.redelivered),
        )
        self._owner = owner
        self.message = message

    async def _ack(self) -> None:
        await self._call(self.message.ack(), "ack")

    async def _release(self) -> None:
        await self._call(self.message.nack(requeue=True), "nack")

    async def _publish_dead_letter(self, reason: str) -> None:
        m = self.message
        headers: dict[str, Any] = dict(m.headers or {})
        headers[HEADER_REASON] = reason
        headers[HEADER_SOURCE_QUEUE] = self._owner.config.queue
        kept: dict[str, Any] = {name: getattr(m, name) for name in _KEPT_PROPERTIES}
        dead = aio_pika.Message(
            m.body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **kept
        )
        exchange = self._owner._require(self._owner._dlx)
        await exchange.publish(dead, routing_key=self._owner.config.queue, mandatory=True)


class RabbitSource(
    RabbitConnection[RabbitSourceConfig], BrokerSource[RabbitSourceConfig, AbstractRobustConnection]
):
    """A :class:`~bulksend.brokers.base.JobSource` over a RabbitMQ queue.

    Configuration (``kind = "rabbitmq"``):

    =========================  ======================================  ===================================
    key                        default                                 meaning
    =========================  ======================================  ===================================
    ``url``                    ``amqp://guest:guest@127.0.0.1:5672/``  broker URL (``amqps://`` for TLS);
                                                                       the password is never logged
    ``queue``                  ``bulksend.jobs``                       durable queue of jobs
    ``dead_letter_exchange``   ``bulksend.dlx``                        direct exchange for refused jobs
    ``dead_letter_queue``      ``bulksend.jobs.dlq``                   durable queue bound to it
    ``prefetch``               ``256``                                 most unacknowledged jobs this
                                                                       process holds (``basic.qos``)
    ``queue_type``             ``classic``                             ``classic`` or ``quorum``
                                                                       (replicated; for clusters)
    ``connect_timeout_s``      ``5``                                   timeout of the first connection
    =========================  ======================================  ===================================

    On :meth:`RabbitSource.open` (all idempotent): the dead-letter exchange (direct, durable), the
    dead-letter queue bound to it with the job queue's name as routing key, and the job queue with
    ``x-dead-letter-exchange`` / ``x-dead-letter-routing-key`` pointing there, so that messages the
    broker itself dead-letters (rejected, expired, over a length limit) land in the same place. A
    queue that already exists with other arguments is refused by the broker; the error says so.

    The connection is robust (aio-pika reconnects and restores the channel, its QoS and the
    consumer). The broker pushes at most ``prefetch`` unacknowledged jobs; they wait in a buffer of
    that size and ``receive(n, timeout_s)`` hands out at most ``n`` of them. Jobs still in the buffer
    when a connection drops were requeued by the broker and are skipped here.

    Settling: ``ack`` is ``basic.ack``; ``release`` is ``basic.nack`` with requeue (redelivered with
    ``redelivered`` set); ``dead_letter`` publishes the body, with its original properties and
    headers plus ``x-bulksend-reason`` and ``x-bulksend-source-queue``, to the dead-letter exchange
    with publisher confirms (and ``mandatory``, so an unbound dead-letter queue is an error, not a
    silent drop), then acks the original. Closing the connection requeues whatever is unacked.

    ``message_id`` is the delivery tag (per channel); ``lag()`` is the queue's count of ready jobs.
    """

    config_type = RabbitSourceConfig

    def __init__(self, config: RabbitSourceConfig | None = None) -> None:
        super().__init__(config)
        self._channel: AbstractChannel | None = None
        self._info_channel: AbstractChannel | None = None
        self._dlx: AbstractExchange | None = None
        # Pushed by the broker, at most `prefetch` of them (basic.qos); drained by receive().
        self._buffer: Inbox[AbstractIncomingMessage] = Inbox()

    @property
    def name(self) -> str:
        return f"rabbitmq:{self.config.queue}"

    async def _setup(self, conn: AbstractRobustConnection) -> None:
        cfg = self.config
        try:
            channel = await self._confirming_channel(conn)
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
            await queue.consume(self._buffer.put, no_ack=False)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise BrokerError(
                f"{self.name}: the broker refused a declaration ({exc}); a queue or exchange with "
                "this name exists with other settings: delete it or pick other names"
            ) from None
        except _AMQP_ERRORS as exc:
            raise BrokerError(f"{self.name}: cannot set up queues: {exc or type(exc).__name__}") from None
        self._channel, self._info_channel, self._dlx = channel, info_channel, dlx
        log.info("rabbitmq source open", source=self.name, prefetch=cfg.prefetch)

    async def close(self) -> None:
        self._channel = self._info_channel = self._dlx = None
        # Unacked jobs (buffered or handed out) are requeued by the broker when the channel closes.
        self._buffer.clear()
        if self._conn is not None:
            await super().close()
            log.info("rabbitmq source closed", source=self.name)

    async def _receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        await self._buffer.wait(timeout_s)
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


# -- results publisher --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RabbitResultConfig(RabbitSettings):
    """Settings of a :class:`RabbitResultPublisher`."""

    where: ClassVar[str] = "results (rabbitmq)"

    queue: str = "bulksend.results"
    exchange: str | None = None
    routing_key: str | None = None


class RabbitResultPublisher(
    RabbitConnection[RabbitResultConfig], BrokerPublisher[RabbitResultConfig, AbstractRobustConnection]
):
    """Outcomes to a durable RabbitMQ queue (or an existing exchange), with publisher confirms.

    Configuration (``kind = "rabbitmq"``, under ``[results]``):

    =====================  ======================================  ====================================
    ``url``                ``amqp://guest:guest@127.0.0.1:5672/``  broker URL
    ``queue``              ``bulksend.results``                    durable queue, declared on open;
                                                                   outcomes go to it through the
                                                                   default exchange
    ``exchange``           (none)                                  publish to this existing exchange
                                                                   instead (``queue`` is then not
                                                                   declared)
    ``routing_key``        the queue name                          routing key used with ``exchange``
    ``connect_timeout_s``  ``5``                                   timeout of the first connection
    =====================  ======================================  ====================================

    Messages are persistent, ``content_type`` ``application/json``, published with confirms and
    ``mandatory`` (an unroutable outcome is an error, not a silent drop).
    """

    config_type = RabbitResultConfig

    def __init__(self, config: RabbitResultConfig | None = None) -> None:
        super().__init__(config)
        self._exchange: AbstractExchange | None = None

    @property
    def name(self) -> str:
        cfg = self.config
        if cfg.exchange:
            return f"rabbitmq:{cfg.exchange}/{cfg.routing_key or cfg.queue}"
        return f"rabbitmq:{cfg.queue}"

    async def _setup(self, conn: AbstractRobustConnection) -> None:
        cfg = self.config
        try:
            channel = await self._confirming_channel(conn)
            if cfg.exchange:
                exchange = await channel.get_exchange(cfg.exchange, ensure=True)
            else:
                await channel.declare_queue(cfg.queue, durable=True)
                exchange = channel.default_exchange
        except _AMQP_ERRORS as exc:
            raise BrokerError(f"{self.name}: cannot set up the results destination: {exc}") from None
        self._exchange = exchange

    async def close(self) -> None:
        self._exchange = None
        await super().close()

    async def _send(self, body: bytes) -> None:
        message = aio_pika.Message(
            body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        routing_key = self.config.routing_key or self.config.queue
        await self._require(self._exchange).publish(message, routing_key=routing_key, mandatory=True)

    async def healthy(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.is_closed and conn.connected.is_set()


# The builders (not openers) the registry in bulksend.brokers calls with a configuration table.
make_source = RabbitSource.from_config
make_publisher = RabbitResultPublisher.from_config
