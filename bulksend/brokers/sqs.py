"""Scaleway Queues, or any SQS API (``kind = "sqs"``): jobs from a queue, outcomes to a queue.

Scaleway Queues speaks Amazon's SQS API at ``https://sqs.mnq.fr-par.scaleway.com`` (region
``fr-par``), authenticated by the access key and secret key of the SQS credentials generated for
the Queues namespace. :class:`SqsSettings` holds where and who; :func:`sqs_client` opens an
aiobotocore client from them, on the one :func:`sqs_session` of the process; :class:`SqsConnection`
is the :class:`~bulksend.brokers.base.BrokerClient` frame of whatever reads or writes queues.
:func:`queue_url` turns a queue name or URL into its URL.

:class:`SqsSource` reads jobs and :class:`SqsResultPublisher` sends outcomes; their docstrings
list every configuration key. The secret key never appears in a repr, a log line or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar
from urllib.parse import urlsplit

import anyio
import botocore.exceptions
import orjson
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from bulksend.brokers.base import (
    BrokerClient,
    BrokerError,
    BrokerPublisher,
    BrokerSettings,
    BrokerSource,
    Delivery,
    PublishThenAck,
)
from bulksend.errors import ConfigError
from bulksend.secret import Secret

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.literals import QueueAttributeNameType
    from types_aiobotocore_sqs.type_defs import MessageTypeDef
else:  # the type stubs are a development dependency only
    SQSClient = Any

__all__ = [
    "HEADER_ORIGINAL_MESSAGE_ID",
    "HEADER_ORIGINAL_QUEUE",
    "HEADER_REASON",
    "HEADER_RECEIVE_COUNT",
    "SCALEWAY_ENDPOINT",
    "SCALEWAY_REGION",
    "SQS_ERRORS",
    "BatchFailure",
    "SqsConnection",
    "SqsCredentials",
    "SqsDelivery",
    "SqsResultConfig",
    "SqsResultPublisher",
    "SqsSettings",
    "SqsSource",
    "SqsSourceConfig",
    "call_batch",
    "error_code",
    "queue_url",
    "release_backoff",
    "sqs_client",
    "sqs_session",
]

log = structlog.get_logger("bulksend.brokers.sqs")

SCALEWAY_ENDPOINT: Final = "https://sqs.mnq.fr-par.scaleway.com"
"""Scaleway Queues' SQS endpoint (Paris)."""
SCALEWAY_REGION: Final = "fr-par"

SQS_ERRORS: Final = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    OSError,
    TimeoutError,
)
"""What the client raises for an endpoint that is gone, refuses, or answers with an error."""

# Long polls last up to 20 s: the read timeout must outlast them.
_READ_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class SqsCredentials:
    """The access key and secret key of an SQS credential (Scaleway: generated for the namespace)."""

    access_key: str
    secret_key: Secret

    def scrub(self, text: str) -> str:
        """``text`` without the secret key (nor the access key, which identifies the credential)."""
        for value in (self.secret_key.reveal(), self.access_key):
            if value:
                text = text.replace(value, "****")
        return text


