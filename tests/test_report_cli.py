"""`bulksend send` leaves a report beside its outcomes; `bulksend report OUTCOMES --html PATH` writes one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulksend.cli.main import main
from bulksend.reporting.timeline import read_timeline
from bulksend.sandbox import SandboxConfig, sandbox_in_thread
from tests.conftest import PROJECT, SECRET
from tests.test_cli import env_for, write


def sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Send the test campaign through a sandbox; the folder of its outcomes (out/run.jsonl)."""
    path = write(tmp_path, outcomes="out/run.jsonl")
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        assert main(["send", str(path), "--no-progress"]) == 0
    return tmp_path / "out"


def test_send_writes_the_report_the_resend_file_and_the_timeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A send writes <stem>.report.html, its timeline beside the outcomes, and says where the report is."""
    assert sent(tmp_path, monkeypatch) == tmp_path / "out"
    report = tmp_path / "out" / "run.report.html"
    page = report.read_text(encoding="utf-8")
    assert "Campaign cli-test" in page
    assert "News &lt;news@example.com&gt;" in page
    assert 'href="run.jsonl"' in page
    runs, samples = read_timeline(tmp_path / "out" / "run.timeline.jsonl")
    assert [r.campaign for r in runs] == ["cli-test"]
    assert runs[0].recipients == str((tmp_path / "people.csv").resolve())
    assert samples[-1].submitted == 2
    assert f"report: {report}" in capsys.readouterr().out.replace("\n", "")
    # bounce1@… is a hard bounce: permanent, so nobody is worth sending again.
    assert not (tmp_path / "out" / "run.resend.csv").exists()


def test_report_html_writes_the_report_and_refuses_a_file_that_is_not_outcomes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`report --html` exits 0 with the report written; on a file that is not outcomes it exits 1
    and writes nothing."""
    outcomes = tmp_path / "o.jsonl"
    outcomes.write_text(
        '{"email": "a@example.com", "row": 1, "status": "sent", "flags": []}\n'
        '{"email": "b@example.com", "row": 2, "status": "unknown", "flags": [], "reason": "still sending"}\n',
        encoding="utf-8",
    )
    assert main(["report", str(outcomes), "--html", str(tmp_path / "r.html")]) == 0
    assert "Outcomes o.jsonl" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert (tmp_path / "r.resend.csv").read_bytes() == b"email,name\r\nb@example.com,\r\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"status": "sent"}\nnot json\n', encoding="utf-8")
    assert main(["report", str(bad), "--html", str(tmp_path / "bad.html")]) == 1
    assert "is not an outcomes file" in capsys.readouterr().err
    assert not (tmp_path / "bad.html").exists()
