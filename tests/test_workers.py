"""Workers on a shared PostgreSQL store: campaign identity across folders, stable plans, dead
workers, configuration from the environment, and the live view (metrics port, ``bulksend status``).

Needs PostgreSQL (``BULKSEND_TEST_POSTGRES_DSN``, default ``postgresql://postgres@127.0.0.1:5432/test``);
every test works in its own schema, dropped after.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import types
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import anyio
import asyncpg
import orjson
import pytest
import redis.asyncio
from anyio.abc import Process

from bulksend.campaign.load import load_campaign
from bulksend.cli.main import main
from bulksend.cli.send import RunOptions, campaign_limiter
from bulksend.clock import FakeClock
from bulksend.errors import CampaignError, ConfigError, StoreError
from bulksend.metrics import Metrics
from bulksend.pipeline.ceiling import CeilingLimiter
from bulksend.pipeline.flow import FlowLimiter
from bulksend.pipeline.limiter import AimdLimiter
from bulksend.pipeline.nested import NestedLimiter
from bulksend.sandbox import Sandbox, SandboxConfig, sandbox_in_thread
from bulksend.secret import Secret
from bulksend.settings import DEFAULT_LIMITER_PREFIX, load_account_settings
from bulksend.store import NewRecipient, RowState
from bulksend.store.postgres import PostgresStore
from bulksend.tem.config import TemSettings
from scripts.chaos import _drain, start_sender
from scripts.scale import run_scale
from tests.conftest import PROJECT, SECRET, CampaignWriter, run_once
from tests.stores import scratch_schema
from tests.waiting import wait_until

DSN = os.environ.get("BULKSEND_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
# Trust authentication ignores the password: it is here to prove it never reaches a message.
REDIS_URL = os.environ.get("BULKSEND_TEST_REDIS", "redis://127.0.0.1:6379/0")
DSN_WITH_PASSWORD = DSN.replace("postgres@", "postgres:hunter2-pw@", 1)


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async with scratch_schema("bulksend_wk") as name:
        yield name


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
    assert second.complete
    assert second.already_finished
    assert len(sandbox.stats().accepted_by_recipient) == 5


async def test_campaign_started_by_an_earlier_version_still_resumes(
    write_campaign: CampaignWriter, sandbox: Sandbox, schema: str
) -> None:
    """A campaign recorded with the earlier path-based fingerprint resumes from the same folder."""
    campaign = write_campaign([{"email": f"u{i}@example.com"} for i in range(3)])
    store_url = f"{DSN}?schema={schema}"
    async with PostgresStore(DSN, schema=schema) as store:
        await store.create_campaign(campaign.id, {"fingerprint": campaign.legacy_fingerprint})
    assert campaign.legacy_fingerprint != campaign.fingerprint
    assert (await run_once(campaign, sandbox, store_url=store_url)).complete


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
    assert "PostgreSQL" in text
    assert schema in text
    assert "hunter2-pw" not in text
    assert "state.db" not in text
    assert ".db" not in text


# -- account settings ----------------------------------------------------------------------------
def test_account_settings_precedence_is_flag_then_environment_then_file(tmp_path: Path) -> None:
    """Each account setting comes from the flag if given, else the environment, else the file."""
    file = tmp_path / "settings.toml"
    file.write_text(
        'store_url = "postgresql://file@db/x"\nredis_url = "redis://file:6379/0"\n'
        'limiter_prefix = "file:rate"\naccount_rate_per_s = 250\n',
        encoding="utf-8",
    )
    env = {"BULKSEND_SETTINGS": str(file), "BULKSEND_REDIS_URL": "redis://env:6379/0"}
    only_file = load_account_settings(env={"BULKSEND_SETTINGS": str(file)})
    assert only_file.store_url == "postgresql://file@db/x"
    assert only_file.limiter_prefix == "file:rate"
    assert only_file.account_rate_per_s == 250
    mixed = load_account_settings(env=env, store_url="postgresql://flag@db/x")
    assert mixed.store_url == "postgresql://flag@db/x"
    assert mixed.redis_url == "redis://env:6379/0"
    assert mixed.source == file
    env_rate = load_account_settings(env={**env, "BULKSEND_ACCOUNT_RATE_PER_S": "75.5"})
    assert env_rate.account_rate_per_s == 75.5
    nothing = load_account_settings(env={"XDG_CONFIG_HOME": str(tmp_path / "empty")})
    assert nothing.store_url is None
    assert nothing.limiter_prefix == DEFAULT_LIMITER_PREFIX


def test_account_settings_refuse_bad_files_without_quoting_secrets(tmp_path: Path) -> None:
    """A named settings file that is missing, has unknown keys or a bad rate is refused clearly,
    and the settings' repr masks the passwords of their URLs."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_account_settings(settings_file=tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text('store_url = "postgresql://u:s3cret-pw@db/x"\nstore = 1\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key") as caught:
        load_account_settings(settings_file=bad, env={})
    assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(ConfigError, match="positive"):
        load_account_settings(env={"BULKSEND_ACCOUNT_RATE_PER_S": "-3"})
    shown = repr(
        load_account_settings(
            env={
                "BULKSEND_STORE_URL": "postgresql://u:s3cret-pw@db/x",
                "BULKSEND_REDIS_URL": "redis://:r3dis-pw@h/0",
            }
        )
    )
    assert "s3cret-pw" not in shown
    assert "r3dis-pw" not in shown
    assert "****" in shown


