"""SQLite-only behaviour: durability settings, group commit, crash survival, schema migrations."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import pytest
from anyio.streams.text import TextReceiveStream

from bulksend.errors import ConfigError, StoreError
from bulksend.sinks.outcomes import outcome_from_values, outcome_lines, outcome_of
from bulksend.store import FinalUpdate, LeaseLostError, NewRecipient, RowState, SqliteStore
from bulksend.store.base import OutcomeValuesSource
from bulksend.store.sqlite import _FINAL, _TO_SENDING, _TO_SUBMITTED, MIGRATIONS, SCHEMA_VERSION, Durability
from tests.stores import hard_bounce

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
REPO_ROOT = Path(__file__).resolve().parents[1]


def recipients(n: int) -> list[NewRecipient]:
    return [NewRecipient(row=i, email=f"u{i}@example.com", key=f"u{i}@example.com") for i in range(1, n + 1)]


async def opened(path: Path, *, durability: Durability = "full", busy_timeout_s: float = 10.0) -> SqliteStore:
    store = SqliteStore(path, durability=durability, busy_timeout_s=busy_timeout_s)
    await store.open()
    return store


async def opened_with_rows(path: Path, n: int) -> tuple[SqliteStore, list[int]]:
    """A store opened on ``path`` with campaign ``c`` of ``n`` rows, and the ids of the rows."""
    store = await opened(path)
    await store.create_campaign("c", {})
    return store, [r.id for r in await store.admit("c", recipients(n))]


def assert_fully_migrated(path: Path) -> set[str]:
    """Check that the file went through every migration and has the outbox's indexes; its tables."""
    with sqlite3.connect(path) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert {
        "ux_recipients_campaign_row",
        "ux_recipients_campaign_dedupe",
        "ix_recipients_campaign_state_id",
        "ix_recipients_campaign_id",
        "ix_recipients_email_id",
    } <= indexes
    return tables


