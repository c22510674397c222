"""Job sources and result publishers: the small protocol between the daemon and the brokers.

A **job source** hands out messages (:class:`Delivery`) pull-style; the daemon parses each one
(:func:`bulksend.jobs.parse_job`), admits it durably into its outbox, and only *then* acks it.
Contract every source keeps:

- **Backpressure.** ``receive(n, timeout_s)`` returns at most ``n`` deliveries, possibly none,
  within about ``timeout_s``. A source never takes more from its broker than it was asked for,
  beyond a broker-side bound on unsettled messages, so a daemon that asks only for what it has
  room for never holds more than that in memory. Call ``receive`` from one task at a time.
- **At least once.** A delivery never acked comes back (here or elsewhere) with
  ``redelivered=True``; the daemon deduplicates by the job's ``idempotency_key``.
- **Settle exactly once.** By :meth:`Delivery.ack` (after the outbox row is durable),
  :meth:`Delivery.dead_letter` (body and reason to the dead-letter destination, then acked) or
  :meth:`Delivery.release` (given back unprocessed). The first settlement that succeeds wins;
  later calls do nothing. A failed one raises :class:`BrokerError` and leaves the delivery to be
  redelivered. Settlements are shielded from cancellation (for at most
  :data:`SETTLE_TIMEOUT_S`), so a shutdown cannot cut a dead-letter between publish and ack.
- **Closing** leaves unsettled deliveries to the broker, which redelivers them.

A **result publisher** sends one JSON object per final outcome to a results destination.

The implementations are in :mod:`bulksend.sources.nats`, :mod:`~bulksend.sources.rabbitmq`,
:mod:`~bulksend.sources.redis_streams` and :mod:`bulksend.sinks.results` (their keys: docs/daemon.md,
"Broker keys"); they need anyio's asyncio backend. :class:`MemorySource` is for tests.
"""

from __future__ import annotations

import itertools
import os
import socket
import unicodedata
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, Self, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import anyio

from bulksend.errors import BulksendError, ConfigError

__all__ = [
    "MAX_REASON_CHARS",
    "SETTLE_TIMEOUT_S",
    "BaseDelivery",
    "BrokerError",
    "ConfigReader",
    "DeadLetter",
    "Delivery",
    "JobSource",
    "MemoryDelivery",
    "MemoryQueue",
    "MemorySource",
    "ResultPublisher",
    "Settlement",
    "clean_reason",
    "default_consumer_name",
    "redact_url",
    "scrub",
    "source_from_config",
]

MAX_REASON_CHARS: Final = 1000
"""Dead-letter reasons are cut to this many characters (they travel in headers and fields)."""

SETTLE_TIMEOUT_S: Final = 10.0
"""How long one settlement may take, shielded from cancellation, before it fails."""

Settlement = Literal["acked", "dead_lettered", "released"]


class BrokerError(BulksendError):
    """A message broker could not be reached or refused an operation. Usually transient."""

    transient = True


# -- protocols ----------------------------------------------------------------------------------


@runtime_checkable
class Delivery(Protocol):
    """One message handed out by a :class:`JobSource`, waiting to be settled."""

    @property
    def body(self) -> bytes:
        """The message payload (a job, for :func:`bulksend.jobs.parse_job`)."""
        ...

    @property
    def source(self) -> str:
        """Which source it came from, such as ``nats:BULKSEND_JOBS/bulksend`` (for logs/metrics)."""
        ...

    @property
    def message_id(self) -> str:
        """The broker's id (stream sequence, delivery tag, stream entry id), for logs."""
        ...

    @property
    def redelivered(self) -> bool:
        """The broker says it delivered this message before."""
        ...

    @property
    def settled(self) -> Settlement | None:
        """How it was settled (``acked``, ``dead_lettered``, ``released``), or None while open."""
        ...

    async def ack(self) -> None:
        """Done with it: call ONLY after the job's outbox row is durable."""
        ...

    async def dead_letter(self, reason: str) -> None:
        """Publish the body and ``reason`` to the dead-letter destination, then ack the original."""
        ...

    async def release(self) -> None:
        """Give it back unprocessed, for redelivery (shutdown before admission)."""
        ...


