"""Schema migrations of the SQL stores: one append-only list of steps per dialect.

``MIGRATIONS[i]`` of a dialect brings its schema from version ``i`` to ``i + 1``; a released step
is never edited (add the next one), so every existing database upgrades the same way. Each store
records the steps it applied in its ``schema_version`` table and refuses a database that a newer
bulksend migrated further than it knows.

The tables both dialects have are declared once here (:func:`outbox_columns`, …) and written out
in each dialect's types by :func:`create_table`. Released steps are built from these declarations,
so they are as frozen as the steps themselves: a later change of a table is a new step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from bulksend.errors import StoreError

__all__ = [
    "CAMPAIGN_COLUMNS",
    "POSTGRES_TYPES",
    "ROLE_COLUMNS",
    "SQLITE_TYPES",
    "STATE_IN",
    "SUPPRESSION_COLUMNS",
    "column_names",
    "create_table",
    "outbox_columns",
    "steps_to_apply",
]

POSTGRES_TYPES: Final[Mapping[str, str]] = {
    "rowid": "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    "text": "text",
    "int": "integer",
    "bigint": "bigint",
    "time": "timestamptz",
    "json": "jsonb",
    "flag": "boolean NOT NULL DEFAULT false",
}
SQLITE_TYPES: Final[Mapping[str, str]] = {
    "rowid": "INTEGER PRIMARY KEY",
    "text": "TEXT",
    "int": "INTEGER",
    "bigint": "INTEGER",
    "time": "TEXT",
    "json": "TEXT",
    "flag": "INTEGER NOT NULL DEFAULT 0",
}

# A table is declared as its lines: ``"<column> <kind> <rest of the definition>"``, the kind
# a key of the dialects' types, or a table constraint as it is (``"PRIMARY KEY (…)"``).

CAMPAIGN_COLUMNS: Final = (
    "id text PRIMARY KEY",
    "created_at time NOT NULL",
    "state text NOT NULL CHECK (state IN ('running', 'paused', 'canceled', 'finished'))",
    "spec json NOT NULL",
    "admitted_all flag",
)

STATE_IN: Final = (
    "NOT NULL CHECK (state IN\n"
    "                                   ('pending', 'sending', 'submitted', 'final', 'rejected', 'skipped'))"
)
"""The first definition of the outbox's ``state`` column after its type, in both dialects."""


def outbox_columns(state: str = STATE_IN) -> tuple[str, ...]:
    """``recipients`` as PostgreSQL's v1 creates it (SQLite's v1 lacks the last column); ``state``
    is the definition of the ``state`` column after its type."""
    return (
        "id rowid",
        "campaign_id text NOT NULL REFERENCES campaigns (id)",
        "input_row bigint NOT NULL",
        "email text NOT NULL",
        "name text NOT NULL DEFAULT ''",
        "recipient_key text",
        "dedupe_key text",
        f"state text {state}",
        "reason text NOT NULL DEFAULT ''",
        "payload json NOT NULL DEFAULT '{}'",
        "attempts int NOT NULL DEFAULT 0",
        "attempt_started_at time",
        "attempt_ended_at time",
        "correlation text NOT NULL DEFAULT ''",
        "email_id text",
        "message_id text NOT NULL DEFAULT ''",
        "submitted_at time",
        "status text NOT NULL DEFAULT ''",
        "flags json NOT NULL DEFAULT '[]'",
        "status_details text NOT NULL DEFAULT ''",
        "smtp_code int",
        "smtp_message text NOT NULL DEFAULT ''",
        "try_count int NOT NULL DEFAULT 0",
        "final_at time",
        "lease_owner text NOT NULL DEFAULT ''",
        "lease_token bigint NOT NULL DEFAULT 0",
        "lease_expires_at time",
    )


ROLE_COLUMNS: Final = (
    "campaign_id text NOT NULL",
    "role text NOT NULL",
    "owner text NOT NULL",
    "expires_at time NOT NULL",
    "PRIMARY KEY (campaign_id, role)",
)


SUPPRESSION_COLUMNS: Final = (
    "project_id text NOT NULL",
    "address text NOT NULL",
    "reason text NOT NULL",
    "source text NOT NULL",
    "since time NOT NULL",
    "until time",
    "origin text NOT NULL DEFAULT ''",
    # The key is the index of every lookup (a project's addresses) and of the listing order.
    "PRIMARY KEY (project_id, address, reason)",
)
"""The suppression list (:mod:`bulksend.suppression`): one entry per project, address and reason."""


def column_names(columns: Sequence[str]) -> list[str]:
    """The names of the columns of a table's declared lines (its constraints left out)."""
    return [line.split(" ", 1)[0] for line in columns if not line.startswith("PRIMARY KEY")]


def create_table(name: str, columns: Sequence[str], types: Mapping[str, str], prefix: str = "") -> str:
    """The ``CREATE TABLE`` statement of a table's declared lines in a dialect's ``types``.

    ``prefix`` comes before every table name (PostgreSQL's ``"{s}."``, the schema filled in later
    with ``str.format``: the braces of the definitions are doubled then, to stay as they are).
    """
    width = max(map(len, column_names(columns)))
    lines = []
    for line in columns:
        if not line.startswith("PRIMARY KEY"):
            column, kind, *rest = line.split(" ", 2)
            line = " ".join((f"{column:<{width}}", types[kind], *rest))
        if prefix:
            line = line.replace("{", "{{").replace("}", "}}").replace("REFERENCES ", f"REFERENCES {prefix}")
        lines.append(" " * 12 + line)
    body = ",\n".join(lines)
    return f"CREATE TABLE {prefix}{name} (\n{body}\n        )"


def steps_to_apply(current: int, latest: int, where: str) -> range:
    """The versions to apply to a schema at ``current``; ``StoreError`` if it is newer than ``latest``.

    ``where`` names the schema for the error (a file, a PostgreSQL schema).
    """
    if current > latest:
        raise StoreError(
            f"{where} is at v{current}, newer than this bulksend supports (v{latest}); upgrade bulksend"
        )
    return range(current + 1, latest + 1)
