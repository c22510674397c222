"""What `bulksend send` prints while it runs and when it ends, as a user sees it."""

from __future__ import annotations

import functools
import io
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import BinaryIO

import anyio
import orjson
import pytest
from rich.console import Console

from bulksend.cli.main import main
from bulksend.cli.progress import show_progress
from bulksend.pipeline.run import CampaignRun, Waiting
from bulksend.pipeline.stats import RunStats
from bulksend.sandbox import Sandbox, SandboxConfig, sandbox_in_thread
from tests.conftest import PROJECT, SECRET, CampaignWriter, run_once
from tests.test_cli import env_for, write
from tests.waiting import wait_until


def test_refused_key_prints_only_the_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key TEM refuses (401) stops the run with exit 2 and one clear message: no log line of the
    tracker's failed polls before it, and never the key itself."""
    path = write(tmp_path)
    wrong_key = "wrong-key-7d1e9a"
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        monkeypatch.setenv("SCW_SECRET_KEY", wrong_key)
        assert main(["send", str(path), "--no-progress", "--log-format", "json"]) == 2
        assert sum(sb.stats().requests.values()) > 0
    captured = capsys.readouterr()
    err = captured.err
    assert "tracker.poll_failed" not in err
    assert err.startswith("stopped: TEM refused the secret key (401"), err
    assert "Check SCW_SECRET_KEY" in err
    assert wrong_key not in err + captured.out


class _Clock:
    """The sandbox's clock, which a test can move forward (a `hold…` email is then sent)."""

    def __init__(self) -> None:
        self.shift_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift_s


def _outputs(folder: Path) -> tuple[BinaryIO, BinaryIO]:
    """Files for a child's stdout and stderr, as when a user redirects both to files."""
    return open(folder / "stdout.txt", "wb"), open(folder / "stderr.txt", "wb")


@pytest.mark.parametrize("log_format", ["console", "json"])
async def test_progress_off_a_terminal_is_plain_lines_that_say_what_the_run_waits_for(
    tmp_path: Path, log_format: str
) -> None:
    """With stderr redirected to a file, `bulksend send` prints whole progress lines (JSON log lines
    with --log-format json), one as soon as the run waits for TEM to finish, and no live frame."""
    path = write(tmp_path, rows="email,first_name\nann@example.com,Ann\nhold1@example.com,Hal\n")
    clock = _Clock()
    err_path = tmp_path / "stderr.txt"
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT), clock=clock) as sb:
        env = {**os.environ, "SCW_SECRET_KEY": SECRET, "SCW_DEFAULT_PROJECT_ID": PROJECT}
        env.update(SCW_API_URL=sb.url, SCW_CONFIG_PATH=str(tmp_path / "none.yaml"))
        command = [sys.executable, "-m", "bulksend.cli", "send", str(path), "--log-format", log_format]
        out, err = _outputs(tmp_path)
        with out, err:
            process = await anyio.open_process(command, stdout=out, stderr=err, env=env)
        async with process:
            await wait_until(
                lambda: "waiting for 1 email to become final" in err_path.read_text(encoding="utf-8"),
                what="a progress line saying the run waits for the held email",
            )
            clock.shift_s = 2 * sb.config.hold_s  # the held email leaves `new` and is sent
            await process.wait()
    assert process.returncode == 0
    text = err_path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    for frame in ("\x1b", "━", "\r"):  # no live frame, no colour
        assert frame not in text
    lines = text.splitlines()
    if log_format == "json":
        records = [orjson.loads(line) for line in lines]
        waiting = [r for r in records if r["event"] == "campaign.progress" and r["waiting"]]
        assert waiting[0]["waiting"] == "waiting for 1 email to become final"
        assert (waiting[0]["total"], waiting[0]["level"]) == (2, "info")
    else:
        assert any(
            line.startswith("progress: 1/2 done (50 %)")
            and line.endswith("waiting for 1 email to become final")
            for line in lines
        ), lines
    assert "sent" in (tmp_path / "stdout.txt").read_text(encoding="utf-8")


