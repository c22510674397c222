"""The broker-neutral half of the daemon's brokers: protocols, settle-once bookkeeping, helpers.

A **job source** (:class:`JobSource`) hands out messages (:class:`Delivery`) pull-style; the
daemon parses each one, admits it durably into its outbox, and only *then* settles it::

    source = source_from_config({"kind": "nats", "stream": "BULKSEND_JOBS", ...})
    await source.open()
    while running:
        for delivery in await source.receive(max_messages=room, timeout_s=1.0):
            try:
                job = parse_job(delivery.body)
            except JobError as exc:
                await delivery.dead_letter(exc.reason)   # to the DLQ, with the reason
                continue
            await store.admit(...)                       # durable first ...
            await delivery.ack()                         # ... then acknowledged
    await source.close()

A **result publisher** (:class:`ResultPublisher`) sends one JSON object per final outcome.

Each broker has its own module in :mod:`bulksend.brokers` (``nats``, ``rabbitmq``,
``redis_streams``, ``memory``) with its source, publisher and connect helper; the registry in
:mod:`bulksend.brokers` imports one only when a configuration names its ``kind``, so a client
library is loaded only for a broker in use. They need anyio's asyncio backend.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import typing
import unicodedata
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Final, Generic, Literal, Protocol, Self, TypeVar, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import anyio
import orjson

# BrokerError lives in the error tree; it belongs to this module's API too.
from bulksend.errors import BrokerError, ConfigError
from bulksend.lifecycle import OpenClose

__all__ = [
    "MAX_REASON_CHARS",
    "SETTLE_TIMEOUT_S",
    "BaseDelivery",
    "BrokerClient",
    "BrokerDelivery",
    "BrokerError",
    "BrokerPublisher",
    "BrokerSettings",
    "BrokerSource",
    "ConfigReader",
    "Delivery",
    "Inbox",
    "JobSource",
    "OpenClose",
    "PublishThenAck",
    "ResultPublisher",
    "Settlement",
    "clean_reason",
    "connect_error",
    "default_consumer_name",
    "encode_outcome",
    "not_open",
    "redact_url",
    "scrub",
]

MAX_REASON_CHARS: Final = 1000
"""Dead-letter reasons are cut to this many characters (they travel in headers and fields)."""

SETTLE_TIMEOUT_S: Final = 10.0
"""How long one settlement may take, shielded from cancellation, before it fails."""

Settlement = Literal["acked", "dead_lettered", "released"]


# -- protocols ----------------------------------------------------------------------------------


@runtime_checkable
class Delivery(Protocol):
    """One message handed out by a :class:`JobSource`, waiting to be settled."""

    @property
    def body(self) -> bytes:
        """The message payload (a job, for :func:`bulksend.jobs.format.parse_job`)."""
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
    """A broker queue of jobs, read pull-style. The contract every source keeps:

    - **Backpressure.** ``receive(n, timeout_s)`` returns at most ``n`` deliveries, possibly none,
      within about ``timeout_s`` seconds. A source never takes more from its broker than it was
      asked for, beyond a broker-side bound on unsettled messages (NATS ``max_ack_pending``,
      RabbitMQ ``prefetch``, Redis ``max_in_flight``), so a daemon that asks only for what it has
      room for never holds more than that in memory. Call ``receive`` from one task at a time.
    - **At least once.** A delivery that is never acked comes back (to this or another consumer)
      with ``redelivered=True``: after a release, a crash, a closed connection or a timeout. A job
      may therefore be seen twice; the daemon deduplicates by the job's ``idempotency_key``.
    - **Settle exactly once.** Each delivery is settled by one of :meth:`Delivery.ack` (after the
      outbox row is durable), :meth:`Delivery.dead_letter` (the body and reason go to the
      dead-letter destination, then the original is acked) or :meth:`Delivery.release` (given
      back unprocessed, for a shutdown before admission). The first settlement that succeeds
      wins; later calls (and calls made while one is in progress) do nothing. A settlement that
      fails raises :class:`BrokerError` and leaves the delivery unsettled: the broker will
      redeliver it. Settlements are shielded from cancellation (for at most
      :data:`SETTLE_TIMEOUT_S`), so a shutdown cannot cut a dead-letter between its publish and
      its ack.
    - **Closing** leaves unsettled deliveries to the broker: RabbitMQ requeues them at once, NATS
      after ``ack_wait_s``, Redis when another consumer claims them after ``claim_idle_s``.
    """

    @property
    def name(self) -> str:
        """Stable label such as ``rabbitmq:bulksend.jobs`` (metrics, /readyz, logs)."""
        ...

    async def open(self) -> None:
        """Connect and ensure the stream/queue/group and the dead-letter destination exist."""
        ...

    async def close(self) -> None:
        """Disconnect. Unsettled deliveries go back to the broker (see the contract above)."""
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


_ORJSON_OPTIONS: Final = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


def encode_outcome(outcome: Mapping[str, Any]) -> bytes:
    """The JSON body of one result message (datetimes as RFC 3339 UTC with ``Z``; naive = UTC)."""
    try:
        return orjson.dumps(dict(outcome), option=_ORJSON_OPTIONS)
    except TypeError as exc:
        raise ValueError(f"outcome is not JSON-serialisable: {exc}") from None


def not_open(name: str) -> BrokerError:
    """The error of a publish through a publisher that is not open."""
    return BrokerError(f"{name}: publisher is not open")


def connect_error(broker: str, url: str, exc: BaseException) -> BrokerError:
    """The error of a failed connection to ``broker`` at ``url``, without the URL's password."""
    return BrokerError(
        f"cannot connect to {broker} at {redact_url(url)}: {scrub(str(exc), url) or type(exc).__name__}"
    )


