"""The outbox: one row per admitted recipient, moved through an explicit state machine.

State machine (transitions only go forward; anything else raises ``StoreError``)::

    (admit) ──► pending ──► sending ──► submitted ──► final
        │          ▲           │
        │          └───────────┘  reconciled "not sent": back to pending for a new attempt
        ├──► rejected   (bad input, or a permanent API 4xx)        ─┐
        └──► skipped    (duplicate recipient, canceled before send) ─┴─ terminal, like final

``sending`` is written and made durable *before* the POST goes out, so a crash between the POST and
recording its answer leaves a ``sending`` row, which must be reconciled against TEM (``GET /emails``
by recipient, subject and the attempt's time window) before it may be sent again. That is what
keeps "nobody gets the email twice" true without an idempotency key on the API.

Every write that a caller awaits is durable when the await returns (implementations group
concurrent writes into one commit so that durability stays cheap).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "AdmitResult",
    "CampaignRecord",
    "CampaignState",
    "FinalUpdate",
    "NewRecipient",
    "RecipientRow",
    "RowState",
    "Store",
]


class RowState(StrEnum):
    """Where one recipient stands. ``final``, ``rejected`` and ``skipped`` are terminal."""

    PENDING = "pending"
    SENDING = "sending"
    SUBMITTED = "submitted"
    FINAL = "final"
    REJECTED = "rejected"
    SKIPPED = "skipped"

    @property
    def is_terminal(self) -> bool:
        return self in (RowState.FINAL, RowState.REJECTED, RowState.SKIPPED)


# Allowed transitions. pending→skipped covers a campaign canceled before the row was sent.
TRANSITIONS: dict[RowState, frozenset[RowState]] = {
    RowState.PENDING: frozenset({RowState.SENDING, RowState.REJECTED, RowState.SKIPPED}),
    RowState.SENDING: frozenset({RowState.SUBMITTED, RowState.PENDING, RowState.REJECTED, RowState.FINAL}),
    RowState.SUBMITTED: frozenset({RowState.FINAL}),
    RowState.FINAL: frozenset(),
    RowState.REJECTED: frozenset(),
    RowState.SKIPPED: frozenset(),
}


class CampaignState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    CANCELED = "canceled"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class CampaignRecord:
    """A campaign as the store knows it."""

    id: str
    created_at: datetime
    state: CampaignState
    spec: dict[str, Any]
    """Free-form JSON-able description (the campaign file path, its fingerprint, settings…)."""
    admitted_all: bool = False
    """True once the whole recipient source was admitted (resume need not re-read it)."""


@dataclass(frozen=True, slots=True)
class NewRecipient:
    """A recipient to admit. ``row`` is the input line number, unique within a campaign.

    ``key`` is the dedupe key (normalised address); ``None`` for a row rejected at admission.
    ``state`` is ``pending`` for a valid row, ``rejected``/``skipped`` with ``reason`` otherwise.
    ``payload`` is what dispatch needs to render the email (template variables, name…).
    """

    row: int
    email: str
    name: str = ""
    key: str | None = None
    state: RowState = RowState.PENDING
    reason: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AdmitResult:
    """What admission did with one row: its id and state (a duplicate key becomes ``skipped``)."""

    id: int
    row: int
    state: RowState
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RecipientRow:
    """One outbox row with everything the outcome line needs."""

    id: int
    campaign_id: str
    row: int
    email: str
    name: str
    key: str | None
    state: RowState
    payload: dict[str, Any]
    reason: str = ""
    attempts: int = 0
    attempt_started_at: datetime | None = None
    attempt_ended_at: datetime | None = None
    correlation: str = ""
    email_id: str = ""
    message_id: str = ""
    submitted_at: datetime | None = None
    status: str = ""
    """TEM status once known (sent/failed/canceled, or ``unknown`` when we gave up)."""
    flags: tuple[str, ...] = ()
    status_details: str = ""
    smtp_code: int | None = None
    smtp_message: str = ""
    try_count: int = 0
    final_at: datetime | None = None
    lease_owner: str = ""
    lease_token: int = 0


@dataclass(frozen=True, slots=True)
class FinalUpdate:
    """The final facts about one email, as learned from TEM (or from giving up)."""

    id: int
    status: str
    flags: tuple[str, ...] = ()
    status_details: str = ""
    smtp_code: int | None = None
    smtp_message: str = ""
    try_count: int = 0
    final_at: datetime | None = None
    reason: str = ""


@runtime_checkable
class Store(Protocol):
    """The outbox state machine. Implementations: memory (tests, ``--dry-run``), SQLite, PostgreSQL."""

    async def open(self) -> None:
        """Create or migrate the schema; idempotent."""

    async def close(self) -> None:
        """Flush pending writes and release resources."""

    # -- campaigns ---------------------------------------------------------------------------
    async def create_campaign(self, campaign_id: str, spec: dict[str, Any]) -> CampaignRecord:
        """Create the campaign, or return the existing one unchanged (resume)."""

    async def get_campaign(self, campaign_id: str) -> CampaignRecord | None: ...

    async def list_campaigns(self) -> list[CampaignRecord]: ...

    async def set_campaign_state(self, campaign_id: str, state: CampaignState) -> None: ...

    async def mark_admitted_all(self, campaign_id: str) -> None:
        """Record that every row of the source is admitted."""

    # -- admission ---------------------------------------------------------------------------
    async def admit(self, campaign_id: str, rows: Sequence[NewRecipient]) -> list[AdmitResult]:
        """Insert rows durably, in one commit. Idempotent on ``row``: a row already admitted is
        returned as it stands. A ``pending`` row whose ``key`` is already taken in the campaign
        becomes ``skipped`` with reason ``duplicate of row N``: first wins."""

    async def max_admitted_row(self, campaign_id: str) -> int:
        """Highest admitted ``row`` (0 if none): where a resumed reader may skip to."""

    # -- dispatch ----------------------------------------------------------------------------
    async def mark_sending(self, row_id: int, *, started_at: datetime, correlation: str) -> RecipientRow:
        """pending → sending, attempts += 1, durable before returning: call before the POST."""

    async def mark_submitted(
        self, row_id: int, *, email_id: str, message_id: str, submitted_at: datetime
    ) -> None:
        """sending → submitted with TEM's email id."""

    async def mark_ambiguous(self, row_id: int, *, ended_at: datetime, reason: str) -> None:
        """Stay ``sending`` but record when the ambiguous attempt ended (reconcile later)."""

    async def mark_retry(self, row_id: int, *, reason: str) -> None:
        """sending → pending: reconciliation proved the email was not created."""

    async def mark_rejected(self, row_id: int, *, reason: str) -> None:
        """pending/sending → rejected (bad input found late, or a permanent API 4xx)."""

    async def mark_skipped(self, row_id: int, *, reason: str) -> None:
        """pending → skipped (for example the campaign was canceled)."""

    async def mark_final(self, updates: Sequence[FinalUpdate]) -> None:
        """submitted (or sending, for an adopted email) → final, many rows in one commit."""

    # -- reads -------------------------------------------------------------------------------
    async def get_row(self, row_id: int) -> RecipientRow | None: ...

    async def rows_by_email_id(self, campaign_id: str, email_ids: Sequence[str]) -> dict[str, RecipientRow]:
        """The rows holding these TEM email ids (ids not found are absent from the result)."""

    def iter_rows(
        self,
        campaign_id: str,
        *,
        states: Sequence[RowState] = (),
        after_id: int = 0,
        batch_size: int = 1000,
    ) -> AsyncIterator[RecipientRow]:
        """Rows of a campaign in ``id`` order, optionally only in ``states``; reads in batches."""

    def iter_outcomes(self, campaign_id: str, *, batch_size: int = 1000) -> AsyncIterator[RecipientRow]:
        """Every row of the campaign in input ``row`` order (for the outcomes file)."""

    async def counts(self, campaign_id: str) -> dict[str, int]:
        """Number of rows by state, and by final status as ``status:<s>``."""
