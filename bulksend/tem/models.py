"""Typed models of the TEM email endpoints (v1alpha1).

Parsing is deliberately tolerant: a missing key means empty or zero (as TEM documents), and an
enum value this version does not know maps to ``UNKNOWN`` instead of raising, so a flag or status
added by TEM tomorrow never crashes a running campaign. The raw value is kept for output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

__all__ = [
    "Address",
    "Attachment",
    "CreateEmailRequest",
    "Email",
    "EmailFlag",
    "EmailStatus",
    "EmailTry",
    "Header",
    "ListEmailsPage",
    "ListEmailsQuery",
    "OrderBy",
    "RcptType",
    "Statistics",
    "format_rfc3339",
    "parse_rfc3339",
]


class _TolerantEnum(StrEnum):
    """An enum of wire values whose first member stands for any value this version does not know."""

    @classmethod
    def parse(cls, value: object) -> Self:
        """Map a wire value to a member; anything unrecognised is the first (unknown) member."""
        try:
            return cls(str(value))
        except ValueError:
            return next(iter(cls))


class EmailStatus(_TolerantEnum):
    """Status of one email (one recipient). ``new`` and ``sending`` are transient."""

    UNKNOWN = "unknown"
    NEW = "new"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        """True once TEM will not change the status any more."""
        return self in _FINAL_STATUSES


_FINAL_STATUSES = frozenset({EmailStatus.SENT, EmailStatus.FAILED, EmailStatus.CANCELED})
FINAL_STATUSES: frozenset[EmailStatus] = _FINAL_STATUSES
TRANSIENT_STATUSES: frozenset[EmailStatus] = frozenset({EmailStatus.NEW, EmailStatus.SENDING})


class EmailFlag(_TolerantEnum):
    """Flags TEM attaches to an email. Unknown wire values map to ``UNKNOWN_FLAG``."""

    UNKNOWN_FLAG = "unknown_flag"
    SOFT_BOUNCE = "soft_bounce"
    HARD_BOUNCE = "hard_bounce"
    SPAM = "spam"
    MAILBOX_FULL = "mailbox_full"
    MAILBOX_NOT_FOUND = "mailbox_not_found"
    GREYLISTED = "greylisted"
    SEND_BEFORE_EXPIRATION = "send_before_expiration"
    BLOCKLISTED = "blocklisted"


class RcptType(_TolerantEnum):
    """Recipient type of an email. Unknown wire values map to ``UNKNOWN_RCPT_TYPE``."""

    UNKNOWN_RCPT_TYPE = "unknown_rcpt_type"
    TO = "to"
    CC = "cc"
    BCC = "bcc"


class OrderBy(StrEnum):
    """Sort orders accepted by the list endpoint."""

    CREATED_AT_DESC = "created_at_desc"
    CREATED_AT_ASC = "created_at_asc"
    UPDATED_AT_DESC = "updated_at_desc"
    UPDATED_AT_ASC = "updated_at_asc"
    STATUS_DESC = "status_desc"
    STATUS_ASC = "status_asc"
    MAIL_FROM_DESC = "mail_from_desc"
    MAIL_FROM_ASC = "mail_from_asc"
    MAIL_RCPT_DESC = "mail_rcpt_desc"
    MAIL_RCPT_ASC = "mail_rcpt_asc"
    SUBJECT_DESC = "subject_desc"
    SUBJECT_ASC = "subject_asc"


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})?$"
)


def parse_rfc3339(value: object) -> datetime | None:
    """Parse an RFC 3339 timestamp, accepting up to nanosecond fractions (truncated to µs).

    Returns ``None`` for ``None``/empty, else a time in UTC. A timestamp without offset is taken
    as UTC. Raises ``ValueError`` for text that is not a timestamp at all, and for one that falls
    outside years 1..9999 once in UTC (such as ``9999-12-31T23:59:59-14:00``).
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return _in_utc(value if value.tzinfo else value.replace(tzinfo=UTC), value)
    text = str(value).strip()
    if text.endswith("Z") and len(text) <= 30:
        # Fast path for the common "…T…[.fffffffff]Z" shape (fromisoformat truncates nanoseconds).
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    m = _RFC3339.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text[:64]!r}")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    tz = "+00:00"
    if offset and offset not in ("Z", "z"):
        tz = offset if ":" in offset else f"{offset[:3]}:{offset[3:]}"
    return _in_utc(
        datetime.fromisoformat(f"{year}-{month}-{day}T{hour}:{minute}:{second}.{micro:06d}{tz}"), text
    )


def _in_utc(value: datetime, shown: object) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # datetime cannot hold it (its range is years 1..9999): a ValueError like any bad time.
        raise ValueError(
            f"{str(shown)[:64]!r} is out of range: in UTC it falls outside years 1 to 9999"
        ) from None


def format_rfc3339(value: datetime) -> str:
    """Format a datetime as RFC 3339 in UTC with a ``Z`` suffix (naive values are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    # Not strftime: its %Y drops the leading zeros of years before 1000 ("999-01-01…").
    v = value
    text = f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    return f"{text}.{value.microsecond:06d}Z" if value.microsecond else f"{text}Z"


def _opt_time(data: Mapping[str, Any], key: str) -> datetime | None:
    try:
        return parse_rfc3339(data.get(key))
    except ValueError:
        # A malformed timestamp from the server is not worth losing the whole email over.
        return None


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return 0


# ---------------------------------------------------------------------------------------------
# Request
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: address and optional display name."""

    email: str
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"email": self.email}
        if self.name:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class Attachment:
    """An attachment; ``content`` is already base64-encoded, as the API expects."""

    name: str
    type: str
    content: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "content": self.content}


@dataclass(frozen=True, slots=True)
class Header:
    """An additional header (key and value must be non-empty)."""

    key: str
    value: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value}