@runtime_checkable
class JobSource(Protocol):
    """A broker queue of jobs, read pull-style. See the module docstring for the contract."""

    @property
    def name(self) -> str:
        """Stable label such as ``rabbitmq:bulksend.jobs`` (metrics, /readyz, logs)."""
        ...

    async def open(self) -> None:
        """Connect and ensure the stream/queue/group and the dead-letter destination exist."""
        ...

    async def close(self) -> None:
        """Disconnect. Unsettled deliveries go back to the broker (see the module docstring)."""
        ...

    async def receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Up to ``max_messages`` deliveries (possibly none) within about ``timeout_s`` seconds."""
        ...

    async def healthy(self) -> bool:
        """Whether the connection is usable (for /readyz). Never raises."""
        ...

    async def lag(self) -> int | None:
        """Messages waiting to be delivered (for metrics); None when unknown. Never raises."""
        ...


@runtime_checkable
class ResultPublisher(Protocol):
    """Publishes final outcomes, one JSON object (orjson-encoded) per message."""

    @property
    def name(self) -> str:
        """Stable label such as ``redis:bulksend:results``."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, outcome: Mapping[str, Any]) -> None:
        """Send one outcome; returns once the broker has it (raises :class:`BrokerError` if not)."""
        ...

    async def healthy(self) -> bool:
        """Whether the connection is usable (for /readyz). Never raises."""
        ...


# -- shared helpers for the implementations -----------------------------------------------------


class OpenClose:
    """``async with`` support for anything with ``open()``/``close()``."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class BaseDelivery:
    """Settle-once bookkeeping shared by every :class:`Delivery` implementation.

    Subclasses implement ``_ack``, ``_dead_letter`` and ``_release``; this class makes the first
    successful settlement win, shields it from cancellation and turns broker failures into
    :class:`BrokerError`. ``on_settled`` (if given) is called once, after that first success.
    """

    __slots__ = ("_busy", "_on_settled", "_settled", "body", "message_id", "redelivered", "source")

    def __init__(
        self,
        *,
        body: bytes,
        source: str,
        message_id: str,
        redelivered: bool,
        on_settled: Callable[[BaseDelivery], None] | None = None,
    ) -> None:
        self.body = body
        self.source = source
        self.message_id = message_id
        self.redelivered = redelivered
        self._on_settled = on_settled
        self._settled: Settlement | None = None
        self._busy = False

    @property
    def settled(self) -> Settlement | None:
        """How this delivery was settled, or None while it is still open."""
        return self._settled

    async def ack(self) -> None:
        await self._settle("acked", self._ack)

    async def dead_letter(self, reason: str) -> None:
        cleaned = clean_reason(reason)
        await self._settle("dead_lettered", lambda: self._dead_letter(cleaned))

    async def release(self) -> None:
        await self._settle("released", self._release)

    async def _ack(self) -> None:
        raise NotImplementedError

    async def _dead_letter(self, reason: str) -> None:
        raise NotImplementedError

    async def _release(self) -> None:
        raise NotImplementedError

    async def _settle(self, outcome: Settlement, op: Callable[[], Awaitable[None]]) -> None:
        if self._settled is not None or self._busy:
            return
        self._busy = True
        try:
            # Shielded: a cancelled dead-letter must not stop between "published to the DLQ" and
            # "original acked" (the message would be dead-lettered twice), and an ack that was
            # about to go out should go out. Bounded so a dead broker cannot hang a shutdown.
            with anyio.CancelScope(shield=True):
                try:
                    with anyio.fail_after(SETTLE_TIMEOUT_S):
                        await op()
                except TimeoutError:
                    raise BrokerError(
                        f"{self.source}: settling message {self.message_id} ({outcome}) took longer "
                        f"than {SETTLE_TIMEOUT_S:g} s; the broker will redeliver it"
                    ) from None
        finally:
            self._busy = False
        self._settled = outcome
        if self._on_settled is not None:
            self._on_settled(self)

    def __repr__(self) -> str:
        state = self._settled or "open"
        return (
            f"{type(self).__name__}(source={self.source!r}, message_id={self.message_id!r}, "
            f"redelivered={self.redelivered}, {state}, {len(self.body)} bytes)"
        )


def clean_reason(reason: str) -> str:
    """A dead-letter reason safe for headers and logs: one line, printable, at most 1000 chars."""
    chars = [" " if unicodedata.category(c).startswith("C") else c for c in str(reason)]
    text = " ".join("".join(chars).split())
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 1] + "…"
    return text or "no reason given"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``****`` (for logs, reprs and error messages)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:****@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable url>"


def scrub(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (if any) masked: for broker error messages."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "****")
    return text


def default_consumer_name() -> str:
    """``<hostname>-<pid>``: unique per process, stable for its lifetime."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ConfigReader:
    """Typed reads from one source/publisher configuration mapping.

    Unknown keys are refused up front with a :class:`ConfigError` naming the key, so a typo such
    as ``prefecth`` is not silently ignored.
    """

    def __init__(self, cfg: Mapping[str, Any], *, where: str, known: Sequence[str]) -> None:
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{where}: expected a table of settings, got {type(cfg).__name__}")
        self._cfg = cfg
        self._where = where
        allowed = {"kind", *known}
        unknown = sorted(str(k) for k in cfg if k not in allowed)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(allowed))}"
            )

    def text(self, key: str, default: str) -> str:
        value = self._cfg.get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self._where}: {key} must be a non-empty string")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self._cfg.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self._where}: {key} must be a non-empty string")
        return value

    def integer(self, key: str, default: int, *, minimum: int = 1) -> int:
        value = self._cfg.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{self._where}: {key} must be an integer >= {minimum}, got {value!r}")
        return value

    def seconds(self, key: str, default: float, *, minimum: float = 0.0, allow_zero: bool = False) -> float:
        value = self._cfg.get(key, default)
        ok = not isinstance(value, bool) and isinstance(value, int | float)
        if ok and (value < minimum or (value == 0 and not allow_zero)):
            ok = False
        if not ok:
            bound = f">= {minimum:g}" if allow_zero else "> 0"
            raise ConfigError(f"{self._where}: {key} must be a number of seconds {bound}, got {value!r}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._cfg.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self._where}: {key} must be true or false, got {value!r}")
        return value

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self._cfg.get(key, default)
        if value not in choices:
            raise ConfigError(f"{self._where}: {key} must be one of {', '.join(choices)}; got {value!r}")
        return str(value)


