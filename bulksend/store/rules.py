"""The outbox rules every store backend follows, so each refuses the same input with the same words.

Datetime normalisation, JSON encoding, the admission, transition and lease checks, and the
declaration of each per-row dispatch write (:class:`RowWrite`: target state, columns set, states
it may start from). The memory store applies a declaration in Python; the SQL stores build their
statements from it (:mod:`bulksend.store.sql`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from bulksend.errors import StoreError
from bulksend.store.base import TRANSITIONS, FinalUpdate, LeaseLostError, NewRecipient, RowState

__all__ = [
    "ADMIT_STATES",
    "FINALISABLE_STATES",
    "KEY_RELEASING_STATES",
    "ROW_WRITES",
    "TO_AMBIGUOUS",
    "TO_FINAL",
    "TO_PENDING",
    "TO_REJECTED",
    "TO_SENDING",
    "TO_SKIPPED",
    "TO_SUBMITTED",
    "RowWrite",
    "admitted_as",
    "check_finalisable",
    "check_lease_args",
    "check_transition",
    "checked_payloads",
    "duplicate_reason",
    "encode_json",
    "final_problems",
    "holds_lease",
    "lease_lost",
    "row_write_refusal",
    "utc",
    "utc_or_none",
]

# States a row may be admitted in; the others are only reached through transitions.
ADMIT_STATES = frozenset({RowState.PENDING, RowState.REJECTED, RowState.SKIPPED})
# States from which ``mark_final`` may finalise a row (``sending``: an email adopted by reconciliation).
FINALISABLE_STATES = frozenset({RowState.SUBMITTED, RowState.SENDING})
# A row moving into one of these gives its dedupe key back: it will never be sent.
KEY_RELEASING_STATES = frozenset({RowState.REJECTED, RowState.SKIPPED})


def utc(dt: datetime) -> datetime:
    """``dt`` as an aware UTC datetime; a naive datetime is taken to be UTC already."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def utc_or_none(dt: datetime | None) -> datetime | None:
    return None if dt is None else utc(dt)


def encode_json(value: Any, what: str) -> bytes:
    """orjson-encode ``value`` or raise ``StoreError`` naming ``what`` could not be stored."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise StoreError(f"{what} is not JSON-serialisable: {exc}") from None


def duplicate_reason(first_row: int) -> str:
    return f"duplicate of row {first_row}"


def check_transition(row_id: int, current: RowState, target: RowState) -> None:
    """Raise ``StoreError`` unless ``current → target`` is in ``TRANSITIONS``."""
    if target not in TRANSITIONS[current]:
        raise StoreError(f"row {row_id}: illegal transition {current.value} → {target.value}")


def checked_payloads(rows: Sequence[NewRecipient]) -> list[bytes]:
    """The JSON payloads of rows to admit; ``StoreError`` for a row that may not be admitted as
    given or a payload that is not JSON. Called before anything is written."""
    for r in rows:
        if r.state not in ADMIT_STATES:
            raise StoreError(f"row {r.row}: cannot admit a row in state {r.state.value}")
    return [encode_json(r.payload, f"payload of row {r.row}") for r in rows]


def admitted_as(r: NewRecipient, owners: dict[str, int]) -> tuple[RowState, str, str | None]:
    """The state, reason and dedupe key a new row is admitted with: the first pending row with a
    key owns it, a later one is skipped. ``owners`` maps the campaign's owned keys to their input
    rows, and gains the row's key when the row takes it."""
    if r.state is RowState.PENDING and r.key is not None:
        owner = owners.get(r.key)
        if owner is not None:
            return RowState.SKIPPED, duplicate_reason(owner), None
        owners[r.key] = r.row
        return r.state, r.reason, r.key
    return r.state, r.reason, None