def test_campaign_rate_is_a_ceiling_inside_the_account_rate() -> None:
    """With an account rate in the account settings, the limiter paces the account at that rate and
    the campaign at its own lower rate_per_s; without one, the campaign's rate is the account's."""
    campaign = types.SimpleNamespace(sending=types.SimpleNamespace(rate_per_s=50.0))
    tem = TemSettings(secret_key=Secret("x"), project_id="p", api_url="http://127.0.0.1:9")
    nested = campaign_limiter(campaign, tem, RunOptions(account_rate_per_s=1000))  # type: ignore[arg-type]
    assert isinstance(nested, NestedLimiter)
    assert nested.ceiling_per_s == 50
    assert nested.outer.target_rate_per_s == 1000
    assert nested.target_rate_per_s == 50
    alone = campaign_limiter(campaign, tem, RunOptions())  # type: ignore[arg-type]
    assert isinstance(alone, FlowLimiter)
    assert alone.target_rate_per_s == 50


async def test_ceiling_paces_the_campaign_and_spends_the_account_budget() -> None:
    """A campaign ceiling of 10/s inside an account of 1,000/s grants 11 slots over one second of
    fake time, and every grant also takes a slot of the account's limiter."""
    clock = FakeClock(autojump=True)
    account = AimdLimiter(1000, clock=clock)
    limiter = CeilingLimiter(account, 10, clock=clock)
    start = clock.monotonic()
    for _ in range(11):
        await limiter.acquire()
    assert clock.monotonic() - start == pytest.approx(1.0)
    assert account.stats.acquired == 11


