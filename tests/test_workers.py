"""Workers on a shared PostgreSQL store: campaign identity across folders, stable plans, dead
workers, configuration from the environment, and the live view (metrics port, ``bulksend status``).

Needs PostgreSQL (``BULKSEND_TEST_POSTGRES_DSN``, default ``postgresql://postgres@127.0.0.1:5432/test``);
every test works in its own schema, dropped after.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from bulksend.campaign import load_campaign
from bulksend.errors import CampaignError
from bulksend.sandbox import Sandbox
from tests.conftest import CampaignWriter, run_once

DSN = os.environ.get("BULKSEND_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
# Trust authentication ignores the password: it is here to prove it never reaches a message.
DSN_WITH_PASSWORD = DSN.replace("postgres@", "postgres:hunter2-pw@", 1)


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = f"bulksend_wk_{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


# -- campaign identity ---------------------------------------------------------------------------
async def test_same_campaign_copied_to_another_folder_resumes(
    write_campaign: CampaignWriter, sandbox: Sandbox, schema: str, tmp_path: Path
) -> None:
    """A campaign copied to another folder (same files, another path) is the same campaign in the
    shared store: it resumes (here: is found finished) instead of being refused."""
    campaign = write_campaign([{"email": f"u{i}@example.com"} for i in range(5)])
    store_url = f"{DSN}?schema={schema}"
    first = await run_once(campaign, sandbox, store_url=store_url)
    assert first.complete
    copy = tmp_path / "elsewhere"
    shutil.copytree(campaign.path.parent, copy)
    (copy / "outcomes.jsonl").unlink()
    moved = load_campaign(copy / "campaign.toml")
    assert moved.recipients != campaign.recipients
    second = await run_once(moved, sandbox, store_url=store_url)
    assert second.complete and second.already_finished
    assert len(sandbox.stats().accepted_by_recipient) == 5


async def test_changed_recipients_are_refused_naming_the_store_in_use(
    write_campaign: CampaignWriter, sandbox: Sandbox, schema: str
) -> None:
    """A campaign whose recipient file changed is refused, and the message names the PostgreSQL
    store actually used (without its password), not the SQLite default."""
    campaign = write_campaign([{"email": f"u{i}@example.com"} for i in range(3)])
    store_url = f"{DSN_WITH_PASSWORD}?schema={schema}"
    assert (await run_once(campaign, sandbox, store_url=store_url)).complete
    campaign.recipients.write_bytes(campaign.recipients.read_bytes() + b'{"email": "new@example.com"}\n')
    edited = load_campaign(campaign.path)
    with pytest.raises(CampaignError) as caught:
        await run_once(edited, sandbox, store_url=store_url)
    text = str(caught.value)
    assert "already ran from different content" in text
    assert "PostgreSQL" in text and schema in text
    assert "hunter2-pw" not in text
    assert "state.db" not in text and ".db" not in text
