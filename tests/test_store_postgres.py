"""PostgreSQL-only behaviour: migrations under concurrency, group commit, SKIP LOCKED, server time.

Everything the memory and SQLite stores share with PostgreSQL is in tests/test_store_contract.py.
These tests need a server: ``BULKSEND_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``); each test works in its own schema, dropped after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import anyio
import anyio.abc
import asyncpg
import pytest

from bulksend.errors import StoreError
from bulksend.store import LeaseLostError, NewRecipient, RowState
from bulksend.store.postgres import SCHEMA_VERSION, PostgresStore, redact_dsn
from tests.stores import POSTGRES_DSN, scratch_schema

DSN = POSTGRES_DSN
NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
CAMPAIGN = "c"


def recipients(n: int, start: int = 1) -> list[NewRecipient]:
    return [
        NewRecipient(row=i, email=f"u{i}@example.com", key=f"u{i}@example.com", payload={"i": i})
        for i in range(start, start + n)
    ]


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async with scratch_schema() as name:
        yield name


@pytest.fixture
async def admin() -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """A separate connection, for looking at the database and holding locks like another worker."""
    conn = await asyncpg.connect(DSN)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def store(schema: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(DSN, schema=schema, max_size=4)
    await s.open()
    await s.create_campaign(CAMPAIGN, {})
    try:
        yield s
    finally:
        await s.close()


async def send(store: PostgresStore, row_id: int) -> None:
    await store.mark_sending(row_id, started_at=NOW, correlation="c")


class RowLock:
    """Another transaction holding one outbox row locked, so a write to it waits until ``release``."""

    def __init__(self, conn: asyncpg.Connection[asyncpg.Record], schema: str) -> None:
        self.conn = conn
        self.schema = schema
        self.tx = conn.transaction()

    async def hold(self, row_id: int) -> None:
        await self.tx.start()
        await self.conn.execute(f'SELECT 1 FROM "{self.schema}".recipients WHERE id = $1 FOR UPDATE', row_id)

    async def release(self) -> None:
        await self.tx.commit()


@pytest.fixture
def lock(admin: asyncpg.Connection[asyncpg.Record], schema: str) -> RowLock:
    return RowLock(admin, schema)


async def admitted(store: PostgresStore, n: int) -> list[int]:
    """The ids of ``n`` new rows of the campaign."""
    return [r.id for r in await store.admit(CAMPAIGN, recipients(n))]


async def stall_flush(tg: anyio.abc.TaskGroup, store: PostgresStore, lock: RowLock, row_id: int) -> None:
    """Lock the row and start a write of it: the flush that write leads waits on the lock, so the
    writes started after it queue up until ``lock.release()``."""
    await lock.hold(row_id)
    tg.start_soon(lambda: store.mark_sending(row_id, started_at=NOW, correlation="first"))
    await anyio.wait_all_tasks_blocked()


# -- schema and connection -------------------------------------------------------------------
async def test_workers_starting_together_migrate_once(
    schema: str, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Six stores opening one new schema at once apply each migration exactly once and all work."""
    stores = [PostgresStore(DSN, schema=schema, max_size=1) for _ in range(6)]
    async with anyio.create_task_group() as tg:
        for s in stores:
            tg.start_soon(s.open)
    try:
        await stores[0].create_campaign("shared", {})
        for s in stores:
            assert await s.get_campaign("shared") is not None
    finally:
        for s in stores:
            await s.close()
    versions = await admin.fetch(f'SELECT version FROM "{schema}".schema_version ORDER BY version')
    assert [r["version"] for r in versions] == list(range(1, SCHEMA_VERSION + 1))


async def test_newer_schema_is_refused(schema: str, admin: asyncpg.Connection[asyncpg.Record]) -> None:
    """A schema migrated by a newer bulksend is refused instead of being misread."""
    async with PostgresStore(DSN, schema=schema):
        pass
    await admin.execute(f'INSERT INTO "{schema}".schema_version (version) VALUES ($1)', SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="newer"):
        await PostgresStore(DSN, schema=schema).open()


async def test_schemas_are_separate_stores(schema: str, store: PostgresStore) -> None:
    """Two schemas in one database do not see each other's campaigns."""
    other = PostgresStore(DSN, schema=f"{schema}_b")
    try:
        await other.open()
        assert await other.get_campaign(CAMPAIGN) is None
        assert [c.id for c in await store.list_campaigns()] == [CAMPAIGN]
    finally:
        await other.close()
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_b" CASCADE')
        finally:
            await conn.close()


