"""CSV outcome cells are neutralised against spreadsheet formulas; JSONL keeps every value exactly."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksend.cli.main import main
from bulksend.sandbox import SandboxConfig, sandbox_in_thread
from bulksend.sinks.outcomes import CSV_FORMULA_TRIGGERS, OUTCOME_FIELDS, write_outcomes
from tests.conftest import PROJECT, SECRET
from tests.test_cli import env_for, write

TEXT_FIELDS = ("email", "name", "status_details", "smtp_message", "reason")


def line_with(text: str) -> dict[str, Any]:
    """An outcome line carrying ``text`` in every text field and as its one flag."""
    line: dict[str, Any] = dict.fromkeys(OUTCOME_FIELDS)
    line.update(dict.fromkeys(TEXT_FIELDS, text))
    line.update(row=7, status="failed", flags=[text], smtp_code=550, try_count=1, attempts=1)
    return line


async def _lines(lines: list[dict[str, Any]]) -> AsyncIterator[Mapping[str, Any]]:
    for line in lines:
        yield line


def write_both(folder: Path, lines: list[dict[str, Any]]) -> tuple[list[dict[str, str]], list[Any]]:
    """Write ``lines`` as CSV and as JSONL; returns the CSV rows and the JSONL objects read back."""
    csv_path, jsonl_path = folder / "o.csv", folder / "o.jsonl"
    anyio.run(write_outcomes, csv_path, _lines(lines))
    anyio.run(write_outcomes, jsonl_path, _lines(lines))
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return rows, [orjson.loads(x) for x in jsonl_path.read_bytes().splitlines()]


FORMULAS = ["=1+1", "-2+3", "+1", "@SUM(A1)", '=HYPERLINK("http://evil")', "\t=1", "\r=1", "=x@example.com"]


def test_formula_cells_get_a_leading_quote_and_jsonl_stays_exact(tmp_path: Path) -> None:
    """Every text cell starting with = + - @ tab or CR is written with a leading ' ; JSONL is untouched."""
    lines = [line_with(text) for text in [*FORMULAS, "Ann", "o'brien", "a-b", "", "two\rlines\nthree"]]
    rows, objects = write_both(tmp_path, lines)
    for line, row, obj in zip(lines, rows, objects, strict=True):
        text = line["name"]
        expected = "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
        for field in (*TEXT_FIELDS, "flags"):
            assert row[field] == expected, (field, text)
        assert row["row"] == "7"
        assert row["smtp_code"] == "550"
        assert obj == line


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_no_csv_cell_starts_with_a_formula_trigger(tmp_path: Path, text: str) -> None:
    """For any string, no CSV cell starts with a formula trigger, the text survives after the
    quote, and the JSONL line round-trips exactly."""
    line = line_with(text)
    folder = tmp_path / os.urandom(6).hex()
    folder.mkdir()
    [row], [obj] = write_both(folder, [line])
    for field in OUTCOME_FIELDS:
        assert not row[field].startswith(CSV_FORMULA_TRIGGERS), (field, row[field])
    for field in TEXT_FIELDS:
        cell = row[field]
        assert cell == text or (cell == "'" + text and text.startswith(CSV_FORMULA_TRIGGERS))
    assert obj == line


def test_csv_outcomes_of_a_real_send_are_neutralised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bulksend send` to a .csv file writes formula-like names and addresses with a leading quote."""
    rows = (
        "email,first_name,name\n"
        'ann@example.com,Ann,"=HYPERLINK(""http://evil"")"\n'
        "bob@example.com,Bob,-2+3\n"
        "=cy@example.com,Cy,@SUM(A1)\n"
    )
    path = write(tmp_path, outcomes="out.csv", rows=rows)
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        main(["send", str(path), "--no-progress"])
    capsys.readouterr()
    text = (tmp_path / "out.csv").read_text(encoding="utf-8")
    got = [(r["email"], r["name"]) for r in csv.DictReader(io.StringIO(text, newline=""))]
    assert got == [
        ("ann@example.com", '\'=HYPERLINK("http://evil")'),
        ("bob@example.com", "'-2+3"),
        ("'=cy@example.com", "'@SUM(A1)"),
    ]
