"""NATS JetStream (``kind = "nats"``): jobs from a durable pull consumer, outcomes to a subject.

:class:`NatsSource` reads jobs and dead-letters to a subject of its own stream,
:class:`NatsResultPublisher` publishes outcomes and :func:`connect_nats` connects; their
docstrings list every configuration key.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import quote

import anyio
import nats
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

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
    redact_url,
    scrub,
)
from bulksend.errors import ConfigError

__all__ = [
    "HEADER_DELIVERY_COUNT",
    "HEADER_ORIGINAL_SEQUENCE",
    "HEADER_ORIGINAL_STREAM",
    "HEADER_ORIGINAL_SUBJECT",
    "HEADER_REASON",
    "NatsDelivery",
    "NatsSource",
    "NatsSourceConfig",
    "connect_nats",
    "header_value",
    "subject_matches",
]

log = structlog.get_logger("bulksend.brokers.nats")

HEADER_REASON: Final = "Bulksend-Dead-Letter-Reason"
HEADER_ORIGINAL_SUBJECT: Final = "Bulksend-Original-Subject"
HEADER_ORIGINAL_STREAM: Final = "Bulksend-Original-Stream"
HEADER_ORIGINAL_SEQUENCE: Final = "Bulksend-Original-Sequence"
HEADER_DELIVERY_COUNT: Final = "Bulksend-Delivery-Count"

# What nats-py raises for a server that is gone or refuses an operation.
_NATS_ERRORS: Final = (OSError, TimeoutError, nats.errors.Error)
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_SUBJECT_RE: Final = re.compile(r"^[^\s.]+(\.[^\s.]+)*$")
_REQUEST_TIMEOUT_S: Final = 5.0
# A pull request's "expires" below this is not worth a request; used for timeout_s == 0.
_MIN_EXPIRES_S: Final = 0.01
# The top-up request's "expires". Waiting jobs come at once whatever this is; it only matters when
# fewer can be had than the metadata promised (max_ack_pending reached, or another process took
# them), where the server would otherwise hold the request for its whole expiry.
_TOP_UP_EXPIRES_S: Final = 0.05
# How long past a request's expiry to wait for the server's end-of-request status before
# concluding the connection is in trouble (anything arriving later is kept for the next call).
_STATUS_GRACE_S: Final = 2.0


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether the NATS subject filter ``pattern`` (``*`` and ``>`` wildcards) matches ``subject``."""
    pat = pattern.split(".")
    sub = subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


@dataclass(frozen=True, slots=True)
class NatsSettings(BrokerSettings):
    """The settings a NATS source and publisher share: the server and the connection timeout."""

    url: str = field(default="nats://127.0.0.1:4222", repr=False)
    connect_timeout_s: float = 5.0