async def test_unreachable_server_error_hides_password() -> None:
    """Failing to connect raises StoreError whose text and the store's repr never show the password."""
    with anyio.fail_after(30):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()  # a port nobody listens on: connection refused at once
    s = PostgresStore(f"postgresql://bulksend:hunter2-secret@127.0.0.1:{port}/outbox", min_size=1)
    assert "hunter2-secret" not in repr(s)
    with pytest.raises(StoreError) as caught:
        await s.open()
    assert "hunter2-secret" not in str(caught.value)
    assert "****" in str(caught.value)


def test_redact_dsn() -> None:
    """redact_dsn masks passwords in the userinfo and in a password= query parameter."""
    assert redact_dsn("postgresql://u:pw@h:5432/db") == "postgresql://u:****@h:5432/db"
    assert redact_dsn("postgresql://u@h/db?password=pw&sslmode=require") == (
        "postgresql://u@h/db?password=****&sslmode=require"
    )
    assert redact_dsn("postgresql://h/db") == "postgresql://h/db"


# -- group commit ----------------------------------------------------------------------------
async def test_writes_queued_behind_a_flush_share_one_commit(store: PostgresStore, lock: RowLock) -> None:
    """Writes that queue while a flush is in progress are committed together, in one transaction."""
    ids = await admitted(store, 41)
    before = store.commits
    async with anyio.create_task_group() as tg:
        # The first write leads a flush that waits on the locked row…
        await stall_flush(tg, store, lock, ids[0])
        # …and these forty queue up behind it.
        for row_id in ids[1:]:
            tg.start_soon(send, store, row_id)
        await anyio.wait_all_tasks_blocked()
        await lock.release()
    assert store.commits - before == 2
    assert await store.counts(CAMPAIGN) == {"sending": 41}


async def test_failures_in_a_batch_fail_alone(store: PostgresStore, lock: RowLock) -> None:
    """In one group commit, an illegal transition, an unknown row and a stale lease fail; the rest commits."""
    ids = await admitted(store, 6)
    await store.mark_sending(ids[1], started_at=NOW, correlation="c")
    [held] = await store.claim(CAMPAIGN, worker_id="w1", limit=1, lease_s=30)
    assert held.id == ids[0]
    await lock.hold(ids[5])
    outcomes: dict[str, BaseException | None] = {}

    async def attempt(name: str, call: Callable[[], Awaitable[object]]) -> None:
        try:
            await call()
        except StoreError as exc:
            outcomes[name] = exc
        else:
            outcomes[name] = None

    async with anyio.create_task_group() as tg:
        tg.start_soon(attempt, "blocker", lambda: store.mark_skipped(ids[5], reason="x"))
        await anyio.wait_all_tasks_blocked()
        calls = {
            "stale": lambda: store.mark_sending(ids[0], started_at=NOW, correlation="c", lease_token=99),
            "illegal": lambda: store.mark_submitted(ids[4], email_id="e4", message_id="m", submitted_at=NOW),
            "unknown": lambda: store.mark_retry(10**9, reason="x"),
            "ok_submit": lambda: store.mark_submitted(ids[1], email_id="e", message_id="m", submitted_at=NOW),
            "ok_send": lambda: store.mark_sending(ids[2], started_at=NOW, correlation="c"),
            "ok_reject": lambda: store.mark_rejected(ids[3], reason="bad"),
        }
        for name, call in calls.items():
            tg.start_soon(attempt, name, call)
        await anyio.wait_all_tasks_blocked()
        commits_before_batch = store.commits
        await lock.release()
    assert store.commits - commits_before_batch == 2  # the blocker's flush, then one for the batch
    assert isinstance(outcomes["stale"], LeaseLostError)
    assert "illegal transition" in str(outcomes["illegal"])
    assert "no outbox row" in str(outcomes["unknown"])
    assert (outcomes["ok_submit"], outcomes["ok_send"], outcomes["ok_reject"], outcomes["blocker"]) == (
        None,
        None,
        None,
        None,
    )
    states = {r.id: r.state async for r in store.iter_rows(CAMPAIGN)}
    assert states == {
        ids[0]: RowState.PENDING,
        ids[1]: RowState.SUBMITTED,
        ids[2]: RowState.SENDING,
        ids[3]: RowState.REJECTED,
        ids[4]: RowState.PENDING,
        ids[5]: RowState.SKIPPED,
    }


async def test_two_writes_of_one_row_keep_their_order(store: PostgresStore, lock: RowLock) -> None:
    """Two queued writes of the same row go to separate batches, applied in call order."""
    ids = await admitted(store, 2)
    async with anyio.create_task_group() as tg:
        await stall_flush(tg, store, lock, ids[1])
        tg.start_soon(lambda: store.mark_sending(ids[0], started_at=NOW, correlation="c"))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(lambda: store.mark_submitted(ids[0], email_id="e", message_id="m", submitted_at=NOW))
        await anyio.wait_all_tasks_blocked()
        await lock.release()
    row = await store.get_row(ids[0])
    assert row is not None
    assert (row.state, row.email_id) == (RowState.SUBMITTED, "e")


