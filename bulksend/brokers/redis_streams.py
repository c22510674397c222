"""Redis Streams (``kind = "redis"``): jobs through a consumer group, outcomes added to a stream.

:class:`RedisStreamSource` reads jobs, :class:`RedisResultPublisher` adds outcomes and
:func:`connect_redis` connects; their docstrings list every configuration key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeVar

import anyio
import redis.asyncio as aioredis
import redis.exceptions
import structlog
from redis.typing import EncodableT, FieldT

from bulksend.brokers.base import (
    BaseDelivery,
    BrokerClient,
    BrokerDelivery,
    BrokerError,
    BrokerPublisher,
    BrokerSettings,
    BrokerSource,
    Delivery,
    connect_error,
    default_consumer_name,
    redact_url,
    scrub,
)
from bulksend.errors import ConfigError

__all__ = [
    "RedisStreamDelivery",
    "RedisStreamSource",
    "RedisStreamSourceConfig",
    "connect_redis",
]

log = structlog.get_logger("bulksend.brokers.redis")

_REDIS_ERRORS: Final = (redis.exceptions.RedisError, OSError, TimeoutError)

# Deletes the group's consumers (other than ARGV[2]) idle for at least ARGV[3] ms and holding no
# pending entry. One script, so nothing can be delivered to a consumer between check and delete.
_FORGET_IDLE_CONSUMERS: Final = """
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    table.insert(removed, info['name'])
  end