@dataclass(frozen=True, slots=True)
class CreateEmailRequest:
    """Body of ``POST /emails``. One Email is created per recipient (to, cc and bcc)."""

    from_: Address
    to: tuple[Address, ...] = ()
    subject: str = ""
    text: str = ""
    html: str = ""
    project_id: str = ""
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    send_before: datetime | None = None
    additional_headers: tuple[Header, ...] = ()

    def to_json(self, default_project_id: str = "") -> dict[str, Any]:
        """The JSON object to send; ``default_project_id`` fills an empty ``project_id``."""
        out: dict[str, Any] = {
            "from": self.from_.to_json(),
            "to": [a.to_json() for a in self.to],
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "project_id": self.project_id or default_project_id,
        }
        if self.cc:
            out["cc"] = [a.to_json() for a in self.cc]
        if self.bcc:
            out["bcc"] = [a.to_json() for a in self.bcc]
        if self.attachments:
            out["attachments"] = [a.to_json() for a in self.attachments]
        if self.send_before is not None:
            out["send_before"] = format_rfc3339(self.send_before)
        if self.additional_headers:
            out["additional_headers"] = [h.to_json() for h in self.additional_headers]
        return out


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmailTry:
    """One delivery attempt by TEM. ``code`` is the SMTP code, 0 when no server was reached."""

    rank: int = 0
    tried_at: datetime | None = None
    code: int = 0
    message: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmailTry:
        return cls(
            rank=_int(data.get("rank")),
            tried_at=_opt_time(data, "tried_at"),
            code=_int(data.get("code")),
            message=str(data.get("message") or ""),
        )


@dataclass(frozen=True, slots=True)
class Email:
    """One email as TEM reports it (one per recipient)."""

    id: str
    message_id: str = ""
    project_id: str = ""
    mail_from: str = ""
    mail_rcpt: str = ""
    rcpt_type: RcptType = RcptType.UNKNOWN_RCPT_TYPE
    subject: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    status: EmailStatus = EmailStatus.UNKNOWN
    status_details: str = ""
    try_count: int = 0
    last_tries: tuple[EmailTry, ...] = ()
    flags: tuple[EmailFlag, ...] = ()
    raw_flags: tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    @property
    def last_try(self) -> EmailTry | None:
        """The attempt with the highest rank, if any."""
        if not self.last_tries:
            return None
        return max(self.last_tries, key=lambda t: t.rank)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Email:
        """Build from a wire object; missing keys are empty, unknown enum values are UNKNOWN."""
        raw_flags = tuple(str(f) for f in (data.get("flags") or ()))
        tries = data.get("last_tries") or ()
        return cls(
            id=str(data.get("id") or ""),
            message_id=str(data.get("message_id") or ""),
            project_id=str(data.get("project_id") or ""),
            mail_from=str(data.get("mail_from") or ""),
            mail_rcpt=str(data.get("mail_rcpt") or data.get("rcpt_to") or ""),
            rcpt_type=RcptType.parse(data.get("rcpt_type")),
            subject=str(data.get("subject") or ""),
            created_at=_opt_time(data, "created_at"),
            updated_at=_opt_time(data, "updated_at"),
            status=EmailStatus.parse(data.get("status")),
            status_details=str(data.get("status_details") or ""),
            try_count=_int(data.get("try_count")),
            last_tries=tuple(EmailTry.from_json(t) for t in tries if isinstance(t, Mapping)),
            flags=tuple(EmailFlag.parse(f) for f in raw_flags),
            raw_flags=raw_flags,
        )


@dataclass(frozen=True, slots=True)
class ListEmailsQuery:
    """Filters of ``GET /emails``. ``None`` / empty means "not filtered"."""

    project_id: str | None = None
    domain_id: str | None = None
    message_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    mail_from: str | None = None
    mail_rcpt: str | None = None
    statuses: tuple[EmailStatus, ...] = ()
    flags: tuple[EmailFlag, ...] = ()
    subject: str | None = None
    search: str | None = None
    order_by: OrderBy | None = None

    def to_params(self) -> list[tuple[str, str]]:
        """Query parameters; list parameters repeat their key (``statuses=a&statuses=b``)."""
        params: list[tuple[str, str]] = []
        for key in ("project_id", "domain_id", "message_id", "mail_from", "mail_rcpt", "subject", "search"):
            value = getattr(self, key)
            if value:
                params.append((key, value))
        if self.since is not None:
            params.append(("since", format_rfc3339(self.since)))
        if self.until is not None:
            params.append(("until", format_rfc3339(self.until)))
        params.extend(("statuses", s.value) for s in self.statuses)
        params.extend(("flags", f.value) for f in self.flags)
        if self.order_by is not None:
            params.append(("order_by", self.order_by.value))
        return params


@dataclass(frozen=True, slots=True)
class ListEmailsPage:
    """One page of ``GET /emails``."""

    total_count: int
    emails: tuple[Email, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ListEmailsPage:
        emails = tuple(Email.from_json(e) for e in (data.get("emails") or ()) if isinstance(e, Mapping))
        return cls(total_count=_int(data.get("total_count")), emails=emails)


@dataclass(frozen=True, slots=True)
class Statistics:
    """Counts by status from ``GET /statistics``."""

    total_count: int = 0
    new_count: int = 0
    sending_count: int = 0
    sent_count: int = 0
    failed_count: int = 0
    canceled_count: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Statistics:
        # Every field is a count under its own name in TEM's answer.
        return cls(**{f.name: _int(data.get(f.name)) for f in fields(cls)})


def statuses(values: Iterable[str | EmailStatus]) -> tuple[EmailStatus, ...]:
    """Convenience: build a status tuple from strings."""
    return tuple(EmailStatus.parse(v) for v in values)
