"""What every store backend shares on top of a few primitives of its own.

:class:`StoreBase` gives each backend the same argument checks and the same shape for the calls of
the :class:`~bulksend.store.base.Store` protocol that differ only in how a backend touches its data:
the ``mark_*`` dispatch writes (one declared :class:`~bulksend.store.rules.RowWrite` each, applied
by the backend's ``_row_write``), the leases and roles (``claim``, ``renew``, ``release``,
``acquire_role``), and the keyset-paged ``iter_rows`` and ``iter_outcomes``. Each page of those
is found again from the last key seen, never by an offset, so a page costs the same however far
into a campaign it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

from bulksend.errors import StoreError
from bulksend.lifecycle import OpenClose
from bulksend.store.base import RecipientRow, RowState
from bulksend.store.rules import (
    TO_AMBIGUOUS,
    TO_PENDING,
    TO_REJECTED,
    TO_SENDING,
    TO_SKIPPED,
    TO_SUBMITTED,
    RowWrite,
    check_lease_args,
)
from bulksend.suppression import (
    SuppressionEntry,
    SuppressionReason,
    SuppressionSource,
    merged,
    normalize_suppressed,
    strongest,
)

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = ["FIRST_INPUT_ROW", "StoreBase", "keyset_pages"]

_T = TypeVar("_T")
_K = TypeVar("_K")

_LONG_AGO: Final = datetime.min.replace(tzinfo=UTC)

FIRST_INPUT_ROW: Final = -(2**63)
"""Below every input row (line numbers, >= 1 in practice, stored as 64-bit integers)."""


async def keyset_pages(
    fetch: Callable[[_K], Awaitable[list[_T]]], after: _K, batch_size: int, key: Callable[[_T], _K]
) -> AsyncIterator[list[_T]]:
    """Pages of ``fetch(after)``, each one after the ``key`` of the previous page's last item.

    A short page is the last; an empty page is not yielded.
    """
    while True:
        items = await fetch(after)
        if items:
            yield items
        if len(items) < batch_size:
            return
        after = key(items[-1])


class StoreBase(OpenClose):
    """The shared part of every store; a backend provides ``open``, ``close`` and the primitives
    that raise here."""

    # -- the primitives of a backend ---------------------------------------------------------
    async def _row_write(
        self, write: RowWrite, row_id: int, values: tuple[Any, ...], lease_token: int | None
    ) -> None:
        """Apply ``write`` to one row, ``values`` for its ``columns``; fenced by ``lease_token``."""
        raise NotImplementedError

    def _timestamp(self, dt: datetime) -> Any:
        """``dt`` as the backend stores it."""
        raise NotImplementedError

    async def _idle(self) -> None:
        """What a call that turns out to have nothing to do still does (refuse a closed store…)."""
        raise NotImplementedError

    async def _claim(
        self, campaign_id: str, worker_id: str, limit: int, lease_s: float, states: list[str]
    ) -> list[RecipientRow]:
        """``claim`` with checked arguments, ``limit`` > 0 and ``states`` (values, sorted) not empty."""
        raise NotImplementedError

    async def _renew(self, worker_id: str, row_ids: list[int], lease_s: float) -> set[int]:
        """``renew`` with checked arguments, ``row_ids`` sorted without repeats."""
        raise NotImplementedError

    async def _release(self, worker_id: str, row_ids: list[int]) -> None:
        """``release`` with a checked ``worker_id``, ``row_ids`` sorted without repeats."""
        raise NotImplementedError

    async def _acquire_role(self, campaign_id: str, role: str, worker_id: str, ttl_s: float) -> bool:
        """``acquire_role`` with checked arguments."""
        raise NotImplementedError

    async def _rows_page(
        self, campaign_id: str, states: list[str], after_id: int, batch_size: int
    ) -> list[RecipientRow]:
        """Up to ``batch_size`` rows after ``after_id`` in id order, in ``states`` (values) if any."""
        raise NotImplementedError

    async def _outcomes_page(self, campaign_id: str, after_row: int, batch_size: int) -> list[RecipientRow]:
        """Up to ``batch_size`` rows after input row ``after_row``, in input row order."""
        raise NotImplementedError

    async def _suppress(self, project_id: str, entries: list[SuppressionEntry]) -> None:
        """``suppress`` with a checked project and at least one entry, one per key."""
        raise NotImplementedError

    async def _unsuppress(self, project_id: str, addresses: list[str], source: str | None) -> int:
        """``unsuppress`` with a checked project and normalised addresses (sorted, no repeats)."""
        raise NotImplementedError

    async def _active_suppressions(self, project_id: str, addresses: list[str]) -> list[SuppressionEntry]:
        """Every active entry of these normalised addresses (sorted, no repeats, not empty)."""
        raise NotImplementedError

    async def _suppression_page(
        self, project_id: str, after: tuple[str, str], limit: int, active_only: bool
    ) -> list[SuppressionEntry]:
        """``list_suppressed`` with checked arguments and ``limit`` > 0."""
        raise NotImplementedError

    def _outward(self, row: RecipientRow) -> RecipientRow:
        """A row of a page as the caller gets it, made as it is yielded (default: as it is).

        A store whose pages hold its own records hands out copies here, one at a time, rather
        than a page of them at once.
        """
        return row

    # -- dispatch ----------------------------------------------------------------------------

    async def mark_sending(
        self, row_id: int, *, started_at: datetime, correlation: str, lease_token: int | None = None
    ) -> None:
        """pending → sending, attempts += 1, committed before returning: call it before the POST.

        Fenced by ``lease_token`` when given (``LeaseLostError``, nothing written).
        """
        await self._row_write(TO_SENDING, row_id, (self._timestamp(started_at), correlation), lease_token)

    async def mark_submitted(
        self,
        row_id: int,
        *,
        email_id: str,
        message_id: str,
        submitted_at: datetime,
        lease_token: int | None = None,
    ) -> None:
        """sending → submitted with TEM's email id. Fenced by ``lease_token`` when given."""
        values = (email_id, message_id, self._timestamp(submitted_at))
        await self._row_write(TO_SUBMITTED, row_id, values, lease_token)

    async def mark_ambiguous(
        self, row_id: int, *, ended_at: datetime, reason: str, lease_token: int | None = None
    ) -> None:
        """Stay ``sending`` but record when the ambiguous attempt ended (reconcile later). Fenced."""
        await self._row_write(TO_AMBIGUOUS, row_id, (self._timestamp(ended_at), reason), lease_token)

    async def mark_retry(self, row_id: int, *, reason: str, lease_token: int | None = None) -> None:
        """sending → pending: reconciliation proved the email was not created. The lease stays."""
        await self._row_write(TO_PENDING, row_id, (reason,), lease_token)

    async def mark_rejected(self, row_id: int, *, reason: str, lease_token: int | None = None) -> None:
        """pending/sending → rejected (the row gives its dedupe key and its lease up)."""
        await self._row_write(TO_REJECTED, row_id, (reason,), lease_token)

    async def mark_skipped(self, row_id: int, *, reason: str, lease_token: int | None = None) -> None:
        """pending → skipped (the row gives its dedupe key and its lease up)."""
        await self._row_write(TO_SKIPPED, row_id, (reason,), lease_token)

    # -- leases ------------------------------------------------------------------------------
    async def claim(
        self,
        campaign_id: str,
        *,
        worker_id: str,
        limit: int,
        lease_s: float,
        states: Sequence[RowState] = (RowState.PENDING,),
    ) -> list[RecipientRow]:
        """Lease up to ``limit`` unleased (or expired) rows in ``states``, lowest ids first; durable."""
        check_lease_args(worker_id, lease_s)
        wanted = sorted({RowState(s).value for s in states})
        if limit <= 0 or not wanted:
            await self._idle()
            return []
        return await self._claim(campaign_id, worker_id, limit, lease_s, wanted)

    async def renew(self, *, worker_id: str, row_ids: Sequence[int], lease_s: float) -> set[int]:
        """Extend this worker's leases on these rows to now + ``lease_s``; the ids still this worker's."""
        check_lease_args(worker_id, lease_s)
        return await self._renew(worker_id, sorted(set(row_ids)), lease_s)

    async def release(self, *, worker_id: str, row_ids: Sequence[int]) -> None:
        """Give back this worker's leases on these rows (others' are left alone)."""
        if not worker_id:
            raise StoreError("worker_id must not be empty")
        await self._release(worker_id, sorted(set(row_ids)))

    async def acquire_role(self, campaign_id: str, role: str, *, worker_id: str, ttl_s: float) -> bool:
        """Take or renew the campaign role for ``ttl_s``; False if another live worker holds it."""
        check_lease_args(worker_id, ttl_s, "ttl_s")
        return await self._acquire_role(campaign_id, role, worker_id, ttl_s)

    # -- suppression list (bulksend.suppression.SuppressionStore) -----------------------------
    async def suppress(self, project_id: str, entries: Sequence[SuppressionEntry]) -> None:
        """Add entries in one commit; one already listed merges (``bulksend.suppression.merged``)."""
        _check_project(project_id)
        # Two entries with one key in a call merge, as two calls in a row would.
        unique: dict[tuple[str, str], SuppressionEntry] = {}
        for entry in entries:
            unique[entry.key] = merged(unique.get(entry.key), entry, _LONG_AGO)
        if not unique:
            await self._idle()
            return
        await self._suppress(project_id, list(unique.values()))

    async def unsuppress(
        self, project_id: str, addresses: Sequence[str], source: SuppressionSource | None = None
    ) -> int:
        """Remove the entries of these addresses (only ``source``'s if given); how many were removed."""
        _check_project(project_id)
        wanted = sorted({normalize_suppressed(a) for a in addresses})
        if not wanted:
            await self._idle()
            return 0
        return await self._unsuppress(
            project_id, wanted, None if source is None else SuppressionSource(source).value
        )

    async def suppressed(
        self, project_id: str, addresses: Sequence[str], *, ignore: Collection[SuppressionReason] = ()
    ) -> dict[str, SuppressionEntry]:
        """The active entry that speaks for each suppressed address, by normalised address."""
        _check_project(project_id)
        wanted = sorted({normalize_suppressed(a) for a in addresses})
        if not wanted:
            await self._idle()
            return {}
        by_address: dict[str, list[SuppressionEntry]] = {}
        for entry in await self._active_suppressions(project_id, wanted):
            if entry.reason not in ignore:
                by_address.setdefault(entry.address, []).append(entry)
        return {address: strongest(found) for address, found in by_address.items()}

    async def list_suppressed(
        self,
        project_id: str,
        after: tuple[str, str] | None = None,
        limit: int = 1000,
        *,
        active_only: bool = False,
    ) -> list[SuppressionEntry]:
        """Up to ``limit`` entries in (address, reason) order after the key ``after``."""
        _check_project(project_id)
        if limit <= 0:
            await self._idle()
            return []
        return await self._suppression_page(project_id, after or ("", ""), limit, active_only)

    # -- reads -------------------------------------------------------------------------------
    async def iter_rows(
        self,
        campaign_id: str,
        *,
        states: Sequence[RowState] = (),
        after_id: int = 0,
        batch_size: int = 1000,
    ) -> AsyncIterator[RecipientRow]:
        """Rows of a campaign in ``id`` order, optionally only in ``states``; keyset pages on ``id``."""
        wanted = sorted({RowState(s).value for s in states})

        async def page(after: int) -> list[RecipientRow]:
            return await self._rows_page(campaign_id, wanted, after, batch_size)

        async for rows in keyset_pages(page, after_id, batch_size, _row_id):
            for row in rows:
                yield self._outward(row)

    async def iter_outcomes(self, campaign_id: str, *, batch_size: int = 1000) -> AsyncIterator[RecipientRow]:
        """Every row of the campaign in input ``row`` order; keyset pages on ``row``."""

        async def page(after: int) -> list[RecipientRow]:
            return await self._outcomes_page(campaign_id, after, batch_size)

        async for rows in keyset_pages(page, FIRST_INPUT_ROW, batch_size, _input_row):
            for row in rows:
                yield self._outward(row)


def _check_project(project_id: str) -> None:
    if not project_id:
        raise StoreError("project_id must not be empty")


def _row_id(row: RecipientRow) -> int:
    return row.id


def _input_row(row: RecipientRow) -> int:
    return row.row
