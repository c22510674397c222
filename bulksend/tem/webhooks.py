"""TEM webhooks: the webhook resource, its event log, and the payload of an email event.

A webhook (``/webhooks``) makes TEM publish the events of one domain to a Topics and Events (SNS)
topic. Each event's payload is a JSON object (documented per type by Scaleway: ``id``, ``type``,
``email_id``, ``email_to``, ``email_headers``, ``email_response_code``…); :func:`parse_email_event`
reads one, tolerantly and within bounds, since it comes from outside: anything that is not an
email event of a known type answers ``None``, never an exception.

What an event says about an email's final status (:attr:`EmailEvent.final_status`):

================================  ========  =========================================
event                             status    flags
================================  ========  =========================================
``email_delivered``               sent      —
``email_dropped``                 failed    ``hard_bounce`` (``mailbox_full`` for 5.2.2)
``email_mailbox_not_found``       failed    ``hard_bounce``, ``mailbox_not_found``
``email_spam``                    failed    ``spam``
``email_blocklisted``             failed    ``blocklisted``
``email_queued``, ``email_deferred``  not final
================================  ========  =========================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final

import orjson

from bulksend.tem.models import _opt_time, _TolerantEnum

__all__ = [
    "EMAIL_EVENT_TYPES",
    "FINAL_EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "EmailEvent",
    "Webhook",
    "WebhookEventRecord",
    "WebhookEventStatus",
    "WebhookEventType",
    "json_object",
    "parse_email_event",
]


class WebhookEventType(_TolerantEnum):
    """What happened (``WebhookEvent.Type`` in the spec); unknown values map to ``UNKNOWN_TYPE``."""

    UNKNOWN_TYPE = "unknown_type"
    EMAIL_QUEUED = "email_queued"
    EMAIL_DROPPED = "email_dropped"
    EMAIL_DEFERRED = "email_deferred"
    EMAIL_DELIVERED = "email_delivered"
    EMAIL_SPAM = "email_spam"
    EMAIL_MAILBOX_NOT_FOUND = "email_mailbox_not_found"
    EMAIL_BLOCKLISTED = "email_blocklisted"
    BLOCKLIST_CREATED = "blocklist_created"


class WebhookEventStatus(_TolerantEnum):
    """Delivery status of one event in a webhook's log."""

    UNKNOWN_STATUS = "unknown_status"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


EMAIL_EVENT_TYPES: Final = (
    WebhookEventType.EMAIL_QUEUED,
    WebhookEventType.EMAIL_DELIVERED,
    WebhookEventType.EMAIL_DROPPED,
    WebhookEventType.EMAIL_DEFERRED,
    WebhookEventType.EMAIL_SPAM,
    WebhookEventType.EMAIL_MAILBOX_NOT_FOUND,
    WebhookEventType.EMAIL_BLOCKLISTED,
)
"""The event types about one email, in lifecycle order: what tracking by events subscribes to."""

# Event type → (final status, flags). Types absent here say nothing final.
_FINAL: Final[Mapping[WebhookEventType, tuple[str, tuple[str, ...]]]] = {
    WebhookEventType.EMAIL_DELIVERED: ("sent", ()),
    WebhookEventType.EMAIL_DROPPED: ("failed", ("hard_bounce",)),
    WebhookEventType.EMAIL_MAILBOX_NOT_FOUND: ("failed", ("hard_bounce", "mailbox_not_found")),
    WebhookEventType.EMAIL_SPAM: ("failed", ("spam",)),
    WebhookEventType.EMAIL_BLOCKLISTED: ("failed", ("blocklisted",)),
}
FINAL_EVENT_TYPES: Final = frozenset(_FINAL)

MAX_EVENT_BYTES: Final = 256 * 1024
"""Largest event payload read (an SNS message is at most 256 KiB)."""
_MAX_TEXT: Final = 1000
"""Longest text kept from one field (an SMTP answer, an address)."""
_MAX_HEADERS: Final = 200
"""Headers looked at in one event: enough for any real email, bounded for a hostile one."""
_MAILBOX_FULL = re.compile(r"\b5\.2\.2\b")
REF_HEADER: Final = "x-bulksend-ref"


