"""The suppression list: addresses of a TEM project that no campaign or job may send to.

An entry is (project, address, reason): one address may be suppressed for several reasons at once
(a hard bounce, then an unsubscribe), each with its own source, start and optional end. Addresses
are normalised by :func:`normalize_suppressed`: trimmed and lower-cased as a whole, local part
included, like the campaigns' dedupe key. RFC 5321 lets a server tell ``Ann@x`` from ``ann@x``,
but practically none does, and sending to a case variant of a hard bounce is another hard bounce.

Stores implement :class:`SuppressionStore` (memory, SQLite, PostgreSQL); :func:`iter_suppressed`
walks a project's list page by page. docs/deliverability.md says what is suppressed and why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, Protocol, runtime_checkable

from bulksend.errors import StoreError

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "NEVER_IGNORED",
    "SuppressionEntry",
    "SuppressionReason",
    "SuppressionSource",
    "SuppressionStore",
    "iter_suppressed",
    "merged",
    "normalize_suppressed",
    "strongest",
]

MAX_ADDRESS_LENGTH: Final = 254
"""The longest address a suppression entry may hold (RFC 5321's path limit, less the brackets)."""


class SuppressionReason(StrEnum):
    """Why an address is suppressed, strongest first (see :func:`strongest`)."""

    UNSUBSCRIBE = "unsubscribe"
    SPAM = "spam"
    HARD_BOUNCE = "hard_bounce"
    MAILBOX_NOT_FOUND = "mailbox_not_found"
    BLOCKLISTED = "blocklisted"
    MANUAL = "manual"
    MAILBOX_FULL = "mailbox_full"


class SuppressionSource(StrEnum):
    """Where an entry came from."""

    AUTO = "auto"
    """Seen by the tracker: a hard bounce or a spam complaint in a campaign or a job."""
    UNSUBSCRIBE = "unsubscribe"
    """A one-click unsubscribe (RFC 8058)."""
    MANUAL = "manual"
    """``bulksend suppress add`` or ``import``."""
    TEM = "tem"
    """TEM's own blocklists, synced."""


NEVER_IGNORED: Final = frozenset({SuppressionReason.UNSUBSCRIBE})
"""Reasons no campaign may opt out of: a person asked not to get email."""

_RANK: Final = {reason: rank for rank, reason in enumerate(SuppressionReason)}


@dataclass(frozen=True, slots=True)
class SuppressionEntry:
    """One address suppressed in a project for one reason, from ``since`` until ``until`` (None: for good).

    ``origin`` says where it was seen, for people (a campaign id, ``job stream orders``, a file).
    """

    address: str
    reason: SuppressionReason
    source: SuppressionSource
    since: datetime
    until: datetime | None = None
    origin: str = ""

    def __post_init__(self) -> None:
        # Checked and normalised once here, so every store keeps the same values.
        object.__setattr__(self, "address", normalize_suppressed(self.address))
        object.__setattr__(self, "reason", SuppressionReason(self.reason))
        object.__setattr__(self, "source", SuppressionSource(self.source))
        object.__setattr__(self, "since", _utc(self.since))
        if self.until is not None:
            object.__setattr__(self, "until", _utc(self.until))

    @property
    def key(self) -> tuple[str, str]:
        """(address, reason): the entry's identity in its project, and its place in listings."""
        return self.address, self.reason.value

    def active(self, now: datetime) -> bool:
        """True while the entry applies: it has no end, or ends after ``now``."""
        return self.until is None or self.until > now

    def describe(self) -> str:
        """The entry as a skipped outcome's reason shows it."""
        text = f"suppressed: {self.reason.value} since {self.since.date().isoformat()}"
        if self.until is not None:
            text += f" until {self.until.date().isoformat()}"
        return f"{text} ({self.origin})" if self.origin else text


def normalize_suppressed(address: str) -> str:
    """``address`` as suppression entries hold it: trimmed and lower-cased; ``StoreError`` if it
    cannot be an address (no ``@``, too long, or a control character)."""
    normal = address.strip().lower()
    if "@" not in normal or len(normal) > MAX_ADDRESS_LENGTH or not normal.isprintable() or " " in normal:
        raise StoreError(f"not an address to suppress: {address[:MAX_ADDRESS_LENGTH]!r}")
    return normal


def strongest(entries: Collection[SuppressionEntry]) -> SuppressionEntry:
    """The entry that speaks for an address suppressed for several reasons (the first reason of
    :class:`SuppressionReason`'s order)."""
    return min(entries, key=lambda e: _RANK[e.reason])


def merged(old: SuppressionEntry | None, new: SuppressionEntry, now: datetime) -> SuppressionEntry:
    """What the list holds once ``new`` is added where ``old`` (same key) was: see
    :meth:`SuppressionStore.suppress`."""
    if old is None or not old.active(now):
        return new
    until = None if old.until is None or new.until is None else max(old.until, new.until)
    return SuppressionEntry(new.address, new.reason, new.source, min(old.since, new.since), until, new.origin)


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


@runtime_checkable
class SuppressionStore(Protocol):
    """The suppression list of a store, per TEM project (``project_id``). Every write is durable
    when its await returns."""

    async def suppress(self, project_id: str, entries: Sequence[SuppressionEntry]) -> None:
        """Add entries, in one commit. An entry whose (address, reason) is already listed merges
        with it: the earlier ``since`` and the later ``until`` (None beats any date) are kept, the
        source and origin of the newer entry; an expired entry is replaced outright."""

    async def unsuppress(
        self, project_id: str, addresses: Sequence[str], source: SuppressionSource | None = None
    ) -> int:
        """Remove the entries of these addresses (only those from ``source`` if given); how many."""

    async def suppressed(
        self, project_id: str, addresses: Sequence[str], *, ignore: Collection[SuppressionReason] = ()
    ) -> dict[str, SuppressionEntry]:
        """The active entries of these addresses (``until`` None or in the future), one per
        suppressed address (:func:`strongest`), keyed by the normalised address. Entries for a
        reason in ``ignore`` do not count. One indexed lookup: call it once per batch."""

    async def list_suppressed(
        self,
        project_id: str,
        after: tuple[str, str] | None = None,
        limit: int = 1000,
        *,
        active_only: bool = False,
    ) -> list[SuppressionEntry]:
        """Up to ``limit`` entries of the project in (address, reason) order, after the
        :attr:`SuppressionEntry.key` ``after`` (None: from the start); expired ones too unless
        ``active_only``."""


async def iter_suppressed(
    store: SuppressionStore, project_id: str, *, active_only: bool = False, batch_size: int = 1000
) -> AsyncIterator[SuppressionEntry]:
    """Every entry of the project, in (address, reason) order, read ``batch_size`` at a time."""
    after: tuple[str, str] | None = None
    while True:
        page = await store.list_suppressed(project_id, after, batch_size, active_only=active_only)
        for entry in page:
            yield entry
        if len(page) < batch_size:
            return
        after = page[-1].key
