"""The outbox: one row per admitted recipient, moved through an explicit state machine.

State machine (transitions only go forward; anything else raises ``StoreError``)::

    (admit) ──► pending ──► sending ──► submitted ──► final
        │          ▲           │
        │          └───────────┘  reconciled "not sent": back to pending for a new attempt
        ├──► rejected   (bad input, or a permanent API 4xx)        ─┐
        └──► skipped    (duplicate recipient, canceled before send) ─┴─ terminal, like final

``sending`` is durable *before* the POST goes out, so a crash between the POST and recording its
answer leaves a ``sending`` row, reconciled against TEM before it may be sent again: that keeps
"nobody gets the email twice" true without an idempotency key on the API. Every awaited write is
durable when the await returns (implementations group concurrent writes into one commit).

Many workers on one store (docs/scaling.md, "How work is divided"): :meth:`Store.claim` leases rows
with a **fencing token** (``lease_token``, incremented by every claim). Dispatch writes given the
token apply only while the row still carries it, else raise :class:`LeaseLostError` and write
nothing, so a worker that stalled past its lease cannot record over the new owner. A terminal row
loses its lease; ``mark_final`` is never fenced (idempotent); without ``lease_token`` writes ignore
leases. A ``sending`` row of a dead worker is claimable once its lease expired, and must be
reconciled, never resent blindly. :meth:`Store.acquire_role` gives one worker at a time a
campaign's ``"admit"`` or ``"track"`` role. Leases and roles use the store's clock: the local one
for memory and SQLite, the database server's for PostgreSQL, or an injected one (tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Protocol, runtime_checkable

from bulksend.errors import LeaseLostError
from bulksend.suppression import SuppressionStore

__all__ = [
    "OUTCOME_FACT_FIELDS",
    "OUTCOME_VALUE_FIELDS",
    "AdmitResult",
    "CampaignRecord",
    "CampaignState",
    "FinalUpdate",
    "JournalledStore",
    "LeaseLostError",
    "NewRecipient",
    "OutcomeValuesSource",
    "RecipientRow",
    "RowState",
    "SendRecord",
    "StateLoss",
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


CANCELED_BEFORE_SENDING = "the campaign was canceled before this email was sent"
"""The reason of a row ``skipped`` because its campaign was canceled before it was sent (or even
read): its outcome line says ``canceled``."""


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
    state_reason: str = ""
    """Why the campaign is in its state, when something other than a person put it there (a
    guardrail pausing it, say); empty otherwise."""


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
    """Worker holding the row's lease; empty when nobody does."""
    lease_token: int = 0
    """Fencing token: incremented by every :meth:`Store.claim` of the row, never reset."""
    lease_expires_at: datetime | None = None
    """When the lease runs out (store clock); ``None`` when nobody holds it."""


OUTCOME_FACT_FIELDS: Final = (
    "email_id",
    "message_id",
    "flags",
    "status_details",
    "smtp_code",
    "smtp_message",
    "try_count",
    "submitted_at",
    "final_at",
    "attempts",
)
"""The fields of a row that its outcome line shows as they are, in the order the line has them."""

OUTCOME_VALUE_FIELDS: Final = ("row", "email", "name", "state", "status", "reason", *OUTCOME_FACT_FIELDS)
"""The values :meth:`OutcomeValuesSource.iter_outcome_values` gives per row, in this order."""