def test_send_reads_store_and_redis_urls_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schema: str
) -> None:
    """`bulksend send` with no --store/--shared-limiter flags uses BULKSEND_STORE_URL and
    BULKSEND_REDIS_URL, and the shared limiter's key is <prefix>:<project>:<region>."""
    prefix = f"bulksend-test:{uuid.uuid4().hex[:8]}"
    (tmp_path / "people.csv").write_text("email\nann@example.com\nbob@example.com\n", encoding="utf-8")
    (tmp_path / "c.toml").write_text(
        '[campaign]\nid = "env-test"\nfrom = "news@example.com"\nsubject = "Hi"\ntext = "Hello"\n'
        'recipients = "people.csv"\n[tracking]\npoll_interval_s = 0.05\nsettle_s = 0.05\n',
        encoding="utf-8",
    )
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        monkeypatch.setenv("SCW_SECRET_KEY", SECRET)
        monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", PROJECT)
        monkeypatch.setenv("SCW_API_URL", sb.url)
        monkeypatch.setenv("SCW_CONFIG_PATH", str(tmp_path / "none.yaml"))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        monkeypatch.setenv("BULKSEND_STORE_URL", f"{DSN}?schema={schema}")
        monkeypatch.setenv("BULKSEND_REDIS_URL", REDIS_URL)
        monkeypatch.setenv("BULKSEND_LIMITER_PREFIX", prefix)
        assert main(["send", str(tmp_path / "c.toml"), "--no-progress"]) == 0
    assert not list(tmp_path.glob("*.db")), "the SQLite default store was used"

    async def look() -> tuple[int, bool]:
        conn = await asyncpg.connect(DSN)
        try:
            rows = await conn.fetchval(f'SELECT count(*) FROM "{schema}".recipients')
        finally:
            await conn.close()
        client = redis.asyncio.from_url(REDIS_URL)
        try:
            key = f"{prefix}:{PROJECT}:fr-par"
            exists = bool(await client.exists(key))
            await client.delete(key)
        finally:
            await client.aclose()
        return int(rows), exists

    assert asyncio.run(look()) == (2, True)


# -- stable plans --------------------------------------------------------------------------------
async def test_mark_sending_plan_is_an_index_scan_after_a_large_admit(schema: str) -> None:
    """The batched mark_sending UPDATE, prepared and run while the outbox was tiny, is planned as an
    index scan of recipients (not a sequential scan filtered on state) once 20,000 rows are admitted."""
    store = PostgresStore(DSN, schema=schema, min_size=1, max_size=1)  # one connection: one plan cache
    await store.open()
    try:
        await store.create_campaign("c", {})
        first = await store.admit("c", [NewRecipient(row=i, email=f"u{i}@example.com") for i in range(1, 51)])
        # Eight runs of the cached statement while the table is tiny: PostgreSQL's default would
        # switch to a generic plan after five and keep it.
        for res in first[:8]:
            await store.mark_sending(res.id, started_at=datetime.now(UTC), correlation="x")
        for start in range(51, 20_051, 500):
            await store.admit(
                "c", [NewRecipient(row=i, email=f"u{i}@example.com") for i in range(start, start + 500)]
            )
        target = first[20].id
        pool = store._pool  # the store's own connection, with its session settings and cached statements
        assert pool is not None
        async with pool.acquire() as conn:
            name = await conn.fetchval(
                "SELECT name FROM pg_prepared_statements WHERE statement LIKE 'UPDATE %' "
                "AND statement LIKE '%attempts = r.attempts + 1%'"
            )
            assert name is not None
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    f'EXPLAIN EXECUTE "{name}"(ARRAY[{target}]::bigint[], ARRAY[NULL]::bigint[], '
                    "ARRAY[now()]::timestamptz[], ARRAY['x']::text[])"
                )
            )
    finally:
        await store.close()
    assert "Seq Scan on recipients" not in plan, plan
    assert "Index Scan using recipients_pkey on recipients" in plan, plan


async def test_outbox_table_is_tuned_for_frequent_updates(schema: str) -> None:
    """The outbox table keeps free room per page and is vacuumed and analyzed after 2 % of changes."""
    async with PostgresStore(DSN, schema=schema) as store:
        assert store.schema == schema
    conn = await asyncpg.connect(DSN)
    try:
        options = await conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = $1::regclass", f'"{schema}".recipients'
        )
    finally:
        await conn.close()
    assert "fillfactor=80" in options
    assert "autovacuum_analyze_scale_factor=0.02" in options
    assert "autovacuum_vacuum_scale_factor=0.02" in options