class WriterHold:
    """Blocks the store's writer thread inside a write until released.

    It reaches into the store's private queueing on purpose: it is the only way to make "these
    writes were queued while the writer was busy" deterministic, with no sleeps.
    """

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.entered = threading.Event()
        self.gate = threading.Event()

    def _block(self, conn: sqlite3.Connection) -> None:
        self.entered.set()
        self.gate.wait()

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Queue the blocking write and return once the writer is stuck in it."""
        tg.start_soon(self.store._write, self._block)
        await anyio.to_thread.run_sync(self.entered.wait)

    def release(self) -> None:
        self.gate.set()


async def test_default_pragmas_are_wal_and_full(tmp_path: Path) -> None:
    """By default the writer runs in WAL mode with synchronous=FULL (2), and WAL persists in the file."""
    store = await opened(tmp_path / "o.db")
    try:
        assert await store.pragma("journal_mode") == "wal"
        assert await store.pragma("synchronous") == 2
        assert await store.pragma("foreign_keys") == 1
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "o.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_normal_durability_sets_synchronous_normal(tmp_path: Path) -> None:
    """durability="normal" runs the writer with synchronous=NORMAL (1)."""
    store = await opened(tmp_path / "o.db", durability="normal")
    try:
        assert await store.pragma("synchronous") == 1
    finally:
        await store.close()


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    """An unknown durability or an in-memory database is refused with ConfigError."""
    with pytest.raises(ConfigError):
        SqliteStore(tmp_path / "o.db", durability="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        SqliteStore(":memory:")
    with pytest.raises(ConfigError, match="commit_linger_s"):
        SqliteStore(tmp_path / "o.db", commit_linger_s=-0.001)
    with pytest.raises(ConfigError, match="commit_linger_s"):
        SqliteStore(tmp_path / "o.db", commit_linger_s=5)


async def test_pragma_name_is_checked(tmp_path: Path) -> None:
    """pragma() only takes a bare pragma name, never SQL."""
    store = await opened(tmp_path / "o.db")
    try:
        with pytest.raises(StoreError):
            await store.pragma("synchronous = OFF")
        assert await store.pragma("synchronous") == 2
    finally:
        await store.close()


async def test_reopen_existing_schema_is_idempotent(tmp_path: Path) -> None:
    """Reopening a v1 database applies no migration again and keeps the data."""
    path = tmp_path / "o.db"
    store = await opened(path)
    await store.create_campaign("c", {"v": 1})
    [res] = await store.admit("c", recipients(1))
    await store.close()
    for _ in range(2):
        store = await opened(path)
        assert (await store.get_row(res.id)) is not None
        await store.close()
    assert_fully_migrated(path)
    assert len(MIGRATIONS) == SCHEMA_VERSION


async def test_state_writes_need_no_temporary_btree_and_bad_states_are_still_refused(tmp_path: Path) -> None:
    """The v3 state CHECK is a chain of equalities: SQLite checks it without building a temporary
    b-tree on every write (as ``IN (…)`` costs), and still refuses a state that does not exist."""
    path = tmp_path / "o.db"
    store = await opened(path)
    await store.create_campaign("c", {})
    [res] = await store.admit("c", recipients(1))
    await store.close()
    with sqlite3.connect(path) as conn:
        for sql in (_TO_SENDING.plain, _TO_SUBMITTED.plain, _FINAL):
            program = [op for (_, op, *_rest) in conn.execute("EXPLAIN " + sql, [None] * sql.count("?"))]
            assert "OpenEphemeral" not in program, sql
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE recipients SET state = 'lost' WHERE id = ?", (res.id,))


async def test_v2_database_is_rebuilt_to_v3_with_every_column_kept(tmp_path: Path) -> None:
    """Opening a v2 file rebuilds ``recipients`` (v3) and keeps every row, column and index."""
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for version in (1, 2):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, '2026-01-01T00:00:00+00:00')", (version,))
        conn.execute(
            "INSERT INTO campaigns (id, created_at, state, spec) "
            "VALUES ('old', '2026-01-01T00:00:00.000000+00:00', 'running', '{}')"
        )
        conn.execute(
            "INSERT INTO recipients (id, campaign_id, input_row, email, name, recipient_key, state, "
            "payload, attempts, attempt_started_at, correlation, email_id, message_id, submitted_at, "
            "lease_owner, lease_token, lease_expires_at) VALUES (7, 'old', 3, 'a@example.com', 'Ada', "
            "'a@example.com', 'submitted', '{\"n\": 1}', 2, '2026-01-01T00:00:01.000000+00:00', 'corr', "
            "'e-1', 'm-1', '2026-01-01T00:00:02.000000+00:00', 'w1', 4, '2026-01-01T00:01:00.000000+00:00')"
        )
        conn.execute(
            "INSERT INTO recipients (id, campaign_id, input_row, email, recipient_key, dedupe_key, state) "
            "VALUES (8, 'old', 4, 'b@example.com', 'b@example.com', 'b@example.com', 'pending')"
        )
    store = await opened(path)
    try:
        row = await store.get_row(7)
        assert row is not None
        assert (row.row, row.email, row.name, row.state, row.payload, row.attempts) == (
            3,
            "a@example.com",
            "Ada",
            RowState.SUBMITTED,
            {"n": 1},
            2,
        )
        assert (row.correlation, row.email_id, row.message_id, row.lease_owner, row.lease_token) == (
            "corr",
            "e-1",
            "m-1",
            "w1",
            4,
        )
        assert row.submitted_at == datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC)
        assert row.lease_expires_at == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
        # The dedupe key kept its owner: a second recipient with that key is a skipped duplicate.
        [dup] = await store.admit("old", [NewRecipient(row=5, email="b@example.com", key="b@example.com")])
        assert dup.state is RowState.SKIPPED
        assert [r.id async for r in store.iter_rows("old", states=[RowState.PENDING])] == [8]
    finally:
        await store.close()
    assert "recipients_v3" not in assert_fully_migrated(path)


async def test_two_instances_open_one_new_file(tmp_path: Path) -> None:
    """Two stores opening the same new file at once apply the schema exactly once."""
    path = tmp_path / "o.db"
    stores = [SqliteStore(path), SqliteStore(path)]
    async with anyio.create_task_group() as tg:
        for s in stores:
            tg.start_soon(s.open)
    for s in stores:
        await s.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database migrated by a newer bulksend is refused instead of being misread."""
    path = tmp_path / "o.db"
    store = await opened(path)
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?, 'later')", (SCHEMA_VERSION + 1,)
        )
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore(path).open()


async def test_group_commit_one_transaction_for_queued_writes(tmp_path: Path) -> None:
    """Writes queued while the writer is busy are committed together in one transaction."""
    store = await opened(tmp_path / "o.db")
    try:
        await store.create_campaign("c", {})
        results = await store.admit("c", recipients(500))
        hold = WriterHold(store)
        async with anyio.create_task_group() as tg:
            await hold.start(tg)
            before = store.commits
            for res in results:
                tg.start_soon(partial(store.mark_sending, res.id, started_at=NOW, correlation="c"))
            await anyio.wait_all_tasks_blocked()  # every write is queued behind the held writer
            hold.release()
        # One commit for the held write, one for all 500 writes queued behind it.
        assert store.commits - before == 2
        assert await store.counts("c") == {"sending": 500}
    finally:
        await store.close()


