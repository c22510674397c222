"""The SQL both SQL stores share: the outbox's columns, the per-row writes, the keyset pages.

Each per-row write is declared once (:class:`~bulksend.store.rules.RowWrite`); this module turns a
declaration into SQLite's single-row guarded ``UPDATE`` (``?`` parameters, run per call inside a
group commit) and PostgreSQL's batched ``UPDATE … FROM unnest(…)`` (``$n`` array parameters,
one statement per kind of write in a group commit). A guarded UPDATE carries the state check and
the lease fence in its ``WHERE``, so both are one atomic statement in either database.

:class:`SqlStore` holds the reads and single-statement writes whose SQL is the same in both
dialects but for the parameter marks (``?n`` in SQLite, ``$n`` in PostgreSQL) and the table
names, among them the pages of the keyset walks of :class:`~bulksend.store.core.StoreBase`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, Final

from bulksend.errors import StoreError
from bulksend.store.base import CampaignRecord, CampaignState, FinalUpdate, RecipientRow, RowState
from bulksend.store.core import StoreBase
from bulksend.store.rules import TO_FINAL, RowWrite, final_values
from bulksend.suppression import SuppressionEntry

__all__ = [
    "ALREADY_FINAL",
    "CAMPAIGN_COLUMNS",
    "ROW_COLUMNS",
    "ROW_COLUMN_LIST",
    "SUPPRESSION_COLUMN_LIST",
    "SqlStore",
    "postgres_update",
    "sqlite_update",
    "states_in",
]

ROW_COLUMNS: Final = (
    "id",
    "campaign_id",
    "input_row",
    "email",
    "name",
    "recipient_key",
    "state",
    "payload",
    "reason",
    "attempts",
    "attempt_started_at",
    "attempt_ended_at",
    "correlation",
    "email_id",
    "message_id",
    "submitted_at",
    "status",
    "flags",
    "status_details",
    "smtp_code",
    "smtp_message",
    "try_count",
    "final_at",
    "lease_owner",
    "lease_token",
    "lease_expires_at",
)
"""The columns of a ``RecipientRow``, in the order of its fields.

Both stores build a row from them positionally (keywords cost more for 26 fields), so the order
is checked when this module is imported.
"""
if [f.name for f in fields(RecipientRow)] != [
    {"input_row": "row", "recipient_key": "key"}.get(c, c) for c in ROW_COLUMNS
]:
    raise ImportError("store.sql: ROW_COLUMNS is out of step with the fields of RecipientRow")
ROW_COLUMN_LIST: Final = ", ".join(ROW_COLUMNS)
CAMPAIGN_COLUMNS: Final = "id, created_at, state, spec, admitted_all, state_reason"
SUPPRESSION_COLUMN_LIST: Final = "address, reason, source, since, until, origin"
"""The columns of a ``SuppressionEntry``, in the order of its fields."""
_LONG_AGO: Final = datetime(1, 1, 1, tzinfo=UTC)
_IN_CHUNK: Final = 500
"""Addresses per ``IN (…)`` list: one statement for a whole admission batch."""

# The PostgreSQL type of every column a RowWrite sets (its values travel as arrays of it).
# ``jsonb`` values travel as text and are cast in the statement.
_PG_TYPES: Final[dict[str, str]] = {
    "attempt_started_at": "timestamptz",
    "attempt_ended_at": "timestamptz",
    "correlation": "text",
    "email_id": "text",
    "message_id": "text",
    "submitted_at": "timestamptz",
    "reason": "text",
    "status": "text",
    "flags": "jsonb",
    "status_details": "text",
    "smtp_code": "integer",
    "smtp_message": "text",
    "try_count": "integer",
    "final_at": "timestamptz",
}
ALREADY_FINAL: Final = frozenset({RowState.FINAL.value})
"""The one state a row that ``mark_final`` did not move may be in (the tracker learned it twice)."""


def states_in(states: Iterable[RowState]) -> str:
    """``'a', 'b'``: the states as SQL literals (enum constants, so inlined rather than bound)."""
    return ", ".join(f"'{s.value}'" for s in states)


def _assignments(write: RowWrite, value: Callable[[str], str], row: str = "") -> str:
    """The ``SET`` list of ``write``; ``value(column)`` is the SQL of the caller's value for it,
    ``row`` what qualifies the row's own columns (``r.``: the UPDATE has a FROM of its own)."""
    assigns = [] if write.target is None else [f"state = '{write.target.value}'"]
    if write.releases_key:
        assigns.append("dedupe_key = NULL")
    if write.ends_lease:
        assigns += ["lease_owner = ''", "lease_expires_at = NULL"]
    assigns += [f"{c} = {row}{c} + 1" for c in write.counted]
    for column in write.columns:
        v = value(column)
        assigns.append(f"{column} = NULLIF({v}, '')" if column in write.empty_is_null else f"{column} = {v}")
    assigns += [f"{c} = NULL" for c in write.cleared]
    return ", ".join(assigns)