end
return removed
"""


@dataclass(frozen=True, slots=True)
class RedisSettings(BrokerSettings):
    """The settings a Redis source and publisher share: the server and the connection timeout."""

    url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    connect_timeout_s: float = 5.0


async def connect_redis(url: str, *, connect_timeout_s: float) -> aioredis.Redis:
    """A client for ``url``, checked with a PING; errors never show the password."""
    try:
        client = aioredis.from_url(url, socket_connect_timeout=connect_timeout_s, decode_responses=False)
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL {redact_url(url)}: {scrub(str(exc), url)}") from None
    try:
        with anyio.fail_after(connect_timeout_s + 1):
            await client.ping()
    except _REDIS_ERRORS as exc:
        await client.aclose()
        raise connect_error("Redis", url, exc) from None
    return client


RedisSettingsT = TypeVar("RedisSettingsT", bound=RedisSettings)


class RedisConnection(BrokerClient[RedisSettingsT, aioredis.Redis]):
    """How a Redis source or publisher connects (:func:`connect_redis`) and disconnects."""

    errors = _REDIS_ERRORS

    async def _connect(self) -> aioredis.Redis:
        return await connect_redis(self.config.url, connect_timeout_s=self.config.connect_timeout_s)

    async def _disconnect(self, conn: aioredis.Redis) -> None:
        await conn.aclose()

    async def healthy(self) -> bool:
        client = self._conn
        if client is None:
            return False
        try:
            with anyio.fail_after(2):
                return bool(await client.ping())
        except _REDIS_ERRORS:
            return False


@dataclass(frozen=True, slots=True)
class RedisStreamSourceConfig(RedisSettings):
    """Settings of a :class:`RedisStreamSource` (its docstring describes each key)."""

    where: ClassVar[str] = "job source (redis)"

    stream: str = "bulksend:jobs"
    group: str = "bulksend"
    consumer: str = ""
    dead_letter_stream: str = "bulksend:jobs:dlq"
    claim_idle_s: float = field(default=60.0, metadata={"allow_zero": True})
    body_field: str = "body"
    delete_on_ack: bool = True
    max_in_flight: int = 1000
    dead_letter_maxlen: int = 100_000
    forget_consumer_s: float = field(default=600.0, metadata={"allow_zero": True})

    def __post_init__(self) -> None:
        where = self.where
        if not self.consumer:
            object.__setattr__(self, "consumer", default_consumer_name())
        if self.stream == self.dead_letter_stream:
            raise ConfigError(f"{where}: stream and dead_letter_stream must differ")
        if self.claim_idle_s < 0 or self.connect_timeout_s <= 0 or self.forget_consumer_s < 0:
            raise ConfigError(
                f"{where}: claim_idle_s and forget_consumer_s must be >= 0 and connect_timeout_s > 0"
            )
        if self.max_in_flight < 1 or self.dead_letter_maxlen < 1:
            raise ConfigError(f"{where}: max_in_flight and dead_letter_maxlen must be >= 1")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStreamDelivery(BrokerDelivery):
    """A job from a :class:`RedisStreamSource` (``message_id`` is the stream entry id)."""

    __slots__ = ("_owner",)

    errors = _REDIS_ERRORS

    def __init__(self, owner: RedisStreamSource, entry_id: str, body: bytes, *, redelivered: bool) -> None:
        super().__init__(
            body=body,
            source=owner.name,
            message_id=entry_id,
            redelivered=redelivered,
            on_settled=owner._forget,
        )
        self._owner = owner

    async def _ack(self) -> None:
        await self._call(self._remove(), "ack")

    async def _dead_letter(self, reason: str) -> None:
        cfg = self._owner.config
        entry: dict[FieldT, EncodableT] = {
            "body": self.body,
            "reason": reason,
            "source_stream": cfg.stream,
            "source_id": self.message_id,
            "consumer": cfg.consumer,
        }
        await self._call(self._remove(dead_letter=entry), "dead-letter")

    async def _remove(self, dead_letter: dict[FieldT, EncodableT] | None = None) -> None:
        """XACK (and XDEL with delete_on_ack) the entry, after adding ``dead_letter`` to the DLQ."""
        cfg = self._owner.config
        client = self._owner._require(self._owner._conn)
        # One transaction: the dead letter exists if and only if the job was acked.
        async with client.pipeline(transaction=True) as pipe:
            if dead_letter is not None:
                maxlen = cfg.dead_letter_maxlen
                pipe.xadd(cfg.dead_letter_stream, dead_letter, maxlen=maxlen, approximate=True)
            pipe.xack(cfg.stream, cfg.group, self.message_id)
            if cfg.delete_on_ack:
                pipe.xdel(cfg.stream, self.message_id)
            await pipe.execute()

    async def _release(self) -> None:
        # Nothing to send: the entry stays pending and XAUTOCLAIM hands it out again once it has
        # been idle for claim_idle_s (see :class:`RedisStreamSource`).
        self._owner._require(self._owner._conn)


class RedisStreamSource(
    RedisConnection[RedisStreamSourceConfig], BrokerSource[RedisStreamSourceConfig, aioredis.Redis]
):
    """A :class:`~bulksend.brokers.base.JobSource` over a Redis stream and consumer group.

    Producers add one entry per job with the job JSON in one field::

        XADD bulksend:jobs * body '{"version": 1, ...}'

    Configuration (``kind = "redis"``):

    ======================  ==========================  =============================================
    key                     default                     meaning
    ======================  ==========================  =============================================
    ``url``                 ``redis://127.0.0.1:6379/0`` server URL (``rediss://`` for TLS); the
                                                        password is never logged
    ``stream``              ``bulksend:jobs``           stream of jobs
    ``group``               ``bulksend``                consumer group shared by every bulksend process
    ``consumer``            ``<hostname>-<pid>``        this process's consumer name in the group
    ``dead_letter_stream``  ``bulksend:jobs:dlq``       stream refused jobs are added to
    ``claim_idle_s``        ``60``                      a job delivered to a consumer and left
                                                        unacknowledged this long is taken over (from a
                                                        crashed process, or after a release)
    ``body_field``          ``body``                    entry field holding the job JSON
    ``delete_on_ack``       ``true``                    XDEL each job once acked or dead-lettered
    ``max_in_flight``       ``1000``                    most unsettled jobs this process holds
    ``dead_letter_maxlen``  ``100000``                  the dead-letter stream is trimmed to about
                                                        this many entries (``MAXLEN ~``)
    ``connect_timeout_s``   ``5``                       timeout to connect
    ``forget_consumer_s``   ``600``                     another consumer of the group idle this long
                                                        and holding no pending entry is deleted from
                                                        the group (a process that died)
    ======================  ==========================  =============================================

    On :meth:`RedisStreamSource.open`: ``XGROUP CREATE <stream> <group> 0 MKSTREAM`` (an existing group
    is fine), so jobs added before the group existed are delivered too.

    Receiving: ``receive(n, timeout_s)`` first takes over (``XAUTOCLAIM``) jobs that have been pending on
    some consumer for more than ``claim_idle_s`` — they come with ``redelivered=True`` — then reads new
    ones with ``XREADGROUP ... COUNT <rest> BLOCK <timeout>`` (not blocking when it already has some).
    Redis has no server-side bound on unacknowledged entries, so ``max_in_flight`` bounds them here.
    Claiming keeps a cursor, so a long pending list is scanned a piece per call.

    Settling: ``ack`` is ``XACK`` (plus ``XDEL`` with ``delete_on_ack``, in one MULTI/EXEC);
    ``dead_letter`` is ``XADD`` to the dead-letter stream of ``{body, reason, source_stream, source_id,
    consumer}`` together with the ``XACK``/``XDEL``, atomically in one MULTI/EXEC. ``release`` sends
    nothing: the entry stays pending and is claimed again (by this or another process) once idle for
    ``claim_idle_s``. Redis streams have no "give back now"; a short ``claim_idle_s`` makes releases
    come back sooner, at the price of taking over jobs from consumers that are merely slow.

    ``delete_on_ack`` keeps memory bounded (Redis holds streams in RAM) and makes the stream a work
    queue. Turn it off when other consumer groups read the same stream, and trim it otherwise
    (``XADD ... MAXLEN ~`` by the producers, or ``XTRIM``).

    On close, this consumer is removed from the group if it holds no pending entries (so per-process
    names do not pile up); otherwise it stays, and its pending jobs are claimed by others later.
    A process that died (``kill -9``) cannot remove itself: once its entries have been claimed
    (``XAUTOCLAIM``, above) it holds none, and the next receive after it has been idle for
    ``forget_consumer_s`` deletes it (``XGROUP DELCONSUMER``). The check and the delete run in one
    Lua script, so a consumer that reads an entry in between is never deleted with it (deleting a
    consumer drops its pending entries). The sweep runs at most every ``forget_consumer_s / 4``
    seconds (at least 1 s apart), and logs ``redis.consumers_forgotten``.

    An entry without ``body_field`` arrives with an empty body, which :func:`bulksend.jobs.format.parse_job`
    refuses ("empty message"), so it is dead-lettered like any bad job. ``message_id`` is the entry
    id; ``lag()`` is the group's count of entries not yet delivered (Redis 7's ``lag``).
    """

    config_type = RedisStreamSourceConfig

    def __init__(self, config: RedisStreamSourceConfig | None = None) -> None:
        super().__init__(config)
        # Entry ids handed out and not yet settled: bounds memory (max_in_flight) and keeps a
        # claim of our own slow entry from handing it out a second time.
        self._in_flight: set[str] = set()
        self._claim_cursor = "0-0"
        self._room_event: anyio.Event | None = None
        self._swept_at: float | None = None
        self.forgotten: list[str] = []
        """Consumers this process deleted from the group (dead ones), most recent last, bounded."""

    @property
    def name(self) -> str:
        return f"redis:{self.config.stream}/{self.config.group}"

    @property
    def in_flight(self) -> int:
        """Deliveries handed out by this process and not yet settled."""
        return len(self._in_flight)

    def _forget(self, delivery: BaseDelivery) -> None:
        self._in_flight.discard(delivery.message_id)
        if self._room_event is not None:
            self._room_event.set()

    async def _setup(self, conn: aioredis.Redis) -> None:
        cfg = self.config
        try:
            await conn.xgroup_create(cfg.stream, cfg.group, id="0", mkstream=True)
        except _REDIS_ERRORS as exc:
            # BUSYGROUP: the group exists already, which is what open() wants.
            if "BUSYGROUP" not in str(exc):
                raise BrokerError(f"{self.name}: cannot create the consumer group: {exc}") from None
        self._in_flight.clear()
        self._claim_cursor = "0-0"
        log.info("redis source open", source=self.name, consumer=cfg.consumer)

    async def close(self) -> None:
        client, self._conn = self._conn, None
        self._in_flight.clear()
        if client is None:
            return
        cfg = self.config
        try:
            with anyio.move_on_after(5):
                # Drop this consumer from the group only if it holds nothing: deleting a consumer
                # discards its pending entries, which would lose jobs. We read nothing after this
                # point, so its pending count can only shrink between the check and the delete.
                for consumer in await client.xinfo_consumers(cfg.stream, cfg.group):
                    if _text(consumer.get("name")) == cfg.consumer and int(consumer.get("pending", 1)) == 0:
                        await client.xgroup_delconsumer(cfg.stream, cfg.group, cfg.consumer)
        except _REDIS_ERRORS as exc:
            log.debug("redis consumer cleanup skipped", source=self.name, error=str(exc))
        finally:
            await self._disconnect(client)
        log.info("redis source closed", source=self.name)

    async def _receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        client = self._require(self._conn)
        cfg = self.config
        if len(self._in_flight) >= cfg.max_in_flight:
            # At the bound: wait (up to timeout_s) for a settlement to make room.
            with anyio.move_on_after(max(0.0, timeout_s)):
                while len(self._in_flight) >= cfg.max_in_flight:
                    self._room_event = anyio.Event()
                    await self._room_event.wait()
            self._room_event = None
        room = min(max_messages, cfg.max_in_flight - len(self._in_flight))
        if room <= 0:
            return []
        try:
            out = await self._claim(client, room)
            await self._forget_dead_consumers(client)
            rest = room - len(out)
            if rest > 0:
                # Block only when there is nothing to return yet; BLOCK 0 would mean forever.
                block_ms = int(timeout_s * 1000) if not out else 0
                reply: Any = await client.xreadgroup(
                    cfg.group,
                    cfg.consumer,
                    {cfg.stream: ">"},
                    count=rest,
                    block=block_ms if block_ms > 0 else None,
                )
                for _stream, entries in reply or []:
                    out += self._deliveries(entries, redelivered=False)
        except _REDIS_ERRORS as exc:
            raise BrokerError(f"{self.name}: cannot read jobs: {exc}") from None
        return out

    async def _claim(self, client: aioredis.Redis, count: int) -> list[Delivery]:
        cfg = self.config
        reply: Any = await client.xautoclaim(
            cfg.stream,
            cfg.group,
            cfg.consumer,
            min_idle_time=int(cfg.claim_idle_s * 1000),
            start_id=self._claim_cursor,
            count=count,
        )
        # Redis 7 answers [next cursor, entries, deleted ids]; "0-0" means the scan wrapped around.
        self._claim_cursor = _text(reply[0])
        entries = [(i, f) for i, f in reply[1] if f is not None and _text(i) not in self._in_flight]
        return self._deliveries(entries, redelivered=True)

    async def _forget_dead_consumers(self, client: aioredis.Redis) -> None:
        """Delete consumers idle beyond ``forget_consumer_s`` that hold nothing (after a claim has
        taken their entries over), at most every ``forget_consumer_s / 4`` seconds."""
        cfg = self.config
        now = anyio.current_time()
        if self._swept_at is not None and now - self._swept_at < max(1.0, cfg.forget_consumer_s / 4):
            return
        self._swept_at = now
        removed: Any = await client.eval(
            _FORGET_IDLE_CONSUMERS,
            1,
            cfg.stream,
            cfg.group,
            cfg.consumer,
            int(cfg.forget_consumer_s * 1000),
        )
        names = [_text(n) for n in removed or []]
        if names:
            self.forgotten = [*self.forgotten, *names][-100:]
            log.info("redis.consumers_forgotten", source=self.name, consumers=names)

    def _deliveries(self, entries: Sequence[tuple[Any, Any]], *, redelivered: bool) -> list[Delivery]:
        field_name = self.config.body_field.encode()
        out: list[Delivery] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            body = fields.get(field_name, b"") if fields else b""
            self._in_flight.add(entry_id)
            out.append(RedisStreamDelivery(self, entry_id, bytes(body), redelivered=redelivered))
        return out

    async def lag(self) -> int | None:
        client = self._conn
        if client is None:
            return None
        cfg = self.config
        try:
            groups = await client.xinfo_groups(cfg.stream)
            group = next((g for g in groups if _text(g.get("name")) == cfg.group), None)
            if group is None:
                return None
            lag = group.get("lag")
            if lag is not None:
                return int(lag)
            if cfg.delete_on_ack:
                # Redis cannot tell the lag after some deletions; with delete-on-ack the stream
                # holds exactly the undelivered entries plus the pending ones.
                return max(0, int(await client.xlen(cfg.stream)) - int(group.get("pending", 0)))
        except _REDIS_ERRORS as exc:
            log.debug("redis lag unavailable", source=self.name, error=str(exc))
        return None


# -- results publisher --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisResultConfig(RedisSettings):
    """Settings of a :class:`RedisResultPublisher`."""

    where: ClassVar[str] = "results (redis)"

    stream: str = "bulksend:results"
    body_field: str = "body"
    maxlen: int = 1_000_000


class RedisResultPublisher(
    RedisConnection[RedisResultConfig], BrokerPublisher[RedisResultConfig, aioredis.Redis]
):
    """Outcomes added to a Redis stream, trimmed to about ``maxlen`` entries.

    Configuration (``kind = "redis"``, under ``[results]``):

    =====================  ============================  ==============================================
    ``url``                ``redis://127.0.0.1:6379/0``  server URL
    ``stream``             ``bulksend:results``          stream outcomes are added to
    ``body_field``         ``body``                      entry field holding the outcome JSON
    ``maxlen``             ``1000000``                   the stream is trimmed to about this many
                                                         entries (``XADD ... MAXLEN ~``)
    ``connect_timeout_s``  ``5``                         timeout to connect
    =====================  ============================  ==============================================
    """

    config_type = RedisResultConfig

    @property
    def name(self) -> str:
        return f"redis:{self.config.stream}"

    async def _send(self, body: bytes) -> None:
        cfg = self.config
        client = self._require(self._conn)
        await client.xadd(cfg.stream, {cfg.body_field: body}, maxlen=cfg.maxlen, approximate=True)


# The builders (not openers) the registry in bulksend.brokers calls with a configuration table.
make_source = RedisStreamSource.from_config
make_publisher = RedisResultPublisher.from_config
