"""Jobs from a NATS JetStream stream, through a durable pull consumer.

Configuration keys (``kind = "nats"``) and their defaults: docs/daemon.md, "Broker keys".

On :meth:`NatsSource.open`, a stream is created for ``subject`` (work-queue retention: a job leaves
it when acked) and for ``dead_letter_subject`` (limits retention: dead letters stay) only when no
stream captures them yet; an existing stream is never modified, and one that captures ``subject``
under another name is a configuration error. The consumer's filter must not match
``dead_letter_subject``, or dead letters would come back as jobs. The durable pull consumer is
created or updated with ``max_ack_pending`` and ``ack_wait_s`` (explicit acks).

``receive(n, timeout_s)`` waits at most ``timeout_s`` for one job, then 50 ms for at most ``n - 1``
already waiting. Each pull request is followed to its end (its batch, or the server's status for
it), so no request outlives the call and no job is pushed that this process did not ask for.

Settling: ``ack`` is a plain JetStream ack (no round trip; a lost ack means one redelivery, which
the daemon's idempotency-key check absorbs); ``release`` is a NAK; ``dead_letter`` publishes the
body to ``dead_letter_subject``, waits for JetStream's confirmation, then acks the original. The
dead letter carries the reason and origin headers of docs/message-format.md plus the original
headers except ``Nats-*`` ones, so the dead-letter stream never drops one as a duplicate.

``redelivered`` is true when JetStream's delivery count is above 1; ``message_id`` is the stream
sequence; ``lag()`` is the consumer's count of jobs not yet delivered.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final
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

log = structlog.get_logger("bulksend.sources.nats")

HEADER_REASON: Final = "Bulksend-Dead-Letter-Reason"
HEADER_ORIGINAL_SUBJECT: Final = "Bulksend-Original-Subject"
HEADER_ORIGINAL_STREAM: Final = "Bulksend-Original-Stream"
HEADER_ORIGINAL_SEQUENCE: Final = "Bulksend-Original-Sequence"
HEADER_DELIVERY_COUNT: Final = "Bulksend-Delivery-Count"

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
_KNOWN_KEYS: Final = (
    "url",
    "stream",
    "subject",
    "durable",
    "dead_letter_subject",
    "dead_letter_stream",
    "max_ack_pending",
    "ack_wait_s",
    "connect_timeout_s",
)


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
class NatsSourceConfig:
    """Settings of a :class:`NatsSource` (see the module docstring for each key)."""

    url: str = field(default="nats://127.0.0.1:4222", repr=False)
    stream: str = "BULKSEND_JOBS"
    subject: str = "bulksend.jobs"
    durable: str = "bulksend"
    dead_letter_subject: str = "bulksend.jobs.dlq"
    dead_letter_stream: str = ""
    max_ack_pending: int = 1000
    ack_wait_s: float = 60.0
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        where = "job source (nats)"
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

    @classmethod
    def from_mapping(cls, cfg: Any) -> NatsSourceConfig:
        r = ConfigReader(cfg, where="job source (nats)", known=_KNOWN_KEYS)
        d = cls()
        return cls(
            url=r.text("url", d.url),
            stream=r.text("stream", d.stream),
            subject=r.text("subject", d.subject),
            durable=r.text("durable", d.durable),
            dead_letter_subject=r.text("dead_letter_subject", d.dead_letter_subject),
            dead_letter_stream=r.optional_text("dead_letter_stream") or "",
            max_ack_pending=r.integer("max_ack_pending", d.max_ack_pending),
            ack_wait_s=r.seconds("ack_wait_s", d.ack_wait_s),
            connect_timeout_s=r.seconds("connect_timeout_s", d.connect_timeout_s),
        )


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
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise BrokerError(
            f"cannot connect to NATS at {redact_url(url)}: {scrub(str(exc), url) or type(exc).__name__}"
        ) from None
    client.append(nc)
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = 2.0
    return nc


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


class NatsDelivery(BaseDelivery):
    """A job from a :class:`NatsSource`; ``msg`` is the underlying JetStream message."""

    __slots__ = ("_dead_lettered", "_owner", "msg")

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
        self._dead_lettered = False

    async def _ack(self) -> None:
        await self._call(self.msg.ack(), "ack")

    async def _release(self) -> None:
        await self._call(self.msg.nak(), "nak")

    async def _dead_letter(self, reason: str) -> None:
        # Published and confirmed first, acked second: a crash in between leaves the job in the
        # stream (redelivered, dead-lettered again) rather than lost. _dead_lettered keeps a
        # retry after a failed ack from publishing a second copy.
        if not self._dead_lettered:
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
            cfg = self._owner.config
            js = self._owner._jetstream()
            publish = js.publish(
                cfg.dead_letter_subject, self.msg.data, headers=headers, timeout=_REQUEST_TIMEOUT_S
            )
            await self._call(publish, "dead-letter publish")
            self._dead_lettered = True
        await self._call(self.msg.ack(), "ack")

    async def _call(self, op: Any, what: str) -> None:
        try:
            await op
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise BrokerError(
                f"{self.source}: {what} of message {self.message_id} failed: {exc or type(exc).__name__}"
            ) from None


class NatsSource(OpenClose):
    """A :class:`~bulksend.sources.base.JobSource` over a JetStream durable pull consumer."""

    def __init__(self, config: NatsSourceConfig | None = None) -> None:
        self.config = config or NatsSourceConfig()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._sub: Subscription | None = None
        self._inbox = ""
        self._request_seq = 0
        # Replies to our pull requests (jobs and status messages), filled by the subscription's
        # callback and read only by receive(). Jobs left here between calls come from a request
        # whose end was not seen (a disconnect); they are handed out first next time.
        self._replies: deque[Msg] = deque()
        self._reply_event: anyio.Event | None = None
        self._receive_lock = anyio.Lock()
        self._closed = False

    @classmethod
    def from_config(cls, cfg: Any) -> NatsSource:
        """Build from a configuration mapping (keys in the module docstring)."""
        return cls(NatsSourceConfig.from_mapping(cfg))

    @property
    def name(self) -> str:
        return f"nats:{self.config.stream}/{self.config.durable}"

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise BrokerError(f"{self.name}: not open")
        return self._js

    async def open(self) -> None:
        if self._nc is not None:
            return
        cfg = self.config
        nc = await connect_nats(cfg.url, connect_timeout_s=cfg.connect_timeout_s)
        try:
            js = nc.jetstream(timeout=_REQUEST_TIMEOUT_S)
            await self._ensure_stream(js)
            await self._ensure_dead_letter_stream(js)
            await self._ensure_consumer(js)
            self._inbox = nc.new_inbox()
            self._sub = await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js, self._closed = nc, js, False
        log.info("nats source open", source=self.name, subject=cfg.subject)

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        cfg = self.config
        owner = await self._stream_for(js, cfg.subject)
        if owner is None:
            await self._api(
                js.add_stream(
                    StreamConfig(
                        name=cfg.stream,
                        subjects=[cfg.subject],
                        retention=RetentionPolicy.WORK_QUEUE,
                        storage=StorageType.FILE,
                        description="bulksend send jobs",
                    )
                ),
                f"create stream {cfg.stream!r}",
            )
        elif owner != cfg.stream:
            raise ConfigError(
                f"job source (nats): subject {cfg.subject!r} is already captured by stream {owner!r}; "
                f"set stream = {owner!r} or pick another subject"
            )

    async def _ensure_dead_letter_stream(self, js: JetStreamContext) -> None:
        cfg = self.config
        if await self._stream_for(js, cfg.dead_letter_subject) is None:
            await self._api(
                js.add_stream(
                    StreamConfig(
                        name=cfg.dead_letter_stream,
                        subjects=[cfg.dead_letter_subject],
                        retention=RetentionPolicy.LIMITS,
                        storage=StorageType.FILE,
                        description="bulksend dead-lettered jobs",
                    )
                ),
                f"create dead-letter stream {cfg.dead_letter_stream!r}",
            )

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
        nc, self._nc, self._js, self._sub = self._nc, None, None, None
        self._closed = True
        self._replies.clear()
        if nc is None:
            return
        try:
            # Acks are written asynchronously: flush so the ones already "sent" reach the server.
            with anyio.move_on_after(2.0):
                await nc.flush(timeout=2)
        except (OSError, TimeoutError, nats.errors.Error):
            pass
        await nc.close()
        log.info("nats source closed", source=self.name)

    async def _on_reply(self, msg: Msg) -> None:
        self._replies.append(msg)
        if self._reply_event is not None:
            self._reply_event.set()

    async def _next_reply(self, deadline: float) -> Msg | None:
        while not self._replies:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return None
            self._reply_event = anyio.Event()
            with anyio.move_on_after(remaining):
                await self._reply_event.wait()
            self._reply_event = None
        return self._replies.popleft()

    async def receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        if self._nc is None or self._closed:
            raise BrokerError(f"{self.name}: receive() on a source that is not open")
        if max_messages < 1:
            return []
        async with self._receive_lock:
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
        nc = self._nc
        if nc is None:
            raise BrokerError(f"{self.name}: not open")
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
        nc = self._nc
        return nc is not None and not self._closed and nc.is_connected

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

    def __repr__(self) -> str:
        state = "open" if self._nc is not None else "closed"
        return f"NatsSource({self.name!r}, url={redact_url(self.config.url)!r}, {state})"
