"""The sandbox's email store and the email lifecycle.

Memory layout (it must hold a million emails): the fields shared by every recipient of one send
(project, sender, subject, creation time, ``send_before``, timings) live once in a
:class:`Message`; each recipient is a five-slot :class:`StoredEmail`. An email's position in the
store *is* its identity: the id is a per-store random UUID prefix followed by the position in hex,
so looking an id up needs no dictionary. Emails are appended in creation order and creation times
never decrease, so a ``since``/``until`` window is two bisections.

Statuses are never stored: they are computed from the clock whenever an email is read
(:func:`view_at`), from the email's outcome and the timings captured when it was created. No
background task runs per email.
"""

from __future__ import annotations

import math
import secrets
import sys
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "ORDER_BY_VALUES",
    "EmailFilter",
    "EmailStore",
    "EmailView",
    "Message",
    "Outcome",
    "StoredEmail",
    "Timing",
    "format_timestamp",
    "outcome_for",
    "status_at",
    "view_at",
]


class Outcome:
    """What happens to an email, chosen by the recipient's local part (see docs/sandbox.md)."""

    OK = 0
    BOUNCE = 1
    SOFTBOUNCE = 2
    BLOCKED = 3
    SPAM = 4
    FULL = 5
    GREYLIST = 6
    STUCK = 7
    HOLD = 8


# Local-part prefixes, checked case-insensitively. No prefix is a prefix of another, so order
# does not matter.
_PREFIXES: dict[str, int] = {
    "bounce": Outcome.BOUNCE,
    "softbounce": Outcome.SOFTBOUNCE,
    "blocked": Outcome.BLOCKED,
    "spam": Outcome.SPAM,
    "full": Outcome.FULL,
    "greylist": Outcome.GREYLIST,
    "stuck": Outcome.STUCK,
    "hold": Outcome.HOLD,
}
_PREFIX_TUPLE = tuple(_PREFIXES)


def outcome_for(address: str) -> int:
    """The :class:`Outcome` of an email to ``address``."""
    local = address.partition("@")[0].lower()
    if not local.startswith(_PREFIX_TUPLE):  # the common case: one C-level check
        return Outcome.OK
    for prefix, outcome in _PREFIXES.items():
        if local.startswith(prefix):
            return outcome
    return Outcome.OK  # pragma: no cover - unreachable


@dataclass(frozen=True, slots=True)
class Timing:
    """Lifecycle timings captured when an email is created (shared by all emails of a config)."""

    sending_after_s: float = 0.0
    final_after_s: float = 0.0
    soft_bounce_retry_s: float = 0.0
    hold_s: float = 3600.0


class Message:
    """What the recipients of one send share."""

    __slots__ = ("created_at", "mail_from", "project_id", "send_before", "seq", "subject", "timing")

    def __init__(
        self,
        seq: int,
        project_id: str,
        mail_from: str,
        subject: str,
        created_at: float,
        send_before: float | None,
        timing: Timing,
    ) -> None:
        self.seq = seq
        self.project_id = project_id
        self.mail_from = mail_from
        self.subject = subject
        self.created_at = created_at
        self.send_before = send_before
        self.timing = timing


class StoredEmail:
    """One recipient of one message."""

    __slots__ = ("canceled_at", "mail_rcpt", "message", "outcome", "rcpt_type")

    def __init__(self, message: Message, mail_rcpt: str, rcpt_type: str, outcome: int) -> None:
        self.message = message
        self.mail_rcpt = mail_rcpt
        self.rcpt_type = rcpt_type
        self.outcome = outcome
        self.canceled_at: float | None = None


# ---------------------------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------------------------

