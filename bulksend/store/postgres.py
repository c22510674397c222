"""The outbox in PostgreSQL: one database shared by many bulksend workers on many machines.

Same protocol, state machine, dedupe and idempotency rules as the SQLite store (the contract suite
runs against both), plus row leases with fencing tokens and campaign roles (see
:mod:`bulksend.store.base`). Deployment: docs/scaling.md.

Every write runs in its own transaction, committed before the caller is told anything; deadlocks
and serialization failures are retried, other database errors become ``StoreError``. A connection
lost during ``COMMIT`` leaves the outcome unknown; the state machine tolerates it (a ``sending`` row
is always reconciled before it is sent again).

Group commit (``group_commit=True``): concurrent dispatch writes are queued; the first caller that
finds no flush in progress *leads*, writing everything queued in ONE transaction with one
``UPDATE … FROM unnest(…)`` per kind of write, so no background task is needed. A batch never holds
two writes of one row, which keeps per-row order that of the calls; a write that is unknown,
illegal or fenced off fails alone. Once queued, a write is carried out even if its caller is
cancelled; a leader cancelled mid-flush finishes the flush first (shielded).

Admission takes a transaction-scoped advisory lock per campaign, so concurrent admissions of one
campaign are serialised (first wins stays true) and different campaigns' are not. Leases and
roles use the server's clock (``statement_timestamp()``) unless a ``clock`` is injected (tests).
Everything lives in one schema (default ``bulksend``); ``MIGRATIONS`` is append-only and runs under
``pg_advisory_xact_lock``, so N workers starting at once apply each step exactly once, and a
database migrated by a newer bulksend is refused.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.lowlevel
import asyncpg
import orjson

from bulksend.errors import BulksendError, ConfigError, StoreError
from bulksend.store.base import (
    AdmitResult,
    CampaignRecord,
    CampaignState,
    RecipientRow,
    RowState,
)
from bulksend.store.migrations.postgres import MIGRATIONS, SCHEMA_VERSION, migrate
from bulksend.store.rules import (
    ROW_WRITES,
    TO_FINAL,
    admitted_as,
    check_finalisable,
    check_lease_args,
    checked_payloads,
    encode_json,
    final_values,
    row_write_refusal,
    utc,
    utc_or_none,
)
from bulksend.store.sql import (
    ALREADY_FINAL,
    CAMPAIGN_COLUMNS,
    ROW_COLUMN_LIST,
    ROW_COLUMNS,
    SqlStore,
    postgres_update,
)
from bulksend.suppression import SuppressionEntry

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SESSION_SETTINGS",
    "PostgresStore",
    "ReapedWorker",
    "WorkerRecord",
]

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    from bulksend.store.base import FinalUpdate, NewRecipient
    from bulksend.store.rules import RowWrite

    Connection: TypeAlias = PoolConnectionProxy[asyncpg.Record]

_T = TypeVar("_T")


WorkerState = Literal["running", "stopped", "dead"]


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker as the store knows it (``bulksend status``)."""

    worker_id: str
    campaign_id: str
    state: WorkerState
    """As recorded: ``running`` may be stale when the worker died and nobody reaped it yet."""
    alive: bool
    """Its session lock is held right now: its process and its connection to PostgreSQL live."""
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    info: dict[str, Any]
    stats: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReapedWorker:
    """A dead worker whose rows were taken back."""

    worker_id: str
    released: int
    """Claimed rows it never marked ``sending``: claimable by anyone at once."""
    expired: int
    """Its ``sending`` rows: their leases end now, and whoever claims them reconciles them."""


SESSION_SETTINGS: Final[dict[str, str]] = {
    # asyncpg prepares every statement once per connection. With the default plan cache mode,
    # PostgreSQL switches a statement to a generic plan after five runs and keeps it: planned while
    # the outbox was nearly empty, the batched ``mark_sending`` UPDATE stayed a sequential scan of
    # the whole table for the rest of the run. Custom plans cost some planning per statement and
    # always see the current table size (figures in benchmarks/README.md).
    "plan_cache_mode": "force_custom_plan",
    # A worker's machine that vanishes without closing its connections (power loss, partition) is
    # noticed by the server within about 25 s, which frees its session lock (see register_worker).
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}
"""Session settings of every store connection."""
ANALYZE_AFTER_ROWS: Final = 2_000
"""Admit this many rows more than the table held at its last ANALYZE, and at least as many again
as it held, and the admitting call runs ANALYZE: statistics follow a growing campaign at once
(in O(log n) ANALYZEs), instead of waiting for autovacuum."""

_R_COLUMNS: Final = ", ".join(f"r.{c}" for c in ROW_COLUMNS)  # for UPDATE … FROM … RETURNING
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Deadlocks and serialization failures are the database asking us to try again.
_RETRYABLE: Final = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
_TX_ATTEMPTS: Final = 4
# ``now`` in SQL: the injected clock's value when there is one, else the server's clock.
_NOW: Final = "COALESCE($%d::timestamptz, statement_timestamp())"


def _row(r: asyncpg.Record) -> RecipientRow:
    # Every row query selects ROW_COLUMNS (or r.<each>), in the order of RecipientRow's fields.
    v = list(r.values())
    v[6] = RowState(v[6])  # state
    v[7] = orjson.loads(v[7])  # payload
    v[13] = v[13] or ""  # email_id: NULL until TEM gives one
    v[17] = tuple(orjson.loads(v[17]))  # flags
    return RecipientRow(*v)