# -- the common frame of the network brokers ----------------------------------------------------

ErrorTypes = tuple[type[BaseException], ...]
T = TypeVar("T")


class BrokerSettings:
    """Base of a broker's settings dataclass: one configuration key per field, read by its type.

    ``str`` fields are non-empty strings (``str | None``, or a ``str`` defaulting to ``""`` that
    ``__post_init__`` fills in, are optional), ``int`` ones integers >= 1, ``float`` ones seconds
    > 0 (or >= 0 with ``metadata={"allow_zero": True}``), ``bool`` ones booleans, and a field with
    ``metadata={"choices": (...)}`` one of those. ``where`` labels the errors.
    """

    __slots__ = ()

    where: ClassVar[str]
    url: str
    connect_timeout_s: float

    @classmethod
    def from_mapping(cls, cfg: Any) -> Self:
        """The settings of a configuration table; :class:`ConfigError` names a bad or unknown key."""
        specs = dataclasses.fields(cls)  # type: ignore[arg-type]
        hints = typing.get_type_hints(cls)
        r = ConfigReader(cfg, where=cls.where, known=[f.name for f in specs])
        values: dict[str, Any] = {}
        for f in specs:
            key, kind = f.name, hints[f.name]
            default: Any = f.default
            if "choices" in f.metadata:
                values[key] = r.choice(key, default, f.metadata["choices"])
            elif kind is bool:
                values[key] = r.boolean(key, default)
            elif kind is int:
                values[key] = r.integer(key, default)
            elif kind is float:
                values[key] = r.seconds(key, default, allow_zero=f.metadata.get("allow_zero", False))
            elif kind is str and default:
                values[key] = r.text(key, default)
            else:
                values[key] = r.optional_text(key) or default
        return cls(**values)


ConfigT = TypeVar("ConfigT", bound=BrokerSettings)
ConnT = TypeVar("ConnT")


class BrokerClient(OpenClose, Generic[ConfigT, ConnT]):
    """A source or publisher of one broker: its settings, its connection, its label and a repr
    without secrets.

    Subclasses set ``config_type`` (their :class:`BrokerSettings`) and ``errors`` (the client
    library's exceptions for a broker that is gone or refuses), and implement ``name``,
    ``_connect`` and ``_disconnect(conn)``, and ``_setup(conn)`` when something must exist before
    use. ``open`` connects and sets up, closing the connection again if the set-up fails; while
    open, the connection is ``_conn``.
    """

    config_type: ClassVar[type[Any]]  # type[ConfigT], which a ClassVar cannot spell
    errors: ClassVar[ErrorTypes]

    def __init__(self, config: ConfigT | None = None) -> None:
        self.config: ConfigT = config if config is not None else self.config_type()
        self._conn: ConnT | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> Self:
        """Build from a configuration mapping (keys in the class docstring)."""
        return cls(cls.config_type.from_mapping(cfg))

    @property
    def name(self) -> str:
        raise NotImplementedError

    async def open(self) -> None:
        if self._conn is not None:
            return
        conn = await self._connect()
        try:
            await self._setup(conn)
        except BaseException:
            await self._disconnect(conn)
            raise
        self._conn = conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._disconnect(conn)

    async def _connect(self) -> ConnT:
        raise NotImplementedError

    async def _setup(self, conn: ConnT) -> None:
        """Declare what must exist before use, on a new connection (nothing by default)."""

    async def _disconnect(self, conn: ConnT) -> None:
        raise NotImplementedError

    def _is_open(self) -> bool:
        return self._conn is not None

    def _require(self, handle: T | None) -> T:
        """``handle`` (a connection, channel or context set by ``open``), or the error of a closed one."""
        if handle is None:
            raise BrokerError(f"{self.name}: not open")
        return handle

    def __repr__(self) -> str:
        state = "open" if self._is_open() else "closed"
        return f"{type(self).__name__}({self.name!r}, url={redact_url(self.config.url)!r}, {state})"