@dataclass(frozen=True, slots=True)
class SqsSettings(BrokerSettings):
    """Where the SQS API is and who calls it; one configuration key per field.

    ``access_key`` / ``secret_key`` may be written in the configuration, but are better read from
    the environment variables that ``access_key_env`` / ``secret_key_env`` name (by default the
    ones the aws CLI reads). They are read when a client is opened.
    """

    where: ClassVar[str] = "sqs"

    url: str = SCALEWAY_ENDPOINT
    region: str = SCALEWAY_REGION
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        check_endpoint(self.url, where=self.where)
        if self.connect_timeout_s <= 0:
            raise ConfigError(f"{self.where}: connect_timeout_s must be > 0")

    def credentials(self) -> SqsCredentials:
        """The access key and secret key: from the configuration, else from the environment."""
        access = self.access_key or os.environ.get(self.access_key_env, "")
        secret = self.secret_key or os.environ.get(self.secret_key_env, "")
        missing = [
            f"{name} (or the environment variable {env})"
            for name, env, value in (
                ("access_key", self.access_key_env, access),
                ("secret_key", self.secret_key_env, secret),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                f"{self.where}: no SQS credentials: set {' and '.join(missing)}; on Scaleway, generate "
                "them for the Queues namespace (docs/daemon.md, Scaleway Queues)"
            )
        return SqsCredentials(access, Secret(secret))


def check_endpoint(url: str, *, where: str) -> None:
    """Refuse an endpoint that is not an http(s) URL, or that carries credentials."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ConfigError(f"{where}: url must be an http(s) URL such as {SCALEWAY_ENDPOINT}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: url must be an http(s) URL such as {SCALEWAY_ENDPOINT}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{where}: url must not carry credentials; set access_key and secret_key "
            "(or access_key_env and secret_key_env) instead"
        )


@functools.cache
def sqs_session() -> AioSession:
    """The process's one aiobotocore session: it loads botocore's service models once."""
    return AioSession()


@contextlib.asynccontextmanager
async def sqs_client(settings: SqsSettings) -> AsyncIterator[SQSClient]:
    """An SQS client for ``settings`` (endpoint, region, credentials), closed on exit.

    Raises :class:`ConfigError` when the credentials are missing. No request is made here: the
    first call tells whether the endpoint answers and takes the credentials.
    """
    creds = settings.credentials()
    config = AioConfig(
        connect_timeout=settings.connect_timeout_s,
        read_timeout=_READ_TIMEOUT_S,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    async with sqs_session().create_client(
        "sqs",
        region_name=settings.region,
        endpoint_url=settings.url,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key.reveal(),
        config=config,
    ) as client:
        yield client


def error_code(exc: BaseException) -> str:
    """The SQS error code of a client error (``AWS.SimpleQueueService.NonExistentQueue``, ...), or ''."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


_MISSING_QUEUE_CODES: Final = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


def is_missing_queue(exc: BaseException) -> bool:
    """Whether ``exc`` says the queue does not exist."""
    return error_code(exc) in _MISSING_QUEUE_CODES


def is_queue_url(queue: str) -> bool:
    """Whether ``queue`` is a queue URL rather than a name."""
    return queue.startswith(("http://", "https://"))


async def queue_url(client: SQSClient, queue: str) -> str:
    """The URL of ``queue``: a URL as it is, a name looked up (``GetQueueUrl``)."""
    if is_queue_url(queue):
        return queue
    return (await client.get_queue_url(QueueName=queue))["QueueUrl"]


SqsSettingsT = TypeVar("SqsSettingsT", bound=SqsSettings)


class SqsConnection(BrokerClient[SqsSettingsT, SQSClient]):
    """How an SQS source or publisher opens its client (:func:`sqs_client`) and closes it.

    Subclasses set up their queues in ``_setup(client)``; :meth:`fail` turns a client error into
    a :class:`BrokerError` without the credentials, naming the endpoint.
    """

    errors = SQS_ERRORS

    def __init__(self, config: SqsSettingsT | None = None) -> None:
        super().__init__(config)
        self._exit: contextlib.AsyncExitStack | None = None
        self._creds: SqsCredentials | None = None
        self.queue_url = ""
        """The URL of the queue read or written (set by ``_setup``)."""

    async def _connect(self) -> SQSClient:
        self._creds = self.config.credentials()
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(sqs_client(self.config))
        self._exit = stack
        return client

    async def _disconnect(self, conn: SQSClient) -> None:
        stack, self._exit = self._exit, None
        if stack is not None:
            with contextlib.suppress(*SQS_ERRORS), anyio.move_on_after(5):
                await stack.aclose()

    async def healthy(self) -> bool:
        return await self.queue_attribute("QueueArn") is not None

    async def queue_attribute(self, name: QueueAttributeNameType) -> str | None:
        """One attribute of the queue, or None when closed or unanswered (never raises)."""
        conn = self._conn
        if conn is None or not self.queue_url:
            return None
        try:
            with anyio.fail_after(5):
                answer = await conn.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=[name])
        except SQS_ERRORS as exc:
            log.debug("sqs queue attributes unavailable", queue=self.name, error=self.scrubbed(str(exc)))
            return None
        return answer.get("Attributes", {}).get(name)

    def scrubbed(self, text: str) -> str:
        """``text`` without the credentials (for logs and errors)."""
        return self._creds.scrub(text) if self._creds is not None else text

    def fail(self, what: str, exc: BaseException) -> BrokerError:
        """The error of ``what`` failing with ``exc``: its text without credentials."""
        return BrokerError(
            f"{self.name}: {what} at {self.config.url}: {self.scrubbed(str(exc) or type(exc).__name__)}"
        )


# -- batches ------------------------------------------------------------------------------------

BATCH_MAX: Final = 10
"""The most entries one SQS batch call (receive, delete, change visibility, send) takes."""
BATCH_MAX_BYTES: Final = 262_144
"""The most bytes of bodies one SendMessageBatch takes (256 KiB, the classic SQS limit)."""


@dataclass(frozen=True, slots=True)
class BatchFailure:
    """One entry an SQS batch call refused: ``sender_fault`` means retrying it will not help."""

    code: str
    message: str
    sender_fault: bool


BatchCall = Callable[[list[Any]], Awaitable[Mapping[str, Any]]]


async def call_batch(call: BatchCall, entries: Sequence[Any]) -> dict[str, BatchFailure]:
    """Send ``entries`` (each with its ``Id``) through the batch ``call``, at most 10 a request;
    returns the refused ones by ``Id``. A request that fails as a whole raises."""
    failed: dict[str, BatchFailure] = {}
    for start in range(0, len(entries), BATCH_MAX):
        answer = await call(list(entries[start : start + BATCH_MAX]))
        for entry in answer.get("Failed", []):
            failed[entry["Id"]] = BatchFailure(
                str(entry.get("Code", "")), str(entry.get("Message", "")), bool(entry.get("SenderFault"))
            )
    return failed


