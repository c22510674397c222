"""Scaleway Queues, or any SQS API (``kind = "sqs"``): the connection every SQS user shares.

Scaleway Queues speaks Amazon's SQS API at ``https://sqs.mnq.fr-par.scaleway.com`` (region
``fr-par``), authenticated by the access key and secret key of the SQS credentials generated for
the Queues namespace. :class:`SqsSettings` holds where and who; :func:`sqs_client` opens an
aiobotocore client from them, on the one :func:`sqs_session` of the process; :class:`SqsConnection`
is the :class:`~bulksend.brokers.base.BrokerClient` frame of whatever reads or writes queues.
:func:`queue_url` turns a queue name or URL into its URL.

The secret key never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar
from urllib.parse import urlsplit

import anyio
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from bulksend.brokers.base import BrokerClient, BrokerError, BrokerSettings
from bulksend.errors import ConfigError
from bulksend.secret import Secret

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
else:  # the type stubs are a development dependency only
    SQSClient = Any

__all__ = [
    "SCALEWAY_ENDPOINT",
    "SCALEWAY_REGION",
    "SQS_ERRORS",
    "SqsConnection",
    "SqsCredentials",
    "SqsSettings",
    "error_code",
    "queue_url",
    "sqs_client",
    "sqs_session",
]

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

    def fail(self, what: str, exc: BaseException) -> BrokerError:
        """The error of ``what`` failing with ``exc``: its text without credentials."""
        text = str(exc) or type(exc).__name__
        if self._creds is not None:
            text = self._creds.scrub(text)
        return BrokerError(f"{self.name}: {what} at {self.config.url}: {text}")