@pytest.mark.parametrize("linger_s", [0.002, 0.0])
async def test_writes_queued_while_the_writer_lingers_share_its_commit(
    tmp_path: Path, linger_s: float
) -> None:
    """After a batch's first write the writer lingers; what is queued meanwhile joins that commit."""
    store = SqliteStore(tmp_path / "o.db", commit_linger_s=linger_s)
    lingering = threading.Event()
    gate = threading.Event()
    lingers: list[float] = []
    armed = threading.Event()

    def pause(seconds: float) -> None:
        if armed.is_set():
            lingers.append(seconds)
            lingering.set()
            gate.wait()

    store._pause = pause
    await store.open()
    try:
        await store.create_campaign("c", {})
        results = await store.admit("c", recipients(100))
        armed.set()
        before = store.commits
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(store.mark_sending, results[0].id, started_at=NOW, correlation="c"))
            if linger_s:
                await anyio.to_thread.run_sync(lingering.wait)  # the writer holds the first write
            for res in results[1:]:
                tg.start_soon(partial(store.mark_sending, res.id, started_at=NOW, correlation="c"))
            await anyio.wait_all_tasks_blocked()
            gate.set()
        assert await store.counts("c") == {"sending": 100}
        if linger_s:
            assert lingers == [linger_s]
            assert store.commits - before == 1  # the first write and the 99 queued during the linger
        else:
            assert lingers == []  # no linger: the writer never pauses
    finally:
        gate.set()
        await store.close()


async def test_outcome_rows_skip_the_payload_and_keep_the_rest(tmp_path: Path) -> None:
    """iter_outcomes leaves the payload (never shown in outcome lines) empty; iter_rows keeps it."""
    store = await opened(tmp_path / "o.db")
    try:
        await store.create_campaign("c", {})
        payload = {"first_name": "Ada", "code": 7}
        [res] = await store.admit(
            "c", [NewRecipient(row=1, email="ada@example.com", name="Ada", key="ada", payload=payload)]
        )
        await store.mark_sending(res.id, started_at=NOW, correlation="corr")
        await store.mark_submitted(res.id, email_id="e-1", message_id="m-1", submitted_at=NOW)
        [full] = [row async for row in store.iter_rows("c")]
        [outcome] = [row async for row in store.iter_outcomes("c")]
        assert full.payload == payload
        assert outcome.payload == {}
        assert outcome == dataclasses.replace(full, payload={})
    finally:
        await store.close()


async def test_outcome_values_give_the_same_lines_as_full_rows(tmp_path: Path) -> None:
    """The cheap outcome path (iter_outcome_values) writes exactly the lines the full rows give,
    in every state, with and without a fraction in the timestamps, across pages."""
    store = await opened(tmp_path / "o.db")
    try:
        assert isinstance(store, OutcomeValuesSource)
        await store.create_campaign("c", {})
        admitted = await store.admit(
            "c",
            [
                *(
                    NewRecipient(row=i, email=f"u{i}@example.com", name=f"U {i}", key=f"k{i}")
                    for i in range(1, 8)
                ),
                NewRecipient(row=8, email="bad", state=RowState.REJECTED, reason="invalid recipient address"),
                NewRecipient(row=9, email="u1@example.com", key="k1"),  # a duplicate: skipped
            ],
        )
        ids = [r.id for r in admitted]
        whole = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
        fraction = datetime(2026, 3, 4, 5, 6, 7, 120034, tzinfo=UTC)
        for row_id in ids[1:6]:
            await store.mark_sending(row_id, started_at=NOW, correlation=f"corr-{row_id}")
        for n, row_id in enumerate(ids[2:6]):
            await store.mark_submitted(
                row_id,
                email_id=f"e-{row_id}",
                message_id=f"m-{row_id}",
                submitted_at=(whole, fraction)[n % 2],
            )
        await store.mark_final(
            [
                FinalUpdate(id=ids[3], status="sent", try_count=1, final_at=whole),
                hard_bounce(ids[4], fraction),
                FinalUpdate(id=ids[5], status="unknown", final_at=fraction, reason="still not final"),
            ]
        )
        await store.mark_rejected(ids[6], reason="TEM refused the email")
        expected = [outcome_of(row, unfinished="try again") async for row in store.iter_outcomes("c")]
        assert {line["status"] for line in expected} == {"unknown", "sent", "failed", "rejected", "skipped"}
        assert [line async for line in outcome_lines(store, "c", unfinished="try again")] == expected
        paged = [page async for page in store.iter_outcome_values("c", batch_size=2)]
        assert [len(page) for page in paged] == [2, 2, 2, 2, 1]
        assert [outcome_from_values(v, unfinished="try again") for page in paged for v in page] == expected
        assert expected[3]["submitted_at"] == "2026-03-04T05:06:07.120034Z"
        assert expected[3]["final_at"] == "2026-03-04T05:06:07Z"
    finally:
        await store.close()