def is_fifo(url: str) -> bool:
    """Whether the queue at ``url`` is a FIFO queue (its name ends in ``.fifo``)."""
    return url.rstrip("/").endswith(".fifo")


def fifo_fields(url: str, *, group: str, dedup: str) -> dict[str, str]:
    """The message group and deduplication ids a send to ``url`` needs if it is a FIFO queue."""
    if not is_fifo(url):
        return {}
    return {"MessageGroupId": group[:128], "MessageDeduplicationId": dedup[:128]}


_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,80}(\.fifo)?$")


def check_queue(value: str, key: str, *, where: str) -> None:
    """Refuse a queue that is neither a URL nor a valid SQS queue name."""
    if is_queue_url(value):
        check_endpoint(value, where=f"{where}: {key}")
    elif not _NAME_RE.match(value):
        raise ConfigError(
            f"{where}: {key} must be a queue URL, or a name of up to 80 letters, digits, '-' and '_' "
            f"(plus '.fifo'); got {value!r}"
        )


# -- job source ---------------------------------------------------------------------------------

HEADER_REASON: Final = "Bulksend-Dead-Letter-Reason"
HEADER_ORIGINAL_QUEUE: Final = "Bulksend-Original-Queue"
HEADER_ORIGINAL_MESSAGE_ID: Final = "Bulksend-Original-Message-Id"
HEADER_RECEIVE_COUNT: Final = "Bulksend-Receive-Count"
_OWN_ATTRIBUTES: Final = (
    HEADER_REASON,
    HEADER_ORIGINAL_QUEUE,
    HEADER_ORIGINAL_MESSAGE_ID,
    HEADER_RECEIVE_COUNT,
)
_MAX_ATTRIBUTES: Final = 10  # SQS's limit of message attributes per message
# A delete the endpoint refused for its own reasons (not the handle's) is tried this many times.
_DELETE_ATTEMPTS: Final = 3
_LONG_POLL_MAX_S: Final = 20
_MAX_VISIBILITY_S: Final = 43200  # SQS's limit: 12 hours
# A release's backoff is cut by up to this fraction at random, so that jobs released together
# (a whole batch, at an outage) do not all come back at the same moment.
_BACKOFF_JITTER: Final = 0.25


def release_backoff(receive_count: int, base_s: float, max_s: int, jitter: float = 0.0) -> int:
    """The visibility timeout, in whole seconds, a release gives a message received ``receive_count``
    times: ``base_s`` doubled for each receive after the first, at most ``max_s``, then cut by up
    to a quarter as ``jitter`` (0 to 1) says; rounded up, so a positive ``base_s`` never gives 0."""
    if base_s <= 0:
        return 0
    # 2**1000 times any base up to 12 hours still fits a float, and exceeds any cap.
    doublings = min(max(receive_count, 1) - 1, 1000)
    nominal = min(base_s * 2.0**doublings, max_s)
    return min(math.ceil(nominal * (1 - _BACKOFF_JITTER * min(max(jitter, 0.0), 1.0))), max_s)


@dataclass(frozen=True, slots=True)
class SqsSourceConfig(SqsSettings):
    """Settings of an :class:`SqsSource` (its docstring describes each key)."""

    where: ClassVar[str] = "job source (sqs)"

    queue: str = "bulksend-jobs"
    dead_letter_queue: str = "bulksend-jobs-dlq"
    create_queues: bool = True
    max_receive_count: int = 10
    visibility_timeout_s: int = 30
    max_in_flight: int = 1000
    release_backoff_s: float = field(default=1.0, metadata={"allow_zero": True})
    release_backoff_max_s: int = 300

    def __post_init__(self) -> None:
        SqsSettings.__post_init__(self)
        where = self.where
        check_queue(self.queue, "queue", where=where)
        check_queue(self.dead_letter_queue, "dead_letter_queue", where=where)
        if self.queue == self.dead_letter_queue:
            raise ConfigError(f"{where}: queue and dead_letter_queue must differ")
        if is_fifo(self.queue) != is_fifo(self.dead_letter_queue):
            raise ConfigError(f"{where}: queue and dead_letter_queue must both be FIFO queues, or neither")
        if not 1 <= self.max_receive_count <= 1000:
            raise ConfigError(f"{where}: max_receive_count must be 1..1000 (SQS's limit)")
        if not 1 <= self.visibility_timeout_s <= _MAX_VISIBILITY_S:
            raise ConfigError(f"{where}: visibility_timeout_s must be 1..43200 (SQS's limit: 12 hours)")
        if not 1 <= self.release_backoff_max_s <= _MAX_VISIBILITY_S:
            raise ConfigError(f"{where}: release_backoff_max_s must be 1..43200 (SQS's limit: 12 hours)")
        if not 0 <= self.release_backoff_s <= self.release_backoff_max_s:
            raise ConfigError(f"{where}: release_backoff_s must be 0..release_backoff_max_s")


