"""`bulksend recheck`: the unknown emails of a finished campaign looked up at TEM again."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from bulksend.campaign.load import Campaign
from bulksend.cli.main import main
from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.store import open_store
from tests.conftest import PROJECT, SECRET, CampaignWriter, outcomes_from_store, read_jsonl, run_once
from tests.test_cli import env_for


class _Clock:
    """The sandbox's clock, which a test moves forward so that a `hold…` email gets sent."""

    def __init__(self) -> None:
        self.shift_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift_s


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
async def held(clock: _Clock) -> AsyncIterator[Sandbox]:
    """A sandbox on a clock the test moves: `hold…` recipients stay `new` until it moves."""
    config = SandboxConfig(secret_key=SECRET, project_id=PROJECT, seed=1)
    async with Sandbox(config, host="127.0.0.1", port=0, clock=clock) as sb:
        yield sb


@pytest.fixture
async def gave_up(held: Sandbox, write_campaign: CampaignWriter, monkeypatch: pytest.MonkeyPatch) -> Campaign:
    """A finished campaign whose `hold1` email tracking gave up on (`unknown`)."""
    env_for(monkeypatch, held.url)
    campaign = write_campaign(
        [{"email": "ann@example.com"}, {"email": "hold1@example.com", "name": "=Hal"}], give_up_after_s=0.3
    )
    assert (await run_once(campaign, held)).complete
    assert read_jsonl(campaign.output.outcomes)[1]["status"] == "unknown"
    return campaign


async def _main(*words: str) -> int:
    # The command runs its own event loop: give it a thread of its own.
    return await anyio.to_thread.run_sync(main, list(words))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
async def test_recheck_of_an_outcomes_file_records_what_tem_says_now(
    gave_up: Campaign,
    held: Sandbox,
    clock: _Clock,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    suffix: str,
) -> None:
    """An unknown email still not final stays unknown (exit 3, file untouched); once TEM has sent
    it, recheck rewrites its line as sent, with final_at, found by a list call (no read by id)."""
    path = tmp_path / f"outcomes{suffix}"
    await outcomes_from_store(gave_up, path)
    before = path.read_bytes()
    assert await _main("recheck", str(path)) == 3
    assert "1 are not final at TEM yet: run `bulksend recheck" in capsys.readouterr().out
    assert path.read_bytes() == before
    clock.shift_s = 2 * held.config.hold_s
    gets = held.stats().requests.get("get", 0)
    assert await _main("recheck", str(path)) == 0
    out = capsys.readouterr().out
    assert "looked up 1 unknown emails at TEM: 1 are final now (sent 1)" in out
    assert held.stats().requests.get("get", 0) == gets
    if suffix == ".csv":
        lines = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        ann, hal = lines
        assert (hal["status"], hal["name"], hal["reason"]) == ("sent", "'=Hal", "")
    else:
        ann, hal = read_jsonl(path)
        assert (hal["status"], hal["name"], hal["reason"]) == ("sent", "=Hal", None)
    assert hal["final_at"]
    assert ann["status"] == "sent"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left


async def test_recheck_of_a_campaign_updates_its_state_and_outcomes(
    gave_up: Campaign, held: Sandbox, clock: _Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given the campaign file, recheck records the final status in the campaign's store (a rerun
    reports it) and writes the outcomes file again from it."""
    clock.shift_s = 2 * held.config.hold_s
    code = await _main("recheck", str(gave_up.path), "--store", str(gave_up.store_path))
    assert code == 0, capsys.readouterr()
    assert [line["status"] for line in read_jsonl(gave_up.output.outcomes)] == ["sent", "sent"]
    store = open_store(gave_up.store_path)
    await store.open()
    try:
        counts = await store.counts(gave_up.id)
    finally:
        await store.close()
    assert counts.get("status:sent") == 2
    assert "status:unknown" not in counts
    assert await _main("recheck", str(gave_up.path), "--store", str(gave_up.store_path)) == 0
    assert "no unknown email to look up" in capsys.readouterr().out


async def test_recheck_with_a_refused_key_says_so_without_the_key(
    gave_up: Campaign, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key TEM refuses exits 2 with the clear message; the key appears nowhere."""
    monkeypatch.setenv("SCW_SECRET_KEY", "refused-key-31c8")
    assert await _main("recheck", str(gave_up.output.outcomes)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("stopped: TEM refused the secret key (401")
    assert "refused-key-31c8" not in captured.out + captured.err
