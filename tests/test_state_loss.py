"""Lost state: a state file older than what was sent is refused, and --reconcile-all resends nobody."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from bulksend.campaign.load import Campaign
from bulksend.errors import StateLostError, StoreError
from bulksend.pipeline.limiter import AimdLimiter
from bulksend.pipeline.reconcile import CampaignReconcile
from bulksend.pipeline.run import CampaignRun, RunResult
from bulksend.pipeline.stats import RunStats
from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.store import SqliteStore, open_store
from bulksend.store.journal import SendJournal
from bulksend.tem.client import TemClient
from bulksend.testing import campaign_run
from scripts.chaos import PROJECT as CHAOS_PROJECT
from scripts.chaos import SECRET as CHAOS_SECRET
from scripts.chaos import _drain, start_sender
from scripts.chaos import write_campaign as write_csv_campaign
from tests.conftest import PROJECT, CampaignWriter, read_jsonl, run_once, settings_for
from tests.waiting import wait_until


def people(n: int) -> list[dict[str, Any]]:
    return [{"email": f"user{i}@example.com", "first_name": f"P{i}"} for i in range(n)]


async def reconcile_then_run(
    campaign: Campaign, sb: Sandbox, stats: RunStats
) -> tuple[CampaignReconcile, RunResult]:
    """``bulksend send --reconcile-all`` in-process: the reconcile entry point, then the run."""
    async with campaign_run(campaign, settings_for(sb), stats=stats, grace_s=10) as runner:
        report = await runner.reconcile_all()
        return report, await runner.run()


def _forget(path: Path) -> None:
    path.unlink()


def _lose_state(db: Path) -> None:
    _forget_wal(db)
    db.write_bytes(b"")


def _forget_wal(db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


async def _partial_then_more(campaign: Campaign, sandbox: Sandbox) -> Path:
    """Send part of the campaign, keep a copy of that state, send more; returns the copy."""
    first = RunStats()
    first.on_submitted = lambda n: runner_box[0].abort() if n == 150 else None
    runner_box: list[CampaignRun] = []
    await run_once(campaign, sandbox, stats=first, on_start=runner_box.append)
    early = campaign.store_path.with_name("early.db")
    shutil.copyfile(campaign.store_path, early)  # closed: the WAL was checkpointed into the file
    second = RunStats()
    second.on_submitted = lambda n: runner_box[1].abort() if n == 300 else None
    await run_once(campaign, sandbox, stats=second, on_start=runner_box.append)
    return early


@pytest.mark.parametrize("loss", ["restored-older-copy", "truncated-without-wal"])
async def test_lost_state_refuses_then_reconcile_all_sends_each_once(
    sandbox: Sandbox, write_campaign: CampaignWriter, loss: str
) -> None:
    """A state file that lost sends (an older copy restored, or truncated to 0 bytes with its WAL
    gone) is refused before anything is sent; --reconcile-all then adopts what TEM has, in about
    one list call per 1,000 emails, and every recipient ends with exactly one email."""
    n = 600
    campaign = write_campaign(people(n), concurrency=16, timeout_s=1)
    early = await _partial_then_more(campaign, sandbox)
    sent_before = sandbox.stats().accepted_by_recipient
    assert 300 <= len(sent_before) < n
    _forget_wal(campaign.store_path)
    if loss == "restored-older-copy":
        shutil.copyfile(early, campaign.store_path)
    else:
        campaign.store_path.write_bytes(b"")
    sends = sandbox.stats().requests.get("send", 0)

    for _ in range(2):  # refused again on a second try: the loss is kept until reconciled
        error = await _refusal(campaign, sandbox)
        assert "--reconcile-all" in error
        assert "journal" in error
        assert sandbox.stats().requests.get("send", 0) == sends  # nothing was sent

    stats = RunStats()
    report, result = await reconcile_then_run(campaign, sandbox, stats)
    assert result.complete
    counts = sandbox.stats().accepted_by_recipient
    assert len(counts) == n
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    assert report.adopted > 0
    assert report.list_calls <= report.listed // 1000 + 1
    assert stats.calls("send") == n - len(sent_before)
    lines = read_jsonl(campaign.output.outcomes)
    assert len(lines) == n
    assert {line["status"] for line in lines} == {"sent"}
    # Reconciled: the next run opens without a loss.
    again_result = await run_once(campaign, sandbox)
    assert again_result.complete


async def test_stopped_reconcile_all_accepts_nothing(
    sandbox: Sandbox, write_campaign: CampaignWriter
) -> None:
    """A stop during --reconcile-all ends it at once: nothing is sent and the campaign stays refused."""
    campaign = write_campaign(people(50), timeout_s=1)
    await run_once(campaign, sandbox)
    _lose_state(campaign.store_path)
    store = open_store(campaign.store_path)
    await store.open()
    try:
        async with TemClient(settings_for(sandbox)) as tem:
            runner = CampaignRun(
                campaign, store=store, tem=tem, limiter=AimdLimiter(1000), project_id=PROJECT, grace_s=1
            )
            runner.request_stop()  # Ctrl-C before (or while) the reconciliation runs
            report = await runner.reconcile_all()
        assert report.interrupted
        assert isinstance(store, SqliteStore)
        assert store.state_loss(campaign.id) is not None
    finally:
        await store.close()
    assert "--reconcile-all" in await _refusal(campaign, sandbox)


@pytest.mark.parametrize("damage", ["deleted", "garbled"])
async def test_sigkill_then_lost_wal_is_refused_and_reconciled(tmp_path: Path, damage: str) -> None:
    """The issue's scenario with real processes: `bulksend send` killed with SIGKILL, its WAL file
    deleted or garbled, rerun → exit 4 and nothing sent (unless the WAL held no send), rerun with
    --reconcile-all → exit 0, and every recipient emailed exactly once."""
    campaign, valid = write_csv_campaign(tmp_path, 3000, rate_per_s=2000, concurrency=32)
    config = SandboxConfig(secret_key=CHAOS_SECRET, project_id=CHAOS_PROJECT, final_after_s=0.05)
    async with Sandbox(config, host="127.0.0.1", port=0) as sandbox:
        proc = await start_sender(campaign, sandbox.url)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, proc)
            # The sandbox answers from this process: it accepts nothing between the check and the kill.
            await wait_until(lambda: len(sandbox.stats().accepted_by_recipient) >= 600, what="600 emails")
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        state = _state_file(tmp_path)
        assert _has_wal(state)
        if damage == "deleted":
            _forget_wal(state)
        else:
            _garble_wal(state)
        sent = sandbox.stats().requests.get("send", 0)

        refused = await start_sender(campaign, sandbox.url)
        stderr = await _stderr_of(refused)
        if refused.returncode == 1 and "The state file is damaged" in stderr:
            # Killed mid-checkpoint, the file needed its WAL to be whole: the operator moves it away.
            _move_away(state)
            refused = await start_sender(campaign, sandbox.url)
            stderr = await _stderr_of(refused)
        if refused.returncode != 0:  # 0: the kill came just after a checkpoint and nothing was lost
            assert refused.returncode == 4, stderr[-3000:]
            assert "--reconcile-all" in stderr
            assert sandbox.stats().requests.get("send", 0) == sent
            final = await start_sender(campaign, sandbox.url, extra=("--reconcile-all",))
            stderr = await _stderr_of(final)
            assert final.returncode == 0, stderr[-3000:]
        counts = sandbox.stats().accepted_by_recipient
    assert {a for a, k in counts.items() if k > 1} == set(), stderr[-3000:]
    assert set(counts) == valid


async def _refusal(campaign: Campaign, sandbox: Sandbox) -> str:
    """The StateLostError text a run of ``campaign`` fails with (AssertionError if it does not)."""
    try:
        await run_once(campaign, sandbox)
    except BaseException as exc:  # a group from the run's task group: unwrapped below
        error: BaseException = exc
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        assert isinstance(error, StateLostError), error
        return str(error)
    raise AssertionError("the run was not refused")


def _garble_wal(db: Path) -> None:
    """Overwrite every WAL frame (past the 32-byte header) with noise: SQLite drops the frames."""
    wal = Path(f"{db}-wal")
    size = wal.stat().st_size
    with open(wal, "r+b") as fh:
        fh.seek(32)
        fh.write(random.Random(1).randbytes(size - 32))
    Path(f"{db}-shm").unlink(missing_ok=True)


def _move_away(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            Path(f"{db}{suffix}").rename(Path(f"{db}{suffix}.damaged"))


def _has_wal(db: Path) -> bool:
    return Path(f"{db}-wal").exists()


def _lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _prepend_garbage(path: Path) -> None:
    path.write_bytes(b"garbage\n" + path.read_bytes())


def _append_torn_line(path: Path) -> None:
    with open(path, "ab") as fh:
        fh.write(b'0badc0de {"store": "x", "c": {"c": [9')


def _state_file(folder: Path) -> Path:
    [db] = [p for p in folder.rglob("*.db") if p.is_file()]
    return db


async def _stderr_of(proc: Any) -> str:
    chunks: list[bytes] = []
    async for chunk in proc.stderr:
        chunks.append(chunk)
    await proc.wait()
    return b"".join(chunks).decode(errors="replace")


async def test_damaged_journal_line_is_a_loss(tmp_path: Path) -> None:
    """A journal line garbled before the last one makes every campaign of the store suspect."""
    path = tmp_path / "s.db"
    journal = await _sends_started(path, 1)
    _prepend_garbage(journal)
    async with SqliteStore(path) as store:
        loss = store.state_loss("c")
        assert loss is not None
        assert "damaged (line 1)" in loss.what
    async with SqliteStore(path) as store:  # the rewritten journal keeps the campaign suspect
        loss = store.state_loss("c")
        assert loss is not None
        assert "was found damaged" in loss.what
        await store.accept_state("c")
    async with SqliteStore(path) as store:
        assert store.state_loss("c") is None


async def test_journal_is_compacted_and_keeps_its_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its size bound the journal is rewritten as one snapshot, with every count intact."""
    monkeypatch.setattr("bulksend.store.journal._COMPACT_BYTES", 300)
    path = tmp_path / "s.db"
    journal = await _sends_started(path, 30)
    assert len(_lines_of(journal)) < 10
    assert SendJournal(journal, sync=False).load().entries["c"].started == 30
    async with SqliteStore(path) as store:
        assert store.state_loss("c") is None