def source_from_config(cfg: Mapping[str, Any]) -> JobSource:
    """Build (not open) the job source described by ``cfg``; ``cfg["kind"]`` picks the broker.

    Kinds: ``nats`` (:class:`bulksend.sources.nats.NatsSource`), ``rabbitmq``
    (:class:`bulksend.sources.rabbitmq.RabbitSource`), ``redis``
    (:class:`bulksend.sources.redis_streams.RedisStreamSource`) and ``memory`` (:class:`MemorySource`,
    for tests). Raises :class:`ConfigError` for an unknown kind or key, or a bad value.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"job source: expected a table of settings, got {type(cfg).__name__}")
    kind = cfg.get("kind")
    if kind == "nats":
        from bulksend.sources.nats import NatsSource

        return NatsSource.from_config(cfg)
    if kind == "rabbitmq":
        from bulksend.sources.rabbitmq import RabbitSource

        return RabbitSource.from_config(cfg)
    if kind == "redis":
        from bulksend.sources.redis_streams import RedisStreamSource

        return RedisStreamSource.from_config(cfg)
    if kind == "memory":
        reader = ConfigReader(cfg, where="job source (memory)", known=("name", "max_in_flight"))
        return MemorySource(
            MemoryQueue(reader.text("name", "memory")),
            max_in_flight=reader.integer("max_in_flight", 1000),
        )
    raise ConfigError(f"job source: kind must be one of nats, rabbitmq, redis, memory; got {kind!r}")


# -- in-memory implementation -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message dead-lettered through a :class:`MemorySource`."""

    message_id: str
    body: bytes
    reason: str


class _MemoryMessage:
    __slots__ = ("body", "deliveries", "id")

    def __init__(self, message_id: str, body: bytes) -> None:
        self.id = message_id
        self.body = body
        self.deliveries = 0