@runtime_checkable
class OutcomeValuesSource(Protocol):
    """A store that can hand out just what outcome lines show (an optional, cheaper path).

    Writing the outcomes file reads every row of a campaign; building a full
    :class:`RecipientRow` (payload, leases, every timestamp parsed) for each, only to format
    a few of its fields back into text, was a sizeable share of a campaign's CPU.
    """

    def iter_outcome_values(
        self, campaign_id: str, *, batch_size: int = 1000
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        """Pages of tuples in ``OUTCOME_VALUE_FIELDS`` order, every row in input ``row`` order.

        ``state`` is the :class:`RowState` value, ``email_id`` is ``None`` when there is none,
        ``flags`` a list, and the two timestamps RFC 3339 UTC text ending in ``Z`` (the
        fraction left out when it is zero, as ``datetime.isoformat`` does) or ``None``.
        """
        ...


@dataclass(frozen=True, slots=True)
class SendRecord:
    """What a store's send journal says of one campaign's sends (see :class:`JournalledStore`)."""

    campaign_id: str
    started: int
    """Sends started, as the journal counts them."""
    first_at: datetime
    last_at: datetime


@dataclass(frozen=True, slots=True)
class StateLoss:
    """The store's state of a campaign is older than what was already sent: resending is unsafe."""

    campaign_id: str
    what: str
    """What was found, in words (e.g. "the database records 120 sends started, the journal 334")."""
    record: SendRecord | None
    """The journal's record of the campaign, when it has one."""


@runtime_checkable
class JournalledStore(Protocol):
    """A store that keeps a send journal beside its state and checks the two agree when opened.

    A campaign whose state lost sends the journal recorded must not send again until every row
    TEM may already have is reconciled (``bulksend send … --reconcile-all``), then
    :meth:`accept_state` records the reconciled state as the new baseline.
    """

    def state_loss(self, campaign_id: str) -> StateLoss | None:
        """The loss found at open for this campaign, or None."""
        ...

    def send_record(self, campaign_id: str) -> SendRecord | None:
        """The journal's record of the campaign's sends (None: it never sent from this store)."""
        ...

    async def accept_state(self, campaign_id: str) -> None:
        """Take the campaign's current state as the journal's baseline (after reconciliation)."""
        ...


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
class Store(SuppressionStore, Protocol):
    """The outbox state machine. Implementations: memory (tests, ``--dry-run``), SQLite, PostgreSQL.

    Every store also keeps the suppression list (:class:`~bulksend.suppression.SuppressionStore`).
    """

    async def open(self) -> None:
        """Create or migrate the schema; idempotent."""

    async def close(self) -> None:
        """Flush pending writes and release resources."""

    # -- campaigns ---------------------------------------------------------------------------
    async def create_campaign(self, campaign_id: str, spec: dict[str, Any]) -> CampaignRecord:
        """Create the campaign, or return the existing one unchanged (resume)."""

    async def get_campaign(self, campaign_id: str) -> CampaignRecord | None: ...

    async def list_campaigns(self) -> list[CampaignRecord]: ...

    async def set_campaign_state(self, campaign_id: str, state: CampaignState, *, reason: str = "") -> None:
        """Set the campaign's state and its ``state_reason`` (cleared when ``reason`` is empty)."""

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
    # ``lease_token`` (keyword, optional) fences a write: given, the write applies only if the row
    # still carries that token and an owner, else ``LeaseLostError`` is raised and nothing is
    # written (see the module docstring). ``None`` (the default): no lease check at all.
    async def mark_sending(
        self, row_id: int, *, started_at: datetime, correlation: str, lease_token: int | None = None
    ) -> None:
        """pending → sending, attempts += 1, durable before returning: call before the POST.

        Returns nothing: the caller already holds what it needs to send, and reading the row back
        on every email would cost more than the write itself (``get_row`` reads it when wanted).
        """

    async def mark_submitted(
        self,
        row_id: int,
        *,
        email_id: str,
        message_id: str,
        submitted_at: datetime,
        lease_token: int | None = None,
    ) -> None:
        """sending → submitted with TEM's email id."""

    async def mark_ambiguous(
        self, row_id: int, *, ended_at: datetime, reason: str, lease_token: int | None = None
    ) -> None:
        """Stay ``sending`` but record when the ambiguous attempt ended (reconcile later)."""

    async def mark_retry(self, row_id: int, *, reason: str, lease_token: int | None = None) -> None:
        """sending → pending: reconciliation proved the email was not created. The lease stays."""

    async def mark_rejected(self, row_id: int, *, reason: str, lease_token: int | None = None) -> None:
        """pending/sending → rejected (bad input found late, or a permanent API 4xx); ends the lease."""

    async def mark_skipped(self, row_id: int, *, reason: str, lease_token: int | None = None) -> None:
        """pending → skipped (for example the campaign was canceled); ends the lease."""

    async def mark_final(self, updates: Sequence[FinalUpdate]) -> None:
        """submitted (or sending, for an adopted email) → final, many rows in one commit.

        Never fenced (any worker may learn a final status); ends the lease of every row it finalises.
        """

    async def resolve_unknown(self, updates: Sequence[FinalUpdate]) -> int:
        """final with status ``unknown`` (tracking gave up) → final with TEM's status, learned later
        (``bulksend recheck``); returns how many rows changed. Rows in any other state or status are
        left as they are."""

    # -- leases (many workers) -----------------------------------------------------------------
    async def claim(
        self,
        campaign_id: str,
        *,
        worker_id: str,
        limit: int,
        lease_s: float,
        states: Sequence[RowState] = (RowState.PENDING,),
    ) -> list[RecipientRow]:
        """Lease up to ``limit`` rows of the campaign for ``worker_id``, lowest ids first; durable.

        Claimable: rows in ``states`` with no lease or an expired one (``lease_expires_at <= now``),
        whoever held it. Each claimed row gets ``lease_owner = worker_id``,
        ``lease_expires_at = now + lease_s`` and ``lease_token = lease_token + 1``; the rows are
        returned as they stand after the claim, in ``id`` order. Rows this worker already holds
        on a live lease are not returned again. Two concurrent claims never return the same row.

        Claiming ``states=(RowState.SENDING,)`` takes over rows a dead worker left ``sending``: the
        new owner must reconcile them (look them up at TEM), never resend them blindly.
        ``limit <= 0`` claims nothing. ``worker_id`` must not be empty, ``lease_s`` must be > 0.
        """

    async def renew(self, *, worker_id: str, row_ids: Sequence[int], lease_s: float) -> set[int]:
        """Extend to ``now + lease_s`` the leases ``worker_id`` holds on these rows; durable.

        Returns the ids whose lease is still this worker's (renewed). An id absent from the result
        was claimed by another worker, released, finished or never existed: stop working on it.
        A lease that expired but that nobody claimed since is still this worker's and is renewed.
        """

    async def release(self, *, worker_id: str, row_ids: Sequence[int]) -> None:
        """Give back the leases ``worker_id`` holds on these rows (others are left alone); durable.

        The rows become claimable at once; a write fenced with the released token is refused.
        """

    async def acquire_role(self, campaign_id: str, role: str, *, worker_id: str, ttl_s: float) -> bool:
        """Take or renew the campaign-level ``role`` (say ``"admit"`` or ``"track"``) for ``ttl_s``.

        True if ``worker_id`` now holds the role until ``now + ttl_s`` (it was free, expired, or
        already this worker's: calling again before expiry renews it). False if another worker
        holds it on a live lease. Durable. The campaign need not exist.
        """

    async def release_role(self, campaign_id: str, role: str, *, worker_id: str) -> None:
        """Give the role back if ``worker_id`` holds it (no-op otherwise); durable."""

    # -- reads -------------------------------------------------------------------------------
    async def get_row(self, row_id: int) -> RecipientRow | None: ...

    async def rows_by_email_id(self, campaign_id: str, email_ids: Sequence[str]) -> dict[str, RecipientRow]:
        """The rows holding these TEM email ids (ids not found are absent from the result)."""

    async def rows_by_keys(self, campaign_id: str, keys: Sequence[str]) -> dict[str, RecipientRow]:
        """The rows of the campaign that own these dedupe keys (normalised addresses); a key that
        no row owns (unknown, or only rejected and skipped rows had it) is absent."""

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
        """Every row of the campaign in input ``row`` order (for the outcomes file).

        ``payload`` may come back empty: outcome lines do not show it, and a store may skip it.
        """

    async def counts(self, campaign_id: str) -> dict[str, int]:
        """Number of rows by state, and by final status as ``status:<s>``."""
