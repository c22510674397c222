"""The SQLite store's schema migrations (see :mod:`bulksend.store.sqlite`, "Schema").

v1 is the outbox, v2 adds lease expiry and campaign roles, v3 rebuilds ``recipients`` with a
cheaper ``state`` CHECK (one copy of every row, once), v4 adds ``store_meta`` with the database's
random ``store_id``.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Final

from bulksend.store.migrations import steps_to_apply

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

# Every column of ``recipients`` as of v2, named: the v3 rebuild copies them by name.
_V3_COLUMNS: Final = (
    "id, campaign_id, input_row, email, name, recipient_key, dedupe_key, state, reason, payload, "
    "attempts, attempt_started_at, attempt_ended_at, correlation, email_id, message_id, submitted_at, "
    "status, flags, status_details, smtp_code, smtp_message, try_count, final_at, lease_owner, "
    "lease_token, lease_expires_at"
)

# Ordered, append-only: MIGRATIONS[i] brings the schema from version i to i + 1.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # v1: campaigns and the outbox.
    (
        """CREATE TABLE campaigns (
            id           TEXT PRIMARY KEY,
            created_at   TEXT NOT NULL,
            state        TEXT NOT NULL CHECK (state IN ('running', 'paused', 'canceled', 'finished')),
            spec         TEXT NOT NULL,
            admitted_all INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE recipients (
            id                 INTEGER PRIMARY KEY,
            campaign_id        TEXT NOT NULL REFERENCES campaigns (id),
            input_row          INTEGER NOT NULL,
            email              TEXT NOT NULL,
            name               TEXT NOT NULL DEFAULT '',
            recipient_key      TEXT,
            dedupe_key         TEXT,
            state              TEXT NOT NULL CHECK (state IN
                                   ('pending', 'sending', 'submitted', 'final', 'rejected', 'skipped')),
            reason             TEXT NOT NULL DEFAULT '',
            payload            TEXT NOT NULL DEFAULT '{}',
            attempts           INTEGER NOT NULL DEFAULT 0,
            attempt_started_at TEXT,
            attempt_ended_at   TEXT,
            correlation        TEXT NOT NULL DEFAULT '',
            email_id           TEXT,
            message_id         TEXT NOT NULL DEFAULT '',
            submitted_at       TEXT,
            status             TEXT NOT NULL DEFAULT '',
            flags              TEXT NOT NULL DEFAULT '[]',
            status_details     TEXT NOT NULL DEFAULT '',
            smtp_code          INTEGER,
            smtp_message       TEXT NOT NULL DEFAULT '',
            try_count          INTEGER NOT NULL DEFAULT 0,
            final_at           TEXT,
            lease_owner        TEXT NOT NULL DEFAULT '',
            lease_token        INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE UNIQUE INDEX ux_recipients_campaign_row ON recipients (campaign_id, input_row)",
        # Only the owner of a key holds it in dedupe_key (see the module docstring).
        """CREATE UNIQUE INDEX ux_recipients_campaign_dedupe ON recipients (campaign_id, dedupe_key)
            WHERE dedupe_key IS NOT NULL""",
        "CREATE INDEX ix_recipients_campaign_state_id ON recipients (campaign_id, state, id)",
        # (campaign_id) is (campaign_id, id) underneath: keyset pagination of iter_rows without states.
        "CREATE INDEX ix_recipients_campaign_id ON recipients (campaign_id)",
        "CREATE INDEX ix_recipients_email_id ON recipients (email_id) WHERE email_id IS NOT NULL",
    ),
    # v2: work leases (owner and token exist since v1; the expiry is new) and campaign roles.
    (
        "ALTER TABLE recipients ADD COLUMN lease_expires_at TEXT",
        """CREATE TABLE roles (
            campaign_id TEXT NOT NULL,
            role        TEXT NOT NULL,
            owner       TEXT NOT NULL,
            expires_at  TEXT NOT NULL,
            PRIMARY KEY (campaign_id, role)
        )""",
    ),
    # v3: the same outbox, its state CHECK written as a chain of equalities. SQLite evaluates
    # ``state IN (…)`` in a CHECK by building a temporary b-tree of the six values on every write
    # to ``state``: three times per email, about a sixth of the writer's CPU. A CHECK cannot be
    # altered in place, so the table is rebuilt (one copy of every row, once) with its indexes.
    (
        """CREATE TABLE recipients_v3 (
            id                 INTEGER PRIMARY KEY,
            campaign_id        TEXT NOT NULL REFERENCES campaigns (id),
            input_row          INTEGER NOT NULL,
            email              TEXT NOT NULL,
            name               TEXT NOT NULL DEFAULT '',
            recipient_key      TEXT,
            dedupe_key         TEXT,
            state              TEXT NOT NULL CHECK (state = 'pending' OR state = 'sending'
                                   OR state = 'submitted' OR state = 'final' OR state = 'rejected'
                                   OR state = 'skipped'),
            reason             TEXT NOT NULL DEFAULT '',
            payload            TEXT NOT NULL DEFAULT '{}',
            attempts           INTEGER NOT NULL DEFAULT 0,
            attempt_started_at TEXT,
            attempt_ended_at   TEXT,
            correlation        TEXT NOT NULL DEFAULT '',
            email_id           TEXT,
            message_id         TEXT NOT NULL DEFAULT '',
            submitted_at       TEXT,
            status             TEXT NOT NULL DEFAULT '',
            flags              TEXT NOT NULL DEFAULT '[]',
            status_details     TEXT NOT NULL DEFAULT '',
            smtp_code          INTEGER,
            smtp_message       TEXT NOT NULL DEFAULT '',
            try_count          INTEGER NOT NULL DEFAULT 0,
            final_at           TEXT,
            lease_owner        TEXT NOT NULL DEFAULT '',
            lease_token        INTEGER NOT NULL DEFAULT 0,
            lease_expires_at   TEXT
        )""",
        f"INSERT INTO recipients_v3 ({_V3_COLUMNS}) SELECT {_V3_COLUMNS} FROM recipients",
        "DROP TABLE recipients",
        "ALTER TABLE recipients_v3 RENAME TO recipients",
        "CREATE UNIQUE INDEX ux_recipients_campaign_row ON recipients (campaign_id, input_row)",
        """CREATE UNIQUE INDEX ux_recipients_campaign_dedupe ON recipients (campaign_id, dedupe_key)
            WHERE dedupe_key IS NOT NULL""",
        "CREATE INDEX ix_recipients_campaign_state_id ON recipients (campaign_id, state, id)",
        "CREATE INDEX ix_recipients_campaign_id ON recipients (campaign_id)",
        "CREATE INDEX ix_recipients_email_id ON recipients (email_id) WHERE email_id IS NOT NULL",
    ),
    # v4: the database's own id, which the send journal names (a replaced file is another id).
    (
        "CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO store_meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))))",
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