async def connect_nats(url: str, *, connect_timeout_s: float, name: str = "bulksend") -> NatsClient:
    """Connect with bounded first attempts, then reconnect forever once connected.

    nats-py retries the *first* connection forever when reconnects are unlimited, which would hang
    start-up on a wrong URL; so the first connection gets two attempts, and unlimited reconnects
    are switched on once it is up. Errors never show the URL's password.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("nats connection error", server=redact_url(url), error=scrub(str(exc), url))

    client: list[NatsClient] = []  # set once connected; the callbacks need it to tell a close

    async def on_disconnect() -> None:
        if client and client[0].is_closed:
            return  # our own close(), not a lost connection
        log.warning("nats disconnected", server=redact_url(url))

    async def on_reconnect() -> None:
        log.info("nats reconnected", server=redact_url(url))

    try:
        nc = await nats.connect(
            servers=[url],
            name=name,
            connect_timeout=connect_timeout_s,
            allow_reconnect=True,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
    except _NATS_ERRORS as exc:
        raise connect_error("NATS", url, exc) from None
    client.append(nc)
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = 2.0
    return nc


NatsSettingsT = TypeVar("NatsSettingsT", bound=NatsSettings)


class NatsConnection(BrokerClient[NatsSettingsT, NatsClient]):
    """How a NATS source or publisher connects (:func:`connect_nats`) and disconnects."""

    errors = _NATS_ERRORS

    async def _connect(self) -> NatsClient:
        return await connect_nats(self.config.url, connect_timeout_s=self.config.connect_timeout_s)

    async def _disconnect(self, conn: NatsClient) -> None:
        # Acks and publishes are written asynchronously: flush so the ones already "sent" reach
        # the server.
        with contextlib.suppress(*_NATS_ERRORS), anyio.move_on_after(2.0):
            await conn.flush(timeout=2)
        await conn.close()


@dataclass(frozen=True, slots=True)
class NatsSourceConfig(NatsSettings):
    """Settings of a :class:`NatsSource` (its docstring describes each key)."""

    where: ClassVar[str] = "job source (nats)"

    stream: str = "BULKSEND_JOBS"
    subject: str = "bulksend.jobs"
    durable: str = "bulksend"
    dead_letter_subject: str = "bulksend.jobs.dlq"
    dead_letter_stream: str = ""
    max_ack_pending: int = 1000
    ack_wait_s: float = 60.0

    def __post_init__(self) -> None:
        where = self.where
        if not self.dead_letter_stream:
            object.__setattr__(self, "dead_letter_stream", f"{self.stream}_DLQ")
        for key in ("stream", "durable", "dead_letter_stream"):
            if not _NAME_RE.match(getattr(self, key)):
                raise ConfigError(f"{where}: {key} may only hold letters, digits, '_' and '-'")
        for key in ("subject", "dead_letter_subject"):
            if not _SUBJECT_RE.match(getattr(self, key)):
                raise ConfigError(f"{where}: {key} must be a NATS subject such as 'bulksend.jobs'")
        if any(t in ("*", ">") for t in self.dead_letter_subject.split(".")):
            raise ConfigError(f"{where}: dead_letter_subject must not contain wildcards")
        if subject_matches(self.subject, self.dead_letter_subject):
            raise ConfigError(
                f"{where}: subject {self.subject!r} matches dead_letter_subject "
                f"{self.dead_letter_subject!r}, so dead letters would come back as jobs; "
                "pick a dead-letter subject outside the job subject"
            )
        if self.max_ack_pending < 1:
            raise ConfigError(f"{where}: max_ack_pending must be >= 1")
        if self.ack_wait_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigError(f"{where}: ack_wait_s and connect_timeout_s must be > 0")


# Printable ASCII stays as it is; "%" and anything else is percent-encoded (UTF-8).
_HEADER_SAFE: Final = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_value(text: str) -> str:
    """``text`` as a NATS header value: printable ASCII kept, the rest percent-encoded as UTF-8.

    NATS headers are MIME-like and clients disagree about non-ASCII bytes in them; this form is
    plain ASCII, reads as-is for the usual English reason, and ``urllib.parse.unquote`` restores it.
    """
    return quote(text, safe=_HEADER_SAFE)


def _status(msg: Msg) -> str | None:
    """JetStream's status code of a pull reply (404, 408, 409, 100), or None for a stored job.

    A stored job carries a ``$JS.ACK.`` reply subject; its headers are the producer's, and a
    producer may well send its own "Status" header.
    """
    headers = msg.headers
    if not headers or msg.reply.startswith("$JS.ACK."):
        return None
    return headers.get("Status")


class NatsDelivery(PublishThenAck):
    """A job from a :class:`NatsSource`; ``msg`` is the underlying JetStream message."""

    __slots__ = ("_owner", "msg")

    errors = _NATS_ERRORS

    def __init__(self, owner: NatsSource, msg: Msg) -> None:
        meta = msg.metadata
        super().__init__(
            body=msg.data,
            source=owner.name,
            message_id=str(meta.sequence.stream),
            redelivered=meta.num_delivered > 1,
        )
        self._owner = owner
        self.msg = msg

    async def _ack(self) -> None:
        await self._call(self.msg.ack(), "ack")

    async def _release(self) -> None:
        await self._call(self.msg.nak(), "nak")

    async def _publish_dead_letter(self, reason: str) -> None:
        meta = self.msg.metadata
        headers = {k: v for k, v in (self.msg.headers or {}).items() if not k.lower().startswith("nats-")}
        headers.update(
            {
                HEADER_REASON: header_value(reason),
                HEADER_ORIGINAL_SUBJECT: self.msg.subject,
                HEADER_ORIGINAL_STREAM: meta.stream,
                HEADER_ORIGINAL_SEQUENCE: str(meta.sequence.stream),
                HEADER_DELIVERY_COUNT: str(meta.num_delivered),
            }
        )
        js = self._owner._require(self._owner._js)
        await js.publish(
            self._owner.config.dead_letter_subject, self.msg.data, headers=headers, timeout=_REQUEST_TIMEOUT_S
        )


class NatsSource(NatsConnection[NatsSourceConfig], BrokerSource[NatsSourceConfig, NatsClient]):
    """A :class:`~bulksend.brokers.base.JobSource` over a JetStream durable pull consumer.

    Configuration (``kind = "nats"``):

    =======================  =========================  ===============================================
    key                      default                    meaning
    =======================  =========================  ===============================================
    ``url``                  ``nats://127.0.0.1:4222``  server URL; credentials may be inline
                                                        (``nats://user:password@host:4222``) and are
                                                        never logged
    ``stream``               ``BULKSEND_JOBS``          stream holding the jobs; created if missing
    ``subject``              ``bulksend.jobs``          subject jobs are published to (the consumer's
                                                        filter; wildcards allowed)
    ``durable``              ``bulksend``               durable consumer name, shared by every bulksend
                                                        process reading this stream
    ``dead_letter_subject``  ``bulksend.jobs.dlq``      where refused jobs are published
    ``dead_letter_stream``   ``<stream>_DLQ``           stream created for the dead-letter subject when
                                                        no stream captures it yet
    ``max_ack_pending``      ``1000``                   most unacknowledged jobs the consumer may hold,
                                                        across all processes
    ``ack_wait_s``           ``60``                     an unacknowledged job is redelivered after this
    ``connect_timeout_s``    ``5``                      timeout of one connection attempt
    =======================  =========================  ===============================================

    On :meth:`NatsSource.open`:

    - if no stream captures ``subject``, the stream ``stream`` is created (file storage, work-queue
      retention: a job leaves the stream when it is acked). If another stream already captures it,
      that is a configuration error (name that stream in ``stream``). An existing stream is never
      modified;
    - if no stream captures ``dead_letter_subject``, ``dead_letter_stream`` is created for it (file
      storage, limits retention: dead letters stay until someone removes them). The consumer's filter
      must not match ``dead_letter_subject``, or dead letters would come back as jobs;
    - the durable pull consumer is created, or updated with the configured ``max_ack_pending`` and
      ``ack_wait_s``: explicit acks, delivering everything in the stream.

    Receiving: ``receive(n, timeout_s)`` asks the server for one job, waiting at most ``timeout_s``,
    then for at most ``n - 1`` more that are already waiting (the first job's metadata says how many),
    waiting at most 50 ms for those. Each pull request is followed to its end (its batch, or the server's "no
    messages"/"timeout" status for that request), so no request outlives the call and no job is
    pushed to this process that it did not ask for. ``max_ack_pending`` bounds what all consumers
    hold unacknowledged: at the bound, the server sends nothing until acks free room.

    Settling: ``ack`` is a plain JetStream ack (no round trip; a lost ack means one redelivery, which
    the daemon's idempotency-key check absorbs); ``release`` is a NAK (redelivered at once);
    ``dead_letter`` publishes the body to ``dead_letter_subject`` and waits for JetStream's
    confirmation, then acks the original. The dead letter carries the headers
    ``Bulksend-Dead-Letter-Reason`` (printable ASCII as is, anything else percent-encoded as
    UTF-8: ``urllib.parse.unquote`` gives the text back), ``Bulksend-Original-Subject``,
    ``Bulksend-Original-Stream``, ``Bulksend-Original-Sequence`` and ``Bulksend-Delivery-Count``,
    plus the original message's own headers (except ``Nats-*`` ones, so the dead-letter stream
    never drops one as a duplicate).

    ``redelivered`` is true when JetStream's delivery count is above 1; ``message_id`` is the stream
    sequence; ``lag()`` is the consumer's count of jobs not yet delivered.
    """

    config_type = NatsSourceConfig

    def __init__(self, config: NatsSourceConfig | None = None) -> None:
        super().__init__(config)
        self._js: JetStreamContext | None = None
        self._sub: Subscription | None = None
        self._inbox = ""
        self._request_seq = 0
        # Replies to our pull requests (jobs and status messages), filled by the subscription's
        # callback and read only by receive(). Jobs left here between calls come from a request
        # whose end was not seen (a disconnect); they are handed out first next time.
        self._replies: Inbox[Msg] = Inbox()

    @property
    def name(self) -> str:
        return f"nats:{self.config.stream}/{self.config.durable}"

    async def _setup(self, conn: NatsClient) -> None:
        js = conn.jetstream(timeout=_REQUEST_TIMEOUT_S)
        await self._ensure_stream(js)
        await self._ensure_dead_letter_stream(js)
        await self._ensure_consumer(js)
        self._inbox = conn.new_inbox()
        self._sub = await conn.subscribe(f"{self._inbox}.*", cb=self._replies.put)
        self._js = js
        log.info("nats source open", source=self.name, subject=self.config.subject)

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        cfg = self.config
        owner = await self._stream_for(js, cfg.subject)
        if owner is None:
            await self._add_stream(
                js, cfg.stream, cfg.subject, RetentionPolicy.WORK_QUEUE, "bulksend send jobs", "stream"
            )
        elif owner != cfg.stream:
            raise ConfigError(
                f"job source (nats): subject {cfg.subject!r} is already captured by stream {owner!r}; "
                f"set stream = {owner!r} or pick another subject"
            )

    async def _ensure_dead_letter_stream(self, js: JetStreamContext) -> None:
        cfg = self.config
        if await self._stream_for(js, cfg.dead_letter_subject) is None:
            await self._add_stream(
                js,
                cfg.dead_letter_stream,
                cfg.dead_letter_subject,
                RetentionPolicy.LIMITS,
                "bulksend dead-lettered jobs",
                "dead-letter stream",
            )

    async def _add_stream(
        self,
        js: JetStreamContext,
        name: str,
        subject: str,
        retention: RetentionPolicy,
        description: str,
        what: str,
    ) -> None:
        """Create a file-backed stream ``name`` capturing ``subject`` (``what`` names it in errors)."""
        config = StreamConfig(
            name=name,
            subjects=[subject],
            retention=retention,
            storage=StorageType.FILE,
            description=description,
        )
        await self._api(js.add_stream(config), f"create {what} {name!r}")

    async def _ensure_consumer(self, js: JetStreamContext) -> None:
        cfg = self.config
        # Creating a durable with the same name updates it when only editable fields differ
        # (max_ack_pending, ack_wait), so a changed setting takes effect on the next start.
        await self._api(
            js.add_consumer(
                cfg.stream,
                ConsumerConfig(
                    durable_name=cfg.durable,
                    description="bulksend job consumer",
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    filter_subject=cfg.subject,
                    max_ack_pending=cfg.max_ack_pending,
                    ack_wait=cfg.ack_wait_s,
                ),
            ),
            f"create consumer {cfg.durable!r} on stream {cfg.stream!r}",
        )

    async def _stream_for(self, js: JetStreamContext, subject: str) -> str | None:
        try:
            name = await js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            return None
        except (TimeoutError, nats.errors.Error) as exc:
            raise BrokerError(f"{self.name}: cannot look up the stream of {subject!r}: {exc}") from None
        return name

    async def _api(self, op: Any, what: str) -> Any:
        try:
            return await op
        except nats.js.errors.APIError as exc:
            raise BrokerError(f"{self.name}: JetStream refused to {what}: {exc.description or exc}") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise BrokerError(f"{self.name}: cannot {what}: {exc or type(exc).__name__}") from None

    async def close(self) -> None:
        self._js = self._sub = None
        self._replies.clear()
        if self._conn is not None:
            await super().close()
            log.info("nats source closed", source=self.name)

    async def _next_reply(self, deadline: float) -> Msg | None:
        if await self._replies.wait(deadline - anyio.current_time()):
            return self._replies.popleft()
        return None

    async def _receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        start = anyio.current_time()
        msgs = self._take_leftovers(max_messages)
        if not msgs:
            # One job, waiting up to timeout_s: returns as soon as any job is available.
            msgs = await self._pull(1, expires_s=max(timeout_s, _MIN_EXPIRES_S), no_wait=False)
            if msgs:
                # Then what is already waiting, up to the batch: the first job's metadata
                # says how many are pending, so this request never has to wait.
                more = min(max_messages - 1, msgs[0].metadata.num_pending)
                if more > 0:
                    remaining = timeout_s - (anyio.current_time() - start)
                    expires_s = min(max(remaining, _MIN_EXPIRES_S), _TOP_UP_EXPIRES_S)
                    msgs += await self._pull(more, expires_s=expires_s, no_wait=True)
        return [NatsDelivery(self, m) for m in msgs]

    def _take_leftovers(self, limit: int) -> list[Msg]:
        out: list[Msg] = []
        while self._replies and len(out) < limit:
            msg = self._replies.popleft()
            if _status(msg) is None:
                out.append(msg)
        return out

    async def _pull(self, batch: int, *, expires_s: float, no_wait: bool) -> list[Msg]:
        """One pull request, followed to its end: ``batch`` jobs or the server's closing status."""
        nc = self._require(self._conn)
        cfg = self.config
        self._request_seq += 1
        reply = f"{self._inbox}.{self._request_seq}"
        request: dict[str, Any] = {"batch": batch, "expires": int(expires_s * 1e9)}
        if no_wait:
            # With "expires" set, the server answers at once when jobs are waiting, and otherwise
            # holds the request until it expires (it never outlives our wait below).
            request["no_wait"] = True
        try:
            await nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{cfg.stream}.{cfg.durable}",
                orjson.dumps(request),
                reply=reply,
            )
        except (OSError, nats.errors.Error) as exc:
            raise BrokerError(f"{self.name}: cannot request jobs: {exc or type(exc).__name__}") from None
        deadline = anyio.current_time() + expires_s + _STATUS_GRACE_S
        got: list[Msg] = []
        while len(got) < batch:
            msg = await self._next_reply(deadline)
            if msg is None:
                # No end-of-request status in time (disconnected?). Jobs that still arrive for
                # this request are kept in _replies and handed out by the next receive().
                log.warning("nats pull request got no answer", source=self.name)
                break
            status = _status(msg)
            if status is None:
                got.append(msg)
                continue
            if msg.subject != reply or status == "100":
                continue  # the end of an earlier request, or a heartbeat
            if status in ("404", "408"):
                break  # no (more) jobs, or the request expired
            description = (msg.headers or {}).get("Description", "")
            if status == "409" and "deleted" not in description.lower():
                break  # e.g. "Exceeded MaxWaiting": transient, ask again later
            raise BrokerError(f"{self.name}: JetStream answered {status} {description}".rstrip())
        return got

    async def healthy(self) -> bool:
        nc = self._conn
        return nc is not None and nc.is_connected

    async def lag(self) -> int | None:
        js = self._js
        if js is None:
            return None
        try:
            info = await js.consumer_info(self.config.stream, self.config.durable, timeout=_REQUEST_TIMEOUT_S)
        except (TimeoutError, nats.errors.Error) as exc:
            log.debug("nats lag unavailable", source=self.name, error=str(exc))
            return None
        return int(info.num_pending) if info.num_pending is not None else None


# -- results publisher --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NatsResultConfig(NatsSettings):
    """Settings of a :class:`NatsResultPublisher`."""

    where: ClassVar[str] = "results (nats)"

    subject: str = "bulksend.results"


class NatsResultPublisher(NatsConnection[NatsResultConfig], BrokerPublisher[NatsResultConfig, NatsClient]):
    """Outcomes to a NATS subject (through JetStream when a stream captures it).

    Configuration (``kind = "nats"``, under ``[results]``):

    =====================  =========================  ================================================
    ``url``                ``nats://127.0.0.1:4222``  server URL (credentials inline are never logged)
    ``subject``            ``bulksend.results``       subject outcomes are published to
    ``connect_timeout_s``  ``5``                      timeout of one connection attempt
    =====================  =========================  ================================================

    If a JetStream stream captures ``subject`` (checked on open), outcomes are published through
    JetStream and each publish waits for the stream's confirmation; otherwise they are plain NATS
    messages, seen only by subscribers connected at the time.
    """

    config_type = NatsResultConfig

    def __init__(self, config: NatsResultConfig | None = None) -> None:
        super().__init__(config)
        self._js: JetStreamContext | None = None

    @property
    def name(self) -> str:
        return f"nats:{self.config.subject}"

    @property
    def uses_jetstream(self) -> bool:
        """Whether publishes go through JetStream (a stream captured the subject at open)."""
        return self._js is not None

    async def _setup(self, conn: NatsClient) -> None:
        js = conn.jetstream(timeout=_REQUEST_TIMEOUT_S)
        try:
            await js.find_stream_name_by_subject(self.config.subject)
        except nats.js.errors.NotFoundError:
            self._js = None
        except (TimeoutError, nats.errors.Error):
            # JetStream unavailable (not enabled, or not answering): plain NATS publishes.
            self._js = None
        else:
            self._js = js

    async def close(self) -> None:
        self._js = None
        await super().close()

    async def _send(self, body: bytes) -> None:
        if self._js is not None:
            await self._js.publish(self.config.subject, body, timeout=_REQUEST_TIMEOUT_S)
        else:
            await self._require(self._conn).publish(self.config.subject, body)

    async def healthy(self) -> bool:
        return self._conn is not None and self._conn.is_connected


# The builders (not openers) the registry in bulksend.brokers calls with a configuration table.
make_source = NatsSource.from_config
make_publisher = NatsResultPublisher.from_config
