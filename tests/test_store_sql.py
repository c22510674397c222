"""The shared SQL core: every declared per-row write builds valid SQL in both dialects.

The SQLite statements are compiled against a freshly migrated file; the PostgreSQL ones are
prepared on the server (``BULKSEND_TEST_POSTGRES_DSN``, as in tests/test_store_postgres.py) in a
schema of their own, dropped after.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from pathlib import Path

import asyncpg
import pytest

from bulksend.store.base import TRANSITIONS, RowState
from bulksend.store.migrations import postgres as pg_migrations
from bulksend.store.migrations import sqlite as sqlite_migrations
from bulksend.store.rules import FINALISABLE_STATES, ROW_WRITES, TO_AMBIGUOUS, TO_FINAL, RowWrite
from bulksend.store.sql import postgres_update, sqlite_update

DSN = os.environ.get("BULKSEND_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


# The first 16 hex digits of the SHA-256 of each released step's statements (joined by NUL). A
# new step appends its digest here; a released one must never change.
@pytest.mark.parametrize(
    ("migrations", "released"),
    [
        (pg_migrations.MIGRATIONS, ("dbd98be1cfebf645", "308a68625643d617", "f95594930df62142")),
        (
            sqlite_migrations.MIGRATIONS,
            ("d516f14f15c298e5", "51bf81582bcf4702", "6edd5b8b4cbf4313", "71cb554e9df0bee3"),
        ),
    ],
    ids=["postgres", "sqlite"],
)
def test_released_migration_steps_keep_their_text(
    migrations: tuple[tuple[str, ...], ...], released: tuple[str, ...]
) -> None:
    """Steps built from the shared table declarations still say exactly what was released, so an
    edit of a declaration cannot change how an existing database was, or a new one is, migrated."""
    digests = tuple(hashlib.sha256("\0".join(step).encode()).hexdigest()[:16] for step in migrations)
    assert digests[: len(released)] == released


def _parameters(write: RowWrite, *, fenced: bool) -> int:
    return len(write.columns) + 1 + (1 if fenced else 0)


def test_every_write_starts_from_the_states_its_transitions_allow() -> None:
    """A write's source states are those TRANSITIONS lets into its target; mark_final's are the
    finalisable ones, and mark_ambiguous (no target) applies to ``sending`` rows only."""
    for write in ROW_WRITES:
        if write.target is None:
            assert write is TO_AMBIGUOUS
            assert write.sources == (RowState.SENDING,)
        else:
            assert set(write.sources) == {s for s, targets in TRANSITIONS.items() if write.target in targets}
    assert set(TO_FINAL.sources) == FINALISABLE_STATES
    assert len({w.name for w in ROW_WRITES}) == len(ROW_WRITES)


def test_every_write_compiles_in_sqlite(tmp_path: Path) -> None:
    """Each declared write, plain and fenced, is a statement SQLite accepts with as many parameters
    as the write has values, plus the row id and the lease token."""
    with sqlite3.connect(tmp_path / "o.db") as conn:
        for step in sqlite_migrations.MIGRATIONS:
            for statement in step:
                conn.execute(statement)
        for write in ROW_WRITES:
            for fenced in (False, True) if write.fenced else (False,):
                sql = sqlite_update(write, fenced=fenced)
                assert sql.count("?") == _parameters(write, fenced=fenced), sql
                conn.execute("EXPLAIN " + sql, [None] * sql.count("?"))


async def test_every_write_is_prepared_by_postgresql() -> None:
    """Each declared write is a statement PostgreSQL prepares, taking one array per value (the row
    ids and, when fenced, the lease tokens first) and returning the ids it moved."""
    schema = f"bulksend_test_{uuid.uuid4().hex}"
    conn = await asyncpg.connect(DSN)
    try:
        await pg_migrations.migrate(conn, schema)
        for write in ROW_WRITES:
            statement = await conn.prepare(postgres_update(write, f'"{schema}".recipients'))
            assert len(statement.get_parameters()) == _parameters(write, fenced=write.fenced)
            assert [a.name for a in statement.get_attributes()] == ["id"]
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.mark.parametrize("write", ROW_WRITES, ids=lambda w: w.name)
def test_a_finished_row_gives_its_lease_up_and_a_dropped_one_its_key(write: RowWrite) -> None:
    """Moving into a terminal state ends the lease; into rejected or skipped also frees the key."""
    sql = sqlite_update(write)
    assert ("lease_owner = ''" in sql) == (write.target is not None and write.target.is_terminal)
    assert ("dedupe_key = NULL" in sql) == (write.target in (RowState.REJECTED, RowState.SKIPPED))