# (SMTP code, message) of the attempts; status_details shows "<code> <message>".
_TRY_OK = (250, "2.0.0 OK")
_TRY_SOFT = (451, "4.7.1 try again later")
_TRY_GREY = (451, "4.7.1 greylisted, please try again later")
_FINAL_FAILURE: dict[int, tuple[tuple[int, str], tuple[str, ...]]] = {
    Outcome.BOUNCE: ((550, "5.1.1 mailbox not found"), ("hard_bounce", "mailbox_not_found")),
    Outcome.SPAM: ((554, "5.7.1 message rejected as spam"), ("spam",)),
    Outcome.FULL: ((552, "5.2.2 mailbox full"), ("mailbox_full",)),
}
_BLOCKED_DETAILS = "recipient is blocklisted"
_EXPIRED_DETAILS = "send_before date passed before the email could be sent"
_CANCELED_DETAILS = "canceled on request"

Try = tuple[int, float, int, str]
"""(rank, tried_at, code, message)."""


@dataclass(frozen=True, slots=True)
class EmailView:
    """An email's state at one instant."""

    status: str
    updated_at: float
    status_details: str | None
    try_count: int
    last_tries: tuple[Try, ...]
    flags: tuple[str, ...]


def _leave_new_at(email: StoredEmail) -> float:
    m = email.message
    t = m.timing
    return m.created_at + (t.hold_s if email.outcome == Outcome.HOLD else t.sending_after_s)


def status_at(email: StoredEmail, now: float) -> str:
    """The status of ``email`` at ``now`` (the cheap path used by filters and statistics)."""
    if email.canceled_at is not None:
        return "canceled"
    m = email.message
    t = m.timing
    outcome = email.outcome
    leave_new = m.created_at + (t.hold_s if outcome == Outcome.HOLD else t.sending_after_s)
    if now < leave_new:
        return "new"
    if (m.send_before is not None and m.send_before < leave_new) or outcome == Outcome.BLOCKED:
        return "failed"
    if outcome == Outcome.STUCK:
        return "sending"
    if outcome == Outcome.SOFTBOUNCE or outcome == Outcome.GREYLIST:
        final_at = leave_new + 2 * t.final_after_s + t.soft_bounce_retry_s
    else:
        final_at = leave_new + t.final_after_s
    if now < final_at:
        return "sending"
    return "failed" if outcome in _FINAL_FAILURE else "sent"


def view_at(email: StoredEmail, now: float) -> EmailView:
    """The full state of ``email`` at ``now``: status, details, attempts and flags."""
    m = email.message
    t = m.timing
    created = m.created_at
    outcome = email.outcome
    if email.canceled_at is not None:
        return EmailView("canceled", email.canceled_at, _CANCELED_DETAILS, 0, (), ())
    leave_new = _leave_new_at(email)
    if now < leave_new:
        return EmailView("new", created, None, 0, (), ())
    if m.send_before is not None and m.send_before < leave_new:
        return EmailView("failed", leave_new, _EXPIRED_DETAILS, 0, (), ("send_before_expiration",))
    if outcome == Outcome.BLOCKED:
        return EmailView("failed", leave_new, _BLOCKED_DETAILS, 0, (), ("blocklisted",))

    f = t.final_after_s
    first_try_at = leave_new + f
    if now < first_try_at:
        return EmailView("sending", leave_new, None, 0, (), ())

    if outcome == Outcome.SOFTBOUNCE or outcome == Outcome.GREYLIST:
        soft, flag = (
            (_TRY_SOFT, "soft_bounce") if outcome == Outcome.SOFTBOUNCE else (_TRY_GREY, "greylisted")
        )
        try1: Try = (1, first_try_at, soft[0], soft[1])
        second_try_at = first_try_at + f + t.soft_bounce_retry_s
        if now < second_try_at:
            return EmailView("sending", first_try_at, f"{soft[0]} {soft[1]}", 1, (try1,), (flag,))
        try2: Try = (2, second_try_at, _TRY_OK[0], _TRY_OK[1])
        return EmailView("sent", second_try_at, "250 2.0.0 OK", 2, (try1, try2), (flag,))

    if outcome == Outcome.STUCK:
        # Soft bounces retried "forever" (TEM gives up after 72 h; the sandbox keeps it sending so
        # clients must cope with an email that never becomes final).
        interval = f + t.soft_bounce_retry_s
        count = 1 if interval <= 0 else 1 + math.floor((now - first_try_at) / interval)
        first_shown = max(1, count - 2)
        tries = tuple(
            (rank, first_try_at + (rank - 1) * interval, _TRY_SOFT[0], _TRY_SOFT[1])
            for rank in range(first_shown, count + 1)
        )
        return EmailView(
            "sending", tries[-1][1], f"{_TRY_SOFT[0]} {_TRY_SOFT[1]}", count, tries, ("soft_bounce",)
        )

    failure = _FINAL_FAILURE.get(outcome)
    if failure is not None:
        (code, text), flags = failure
        return EmailView("failed", first_try_at, f"{code} {text}", 1, ((1, first_try_at, code, text),), flags)
    return EmailView("sent", first_try_at, "250 2.0.0 OK", 1, ((1, first_try_at, *_TRY_OK),), ())


