"""Data and messages are printed as text, never read as Rich markup."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from bulksend.cli.display import print_error
from bulksend.cli.main import main
from bulksend.cli.summary import Summary, print_summary
from bulksend.sandbox import SandboxConfig, sandbox_in_thread
from tests.conftest import PROJECT, SECRET
from tests.test_cli import env_for, write

MARKUP = ["[/x]", "[bold]not bold[/bold]", "[/y].pdf", "[link=http://evil]x[/link]", "[sending]"]


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide terminal, so no table cell or line is wrapped in the middle of what a test looks for."""
    monkeypatch.setenv("COLUMNS", "300")


def test_summary_prints_every_title_cell_and_note_as_text() -> None:
    """Markup-like text in the title, statuses, flags, reasons and notes is printed as it is."""
    summary = Summary(
        "campaign [/x]",
        by_status=Counter({"sent": 1, "[/z]": 2}),
        by_flag=Counter(dict.fromkeys(MARKUP, 1)),
        reasons=Counter({f"attachment {m!r} does not exist": 1 for m in MARKUP}),
        notes=[f"outcomes: out/{m}.jsonl" for m in MARKUP],
    )
    out = io.StringIO()
    print_summary(summary, Console(file=out, width=300))
    text = out.getvalue()
    assert "campaign [/x]" in text
    assert "[/z]" in text
    for m in MARKUP:
        assert text.count(m) >= 3, m  # flag, reason and note


def test_errors_keep_bracketed_words() -> None:
    """An error message naming a [table] keeps it; only the label is styled."""
    out = io.StringIO()
    message = "unknown key 'rate_per_sec' in [sending]; did you mean 'rate_per_s'?"
    print_error(Console(file=out, width=300), message)
    assert out.getvalue().strip() == f"error: {message}"


def test_report_prints_flags_and_reasons_with_brackets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bulksend report` over outcomes whose flags and reasons look like markup exits 0 and shows them."""
    outcomes = tmp_path / "o.jsonl"
    lines = [
        {"email": "a@example.com", "status": "failed", "flags": ["[/y]", "[bold]"]},
        {"email": "b@example.com", "status": "rejected", "flags": [], "reason": "attachment [/x].pdf is odd"},
    ]
    outcomes.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    assert main(["report", str(outcomes)]) == 0
    out = capsys.readouterr().out
    for shown in ("[/y]", "[bold]", "[/x].pdf"):
        assert shown in out, out


def test_send_with_a_bracketed_attachment_cell_ends_with_its_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row whose attachments cell is `[/x].pdf` is rejected and named; the run exits 0, not 1."""
    rows = "email,first_name,attachments\nann@example.com,Ann,\nbob@example.com,Bob,[/x].pdf\n"
    path = write(tmp_path, rows=rows)
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        assert main(["send", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "[/x].pdf" in out
    lines = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert [line["status"] for line in lines] == ["sent", "rejected"]


def test_campaign_errors_show_bracketed_ids_and_table_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A campaign id `[/x]`, an unknown [sending] key and an unknown table are reported in full."""
    path = write(tmp_path)
    original = path.read_text()
    cases = [
        (original.replace('id = "cli-test"', 'id = "[/x]"'), "campaign.id '[/x]' is not usable"),
        (
            original.replace("rate_per_s = 2000", "rate_per_sec = 2000"),
            "in [sending]; did you mean 'rate_per_s'?",
        ),
        (original + "[sendings]\nx = 1\n", "did you mean [sending]?"),
        ("oops = 1\n" + original, "the tables are [campaign], [sending]"),
    ]
    for text, expected in cases:
        path.write_text(text, encoding="utf-8")
        assert main(["send", str(path), "--dry-run"]) == 1
        err = capsys.readouterr().err
        assert expected in err, err
