"""Where the sandbox's webhook events go: an SNS API, or one HTTP subscription signed like SNS.

``webhook_sns_url``: each event is published (``Publish``) to its webhook's ``sns_arn`` through
the SNS API at that URL (moto in the tests; the topic's own subscriptions, an SQS queue say, take
it from there). ``webhook_http_url``: the sandbox acts as a topic with one HTTP subscription to
that URL. It first POSTs a signed ``SubscriptionConfirmation`` whose ``SubscribeURL`` is the
sandbox's ``/_sandbox/sns/confirm``, holds the topic's events until that URL is visited, then POSTs
each as a signed ``Notification``. The signing key is ``webhook_signing_key`` (a PEM file, its
certificate served at ``webhook_cert_url``), or a key made at start whose self-signed certificate
the sandbox serves itself at ``/_sandbox/sns/certificate.pem``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import aiohttp

from bulksend.events.sns import SnsEnvelope, sign_envelope

from .config import SandboxConfig
from .state import format_timestamp
from .webhooks import Emission

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = ["CERT_PATH", "CONFIRM_PATH", "EventPublisher"]

CERT_PATH: Final = "/_sandbox/sns/certificate.pem"
CONFIRM_PATH: Final = "/_sandbox/sns/confirm"
_HELD_MAX: Final = 100_000
_TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass
class _Subscription:
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    asked: bool = False
    confirmed: bool = False
    held: deque[Emission] = field(default_factory=lambda: deque(maxlen=_HELD_MAX))


class EventPublisher:
    """Delivers emissions where the sandbox's configuration says; :meth:`publish` answers whether
    the event was handed over (None: held until its HTTP subscription is confirmed)."""

    def __init__(
        self, config: Callable[[], SandboxConfig], base_url: Callable[[], str], clock: Callable[[], float]
    ) -> None:
        self._config = config
        self._base_url = base_url
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._sns: dict[str, Any] = {}
        self._sns_exit = contextlib.AsyncExitStack()
        self._key: RSAPrivateKey | None = None
        self._key_source: str | None = None
        self.cert_pem = b""
        """The certificate of a key made by the sandbox (served at :data:`CERT_PATH`)."""
        self._subscriptions: dict[str, _Subscription] = {}

    async def close(self) -> None:
        await self._sns_exit.aclose()
        self._sns.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def publish(self, emission: Emission) -> bool | None:
        config = self._config()
        try:
            if config.webhook_sns_url:
                client = await self._sns_client(config.webhook_sns_url, emission.sns_arn)
                await client.publish(TopicArn=emission.sns_arn, Message=emission.payload.decode())
                return True
            if config.webhook_http_url:
                return await self._post_http(config, emission)
        except Exception:  # any failure to hand it over is a failed delivery, logged as such
            return False
        return False  # nowhere to send it: TEM's publish would fail the same way

    # -- SNS API ----------------------------------------------------------------------------------
    async def _sns_client(self, url: str, arn: str) -> Any:
        region = arn.split(":")[3]
        key = f"{url} {region}"
        client = self._sns.get(key)
        if client is None:
            from aiobotocore.session import AioSession

            client = await self._sns_exit.enter_async_context(
                AioSession().create_client(
                    "sns",
                    region_name=region,
                    endpoint_url=url,
                    aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "sandbox"),
                    aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "sandbox"),
                )
            )
            self._sns[key] = client
        return client

    # -- one HTTP subscription --------------------------------------------------------------------
    async def _post_http(self, config: SandboxConfig, emission: Emission) -> bool | None:
        sub = self._subscriptions.setdefault(emission.sns_arn, _Subscription())
        if not sub.confirmed:
            sub.held.append(emission)
            if not sub.asked:
                sub.asked = True
                await self._ask_confirmation(config, emission.sns_arn, sub)
            return None
        envelope = SnsEnvelope(
            type="Notification",
            message_id=str(uuid.uuid4()),
            topic_arn=emission.sns_arn,
            message=emission.payload.decode(),
            timestamp=format_timestamp(self._clock()),
        )
        return await self._post_signed(config, envelope)

    async def _ask_confirmation(self, config: SandboxConfig, arn: str, sub: _Subscription) -> None:
        url = f"{self._base_url()}{CONFIRM_PATH}?topic={quote(arn, safe='')}&token={sub.token}"
        envelope = SnsEnvelope(
            type="SubscriptionConfirmation",
            message_id=str(uuid.uuid4()),
            topic_arn=arn,
            message=f"You have chosen to subscribe to the topic {arn}. To confirm the subscription, "
            "visit the SubscribeURL included in this message.",
            timestamp=format_timestamp(self._clock()),
            subscribe_url=url,
            token=sub.token,
        )
        if not await self._post_signed(config, envelope):
            sub.asked = False  # ask again with the next event

    def confirm(self, arn: str, token: str) -> bool:
        """A visit of a ``SubscribeURL``: True if it confirmed (or had confirmed) the subscription."""
        sub = self._subscriptions.get(arn)
        if sub is None or not secrets.compare_digest(sub.token, token):
            return False
        sub.confirmed = True
        return True

    def released(self) -> list[Emission]:
        """The emissions held for subscriptions confirmed since, to publish now."""
        out: list[Emission] = []
        for sub in self._subscriptions.values():
            if sub.confirmed and sub.held:
                out.extend(sub.held)
                sub.held.clear()
        return out

    async def _post_signed(self, config: SandboxConfig, envelope: SnsEnvelope) -> bool:
        key, cert_url = self._signing(config)
        signed = sign_envelope(envelope, key, cert_url, version=str(config.webhook_signature_version))
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": envelope.type,
            "x-amz-sns-message-id": envelope.message_id,
            "x-amz-sns-topic-arn": envelope.topic_arn,
        }
        url = config.webhook_http_url
        assert url is not None
        async with self._session.post(url, json=signed.to_json(), headers=headers) as resp:
            return 200 <= resp.status < 300

    def _signing(self, config: SandboxConfig) -> tuple[RSAPrivateKey, str]:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        source = config.webhook_signing_key
        if self._key is None or self._key_source != source:
            if source:
                key = serialization.load_pem_private_key(Path(source).read_bytes(), password=None)
                if not isinstance(key, rsa.RSAPrivateKey):
                    raise ValueError("webhook_signing_key must be an RSA private key")
                self._key = key
            else:
                self._key, self.cert_pem = _self_signed()
            self._key_source = source
        return self._key, config.webhook_cert_url or f"{self._base_url()}{CERT_PATH}"


def _self_signed() -> tuple[RSAPrivateKey, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bulksend sandbox SNS")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)
