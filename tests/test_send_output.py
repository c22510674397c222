"""What `bulksend send` prints while it runs and when it ends, as a user sees it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulksend.cli.main import main
from bulksend.sandbox import SandboxConfig, sandbox_in_thread
from tests.conftest import PROJECT, SECRET
from tests.test_cli import env_for, write


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
