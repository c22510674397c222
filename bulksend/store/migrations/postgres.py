"""The PostgreSQL store's schema migrations (see :mod:`bulksend.store.postgres`, "Schema").

v1 is the outbox with its leases and campaign roles, v2 tunes the outbox's storage for its
frequent updates, v3 adds the ``workers`` table, v4 the ``suppressions`` list and
the campaigns' ``state_reason``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from bulksend.store.migrations import (
    CAMPAIGN_COLUMNS,
    POSTGRES_TYPES,
    ROLE_COLUMNS,
    SUPPRESSION_COLUMNS,
    create_table,
    outbox_columns,
    steps_to_apply,
)

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

# Ordered, append-only: MIGRATIONS[i] brings the schema from version i to i + 1. ``{s}`` is the
# quoted schema name.
_S: Final = "{s}."
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # v1: campaigns, the outbox with its leases, campaign roles.
    (
        create_table("campaigns", CAMPAIGN_COLUMNS, POSTGRES_TYPES, _S),
        create_table("recipients", outbox_columns(), POSTGRES_TYPES, _S),
        "CREATE UNIQUE INDEX ux_recipients_campaign_row ON {s}.recipients (campaign_id, input_row)",
        # Only the owner of a key holds it in dedupe_key (as in the SQLite store).
        """CREATE UNIQUE INDEX ux_recipients_campaign_dedupe ON {s}.recipients (campaign_id, dedupe_key)
            WHERE dedupe_key IS NOT NULL""",
        # iter_rows by state and claim (which walks a state's rows in id order, skipping leased ones).
        "CREATE INDEX ix_recipients_campaign_state_id ON {s}.recipients (campaign_id, state, id)",
        "CREATE INDEX ix_recipients_campaign_id ON {s}.recipients (campaign_id, id)",
        "CREATE INDEX ix_recipients_email_id ON {s}.recipients (email_id) WHERE email_id IS NOT NULL",
        create_table("roles", ROLE_COLUMNS, POSTGRES_TYPES, _S),
    ),
    # v2: the outbox is updated 3-5 times per row within minutes of its insert. Free room in each
    # page lets the lease updates (claim, renew, release: no indexed column changes) stay HOT, and
    # autovacuum/ANALYZE run after 2 % of changed rows instead of 20 %: a campaign of 20,000 rows
    # left ~79,000 dead row versions and statistics from when the table was empty.
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
    # v4: the suppression list, per TEM project; why a campaign is in its state (a guardrail).
    (
        create_table("suppressions", SUPPRESSION_COLUMNS, POSTGRES_TYPES, _S),
        "ALTER TABLE {s}.campaigns ADD COLUMN state_reason text NOT NULL DEFAULT ''",
    ),
)
SCHEMA_VERSION: Final[int] = len(MIGRATIONS)


async def migrate(
    conn: asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record], schema: str
) -> None:
    """Create ``schema`` if missing and apply the missing steps, in one transaction.

    Migrations run under ``pg_advisory_xact_lock``: N workers
    starting at once apply each step exactly once.
    """
    s = f'"{schema}"'
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"bulksend:migrate:{schema}"
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.schema_version "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await conn.fetchval(f"SELECT COALESCE(MAX(version), 0) FROM {s}.schema_version")
        for version in steps_to_apply(current, SCHEMA_VERSION, f"PostgreSQL schema {schema!r}"):
            for statement in MIGRATIONS[version - 1]:
                await conn.execute(statement.format(s=s))
            await conn.execute(f"INSERT INTO {s}.schema_version (version) VALUES ($1)", version)
