"""An in-memory outbox with exactly the semantics of the durable stores, for tests and ``--dry-run``.

Nothing survives the process, but the data survives ``close()`` + ``open()`` on the same instance,
which is how tests simulate a restart. Every method passes an anyio checkpoint first, so callers
see the same scheduling points (and cancellation points) as with a real backend; a write that is
cancelled at its checkpoint is not applied, one that passed it is applied atomically.

Payloads and specs go through an orjson round-trip on the way in and out, as they do in SQL: a
value that is not JSON-able is refused here too, and a caller mutating a returned ``payload`` never
changes what the store holds.

The rules (datetime normalisation, JSON encoding, transition and lease checks, what each dispatch
write changes) are those of every backend, in :mod:`bulksend.store.rules`: the memory store
applies them in Python where the SQL stores build statements from them.

Leases and roles use the injected ``clock`` (default: the system clock, UTC) for ``now``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio.lowlevel
import orjson

from bulksend.errors import StoreError
from bulksend.store.base import (
    AdmitResult,
    CampaignRecord,
    CampaignState,
    RecipientRow,
    RowState,
)
from bulksend.store.core import StoreBase
from bulksend.store.rules import (
    FINALISABLE_STATES,
    KEY_RELEASING_STATES,
    admitted_as,
    check_finalisable,
    check_transition,
    checked_payloads,
    encode_json,
    holds_lease,
    lease_lost,
    row_write_refusal,
    utc,
    utc_or_none,
)
from bulksend.suppression import SuppressionEntry, merged

if TYPE_CHECKING:
    from bulksend.store.base import FinalUpdate, NewRecipient
    from bulksend.store.rules import RowWrite

__all__ = ["MemoryStore"]

# mark_final validates the whole batch before it writes: a row may be finalisable or final already.
_FINALISABLE_OR_FINAL = frozenset(s.value for s in (*FINALISABLE_STATES, RowState.FINAL))


@dataclass(slots=True)
class _Role:
    owner: str
    expires_at: datetime


class MemoryStore(StoreBase):
    """The outbox in dicts. Same state machine, dedupe, idempotency and lease rules as ``SqliteStore``.

    ``clock`` gives ``now`` (aware UTC) for campaign creation times, leases and roles.
    """

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._open = False
        self._campaigns: dict[str, CampaignRecord] = {}
        self._specs: dict[str, bytes] = {}
        self._rows: dict[int, RecipientRow] = {}  # payload held in _payloads, not here
        self._payloads: dict[int, bytes] = {}
        self._ids: dict[str, list[int]] = {}  # campaign → row ids, ascending (ids only grow)
        self._by_input_row: dict[str, dict[int, int]] = {}  # campaign → input row → id
        self._input_rows: dict[str, list[int]] = {}  # campaign → input rows, sorted
        self._dedupe: dict[str, dict[str, int]] = {}  # campaign → key → input row of its owner
        self._by_email_id: dict[str, int] = {}
        self._roles: dict[tuple[str, str], _Role] = {}
        self._next_id = 1
        # project → address → reason → entry (entries are frozen: handed out as they are).
        self._suppressions: dict[str, dict[str, dict[str, SuppressionEntry]]] = {}

    async def open(self) -> None:
        """Make the store usable; data from before a ``close()`` is still there."""
        await anyio.lowlevel.checkpoint()
        self._open = True

    async def close(self) -> None:
        """Refuse further use until ``open()``; nothing is buffered, so nothing to flush."""
        await anyio.lowlevel.checkpoint()
        self._open = False

    # -- helpers -----------------------------------------------------------------------------
    async def _enter(self) -> None:
        await anyio.lowlevel.checkpoint()
        if not self._open:
            raise StoreError("the store is not open")

    _idle = _enter

    def _public(self, row: RecipientRow) -> RecipientRow:
        return replace(row, payload=orjson.loads(self._payloads[row.id]))

    def _campaign(self, campaign_id: str) -> CampaignRecord:
        rec = self._campaigns.get(campaign_id)
        if rec is None:
            raise StoreError(f"unknown campaign {campaign_id!r}")
        return rec

    def _row(self, row_id: int) -> RecipientRow:
        row = self._rows.get(row_id)
        if row is None:
            raise StoreError(f"no outbox row with id {row_id}")
        return row

    def _public_campaign(self, rec: CampaignRecord) -> CampaignRecord:
        return replace(rec, spec=orjson.loads(self._specs[rec.id]))

    def _now(self) -> datetime:
        return utc(self._clock())

    def _fenced_row(self, row_id: int, lease_token: int | None) -> RecipientRow:
        """The row, or ``StoreError`` if unknown, or ``LeaseLostError`` if the fence refuses."""
        row = self._row(row_id)
        if lease_token is not None and not holds_lease(lease_token, row.lease_token, row.lease_owner):
            raise lease_lost(row_id, lease_token, row.lease_token, row.lease_owner)
        return row

    def _move(self, row: RecipientRow, target: RowState, **changes: Any) -> RecipientRow:
        check_transition(row.id, row.state, target)
        if target in KEY_RELEASING_STATES and row.key is not None:
            owners = self._dedupe.get(row.campaign_id, {})
            if owners.get(row.key) == row.row:
                del owners[row.key]
        if target.is_terminal:
            # A finished row needs no worker: its lease ends (the token keeps its value).
            changes = {**changes, "lease_owner": "", "lease_expires_at": None}
        new = replace(row, state=target, **changes)
        self._rows[row.id] = new
        return new

    # -- campaigns ---------------------------------------------------------------------------
    async def create_campaign(self, campaign_id: str, spec: dict[str, Any]) -> CampaignRecord:
        """Create the campaign, or return the existing one unchanged (resume)."""
        await self._enter()
        existing = self._campaigns.get(campaign_id)
        if existing is None:
            blob = encode_json(spec, f"spec of campaign {campaign_id!r}")
            existing = CampaignRecord(
                id=campaign_id, created_at=utc(self._clock()), state=CampaignState.RUNNING, spec={}
            )
            self._campaigns[campaign_id] = existing
            self._specs[campaign_id] = blob
        return self._public_campaign(existing)

    async def get_campaign(self, campaign_id: str) -> CampaignRecord | None:
        await self._enter()
        rec = self._campaigns.get(campaign_id)
        return None if rec is None else self._public_campaign(rec)

    async def list_campaigns(self) -> list[CampaignRecord]:
        """Every campaign, oldest first."""
        await self._enter()
        recs = sorted(self._campaigns.values(), key=lambda c: (c.created_at, c.id))
        return [self._public_campaign(c) for c in recs]

    async def set_campaign_state(self, campaign_id: str, state: CampaignState, *, reason: str = "") -> None:
        await self._enter()
        rec = self._campaign(campaign_id)
        self._campaigns[campaign_id] = replace(rec, state=CampaignState(state), state_reason=reason)

    async def mark_admitted_all(self, campaign_id: str) -> None:
        """Record that every row of the source is admitted."""
        await self._enter()
        rec = self._campaign(campaign_id)
        self._campaigns[campaign_id] = replace(rec, admitted_all=True)

    # -- admission ---------------------------------------------------------------------------
    async def admit(self, campaign_id: str, rows: Sequence[NewRecipient]) -> list[AdmitResult]:
        """Insert rows atomically; idempotent on ``row``; first pending row with a key wins it."""
        await self._enter()
        self._campaign(campaign_id)
        # Encode every payload before touching anything: a bad one fails the whole call, unwritten.
        blobs = checked_payloads(rows)
        by_row = self._by_input_row.setdefault(campaign_id, {})
        owners = self._dedupe.setdefault(campaign_id, {})
        ids = self._ids.setdefault(campaign_id, [])
        input_rows = self._input_rows.setdefault(campaign_id, [])
        results: list[AdmitResult] = []
        for r, blob in zip(rows, blobs, strict=True):
            existing_id = by_row.get(r.row)
            if existing_id is not None:
                ex = self._rows[existing_id]
                results.append(AdmitResult(id=ex.id, row=ex.row, state=ex.state, reason=ex.reason))
                continue
            state, reason, _ = admitted_as(r, owners)
            row_id = self._next_id
            self._next_id += 1
            self._rows[row_id] = RecipientRow(
                id=row_id,
                campaign_id=campaign_id,
                row=r.row,
                email=r.email,
                name=r.name,
                key=r.key,
                state=state,
                payload={},
                reason=reason,
            )
            self._payloads[row_id] = blob
            by_row[r.row] = row_id
            ids.append(row_id)
            bisect.insort(input_rows, r.row)
            results.append(AdmitResult(id=row_id, row=r.row, state=state, reason=reason))
        return results

    async def max_admitted_row(self, campaign_id: str) -> int:
        """Highest admitted ``row`` (0 if none)."""
        await self._enter()
        input_rows = self._input_rows.get(campaign_id)
        return input_rows[-1] if input_rows else 0

    # -- dispatch ----------------------------------------------------------------------------
    _timestamp = staticmethod(utc)

    async def _row_write(
        self, write: RowWrite, row_id: int, values: tuple[Any, ...], lease_token: int | None
    ) -> None:
        """Apply the declared ``write`` to the row (the ``mark_*`` methods are StoreBase's)."""
        await self._enter()
        row = self._fenced_row(row_id, lease_token)
        changes = dict(zip(write.columns, values, strict=True))
        for column in write.cleared:
            changes[column] = None
        for column in write.counted:
            changes[column] = getattr(row, column) + 1
        target = write.target
        if target is not None:
            self._move(row, target, **changes)  # checks the transition
            if target is RowState.SUBMITTED and changes["email_id"]:
                self._by_email_id[changes["email_id"]] = row_id
        elif row.state is RowState.SENDING:
            self._rows[row_id] = replace(row, **changes)
        else:
            raise row_write_refusal(
                write, row_id, lease_token, (row.state.value, row.lease_token, row.lease_owner)
            )

    async def mark_final(self, updates: Sequence[FinalUpdate]) -> None:
        """submitted/sending → final, all or nothing; rows already final are left as they are."""
        await self._enter()
        # Validate the whole batch first so a refused batch changes nothing (like one SQL transaction).
        rows = ((u.id, self._rows.get(u.id)) for u in updates)
        check_finalisable(((i, None if r is None else r.state.value) for i, r in rows), _FINALISABLE_OR_FINAL)
        for u in updates:
            row = self._rows[u.id]
            if row.state is RowState.FINAL:
                continue  # the tracker may learn the same final status twice
            self._move(row, RowState.FINAL, **_final_facts(u))

    async def resolve_unknown(self, updates: Sequence[FinalUpdate]) -> int:
        """final ``unknown`` → final with TEM's status; other rows are left as they are."""
        await self._enter()
        changed = 0
        for u in updates:
            row = self._rows.get(u.id)
            if row is None or row.state is not RowState.FINAL or row.status != "unknown":
                continue
            self._rows[u.id] = replace(row, **_final_facts(u))
            changed += 1
        return changed

    # -- leases ------------------------------------------------------------------------------
    async def _claim(
        self, campaign_id: str, worker_id: str, limit: int, lease_s: float, states: list[str]
    ) -> list[RecipientRow]:
        await self._enter()
        wanted = frozenset(RowState(s) for s in states)
        duration = timedelta(seconds=lease_s)
        now = self._now()
        claimed: list[RecipientRow] = []
        for row_id in self._ids.get(campaign_id, []):
            row = self._rows[row_id]
            if row.state not in wanted:
                continue
            if row.lease_owner and row.lease_expires_at is not None and row.lease_expires_at > now:
                continue  # a live lease, whoever holds it
            new = replace(
                row, lease_owner=worker_id, lease_expires_at=now + duration, lease_token=row.lease_token + 1
            )
            self._rows[row_id] = new
            claimed.append(self._public(new))
            if len(claimed) >= limit:
                break
        return claimed

    async def _renew(self, worker_id: str, row_ids: list[int], lease_s: float) -> set[int]:
        await self._enter()
        expires = self._now() + timedelta(seconds=lease_s)
        kept: set[int] = set()
        for row_id in row_ids:
            row = self._rows.get(row_id)
            if row is not None and row.lease_owner == worker_id:
                self._rows[row_id] = replace(row, lease_expires_at=expires)
                kept.add(row_id)
        return kept

    async def _release(self, worker_id: str, row_ids: list[int]) -> None:
        await self._enter()
        for row_id in row_ids:
            row = self._rows.get(row_id)
            if row is not None and row.lease_owner == worker_id:
                self._rows[row_id] = replace(row, lease_owner="", lease_expires_at=None)

    async def _acquire_role(self, campaign_id: str, role: str, worker_id: str, ttl_s: float) -> bool:
        await self._enter()
        now = self._now()
        held = self._roles.get((campaign_id, role))
        if held is not None and held.owner != worker_id and held.expires_at > now:
            return False
        self._roles[(campaign_id, role)] = _Role(owner=worker_id, expires_at=now + timedelta(seconds=ttl_s))
        return True

    async def release_role(self, campaign_id: str, role: str, *, worker_id: str) -> None:
        """Give the role back if this worker holds it."""
        await self._enter()
        held = self._roles.get((campaign_id, role))
        if held is not None and held.owner == worker_id:
            del self._roles[(campaign_id, role)]

    # -- reads -------------------------------------------------------------------------------
    async def get_row(self, row_id: int) -> RecipientRow | None:
        await self._enter()
        row = self._rows.get(row_id)
        return None if row is None else self._public(row)

    async def rows_by_email_id(self, campaign_id: str, email_ids: Sequence[str]) -> dict[str, RecipientRow]:
        """The rows of the campaign holding these TEM email ids (unknown ids are absent)."""
        await self._enter()
        found: dict[str, RecipientRow] = {}
        for email_id in email_ids:
            row_id = self._by_email_id.get(email_id)
            if row_id is None:
                continue
            row = self._rows[row_id]
            if row.campaign_id == campaign_id:
                found[email_id] = self._public(row)
        return found

    async def rows_by_keys(self, campaign_id: str, keys: Sequence[str]) -> dict[str, RecipientRow]:
        """The rows of the campaign that own these dedupe keys (keys nobody owns are absent)."""
        await self._enter()
        owners = self._dedupe.get(campaign_id, {})
        by_row = self._by_input_row.get(campaign_id, {})
        found: dict[str, RecipientRow] = {}
        for key in keys:
            row = owners.get(key)
            if row is not None and row in by_row:
                found[key] = self._public(self._rows[by_row[row]])
        return found

    async def _rows_page(
        self, campaign_id: str, states: list[str], after_id: int, batch_size: int
    ) -> list[RecipientRow]:
        await self._enter()
        wanted = frozenset(RowState(s) for s in states)
        # Re-located from the last id each page (keyset), like the SQL stores do.
        ids = self._ids.get(campaign_id, [])
        pos = bisect.bisect_right(ids, after_id)
        page: list[RecipientRow] = []
        while pos < len(ids) and len(page) < batch_size:
            row = self._rows[ids[pos]]
            pos += 1
            if not wanted or row.state in wanted:
                page.append(row)
        return page

    async def _outcomes_page(self, campaign_id: str, after_row: int, batch_size: int) -> list[RecipientRow]:
        await self._enter()
        input_rows = self._input_rows.get(campaign_id, [])
        by_row = self._by_input_row.get(campaign_id, {})
        pos = bisect.bisect_right(input_rows, after_row)
        return [self._rows[by_row[n]] for n in input_rows[pos : pos + batch_size]]

    # Pages hold the stored records; each is copied (payload decoded) only as it is yielded.
    _outward = _public

    # -- suppression list --------------------------------------------------------------------
    async def _suppress(self, project_id: str, entries: list[SuppressionEntry]) -> None:
        await self._enter()
        now = self._now()
        listed = self._suppressions.setdefault(project_id, {})
        for entry in entries:
            reasons = listed.setdefault(entry.address, {})
            reasons[entry.reason.value] = merged(reasons.get(entry.reason.value), entry, now)

    async def _unsuppress(self, project_id: str, addresses: list[str], source: str | None) -> int:
        await self._enter()
        listed = self._suppressions.get(project_id, {})
        removed = 0
        for address in addresses:
            reasons = listed.get(address, {})
            for reason, entry in list(reasons.items()):
                if source is None or entry.source.value == source:
                    del reasons[reason]
                    removed += 1
            if not reasons:
                listed.pop(address, None)
        return removed

    async def _active_suppressions(self, project_id: str, addresses: list[str]) -> list[SuppressionEntry]:
        await self._enter()
        now = self._now()
        listed = self._suppressions.get(project_id, {})
        return [e for a in addresses for e in listed.get(a, {}).values() if e.active(now)]

    async def _suppression_page(
        self, project_id: str, after: tuple[str, str], limit: int, active_only: bool
    ) -> list[SuppressionEntry]:
        await self._enter()
        now = self._now()
        listed = self._suppressions.get(project_id, {})
        # Sorted per page: the memory store holds small lists (tests, dry runs).
        page: list[SuppressionEntry] = []
        for address in sorted(a for a in listed if a >= after[0]):
            for reason in sorted(listed[address]):
                entry = listed[address][reason]
                if (address, reason) > after and (entry.active(now) or not active_only):
                    page.append(entry)
                    if len(page) == limit:
                        return page
        return page

    async def counts(self, campaign_id: str) -> dict[str, int]:
        """Number of rows by state, and of final rows by status as ``status:<s>`` (zeros omitted)."""
        await self._enter()
        out: dict[str, int] = {}
        for row_id in self._ids.get(campaign_id, []):
            row = self._rows[row_id]
            out[row.state.value] = out.get(row.state.value, 0) + 1
            if row.state is RowState.FINAL:
                k = f"status:{row.status}"
                out[k] = out.get(k, 0) + 1
        return out


def _final_facts(u: FinalUpdate) -> dict[str, Any]:
    """The row fields ``u`` sets (``mark_final``, ``resolve_unknown``)."""
    return {
        "status": str(u.status),
        "flags": tuple(str(f) for f in u.flags),
        "status_details": u.status_details,
        "smtp_code": u.smtp_code,
        "smtp_message": u.smtp_message,
        "try_count": u.try_count,
        "final_at": utc_or_none(u.final_at),
        "reason": u.reason,
    }