async def test_run_says_it_waits_to_look_ambiguous_sends_up_on_the_live_display(
    sandbox: Sandbox, write_campaign: CampaignWriter
) -> None:
    """While every send is ambiguous and waits to be looked up, the run says so as observable
    state, and the live display on a terminal shows it instead of sitting at "in flight 0"."""
    sandbox.update(fault_5xx_after_p=1.0)  # TEM creates each email, then answers 500
    campaign = write_campaign([{"email": f"u{i}@example.com"} for i in range(3)], settle_s=3600)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200)
    runners: list[CampaignRun] = []
    stats = RunStats(total_rows=3)

    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await wait_until(lambda: bool(runners), what="the run to start")
            runner = runners[0]
            tg.start_soon(
                functools.partial(
                    show_progress, stats, runner.limiter, waiting=runner.waiting_for, console=console
                )
            )
            await wait_until(
                lambda: (w := runner.waiting_for()) is not None and w.what == "lookup" and w.count == 3,
                what="the run to wait for its three lookups",
            )
            await wait_until(
                lambda: "3 ambiguous sends: looking them up at TEM in" in screen.getvalue(),
                what="the live display to show the wait",
            )
            runner.abort()

        tg.start_soon(watch)
        result = await run_once(campaign, sandbox, stats=stats, on_start=runners.append)
        tg.cancel_scope.cancel()
    assert not result.complete
    wait = Waiting("lookup", 3, 3600.0)
    assert wait.describe() == "3 ambiguous sends: looking them up at TEM in 3,600 s"


async def test_summary_after_ctrl_c_counts_rows_never_read_and_says_how_to_resume(tmp_path: Path) -> None:
    """Ctrl-C during a send: the summary counts the rows of the file never read (the total is the
    file's, not the rows read), says what was read and sent, and gives the command that resumes."""
    rows = "".join(f"u{i}@example.com,U{i}\n" for i in range(1200))
    path = write(tmp_path, rows="email,first_name\n" + rows)
    path.write_text(
        path.read_text().replace("rate_per_s = 2000\nconcurrency = 8", "rate_per_s = 20\nconcurrency = 2")
    )
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env = {**os.environ, "SCW_SECRET_KEY": SECRET, "SCW_DEFAULT_PROJECT_ID": PROJECT}
        env.update(SCW_API_URL=sb.url, SCW_CONFIG_PATH=str(tmp_path / "none.yaml"))
        command = [sys.executable, "-m", "bulksend.cli", "send", str(path), "--no-progress"]
        out, err = _outputs(tmp_path)
        with out, err:
            process = await anyio.open_process(command, stdout=out, stderr=err, env=env)
        async with process:
            await wait_until(
                lambda: len(sb.stats().accepted_by_recipient) >= 5, what="a few emails to be sent"
            )
            process.send_signal(signal.SIGINT)
            await process.wait()
    assert process.returncode == 130
    text = (tmp_path / "stdout.txt").read_text(encoding="utf-8")
    flat = " ".join(text.split())
    assert "read 500 of about 1,200 rows;" in flat, text
    assert "about 700 rows not reached (never read)" in flat
    assert re.search(r"not reached\s*│\s*700\s*│", text), text
    assert re.search(r"total\s*│\s*1,200\s*│", text), text
    assert f"To resume, run the same command again: bulksend send {path} (nobody" in flat


async def test_send_rate_is_over_this_runs_sends_not_adoptions(
    sandbox: Sandbox, write_campaign: CampaignWriter
) -> None:
    """Emails found at TEM by reconciliation (sent before, or answered ambiguously) count as
    submitted but not in the sending span: the summary's rate is over this run's own sends."""
    sandbox.update(fault_5xx_after_p=1.0)  # every email is created, then answered 500: adopted
    campaign = write_campaign([{"email": f"u{i}@example.com"} for i in range(3)])
    stats = RunStats()

    async def heal() -> None:
        await wait_until(lambda: stats.ambiguous == 3, what="the three sends to be ambiguous")
        sandbox.update(fault_5xx_after_p=0.0)  # the lookups then find the emails

    async with anyio.create_task_group() as tg:
        tg.start_soon(heal)
        result = await run_once(campaign, sandbox, stats=stats)
    assert result.complete
    assert (stats.reconciled_adopted, stats.submitted_this_run) == (3, 3)
    assert (stats.sent_this_run, stats.send_span_s, stats.submit_rate_per_s()) == (0, 0.0, 0.0)