def sqlite_update(write: RowWrite, *, fenced: bool = False) -> str:
    """SQLite's guarded UPDATE of one row for ``write``.

    Parameters: the values of ``write.columns``, the row id, then (``fenced``) the lease token.
    """
    sql = (
        f"UPDATE recipients SET {_assignments(write, lambda _: '?')} "
        f"WHERE id = ? AND state IN ({states_in(write.sources)})"
    )
    return sql + " AND lease_token = ? AND lease_owner <> ''" if fenced else sql


def postgres_update(write: RowWrite, table: str) -> str:
    """PostgreSQL's guarded UPDATE of a batch of rows for ``write``, returning the ids it moved.

    Parameters, one array each: the row ids, (``write.fenced``) the lease tokens (NULL: no
    fence), then the values of each of ``write.columns``.
    """
    names = ["id", *(["lease_token"] if write.fenced else []), *write.columns]
    types = ["bigint", *(["bigint"] if write.fenced else []), *(_PG_TYPES[c] for c in write.columns)]
    arrays = ", ".join(f"${i}::{'text' if t == 'jsonb' else t}[]" for i, t in enumerate(types, start=1))

    def value(column: str) -> str:
        return f"u.{column}::jsonb" if _PG_TYPES[column] == "jsonb" else f"u.{column}"

    fence = (
        " AND (u.lease_token IS NULL OR (r.lease_token = u.lease_token AND r.lease_owner <> ''))"
        if write.fenced
        else ""
    )
    return (
        f"UPDATE {table} AS r SET {_assignments(write, value, 'r.')} "
        f"FROM unnest({arrays}) AS u({', '.join(names)}) "
        f"WHERE r.id = u.id AND r.state IN ({states_in(write.sources)}){fence} RETURNING r.id"
    )


