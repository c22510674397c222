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
from bulksend.pipeline.limiter import AimdLimiter
from bulksend.pipeline.run import CampaignRun, RunResult
from bulksend.pipeline.stats import RunStats
from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.secret import Secret
from bulksend.store import open_store
from bulksend.tem.client import TemClient
from bulksend.tem.config import TemSettings

# -- tests that need PostgreSQL, Redis, NATS or RabbitMQ on 127.0.0.1 ----------------------------
# They carry the ``services`` marker, so ``python -m pytest -m "not services"`` runs everything else
# on a machine without those servers. Marked here, by module, fixture or parameter, or in the test
# module itself (``pytestmark`` / ``@pytest.mark.services``) when only some of its tests need them.
SERVICE_MODULES = frozenset(
    {"test_sources_nats", "test_sources_rabbitmq", "test_sources_redis", "test_store_postgres"}
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


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """A sandbox with a fast lifecycle on a free loopback port."""
    config = SandboxConfig(
        secret_key=SECRET,
        project_id=PROJECT,
        sending_after_s=0.0,
        final_after_s=0.0,
        soft_bounce_retry_s=0.0,
        seed=1,
    )
    async with Sandbox(config, host="127.0.0.1", port=0) as sb:
        yield sb


def settings_for(sb: Sandbox) -> TemSettings:
    return TemSettings(secret_key=Secret(SECRET), project_id=PROJECT, api_url=sb.url)


CampaignWriter = Callable[..., Campaign]


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


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
        campaign = {
            "id": campaign_id,
            "from": {"email": "news@example.com", "name": "Example News"},
            "subject": subject,
            "text": text,
            "html": html,
            "recipients": "recipients.jsonl",
        }
        if headers:
            campaign["headers"] = dict(headers)
        body = "[campaign]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in campaign.items())
        body += (
            f"[sending]\nrate_per_s = {rate_per_s}\nconcurrency = {concurrency}\ntimeout_s = {timeout_s}\n"
        )
        body += (
            f"[tracking]\npoll_interval_s = {poll_interval_s}\ngive_up_after_s = {give_up_after_s}\n"
            f"settle_s = {settle_s}\n"
        )
        body += '[output]\noutcomes = "outcomes.jsonl"\n' + extra
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
) -> RunResult:
    """Run ``campaign`` against ``sb`` with a fresh client and store handle, like one CLI run."""
    stats = stats or RunStats()
    store = open_store(store_url or campaign.store_path)
    await store.open()
    try:
        async with TemClient(settings_for(sb), on_response=stats.on_response) as tem:
            runner = CampaignRun(
                campaign,
                store=store,
                tem=tem,
                limiter=AimdLimiter(campaign.sending.rate_per_s, burst=10),
                project_id=PROJECT,
                stats=stats,
                grace_s=10,
            )
            if on_start is not None:
                on_start(runner)
            return await runner.run()
    finally:
        await store.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