def receive_count(message: MessageTypeDef) -> int:
    """How many times SQS has handed ``message`` out, this receive included (its
    ``ApproximateReceiveCount``; 1 when missing or garbled)."""
    value = message.get("Attributes", {}).get("ApproximateReceiveCount", "1")
    return max(1, int(value)) if value.isdigit() else 1


class _Lease:
    """A message this process holds: its current receipt handle, how many times SQS has handed it
    out, and when its visibility was last set."""

    __slots__ = ("extended_at", "lost", "receipt", "receive_count")

    def __init__(self, receipt: str, receive_count: int, now: float) -> None:
        self.receipt = receipt
        self.receive_count = receive_count
        self.extended_at = now
        self.lost = False


class SqsDelivery(PublishThenAck):
    """A job from an :class:`SqsSource` (``message_id`` is the SQS MessageId)."""

    __slots__ = ("_lease", "_owner", "hidden_for_s", "message")

    errors = SQS_ERRORS

    def __init__(self, owner: SqsSource, message: MessageTypeDef, lease: _Lease) -> None:
        super().__init__(
            body=message.get("Body", "").encode(),
            source=owner.name,
            message_id=message.get("MessageId", ""),
            redelivered=lease.receive_count > 1,
        )
        self._owner = owner
        self._lease = lease
        self.message = message
        self.hidden_for_s: int | None = None
        """The visibility timeout its release set (its backoff), once released."""

    @property
    def receipt_handle(self) -> str:
        """The receipt handle of the message's current receipt (it changes when it is received again)."""
        return self._lease.receipt

    def _held(self) -> _Lease:
        # Like a broker connection: once the source is closed its leases were given back, and
        # settling them through it fails.
        if self._owner._leases.get(self.message_id) is not self._lease:
            raise BrokerError(
                f"{self.source}: message {self.message_id} was given back when its source closed"
            )
        return self._lease

    async def _ack(self) -> None:
        # Deleted in the next batch (DeleteMessageBatch): at the next receive, the next heartbeat,
        # or close, all well within the visibility timeout. A delete that never happens (a crash)
        # means one redelivery, which the daemon absorbs as a duplicate.
        lease = self._held()
        self._owner._forget(self.message_id)
        self._owner._to_delete.append((self.message_id, lease.receipt, 0))

    async def _release(self) -> None:
        # Hidden for a backoff that grows with its receive count rather than made visible at once:
        # every receive counts towards the redrive policy, so a job released again and again
        # through an outage would otherwise be dead-lettered within seconds.
        lease = self._held()
        owner = self._owner
        client = owner._require(owner._conn)
        cfg = owner.config
        hidden_for_s = release_backoff(
            lease.receive_count, cfg.release_backoff_s, cfg.release_backoff_max_s, random.random()
        )
        await self._call(
            client.change_message_visibility(
                QueueUrl=owner.queue_url, ReceiptHandle=lease.receipt, VisibilityTimeout=hidden_for_s
            ),
            "release",
        )
        self.hidden_for_s = hidden_for_s
        owner._forget(self.message_id)

    async def _publish_dead_letter(self, reason: str) -> None:
        self._held()
        owner = self._owner
        client = owner._require(owner._conn)
        attributes = self.message.get("Attributes", {})
        own: dict[str, Any] = {
            HEADER_REASON: reason,
            HEADER_ORIGINAL_QUEUE: owner.queue_url,
            HEADER_ORIGINAL_MESSAGE_ID: self.message_id,
            HEADER_RECEIVE_COUNT: attributes.get("ApproximateReceiveCount", "1"),
        }
        # The producer's own attributes travel along, as many as fit beside ours (only the
        # fields a send takes: a receive also answers with empty list fields).
        kept = {
            k: {f: v[f] for f in ("DataType", "StringValue", "BinaryValue") if f in v}
            for k, v in self.message.get("MessageAttributes", {}).items()
            if k not in own
        }
        request: dict[str, Any] = {
            "QueueUrl": owner.dead_letter_url,
            "MessageBody": self.message.get("Body", ""),
            "MessageAttributes": {
                **dict(list(kept.items())[: _MAX_ATTRIBUTES - len(own)]),
                **{k: {"DataType": "String", "StringValue": v} for k, v in own.items()},
            },
            **fifo_fields(
                owner.dead_letter_url,
                group=attributes.get("MessageGroupId", "bulksend"),
                dedup=f"dlq-{self.message_id}",
            ),
        }
        await client.send_message(**request)