async def test_failed_operation_fails_only_itself(tmp_path: Path) -> None:
    """An illegal transition in a batch fails its own caller while the rest of the batch commits."""
    path = tmp_path / "o.db"
    store, ids = await opened_with_rows(path, 6)
    await store.mark_sending(ids[0], started_at=NOW, correlation="first")
    hold = WriterHold(store)
    outcomes: dict[int, str] = {}

    async def send(row_id: int) -> None:
        try:
            await store.mark_sending(row_id, started_at=NOW, correlation="second")
            outcomes[row_id] = "ok"
        except StoreError:
            outcomes[row_id] = "refused"

    async with anyio.create_task_group() as tg:
        await hold.start(tg)
        before = store.commits
        for row_id in [*ids, 999_999]:
            tg.start_soon(send, row_id)
        await anyio.wait_all_tasks_blocked()
        hold.release()
    assert store.commits - before == 2  # the refused ones were in the same transaction
    assert outcomes == {ids[0]: "refused", 999_999: "refused", **dict.fromkeys(ids[1:], "ok")}
    await store.close()
    store = await opened(path)
    try:
        first = await store.get_row(ids[0])
        assert first is not None
        assert (first.attempts, first.correlation) == (1, "first")
        assert await store.counts("c") == {"sending": 6}
    finally:
        await store.close()


async def test_mixed_row_writes_in_one_batch_each_get_their_own_outcome(tmp_path: Path) -> None:
    """Different dispatch writes, fenced or not, share one transaction; each refusal fails only itself."""
    store = await opened(tmp_path / "o.db")
    try:
        await store.create_campaign("c", {})
        ids = [r.id for r in await store.admit("c", recipients(8))]
        leased = await store.claim("c", worker_id="w", limit=2, lease_s=60)
        token = {r.id: r.lease_token for r in leased}
        for row_id in ids[2:6]:
            await store.mark_sending(row_id, started_at=NOW, correlation="c")
        hold = WriterHold(store)
        outcomes: dict[str, str] = {}

        async def write(name: str, call: Callable[[], Awaitable[None]]) -> None:
            try:
                await call()
                outcomes[name] = "ok"
            except LeaseLostError:
                outcomes[name] = "lease lost"
            except StoreError as exc:
                outcomes[name] = str(exc)

        writes: dict[str, Callable[[], Awaitable[None]]] = {
            "fenced send": partial(
                store.mark_sending, ids[0], started_at=NOW, correlation="f", lease_token=token[ids[0]]
            ),
            "stale send": partial(
                store.mark_sending, ids[1], started_at=NOW, correlation="f", lease_token=token[ids[1]] + 1
            ),
            "submit": partial(store.mark_submitted, ids[2], email_id="e2", message_id="m", submitted_at=NOW),
            "submit pending": partial(
                store.mark_submitted, ids[6], email_id="e6", message_id="m", submitted_at=NOW
            ),
            "ambiguous": partial(store.mark_ambiguous, ids[3], ended_at=NOW, reason="timeout"),
            "ambiguous pending": partial(store.mark_ambiguous, ids[7], ended_at=NOW, reason="timeout"),
            "retry": partial(store.mark_retry, ids[4], reason="not created"),
            "reject": partial(store.mark_rejected, ids[5], reason="4xx"),
            "skip unknown": partial(store.mark_skipped, 999_999, reason="canceled"),
        }
        async with anyio.create_task_group() as tg:
            await hold.start(tg)
            before = store.commits
            for name, call in writes.items():
                tg.start_soon(write, name, call)
            await anyio.wait_all_tasks_blocked()
            hold.release()
        assert store.commits - before == 2  # the held write, then all of these together
        assert outcomes == {
            "fenced send": "ok",
            "stale send": "lease lost",
            "submit": "ok",
            "submit pending": f"row {ids[6]}: illegal transition pending → submitted",
            "ambiguous": "ok",
            "ambiguous pending": f"row {ids[7]}: mark_ambiguous needs state sending, not pending",
            "retry": "ok",
            "reject": "ok",
            "skip unknown": "no outbox row with id 999999",
        }
        states = {r.id: (r.state, r.email_id, r.reason) async for r in store.iter_rows("c")}
        assert states == {
            ids[0]: (RowState.SENDING, "", ""),
            ids[1]: (RowState.PENDING, "", ""),
            ids[2]: (RowState.SUBMITTED, "e2", ""),
            ids[3]: (RowState.SENDING, "", "timeout"),
            ids[4]: (RowState.PENDING, "", "not created"),
            ids[5]: (RowState.REJECTED, "", "4xx"),
            ids[6]: (RowState.PENDING, "", ""),
            ids[7]: (RowState.PENDING, "", ""),
        }
    finally:
        await store.close()