async def test_missing_journal_is_rebuilt_and_torn_tail_ignored(tmp_path: Path) -> None:
    """A missing journal is rebuilt from the database (no loss), and a last line torn by a crash
    mid-append is ignored rather than taken for damage."""
    path = tmp_path / "s.db"
    journal = await _sends_started(path, 1)
    _forget(journal)
    async with SqliteStore(path) as store:
        assert store.state_loss("c") is None
        record = store.send_record("c")
        assert record is not None
        assert record.started == 1
    _append_torn_line(journal)
    async with SqliteStore(path) as store:
        assert store.state_loss("c") is None
    assert SendJournal(journal, sync=False).load().damaged_line is None


async def test_journal_counts_every_send_started_before_it_is_acknowledged(tmp_path: Path) -> None:
    """Every acknowledged `sending` mark is in the journal file when mark_sending returns, so a
    database that loses it is caught (here: the state copied before the marks)."""
    path = tmp_path / "s.db"
    async with SqliteStore(path) as store:
        await store.create_campaign("c", {})
        rows = await store.admit("c", [_new(i) for i in range(2, 12)])
    shutil.copyfile(path, tmp_path / "before.db")
    async with SqliteStore(path) as store:
        async with anyio.create_task_group() as tg:
            for r in rows:
                tg.start_soon(partial(store.mark_sending, r.id, started_at=_now(), correlation="x"))
        state = SendJournal(Path(f"{path}.sends"), sync=False).load()
        assert state.entries["c"].started == 10
    shutil.copyfile(tmp_path / "before.db", path)
    async with SqliteStore(path) as store:
        loss = store.state_loss("c")
        assert loss is not None
        assert "records 0 sends started, but its send journal" in loss.what
        assert "records 10:" in loss.what
        await store.accept_state("c")
        assert store.state_loss("c") is None
    async with SqliteStore(path) as store:
        assert store.state_loss("c") is None