class SqsSource(SqsConnection[SqsSourceConfig], BrokerSource[SqsSourceConfig, SQSClient]):
    """A :class:`~bulksend.brokers.base.JobSource` over an SQS queue (Scaleway Queues).

    Producers send one message per job, the job JSON as the body::

        aws sqs send-message --endpoint-url https://sqs.mnq.fr-par.scaleway.com \\
            --queue-url "$QUEUE_URL" --message-body '{"version": 1, ...}'

    Configuration (``kind = "sqs"``):

    =========================  =======================================  ===================================
    key                        default                                  meaning
    =========================  =======================================  ===================================
    ``url``                    ``https://sqs.mnq.fr-par.scaleway.com``  the SQS endpoint
    ``region``                 ``fr-par``                               the region requests are signed for
    ``access_key``             (from ``access_key_env``)                the SQS credentials' access key
    ``secret_key``             (from ``secret_key_env``)                their secret key; never logged
    ``access_key_env``         ``AWS_ACCESS_KEY_ID``                    variable holding the access key
    ``secret_key_env``         ``AWS_SECRET_ACCESS_KEY``                variable holding the secret key
    ``queue``                  ``bulksend-jobs``                        queue of jobs: a name or a URL
    ``dead_letter_queue``      ``bulksend-jobs-dlq``                    queue refused jobs are sent to
    ``create_queues``          ``true``                                 create missing queues on open
    ``max_receive_count``      ``10``                                   redrive policy of a job queue
                                                                        created here
    ``visibility_timeout_s``   ``30``                                   a received job is hidden this long,
                                                                        extended while it is held
    ``max_in_flight``          ``1000``                                 most unsettled jobs this process holds
    ``release_backoff_s``      ``1``                                    a released job is hidden this long,
                                                                        doubled per receive (0: not hidden)
    ``release_backoff_max_s``  ``300``                                  most a released job is hidden
    ``connect_timeout_s``      ``5``                                    timeout to connect
    =========================  =======================================  ===================================

    On :meth:`SqsSource.open`: queues named by URL are used as they are. A queue named by name is
    looked up; when missing and ``create_queues`` is on, the dead-letter queue is created, then the
    job queue with a redrive policy sending a message to the dead-letter queue once it has been
    received ``max_receive_count`` times (a job that keeps failing is not retried forever). An
    existing queue is never modified; one without a redrive policy is logged (``sqs.no_redrive``).

    Receiving: ``receive(n, timeout_s)`` long-polls (``WaitTimeSeconds``: ``timeout_s`` in whole
    seconds, at most 20) for up to 10 messages, then takes more without waiting while full batches
    come and ``n`` is not reached. SQS does not bound what a consumer holds, so ``max_in_flight``
    does it here. A heartbeat extends the visibility of every held message
    (``ChangeMessageVisibilityBatch``) each third of ``visibility_timeout_s``, so a slow admission
    is not redelivered under it.

    Settling: ``ack`` queues the message for deletion; deletes go out in batches
    (``DeleteMessageBatch``) at the next receive, heartbeat or close. A delete the endpoint refuses
    for the receipt handle (it expired: the message was received again elsewhere) is logged and
    dropped, since that redelivery is absorbed as a duplicate; one refused for another reason is
    tried again. ``dead_letter`` sends the body to the dead-letter queue with the attributes
    ``Bulksend-Dead-Letter-Reason``, ``Bulksend-Original-Queue``, ``Bulksend-Original-Message-Id``
    and ``Bulksend-Receive-Count`` (plus the producer's attributes, up to SQS's 10), then acks.
    Closing flushes the deletes and makes whatever is still held visible at once, for another
    consumer.

    ``release`` (the daemon gives jobs back when it cannot admit them: the store is down) hides
    the message for a backoff (:func:`release_backoff`) that grows with its receive count ``n``
    (``ApproximateReceiveCount``): ``min(release_backoff_s * 2**(n-1), release_backoff_max_s)``
    less up to a quarter at random, in whole seconds. Every receive counts towards the redrive
    policy, so a job given back at once through an outage would be dead-lettered within seconds.
    With the defaults and a redrive after 10 receives, the tenth receive comes 384 to 511 s after
    the first (the sum of the first nine backoffs, 1 + 2 + ... + 256 s, less their jitter): an
    outage of up to 6 minutes sends no valid job to the dead-letter queue. With
    ``release_backoff_s = 0`` a released message is visible again at once.

    ``redelivered`` is true when SQS's ``ApproximateReceiveCount`` is above 1; ``lag()`` is the
    queue's ``ApproximateNumberOfMessages``.
    """

    config_type = SqsSourceConfig

    def __init__(self, config: SqsSourceConfig | None = None) -> None:
        super().__init__(config)
        self.dead_letter_url = ""
        self._leases: dict[str, _Lease] = {}
        self._to_delete: list[tuple[str, str, int]] = []
        """(message id, receipt handle, failed attempts) of acked messages, not deleted yet."""
        self._flush_lock = anyio.Lock()
        self._room: anyio.Event | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.extensions = 0
        """Visibility extensions made (one per held message per heartbeat)."""
        self.delete_failures: list[BatchFailure] = []
        """Deletes refused for good, most recent last (bounded)."""

    @property
    def name(self) -> str:
        return f"sqs:{self.config.queue}"

    @property
    def in_flight(self) -> int:
        """Deliveries handed out by this process and not yet settled."""
        return len(self._leases)

    @property
    def pending_deletes(self) -> int:
        """Acked messages whose delete has not gone out yet."""
        return len(self._to_delete)

    async def _setup(self, conn: SQSClient) -> None:
        cfg = self.config
        try:
            dead_letter_url = await self._queue(conn, cfg.dead_letter_queue, {})
            job_url = await self._queue(conn, cfg.queue, None, dead_letter_url=dead_letter_url)
            redrive = (
                await conn.get_queue_attributes(QueueUrl=job_url, AttributeNames=["RedrivePolicy"])
            ).get("Attributes", {})
        except SQS_ERRORS as exc:
            raise self.fail("cannot open the queues", exc) from None
        if "RedrivePolicy" not in redrive:
            log.warning(
                "sqs.no_redrive",
                source=self.name,
                hint="without a redrive policy a job that keeps failing is received again and again",
            )
        self.queue_url, self.dead_letter_url = job_url, dead_letter_url
        self._leases.clear()
        self._to_delete.clear()
        # The heartbeat is this client's own background work, as AMQP's and NATS's clients run
        # theirs: open() and close() may run in different tasks, so no task group can own it.
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat(conn))
        log.info("sqs source open", source=self.name, queue_url=job_url)

    async def _queue(
        self,
        conn: SQSClient,
        queue: str,
        attributes: dict[str, str] | None,
        *,
        dead_letter_url: str = "",
    ) -> str:
        """The URL of ``queue``, created (with ``attributes``, or the job queue's) when missing."""
        try:
            return await queue_url(conn, queue)
        except botocore.exceptions.ClientError as exc:
            if not (is_missing_queue(exc) and self.config.create_queues):
                raise
        if attributes is None:
            arn = (await conn.get_queue_attributes(QueueUrl=dead_letter_url, AttributeNames=["QueueArn"]))[
                "Attributes"
            ]["QueueArn"]
            policy = {"deadLetterTargetArn": arn, "maxReceiveCount": str(self.config.max_receive_count)}
            attributes = {
                "RedrivePolicy": orjson.dumps(policy).decode(),
                "VisibilityTimeout": str(self.config.visibility_timeout_s),
            }
        if is_fifo(queue):
            attributes = {**attributes, "FifoQueue": "true"}
        created = (await conn.create_queue(QueueName=queue, Attributes=attributes))["QueueUrl"]  # type: ignore[arg-type]
        log.info("sqs.queue_created", source=self.name, queue=queue)
        return created

    async def close(self) -> None:
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        conn = self._conn
        if conn is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._flush_deletes()
                await self._give_back(conn)
        self._leases.clear()
        self._to_delete.clear()
        if self._room is not None:
            self._room.set()
        if conn is not None:
            await super().close()
            log.info("sqs source closed", source=self.name)

    async def _give_back(self, conn: SQSClient) -> None:
        """Make every held message visible again, for another consumer at once."""
        entries = [
            {"Id": str(i), "ReceiptHandle": lease.receipt, "VisibilityTimeout": 0}
            for i, lease in enumerate(self._leases.values())
            if not lease.lost
        ]
        if not entries:
            return
        try:
            await call_batch(
                lambda chunk: conn.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=chunk),
                entries,
            )
        except SQS_ERRORS as exc:
            # They come back anyway once their visibility timeout runs out.
            log.warning("sqs.give_back_failed", source=self.name, error=self.scrubbed(str(exc)))

    def _forget(self, message_id: str) -> None:
        self._leases.pop(message_id, None)
        if self._room is not None:
            self._room.set()

    async def _receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        conn = self._require(self._conn)
        await self._flush_deletes()
        deadline = anyio.current_time() + max(0.0, timeout_s)
        while len(self._leases) >= self.config.max_in_flight:
            # At the bound: wait (up to timeout_s) for a settlement to make room.
            self._room = anyio.Event()
            with anyio.move_on_after(deadline - anyio.current_time()):
                await self._room.wait()
            self._room = None
            if anyio.current_time() >= deadline and len(self._leases) >= self.config.max_in_flight:
                return []
            self._require(self._conn)
        want = min(max_messages, self.config.max_in_flight - len(self._leases))
        # Whole seconds only; rounded, so the daemon's usual 1 s is a 1 s long poll.
        wait_s = min(_LONG_POLL_MAX_S, round(max(0.0, deadline - anyio.current_time())))
        out: list[Delivery] = []
        while want > 0:
            ask = min(BATCH_MAX, want)
            try:
                answer = await conn.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=ask,
                    WaitTimeSeconds=wait_s,
                    VisibilityTimeout=self.config.visibility_timeout_s,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
            except SQS_ERRORS as exc:
                if out:
                    break  # hand out what came; the next receive meets the error again
                raise self.fail("cannot receive", exc) from None
            messages = answer.get("Messages", [])
            now = anyio.current_time()
            for message in messages:
                message_id = message.get("MessageId", "")
                receipt = message.get("ReceiptHandle", "")
                lease = self._leases.get(message_id)
                if lease is not None:
                    # One of ours, back after its visibility ran out: keep the newer receipt, and
                    # do not hand it out a second time.
                    lease.receipt, lease.extended_at, lease.lost = receipt, now, False
                    lease.receive_count = receive_count(message)
                    continue
                lease = self._leases[message_id] = _Lease(receipt, receive_count(message), now)
                out.append(SqsDelivery(self, message, lease))
                want -= 1
            if len(messages) < ask:
                break
            wait_s = 0  # more may be waiting: take them, without waiting for new ones
        return out

    async def _beat(self, conn: SQSClient) -> None:
        """Every third of the visibility timeout: send the pending deletes, extend what is held."""
        period_s = self.config.visibility_timeout_s / 3
        while True:
            await anyio.sleep(period_s)
            try:
                await self._flush_deletes()
                await self._extend(conn, period_s / 2)
            except Exception:
                log.exception("sqs.heartbeat_failed", source=self.name)

    async def _extend(self, conn: SQSClient, older_than_s: float) -> None:
        """Reset the visibility timeout of held messages not extended for ``older_than_s``."""
        now = anyio.current_time()
        due = [
            (message_id, lease)
            for message_id, lease in self._leases.items()
            if not lease.lost and now - lease.extended_at >= older_than_s
        ]
        if not due:
            return
        visibility = self.config.visibility_timeout_s
        entries = [
            {"Id": str(i), "ReceiptHandle": lease.receipt, "VisibilityTimeout": visibility}
            for i, (_, lease) in enumerate(due)
        ]
        try:
            failed = await call_batch(
                lambda chunk: conn.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=chunk),
                entries,
            )
        except SQS_ERRORS as exc:
            log.warning("sqs.extend_failed", source=self.name, error=self.scrubbed(str(exc)))
            return
        for i, (message_id, lease) in enumerate(due):
            failure = failed.get(str(i))
            if failure is None:
                lease.extended_at = now
                self.extensions += 1
            elif failure.sender_fault:
                # The receipt expired: the message is visible again, or another consumer has it.
                lease.lost = True
                log.warning("sqs.lease_lost", source=self.name, message_id=message_id, code=failure.code)

    async def _flush_deletes(self) -> None:
        """Delete the acked messages, in batches; keep those worth another try for the next flush."""
        async with self._flush_lock:
            batch, self._to_delete = self._to_delete, []
            conn = self._conn
            if not batch or conn is None:
                self._to_delete[:0] = batch
                return
            entries = [{"Id": str(i), "ReceiptHandle": receipt} for i, (_, receipt, _) in enumerate(batch)]
            try:
                failed = await call_batch(
                    lambda chunk: conn.delete_message_batch(QueueUrl=self.queue_url, Entries=chunk), entries
                )
            except SQS_ERRORS as exc:
                failed = {
                    e["Id"]: BatchFailure(error_code(exc) or type(exc).__name__, str(exc), False)
                    for e in entries
                }
            retry: list[tuple[str, str, int]] = []
            for i, (message_id, receipt, attempts) in enumerate(batch):
                failure = failed.get(str(i))
                if failure is None:
                    continue
                if not failure.sender_fault and attempts + 1 < _DELETE_ATTEMPTS:
                    retry.append((message_id, receipt, attempts + 1))
                    continue
                # Refused for good: the message comes back after its visibility timeout and the
                # daemon acks that copy as a duplicate.
                self.delete_failures = [*self.delete_failures[-99:], failure]
                log.warning(
                    "sqs.delete_failed",
                    source=self.name,
                    message_id=message_id,
                    code=failure.code,
                    error=self.scrubbed(failure.message),
                )
            self._to_delete[:0] = retry

    async def lag(self) -> int | None:
        value = await self.queue_attribute("ApproximateNumberOfMessages")
        return int(value) if value is not None and value.isdigit() else None