async def test_locked_database_fails_writes_then_recovers(tmp_path: Path) -> None:
    """While another connection holds the write lock, writes fail with StoreError; afterwards they work."""
    path = tmp_path / "o.db"
    store = await opened(path, busy_timeout_s=0.05)
    try:
        await store.create_campaign("c", {})
        [res] = await store.admit("c", recipients(1))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="write transaction"):
                await store.mark_sending(res.id, started_at=NOW, correlation="c")
        finally:
            other.execute("ROLLBACK")
            other.close()
        await store.mark_sending(res.id, started_at=NOW, correlation="c")
        row = await store.get_row(res.id)
        assert row is not None
        assert row.attempts == 1
    finally:
        await store.close()


async def test_close_flushes_queued_writes(tmp_path: Path) -> None:
    """close() commits writes already queued before it stops the writer."""
    path = tmp_path / "o.db"
    store, ids = await opened_with_rows(path, 50)
    hold = WriterHold(store)
    async with anyio.create_task_group() as tg:
        await hold.start(tg)
        for row_id in ids:
            tg.start_soon(partial(store.mark_sending, row_id, started_at=NOW, correlation="c"))
        await anyio.wait_all_tasks_blocked()
        hold.release()
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM recipients WHERE state = 'sending'").fetchone()[0] == 50


CHILD = """
import sys
from datetime import UTC, datetime

import anyio

from bulksend.store import NewRecipient, SqliteStore


async def main(path: str) -> None:
    store = SqliteStore(path)
    await store.open()
    await store.create_campaign("c", {})
    rows = [NewRecipient(row=i, email=f"u{i}@example.com", key=f"u{i}@example.com") for i in range(1, 301)]
    results = await store.admit("c", rows)
    now = datetime.now(UTC)
    for res in results[:100]:
        await store.mark_sending(res.id, started_at=now, correlation=f"c{res.id}")
    print("done", flush=True)
    # Keep writing, so that the kill lands while commits are in flight.
    for res in results[100:]:
        await store.mark_sending(res.id, started_at=now, correlation=f"c{res.id}")
        print(f"ack {res.id}", flush=True)
    await anyio.sleep_forever()


anyio.run(main, sys.argv[1])
"""


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    """Every write a killed (-9) process saw acknowledged is in the database when it is reopened."""
    path = tmp_path / "o.db"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    lines: list[str] = []
    with anyio.fail_after(60):  # a guard against a hung child, not a timing assertion
        async with await anyio.open_process([sys.executable, "-c", CHILD, str(path)], env=env) as proc:
            assert proc.stdout is not None
            buffer = ""
            async for chunk in TextReceiveStream(proc.stdout):
                buffer += chunk
                *complete, buffer = buffer.split("\n")
                lines += complete
                if "done" in lines:
                    proc.kill()  # SIGKILL: no cleanup, no close(), no atexit
                    break
            assert "done" in lines, "the child exited before acknowledging its writes"
            await proc.wait()
            # Lines the child printed before it died are still in the pipe.
            async for chunk in TextReceiveStream(proc.stdout):
                buffer += chunk
            lines += buffer.split("\n")
    assert proc.returncode == -9
    acked = {int(line.split()[1]) for line in lines if line.startswith("ack ")}

    store = await opened(path)
    try:
        assert await store.max_admitted_row("c") == 300
        rows = {r.id: r async for r in store.iter_rows("c")}
        assert len(rows) == 300
        by_row = {r.row: r for r in rows.values()}
        for n in range(1, 101):
            assert by_row[n].state is RowState.SENDING
            assert by_row[n].correlation == f"c{by_row[n].id}"
        for row_id in acked:
            assert rows[row_id].state is RowState.SENDING
        # Unacknowledged writes may or may not have landed, but nothing else can have happened.
        assert {r.state for r in rows.values()} <= {RowState.PENDING, RowState.SENDING}
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
