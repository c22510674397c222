"""Result publishers: each final outcome of a queued job, as one JSON message, to a broker.

Every publisher implements :class:`bulksend.sources.base.ResultPublisher`; ``publish(outcome)``
encodes the mapping with orjson (datetimes as RFC 3339 UTC with ``Z``; naive ones taken as UTC)
and returns once the broker has the message, raising :class:`~bulksend.sources.base.BrokerError`
when it cannot. Build one with :func:`publisher_from_config`; ``kind`` picks the broker
(``"nats"``, ``"rabbitmq"``, ``"redis"``; their keys: docs/daemon.md, "Broker keys"), and
``kind = "memory"`` keeps outcomes in a list (:class:`MemoryResultPublisher`), for tests.

NATS: if a JetStream stream captures ``subject`` (checked on open), each publish waits for the
stream's confirmation; otherwise outcomes are plain NATS messages, seen only by subscribers
connected at the time.

RabbitMQ: messages are persistent, ``application/json``, published with confirms and
``mandatory`` (an unroutable outcome is an error, not a silent drop).

Redis: the stream is trimmed to about ``maxlen`` entries (``XADD … MAXLEN ~``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aio_pika
import aiormq.exceptions
import nats.errors
import nats.js.errors
import orjson
import redis.asyncio as aioredis
import redis.exceptions
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from bulksend.errors import ConfigError
from bulksend.sources.base import BrokerError, ConfigReader, OpenClose, ResultPublisher, redact_url
from bulksend.sources.nats import connect_nats
from bulksend.sources.rabbitmq import connect_rabbit
from bulksend.sources.redis_streams import connect_redis

__all__ = [
    "MemoryResultPublisher",
    "NatsResultConfig",
    "NatsResultPublisher",
    "RabbitResultConfig",
    "RabbitResultPublisher",
    "RedisResultConfig",
    "RedisResultPublisher",
    "ResultPublisher",
    "encode_outcome",
    "publisher_from_config",
]

_ORJSON_OPTIONS: Final = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS
_REQUEST_TIMEOUT_S: Final = 5.0


def encode_outcome(outcome: Mapping[str, Any]) -> bytes:
    """The JSON body of one result message."""
    try:
        return orjson.dumps(dict(outcome), option=_ORJSON_OPTIONS)
    except TypeError as exc:
        raise ValueError(f"outcome is not JSON-serialisable: {exc}") from None


def _not_open(name: str) -> BrokerError:
    return BrokerError(f"{name}: publisher is not open")


# -- NATS ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NatsResultConfig:
    """Settings of a :class:`NatsResultPublisher`."""

    url: str = field(default="nats://127.0.0.1:4222", repr=False)
    subject: str = "bulksend.results"
    connect_timeout_s: float = 5.0

    @classmethod
    def from_mapping(cls, cfg: Any) -> NatsResultConfig:
        r = ConfigReader(cfg, where="results (nats)", known=("url", "subject", "connect_timeout_s"))
        d = cls()
        return cls(
            url=r.text("url", d.url),
            subject=r.text("subject", d.subject),
            connect_timeout_s=r.seconds("connect_timeout_s", d.connect_timeout_s),
        )


class NatsResultPublisher(OpenClose):
    """Outcomes to a NATS subject (through JetStream when a stream captures it)."""

    def __init__(self, config: NatsResultConfig | None = None) -> None:
        self.config = config or NatsResultConfig()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None

    @property
    def name(self) -> str:
        return f"nats:{self.config.subject}"

    @property
    def uses_jetstream(self) -> bool:
        """Whether publishes go through JetStream (a stream captured the subject at open)."""
        return self._js is not None

    async def open(self) -> None:
        if self._nc is not None:
            return
        nc = await connect_nats(self.config.url, connect_timeout_s=self.config.connect_timeout_s)
        js = nc.jetstream(timeout=_REQUEST_TIMEOUT_S)
        try:
            await js.find_stream_name_by_subject(self.config.subject)
        except nats.js.errors.NotFoundError:
            self._js = None
        except (TimeoutError, nats.errors.Error):
            # JetStream unavailable (not enabled, or not answering): plain NATS publishes.
            self._js = None
        else:
            self._js = js
        self._nc = nc

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            with contextlib.suppress(OSError, TimeoutError, nats.errors.Error):
                await nc.flush(timeout=2)
            await nc.close()

    async def publish(self, outcome: Mapping[str, Any]) -> None:
        nc = self._nc
        if nc is None:
            raise _not_open(self.name)
        body = encode_outcome(outcome)
        try:
            if self._js is not None:
                await self._js.publish(self.config.subject, body, timeout=_REQUEST_TIMEOUT_S)
            else:
                await nc.publish(self.config.subject, body)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise BrokerError(
                f"{self.name}: cannot publish an outcome: {exc or type(exc).__name__}"
            ) from None

    async def healthy(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def __repr__(self) -> str:
        return f"NatsResultPublisher({self.name!r}, url={redact_url(self.config.url)!r})"


# -- RabbitMQ -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RabbitResultConfig:
    """Settings of a :class:`RabbitResultPublisher`."""

    url: str = field(default="amqp://guest:guest@127.0.0.1:5672/", repr=False)
    queue: str = "bulksend.results"
    exchange: str | None = None
    routing_key: str | None = None
    connect_timeout_s: float = 5.0

    @classmethod
    def from_mapping(cls, cfg: Any) -> RabbitResultConfig:
        r = ConfigReader(
            cfg,
            where="results (rabbitmq)",
            known=("url", "queue", "exchange", "routing_key", "connect_timeout_s"),
        )
        d = cls()
        return cls(
            url=r.text("url", d.url),
            queue=r.text("queue", d.queue),
            exchange=r.optional_text("exchange"),
            routing_key=r.optional_text("routing_key"),
            connect_timeout_s=r.seconds("connect_timeout_s", d.connect_timeout_s),
        )


class RabbitResultPublisher(OpenClose):
    """Outcomes to a durable RabbitMQ queue (or an existing exchange), with publisher confirms."""

    def __init__(self, config: RabbitResultConfig | None = None) -> None:
        self.config = config or RabbitResultConfig()
        self._conn: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None

    @property
    def name(self) -> str:
        cfg = self.config
        if cfg.exchange:
            return f"rabbitmq:{cfg.exchange}/{cfg.routing_key or cfg.queue}"
        return f"rabbitmq:{cfg.queue}"

    async def open(self) -> None:
        if self._conn is not None:
            return
        cfg = self.config
        conn = await connect_rabbit(cfg.url, connect_timeout_s=cfg.connect_timeout_s)
        try:
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            if cfg.exchange:
                exchange = await channel.get_exchange(cfg.exchange, ensure=True)
            else:
                await channel.declare_queue(cfg.queue, durable=True)
                exchange = channel.default_exchange
        except (aiormq.exceptions.AMQPError, OSError, TimeoutError, RuntimeError) as exc:
            await conn.close()
            raise BrokerError(f"{self.name}: cannot set up the results destination: {exc}") from None
        self._conn, self._exchange = conn, exchange

    async def close(self) -> None:
        conn, self._conn, self._exchange = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(aiormq.exceptions.AMQPError, OSError, RuntimeError):
                await conn.close()

    async def publish(self, outcome: Mapping[str, Any]) -> None:
        exchange = self._exchange
        if exchange is None:
            raise _not_open(self.name)
        message = aio_pika.Message(
            encode_outcome(outcome),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        routing_key = self.config.routing_key or self.config.queue
        try:
            await exchange.publish(message, routing_key=routing_key, mandatory=True)
        except (aiormq.exceptions.AMQPError, OSError, TimeoutError, RuntimeError) as exc:
            raise BrokerError(
                f"{self.name}: cannot publish an outcome: {exc or type(exc).__name__}"
            ) from None

    async def healthy(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    def __repr__(self) -> str:
        return f"RabbitResultPublisher({self.name!r}, url={redact_url(self.config.url)!r})"


# -- Redis --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisResultConfig:
    """Settings of a :class:`RedisResultPublisher`."""

    url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    stream: str = "bulksend:results"
    body_field: str = "body"
    maxlen: int = 1_000_000
    connect_timeout_s: float = 5.0

    @classmethod
    def from_mapping(cls, cfg: Any) -> RedisResultConfig:
        r = ConfigReader(
            cfg, where="results (redis)", known=("url", "stream", "body_field", "maxlen", "connect_timeout_s")
        )
        d = cls()
        return cls(
            url=r.text("url", d.url),
            stream=r.text("stream", d.stream),
            body_field=r.text("body_field", d.body_field),
            maxlen=r.integer("maxlen", d.maxlen),
            connect_timeout_s=r.seconds("connect_timeout_s", d.connect_timeout_s),
        )


class RedisResultPublisher(OpenClose):
    """Outcomes added to a Redis stream, trimmed to about ``maxlen`` entries."""

    def __init__(self, config: RedisResultConfig | None = None) -> None:
        self.config = config or RedisResultConfig()
        self._client: aioredis.Redis | None = None

    @property
    def name(self) -> str:
        return f"redis:{self.config.stream}"

    async def open(self) -> None:
        if self._client is None:
            self._client = await connect_redis(
                self.config.url, connect_timeout_s=self.config.connect_timeout_s
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def publish(self, outcome: Mapping[str, Any]) -> None:
        client = self._client
        if client is None:
            raise _not_open(self.name)
        cfg = self.config
        try:
            await client.xadd(
                cfg.stream, {cfg.body_field: encode_outcome(outcome)}, maxlen=cfg.maxlen, approximate=True
            )
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise BrokerError(f"{self.name}: cannot publish an outcome: {exc}") from None

    async def healthy(self) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            return bool(await client.ping())
        except (redis.exceptions.RedisError, OSError, TimeoutError):
            return False

    def __repr__(self) -> str:
        return f"RedisResultPublisher({self.name!r}, url={redact_url(self.config.url)!r})"


# -- memory -------------------------------------------------------------------------------------


class MemoryResultPublisher(OpenClose):
    """Keeps outcomes in memory (``outcomes`` decoded, ``messages`` as sent), for tests."""

    def __init__(self, name: str = "memory") -> None:
        self._name = name
        self._open = False
        self.messages: list[bytes] = []
        self.outcomes: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return f"memory:{self._name}"

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def publish(self, outcome: Mapping[str, Any]) -> None:
        if not self._open:
            raise _not_open(self.name)
        body = encode_outcome(outcome)
        self.messages.append(body)
        self.outcomes.append(orjson.loads(body))

    async def healthy(self) -> bool:
        return self._open

    def __repr__(self) -> str:
        return f"MemoryResultPublisher({self._name!r}, {len(self.messages)} published)"


def publisher_from_config(cfg: Mapping[str, Any]) -> ResultPublisher:
    """Build (not open) the result publisher described by ``cfg`` (keys in the module docstring)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"results: expected a table of settings, got {type(cfg).__name__}")
    kind = cfg.get("kind")
    if kind == "nats":
        return NatsResultPublisher(NatsResultConfig.from_mapping(cfg))
    if kind == "rabbitmq":
        return RabbitResultPublisher(RabbitResultConfig.from_mapping(cfg))
    if kind == "redis":
        return RedisResultPublisher(RedisResultConfig.from_mapping(cfg))
    if kind == "memory":
        r = ConfigReader(cfg, where="results (memory)", known=("name",))
        return MemoryResultPublisher(r.text("name", "memory"))
    raise ConfigError(f"results: kind must be one of nats, rabbitmq, redis, memory; got {kind!r}")
