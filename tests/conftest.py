"""Shared fixtures: a sandbox on loopback, campaign folders, and a one-call campaign runner."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from bulksend.campaign.load import Campaign, load_campaign
from bulksend.pipeline.run import CampaignRun, RunResult
from bulksend.pipeline.stats import RunStats
from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.secret import Secret
from bulksend.sinks.outcomes import outcome_lines, write_outcomes
from bulksend.store import open_store
from bulksend.tem.config import TemSettings
from bulksend.testing import campaign_run, campaign_toml
from tests.moto import moto_endpoint as moto_endpoint  # the session's moto server (SQS/SNS API)

# -- tests that need PostgreSQL, Redis, NATS or RabbitMQ on 127.0.0.1 ----------------------------
# They carry the ``services`` marker, so ``python -m pytest -m "not services"`` runs everything else
# on a machine without those servers. Marked here, by module, fixture or parameter, or in the test
# module itself (``pytestmark`` / ``@pytest.mark.services``) when only some of its tests need them.
SERVICE_MODULES = frozenset(
    {"test_brokers_nats", "test_brokers_rabbitmq", "test_brokers_redis", "test_store_postgres"}
)
"""Modules whose every test talks to a server."""

SERVICE_FIXTURES = frozenset({"broker", "live_daemon", "schema"})
"""Fixtures that connect to a server: a real broker, a daemon on Redis, a PostgreSQL schema."""

SERVICE_PARAMS = frozenset({"postgres"})
"""Parameter values that select a server backend (the store contract's ``backend``)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        fixtures = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        params = set(map(str, callspec.params.values())) if callspec is not None else set()
        if module in SERVICE_MODULES or fixtures & SERVICE_FIXTURES or params & SERVICE_PARAMS:
            item.add_marker(pytest.mark.services)


SECRET = "test-sandbox-secret-5f1c"
PROJECT = "11111111-2222-4333-8444-555555555555"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Commands run in-process point structlog at the test's captured stderr: undo that after
    each test, so a later test's log line never goes to a closed stream."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


@pytest.fixture(autouse=True)
def _own_state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test has its own per-user state folder (the default suppression list lives there),
    so no test reads or writes the real user's, nor sees another test's bounces."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    monkeypatch.delenv("BULKSEND_SUPPRESSION_URL", raising=False)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """A sandbox with a fast lifecycle on a free loopback port."""
    # The sandbox's default lifecycle is the fast one: every step at once, no soft-bounce wait.
    config = SandboxConfig(secret_key=SECRET, project_id=PROJECT, seed=1)
    async with Sandbox(config, host="127.0.0.1", port=0) as sb:
        yield sb


def settings_for(sb: Sandbox) -> TemSettings:
    return TemSettings(secret_key=Secret(SECRET), project_id=PROJECT, api_url=sb.url)


CampaignWriter = Callable[..., Campaign]


@pytest.fixture
def write_campaign(tmp_path: Path) -> CampaignWriter:
    """Write a campaign folder with JSONL recipients and load it."""

    def write(
        recipients: Iterable[Mapping[str, Any] | bytes],
        *,
        campaign_id: str = "test-campaign",
        subject: str = "Hello {{ first_name | default('there') }}",
        text: str = "Hi {{ first_name | default('there') }}, welcome.",
        html: str = "<p>Hi {{ first_name | default('there') }}</p>",
        headers: Mapping[str, str] | None = None,
        rate_per_s: float = 5000,
        concurrency: int = 32,
        poll_interval_s: float = 0.05,
        give_up_after_s: float = 3600,
        settle_s: float = 0.05,
        timeout_s: float = 5,
        extra: str = "",
    ) -> Campaign:
        folder = tmp_path / campaign_id
        folder.mkdir(exist_ok=True)
        lines = [r if isinstance(r, bytes) else orjson.dumps(r) for r in recipients]
        (folder / "recipients.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        campaign: dict[str, object] = {
            "subject": subject,
            "text": text,
            "html": html,
            "recipients": "recipients.jsonl",
        }
        if headers:
            campaign["headers"] = dict(headers)
        body = campaign_toml(
            campaign_id,
            campaign=campaign,
            sending={"rate_per_s": rate_per_s, "concurrency": concurrency, "timeout_s": timeout_s},
            tracking={
                "poll_interval_s": poll_interval_s,
                "give_up_after_s": give_up_after_s,
                "settle_s": settle_s,
            },
            output={"outcomes": "outcomes.jsonl"},
        )
        body += extra
        path = folder / "campaign.toml"
        path.write_text(body, encoding="utf-8")
        loaded = load_campaign(path)
        return dataclasses.replace(loaded, store_path=folder / "state.db")

    return write


async def run_once(
    campaign: Campaign,
    sb: Sandbox,
    *,
    stats: RunStats | None = None,
    on_start: Callable[[CampaignRun], None] | None = None,
    store_url: str | None = None,
    resume_paused: bool = False,
) -> RunResult:
    """Run ``campaign`` against ``sb`` with a fresh client and store handle, like one CLI run."""
    stats = stats or RunStats()
    async with campaign_run(
        campaign, settings_for(sb), stats=stats, store_url=store_url, grace_s=10, resume_paused=resume_paused
    ) as runner:
        if on_start is not None:
            on_start(runner)
        return await runner.run()


async def outcomes_from_store(campaign: Campaign, path: Path) -> None:
    """Write ``campaign``'s outcomes from its store to ``path`` (.jsonl or .csv), as a run does."""
    store = open_store(campaign.store_path)
    await store.open()
    try:
        await write_outcomes(path, outcome_lines(store, campaign.id))
    finally:
        await store.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
