"""`bulksend report` on the outcomes of a real run: filters, exports, domains, the resend file."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import orjson
import pytest

from bulksend.campaign.load import Campaign
from bulksend.cli.main import main
from bulksend.sandbox import Sandbox
from tests.conftest import CampaignWriter, outcomes_from_store, run_once

RECIPIENTS = [
    {"email": "ann@example.com", "name": "Ann", "first_name": "Ann"},
    {"email": "bounce1@example.com", "name": "Bob"},
    {"email": "full1@other.org", "name": "Fay"},
    {"email": "stuck1@other.org", "name": "=Stu"},
    {"email": "not-an-address", "name": "Cy"},
    {"email": "ANN@example.com", "name": "Dup"},
    {"email": "cy@example.com", "name": "Cy"},
]


@pytest.fixture
async def finished(sandbox: Sandbox, write_campaign: CampaignWriter) -> Campaign:
    """A campaign run to its end: sent, failed (hard bounce, mailbox full), unknown, rejected, skipped."""
    campaign = write_campaign(RECIPIENTS, give_up_after_s=0.3)
    assert (await run_once(campaign, sandbox)).complete
    return campaign


def _report(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str, str]:
    code = main(["report", *words])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _jsonl(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines()]


async def test_status_and_flag_filters_select_the_rows_exported(
    finished: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    """--status and --flag keep the matching rows; --format jsonl and csv print them to stdout."""
    path = str(finished.output.outcomes)
    code, out, _ = _report(capsys, path, "--status", "failed,unknown", "--format", "jsonl")
    assert code == 0
    assert [(r["email"], r["status"]) for r in _jsonl(out)] == [
        ("bounce1@example.com", "failed"),
        ("full1@other.org", "failed"),
        ("stuck1@other.org", "unknown"),
    ]
    code, out, _ = _report(capsys, path, "--flag", "hard_bounce", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["email"], r["flags"]) for r in rows] == [
        ("bounce1@example.com", "hard_bounce;mailbox_not_found")
    ]
    code, out, _ = _report(capsys, path, "--status", "rejected")
    assert code == 0
    assert re.search(r"rejected\s*│\s*1\s*│", out), out
    assert re.search(r"total\s*│\s*1\s*│", out), out


@pytest.mark.parametrize(
    ("option", "value", "valid"),
    [
        ("--status", "sent,delivered", "sent, failed, canceled, rejected, skipped, unknown"),
        ("--flag", "hardbounce", "soft_bounce, hard_bounce, spam, mailbox_full, mailbox_not_found"),
    ],
)
async def test_unknown_filter_values_are_refused_naming_the_valid_ones(
    finished: Campaign, capsys: pytest.CaptureFixture[str], option: str, value: str, valid: str
) -> None:
    """A status or flag that does not exist exits 1 with the valid values, nothing on stdout."""
    code, out, err = _report(capsys, str(finished.output.outcomes), option, value)
    assert code == 1
    assert out == ""
    assert err.startswith(f"error: {option}: unknown value ")
    assert valid in err


async def test_domain_breakdown_counts_rows_per_recipient_domain(
    finished: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    """--domain counts rows, sent, failed and other per domain, largest first; --top N keeps N."""
    path = str(finished.output.outcomes)
    code, out, _ = _report(capsys, path, "--domain", "--format", "jsonl")
    assert code == 0
    assert _jsonl(out) == [
        {"domain": "example.com", "rows": 4, "sent": 2, "failed": 1, "other": 1},
        {"domain": "other.org", "rows": 2, "sent": 0, "failed": 1, "other": 1},
        {"domain": "(none)", "rows": 1, "sent": 0, "failed": 0, "other": 1},
    ]
    code, out, _ = _report(capsys, path, "--domain", "--top", "1")
    assert code == 0
    assert "example.com" in out
    assert "other.org" not in out
    assert "… and 2 more domains (3 rows)" in out


async def test_resend_file_holds_the_rows_worth_sending_again_and_sends_as_a_campaign(
    finished: Campaign, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--resend-file writes the canceled, unknown and temporarily failed rows (not hard bounces)
    as a recipients CSV that a new campaign can send; the outcomes file itself is refused."""
    outcomes = finished.output.outcomes
    before = outcomes.read_bytes()
    target = tmp_path / "again" / "resend.csv"
    target.parent.mkdir()
    code, _, _ = _report(capsys, str(outcomes), "--resend-file", str(target), "--format", "csv")
    assert code == 0
    rows = list(csv.reader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert rows == [["email", "name"], ["full1@other.org", "Fay"], ["stuck1@other.org", "'=Stu"]]
    assert target.stat().st_mode & 0o777 == 0o600
    campaign = finished.path.read_text().replace('"recipients.jsonl"', f'"{target}"')
    (target.parent / "campaign.toml").write_text(campaign.replace("test-campaign", "resend"))
    assert main(["send", str(target.parent / "campaign.toml"), "--dry-run"]) == 0
    assert "would send" in capsys.readouterr().out
    code, _, err = _report(capsys, str(outcomes), "--resend-file", str(outcomes))
    assert code == 1
    assert "is the outcomes file itself" in err
    assert outcomes.read_bytes() == before


async def test_csv_outcomes_read_back_as_the_jsonl_ones(
    finished: Campaign, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The same outcomes written as CSV export as the same JSONL lines: numbers, nulls, flags and
    the values a spreadsheet would run as formulas come back exactly."""
    as_csv = tmp_path / "outcomes.csv"
    await outcomes_from_store(finished, as_csv)
    _, from_jsonl, _ = _report(capsys, str(finished.output.outcomes), "--format", "jsonl")
    _, from_csv, _ = _report(capsys, str(as_csv), "--format", "jsonl")
    assert _jsonl(from_csv) == _jsonl(from_jsonl)
    assert any(r["name"] == "=Stu" for r in _jsonl(from_csv))