class SqlStore(StoreBase):
    """What both SQL stores share: the statements that are the same in both dialects.

    A store provides its table names, its parameter mark, three fetches and ``_execute``; the SQL
    is built here.
    """

    _commits: int
    _recipients: str
    """The outbox table's name as SQL (schema-qualified where there is a schema)."""
    _campaigns: str
    _roles: str
    _suppressions: str
    _LEAST: str = "min"
    """The dialect's two-argument minimum (and ``_GREATEST`` its maximum)."""
    _GREATEST: str = "max"
    _OUTCOME_COLUMNS: str = ROW_COLUMN_LIST
    """The columns ``iter_outcomes`` reads (a store may leave the payload out)."""

    @property
    def commits(self) -> int:
        """Write transactions committed by this instance so far (group commit: far fewer than writes)."""
        return self._commits

    @staticmethod
    def _mark(n: int) -> str:
        """The SQL of the ``n``-th (from 1) query parameter."""
        raise NotImplementedError

    async def _fetch_rows(self, sql: str, args: tuple[Any, ...]) -> list[RecipientRow]:
        raise NotImplementedError

    async def _fetch_campaigns(self, sql: str, args: tuple[Any, ...]) -> list[CampaignRecord]:
        raise NotImplementedError

    async def _fetch_value(self, sql: str, args: tuple[Any, ...]) -> Any:
        """The first column of the first row of the result."""
        raise NotImplementedError

    async def _execute(self, sql: str, args: tuple[Any, ...]) -> int:
        """Run one writing statement in a transaction of its own; the number of rows it changed."""
        raise NotImplementedError

    async def resolve_unknown(self, updates: Sequence[FinalUpdate]) -> int:
        """final ``unknown`` → final with TEM's status; one statement per row (a recheck is rare)."""
        m = self._mark
        columns = TO_FINAL.columns
        assigns = ", ".join(f"{c} = {m(i)}" for i, c in enumerate(columns, start=1))
        n = len(columns)
        sql = (
            f"UPDATE {self._recipients} SET {assigns} WHERE id = {m(n + 1)} "
            f"AND state = '{RowState.FINAL.value}' AND status = 'unknown'"
        )
        changed = 0
        for u in updates:
            changed += await self._execute(sql, (*final_values(u, self._timestamp), u.id))
        return changed

    async def _execute_many(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        """Run one writing statement once per parameter tuple, all in one transaction."""
        raise NotImplementedError

    async def _fetch_suppressions(self, sql: str, args: tuple[Any, ...]) -> list[SuppressionEntry]:
        """The entries a query of ``SUPPRESSION_COLUMN_LIST`` finds."""
        raise NotImplementedError

    async def set_campaign_state(self, campaign_id: str, state: CampaignState, *, reason: str = "") -> None:
        value = CampaignState(state).value
        m = self._mark
        await self._update_campaign(f"state = {m(1)}, state_reason = {m(2)}", (value, reason), campaign_id)

    async def mark_admitted_all(self, campaign_id: str) -> None:
        """Record that every row of the source is admitted."""
        await self._update_campaign("admitted_all = TRUE", (), campaign_id)

    async def _update_campaign(self, assignment: str, args: tuple[Any, ...], campaign_id: str) -> None:
        sql = f"UPDATE {self._campaigns} SET {assignment} WHERE id = {self._mark(len(args) + 1)}"
        if await self._execute(sql, (*args, campaign_id)) == 0:
            raise StoreError(f"unknown campaign {campaign_id!r}")

    async def release_role(self, campaign_id: str, role: str, *, worker_id: str) -> None:
        """Give the role back if this worker holds it."""
        m = self._mark
        await self._execute(
            f"DELETE FROM {self._roles} WHERE campaign_id = {m(1)} AND role = {m(2)} AND owner = {m(3)}",
            (campaign_id, role, worker_id),
        )

    async def get_campaign(self, campaign_id: str) -> CampaignRecord | None:
        found = await self._fetch_campaigns(
            f"SELECT {CAMPAIGN_COLUMNS} FROM {self._campaigns} WHERE id = {self._mark(1)}", (campaign_id,)
        )
        return found[0] if found else None

    async def list_campaigns(self) -> list[CampaignRecord]:
        """Every campaign, oldest first."""
        return await self._fetch_campaigns(
            f"SELECT {CAMPAIGN_COLUMNS} FROM {self._campaigns} ORDER BY created_at, id", ()
        )

    async def max_admitted_row(self, campaign_id: str) -> int:
        """Highest admitted ``row`` (0 if none)."""
        found = await self._fetch_value(
            f"SELECT COALESCE(MAX(input_row), 0) FROM {self._recipients} WHERE campaign_id = {self._mark(1)}",
            (campaign_id,),
        )
        return int(found)

    async def get_row(self, row_id: int) -> RecipientRow | None:
        found = await self._fetch_rows(
            f"SELECT {ROW_COLUMN_LIST} FROM {self._recipients} WHERE id = {self._mark(1)}", (row_id,)
        )
        return found[0] if found else None

    async def _rows_page(
        self, campaign_id: str, states: list[str], after_id: int, batch_size: int
    ) -> list[RecipientRow]:
        m, t = self._mark, self._recipients
        # Parameters: the campaign, the last id seen, the page size, then the states.
        if len(states) <= 1:
            state_filter = f"AND state = {m(4)} " if states else ""
            sql = (
                f"SELECT {ROW_COLUMN_LIST} FROM {t} WHERE campaign_id = {m(1)} {state_filter}"
                f"AND id > {m(2)} ORDER BY id LIMIT {m(3)}"
            )
        else:
            # One index-ordered page per state, merged: each part walks (campaign_id, state, id) in
            # order, so a page costs O(states × batch) however large the campaign is.
            sql = " UNION ALL ".join(
                f"SELECT * FROM (SELECT {ROW_COLUMN_LIST} FROM {t} WHERE campaign_id = {m(1)} "
                f"AND state = {m(i)} AND id > {m(2)} ORDER BY id LIMIT {m(3)}) AS p{i}"
                for i in range(4, 4 + len(states))
            )
            sql += f" ORDER BY id LIMIT {m(3)}"
        return await self._fetch_rows(sql, (campaign_id, after_id, batch_size, *states))

    async def _outcomes_page(self, campaign_id: str, after_row: int, batch_size: int) -> list[RecipientRow]:
        sql = self._in_row_order_sql(self._OUTCOME_COLUMNS)
        return await self._fetch_rows(sql, (campaign_id, after_row, batch_size))

    def _in_row_order_sql(self, columns: str) -> str:
        """A page of ``columns`` of a campaign's rows in input row order, after the given row.

        Parameters: the campaign, the last input row seen, the page size.
        """
        m = self._mark
        return (
            f"SELECT {columns} FROM {self._recipients} WHERE campaign_id = {m(1)} AND input_row > {m(2)} "
            f"ORDER BY input_row LIMIT {m(3)}"
        )

    # -- suppression list --------------------------------------------------------------------
    # Expiry is judged by this machine's clock (or the injected one): an entry's dates are days
    # apart from anything a few seconds of clock skew could change.
    def _wall_clock(self) -> datetime:
        """Now, for suppression expiry (a store with an injected clock uses it)."""
        return datetime.now(UTC)

    def _wall_now(self) -> Any:
        return self._timestamp(self._wall_clock())

    async def _suppress(self, project_id: str, entries: list[SuppressionEntry]) -> None:
        m, least, greatest = self._mark, self._LEAST, self._GREATEST
        # An expired entry is replaced; a live one keeps its earliest start and latest end (none
        # beats any), and takes the new source and origin (bulksend.suppression.merged).
        expired = f"(s.until IS NOT NULL AND s.until <= {m(8)})"
        sql = (
            f"INSERT INTO {self._suppressions} AS s (project_id, {SUPPRESSION_COLUMN_LIST}) "
            f"VALUES ({', '.join(m(i) for i in range(1, 8))}) "
            "ON CONFLICT (project_id, address, reason) DO UPDATE SET "
            f"since = CASE WHEN {expired} THEN excluded.since ELSE {least}(s.since, excluded.since) END, "
            f"until = CASE WHEN {expired} THEN excluded.until "
            "WHEN s.until IS NULL OR excluded.until IS NULL THEN NULL "
            f"ELSE {greatest}(s.until, excluded.until) END, "
            "source = excluded.source, origin = excluded.origin"
        )
        now, ts = self._wall_now(), self._timestamp
        params = [
            (
                project_id,
                e.address,
                e.reason.value,
                e.source.value,
                ts(e.since),
                None if e.until is None else ts(e.until),
                e.origin,
                now,
            )
            for e in entries
        ]
        await self._execute_many(sql, params)

    def _address_in(self, first: int, n: int) -> str:
        return f"address IN ({', '.join(self._mark(i) for i in range(first, first + n))})"

    async def _unsuppress(self, project_id: str, addresses: list[str], source: str | None) -> int:
        m = self._mark
        removed = 0
        for start in range(0, len(addresses), _IN_CHUNK):
            chunk = addresses[start : start + _IN_CHUNK]
            sql = (
                f"DELETE FROM {self._suppressions} WHERE project_id = {m(1)} "
                f"AND ({m(2)} = '' OR source = {m(2)}) AND {self._address_in(3, len(chunk))}"
            )
            removed += await self._execute(sql, (project_id, source or "", *chunk))
        return removed

    async def _active_suppressions(self, project_id: str, addresses: list[str]) -> list[SuppressionEntry]:
        m = self._mark
        now = self._wall_now()
        found: list[SuppressionEntry] = []
        for start in range(0, len(addresses), _IN_CHUNK):
            chunk = addresses[start : start + _IN_CHUNK]
            sql = (
                f"SELECT {SUPPRESSION_COLUMN_LIST} FROM {self._suppressions} WHERE project_id = {m(1)} "
                f"AND {self._address_in(3, len(chunk))} AND (until IS NULL OR until > {m(2)})"
            )
            found += await self._fetch_suppressions(sql, (project_id, now, *chunk))
        return found

    async def _suppression_page(
        self, project_id: str, after: tuple[str, str], limit: int, active_only: bool
    ) -> list[SuppressionEntry]:
        m = self._mark
        # Without active_only, the end is compared with the smallest time there is: always later.
        sql = (
            f"SELECT {SUPPRESSION_COLUMN_LIST} FROM {self._suppressions} WHERE project_id = {m(1)} "
            f"AND (address, reason) > ({m(2)}, {m(3)}) AND (until IS NULL OR until > {m(5)}) "
            f"ORDER BY address, reason LIMIT {m(4)}"
        )
        since = self._wall_now() if active_only else self._timestamp(_LONG_AGO)
        return await self._fetch_suppressions(sql, (project_id, *after, limit, since))