# ---------------------------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _second_prefix(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def format_timestamp(t: float) -> str:
    """RFC 3339 UTC with a nanosecond fraction, as TEM answers (``2024-04-01T07:55:36.758671147Z``)."""
    second = math.floor(t)
    ns = int((t - second) * 1e9)
    if ns > 999_999_999:  # float rounding just below the next second
        ns = 999_999_999
    return f"{_second_prefix(second)}.{ns:09d}Z"


# ---------------------------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------------------------


def _uuid_prefix() -> str:
    """A random "xxxxxxxx-xxxx-4xxx-yxxx-" prefix; the last group (12 hex digits) is a sequence."""
    h = secrets.token_hex(10)
    variant = "89ab"[int(h[15], 16) & 3]
    return f"{h[0:8]}-{h[8:12]}-4{h[12:15]}-{variant}{h[16:19]}-"


ORDER_BY_VALUES: frozenset[str] = frozenset(
    f"{field}_{direction}"
    for field in ("created_at", "updated_at", "status", "mail_from", "mail_rcpt", "subject")
    for direction in ("asc", "desc")
)


@dataclass(frozen=True, slots=True)
class EmailFilter:
    """Filters of the list and statistics endpoints; ``None`` means "not filtered".

    Address filters are lower-cased; ``search`` is lower-cased and matched as a substring.
    """

    project_id: str | None = None
    message_id: str | None = None
    since: float | None = None
    until: float | None = None
    mail_from: str | None = None
    mail_rcpt: str | None = None
    statuses: frozenset[str] | None = None
    flags: frozenset[str] | None = None
    subject: str | None = None
    search: str | None = None


