"""What the store tests share: the PostgreSQL server and its scratch schemas, and a final update
that sets every fact."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from bulksend.store import FinalUpdate

POSTGRES_DSN = os.environ.get("BULKSEND_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@asynccontextmanager
async def scratch_schema(prefix: str = "bulksend_test") -> AsyncIterator[str]:
    """The name of a new PostgreSQL schema; the schema, with all a test put in it, is dropped after."""
    import asyncpg  # only the tests that use PostgreSQL need it loaded

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        async with asyncpg.create_pool(POSTGRES_DSN, min_size=1, max_size=1) as pool:
            await pool.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def hard_bounce(row_id: int, final_at: datetime) -> FinalUpdate:
    """A final update of a hard bounce, every one of its facts set."""
    return FinalUpdate(
        id=row_id,
        status="failed",
        flags=("hard_bounce", "mailbox_not_found"),
        status_details="550 no such user",
        smtp_code=550,
        smtp_message="5.1.1 user unknown",
        try_count=1,
        final_at=final_at,
        reason="hard bounce",
    )
