"""Unsubscribe tokens: who asked to unsubscribe from what, signed so nobody can forge or alter one.

A token is the URL-safe base64 (no padding) of::

    version (1 byte) | project id (16 bytes, a UUID) | issued at (4 bytes, Unix seconds, big endian)
    | campaign id length (1 byte) | campaign id (UTF-8) | address (UTF-8, lower-cased)
    | HMAC-SHA256 of everything before, truncated to 16 bytes

The key is derived from ``BULKSEND_UNSUBSCRIBE_SECRET`` (at least 16 characters), never stored
with the data. A token holds no database id, so one cannot be guessed from another, and it is
checked in constant time. The address is readable by whoever holds the link (the recipient);
it is signed, not hidden. At most :data:`MAX_TOKEN_CHARS` characters, so a link stays well under
what mail clients and servers accept.

:meth:`UnsubscribeSigner.verify` refuses a token for any reason (malformed, forged, tampered,
truncated, from another secret, expired, issued in the future) with the same
:class:`BadToken`, whose message never says which: an answer must not help a forger.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from bulksend.errors import ConfigError
from bulksend.secret import Secret

__all__ = [
    "MAX_TOKEN_CHARS",
    "MIN_SECRET_CHARS",
    "SECRET_ENV",
    "BadToken",
    "Unsubscribe",
    "UnsubscribeSigner",
]

SECRET_ENV: Final = "BULKSEND_UNSUBSCRIBE_SECRET"
MIN_SECRET_CHARS: Final = 16
MAX_TOKEN_CHARS: Final = 480
"""The longest token: a 64-character campaign id and a 254-character address fit."""
_MAX_CAMPAIGN: Final = 64
_MAX_ADDRESS: Final = 254
_VERSION: Final = 1
_HEAD: Final = struct.Struct(">B16sIB")
_MAC_BYTES: Final = 16
_MIN_BYTES: Final = _HEAD.size + 3 + _MAC_BYTES  # the shortest address is "a@b"
_CLOCK_SKEW_S: Final = 300.0
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


class BadToken(Exception):
    """The token is not one of ours, or no longer valid. The message is the same for every reason."""

    def __init__(self) -> None:
        super().__init__("invalid unsubscribe link")


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """What a valid token says: ``address`` asked to leave ``campaign_id`` of ``project_id``."""

    project_id: str
    address: str
    campaign_id: str
    issued_at: int
    """Unix seconds."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class UnsubscribeSigner:
    """Makes and checks tokens with one secret. The key never appears in a repr."""

    __slots__ = ("_key",)

    def __init__(self, secret: Secret | str) -> None:
        text = secret.reveal() if isinstance(secret, Secret) else secret
        if len(text) < MIN_SECRET_CHARS:
            raise ConfigError(
                f"{SECRET_ENV} must be at least {MIN_SECRET_CHARS} characters long; make one with "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        # A key of its own for this use, whatever else the secret may also serve.
        self._key = hmac.new(text.encode(), b"bulksend unsubscribe token v1", hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "UnsubscribeSigner(****)"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> UnsubscribeSigner:
        """The signer of ``BULKSEND_UNSUBSCRIBE_SECRET``; :class:`ConfigError` when it is not set."""
        text = (os.environ if env is None else env).get(SECRET_ENV, "")
        if not text:
            raise ConfigError(
                f"[unsubscribe] needs a secret to sign the links: set {SECRET_ENV} (at least "
                f"{MIN_SECRET_CHARS} characters, the same wherever bulksend sends or serves /u/); make "
                "one with python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return cls(text)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def token(
        self, project_id: str, address: str, campaign_id: str, *, issued_at: float | None = None
    ) -> str:
        """The token of ``address`` in ``campaign_id`` of ``project_id`` (a UUID).

        ``ValueError`` for a project id that is not a UUID, or a campaign id or address too long.
        """
        campaign = campaign_id.encode()
        mailbox = address.strip().lower().encode()
        if not 0 < len(campaign) <= _MAX_CAMPAIGN:
            raise ValueError(f"a campaign id of 1 to {_MAX_CAMPAIGN} bytes is needed, got {campaign_id!r}")
        if not 3 <= len(mailbox) <= _MAX_ADDRESS or b"@" not in mailbox:
            raise ValueError(f"not an address to sign: {address[:_MAX_ADDRESS]!r}")
        when = int(time.time() if issued_at is None else issued_at)
        head = _HEAD.pack(_VERSION, uuid.UUID(project_id).bytes, when, len(campaign))
        payload = head + campaign + mailbox
        return _b64(payload + self._mac(payload))

    def verify(self, token: str, *, now: float | None = None, max_age_s: float | None = None) -> Unsubscribe:
        """What ``token`` says, or :class:`BadToken` (``max_age_s`` None: tokens never expire)."""
        if not 0 < len(token) <= MAX_TOKEN_CHARS or _TOKEN_RE.fullmatch(token) is None:
            raise BadToken
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise BadToken from None
        if len(raw) < _MIN_BYTES:
            raise BadToken
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        # Constant time: a forger learns nothing from how long the comparison took.
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise BadToken
        version, project, issued_at, campaign_len = _HEAD.unpack_from(payload)
        rest = payload[_HEAD.size :]
        if version != _VERSION or not 0 < campaign_len < len(rest):
            raise BadToken
        try:
            campaign = rest[:campaign_len].decode()
            address = rest[campaign_len:].decode()
        except UnicodeDecodeError:
            raise BadToken from None
        current = time.time() if now is None else now
        if issued_at > current + _CLOCK_SKEW_S:
            raise BadToken
        if max_age_s is not None and current - issued_at > max_age_s:
            raise BadToken
        return Unsubscribe(str(uuid.UUID(bytes=project)), address, campaign, issued_at)