class EmailStore:
    """Every email the sandbox created, in creation order. Not thread-safe: one event loop owns it."""

    def __init__(self) -> None:
        self.emails: list[StoredEmail] = []
        self._msg_start: list[int] = []  # first email position of each message
        # lower-cased recipient → position of its only email, or the list of positions. Doubles as
        # the "accepted by recipient" counter and as the index behind the mail_rcpt filter.
        self._by_rcpt: dict[str, int | list[int]] = {}
        self._id_prefix = _uuid_prefix()
        self._msg_prefix = _uuid_prefix()
        self._last_created_at = -math.inf

    def __len__(self) -> int:
        return len(self.emails)

    # -- identity -------------------------------------------------------------------------------

    def email_id(self, position: int) -> str:
        return f"{self._id_prefix}{position:012x}"

    def message_id(self, seq: int) -> str:
        return f"{self._msg_prefix}{seq:012x}"

    def position_of(self, email_id: str) -> int | None:
        """The position of ``email_id``, or None when no such email exists."""
        prefix = self._id_prefix
        if len(email_id) != 36 or not email_id.lower().startswith(prefix):
            return None
        try:
            position = int(email_id[24:], 16)
        except ValueError:
            return None
        return position if position < len(self.emails) else None

    def _message_seq(self, message_id: str) -> int | None:
        if len(message_id) != 36 or not message_id.lower().startswith(self._msg_prefix):
            return None
        try:
            seq = int(message_id[24:], 16)
        except ValueError:
            return None
        return seq if seq < len(self._msg_start) else None

    # -- writes ---------------------------------------------------------------------------------

    def create(
        self,
        *,
        project_id: str,
        mail_from: str,
        subject: str,
        send_before: float | None,
        timing: Timing,
        recipients: Sequence[tuple[str, str]],
        now: float,
    ) -> range:
        """Create one email per ``(address, rcpt_type)``; returns their positions."""
        # A clock that steps back (NTP, a test) must not break the sorted order bisect relies on.
        created_at = now if now >= self._last_created_at else self._last_created_at
        self._last_created_at = created_at
        emails = self.emails
        start = len(emails)
        message = Message(
            len(self._msg_start),
            sys.intern(project_id),
            sys.intern(mail_from),
            sys.intern(subject),
            created_at,
            send_before,
            timing,
        )
        self._msg_start.append(start)
        by_rcpt = self._by_rcpt
        position = start
        for address, rcpt_type in recipients:
            emails.append(StoredEmail(message, address, rcpt_type, outcome_for(address)))
            key = address.lower()
            if key == address:
                key = address  # share the string instead of keeping a lower-cased copy
            seen = by_rcpt.get(key)
            if seen is None:
                by_rcpt[key] = position
            elif isinstance(seen, int):
                by_rcpt[key] = [seen, position]
            else:
                seen.append(position)
            position += 1
        return range(start, position)

    def cancel(self, position: int, now: float) -> bool:
        """Cancel the email if it is still ``new``; False when it is past that."""
        email = self.emails[position]
        if status_at(email, now) != "new":
            return False
        email.canceled_at = max(now, email.message.created_at)
        return True

    # -- reads ----------------------------------------------------------------------------------

    def accepted_by_recipient(self) -> dict[str, int]:
        return {k: (1 if isinstance(v, int) else len(v)) for k, v in self._by_rcpt.items()}

    def render(self, position: int, now: float, *, as_created: bool = False) -> dict[str, Any]:
        """The Email JSON object of the email at ``position``, as of ``now``.

        ``as_created`` renders the state TEM answers a send with: ``new``, whatever comes next.
        """
        email = self.emails[position]
        m = email.message
        created = format_timestamp(m.created_at)
        if as_created:
            status, updated, details, try_count, tries, flags = "new", created, None, 0, [], []
        else:
            v = view_at(email, now)
            status = v.status
            updated = format_timestamp(v.updated_at)
            details = v.status_details
            try_count = v.try_count
            tries = [
                {"rank": rank, "tried_at": format_timestamp(at), "code": code, "message": text}
                for rank, at, code, text in v.last_tries
            ]
            flags = list(v.flags)
        return {
            "id": f"{self._id_prefix}{position:012x}",
            "message_id": f"{self._msg_prefix}{m.seq:012x}",
            "project_id": m.project_id,
            "mail_from": m.mail_from,
            "rcpt_to": email.mail_rcpt,
            "mail_rcpt": email.mail_rcpt,
            "rcpt_type": email.rcpt_type,
            "subject": m.subject,
            "created_at": created,
            "updated_at": updated,
            "status": status,
            "status_details": details,
            "try_count": try_count,
            "last_tries": tries,
            "flags": flags,
        }

    def _candidates(self, flt: EmailFilter) -> Iterable[int]:
        """Positions that may match, in creation order, narrowed by the cheapest index available."""
        emails = self.emails
        lo, hi = 0, len(emails)
        if flt.since is not None:
            lo = bisect_left(emails, flt.since, key=_created_at)
        if flt.until is not None:
            hi = bisect_right(emails, flt.until, key=_created_at)
        if flt.mail_rcpt is not None:
            seen = self._by_rcpt.get(flt.mail_rcpt)
            if seen is None:
                return ()
            positions = [seen] if isinstance(seen, int) else seen
            return [p for p in positions if lo <= p < hi]
        if flt.message_id is not None:
            seq = self._message_seq(flt.message_id)
            if seq is None:
                return ()
            start = self._msg_start[seq]
            end = self._msg_start[seq + 1] if seq + 1 < len(self._msg_start) else len(emails)
            return range(max(lo, start), min(hi, end))
        return range(lo, hi)

    def select(self, flt: EmailFilter, now: float) -> list[int]:
        """Positions of the emails matching ``flt`` at ``now``, in creation order."""
        emails = self.emails
        checks: list[Callable[[int], bool]] = []
        if flt.project_id is not None:
            project_id = flt.project_id
            checks.append(lambda p: emails[p].message.project_id == project_id)
        if flt.mail_from is not None:
            mail_from = flt.mail_from
            checks.append(lambda p: emails[p].message.mail_from.lower() == mail_from)
        if flt.subject is not None:
            subject = flt.subject
            checks.append(lambda p: emails[p].message.subject == subject)
        if flt.search is not None:
            needle = flt.search
            checks.append(lambda p: self._search_matches(p, needle))
        if flt.statuses is not None:
            wanted = flt.statuses
            checks.append(lambda p: status_at(emails[p], now) in wanted)
        if flt.flags is not None:
            wanted_flags = flt.flags
            checks.append(lambda p: not wanted_flags.isdisjoint(view_at(emails[p], now).flags))
        candidates = self._candidates(flt)
        if not checks:
            return list(candidates)
        if len(checks) == 1:
            only = checks[0]
            return [p for p in candidates if only(p)]
        return [p for p in candidates if all(check(p) for check in checks)]

    def _search_matches(self, position: int, needle: str) -> bool:
        email = self.emails[position]
        m = email.message
        return (
            needle in email.mail_rcpt.lower()
            or needle in m.subject.lower()
            or needle in m.mail_from.lower()
            or needle in self.email_id(position)
            or needle in self.message_id(m.seq)
        )

    def order(self, positions: list[int], order_by: str, now: float) -> list[int]:
        """Sort ``positions`` (given in creation order) by one of the 12 ``order_by`` values."""
        if order_by not in ORDER_BY_VALUES:
            raise ValueError(order_by)
        field, _, direction = order_by.rpartition("_")
        descending = direction == "desc"
        if field == "created_at":
            return positions[::-1] if descending else positions
        emails = self.emails
        key: Callable[[int], Any]
        if field == "updated_at":
            key = lambda p: view_at(emails[p], now).updated_at  # noqa: E731
        elif field == "status":
            key = lambda p: status_at(emails[p], now)  # noqa: E731
        elif field == "mail_from":
            key = lambda p: emails[p].message.mail_from.lower()  # noqa: E731
        elif field == "mail_rcpt":
            key = lambda p: emails[p].mail_rcpt.lower()  # noqa: E731
        else:
            key = lambda p: emails[p].message.subject  # noqa: E731
        # Stable sort: ties keep creation order either way.
        return sorted(positions, key=key, reverse=descending)

    def statistics(self, flt: EmailFilter, now: float) -> dict[str, int]:
        """Counts by status of the emails matching ``flt``."""
        counts = {"new": 0, "sending": 0, "sent": 0, "failed": 0, "canceled": 0}
        emails = self.emails
        positions = self.select(flt, now)
        for p in positions:
            counts[status_at(emails[p], now)] += 1
        return {
            "total_count": len(positions),
            "new_count": counts["new"],
            "sending_count": counts["sending"],
            "sent_count": counts["sent"],
            "failed_count": counts["failed"],
            "canceled_count": counts["canceled"],
        }


def _created_at(email: StoredEmail) -> float:
    return email.message.created_at