@dataclass(frozen=True, slots=True)
class EmailEvent:
    """One email event from TEM, reduced to what tracking needs."""

    id: str
    type: WebhookEventType
    email_id: str = ""
    """Empty for ``email_blocklisted``, which TEM sends before any email exists to refer to."""
    email_to: str = ""
    ref: str = ""
    """The ``X-Bulksend-Ref`` header the email carried (``<campaign id>/<row>``), if any."""
    created_at: datetime | None = None
    response_code: int | None = None
    response_message: str = ""
    try_count: int = 0
    domain_id: str = ""

    @property
    def final_status(self) -> str | None:
        """``sent`` or ``failed`` when the event makes the email final, else None."""
        final = _FINAL.get(self.type)
        return final[0] if final is not None else None

    @property
    def flags(self) -> tuple[str, ...]:
        """TEM's flags the event implies (see the module's table)."""
        final = _FINAL.get(self.type)
        if final is None:
            return ()
        if self.type is WebhookEventType.EMAIL_DROPPED and _MAILBOX_FULL.search(self.response_message):
            return ("mailbox_full",)
        return final[1]

    @property
    def status_details(self) -> str:
        """The SMTP answer, as TEM writes an email's ``status_details`` (``550 5.1.1 …``)."""
        if self.response_code is None:
            return self.response_message
        return f"{self.response_code} {self.response_message}".strip()

    @property
    def campaign_id(self) -> str:
        """The campaign the ``X-Bulksend-Ref`` header names ('' without one)."""
        campaign, sep, row = self.ref.rpartition("/")
        return campaign if sep and row.isdigit() else ""


def json_object(payload: bytes | str | Mapping[str, Any], max_bytes: int) -> Mapping[str, Any] | None:
    """``payload`` as a JSON object (decoded if it is text), or None: not an object, not JSON, or
    text longer than ``max_bytes``."""
    data: object = payload
    if isinstance(payload, bytes | str):
        if len(payload) > max_bytes:
            return None
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
    return data if isinstance(data, Mapping) else None


def _text(value: object) -> str:
    return value[:_MAX_TEXT] if isinstance(value, str) else ""


def _ref(headers: object) -> str:
    if not isinstance(headers, list):
        return ""
    for header in headers[:_MAX_HEADERS]:
        if (
            isinstance(header, dict)
            and isinstance(header.get("key"), str)
            and header["key"].strip().lower() == REF_HEADER
        ):
            return _text(header.get("value")).strip()
    return ""


def parse_email_event(payload: bytes | str | Mapping[str, Any]) -> EmailEvent | None:
    """The email event in ``payload`` (JSON text or a decoded object), or None when it is not one.

    None for anything but an object of one of :data:`EMAIL_EVENT_TYPES` with an ``id`` and an
    ``email_id`` (or, for ``email_blocklisted``, a recipient): malformed JSON, a payload over
    :data:`MAX_EVENT_BYTES`, another type. Fields of the wrong type are taken as absent.
    """
    data = json_object(payload, MAX_EVENT_BYTES)
    if data is None:
        return None
    raw_type = data.get("type")
    kind = WebhookEventType.parse(raw_type) if isinstance(raw_type, str) else WebhookEventType.UNKNOWN_TYPE
    if kind not in EMAIL_EVENT_TYPES:
        return None
    event_id = _text(data.get("id"))
    email_id = _text(data.get("email_id"))
    email_to = _text(data.get("email_to"))
    if not event_id or not (email_id or (kind is WebhookEventType.EMAIL_BLOCKLISTED and email_to)):
        return None
    code = data.get("email_response_code")
    tries = data.get("email_try_count")
    return EmailEvent(
        id=event_id,
        type=kind,
        email_id=email_id,
        email_to=email_to,
        ref=_ref(data.get("email_headers")),
        created_at=_opt_time(data, "created_at"),
        response_code=code if type(code) is int and 0 <= code < 1000 else None,
        response_message=_text(data.get("email_response_message") or data.get("email_error")),
        try_count=tries if type(tries) is int and 0 <= tries < 1_000_000 else 0,
        domain_id=_text(data.get("domain_id")),
    )


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook as ``/webhooks`` answers it."""

    id: str
    domain_id: str = ""
    organization_id: str = ""
    project_id: str = ""
    name: str = ""
    event_types: tuple[str, ...] = ()
    sns_arn: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Webhook:
        types = data.get("event_types")
        return cls(
            **_texts(cls, data),
            event_types=tuple(str(t) for t in types) if isinstance(types, list) else (),
            created_at=_opt_time(data, "created_at"),
            updated_at=_opt_time(data, "updated_at"),
        )


@dataclass(frozen=True, slots=True)
class WebhookEventRecord:
    """One entry of a webhook's event log (``GET /webhooks/{id}/events``)."""

    id: str
    webhook_id: str = ""
    type: str = ""
    status: str = ""
    email_id: str = ""
    data: str = ""
    """The payload TEM sent, as JSON text."""
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WebhookEventRecord:
        return cls(**_texts(cls, data), created_at=_opt_time(data, "created_at"))


def _texts(cls: type, data: Mapping[str, Any]) -> dict[str, str]:
    """The text fields of the dataclass ``cls`` from a wire object: a missing key is empty."""
    return {f.name: str(data.get(f.name) or "") for f in fields(cls) if f.type == "str"}