# -- dead workers --------------------------------------------------------------------------------
@pytest.mark.services
@pytest.mark.slow
async def test_killed_workers_rows_are_taken_back_without_waiting_for_its_lease(tmp_path: Path) -> None:
    """Two workers with a 10-minute lease, one SIGKILLed mid-way: the other takes the dead worker's
    claimed and `sending` rows back at once (the campaign could not finish otherwise) and every
    recipient is emailed exactly once."""
    result = await run_scale(
        tmp_path, workers=2, recipients=2_000, rate_per_s=400, kill=True, lease_s=600, timeout_s=180
    )
    assert result.exit_codes[0] == -9, result
    assert result.exit_codes[1:] == [0], result
    assert result.duplicates == 0, result
    assert result.missing == 0, result


async def test_a_dead_workers_rows_are_taken_back_when_its_connection_drops(schema: str) -> None:
    """When a worker's session ends (its connection dropped, as when its process is killed),
    another worker's reaping marks it dead, makes its claimed rows claimable at once and hands its
    `sending` row to reconciliation, although their 10-minute leases have not run out."""
    # Two store instances: two worker processes' own connections.
    async with (
        PostgresStore(DSN, schema=schema, max_size=2) as a_store,
        PostgresStore(DSN, schema=schema, max_size=2) as b_store,
    ):
        await a_store.create_campaign("c", {})
        await a_store.admit("c", [NewRecipient(row=i, email=f"u{i}@example.com") for i in range(1, 11)])
        assert await a_store.register_worker("a", campaign_id="c") is None
        await b_store.register_worker("b", campaign_id="c")
        held = await a_store.claim("c", worker_id="a", limit=6, lease_s=600)
        await a_store.mark_sending(
            held[0].id, started_at=datetime.now(UTC), correlation="x", lease_token=held[0].lease_token
        )
        assert await b_store.reap_dead_workers() == []  # a lives: nothing taken
        assert len(await b_store.claim("c", worker_id="b", limit=10, lease_s=600)) == 4
        conn = await asyncpg.connect(DSN)
        try:
            dropped = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'bulksend worker a'"
            )
        finally:
            await conn.close()
        assert dropped == 1
        reaped = await b_store.reap_dead_workers()
        assert [(r.worker_id, r.released, r.expired) for r in reaped] == [("a", 5, 1)]
        taken = await b_store.claim("c", worker_id="b", limit=10, lease_s=600)
        assert sorted(r.id for r in taken) == sorted(r.id for r in held[1:])
        stale = await b_store.claim("c", worker_id="b", limit=10, lease_s=600, states=(RowState.SENDING,))
        assert [r.id for r in stale] == [held[0].id]
        workers = {w.worker_id: w for w in await b_store.list_workers("c")}
        assert workers["a"].state == "dead"
        assert not workers["a"].alive
        assert workers["b"].alive
        assert await b_store.reap_dead_workers() == []  # reaped once


async def test_a_worker_id_in_use_by_a_live_worker_is_refused(schema: str) -> None:
    """Registering a worker id that a live worker holds fails with a message saying so."""
    async with PostgresStore(DSN, schema=schema) as first, PostgresStore(DSN, schema=schema) as second:
        await first.register_worker("same", campaign_id="c")
        with pytest.raises(StoreError, match="in use by a live worker"):
            await second.register_worker("same", campaign_id="c")


