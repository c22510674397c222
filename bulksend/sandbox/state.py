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

When an email turns final (and so its final ``updated_at``) is known when it is created
(:func:`final_at`), except for a cancel, which is an event. The store keeps a *final index* of
emails by that moment, and for the latest list filters asking for final statuses by
``updated_at`` (a tracker's poll), a view of the matching final emails that each request brings up
to date with what turned final since the previous one. Such a list costs the page it returns
instead of a filter and sort over every email (:meth:`EmailStore.list_page`).
"""

from __future__ import annotations

import math
import re
import secrets
import sys
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .request import CreateEmail

__all__ = [
    "ORDER_BY_VALUES",
    "EmailFilter",
    "EmailStore",
    "EmailView",
    "Message",
    "Outcome",
    "StoredEmail",
    "Timing",
    "final_at",
    "format_timestamp",
    "lifecycle_events",
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


# Slots: one is built per send. eq=False: two sends with equal fields are still two messages.
@dataclass(slots=True, eq=False)
class Message:
    """What the recipients of one send share."""

    seq: int
    project_id: str
    mail_from: str
    subject: str
    created_at: float
    send_before: float | None
    timing: Timing


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
    # The same additions, in the same order, as view_at's try times: the moment the status turns
    # final is then exactly the updated_at view_at shows from then on (see final_at).
    final_at = leave_new + t.final_after_s
    if outcome == Outcome.SOFTBOUNCE or outcome == Outcome.GREYLIST:
        final_at = final_at + t.final_after_s + t.soft_bounce_retry_s
    if now < final_at:
        return "sending"
    return "failed" if outcome in _FINAL_FAILURE else "sent"


def final_at(email: StoredEmail) -> float | None:
    """When ``email`` turns final if it is not canceled; None when it never does (``stuck…``).

    It is also the ``updated_at`` the email shows from that moment on: :func:`status_at` is final
    exactly when ``now >= final_at(email)``, and :func:`view_at` then reports this very float.
    """
    m = email.message
    t = m.timing
    outcome = email.outcome
    leave_new = m.created_at + (t.hold_s if outcome == Outcome.HOLD else t.sending_after_s)
    if (m.send_before is not None and m.send_before < leave_new) or outcome == Outcome.BLOCKED:
        return leave_new
    if outcome == Outcome.STUCK:
        return None
    first_try_at = leave_new + t.final_after_s
    if outcome == Outcome.SOFTBOUNCE or outcome == Outcome.GREYLIST:
        return first_try_at + t.final_after_s + t.soft_bounce_retry_s
    return first_try_at


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


# The webhook event of each failure outcome at its delivery try.
_FAILURE_EVENT: dict[int, str] = {
    Outcome.BOUNCE: "email_mailbox_not_found",
    Outcome.SPAM: "email_spam",
    Outcome.FULL: "email_dropped",
}

LifecycleEvent = tuple[float, str, int, int, str]
"""(at, webhook event type, try count, SMTP code or 0, SMTP message)."""


def lifecycle_events(email: StoredEmail) -> list[LifecycleEvent]:
    """The webhook events TEM would emit for ``email`` (unless it is canceled), in time order.

    ``email_queued`` at creation; then ``email_blocklisted`` when it leaves ``new`` for a
    ``blocked…`` recipient, or the event of its delivery try (``email_delivered``, a failure, or
    ``email_deferred`` for a soft bounce, followed by ``email_delivered`` at the retry). A
    ``stuck…`` email is deferred once and heard of no more; an email whose ``send_before`` passed
    fails without an event (TEM has no event type for it): only polling learns that.
    """
    m = email.message
    t = m.timing
    events: list[LifecycleEvent] = [(m.created_at, "email_queued", 0, 0, "")]
    leave_new = _leave_new_at(email)
    if m.send_before is not None and m.send_before < leave_new:
        return events
    outcome = email.outcome
    if outcome == Outcome.BLOCKED:
        return [*events, (leave_new, "email_blocklisted", 0, 0, "")]
    first_try_at = leave_new + t.final_after_s
    if outcome in (Outcome.SOFTBOUNCE, Outcome.GREYLIST, Outcome.STUCK):
        code, text = _TRY_GREY if outcome == Outcome.GREYLIST else _TRY_SOFT
        events.append((first_try_at, "email_deferred", 1, code, text))
        if outcome != Outcome.STUCK:
            second_try_at = first_try_at + t.final_after_s + t.soft_bounce_retry_s
            events.append((second_try_at, "email_delivered", 2, *_TRY_OK))
        return events
    failure = _FINAL_FAILURE.get(outcome)
    if failure is not None:
        (code, text), _ = failure
        return [*events, (first_try_at, _FAILURE_EVENT[outcome], 1, code, text)]
    return [*events, (first_try_at, "email_delivered", 1, *_TRY_OK)]


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


_HEX12 = re.compile(r"[0-9a-f]{12}")


def _sequence(uuid: str, prefix: str) -> int | None:
    """The number in the last 12 hex digits of one of our UUIDs, or None if ``uuid`` is not one.

    Exactly 12 hex digits: int(..., 16) alone would also read "-00000000001" (the last email),
    " 0000000001" or "0000_000001" as numbers.
    """
    text = uuid.lower()
    if len(text) != 36 or not text.startswith(prefix) or _HEX12.fullmatch(text, 24) is None:
        return None
    return int(text[24:], 16)


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
        # The final index: every email that will turn final unless canceled, sorted by
        # (final_at, position). final_at is known at creation, and mostly grows with it, so
        # entries are appended or inserted near the end.
        self._final_keys: array[float] = array("d")
        self._final_positions: array[int] = array("q")
        # False once a Timing breaks what the index relies on (a negative or NaN duration):
        # every list then takes the generic path.
        self._indexable = True
        self._checked_timing: Timing | None = None
        # Views of the index for the latest list filters (most recently used last), and the
        # largest `upto` among them: a new entry at or below it must be shown to the views.
        self._views: OrderedDict[EmailFilter, _FinalView] = OrderedDict()
        self._views_upto = -math.inf
        self._canceled: list[int] = []  # positions, in the order of their cancels

    def __len__(self) -> int:
        return len(self.emails)

    # -- identity -------------------------------------------------------------------------------

    def email_id(self, position: int) -> str:
        return f"{self._id_prefix}{position:012x}"

    def message_id(self, seq: int) -> str:
        return f"{self._msg_prefix}{seq:012x}"

    def position_of(self, email_id: str) -> int | None:
        """The position of ``email_id``, or None when no such email exists."""
        position = _sequence(email_id, self._id_prefix)
        return position if position is not None and position < len(self.emails) else None

    def _message_seq(self, message_id: str) -> int | None:
        seq = _sequence(message_id, self._msg_prefix)
        return seq if seq is not None and seq < len(self._msg_start) else None

    # -- writes ---------------------------------------------------------------------------------

    def create(
        self, send: CreateEmail, *, timing: Timing, now: float, blocked: frozenset[str] = frozenset()
    ) -> range:
        """Create one email per recipient of ``send``; returns their positions.

        A recipient in ``blocked`` (lower-cased addresses) fails as blocklisted, whatever its name.
        """
        # A clock that steps back (NTP, a test) must not break the sorted order bisect relies on.
        created_at = now if now >= self._last_created_at else self._last_created_at
        self._last_created_at = created_at
        emails = self.emails
        start = len(emails)
        send_before = send.send_before
        message = Message(
            len(self._msg_start),
            sys.intern(send.project_id),
            sys.intern(send.mail_from),
            sys.intern(send.subject),
            created_at,
            send_before,
            timing,
        )
        self._msg_start.append(start)
        by_rcpt = self._by_rcpt
        if timing is not self._checked_timing:
            self._checked_timing = timing
            if not _timing_indexable(timing):
                self._drop_index()
        # final_at of an ordinary recipient (most of them), computed as final_at computes it.
        leave_new = created_at + timing.sending_after_s
        if send_before is None or send_before >= leave_new:
            ordinary_final_at = leave_new + timing.final_after_s
        else:
            ordinary_final_at = leave_new
        position = start
        for address, rcpt_type in send.recipients:
            outcome = outcome_for(address)
            if blocked and address.lower() in blocked:
                outcome = Outcome.BLOCKED
            email = StoredEmail(message, address, rcpt_type, outcome)
            emails.append(email)
            if self._indexable:
                final = ordinary_final_at if outcome == Outcome.OK else final_at(email)
                final_keys = self._final_keys
                if (
                    final is not None
                    and self._views_upto < final < math.inf
                    and (not final_keys or final >= final_keys[-1])
                ):
                    # The usual case: the latest entry, and no view has reached it yet.
                    final_keys.append(final)
                    self._final_positions.append(position)
                else:
                    self._index(final, position)
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
        canceled_at = max(now, email.message.created_at)
        email.canceled_at = canceled_at
        self._canceled.append(position)
        if self._views:
            key = final_at(email)
            for view in self._views.values():
                # Only a clock that stepped back can have made the email final in a view already.
                if key is not None and key <= view.upto:
                    view.remove(key, position)
                if view.match(position, canceled_at):
                    view.add(canceled_at, position)
                    view.canceled_max = max(view.canceled_max, canceled_at)
        return True

    # -- the final index --------------------------------------------------------------------------

    def _index(self, key: float | None, position: int) -> None:
        """Add a new email, turning final at ``key``, to the final index and to the views that
        are past ``key`` already."""
        if key is None or key == math.inf:
            return  # never final
        if key != key:  # NaN: no order to keep
            self._drop_index()
            return
        keys = self._final_keys
        if not keys or key >= keys[-1]:  # the position is the largest yet
            keys.append(key)
            self._final_positions.append(position)
        else:
            i = bisect_right(keys, key)
            keys.insert(i, key)
            self._final_positions.insert(i, position)
        if key <= self._views_upto:
            for view in self._views.values():
                if key <= view.upto:
                    view.done += 1
                    if view.match(position, key):
                        view.add(key, position)

    def _drop_index(self) -> None:
        self._indexable = False
        self._final_keys = array("d")
        self._final_positions = array("q")
        self._views.clear()
        self._views_upto = -math.inf

    def _advance(self, view: _FinalView, now: float) -> None:
        """Examine the index entries the view has not seen up to ``now``."""
        if now <= view.upto:
            return
        keys = self._final_keys
        positions = self._final_positions
        done = view.done
        end = bisect_right(keys, now, done)
        emails = self.emails
        match = view.match
        view_keys = view.keys
        view_positions = view.positions
        for i in range(done, end):
            p = positions[i]
            if emails[p].canceled_at is not None:
                continue  # counted by its cancel, if at all
            key = keys[i]
            if match(p, key):
                if not view_keys or key > view_keys[-1] or (key == view_keys[-1] and p > view_positions[-1]):
                    view_keys.append(key)
                    view_positions.append(p)
                else:  # behind a cancel that happened later than `now` (a clock that stepped back)
                    view.add(key, p)
        view.done = end
        view.upto = now
        if now > self._views_upto:
            self._views_upto = now

    def _final_page(
        self, flt: EmailFilter, descending: bool, now: float, offset: int, limit: int
    ) -> tuple[int, list[int]] | None:
        """A page of the final emails matching ``flt`` by updated_at, from the index; None when
        the generic path must answer (see :meth:`list_page`)."""
        views = self._views
        view = views.get(flt)
        if view is None:
            view = _FinalView(self._matcher(flt))
            if flt.since is not None:
                # An email turns final no earlier than it is created: what turns final before
                # `since` cannot match, so the view starts past it, as if it had examined it.
                view.done = bisect_left(self._final_keys, flt.since)
                view.upto = math.nextafter(flt.since, -math.inf)
                self._views_upto = max(self._views_upto, view.upto)
            for p in self._canceled:
                canceled_at = self.emails[p].canceled_at
                assert canceled_at is not None
                if view.match(p, canceled_at):
                    view.add(canceled_at, p)
                    view.canceled_max = max(view.canceled_max, canceled_at)
            views[flt] = view
            if len(views) > _MAX_VIEWS:
                views.popitem(last=False)
        else:
            views.move_to_end(flt)
        self._advance(view, now)
        if view.canceled_max > now:
            # A cancel stamped later than `now` (the clock stepped back) is canceled all the same,
            # but sits past the prefix the answer is cut from.
            return None
        keys = view.keys
        total = bisect_right(keys, now)
        if descending:
            return total, _descending_slice(keys, view.positions, total, offset, offset + limit)
        return total, view.positions[offset : min(offset + limit, total)].tolist()

    def _matcher(self, flt: EmailFilter) -> Callable[[int, float], bool]:
        """Whether the email at a position matches ``flt`` at a given instant (every filter but
        ``mail_rcpt`` and ``message_id``, which take the generic path)."""
        emails = self.emails
        search_matches = self._search_matches
        since, until = flt.since, flt.until
        project_id, mail_from, subject, search = flt.project_id, flt.mail_from, flt.subject, flt.search
        statuses, flags = flt.statuses, flt.flags

        def match(p: int, at: float) -> bool:
            email = emails[p]
            m = email.message
            if since is not None and m.created_at < since:
                return False
            if until is not None and m.created_at > until:
                return False
            if project_id is not None and m.project_id != project_id:
                return False
            if mail_from is not None and m.mail_from.lower() != mail_from:
                return False
            if subject is not None and m.subject != subject:
                return False
            if search is not None and not search_matches(p, search):
                return False
            if statuses is not None and status_at(email, at) not in statuses:
                return False
            return flags is None or not flags.isdisjoint(view_at(email, at).flags)

        return match

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

    def list_page(
        self, flt: EmailFilter, order_by: str, now: float, offset: int, limit: int
    ) -> tuple[int, list[int]]:
        """``(total, positions)``: the matches of ``flt`` at ``now`` sorted by ``order_by``, and
        the ``limit`` of them from ``offset`` on.

        The same answer as slicing ``order(select(flt, now), order_by, now)``. Final statuses by
        ``updated_at`` over an open-ended window (what a tracker polls: no ``until``, and no
        ``mail_rcpt`` or ``message_id``, which are indexed already) come from a view of the final
        index, kept up to date from one request to the next, in time proportional to the page
        plus the emails turned final since the previous request. Anything else filters and sorts.
        """
        if order_by not in ORDER_BY_VALUES:
            raise ValueError(order_by)
        statuses = flt.statuses
        if (
            self._indexable
            and statuses is not None
            and statuses <= _FINAL_OR_UNKNOWN
            and order_by.startswith("updated_at_")
            and flt.until is None
            and flt.mail_rcpt is None
            and flt.message_id is None
        ):
            page = self._final_page(flt, order_by == "updated_at_desc", now, offset, limit)
            if page is not None:
                return page
        positions = self.order(self.select(flt, now), order_by, now)
        return len(positions), positions[offset : offset + limit]

    def statistics(self, flt: EmailFilter, now: float) -> dict[str, int]:
        """Counts by status of the emails matching ``flt``."""
        counts = dict.fromkeys(("new", "sending", "sent", "failed", "canceled"), 0)
        emails = self.emails
        positions = self.select(flt, now)
        for p in positions:
            counts[status_at(emails[p], now)] += 1
        return {"total_count": len(positions)} | {f"{status}_count": n for status, n in counts.items()}


def _created_at(email: StoredEmail) -> float:
    return email.message.created_at


_FINAL_OR_UNKNOWN = frozenset({"sent", "failed", "canceled", "unknown"})
_MAX_VIEWS = 8


def _timing_indexable(timing: Timing) -> bool:
    """Whether emails of ``timing`` turn final for good at :func:`final_at` (no negative or NaN
    duration, which would make the status and the shown try times disagree)."""
    return all(
        d >= 0  # False for NaN too
        for d in (timing.sending_after_s, timing.final_after_s, timing.soft_bounce_retry_s, timing.hold_s)
    )


class _FinalView:
    """The final emails matching one filter, sorted by (updated_at, position).

    It holds every email of the final index with ``final_at <= upto`` that matches (examined in
    index order by :meth:`EmailStore._advance`; ``done`` entries so far), plus every canceled email
    that matches, keyed by its cancel time. The matches at ``now`` are then the prefix of keys
    ``<= now`` (unless a cancel is stamped later than ``now``, see ``canceled_max``).
    """

    __slots__ = ("canceled_max", "done", "keys", "match", "positions", "upto")

    def __init__(self, match: Callable[[int, float], bool]) -> None:
        self.match = match
        self.keys: array[float] = array("d")
        self.positions: array[int] = array("q")
        self.done = 0
        self.upto = -math.inf
        self.canceled_max = -math.inf

    def add(self, key: float, position: int) -> None:
        keys = self.keys
        lo = bisect_left(keys, key)
        i = bisect_left(self.positions, position, lo, bisect_right(keys, key, lo))
        keys.insert(i, key)
        self.positions.insert(i, position)

    def remove(self, key: float, position: int) -> None:
        keys = self.keys
        lo = bisect_left(keys, key)
        hi = bisect_right(keys, key, lo)
        i = bisect_left(self.positions, position, lo, hi)
        if i < hi and self.positions[i] == position:
            del keys[i]
            del self.positions[i]


def _descending_slice(keys: array[float], positions: array[int], n: int, start: int, stop: int) -> list[int]:
    """Items ``start:stop`` of the first ``n`` entries (sorted by key, then position) in
    descending key order, equal keys in ascending position: what a stable descending sort gives."""
    stop = min(stop, n)
    if start >= stop:
        return []
    lo, hi = n - stop, n - start  # the ascending range holding them, give or take equal keys
    lo = bisect_left(keys, keys[lo], 0, lo)
    hi = bisect_right(keys, keys[hi - 1], hi, n)
    out: list[int] = []
    end = hi
    while end > lo:
        begin = bisect_left(keys, keys[end - 1], lo, end)
        out.extend(positions[begin:end])
        end = begin
    skip = start - (n - hi)
    return out[skip : skip + stop - start]
