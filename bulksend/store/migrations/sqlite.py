"""The SQLite store's schema migrations (see :mod:`bulksend.store.sqlite`, "Schema").

v1 is the outbox, v2 adds lease expiry and campaign roles, v3 rebuilds ``recipients`` with a
cheaper ``state`` CHECK (one copy of every row, once), v4 adds ``store_meta`` with the database's
random ``store_id``, v5 the ``suppressions`` list and the campaigns' ``state_reason``.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Final

from bulksend.store.migrations import (
    CAMPAIGN_COLUMNS,
    ROLE_COLUMNS,
    SQLITE_TYPES,
    SUPPRESSION_COLUMNS,
    column_names,
    create_table,
    outbox_columns,
    steps_to_apply,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

# Every column of ``recipients`` as of v2, named: the v3 rebuild copies them by name.
_V3_COLUMNS: Final = ", ".join(column_names(outbox_columns()))
# v3's ``state``: a chain of equalities rather than ``IN`` (see the step).
_V3_STATE: Final = (
    "NOT NULL CHECK (state = 'pending' OR state = 'sending'\n"
    "                                   OR state = 'submitted' OR state = 'final' OR state = 'rejected'\n"
    "                                   OR state = 'skipped')"
)

# The indexes of ``recipients``, made by v1 and again by v3's rebuild.
_OUTBOX_INDEXES: Final = (
    "CREATE UNIQUE INDEX ux_recipients_campaign_row ON recipients (campaign_id, input_row)",
    # Only the owner of a key holds it in dedupe_key (see the module docstring).
    """CREATE UNIQUE INDEX ux_recipients_campaign_dedupe ON recipients (campaign_id, dedupe_key)
            WHERE dedupe_key IS NOT NULL""",
    "CREATE INDEX ix_recipients_campaign_state_id ON recipients (campaign_id, state, id)",
    # (campaign_id) is (campaign_id, id) underneath: keyset pagination of iter_rows without states.
    "CREATE INDEX ix_recipients_campaign_id ON recipients (campaign_id)",
    "CREATE INDEX ix_recipients_email_id ON recipients (email_id) WHERE email_id IS NOT NULL",
)

# Ordered, append-only: MIGRATIONS[i] brings the schema from version i to i + 1.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # v1: campaigns and the outbox.
    (
        create_table("campaigns", CAMPAIGN_COLUMNS, SQLITE_TYPES),
        create_table("recipients", outbox_columns()[:-1], SQLITE_TYPES),
        *_OUTBOX_INDEXES,
    ),
    # v2: work leases (owner and token exist since v1; the expiry is new) and campaign roles.
    (
        "ALTER TABLE recipients ADD COLUMN lease_expires_at TEXT",
        create_table("roles", ROLE_COLUMNS, SQLITE_TYPES),
    ),
    # v3: the same outbox, its state CHECK written as a chain of equalities. SQLite evaluates
    # ``state IN (…)`` in a CHECK by building a temporary b-tree of the six values on every write
    # to ``state``: three times per email, about a sixth of the writer's CPU. A CHECK cannot be
    # altered in place, so the table is rebuilt (one copy of every row, once) with its indexes.
    (
        create_table("recipients_v3", outbox_columns(_V3_STATE), SQLITE_TYPES),
        f"INSERT INTO recipients_v3 ({_V3_COLUMNS}) SELECT {_V3_COLUMNS} FROM recipients",
        "DROP TABLE recipients",
        "ALTER TABLE recipients_v3 RENAME TO recipients",
        *_OUTBOX_INDEXES,
    ),
    # v4: the database's own id, which the send journal names (a replaced file is another id).
    (
        "CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO store_meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))))",
    ),
    # v5: the suppression list, per TEM project; why a campaign is in its state (a guardrail).
    (
        create_table("suppressions", SUPPRESSION_COLUMNS, SQLITE_TYPES),
        "ALTER TABLE campaigns ADD COLUMN state_reason TEXT NOT NULL DEFAULT ''",
    ),
)
SCHEMA_VERSION: Final[int] = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Apply the missing steps to the database of ``conn`` (the writer connection), in one transaction."""
    # BEGIN IMMEDIATE takes the write lock first, so two processes opening the same new file
    # cannot both apply v1.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        for version in steps_to_apply(current, SCHEMA_VERSION, f"{path}: the database schema"):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, datetime.now(UTC).isoformat(timespec="microseconds")),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