# -- live view -----------------------------------------------------------------------------------
async def _cli(*args: str) -> tuple[int, str, str]:
    """Run ``bulksend ARGS`` as a child process; its exit code, stdout and stderr."""
    done = await anyio.run_process(
        [sys.executable, "-m", "bulksend.cli", *args],
        check=False,
        env={**os.environ, "XDG_CONFIG_HOME": "/nonexistent"},
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_status_shows_workers_rows_by_state_and_rate(schema: str) -> None:
    """`bulksend status --store URL CAMPAIGN --json` shows a live worker as alive, a killed one as
    dead with its last counters, the campaign's rows by state and its recent rate, and never the
    store's password."""
    async with (
        PostgresStore(DSN, schema=schema) as live,
        PostgresStore(DSN, schema=schema) as doomed,
    ):
        await live.create_campaign("c", {})
        admitted = await live.admit(
            "c", [NewRecipient(row=i, email=f"u{i}@example.com") for i in range(1, 6)]
        )
        await live.register_worker("alive-1", campaign_id="c")
        await doomed.register_worker("killed-1", campaign_id="c")
        await doomed.heartbeat_worker("killed-1", stats={"submitted": 7, "throttled": 3})
        for res in admitted[:2]:
            await live.mark_sending(res.id, started_at=datetime.now(UTC), correlation="x")
            await live.mark_submitted(
                res.id, email_id=f"e{res.id}", message_id="m", submitted_at=datetime.now(UTC)
            )
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'bulksend worker killed-1'"
            )
        finally:
            await conn.close()
        code, out, err = await _cli(
            "status", "--store", f"{DSN_WITH_PASSWORD}?schema={schema}", "c", "--json", "--window-s", "600"
        )
    assert code == 0, err
    assert "hunter2-pw" not in out + err
    status = orjson.loads(out)
    workers = {w["worker_id"]: w for w in status["workers"]}
    assert workers["alive-1"]["alive"] is True
    assert workers["alive-1"]["state"] == "running"
    assert workers["killed-1"]["alive"] is False
    assert workers["killed-1"]["state"] == "dead"
    assert workers["killed-1"]["stats"] == {"submitted": 7, "throttled": 3}
    [campaign] = status["campaigns"]
    assert campaign["rows"]["pending"] == 3
    assert campaign["rows"]["submitted"] == 2
    assert campaign["rate_per_s"] == pytest.approx(2 / 600)


async def test_worker_serves_prometheus_metrics_while_it_sends(
    write_campaign: CampaignWriter, sandbox: Sandbox, schema: str
) -> None:
    """`send --worker --metrics-port 0` serves the daemon's Prometheus series (API calls by code)
    on the port it logs, while it sends."""
    campaign = write_campaign([{"email": f"u{i}@example.com"} for i in range(400)], rate_per_s=20)
    extra = ("--worker", "--worker-id", "m1", "--store", f"{DSN}?schema={schema}", "--metrics-port", "0")
    proc = await start_sender(campaign.path, sandbox.url, project=PROJECT, secret=SECRET, extra=extra)
    try:
        port = await _logged_port(proc)
        drain = anyio.create_task_group()
        async with drain, aiohttp.ClientSession() as http:
            drain.start_soon(_drain, proc)  # keep the child's log pipe from filling up
            text = ""

            async def sends_counted() -> bool:
                nonlocal text
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200
                    text = await response.text()
                return 'bulksend_api_calls_total{code="200",endpoint="send"}' in text

            await wait_until(sends_counted, what="the first sends in the metrics")
            drain.cancel_scope.cancel()
        # Every series the daemon's metrics define, under the same names.
        for family in Metrics(process_metrics=False).registry.collect():
            assert f"# HELP {family.name}" in text, family.name
    finally:
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            await proc.wait()


async def _logged_port(proc: Process) -> int:
    """The port of the child's ``metrics.listening`` log event (its JSON log on stderr)."""
    assert proc.stderr is not None
    buffer = b""
    with anyio.fail_after(60):
        async for chunk in proc.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if b'"metrics.listening"' in line:
                    return int(orjson.loads(line)["port"])
    raise AssertionError("the worker exited without serving metrics")


def test_negative_prefetch_is_refused(
    write_campaign: CampaignWriter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--prefetch` below 0 is a settings mistake: exit 1 with a message, nothing sent."""
    campaign = write_campaign([{"email": "a@example.com"}])
    monkeypatch.setenv("SCW_SECRET_KEY", SECRET)
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", PROJECT)
    monkeypatch.setenv("SCW_CONFIG_PATH", "/nonexistent/config.yaml")
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    argv = ["send", str(campaign.path), "--no-progress", "--worker", "--store", DSN, "--prefetch", "-1"]
    assert main(argv) == 1
    assert "--prefetch must be 0 or more" in capsys.readouterr().err