def _campaign(r: asyncpg.Record) -> CampaignRecord:
    return CampaignRecord(
        id=r["id"],
        created_at=r["created_at"],
        state=CampaignState(r["state"]),
        spec=orjson.loads(r["spec"]),
        admitted_all=r["admitted_all"],
        state_reason=r["state_reason"],
    )


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``****`` (for reprs, logs and error messages)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparsable dsn>"
    if parts.scheme not in ("postgresql", "postgres"):
        return "<not a postgresql:// URL>"  # nothing in it can be trusted to hold no secret
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:****@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1****", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _rowcount(status: str) -> int:
    """The row count at the end of a command status such as ``UPDATE 3``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


@dataclass(eq=False, slots=True)
class _RowOp:
    """One queued per-row write and, once flushed, its outcome."""

    write: RowWrite
    row_id: int
    lease_token: int | None
    values: tuple[Any, ...]
    done: bool = False
    error: BaseException | None = None


@dataclass(slots=True)
class _FlushOutcome:
    written: set[int] = field(default_factory=set)
    errors: dict[int, BaseException] = field(default_factory=dict)


class PostgresStore(SqlStore):
    """The outbox state machine in PostgreSQL, shared by many workers (see the module docstring).

    :param dsn: a libpq connection URI, ``postgresql://user[:password]@host[:port]/database``.
    :param min_size: connections the pool keeps open.
    :param max_size: most connections the pool opens (the group-commit leader uses one at a time;
        reads, claims, admissions and ``mark_final`` use the others).
    :param schema: the PostgreSQL schema holding the tables (created if missing). Different
        schemas in one database are independent stores.
    :param clock: ``now`` for leases, roles and campaign creation times; default: the server's
        clock (one clock for every worker).
    :param group_commit: batch concurrent per-row writes into one transaction (default True).
        False runs each write in its own transaction (for comparison and debugging).
    :param max_batch_ops: most per-row writes in one group-commit transaction.
    :param command_timeout_s: how long one statement may run before it fails (None: no limit).
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        schema: str = "bulksend",
        clock: Callable[[], datetime] | None = None,
        group_commit: bool = True,
        max_batch_ops: int = 1024,
        command_timeout_s: float | None = 60.0,
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ConfigError(
                f"PostgreSQL schema name {schema!r} is not valid: use letters, digits and '_' (at most 63)"
            )
        if not 1 <= min_size <= max_size:
            raise ConfigError(f"need 1 <= min_size <= max_size, got {min_size} and {max_size}")
        if max_batch_ops < 1:
            raise ConfigError(f"max_batch_ops must be >= 1, got {max_batch_ops}")
        self._dsn = dsn
        self.schema = schema
        self._s = f'"{schema}"'
        self._min_size = min_size
        self._max_size = max_size
        self._clock = clock
        self.group_commit = group_commit
        self._max_batch_ops = max_batch_ops
        self._command_timeout_s = command_timeout_s
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._accepting = False
        self._commits = 0
        self._lock_conns: dict[str, asyncpg.Connection[asyncpg.Record]] = {}
        """worker id → the connection holding that worker's session lock (see register_worker)."""
        self._unanalyzed = 0
        """Rows this instance admitted since its last ANALYZE of the outbox."""
        self._analyzed_rows = 0.0
        """The outbox's row count at that ANALYZE (``pg_class.reltuples``)."""
        self._queue: deque[_RowOp] = deque()
        self._flushing = False
        self._flush_done = anyio.Event()
        self._recipients = f"{self._s}.recipients"
        self._campaigns = f"{self._s}.campaigns"
        self._roles = f"{self._s}.roles"
        self._suppressions = f"{self._s}.suppressions"
        self._update_sql = {w: postgres_update(w, self._recipients) for w in ROW_WRITES}

    def __repr__(self) -> str:
        return f"PostgresStore({redact_dsn(self._dsn)!r}, schema={self.schema!r})"

    @property
    def dsn(self) -> str:
        """The connection URI with any password masked."""
        return redact_dsn(self._dsn)

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, create the schema or apply missing migrations. Idempotent."""
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=self._command_timeout_s,
                server_settings=SESSION_SETTINGS,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.dsn}: {self._scrub(_describe(exc))}"
            ) from None
        try:
            async with pool.acquire() as conn:
                await migrate(conn, self.schema)
            self._commits += 1
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await pool.close()
            if isinstance(exc, BulksendError) or not isinstance(exc, Exception):
                raise
            raise StoreError(f"cannot set up the store schema {self.schema!r}: {_describe(exc)}") from None
        self._pool = pool
        self._accepting = True
        self._queue = deque()
        self._flushing = False
        self._flush_done = anyio.Event()

    async def close(self) -> None:
        """Write everything still queued, then close every connection. Idempotent."""
        pool = self._pool
        if pool is None:
            return
        self._accepting = False
        with anyio.CancelScope(shield=True):
            # Writes queued by callers that were cancelled while waiting still belong to the store.
            while self._queue or self._flushing:
                if self._flushing:
                    await self._flush_done.wait()
                else:
                    await self._lead()
            self._pool = None
            await pool.close()
            for conn in self._lock_conns.values():
                await _close_quietly(conn)
            self._lock_conns.clear()

    def _scrub(self, text: str) -> str:
        """``text`` without the DSN's password, should a driver message ever quote it."""
        try:
            password = urlsplit(self._dsn).password
        except ValueError:
            password = None
        return text.replace(password, "****") if password else text

    async def _idle(self) -> None:
        await anyio.lowlevel.checkpoint()
        self._require_pool()

    def _require_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None or not self._accepting:
            raise StoreError("the store is not open")
        return self._pool

    def _now(self) -> datetime | None:
        """The injected clock's now (aware UTC), or None: the SQL then uses the server's clock."""
        return None if self._clock is None else utc(self._clock())

    # -- plumbing ----------------------------------------------------------------------------
    async def _transaction(self, fn: Callable[[Connection], Awaitable[_T]], *, flushing: bool = False) -> _T:
        """Run ``fn`` in one transaction, retried on deadlock/serialization failure; count the commit.

        Shielded: once started, a write runs to its end even if the caller is cancelled, so the
        caller's cancellation can never leave a connection in an unknown transaction state.
        ``flushing``: a group-commit flush, which ``close()`` still runs after refusing new writes.
        """
        pool = self._pool if flushing else self._require_pool()
        if pool is None:
            raise StoreError("the store is not open")
        with anyio.CancelScope(shield=True):
            for attempt in range(1, _TX_ATTEMPTS + 1):
                try:
                    async with pool.acquire() as conn, conn.transaction():
                        result = await fn(conn)
                except _RETRYABLE:
                    if attempt == _TX_ATTEMPTS:
                        raise StoreError(
                            f"PostgreSQL kept aborting the transaction (deadlock or serialization "
                            f"failure) after {attempt} attempts; nothing written"
                        ) from None
                    continue
                except BulksendError:
                    raise
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    raise StoreError(f"PostgreSQL write failed: {_describe(exc)}") from None
                self._commits += 1
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    # The statements of SqlStore: PostgreSQL's parameters and row decoding.
    @staticmethod
    def _mark(n: int) -> str:
        return f"${n}"

    async def _fetch_rows(self, sql: str, args: tuple[Any, ...]) -> list[RecipientRow]:
        async def op(conn: Connection) -> list[RecipientRow]:
            return [_row(r) for r in await conn.fetch(sql, *args)]

        return await self._read(op)

    async def _fetch_campaigns(self, sql: str, args: tuple[Any, ...]) -> list[CampaignRecord]:
        async def op(conn: Connection) -> list[CampaignRecord]:
            return [_campaign(r) for r in await conn.fetch(sql, *args)]

        return await self._read(op)

    async def _fetch_value(self, sql: str, args: tuple[Any, ...]) -> Any:
        async def op(conn: Connection) -> Any:
            return await conn.fetchval(sql, *args)

        return await self._read(op)

    async def _execute(self, sql: str, args: tuple[Any, ...]) -> int:
        async def tx(conn: Connection) -> int:
            return _rowcount(await conn.execute(sql, *args))

        return await self._transaction(tx)

    def _wall_clock(self) -> datetime:
        return self._now() or datetime.now(UTC)

    _LEAST = "LEAST"
    _GREATEST = "GREATEST"

    async def _execute_many(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        async def tx(conn: Connection) -> None:
            await conn.executemany(sql, params)

        await self._transaction(tx)

    async def _fetch_suppressions(self, sql: str, args: tuple[Any, ...]) -> list[SuppressionEntry]:
        async def op(conn: Connection) -> list[SuppressionEntry]:
            return [SuppressionEntry(*r) for r in await conn.fetch(sql, *args)]

        return await self._read(op)

    async def _read(self, fn: Callable[[Connection], Awaitable[_T]]) -> _T:
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn:
                return await fn(conn)
        except BulksendError:
            raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"PostgreSQL read failed: {_describe(exc)}") from None

    # -- group commit ------------------------------------------------------------------------
    _timestamp = staticmethod(utc)

    async def _row_write(
        self, write: RowWrite, row_id: int, values: tuple[Any, ...], lease_token: int | None
    ) -> None:
        """Queue ``write`` of one row for the next group commit and await that commit."""
        self._require_pool()
        # Cancellation point before queuing: a caller cancelled here wrote nothing.
        await anyio.lowlevel.checkpoint()
        self._require_pool()
        op = _RowOp(write, row_id, lease_token, values)
        if not self.group_commit:
            await self._flush([op])
        else:
            self._queue.append(op)
            while not op.done:
                if self._flushing:
                    # A cancelled waiter leaves its op queued: the next leader (or close) writes it.
                    await self._flush_done.wait()
                else:
                    await self._lead()
        if op.error is not None:
            raise op.error

    async def _lead(self) -> None:
        """Flush one batch from the queue as the leader, then wake every waiter."""
        self._flushing = True
        try:
            with anyio.CancelScope(shield=True):
                # One pass of the event loop first: callers already on their way join this batch.
                await anyio.lowlevel.checkpoint()
                batch = self._take_batch()
                if batch:
                    await self._flush(batch)
        finally:
            self._flushing = False
            done, self._flush_done = self._flush_done, anyio.Event()
            done.set()

    def _take_batch(self) -> list[_RowOp]:
        batch: list[_RowOp] = []
        rows: set[int] = set()
        queue = self._queue
        while queue and len(batch) < self._max_batch_ops:
            if queue[0].row_id in rows:
                break  # a second write of one row waits for the next batch: per-row order holds
            op = queue.popleft()
            rows.add(op.row_id)
            batch.append(op)
        return batch

    async def _flush(self, batch: list[_RowOp]) -> None:
        """Write ``batch`` in one transaction; every op ends ``done`` with a result or an error."""
        by_write: dict[RowWrite, list[_RowOp]] = {}
        for op in batch:
            by_write.setdefault(op.write, []).append(op)

        async def tx(conn: Connection) -> _FlushOutcome:
            outcome = _FlushOutcome()
            failed: list[_RowOp] = []
            for write, ops in by_write.items():
                columns: list[list[Any]] = [[op.row_id for op in ops], [op.lease_token for op in ops]]
                columns += [[op.values[i] for op in ops] for i in range(len(write.columns))]
                updated = await conn.fetch(self._update_sql[write], *columns)
                outcome.written.update(r["id"] for r in updated)
                failed += [op for op in ops if op.row_id not in outcome.written]
            if failed:
                # Explain each refusal from the row as it stands (nothing of these ops was written).
                found = {
                    r["id"]: r
                    for r in await conn.fetch(
                        f"SELECT id, state, lease_token, lease_owner FROM {self._s}.recipients "
                        "WHERE id = ANY($1::bigint[])",
                        [op.row_id for op in failed],
                    )
                }
                for op in failed:
                    r = found.get(op.row_id)
                    outcome.errors[op.row_id] = row_write_refusal(
                        op.write,
                        op.row_id,
                        op.lease_token,
                        None if r is None else (r["state"], r["lease_token"], r["lease_owner"]),
                    )
            return outcome

        try:
            outcome = await self._transaction(tx, flushing=True)
        except BaseException as exc:
            # Every op of the batch must end done, or its caller would wait for it forever.
            err = exc if isinstance(exc, BulksendError) else StoreError(f"PostgreSQL write failed: {exc}")
            for op in batch:
                op.error, op.done = err, True
            if not isinstance(exc, Exception):
                raise
            return
        # Only now, with the commit done, may any caller learn that its write succeeded.
        for op in batch:
            op.error = outcome.errors.get(op.row_id)
            op.done = True

    # -- campaigns ---------------------------------------------------------------------------
    async def create_campaign(self, campaign_id: str, spec: dict[str, Any]) -> CampaignRecord:
        """Create the campaign, or return the existing one unchanged (resume)."""
        blob = encode_json(spec, f"spec of campaign {campaign_id!r}").decode()
        now = self._now()

        async def tx(conn: Connection) -> CampaignRecord:
            await conn.execute(
                f"INSERT INTO {self._s}.campaigns (id, created_at, state, spec) "
                f"VALUES ($1, {_NOW % 2}, $3, $4::jsonb) ON CONFLICT (id) DO NOTHING",
                campaign_id,
                now,
                CampaignState.RUNNING.value,
                blob,
            )
            found = await conn.fetchrow(
                f"SELECT {CAMPAIGN_COLUMNS} FROM {self._s}.campaigns WHERE id = $1", campaign_id
            )
            assert found is not None
            return _campaign(found)

        return await self._transaction(tx)

    # -- admission ---------------------------------------------------------------------------
    async def admit(self, campaign_id: str, rows: Sequence[NewRecipient]) -> list[AdmitResult]:
        """Insert rows durably in one commit; idempotent on ``row``; first pending row with a key wins it.

        One multi-row INSERT for the whole call, under a per-campaign advisory lock.
        """
        # Encoded here, before any round trip, so a bad payload fails with nothing written.
        blobs = [blob.decode() for blob in checked_payloads(rows)]
        rows = list(rows)
        s = self._s
        inserted_count = 0

        async def tx(conn: Connection) -> list[AdmitResult]:
            # Concurrent admissions of one campaign take turns: the dedupe decision below reads
            # which keys are taken, then inserts; two interleaved callers could both take a key.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"bulksend:admit:{self.schema}:{campaign_id}",
            )
            if await conn.fetchval(f"SELECT 1 FROM {s}.campaigns WHERE id = $1", campaign_id) is None:
                raise StoreError(f"unknown campaign {campaign_id!r}")
            done: dict[int, AdmitResult] = {}
            # One unique-index probe per wanted value (LATERAL … LIMIT 1 is never flattened into a
            # join). ``= ANY(array)`` would let the planner, misled by statistics taken when the
            # campaign was small, scan the whole campaign on every call: quadratic admission.
            for rec in await conn.fetch(
                "SELECT r.id, r.input_row, r.state, r.reason FROM unnest($2::bigint[]) AS u(n) "
                f"CROSS JOIN LATERAL (SELECT id, input_row, state, reason FROM {s}.recipients "
                "WHERE campaign_id = $1 AND input_row = u.n LIMIT 1) AS r",
                campaign_id,
                sorted({r.row for r in rows}),
            ):
                done[rec["input_row"]] = AdmitResult(
                    id=rec["id"], row=rec["input_row"], state=RowState(rec["state"]), reason=rec["reason"]
                )
            keys = sorted({r.key for r in rows if r.state is RowState.PENDING and r.key is not None})
            owners: dict[str, int] = {}
            if keys:
                for rec in await conn.fetch(
                    "SELECT r.dedupe_key, r.input_row FROM unnest($2::text[]) AS u(k) "
                    f"CROSS JOIN LATERAL (SELECT dedupe_key, input_row FROM {s}.recipients "
                    "WHERE campaign_id = $1 AND dedupe_key = u.k LIMIT 1) AS r",
                    campaign_id,
                    keys,
                ):
                    owners[rec["dedupe_key"]] = rec["input_row"]
            # Decide every new row's state in input order (first wins), then insert them at once.
            planned: dict[int, tuple[RowState, str]] = {}
            cols: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [])
            for r, blob in zip(rows, blobs, strict=True):
                if r.row in done or r.row in planned:
                    continue
                state, reason, dedupe = admitted_as(r, owners)
                planned[r.row] = (state, reason)
                for col, value in zip(
                    cols, (r.row, r.email, r.name, r.key, dedupe, state.value, reason, blob), strict=True
                ):
                    col.append(value)
            if planned:
                inserted = await conn.fetch(
                    f"INSERT INTO {s}.recipients (campaign_id, input_row, email, name, recipient_key, "
                    "dedupe_key, state, reason, payload) "
                    "SELECT $1, u.input_row, u.email, u.name, u.recipient_key, u.dedupe_key, u.state, "
                    "u.reason, u.payload::jsonb "
                    "FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "
                    "$8::text[], $9::text[]) WITH ORDINALITY "
                    "AS u(input_row, email, name, recipient_key, dedupe_key, state, reason, payload, n) "
                    # Ids follow the input order, as in the other stores.
                    "ORDER BY u.n RETURNING id, input_row",
                    campaign_id,
                    *cols,
                )
                nonlocal inserted_count
                inserted_count = len(inserted)
                for rec in inserted:
                    state, reason = planned[rec["input_row"]]
                    done[rec["input_row"]] = AdmitResult(
                        id=rec["id"], row=rec["input_row"], state=state, reason=reason
                    )
            return [done[r.row] for r in rows]

        results = await self._transaction(tx)
        self._unanalyzed += inserted_count
        if self._unanalyzed >= max(ANALYZE_AFTER_ROWS, self._analyzed_rows):
            await self._analyze()
        return results

    async def _analyze(self) -> None:
        """Refresh the outbox's statistics, so that plans made from now on see its real size.

        Best effort: statistics only steer plans, so a failure (say, a role that does not own the
        table) is not the admitting caller's error; autovacuum still analyzes later.
        """
        self._unanalyzed = 0
        with anyio.CancelScope(shield=True):
            try:
                async with self._require_pool().acquire() as conn:
                    await conn.execute(f"ANALYZE {self._s}.recipients")
                    rows = await conn.fetchval(
                        "SELECT reltuples FROM pg_class WHERE oid = $1::regclass", f"{self._s}.recipients"
                    )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return
        self._analyzed_rows = max(0.0, float(rows or 0))

    # -- dispatch (the mark_* methods are StoreBase's, group-committed) ------------------------
    async def mark_final(self, updates: Sequence[FinalUpdate]) -> None:
        """submitted/sending → final, the whole batch in one statement and one commit, all or nothing.

        Rows already final are left as they are (the tracker may learn a final status twice); when
        one row appears twice in ``updates``, the first wins. Not fenced; ends the rows' leases.
        """
        firsts: dict[int, FinalUpdate] = {}
        for u in updates:
            firsts.setdefault(u.id, u)
        batch = list(firsts.values())
        if not batch:
            await self._idle()
            return
        values = [final_values(u, utc_or_none) for u in batch]
        columns = [[u.id for u in batch], *([v[i] for v in values] for i in range(len(TO_FINAL.columns)))]
        s = self._s

        async def tx(conn: Connection) -> None:
            updated = await conn.fetch(self._update_sql[TO_FINAL], *columns)
            if len(updated) == len(batch):
                return
            done = {r["id"] for r in updated}
            missing = [u.id for u in batch if u.id not in done]
            states = {
                r["id"]: r["state"]
                for r in await conn.fetch(
                    f"SELECT id, state FROM {s}.recipients WHERE id = ANY($1::bigint[])", missing
                )
            }
            # Raising rolls the whole batch back.
            check_finalisable(((row_id, states.get(row_id)) for row_id in missing), ALREADY_FINAL)

        await self._transaction(tx)

    # -- leases ------------------------------------------------------------------------------
    async def _claim(
        self, campaign_id: str, worker_id: str, limit: int, lease_s: float, wanted: list[str]
    ) -> list[RecipientRow]:
        # ``SELECT … ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED`` inside the ``UPDATE … RETURNING``:
        # concurrent claimers skip each other's rows instead of waiting or taking them twice.
        s = self._s
        state_filter = "state = $3" if len(wanted) == 1 else "state = ANY($3::text[])"
        sql = (
            f"UPDATE {s}.recipients AS r SET lease_owner = $2, "
            f"lease_expires_at = {_NOW % 4} + $5::float8 * interval '1 second', "
            "lease_token = r.lease_token + 1 "
            f"FROM (SELECT id FROM {s}.recipients WHERE campaign_id = $1 AND {state_filter} "
            f"AND (lease_owner = '' OR lease_expires_at <= {_NOW % 4}) "
            "ORDER BY id LIMIT $6 FOR UPDATE SKIP LOCKED) AS c "
            f"WHERE r.id = c.id RETURNING {_R_COLUMNS}"
        )
        now = self._now()

        async def tx(conn: Connection) -> list[RecipientRow]:
            found = await conn.fetch(
                sql,
                campaign_id,
                worker_id,
                wanted[0] if len(wanted) == 1 else wanted,
                now,
                float(lease_s),
                limit,
            )
            return sorted((_row(r) for r in found), key=lambda row: row.id)

        return await self._transaction(tx)

    async def _renew(self, worker_id: str, row_ids: list[int], lease_s: float) -> set[int]:
        now = self._now()

        async def tx(conn: Connection) -> set[int]:
            found = await conn.fetch(
                f"UPDATE {self._s}.recipients "
                f"SET lease_expires_at = {_NOW % 3} + $4::float8 * interval '1 second' "
                "WHERE id = ANY($1::bigint[]) AND lease_owner = $2 RETURNING id",
                row_ids,
                worker_id,
                now,
                float(lease_s),
            )
            return {r["id"] for r in found}

        return await self._transaction(tx)

    async def _release(self, worker_id: str, row_ids: list[int]) -> None:
        async def tx(conn: Connection) -> None:
            await conn.execute(
                f"UPDATE {self._s}.recipients SET lease_owner = '', lease_expires_at = NULL "
                "WHERE id = ANY($1::bigint[]) AND lease_owner = $2",
                row_ids,
                worker_id,
            )

        await self._transaction(tx)

    async def _acquire_role(self, campaign_id: str, role: str, worker_id: str, ttl_s: float) -> bool:
        now = self._now()

        async def tx(conn: Connection) -> bool:
            # One upsert, atomic under concurrency: insert, or take over when the holder is us or
            # its lease has run out.
            found = await conn.fetchval(
                f"INSERT INTO {self._s}.roles AS ro (campaign_id, role, owner, expires_at) "
                f"VALUES ($1, $2, $3, {_NOW % 4} + $5::float8 * interval '1 second') "
                "ON CONFLICT (campaign_id, role) DO UPDATE "
                "SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at "
                f"WHERE ro.owner = EXCLUDED.owner OR ro.expires_at <= {_NOW % 4} RETURNING ro.owner",
                campaign_id,
                role,
                worker_id,
                now,
                float(ttl_s),
            )
            return found is not None

        return await self._transaction(tx)

    # -- workers -----------------------------------------------------------------------------
    def _worker_lock_key(self, worker_id: str) -> str:
        return f"bulksend:worker:{self.schema}:{worker_id}"

    async def register_worker(
        self, worker_id: str, *, campaign_id: str = "", info: dict[str, Any] | None = None
    ) -> ReapedWorker | None:
        """Announce a live worker: take its session lock on a connection of its own, record it.

        The lock is the proof of life: PostgreSQL frees it when the worker's process dies (its
        socket closes) or its machine vanishes (TCP keepalives), and :meth:`reap_dead_workers`
        run by any other worker then finds it free. Raises ``StoreError`` if a live worker already
        uses ``worker_id``. What an earlier, dead run of this worker id still held is taken back
        at once (returned as a :class:`ReapedWorker`; None if there was nothing).
        """
        check_lease_args(worker_id, 1.0)
        self._require_pool()
        old = self._lock_conns.pop(worker_id, None)
        if old is not None:
            await _close_quietly(old)
        try:
            # Named, so that pg_stat_activity shows which connection is which worker's.
            name = f"bulksend worker {worker_id}"[:63]
            conn = await asyncpg.connect(
                self._dsn, server_settings={**SESSION_SETTINGS, "application_name": name}
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.dsn}: {self._scrub(_describe(exc))}"
            ) from None
        try:
            # Another worker reaping this id holds the lock for a moment (one transaction): retry
            # for a few seconds before concluding that a live worker uses it.
            for _ in range(30):
                if await conn.fetchval(
                    "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", self._worker_lock_key(worker_id)
                ):
                    break
                await anyio.sleep(0.1)
            else:
                raise StoreError(
                    f"worker id {worker_id!r} is in use by a live worker on this store; give each "
                    "worker its own --worker-id"
                )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _close_quietly(conn)
            raise
        self._lock_conns[worker_id] = conn
        # We hold the lock: any lease still owned by this id is a dead earlier run's.
        reaped = await self._take_back(worker_id, campaign_id, mark_dead=False)
        blob = encode_json(info or {}, "worker info").decode()
        now = self._now()

        async def tx(c: Connection) -> None:
            await c.execute(
                f"INSERT INTO {self._s}.workers AS w (worker_id, campaign_id, state, started_at, "
                f"heartbeat_at, info) VALUES ($1, $2, 'running', {_NOW % 3}, {_NOW % 3}, $4::jsonb) "
                "ON CONFLICT (worker_id) DO UPDATE SET campaign_id = EXCLUDED.campaign_id, "
                "state = 'running', started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, "
                "stopped_at = NULL, info = EXCLUDED.info, stats = '{}'",
                worker_id,
                campaign_id,
                now,
                blob,
            )

        await self._transaction(tx)
        return reaped if reaped.released or reaped.expired else None

    async def heartbeat_worker(self, worker_id: str, *, stats: dict[str, Any] | None = None) -> None:
        """Record that the worker lives, with its counters; re-take its lock if its connection dropped.

        Raises ``StoreError`` when the worker is not registered by this store instance.
        """
        conn = self._lock_conns.get(worker_id)
        if conn is None:
            raise StoreError(f"worker {worker_id!r} is not registered")
        if conn.is_closed():
            # The server restarted or the connection broke: the lock is gone, and another worker
            # may have taken our rows back (our writes for them then fail on their fencing tokens).
            record = await self._worker_info(worker_id)
            await self.register_worker(
                worker_id, campaign_id=record[0] if record else "", info=record[1] if record else None
            )
        blob = encode_json(stats or {}, "worker stats").decode()
        await self._execute(
            f"UPDATE {self._s}.workers SET heartbeat_at = {_NOW % 2}, stats = $3::jsonb, "
            "state = 'running', stopped_at = NULL WHERE worker_id = $1",
            (worker_id, self._now(), blob),
        )

    async def unregister_worker(self, worker_id: str, *, stats: dict[str, Any] | None = None) -> None:
        """A clean stop: record it ``stopped`` (with its last counters) and free its lock."""
        conn = self._lock_conns.pop(worker_id, None)
        blob = encode_json(stats or {}, "worker stats").decode()
        try:
            await self._execute(
                f"UPDATE {self._s}.workers SET state = 'stopped', stopped_at = {_NOW % 2}, "
                f"heartbeat_at = {_NOW % 2}, stats = $3::jsonb WHERE worker_id = $1",
                (worker_id, self._now(), blob),
            )
        finally:
            if conn is not None:
                with anyio.CancelScope(shield=True):
                    await _close_quietly(conn)

    async def reap_dead_workers(self, *, exclude: Sequence[str] = ()) -> list[ReapedWorker]:
        """Find workers recorded ``running`` whose lock is free (dead), mark them ``dead`` and take
        their rows back: claimed rows never marked ``sending`` become claimable at once; the leases
        of their ``sending`` rows end now, so that another worker claims and reconciles them.

        Cheap when nobody died: one read, and one lock probe per other running worker.
        """
        skip = sorted(set(exclude) | set(self._lock_conns))

        async def op(conn: Connection) -> list[tuple[str, str]]:
            found = await conn.fetch(
                f"SELECT worker_id, campaign_id FROM {self._s}.workers WHERE state = 'running' "
                "AND worker_id <> ALL($1::text[]) ORDER BY worker_id",
                skip,
            )
            return [(r["worker_id"], r["campaign_id"]) for r in found]

        reaped: list[ReapedWorker] = []
        for worker_id, campaign_id in await self._read(op):
            got = await self._take_back(worker_id, campaign_id, mark_dead=True)
            if got.worker_id:
                reaped.append(got)
        return reaped

    async def _take_back(self, worker_id: str, campaign_id: str, *, mark_dead: bool) -> ReapedWorker:
        """Release ``worker_id``'s claimed rows and end its ``sending`` leases (in ``campaign_id``,
        or in every campaign if empty).

        ``mark_dead``: probe its lock first (in this transaction, so it cannot register meanwhile)
        and do nothing if it is held; the returned record then has an empty ``worker_id``.
        """
        s = self._s
        now = self._now()

        async def tx(conn: Connection) -> ReapedWorker:
            if mark_dead:
                free = await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))",
                    self._worker_lock_key(worker_id),
                )
                if not free:
                    return ReapedWorker("", 0, 0)
                status = await conn.execute(
                    f"UPDATE {s}.workers SET state = 'dead', stopped_at = {_NOW % 2} "
                    "WHERE worker_id = $1 AND state = 'running'",
                    worker_id,
                    now,
                )
                if _rowcount(status) == 0:
                    return ReapedWorker("", 0, 0)  # reaped by another worker meanwhile
            # ``$2 = ''`` is decided when the (custom) plan is made: with a campaign, the
            # (campaign_id, state, id) index finds the rows.
            released = await conn.execute(
                f"UPDATE {s}.recipients SET lease_owner = '', lease_expires_at = NULL "
                "WHERE lease_owner = $1 AND state = 'pending' AND ($2 = '' OR campaign_id = $2)",
                worker_id,
                campaign_id,
            )
            expired = await conn.execute(
                f"UPDATE {s}.recipients SET lease_expires_at = {_NOW % 3} "
                "WHERE lease_owner = $1 AND state = 'sending' AND ($2 = '' OR campaign_id = $2) "
                f"AND lease_expires_at > {_NOW % 3}",
                worker_id,
                campaign_id,
                now,
            )
            # Its roles (admit, track) go to the next worker that asks, instead of after their TTL.
            await conn.execute(f"DELETE FROM {s}.roles WHERE owner = $1", worker_id)
            return ReapedWorker(worker_id, _rowcount(released), _rowcount(expired))

        return await self._transaction(tx)

    async def _worker_info(self, worker_id: str) -> tuple[str, dict[str, Any]] | None:
        async def op(conn: Connection) -> tuple[str, dict[str, Any]] | None:
            found = await conn.fetchrow(
                f"SELECT campaign_id, info FROM {self._s}.workers WHERE worker_id = $1", worker_id
            )
            return None if found is None else (found["campaign_id"], orjson.loads(found["info"]))

        return await self._read(op)

    async def list_workers(self, campaign_id: str | None = None) -> list[WorkerRecord]:
        """Every worker recorded (of one campaign if given), with whether it is alive right now.

        Liveness is probed with the worker's lock in a transaction of its own, which frees the
        probe at once: looking changes nothing (reaping is :meth:`reap_dead_workers`'s job).
        """
        mine = set(self._lock_conns)

        async def op(conn: Connection) -> list[WorkerRecord]:
            found = await conn.fetch(
                f"SELECT worker_id, campaign_id, state, started_at, heartbeat_at, stopped_at, info, stats "
                f"FROM {self._s}.workers WHERE ($1::text IS NULL OR campaign_id = $1) ORDER BY worker_id",
                campaign_id,
            )
            out: list[WorkerRecord] = []
            for r in found:
                alive = r["worker_id"] in mine
                if not alive and r["state"] == "running":
                    async with conn.transaction():
                        alive = not await conn.fetchval(
                            "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))",
                            self._worker_lock_key(r["worker_id"]),
                        )
                out.append(
                    WorkerRecord(
                        worker_id=r["worker_id"],
                        campaign_id=r["campaign_id"],
                        state=r["state"],
                        alive=alive,
                        started_at=r["started_at"],
                        heartbeat_at=r["heartbeat_at"],
                        stopped_at=r["stopped_at"],
                        info=orjson.loads(r["info"]),
                        stats=orjson.loads(r["stats"]),
                    )
                )
            return out

        return await self._read(op)

    async def recent_rate(self, campaign_id: str, *, window_s: float = 10.0) -> float:
        """Emails of the campaign TEM accepted per second over the last ``window_s`` (its submission
        times, as the workers recorded them)."""

        async def op(conn: Connection) -> float:
            found = await conn.fetchval(
                f"SELECT COUNT(*) FROM {self._s}.recipients WHERE campaign_id = $1 "
                f"AND submitted_at >= {_NOW % 2} - $3::float8 * interval '1 second'",
                campaign_id,
                self._now(),
                float(window_s),
            )
            return int(found) / window_s

        return await self._read(op)

    # -- reads -------------------------------------------------------------------------------
    async def rows_by_email_id(self, campaign_id: str, email_ids: Sequence[str]) -> dict[str, RecipientRow]:
        """The rows of the campaign holding these TEM email ids (unknown ids are absent)."""
        # Probe the email-id index once per id (OFFSET 0 keeps the subquery from being merged
        # into a join where stale statistics could make the planner walk the whole campaign).
        sql = (
            f"SELECT {_R_COLUMNS} FROM unnest($1::text[]) AS e(eid) "
            f"CROSS JOIN LATERAL (SELECT {ROW_COLUMN_LIST} FROM {self._s}.recipients "
            "WHERE email_id = e.eid OFFSET 0) AS r WHERE r.campaign_id = $2"
        )
        rows = await self._rows_with(sql, sorted({e for e in email_ids if e}), campaign_id)
        return {row.email_id: row for row in rows}

    async def rows_by_keys(self, campaign_id: str, keys: Sequence[str]) -> dict[str, RecipientRow]:
        """The rows of the campaign that own these dedupe keys (keys nobody owns are absent)."""
        sql = (
            f"SELECT {_R_COLUMNS} FROM {self._s}.recipients r "
            "WHERE r.dedupe_key = ANY($1::text[]) AND r.campaign_id = $2"
        )
        rows = await self._rows_with(sql, sorted(set(keys)), campaign_id)
        return {row.key: row for row in rows if row.key is not None}

    async def _rows_with(self, sql: str, wanted: list[str], campaign_id: str) -> list[RecipientRow]:
        """The rows ``sql`` finds for the values ``wanted`` ($1, an array) in the campaign ($2)."""
        if not wanted:
            await self._idle()
            return []
        return await self._fetch_rows(sql, (wanted, campaign_id))

    async def counts(self, campaign_id: str) -> dict[str, int]:
        """Number of rows by state, and of final rows by status as ``status:<s>`` (zeros omitted)."""

        async def op(conn: Connection) -> dict[str, int]:
            out: dict[str, int] = {}
            for r in await conn.fetch(
                f"SELECT state, status, COUNT(*) AS n FROM {self._s}.recipients WHERE campaign_id = $1 "
                "GROUP BY state, status",
                campaign_id,
            ):
                out[r["state"]] = out.get(r["state"], 0) + r["n"]
                if r["state"] == RowState.FINAL.value:
                    key = f"status:{r['status']}"
                    out[key] = out.get(key, 0) + r["n"]
            return out

        return await self._read(op)


async def _close_quietly(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Close a connection that may already be broken (closing it is all that is left to do)."""
    try:
        await conn.close(timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        conn.terminate()


def _describe(exc: BaseException) -> str:
    """An error's class and message, for StoreError texts (asyncpg messages carry no password)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
