"""Writing a report: the HTML, the resend file with the recipients' variables, the run's timeline."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from bulksend.pipeline.account import account_limiter
from bulksend.pipeline.stats import RunStats
from bulksend.reporting.aggregate import ReportAggregate
from bulksend.reporting.files import default_report_path, resend_path, timeline_path, write_report
from bulksend.reporting.html import ReportMeta, render_report, render_sections
from bulksend.reporting.timeline import RunInfo, read_timeline, record_timeline
from bulksend.sinks.outcomes import write_outcomes
from tests.test_report_aggregate import T0, known_lines
from tests.waiting import wait_until


async def _each(lines: list[dict[str, Any]]) -> AsyncIterator[Mapping[str, Any]]:
    for item in lines:
        yield item


def write_outcomes_file(path: Path, lines: list[dict[str, Any]]) -> Path:
    anyio.run(write_outcomes, path, _each(lines))
    return path


def recipients_for(folder: Path, lines: list[dict[str, Any]], *, jsonl: bool = False) -> Path:
    """A recipients file whose row numbers are those of ``lines`` (line 1 is the CSV header)."""
    if jsonl:
        path = folder / "people.jsonl"
        by_row = {item["row"]: item for item in lines}
        body = [
            orjson.dumps({"email": by_row[r]["email"], "name": by_row[r]["name"], "plan": {"tier": r}})
            for r in range(1, max(by_row) + 1)
        ]
        path.write_bytes(b"\n".join(body) + b"\n")
        return path
    path = folder / "people.csv"
    rows = {item["row"]: item for item in lines}
    text = "email,name,first_name,plan\n" + "".join(
        f"{rows[r]['email']},{rows[r]['name']},F{r},p{r}\n" for r in range(2, max(rows) + 1)
    )
    path.write_text(text, encoding="utf-8")
    return path


def shifted(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines with rows 2, 3, … (a CSV's first line is its header)."""
    return [{**item, "row": item["row"] + 1} for item in lines]


def test_report_and_resend_file_of_a_known_outcomes_file(tmp_path: Path) -> None:
    """The report is written beside its resend file, which holds the temporary failures, the
    canceled and the unknown rows with their variables read from the recipients file."""
    lines = shifted(known_lines())
    outcomes = write_outcomes_file(tmp_path / "out" / "run.jsonl", lines)
    people = recipients_for(tmp_path, lines)
    html = default_report_path(outcomes)
    files = write_report(outcomes, html, meta=ReportMeta(campaign_id="c1", recipients=str(people)))
    assert html == tmp_path / "out" / "run.report.html"
    assert files.rows == 12
    assert files.resend == tmp_path / "out" / "run.resend.csv"
    assert files.resend_rows == 3
    assert files.resend.read_text(encoding="utf-8").splitlines() == [
        "email,name,first_name,plan",
        "user7@example.com,Person 7,F8,p8",  # failed: mailbox_full
        "user11@example.com,Person 11,F12,p12",  # unknown
        "user12@example.com,Person 12,F13,p13",  # canceled
    ]
    page = html.read_text(encoding="utf-8")
    assert 'href="run.jsonl"' in page
    assert 'href="run.resend.csv"' in page
    for made in (html, files.resend):
        assert stat.S_IMODE(made.stat().st_mode) == 0o600
    assert not list(html.parent.glob(".*"))  # no temporary file left behind


def test_resend_file_of_jsonl_recipients_writes_structured_values_as_json(tmp_path: Path) -> None:
    """A JSONL recipient's object variable becomes a JSON cell; a report elsewhere links back relatively."""
    lines = known_lines()
    outcomes = write_outcomes_file(tmp_path / "run.csv", lines)
    people = recipients_for(tmp_path, lines, jsonl=True)
    html = tmp_path / "reports" / "may.html"
    files = write_report(outcomes, html, meta=ReportMeta(recipients=str(people)))
    assert files.resend == tmp_path / "reports" / "may.resend.csv"
    assert files.resend.read_text(encoding="utf-8").splitlines()[:2] == [
        "email,name,plan",
        'user7@example.com,Person 7,"{""tier"":7}"',
    ]
    assert 'href="../run.csv"' in html.read_text(encoding="utf-8")