def test_state_files_are_private(tmp_path: Path) -> None:
    """The state database, its WAL and SHM files and the send journal are created 0600, in a
    folder created 0700, whatever a permissive umask would give."""
    old = os.umask(0o022)
    try:

        async def main() -> None:
            async with SqliteStore(tmp_path / "new" / "deeper" / "s.db") as store:
                await store.create_campaign("c", {})
                for name in ("s.db", "s.db-wal", "s.db-shm", "s.db.sends"):
                    mode = (tmp_path / "new" / "deeper" / name).stat().st_mode & 0o777
                    assert mode == 0o600, (name, oct(mode))

        anyio.run(main)
    finally:
        os.umask(old)
    for folder in (tmp_path / "new", tmp_path / "new" / "deeper"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    with sqlite3.connect(tmp_path / "new" / "deeper" / "s.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM campaigns").fetchone()[0] == 1


async def _sends_started(path: Path, rows: int) -> Path:
    """A store at ``path`` whose campaign ``c`` has ``rows`` rows marked `sending`, one commit (so
    one journal line) each; returns its send journal."""
    async with SqliteStore(path) as store:
        await store.create_campaign("c", {})
        for r in await store.admit("c", [_new(i) for i in range(2, 2 + rows)]):
            await store.mark_sending(r.id, started_at=_now(), correlation=f"c/{r.row}")
    return Path(f"{path}.sends")


def _new(row: int) -> Any:
    from bulksend.store import NewRecipient

    return NewRecipient(row, f"u{row}@example.com", key=f"u{row}@example.com")


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_reconcile_all_is_refused_as_one_of_several_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--reconcile-all with --worker exits 1 and says to run it once, alone, before the workers."""
    from bulksend.cli.main import main

    campaign, _ = write_csv_campaign(tmp_path, 3, rate_per_s=10, concurrency=1)
    monkeypatch.setenv("SCW_SECRET_KEY", CHAOS_SECRET)
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", CHAOS_PROJECT)
    monkeypatch.setenv("SCW_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SCW_CONFIG_PATH", str(tmp_path / "none.yaml"))
    args = ["send", str(campaign), "--no-progress", "--reconcile-all", "--worker"]
    assert main([*args, "--store", "postgresql://nobody@127.0.0.1/test"]) == 1
    assert "without --worker" in capsys.readouterr().err


async def test_damaged_state_file_says_what_to_do(tmp_path: Path) -> None:
    """A state file that is not a database any more is refused with what to do: move it away, and
    the send journal then requires --reconcile-all."""
    path = tmp_path / "s.db"
    _write_noise(path)
    with pytest.raises(StoreError, match="move it away") as refused:
        await SqliteStore(path).open()
    assert "--reconcile-all" in str(refused.value)


def _write_noise(path: Path) -> None:
    path.write_bytes(random.Random(2).randbytes(8192))
