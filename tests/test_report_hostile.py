"""`bulksend report` on whatever a file holds: any JSON lines give a report or a clear error (exit 1),
never a traceback."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksend.cli.main import main

KEYS = [
    "email",
    "name",
    "status",
    "flags",
    "reason",
    "row",
    "email_id",
    "submitted_at",
    "final_at",
    "try_count",
    "smtp",
    "last_error",
    "campaign",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
lines = st.lists(
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=len(KEYS)) | json_values,
    max_size=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=lines, words=st.sampled_from([[], ["--format", "csv"], ["--domain"], ["--status", "failed"]]))
def test_any_json_lines_give_a_report_or_a_clear_error(
    records: list[Any], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Lines of any JSON shape, objects with wrong types included: exit 0 or 1, and an error
    names the file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "outcomes.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        code = main(["report", str(path), *words])
        err = capsys.readouterr().err
    assert code in (0, 1)
    if code == 1:
        assert "outcomes.jsonl" in err