async def test_cancelled_waiter_write_still_happens(store: PostgresStore, lock: RowLock) -> None:
    """A caller cancelled after its write was queued does not undo it: the write is committed later."""
    ids = await admitted(store, 2)
    async with anyio.create_task_group() as tg:
        await stall_flush(tg, store, lock, ids[0])
        scopes: list[anyio.CancelScope] = []

        async def queued() -> None:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                await store.mark_sending(ids[1], started_at=NOW, correlation="gone")

        tg.start_soon(queued)
        await anyio.wait_all_tasks_blocked()
        scopes[0].cancel()
        await anyio.wait_all_tasks_blocked()
        assert scopes[0].cancelled_caught
        await lock.release()
    await store.close()  # writes what nobody is left to lead
    await store.open()
    row = await store.get_row(ids[1])
    assert row is not None
    assert (row.state, row.correlation) == (RowState.SENDING, "gone")


async def test_without_group_commit_each_write_commits_alone(schema: str) -> None:
    """group_commit=False runs every per-row write in its own transaction."""
    async with PostgresStore(DSN, schema=schema, group_commit=False) as s:
        await s.create_campaign(CAMPAIGN, {})
        ids = await admitted(s, 30)
        before = s.commits
        async with anyio.create_task_group() as tg:
            for row_id in ids:
                tg.start_soon(send, s, row_id)
        assert s.commits - before == 30
        assert await s.counts(CAMPAIGN) == {"sending": 30}


# -- admission, claims, time -----------------------------------------------------------------
async def test_large_admit_is_one_commit_in_input_order(store: PostgresStore) -> None:
    """5,000 rows admitted in one call take one commit, and ids follow the input order."""
    before = store.commits
    rows = recipients(5000)
    rows.reverse()
    results = await store.admit(CAMPAIGN, rows)
    assert store.commits - before == 1
    assert [r.row for r in results] == [r.row for r in rows]
    assert [r.id for r in results] == sorted(r.id for r in results)
    assert await store.max_admitted_row(CAMPAIGN) == 5000


async def test_concurrent_admissions_of_one_campaign_keep_first_wins(
    schema: str, store: PostgresStore
) -> None:
    """Two workers admitting overlapping rows and keys at once: every key has exactly one pending owner."""
    other = PostgresStore(DSN, schema=schema)
    await other.open()
    try:
        shared_key = [
            NewRecipient(row=i, email=f"u{i}@example.com", key=f"k{i % 50}@example.com")
            for i in range(1, 201)
        ]
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.admit, CAMPAIGN, shared_key[:150])
            tg.start_soon(other.admit, CAMPAIGN, shared_key[50:])
    finally:
        await other.close()
    rows = [r async for r in store.iter_rows(CAMPAIGN)]
    assert len(rows) == 200
    owners = [str(r.key) for r in rows if r.state is RowState.PENDING]
    assert sorted(owners) == sorted({f"k{i}@example.com" for i in range(50)})


async def test_claim_skips_rows_locked_by_another_transaction(store: PostgresStore, lock: RowLock) -> None:
    """claim does not wait for a row another transaction holds (SKIP LOCKED): it takes the next ones."""
    ids = await admitted(store, 4)
    await lock.hold(ids[0])
    try:
        with anyio.fail_after(10):
            claimed = await store.claim(CAMPAIGN, worker_id="w1", limit=2, lease_s=30)
    finally:
        await lock.release()
    assert [r.id for r in claimed] == ids[1:3]


async def test_leases_use_the_server_clock_by_default(
    store: PostgresStore, admin: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Without an injected clock, a lease expires lease_s after the database server's now."""
    await store.admit(CAMPAIGN, recipients(1))
    before = await admin.fetchval("SELECT clock_timestamp()")
    [held] = await store.claim(CAMPAIGN, worker_id="w1", limit=1, lease_s=120)
    after = await admin.fetchval("SELECT clock_timestamp()")
    assert held.lease_expires_at is not None
    assert before + timedelta(seconds=120) <= held.lease_expires_at <= after + timedelta(seconds=120)
    assert await store.acquire_role(CAMPAIGN, "admit", worker_id="w1", ttl_s=60)
    assert not await store.acquire_role(CAMPAIGN, "admit", worker_id="w2", ttl_s=60)
