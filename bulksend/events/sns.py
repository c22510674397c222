"""SNS message envelopes, as Topics and Events (and Amazon SNS) delivers them: read, verify, sign.

An HTTP subscription receives each message as a JSON envelope (``Type``, ``MessageId``,
``TopicArn``, ``Message``, ``Timestamp``, ``SignatureVersion``, ``Signature``, ``SigningCertURL``,
and ``SubscribeURL``/``Token`` for a subscription confirmation); an SQS subscription without raw
delivery puts the same envelope in the queue message's body.

Verification (:class:`SnsVerifier`), in this order, each step refusing with a reason:

1. ``SignatureVersion`` is ``1`` (SHA1withRSA) or ``2`` (SHA256withRSA);
2. ``SigningCertURL`` is ``https`` and matches the allowlist (:class:`UrlAllowlist`), checked on
   the text itself before any request, so that a forged envelope cannot make the process fetch
   from a host of its choosing;
3. the certificate is fetched over HTTPS (a bounded answer, no redirects), kept in a small cache
   by URL, and, when a trust chain is configured, must be issued by one of its certificates and
   be within its validity dates;
4. the signature over the canonical string of the envelope's fields checks with its public key.

Everything read here comes from outside: :func:`parse_envelope` answers None for anything that is
not an envelope of bounded size, and verification raises only :class:`SnsVerificationError`.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import aiohttp
import anyio

from bulksend.errors import EventVerificationError as SnsVerificationError
from bulksend.tem.webhooks import json_object

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.hashes import HashAlgorithm
    from cryptography.x509 import Certificate

__all__ = [
    "DEFAULT_CERT_URLS",
    "DEFAULT_SUBSCRIBE_URLS",
    "ENVELOPE_TYPES",
    "MAX_ENVELOPE_BYTES",
    "SnsEnvelope",
    "SnsVerificationError",
    "SnsVerifier",
    "UrlAllowlist",
    "parse_envelope",
    "sign_envelope",
]

ENVELOPE_TYPES: Final = frozenset({"Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"})
MAX_ENVELOPE_BYTES: Final = 320 * 1024
"""Largest envelope read: a 256 KiB message, escaped, and the envelope's own fields."""
MAX_CERT_BYTES: Final = 64 * 1024
_MAX_FIELD: Final = 2048
"""Longest value of an envelope field other than ``Message``."""

DEFAULT_CERT_URLS: Final = ("https://messaging.s3.*.scw.cloud/", "https://sns.*.amazonaws.com/")
"""Where Topics and Events (per region) and Amazon SNS serve their signing certificates."""
DEFAULT_SUBSCRIBE_URLS: Final = ("https://sns.mnq.*.scaleway.com/", "https://sns.*.amazonaws.com/")
"""Where a subscription confirmation's ``SubscribeURL`` may point."""


_NOTICE_SIGNED: Final = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
"""The keys a notification's signature covers, in the order SNS signs them."""
_CONFIRM_SIGNED: Final = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
"""The keys a (un)subscription confirmation's signature covers, in order."""


@dataclass(frozen=True, slots=True)
class SnsEnvelope:
    """One SNS message envelope."""

    type: str
    message_id: str
    topic_arn: str
    message: str
    timestamp: str
    signature_version: str = ""
    signature: str = ""
    signing_cert_url: str = ""
    subject: str | None = None
    subscribe_url: str = ""
    token: str = ""

    def string_to_sign(self) -> bytes:
        """The canonical text SNS signs: ``name\\nvalue\\n`` for each field of the type, in order."""
        wire = self.to_json()
        names = _NOTICE_SIGNED if self.type == "Notification" else _CONFIRM_SIGNED
        # A notification without a subject signs no Subject line: to_json leaves the key out.
        return "".join(f"{name}\n{wire[name]}\n" for name in names if name in wire).encode()

    def to_json(self) -> dict[str, str]:
        """The envelope as SNS writes it."""
        out = {
            "Type": self.type,
            "MessageId": self.message_id,
            "TopicArn": self.topic_arn,
            "Message": self.message,
            "Timestamp": self.timestamp,
            "SignatureVersion": self.signature_version,
            "Signature": self.signature,
            "SigningCertURL": self.signing_cert_url,
        }
        if self.subject is not None:
            out["Subject"] = self.subject
        if self.type != "Notification":
            out["SubscribeURL"] = self.subscribe_url
            out["Token"] = self.token
        return out


_REQUIRED: Final = {
    "MessageId": "message_id",
    "TopicArn": "topic_arn",
    "Timestamp": "timestamp",
    "SignatureVersion": "signature_version",
    "Signature": "signature",
    "SigningCertURL": "signing_cert_url",
}
"""Wire key → attribute of the short text fields every envelope must carry."""


