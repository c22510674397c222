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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.lowlevel
import asyncpg
import orjson

from bulksend.errors import BulksendError, ConfigError, StoreError
from bulksend.store.base import (
    TRANSITIONS,
    AdmitResult,
    CampaignRecord,
    CampaignState,
    FinalUpdate,
    NewRecipient,
    RecipientRow,
    RowState,
)
from bulksend.store.memory import (
    FINALISABLE_STATES,
    check_lease_args,
    check_new_rows,
    check_transition,
    duplicate_reason,
    encode_json,
    final_problems,
    holds_lease,
    lease_lost,
    utc,
    utc_or_none,
)

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

    Connection: TypeAlias = PoolConnectionProxy[asyncpg.Record]

_T = TypeVar("_T")

# Ordered, append-only: MIGRATIONS[i] brings the schema from version i to i + 1. ``{s}`` is the
# quoted schema name.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # v1: campaigns, the outbox with its leases, campaign roles.
    (
        """CREATE TABLE {s}.campaigns (
            id           text PRIMARY KEY,
            created_at   timestamptz NOT NULL,
            state        text NOT NULL CHECK (state IN ('running', 'paused', 'canceled', 'finished')),
            spec         jsonb NOT NULL,
            admitted_all boolean NOT NULL DEFAULT false
        )""",
        """CREATE TABLE {s}.recipients (
            id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            campaign_id        text NOT NULL REFERENCES {s}.campaigns (id),
            input_row          bigint NOT NULL,
            email              text NOT NULL,
            name               text NOT NULL DEFAULT '',
            recipient_key      text,
            dedupe_key         text,
            state              text NOT NULL CHECK (state IN
                                   ('pending', 'sending', 'submitted', 'final', 'rejected', 'skipped')),
            reason             text NOT NULL DEFAULT '',
            payload            jsonb NOT NULL DEFAULT '{{}}',
            attempts           integer NOT NULL DEFAULT 0,
            attempt_started_at timestamptz,
            attempt_ended_at   timestamptz,
            correlation        text NOT NULL DEFAULT '',
            email_id           text,
            message_id         text NOT NULL DEFAULT '',
            submitted_at       timestamptz,
            status             text NOT NULL DEFAULT '',
            flags              jsonb NOT NULL DEFAULT '[]',
            status_details     text NOT NULL DEFAULT '',
            smtp_code          integer,
            smtp_message       text NOT NULL DEFAULT '',
            try_count          integer NOT NULL DEFAULT 0,
            final_at           timestamptz,
            lease_owner        text NOT NULL DEFAULT '',
            lease_token        bigint NOT NULL DEFAULT 0,
            lease_expires_at   timestamptz
        )""",
        "CREATE UNIQUE INDEX ux_recipients_campaign_row ON {s}.recipients (campaign_id, input_row)",
        # Only the owner of a key holds it in dedupe_key (as in the SQLite store).
        """CREATE UNIQUE INDEX ux_recipients_campaign_dedupe ON {s}.recipients (campaign_id, dedupe_key)
            WHERE dedupe_key IS NOT NULL""",
        # iter_rows by state and claim (which walks a state's rows in id order, skipping leased ones).
        "CREATE INDEX ix_recipients_campaign_state_id ON {s}.recipients (campaign_id, state, id)",
        "CREATE INDEX ix_recipients_campaign_id ON {s}.recipients (campaign_id, id)",
        "CREATE INDEX ix_recipients_email_id ON {s}.recipients (email_id) WHERE email_id IS NOT NULL",
        """CREATE TABLE {s}.roles (
            campaign_id text NOT NULL,
            role        text NOT NULL,
            owner       text NOT NULL,
            expires_at  timestamptz NOT NULL,
            PRIMARY KEY (campaign_id, role)
        )""",
    ),
    # v2: the outbox is updated 3-5 times per row within minutes of its insert. Free room in each
    # page lets the lease updates (claim, renew, release: no indexed column changes) stay HOT, and
    # autovacuum/ANALYZE run after 2 % of changed rows instead of 20 %: with the defaults, a
    # campaign left several dead row versions per row and statistics from when the table was empty
    # (figures in benchmarks/README.md).
    (
        """ALTER TABLE {s}.recipients SET (
            fillfactor = 80,
            autovacuum_vacuum_scale_factor = 0.02,
            autovacuum_analyze_scale_factor = 0.02,
            autovacuum_vacuum_threshold = 1000,
            autovacuum_analyze_threshold = 1000
        )""",
    ),
    # v3: workers on the store, for finding dead ones within seconds (see ``register_worker``) and
    # for ``bulksend status``. ``stats`` holds the worker's last reported counters, which outlive it.
    (
        """CREATE TABLE {s}.workers (
            worker_id    text PRIMARY KEY,
            campaign_id  text NOT NULL DEFAULT '',
            state        text NOT NULL CHECK (state IN ('running', 'stopped', 'dead')),
            started_at   timestamptz NOT NULL,
            heartbeat_at timestamptz NOT NULL,
            stopped_at   timestamptz,
            info         jsonb NOT NULL DEFAULT '{{}}',
            stats        jsonb NOT NULL DEFAULT '{{}}'
        )""",
    ),
)
SCHEMA_VERSION: Final[int] = len(MIGRATIONS)

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