# -- results publisher --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SqsResultConfig(SqsSettings):
    """Settings of an :class:`SqsResultPublisher`."""

    where: ClassVar[str] = "results (sqs)"

    queue: str = "bulksend-results"
    create_queue: bool = True

    def __post_init__(self) -> None:
        SqsSettings.__post_init__(self)
        check_queue(self.queue, "queue", where=self.where)


class _Outgoing:
    """One outcome waiting for a SendMessageBatch, and what became of it."""

    __slots__ = ("body", "done", "error")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.done = False
        self.error: BrokerError | None = None


class SqsResultPublisher(SqsConnection[SqsResultConfig], BrokerPublisher[SqsResultConfig, SQSClient]):
    """Outcomes to an SQS queue (Scaleway Queues), sent in batches (``SendMessageBatch``).

    Configuration (``kind = "sqs"``, under ``[results]``): ``url``, ``region``, the credentials
    and ``connect_timeout_s`` as for the source, and

    ================  ====================  =====================================================
    ``queue``         ``bulksend-results``  queue outcomes are sent to: a name or a URL
    ``create_queue``  ``true``              create it on open when a name is missing
    ================  ====================  =====================================================

    Publishes made while a batch is out wait and go together in the next one (up to 10 messages
    and 256 KiB a batch); each ``publish`` returns once SQS has its message, and raises
    :class:`BrokerError` for an entry SQS refused even when the rest of its batch went out. To a
    FIFO queue (``.fifo``) every outcome goes in one message group, deduplicated by its content.
    """

    config_type = SqsResultConfig

    def __init__(self, config: SqsResultConfig | None = None) -> None:
        super().__init__(config)
        self._waiting: list[_Outgoing] = []
        self._send_lock = anyio.Lock()
        self.batches = 0
        """SendMessageBatch calls made."""

    @property
    def name(self) -> str:
        return f"sqs:{self.config.queue}"

    async def _setup(self, conn: SQSClient) -> None:
        queue = self.config.queue
        try:
            try:
                self.queue_url = await queue_url(conn, queue)
            except botocore.exceptions.ClientError as exc:
                if not (is_missing_queue(exc) and self.config.create_queue):
                    raise
                attributes = (
                    {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if is_fifo(queue) else {}
                )
                self.queue_url = (await conn.create_queue(QueueName=queue, Attributes=attributes))["QueueUrl"]  # type: ignore[arg-type]
        except SQS_ERRORS as exc:
            raise self.fail("cannot open the results queue", exc) from None

    async def close(self) -> None:
        await super().close()
        self.queue_url = ""

    async def _send(self, body: bytes) -> None:
        mine = _Outgoing(body)
        self._waiting.append(mine)
        try:
            # One batch out at a time; whoever holds the lock sends what waits, its own included
            # or not, so publishes made meanwhile share the next request.
            while not mine.done:
                async with self._send_lock:
                    if not mine.done:
                        await self._send_batch(self._take_batch())
        except BaseException:
            if not mine.done and mine in self._waiting:
                self._waiting.remove(mine)
            raise
        if mine.error is not None:
            raise mine.error

    async def healthy(self) -> bool:
        # Whether the endpoint answers: an error answer about the queue (gone, refused) is a
        # refusal, which holds results in the daemon's backlog, as a broker refusing a publish does.
        conn = self._conn
        if conn is None or not self.queue_url:
            return False
        try:
            with anyio.fail_after(5):
                await conn.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
        except botocore.exceptions.ClientError:
            return True
        except SQS_ERRORS:
            return False
        return True

    def _take_batch(self) -> list[_Outgoing]:
        batch: list[_Outgoing] = []
        size = 0
        while self._waiting and len(batch) < BATCH_MAX:
            size += len(self._waiting[0].body)
            if batch and size > BATCH_MAX_BYTES:
                break
            batch.append(self._waiting.pop(0))
        return batch

    async def _send_batch(self, batch: list[_Outgoing]) -> None:
        conn = self._require(self._conn)
        url = self.queue_url
        entries: list[Any] = [
            {
                "Id": str(i),
                "MessageBody": item.body.decode(),
                **fifo_fields(url, group="bulksend-results", dedup=hashlib.sha256(item.body).hexdigest()),
            }
            for i, item in enumerate(batch)
        ]
        try:
            self.batches += 1
            answer = await conn.send_message_batch(QueueUrl=url, Entries=entries)
        except SQS_ERRORS as exc:
            error = self.fail("cannot publish outcomes", exc)
            for item in batch:
                item.done, item.error = True, error
            return
        except BaseException:
            # Cancelled mid-request: SQS may or may not have them; they go again (results are
            # at least once, each with its stable result_id).
            self._waiting[:0] = batch
            raise
        failed = {e["Id"]: e for e in answer.get("Failed", [])}
        for i, item in enumerate(batch):
            item.done = True
            refused = failed.get(str(i))
            if refused is not None:
                item.error = BrokerError(
                    f"{self.name}: SQS refused an outcome: {refused.get('Code', '')} "
                    f"{self.scrubbed(str(refused.get('Message', '')))}".rstrip()
                )


# The builders (not openers) the registry in bulksend.brokers calls with a configuration table.
make_source = SqsSource.from_config
make_publisher = SqsResultPublisher.from_config