class BrokerSource(BrokerClient[ConfigT, ConnT]):
    """A :class:`JobSource` of a network broker: ``receive`` checks, then calls ``_receive`` alone.

    Subclasses implement ``_receive(max_messages, timeout_s)``, which runs under a lock (one
    receive at a time) with ``max_messages >= 1`` on an open source.
    """

    def __init__(self, config: ConfigT | None = None) -> None:
        super().__init__(config)
        self._receive_lock = anyio.Lock()

    async def receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        if not self._is_open():
            raise BrokerError(f"{self.name}: receive() on a source that is not open")
        if max_messages < 1:
            return []
        async with self._receive_lock:
            return await self._receive(max_messages, timeout_s)

    async def _receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        raise NotImplementedError


class BrokerPublisher(BrokerClient[ConfigT, ConnT]):
    """A :class:`ResultPublisher` of a network broker: ``publish`` encodes, ``_send`` sends; the
    client's ``errors`` become a :class:`BrokerError`."""

    async def publish(self, outcome: Mapping[str, Any]) -> None:
        if not self._is_open():
            raise not_open(self.name)
        body = encode_outcome(outcome)
        try:
            await self._send(body)
        except self.errors as exc:
            raise BrokerError(
                f"{self.name}: cannot publish an outcome: {exc or type(exc).__name__}"
            ) from None

    async def _send(self, body: bytes) -> None:
        raise NotImplementedError


class Inbox(Generic[T]):
    """Messages a client library pushes from its callback, waiting for the one task that reads them."""

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._arrived: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        """Add ``item``: a coroutine, so that it can be the client library's message callback."""
        self._items.append(item)
        if self._arrived is not None:
            self._arrived.set()

    async def wait(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` seconds for a message to be there; whether one is."""
        with anyio.move_on_after(max(0.0, timeout_s)):
            while not self._items:
                self._arrived = anyio.Event()
                try:
                    await self._arrived.wait()
                finally:
                    self._arrived = None
        return bool(self._items)

    def popleft(self) -> T:
        """The oldest message (the inbox must not be empty)."""
        return self._items.popleft()

    def clear(self) -> None:
        self._items.clear()


class BrokerDelivery(BaseDelivery):
    """A delivery whose broker calls go through ``_call``, turning ``errors`` into :class:`BrokerError`."""

    __slots__ = ()

    errors: ClassVar[ErrorTypes]

    async def _call(self, op: Awaitable[object], what: str) -> None:
        try:
            await op
        except self.errors as exc:
            raise BrokerError(
                f"{self.source}: {what} of message {self.message_id} failed: {exc or type(exc).__name__}"
            ) from None


class PublishThenAck(BrokerDelivery):
    """Dead-lettering as two broker calls: publish (confirmed) to the dead-letter destination, then ack.

    Subclasses implement ``_publish_dead_letter(reason)`` and ``_ack``.
    """

    __slots__ = ("_dead_lettered",)

    def __init__(self, *, body: bytes, source: str, message_id: str, redelivered: bool) -> None:
        super().__init__(body=body, source=source, message_id=message_id, redelivered=redelivered)
        self._dead_lettered = False

    async def _dead_letter(self, reason: str) -> None:
        # Published and confirmed first, acked second: a crash in between leaves the job with the
        # broker (redelivered, dead-lettered again) rather than lost. _dead_lettered keeps a retry
        # after a failed ack from publishing a second copy.
        if not self._dead_lettered:
            await self._call(self._publish_dead_letter(reason), "dead-letter publish")
            self._dead_lettered = True
        await self._ack()

    async def _publish_dead_letter(self, reason: str) -> None:
        raise NotImplementedError