def check_lease_args(worker_id: str, seconds: float, what: str = "lease_s") -> timedelta:
    """Refuse an empty ``worker_id`` or a duration that is not finite and > 0; the duration as timedelta."""
    if not worker_id:
        raise StoreError("worker_id must not be empty")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise StoreError(f"{what} must be a number of seconds, got {seconds!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise StoreError(f"{what} must be a finite number of seconds > 0, got {seconds!r}")
    return timedelta(seconds=seconds)


def holds_lease(lease_token: int | None, row_token: int, row_owner: str) -> bool:
    """True if a write fenced with ``lease_token`` may apply to a row with this token and owner."""
    return lease_token is None or (row_token == lease_token and row_owner != "")


def lease_lost(row_id: int, lease_token: int, row_token: int, row_owner: str) -> LeaseLostError:
    """The error for a fenced write refused because the row's lease is not the caller's any more."""
    if row_token != lease_token:
        why = f"the row was claimed again (token {row_token})"
    else:
        why = "the lease was released or ended"
    return LeaseLostError(row_id, f"row {row_id}: lease token {lease_token} is stale: {why}; nothing written")


def final_problems(problems: list[str]) -> StoreError:
    shown = ", ".join(problems[:10])
    more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
    return StoreError(f"mark_final: nothing written; cannot finalise {shown}{more}")


def check_finalisable(found: Iterable[tuple[int, str | None]], allowed: frozenset[str]) -> None:
    """Refuse a ``mark_final`` batch with any row that is missing (state None) or not in ``allowed``.

    ``found``: (row id, its state value) of the rows in question, in the order they are reported.
    """
    problems: list[str] = []
    for row_id, state in found:
        if state is None:
            problems.append(f"row {row_id} (no such row)")
        elif state not in allowed:
            problems.append(f"row {row_id} (state {state})")
    if problems:
        raise final_problems(problems)


# -- the per-row dispatch writes -------------------------------------------------------------
@dataclass(frozen=True, slots=True, eq=False)
class RowWrite:
    """One kind of per-row write, declared once for every backend.

    Compared and hashed by identity: each declaration below is the one and only of its kind.
    """

    name: str
    target: RowState | None
    """The state the row moves to; None: it stays ``sending`` (``mark_ambiguous``)."""
    columns: tuple[str, ...]
    """Columns (``RecipientRow`` fields of the same name) set from the caller's values, in order."""
    cleared: tuple[str, ...] = ()
    """Columns set to NULL."""
    counted: tuple[str, ...] = ()
    """Columns incremented by one."""
    empty_is_null: frozenset[str] = frozenset()
    """Columns among ``columns`` stored as NULL when given the empty string (read back as '')."""
    fenced: bool = True
    """Whether the write takes a ``lease_token``."""
    sources: tuple[RowState, ...] = field(init=False)
    """The states the row may be in for the write to apply (from ``TRANSITIONS``), sorted by value."""

    def __post_init__(self) -> None:
        if self.target is None:
            sources: tuple[RowState, ...] = (RowState.SENDING,)
        else:
            target = self.target
            sources = tuple(
                sorted((s for s, ts in TRANSITIONS.items() if target in ts), key=lambda s: s.value)
            )
        object.__setattr__(self, "sources", sources)

    @property
    def releases_key(self) -> bool:
        """The row gives its dedupe key up: it will never be sent."""
        return self.target in KEY_RELEASING_STATES

    @property
    def ends_lease(self) -> bool:
        """A finished row needs no worker: its lease ends (the token keeps its value)."""
        return self.target is not None and self.target.is_terminal


TO_SENDING: Final = RowWrite(
    "sending",
    RowState.SENDING,
    ("attempt_started_at", "correlation"),
    cleared=("attempt_ended_at",),
    counted=("attempts",),
)
TO_SUBMITTED: Final = RowWrite(
    "submitted",
    RowState.SUBMITTED,
    ("email_id", "message_id", "submitted_at"),
    empty_is_null=frozenset({"email_id"}),
)
TO_AMBIGUOUS: Final = RowWrite("ambiguous", None, ("attempt_ended_at", "reason"))
TO_PENDING: Final = RowWrite("retry", RowState.PENDING, ("reason",))
TO_REJECTED: Final = RowWrite("rejected", RowState.REJECTED, ("reason",))
TO_SKIPPED: Final = RowWrite("skipped", RowState.SKIPPED, ("reason",))
TO_FINAL: Final = RowWrite(
    "final",
    RowState.FINAL,
    ("status", "flags", "status_details", "smtp_code", "smtp_message", "try_count", "final_at", "reason"),
    fenced=False,
)
"""``mark_final``: its values are :func:`final_values` (``flags`` as JSON text)."""
ROW_WRITES: Final = (TO_SENDING, TO_SUBMITTED, TO_AMBIGUOUS, TO_PENDING, TO_REJECTED, TO_SKIPPED, TO_FINAL)


def final_values(u: FinalUpdate, timestamp: Any) -> tuple[Any, ...]:
    """The values of ``TO_FINAL.columns`` for ``u`` in a SQL store; ``timestamp`` stores ``final_at``."""
    return (
        str(u.status),
        orjson.dumps(u.flags).decode() if u.flags else "[]",
        u.status_details,
        u.smtp_code,
        u.smtp_message,
        u.try_count,
        timestamp(u.final_at),
        u.reason,
    )


def row_write_refusal(
    write: RowWrite, row_id: int, lease_token: int | None, found: tuple[str, int, str] | None
) -> BaseException:
    """Why ``write`` of a row changed nothing: unknown row, stale lease, or wrong state.

    ``found``: the row's (state, lease token, lease owner) as it stands, None if there is no such row.
    """
    if found is None:
        return StoreError(f"no outbox row with id {row_id}")
    state, token, owner = RowState(found[0]), found[1], found[2]
    if lease_token is not None and not holds_lease(lease_token, token, owner):
        return lease_lost(row_id, lease_token, token, owner)
    if write.target is None:
        return StoreError(f"row {row_id}: mark_ambiguous needs state sending, not {state.value}")
    try:
        check_transition(row_id, state, write.target)
    except StoreError as exc:
        return exc
    # Legal now, refused when the write ran: another transaction moved the row in between.
    return StoreError(f"row {row_id}: could not move to {write.target.value} (changed concurrently)")
