"""The command line as a user runs it: send, --dry-run, report, demo, and the errors people hit."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bulksend.cli.main import main
from bulksend.sandbox import SandboxConfig, sandbox_in_thread
from bulksend.testing import campaign_toml
from tests.conftest import PROJECT, SECRET

PEOPLE = (
    "email,first_name\nann@example.com,Ann\nbounce1@example.com,Bob\nnot-an-address,Cy\nANN@example.com,Dup\n"
)


def campaign_file(outcomes: str = "out.jsonl") -> str:
    """The command-line tests' campaign: ``people.csv``, a fast pace and quick tracking."""
    return campaign_toml(
        "cli-test",
        campaign={"recipients": "people.csv"},
        sending={"rate_per_s": 2000, "concurrency": 8},
        tracking={"poll_interval_s": 0.05, "settle_s": 0.05},
        output={"outcomes": outcomes},
    )


def write(tmp_path: Path, *, outcomes: str = "out.jsonl", rows: str | None = None) -> Path:
    (tmp_path / "people.csv").write_text(
        rows or PEOPLE,
        encoding="utf-8",
    )
    path = tmp_path / "campaign.toml"
    path.write_text(campaign_file(outcomes), encoding="utf-8")
    return path


def env_for(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("SCW_SECRET_KEY", SECRET)
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", PROJECT)
    monkeypatch.setenv("SCW_API_URL", url)
    monkeypatch.setenv("SCW_CONFIG_PATH", "/nonexistent/config.yaml")


def test_send_writes_csv_outcomes_and_reruns_as_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bulksend send` exits 0, writes one CSV line per row, and a rerun sends nothing."""
    path = write(tmp_path, outcomes="out.csv")
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        assert main(["send", str(path), "--no-progress"]) == 0
        lines = (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("email,name,row,status,")
        assert len(lines) == 5
        statuses = [line.split(",")[3] for line in lines[1:]]
        assert statuses == ["sent", "failed", "rejected", "skipped"]
        assert main(["send", str(path), "--no-progress"]) == 0
        assert sum(sb.stats().accepted_by_recipient.values()) == 2
    out = capsys.readouterr().out
    assert "already finished" in out.replace("\n", " ")


def test_dry_run_sends_nothing_and_names_rejections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run needs no credentials, sends nothing and lists what would be rejected and skipped."""
    path = write(tmp_path)
    assert main(["send", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would send" in out
    assert "not-an-address" in out
    assert "duplicate of row 2" in out
    assert not (tmp_path / "out.jsonl").exists()


def test_missing_secret_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a secret key the command exits 1 and says which variable to set."""
    path = write(tmp_path)
    monkeypatch.delenv("SCW_SECRET_KEY", raising=False)
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", PROJECT)
    monkeypatch.setenv("SCW_CONFIG_PATH", str(tmp_path / "none.yaml"))
    assert main(["send", str(path), "--no-progress"]) == 1
    assert capsys.readouterr().err.startswith("error: no TEM secret key: set SCW_SECRET_KEY (")


def test_campaign_mistake_is_refused_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A template syntax error stops the command before anything is sent, naming file and line."""
    path = write(tmp_path)
    path.write_text(path.read_text().replace("Hi {{ first_name }}", "Hi {{ first_name "), encoding="utf-8")
    assert main(["send", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:5: template syntax error in the text template (line 1 of the"), err


@pytest.mark.parametrize("value", ['"9999-12-31T23:59:59-14:00"', "0001-01-01T00:00:00+14:00"])
def test_send_before_out_of_range_is_a_clear_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """A send_before outside years 1..9999 in UTC (string or TOML time) exits 1 naming it and the fix."""
    path = write(tmp_path)
    path.write_text(
        path.read_text().replace("[sending]", f"send_before = {value}\n[sending]"), encoding="utf-8"
    )
    assert main(["send", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:7: campaign.send_before "), err
    assert "is out of range: in UTC it falls outside years 1 to 9999); write it as an RFC 3339 time" in err
    assert err.count("\n") == 1  # the one error line, no traceback


def test_report_summarises_an_outcomes_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`bulksend report` counts statuses and flags from a JSONL outcomes file."""
    outcomes = tmp_path / "o.jsonl"
    lines = [
        {"email": "a@example.com", "status": "sent", "flags": []},
        {"email": "b@example.com", "status": "failed", "flags": ["hard_bounce"]},
        {"email": "c", "status": "rejected", "flags": [], "reason": "bad address"},
    ]
    outcomes.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    assert main(["report", str(outcomes)]) == 0
    out = capsys.readouterr().out
    assert "hard_bounce" in out
    assert "rejected" in out
    assert "bad address" in out


def test_report_refuses_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing outcomes file is a clear error, not a traceback."""
    assert main(["report", str(tmp_path / "nope.jsonl")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_demo_runs_to_the_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`bulksend demo` (small) completes with one outcome line per recipient and every outcome kind."""
    folder = tmp_path / "demo"
    assert main(["demo", "--dir", str(folder), "--recipients", "400", "--no-progress"]) == 0
    lines = [orjson.loads(line) for line in (folder / "outcomes.jsonl").read_bytes().splitlines()]
    assert len(lines) == 400
    statuses = {line["status"] for line in lines}
    assert statuses == {"sent", "failed", "rejected", "skipped", "unknown"}
    flags = {flag for line in lines for flag in line["flags"]}
    assert {"hard_bounce", "soft_bounce", "blocklisted", "spam", "mailbox_full"} <= flags