def test_without_recipients_file_resend_has_email_and_name_and_a_stale_one_goes(tmp_path: Path) -> None:
    """Without the recipients file the resend rows carry email and name; a report with nothing to
    resend removes the resend file an earlier report left."""
    outcomes = write_outcomes_file(tmp_path / "run.jsonl", known_lines())
    html = tmp_path / "run.report.html"
    files = write_report(outcomes, html)
    assert files.resend is not None
    assert files.resend.read_text(encoding="utf-8").splitlines()[0:2] == [
        "email,name",
        "user7@example.com,Person 7",
    ]
    write_outcomes_file(outcomes, [item for item in known_lines() if item["status"] == "sent"])
    again = write_report(outcomes, html)
    assert again.resend is None
    assert not resend_path(html).exists()
    assert "No recipient is worth sending again" in html.read_text(encoding="utf-8")


def test_a_file_that_is_not_outcomes_writes_nothing(tmp_path: Path) -> None:
    """A line that is not JSON raises ValueError, and neither report nor resend file is written."""
    bad = tmp_path / "notes.jsonl"
    bad.write_text('{"status": "canceled", "email": "a@b.example"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"unexpected|JSON|invalid"):
        write_report(bad, tmp_path / "r.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.jsonl"]


async def test_the_timeline_records_samples_and_keeps_earlier_runs(tmp_path: Path) -> None:
    """A run's samples carry its counters (429s, submitted) in the timeline file; the next run adds
    its own after them; the report reads both and names the campaign from them."""
    outcomes = tmp_path / "run.jsonl"
    path = timeline_path(outcomes)
    assert path == tmp_path / "run.timeline.jsonl"

    async def one_run(throttled: int, submitted: int) -> None:
        stats, limiter = RunStats(), account_limiter(50.0)
        run = RunInfo("c9", "News <n@example.com>", str(tmp_path / "people.csv"), None, T0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: record_timeline(path, stats, limiter, run, interval_s=0.01, flush_s=0.0))
            for _ in range(throttled):
                stats.on_response("send", 429, 0.01)
            stats.submitted = submitted
            stats.on_response("send", 200, 0.01)
            await wait_until(
                lambda: any(
                    s.submitted == submitted and s.run == len(read_timeline(path)[0]) - 1
                    for s in read_timeline(path)[1]
                ),
                what="a sample of this run in the file",
            )
            tg.cancel_scope.cancel()

    await one_run(throttled=3, submitted=40)
    await one_run(throttled=0, submitted=70)
    runs, samples = read_timeline(path)
    assert [r.campaign for r in runs] == ["c9", "c9"]
    assert all(r.ended is not None for r in runs)
    assert max(s.throttled for s in samples if s.run == 0) == 3
    assert max(s.submitted for s in samples if s.run == 1) == 70
    assert all(s.limit_per_s > 0 for s in samples)
    await write_outcomes(outcomes, _each(known_lines()))
    write_report(outcomes, tmp_path / "run.report.html")
    page = (tmp_path / "run.report.html").read_text(encoding="utf-8")
    assert "Campaign c9" in page
    assert "News &lt;n@example.com&gt;" in page
    assert "3 answers were 429" in page


async def test_a_run_without_api_calls_leaves_no_timeline(tmp_path: Path) -> None:
    """An already finished campaign's run calls nothing: the timeline file is not created."""
    path = tmp_path / "t.timeline.jsonl"
    stats, limiter = RunStats(), account_limiter(50.0)
    run = RunInfo("c9", "n@example.com", str(tmp_path / "none.csv"), None, T0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: record_timeline(path, stats, limiter, run, interval_s=0.01, flush_s=0.0))
        await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    assert not path.exists()


def test_text_from_data_is_escaped_and_an_empty_aggregate_renders() -> None:
    """Markup in answers, reasons, addresses and the campaign's names is shown as text, never run;
    a report of nothing yet (a dashboard's first view) renders every section."""
    hostile = "<script>alert(1)</script>"
    lines = [
        {**known_lines()[4], "smtp_message": hostile, "email": 'x@"><img src=x onerror=alert(1)>.example'},
        {**known_lines()[7], "reason": hostile},
    ]
    aggregate = ReportAggregate().add_all(lines)
    page = render_report(aggregate, ReportMeta(campaign_id=hostile, sender=hostile, outcomes_href="o.jsonl"))
    assert "<script" not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    empty = render_sections(ReportAggregate())
    for section in ("bs-headline", "bs-over-time", "bs-why-not-sent", "bs-domains", "bs-timing"):
        assert f'id="{section}"' in empty
    assert "No outcome yet." in empty