def _field(data: Mapping[str, Any], key: str, limit: int = _MAX_FIELD) -> str | None:
    value = data.get(key, "")
    if not isinstance(value, str) or len(value) > limit:
        return None
    return value


def parse_envelope(body: bytes | str | Mapping[str, Any]) -> SnsEnvelope | None:
    """The SNS envelope in ``body`` (JSON text or a decoded object), or None if it is not one.

    None for malformed JSON, a body over :data:`MAX_ENVELOPE_BYTES`, an unknown ``Type``, a field
    that is not a string or is too long, or a confirmation without its ``SubscribeURL``.
    """
    data = json_object(body, MAX_ENVELOPE_BYTES)
    if data is None:
        return None
    kind = data.get("Type")
    if not isinstance(kind, str) or kind not in ENVELOPE_TYPES:
        return None
    values: dict[str, str] = {}
    for key, attribute in _REQUIRED.items():
        value = _field(data, key)
        if value is None:
            return None
        values[attribute] = value
    message = _field(data, "Message", MAX_ENVELOPE_BYTES)
    subject = data.get("Subject")
    if message is None or (subject is not None and _field(data, "Subject") is None):
        return None
    subscribe_url = _field(data, "SubscribeURL") or ""
    token = _field(data, "Token") or ""
    if kind != "Notification" and not subscribe_url:
        return None
    return SnsEnvelope(
        type=str(kind),
        message=message,
        subject=subject if isinstance(subject, str) else None,
        subscribe_url=subscribe_url,
        token=token,
        **values,
    )


# -- URL allowlist --------------------------------------------------------------------------------
_PATTERN = re.compile(r"^(https?)://([a-z0-9*.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?(/.*)?$")
_HOST_LABEL = "[a-z0-9-]+"


def _origin_re(pattern: str) -> tuple[re.Pattern[str], str]:
    m = _PATTERN.match(pattern.strip().lower())
    if m is None:
        raise ValueError(f"not a URL pattern like 'https://host.example.com/path/': {pattern!r}")
    scheme, host, port, path = m.groups()
    # '*' stands for exactly one host label: "messaging.s3.*.scw.cloud" never matches "evil.com/.scw.cloud".
    host_re = ".".join(_HOST_LABEL if label == "*" else re.escape(label) for label in host.split("."))
    port_re = f":{port}" if port else ""
    return re.compile(f"{scheme}://{host_re}{port_re}"), path or "/"