class MemoryQueue:
    """An in-process broker queue: publish here, consume with one or more :class:`MemorySource`.

    Behaves like a work queue: each message goes to one consumer at a time; a released message, or
    one still unsettled when its consumer closes, goes back to the front and is redelivered.
    """

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._ready: deque[_MemoryMessage] = deque()
        self._ids = itertools.count(1)
        self._waiters: set[anyio.Event] = set()
        self.acked: list[str] = []
        """Ids of acked messages, in ack order."""
        self.dead_letters: list[DeadLetter] = []
        """Dead-lettered messages with their reasons, in order."""

    def publish(self, body: bytes) -> str:
        """Enqueue one message; returns its id."""
        message = _MemoryMessage(str(next(self._ids)), bytes(body))
        self._ready.append(message)
        self._wake()
        return message.id

    @property
    def waiting(self) -> int:
        """Messages not handed to any consumer right now."""
        return len(self._ready)

    def _requeue(self, messages: Sequence[_MemoryMessage]) -> None:
        # Back to the front, in their original order: they were next before they were taken.
        self._ready.extendleft(reversed(messages))
        self._wake()

    def _wake(self) -> None:
        for event in self._waiters:
            event.set()
        self._waiters.clear()

    async def _wait(self) -> None:
        event = anyio.Event()
        self._waiters.add(event)
        try:
            await event.wait()
        finally:
            self._waiters.discard(event)


class MemoryDelivery(BaseDelivery):
    """A delivery from a :class:`MemorySource`."""

    __slots__ = ("_message", "_owner")

    def __init__(self, owner: MemorySource, message: _MemoryMessage) -> None:
        super().__init__(
            body=message.body,
            source=owner.name,
            message_id=message.id,
            redelivered=message.deliveries > 1,
            on_settled=owner._forget,
        )
        self._owner = owner
        self._message = message

    def _check_held(self) -> None:
        # Like a broker: once the consumer is closed its unsettled messages were given back, and
        # settling them through the old consumer fails.
        if self._owner._in_flight.get(self._message.id) is not self._message:
            raise BrokerError(
                f"{self.source}: message {self.message_id} was given back when its consumer closed"
            )

    async def _ack(self) -> None:
        self._check_held()
        self._owner._queue.acked.append(self._message.id)

    async def _dead_letter(self, reason: str) -> None:
        self._check_held()
        self._owner._queue.dead_letters.append(DeadLetter(self._message.id, self._message.body, reason))

    async def _release(self) -> None:
        self._check_held()
        self._owner._queue._requeue([self._message])


class MemorySource(OpenClose):
    """A :class:`JobSource` over a :class:`MemoryQueue`, with the same contract as the brokers.

    ``max_in_flight`` bounds unsettled deliveries like NATS's ``max_ack_pending``.
    """

    def __init__(self, queue: MemoryQueue | None = None, *, max_in_flight: int = 1000) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._queue = queue if queue is not None else MemoryQueue()
        self._max_in_flight = max_in_flight
        self._in_flight: dict[str, _MemoryMessage] = {}
        self._state: Literal["new", "open", "closed"] = "new"

    @property
    def name(self) -> str:
        return f"memory:{self._queue.name}"

    @property
    def queue(self) -> MemoryQueue:
        return self._queue

    @property
    def in_flight(self) -> int:
        """Deliveries handed out and not yet settled."""
        return len(self._in_flight)

    def publish(self, body: bytes) -> str:
        """Shortcut for ``self.queue.publish(body)``."""
        return self._queue.publish(body)

    async def open(self) -> None:
        self._state = "open"

    async def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        # Like a broker noticing a dead consumer: everything unsettled becomes deliverable again.
        unsettled = list(self._in_flight.values())
        self._in_flight.clear()
        self._queue._requeue(unsettled)

    async def receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        if self._state != "open":
            raise BrokerError(f"{self.name}: receive() on a source that is not open")
        if max_messages < 1:
            return []
        with anyio.move_on_after(max(0.0, timeout_s)):
            while True:
                taken = self._take(max_messages)
                if taken:
                    return taken
                await self._queue._wait()
        return []

    def _take(self, max_messages: int) -> list[Delivery]:
        room = min(max_messages, self._max_in_flight - len(self._in_flight), len(self._queue._ready))
        out: list[Delivery] = []
        for _ in range(room):
            message = self._queue._ready.popleft()
            message.deliveries += 1
            self._in_flight[message.id] = message
            out.append(MemoryDelivery(self, message))
        return out

    def _forget(self, delivery: BaseDelivery) -> None:
        self._in_flight.pop(delivery.message_id, None)
        self._queue._wake()  # room for more: wake a receive() waiting on max_in_flight

    async def healthy(self) -> bool:
        return self._state == "open"

    async def lag(self) -> int | None:
        return self._queue.waiting

    def __repr__(self) -> str:
        return f"MemorySource({self._queue.name!r}, {self._state}, in_flight={len(self._in_flight)})"