_COLUMNS: Final = (
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
_ROW_COLUMNS: Final = ", ".join(_COLUMNS)
_R_COLUMNS: Final = ", ".join(f"r.{c}" for c in _COLUMNS)  # for UPDATE … FROM … RETURNING
_CAMPAIGN_COLUMNS: Final = "id, created_at, state, spec, admitted_all"
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Deadlocks and serialization failures are the database asking us to try again.
_RETRYABLE: Final = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
_TX_ATTEMPTS: Final = 4
# ``now`` in SQL: the injected clock's value when there is one, else the server's clock.
_NOW: Final = "COALESCE($%d::timestamptz, statement_timestamp())"


def _row(r: asyncpg.Record) -> RecipientRow:
    return RecipientRow(
        id=r["id"],
        campaign_id=r["campaign_id"],
        row=r["input_row"],
        email=r["email"],
        name=r["name"],
        key=r["recipient_key"],
        state=RowState(r["state"]),
        payload=orjson.loads(r["payload"]),
        reason=r["reason"],
        attempts=r["attempts"],
        attempt_started_at=r["attempt_started_at"],
        attempt_ended_at=r["attempt_ended_at"],
        correlation=r["correlation"],
        email_id=r["email_id"] or "",
        message_id=r["message_id"],
        submitted_at=r["submitted_at"],
        status=r["status"],
        flags=tuple(orjson.loads(r["flags"])),
        status_details=r["status_details"],
        smtp_code=r["smtp_code"],
        smtp_message=r["smtp_message"],
        try_count=r["try_count"],
        final_at=r["final_at"],
        lease_owner=r["lease_owner"],
        lease_token=r["lease_token"],
        lease_expires_at=r["lease_expires_at"],
    )


def _campaign(r: asyncpg.Record) -> CampaignRecord:
    return CampaignRecord(
        id=r["id"],
        created_at=r["created_at"],
        state=CampaignState(r["state"]),
        spec=orjson.loads(r["spec"]),
        admitted_all=r["admitted_all"],
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


# -- the per-row dispatch writes, batched ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Kind:
    """One kind of per-row write: a guarded ``UPDATE … FROM unnest(…)`` over a batch of rows."""

    name: str
    target: RowState | None
    """The state the row moves to; None: it stays ``sending`` (``mark_ambiguous``)."""
    sets: str
    """Assignments, reading this write's parameters as ``u.<param>``."""
    params: tuple[tuple[str, str], ...]
    """(name, SQL type) of each per-row parameter after the id and the lease token."""


_KINDS: Final[dict[str, _Kind]] = {
    k.name: k
    for k in (
        _Kind(
            "sending",
            RowState.SENDING,
            "attempts = r.attempts + 1, attempt_started_at = u.started_at, attempt_ended_at = NULL, "
            "correlation = u.correlation",
            (("started_at", "timestamptz"), ("correlation", "text")),
        ),
        _Kind(
            "submitted",
            RowState.SUBMITTED,
            "email_id = NULLIF(u.email_id, ''), message_id = u.message_id, submitted_at = u.submitted_at",
            (("email_id", "text"), ("message_id", "text"), ("submitted_at", "timestamptz")),
        ),
        _Kind(
            "ambiguous",
            None,
            "attempt_ended_at = u.ended_at, reason = u.reason",
            (("ended_at", "timestamptz"), ("reason", "text")),
        ),
        _Kind("retry", RowState.PENDING, "reason = u.reason", (("reason", "text"),)),
        _Kind("rejected", RowState.REJECTED, "reason = u.reason", (("reason", "text"),)),
        _Kind("skipped", RowState.SKIPPED, "reason = u.reason", (("reason", "text"),)),
    )
}


def _kind_sql(kind: _Kind, s: str) -> str:
    if kind.target is None:
        state_set = ""
        sources: tuple[str, ...] = (RowState.SENDING.value,)
    else:
        state_set = f"state = '{kind.target.value}', "
        sources = tuple(sorted(src.value for src, targets in TRANSITIONS.items() if kind.target in targets))
        if kind.target.is_terminal:
            # A finished row gives its dedupe key (rejected/skipped) and its lease up.
            state_set += "dedupe_key = NULL, lease_owner = '', lease_expires_at = NULL, "
    names = ["id", "lease_token", *(n for n, _ in kind.params)]
    types = ["bigint", "bigint", *(t for _, t in kind.params)]
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
    in_sources = ", ".join(f"'{v}'" for v in sources)
    # The fence and the state check are in one guarded UPDATE: atomic under concurrent claims.
    return (
        f"UPDATE {s}.recipients AS r SET {state_set}{kind.sets} "
        f"FROM unnest({arrays}) AS u({', '.join(names)}) "
        f"WHERE r.id = u.id AND r.state IN ({in_sources}) "
        "AND (u.lease_token IS NULL OR (r.lease_token = u.lease_token AND r.lease_owner <> '')) "
        "RETURNING r.id"
    )


@dataclass(eq=False, slots=True)
class _RowOp:
    """One queued per-row write and, once flushed, its outcome."""

    kind: _Kind
    row_id: int
    lease_token: int | None
    params: tuple[Any, ...]
    done: bool = False
    error: BaseException | None = None


@dataclass(slots=True)
class _FlushOutcome:
    written: set[int] = field(default_factory=set)
    errors: dict[int, BaseException] = field(default_factory=dict)


class PostgresStore:
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
        self._kind_sql = {name: _kind_sql(kind, self._s) for name, kind in _KINDS.items()}

    def __repr__(self) -> str:
        return f"PostgresStore({redact_dsn(self._dsn)!r}, schema={self.schema!r})"

    @property
    def dsn(self) -> str:
        """The connection URI with any password masked."""
        return redact_dsn(self._dsn)

    @property
    def commits(self) -> int:
        """Write transactions committed by this instance so far (group commit: far fewer than writes)."""
        return self._commits

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

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
                await self._migrate(conn)
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

    async def _migrate(self, conn: Connection) -> None:
        s = self._s
        async with conn.transaction():
            # Serialises every worker migrating this schema: each step is applied exactly once.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"bulksend:migrate:{self.schema}"
            )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.schema_version "
                "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval(f"SELECT COALESCE(MAX(version), 0) FROM {s}.schema_version")
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"PostgreSQL schema {self.schema!r} is at v{current}, newer than this bulksend "
                    f"supports (v{SCHEMA_VERSION}); upgrade bulksend"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    await conn.execute(statement.format(s=s))
                await conn.execute(f"INSERT INTO {s}.schema_version (version) VALUES ($1)", version)
        self._commits += 1

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
    async def _row_write(self, kind: str, row_id: int, lease_token: int | None, *params: Any) -> None:
        self._require_pool()
        # Cancellation point before queuing: a caller cancelled here wrote nothing.
        await anyio.lowlevel.checkpoint()
        self._require_pool()
        op = _RowOp(_KINDS[kind], row_id, lease_token, params)
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
        by_kind: dict[str, list[_RowOp]] = {}
        for op in batch:
            by_kind.setdefault(op.kind.name, []).append(op)

        async def tx(conn: Connection) -> _FlushOutcome:
            outcome = _FlushOutcome()
            failed: list[_RowOp] = []
            for name, ops in by_kind.items():
                kind = _KINDS[name]
                columns: list[list[Any]] = [[op.row_id for op in ops], [op.lease_token for op in ops]]
                columns += [[op.params[i] for op in ops] for i in range(len(kind.params))]
                updated = await conn.fetch(self._kind_sql[name], *columns)
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
                    outcome.errors[op.row_id] = _refusal(op, found.get(op.row_id))
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
                f"SELECT {_CAMPAIGN_COLUMNS} FROM {self._s}.campaigns WHERE id = $1", campaign_id
            )
            assert found is not None
            return _campaign(found)

        return await self._transaction(tx)

    async def get_campaign(self, campaign_id: str) -> CampaignRecord | None:
        async def op(conn: Connection) -> CampaignRecord | None:
            found = await conn.fetchrow(
                f"SELECT {_CAMPAIGN_COLUMNS} FROM {self._s}.campaigns WHERE id = $1", campaign_id
            )
            return None if found is None else _campaign(found)

        return await self._read(op)

    async def list_campaigns(self) -> list[CampaignRecord]:
        """Every campaign, oldest first."""

        async def op(conn: Connection) -> list[CampaignRecord]:
            found = await conn.fetch(
                f"SELECT {_CAMPAIGN_COLUMNS} FROM {self._s}.campaigns ORDER BY created_at, id"
            )
            return [_campaign(r) for r in found]

        return await self._read(op)

    async def set_campaign_state(self, campaign_id: str, state: CampaignState) -> None:
        value = CampaignState(state).value

        async def tx(conn: Connection) -> None:
            status = await conn.execute(
                f"UPDATE {self._s}.campaigns SET state = $1 WHERE id = $2", value, campaign_id
            )
            if _rowcount(status) == 0:
                raise StoreError(f"unknown campaign {campaign_id!r}")

        await self._transaction(tx)

    async def mark_admitted_all(self, campaign_id: str) -> None:
        """Record that every row of the source is admitted."""

        async def tx(conn: Connection) -> None:
            status = await conn.execute(
                f"UPDATE {self._s}.campaigns SET admitted_all = true WHERE id = $1", campaign_id
            )
            if _rowcount(status) == 0:
                raise StoreError(f"unknown campaign {campaign_id!r}")

        await self._transaction(tx)

    # -- admission ---------------------------------------------------------------------------
    async def admit(self, campaign_id: str, rows: Sequence[NewRecipient]) -> list[AdmitResult]:
        """Insert rows durably in one commit; idempotent on ``row``; first pending row with a key wins it.

        One multi-row INSERT for the whole call, under a per-campaign advisory lock.
        """
        check_new_rows(rows)
        # Encoded here, before any round trip, so a bad payload fails with nothing written.
        blobs = [encode_json(r.payload, f"payload of row {r.row}").decode() for r in rows]
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
                state, reason, dedupe = r.state, r.reason, None
                if state is RowState.PENDING and r.key is not None:
                    owner = owners.get(r.key)
                    if owner is None:
                        owners[r.key] = r.row
                        dedupe = r.key
                    else:
                        state, reason = RowState.SKIPPED, duplicate_reason(owner)
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

    async def max_admitted_row(self, campaign_id: str) -> int:
        """Highest admitted ``row`` (0 if none)."""

        async def op(conn: Connection) -> int:
            found = await conn.fetchval(
                f"SELECT COALESCE(MAX(input_row), 0) FROM {self._s}.recipients WHERE campaign_id = $1",
                campaign_id,
            )
            return int(found)

        return await self._read(op)

    # -- dispatch ----------------------------------------------------------------------------
    async def mark_sending(
        self, row_id: int, *, started_at: datetime, correlation: str, lease_token: int | None = None
    ) -> None:
        """pending → sending, attempts += 1, committed before returning: call it before the POST.

        Fenced by ``lease_token`` when given (``LeaseLostError``, nothing written). Group-committed.
        """
        await self._row_write("sending", row_id, lease_token, utc(started_at), correlation)

    async def mark_submitted(
        self,
        row_id: int,
        *,
        email_id: str,
        message_id: str,
        submitted_at: datetime,
        lease_token: int | None = None,
    ) -> None:
        """sending → submitted with TEM's email id. Fenced by ``lease_token``. Group-committed."""
        await self._row_write("submitted", row_id, lease_token, email_id, message_id, utc(submitted_at))

    async def mark_ambiguous(
        self, row_id: int, *, ended_at: datetime, reason: str, lease_token: int | None = None
    ) -> None:
        """Stay ``sending`` but record when the ambiguous attempt ended. Fenced. Group-committed."""
        await self._row_write("ambiguous", row_id, lease_token, utc(ended_at), reason)

    async def mark_retry(self, row_id: int, *, reason: str, lease_token: int | None = None) -> None:
        """sending → pending: reconciliation proved the email was not created. The lease stays."""
        await self._row_write("retry", row_id, lease_token, reason)

    async def mark_rejected(self, row_id: int, *, reason: str, lease_token: int | None = None) -> None:
        """pending/sending → rejected (the row gives its dedupe key and its lease up)."""
        await self._row_write("rejected", row_id, lease_token, reason)

    async def mark_skipped(self, row_id: int, *, reason: str, lease_token: int | None = None) -> None:
        """pending → skipped (the row gives its dedupe key and its lease up)."""
        await self._row_write("skipped", row_id, lease_token, reason)

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
            await anyio.lowlevel.checkpoint()
            self._require_pool()
            return
        columns: tuple[list[Any], ...] = (
            [u.id for u in batch],
            [str(u.status) for u in batch],
            [orjson.dumps([str(f) for f in u.flags]).decode() for u in batch],
            [u.status_details for u in batch],
            [u.smtp_code for u in batch],
            [u.smtp_message for u in batch],
            [u.try_count for u in batch],
            [utc_or_none(u.final_at) for u in batch],
            [u.reason for u in batch],
        )
        finalisable = ", ".join(f"'{st.value}'" for st in sorted(FINALISABLE_STATES))
        s = self._s

        async def tx(conn: Connection) -> None:
            updated = await conn.fetch(
                f"UPDATE {s}.recipients AS r SET state = 'final', status = u.status, flags = u.flags::jsonb, "
                "status_details = u.status_details, smtp_code = u.smtp_code, smtp_message = u.smtp_message, "
                "try_count = u.try_count, final_at = u.final_at, reason = u.reason, "
                "lease_owner = '', lease_expires_at = NULL "
                "FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::integer[], $6::text[], "
                "$7::integer[], $8::timestamptz[], $9::text[]) "
                "AS u(id, status, flags, status_details, smtp_code, smtp_message, try_count, final_at, "
                "reason) "
                f"WHERE r.id = u.id AND r.state IN ({finalisable}) RETURNING r.id",
                *columns,
            )
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
            problems: list[str] = []
            for row_id in missing:
                state = states.get(row_id)
                if state is None:
                    problems.append(f"row {row_id} (no such row)")
                elif state != RowState.FINAL.value:  # already final: the tracker learned it twice
                    problems.append(f"row {row_id} (state {state})")
            if problems:
                raise final_problems(problems)  # rolls the whole batch back

        await self._transaction(tx)

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
        """Lease up to ``limit`` unleased (or expired) rows in ``states``, lowest ids first; durable.

        ``SELECT … ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED`` inside the ``UPDATE … RETURNING``:
        concurrent claimers skip each other's rows instead of waiting or taking them twice.
        """
        check_lease_args(worker_id, lease_s)
        wanted = sorted({RowState(st).value for st in states})
        if limit <= 0 or not wanted:
            await anyio.lowlevel.checkpoint()
            self._require_pool()
            return []
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

    async def renew(self, *, worker_id: str, row_ids: Sequence[int], lease_s: float) -> set[int]:
        """Extend this worker's leases on these rows to now + ``lease_s``; the ids still this worker's."""
        check_lease_args(worker_id, lease_s)
        ids = sorted(set(row_ids))
        now = self._now()

        async def tx(conn: Connection) -> set[int]:
            found = await conn.fetch(
                f"UPDATE {self._s}.recipients "
                f"SET lease_expires_at = {_NOW % 3} + $4::float8 * interval '1 second' "
                "WHERE id = ANY($1::bigint[]) AND lease_owner = $2 RETURNING id",
                ids,
                worker_id,
                now,
                float(lease_s),
            )
            return {r["id"] for r in found}

        return await self._transaction(tx)

    async def release(self, *, worker_id: str, row_ids: Sequence[int]) -> None:
        """Give back this worker's leases on these rows (others' are left alone)."""
        if not worker_id:
            raise StoreError("worker_id must not be empty")
        ids = sorted(set(row_ids))

        async def tx(conn: Connection) -> None:
            await conn.execute(
                f"UPDATE {self._s}.recipients SET lease_owner = '', lease_expires_at = NULL "
                "WHERE id = ANY($1::bigint[]) AND lease_owner = $2",
                ids,
                worker_id,
            )

        await self._transaction(tx)

    async def acquire_role(self, campaign_id: str, role: str, *, worker_id: str, ttl_s: float) -> bool:
        """Take or renew the campaign role for ``ttl_s``; False if another live worker holds it."""
        check_lease_args(worker_id, ttl_s, "ttl_s")
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

    async def release_role(self, campaign_id: str, role: str, *, worker_id: str) -> None:
        """Give the role back if this worker holds it."""

        async def tx(conn: Connection) -> None:
            await conn.execute(
                f"DELETE FROM {self._s}.roles WHERE campaign_id = $1 AND role = $2 AND owner = $3",
                campaign_id,
                role,
                worker_id,
            )

        await self._transaction(tx)

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
        now = self._now()

        async def tx(c: Connection) -> None:
            await c.execute(
                f"UPDATE {self._s}.workers SET heartbeat_at = {_NOW % 2}, stats = $3::jsonb, "
                "state = 'running', stopped_at = NULL WHERE worker_id = $1",
                worker_id,
                now,
                blob,
            )

        await self._transaction(tx)

    async def unregister_worker(self, worker_id: str, *, stats: dict[str, Any] | None = None) -> None:
        """A clean stop: record it ``stopped`` (with its last counters) and free its lock."""
        conn = self._lock_conns.pop(worker_id, None)
        blob = encode_json(stats or {}, "worker stats").decode()
        now = self._now()

        async def tx(c: Connection) -> None:
            await c.execute(
                f"UPDATE {self._s}.workers SET state = 'stopped', stopped_at = {_NOW % 2}, "
                f"heartbeat_at = {_NOW % 2}, stats = $3::jsonb WHERE worker_id = $1",
                worker_id,
                now,
                blob,
            )

        try:
            await self._transaction(tx)
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
    async def get_row(self, row_id: int) -> RecipientRow | None:
        async def op(conn: Connection) -> RecipientRow | None:
            found = await conn.fetchrow(
                f"SELECT {_ROW_COLUMNS} FROM {self._s}.recipients WHERE id = $1", row_id
            )
            return None if found is None else _row(found)

        return await self._read(op)

    async def rows_by_email_id(self, campaign_id: str, email_ids: Sequence[str]) -> dict[str, RecipientRow]:
        """The rows of the campaign holding these TEM email ids (unknown ids are absent)."""
        wanted = sorted({e for e in email_ids if e})
        if not wanted:
            await anyio.lowlevel.checkpoint()
            self._require_pool()
            return {}

        async def op(conn: Connection) -> dict[str, RecipientRow]:
            # Probe the email-id index once per id (OFFSET 0 keeps the subquery from being merged
            # into a join where stale statistics could make the planner walk the whole campaign).
            found = await conn.fetch(
                f"SELECT {_R_COLUMNS} FROM unnest($1::text[]) AS e(eid) "
                f"CROSS JOIN LATERAL (SELECT {_ROW_COLUMNS} FROM {self._s}.recipients "
                "WHERE email_id = e.eid OFFSET 0) AS r WHERE r.campaign_id = $2",
                wanted,
                campaign_id,
            )
            return {row.email_id: row for row in map(_row, found)}

        return await self._read(op)

    async def rows_by_keys(self, campaign_id: str, keys: Sequence[str]) -> dict[str, RecipientRow]:
        """The rows of the campaign that own these dedupe keys (keys nobody owns are absent)."""
        wanted = sorted(set(keys))
        if not wanted:
            await anyio.lowlevel.checkpoint()
            self._require_pool()
            return {}

        async def op(conn: Connection) -> dict[str, RecipientRow]:
            found = await conn.fetch(
                f"SELECT {_R_COLUMNS} FROM {self._s}.recipients r "
                "WHERE r.campaign_id = $1 AND r.dedupe_key = ANY($2::text[])",
                campaign_id,
                wanted,
            )
            return {row.key: row for row in map(_row, found) if row.key is not None}

        return await self._read(op)

    async def iter_rows(
        self,
        campaign_id: str,
        *,
        states: Sequence[RowState] = (),
        after_id: int = 0,
        batch_size: int = 1000,
    ) -> AsyncIterator[RecipientRow]:
        """Rows of a campaign in ``id`` order, optionally only in ``states``; keyset pages on ``id``."""
        wanted = sorted({RowState(st).value for st in states})
        s = self._s
        if len(wanted) <= 1:
            state_filter = "AND state = $4" if wanted else ""
            sql = (
                f"SELECT {_ROW_COLUMNS} FROM {s}.recipients WHERE campaign_id = $1 AND id > $2 "
                f"{state_filter} ORDER BY id LIMIT $3"
            )
        else:
            # One index-ordered page per state, merged: a page costs O(states × batch) however
            # large the campaign is.
            parts = [
                f"(SELECT {_ROW_COLUMNS} FROM {s}.recipients WHERE campaign_id = $1 AND id > $2 "
                f"AND state = ${i} ORDER BY id LIMIT $3)"
                for i in range(4, 4 + len(wanted))
            ]
            sql = f"SELECT * FROM ({' UNION ALL '.join(parts)}) AS p ORDER BY id LIMIT $3"
        last_id = after_id
        while True:

            async def page(conn: Connection, after: int = last_id) -> list[RecipientRow]:
                return [_row(r) for r in await conn.fetch(sql, campaign_id, after, batch_size, *wanted)]

            rows = await self._read(page)
            for row in rows:
                yield row
            if len(rows) < batch_size:
                return
            last_id = rows[-1].id

    async def iter_outcomes(self, campaign_id: str, *, batch_size: int = 1000) -> AsyncIterator[RecipientRow]:
        """Every row of the campaign in input ``row`` order; keyset pages on ``row``."""
        sql = (
            f"SELECT {_ROW_COLUMNS} FROM {self._s}.recipients WHERE campaign_id = $1 AND input_row > $2 "
            "ORDER BY input_row LIMIT $3"
        )
        # Input rows are line numbers (>= 1 in practice); start below any bigint to be safe.
        last_row = -(2**63)
        while True:

            async def page(conn: Connection, after: int = last_row) -> list[RecipientRow]:
                return [_row(r) for r in await conn.fetch(sql, campaign_id, after, batch_size)]

            rows = await self._read(page)
            for row in rows:
                yield row
            if len(rows) < batch_size:
                return
            last_row = rows[-1].row

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


def _refusal(op: _RowOp, found: asyncpg.Record | None) -> BaseException:
    """Why a per-row write matched nothing: unknown row, stale lease, or illegal transition."""
    if found is None:
        return StoreError(f"no outbox row with id {op.row_id}")
    state = RowState(found["state"])
    if op.lease_token is not None and not holds_lease(
        op.lease_token, found["lease_token"], found["lease_owner"]
    ):
        return lease_lost(op.row_id, op.lease_token, found["lease_token"], found["lease_owner"])
    if op.kind.target is None:
        return StoreError(f"row {op.row_id}: mark_ambiguous needs state sending, not {state.value}")
    try:
        check_transition(op.row_id, state, op.kind.target)
    except StoreError as exc:
        return exc
    # Legal now, refused when the UPDATE ran: another transaction moved the row in between.
    return StoreError(f"row {op.row_id}: could not move to {op.kind.target.value} (changed concurrently)")


def _describe(exc: BaseException) -> str:
    """An error's class and message, for StoreError texts (asyncpg messages carry no password)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