class UrlAllowlist:
    """URLs allowed by prefix patterns such as ``https://messaging.s3.*.scw.cloud/``.

    A pattern is a scheme, a host (``*`` standing for one label), an optional port and a path
    prefix. A URL is allowed when its scheme and host match one exactly (a port only if the
    pattern names it) and its path starts with the pattern's path. A URL with credentials, a
    backslash, a fragment, non-ASCII text or whitespace is never allowed, whatever the patterns.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._compiled = [_origin_re(p) for p in self.patterns]

    def __repr__(self) -> str:
        return f"UrlAllowlist({list(self.patterns)!r})"

    def allows(self, url: str) -> bool:
        if not url.isascii() or any(c in url for c in "\\@#\x00 \t\r\n") or len(url) > _MAX_FIELD:
            return False
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        host = parts.hostname or ""
        if not host:
            return False
        origin = f"{parts.scheme.lower()}://{host}" + (f":{port}" if port is not None else "")
        if ":" in host:
            origin = f"{parts.scheme.lower()}://[{host}]" + (f":{port}" if port is not None else "")
        path = parts.path or "/"
        return any(
            origin_re.fullmatch(origin) is not None and path.startswith(prefix)
            for origin_re, prefix in self._compiled
        )


# -- verification ---------------------------------------------------------------------------------
@dataclass(slots=True)
class _Cached:
    cert: Certificate | None
    error: str
    at: float


class SnsVerifier:
    """Checks SNS envelopes' signatures (see the module docstring), with a cache of certificates.

    ``ssl_context`` is used to fetch certificates (default: the system's trust store); tests pass
    one that trusts a local server. ``trust_chain``: PEM certificates the signing certificate must
    be issued by (Scaleway publishes one per region); None checks the signature alone.
    """

    def __init__(
        self,
        cert_urls: UrlAllowlist | Sequence[str] = DEFAULT_CERT_URLS,
        *,
        trust_chain: bytes | None = None,
        ssl_context: ssl.SSLContext | None = None,
        fetch_timeout_s: float = 10.0,
        cache_size: int = 32,
        retry_failed_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cert_urls = cert_urls if isinstance(cert_urls, UrlAllowlist) else UrlAllowlist(cert_urls)
        self._trust = _load_chain(trust_chain) if trust_chain else None
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=fetch_timeout_s)
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._cache_size = cache_size
        self._retry_failed_after_s = retry_failed_after_s
        self._clock = clock
        self._fetching: dict[str, anyio.Event] = {}
        self.fetches = 0
        """Certificates fetched (the cache spares all but the first of each URL)."""

    async def verify(self, envelope: SnsEnvelope) -> None:
        """Return if ``envelope`` is signed by a trusted certificate; else raise
        :class:`SnsVerificationError` saying why."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        version = envelope.signature_version
        if version not in ("1", "2"):
            raise SnsVerificationError(f"unsupported SignatureVersion {version[:8]!r} (1 or 2 expected)")
        url = envelope.signing_cert_url
        if not url.startswith("https://") or not self.cert_urls.allows(url):
            raise SnsVerificationError(f"SigningCertURL {url[:200]!r} is not an allowed certificate URL")
        try:
            signature = base64.b64decode(envelope.signature, validate=True)
        except (binascii.Error, ValueError):
            raise SnsVerificationError("Signature is not base64") from None
        cert = await self._certificate(url)
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SnsVerificationError("the signing certificate does not hold an RSA key")
        try:
            key.verify(signature, envelope.string_to_sign(), padding.PKCS1v15(), _digest(version))
        except InvalidSignature:
            raise SnsVerificationError("the signature does not match the message") from None

    async def _certificate(self, url: str) -> Certificate:
        while True:
            cached = self._cache.get(url)
            if cached is not None:
                if cached.cert is not None:
                    self._cache.move_to_end(url)
                    return cached.cert
                if self._clock() - cached.at < self._retry_failed_after_s:
                    raise SnsVerificationError(cached.error)
            pending = self._fetching.get(url)
            if pending is None:
                break
            await pending.wait()  # another request fetches it: share its answer
        done = self._fetching[url] = anyio.Event()
        try:
            try:
                cert = await self._fetch(url)
                entry = _Cached(cert, "", self._clock())
            except SnsVerificationError as exc:
                entry = _Cached(None, str(exc), self._clock())
            self._cache[url] = entry
            self._cache.move_to_end(url)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        finally:
            del self._fetching[url]
            done.set()
        if entry.cert is None:
            raise SnsVerificationError(entry.error)
        return entry.cert

    async def _fetch(self, url: str) -> Certificate:
        from cryptography import x509

        self.fetches += 1
        shown = url[:200]
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(url, ssl=self._ssl or True, allow_redirects=False) as resp,
            ):
                if resp.status != 200:
                    raise SnsVerificationError(f"signing certificate {shown}: HTTP {resp.status}")
                body = await resp.content.read(MAX_CERT_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise SnsVerificationError(f"signing certificate {shown}: {type(exc).__name__}") from None
        if len(body) > MAX_CERT_BYTES:
            raise SnsVerificationError(f"signing certificate {shown}: larger than {MAX_CERT_BYTES} bytes")
        try:
            cert = x509.load_pem_x509_certificate(body)
        except ValueError:
            raise SnsVerificationError(f"signing certificate {shown}: not a PEM certificate") from None
        if self._trust is not None:
            self._check_issued(cert, shown)
        return cert

    def _check_issued(self, cert: Certificate, shown: str) -> None:
        from cryptography.exceptions import InvalidSignature

        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SnsVerificationError(f"signing certificate {shown}: outside its validity dates")
        assert self._trust is not None
        for ca in self._trust:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return
        raise SnsVerificationError(f"signing certificate {shown}: not issued by the configured trust chain")


def _digest(version: str) -> HashAlgorithm:
    """SignatureVersion 1 is SHA1withRSA (SNS's original scheme), 2 is SHA256withRSA."""
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA1() if version == "1" else hashes.SHA256()


def _load_chain(pem: bytes) -> list[Certificate]:
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"the SNS trust chain is not PEM certificates: {exc}") from None
    return chain


def sign_envelope(
    envelope: SnsEnvelope, key: RSAPrivateKey, cert_url: str, *, version: str = "2"
) -> SnsEnvelope:
    """``envelope`` signed with ``key`` (whose certificate is served at ``cert_url``), as SNS does."""
    from dataclasses import replace

    from cryptography.hazmat.primitives.asymmetric import padding

    unsigned = replace(envelope, signature_version=version, signing_cert_url=cert_url, signature="")
    signature = key.sign(unsigned.string_to_sign(), padding.PKCS1v15(), _digest(version))
    return replace(unsigned, signature=base64.b64encode(signature).decode())
