"""``bulksend suppress``: add, remove, list, import and export, and hostile import files."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend.cli.main import main
from bulksend.pipeline.suppress import default_suppression_path
from bulksend.suppression import SuppressionEntry, SuppressionReason, SuppressionSource
from bulksend.suppression_csv import MAX_LINE_CHARS, CsvProblem, read_suppression_csv, write_suppression_csv
from tests.conftest import PROJECT
from tests.strategies import odd_text

NOW = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", PROJECT)
    monkeypatch.setenv("SCW_CONFIG_PATH", "/nonexistent/config.yaml")
    for name in ("BULKSEND_STORE_URL", "BULKSEND_SETTINGS", "SCW_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)


def listed(capsys: pytest.CaptureFixture[str], *extra: str) -> list[str]:
    capsys.readouterr()
    assert main(["suppress", "list", *extra]) == 0
    return capsys.readouterr().out.splitlines()


def test_add_list_remove_on_the_per_user_list(capsys: pytest.CaptureFixture[str]) -> None:
    """`add` puts addresses on the per-user list (normalised), `list` prints CSV of the active
    ones (`--all`: expired too), `remove` takes them off, by source if asked."""
    assert main(["suppress", "add", "Ann@Example.com", "bob@example.com", "--reason", "spam"]) == 0
    assert main(["suppress", "add", "old@example.com", "--until", "2001-01-01"]) == 0
    assert default_suppression_path().is_file()
    lines = listed(capsys)
    assert lines[0] == "address,reason,source,since,until,origin"
    assert [line.split(",")[:3] for line in lines[1:]] == [
        ["ann@example.com", "spam", "manual"],
        ["bob@example.com", "spam", "manual"],
    ]
    assert len(listed(capsys, "--all")) == 4
    assert main(["suppress", "remove", "ANN@example.com", "--source", "tem"]) == 0
    assert len(listed(capsys)) == 3
    assert main(["suppress", "remove", "ann@example.com"]) == 0
    assert [line.split(",")[0] for line in listed(capsys)[1:]] == ["bob@example.com"]


def test_export_then_import_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An exported list imported into another store holds the same entries, formula-looking
    addresses included."""
    assert main(["suppress", "add", "=cmd@example.com", "x@example.com", "--until", "2099-01-01"]) == 0
    out = tmp_path / "list.csv"
    assert main(["suppress", "export", str(out)]) == 0
    assert "'=cmd@example.com" in out.read_text(encoding="utf-8")
    other = tmp_path / "other.db"
    assert main(["suppress", "import", str(out), "--store", str(other)]) == 0
    mine = listed(capsys)
    assert listed(capsys, "--store", str(other)) == mine
    assert len(mine) == 3


def test_a_bad_import_file_imports_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One wrong line refuses the whole file, naming the lines and what is wrong."""
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "address,reason\nok@example.com,manual\nnot an address,manual\nz@example.com,bored\n"
        + "y" * (MAX_LINE_CHARS + 5)
        + "\n",
        encoding="utf-8",
    )
    assert main(["suppress", "import", str(bad)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "line 3: not an address to suppress" in err
    assert "line 4: reason 'bored' is not one of" in err
    assert f"line 5: the line is longer than {MAX_LINE_CHARS:,} characters" in err
    assert "nothing imported" in err
    assert listed(capsys) == ["address,reason,source,since,until,origin"]


def test_import_fills_missing_columns() -> None:
    """A file with only addresses gets the importer's reason, source, time and origin."""
    found = list(
        read_suppression_csv(io.StringIO("Address\nA@x.org\n\n"), now=NOW, origin="file a.csv"),
    )
    assert found == [
        SuppressionEntry(
            "a@x.org", SuppressionReason.MANUAL, SuppressionSource.MANUAL, NOW, None, "file a.csv"
        )
    ]


entries = st.builds(
    SuppressionEntry,
    st.from_regex(r"[a-z0-9=+\-'._]{1,20}@[a-z0-9.\-]{1,20}", fullmatch=True),
    st.sampled_from(list(SuppressionReason)),
    st.sampled_from(list(SuppressionSource)),
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    st.none() | st.datetimes(min_value=datetime(1990, 1, 1), timezones=st.just(UTC)),
    st.text(alphabet=st.characters(categories=["L", "N"], include_characters=" "), max_size=30).map(
        str.strip
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(entries, max_size=20))
def test_written_entries_read_back_the_same(written: list[SuppressionEntry]) -> None:
    """Whatever entries are written, reading the file gives them back exactly."""
    out = io.StringIO()
    write_suppression_csv(out, written)
    out.seek(0)
    assert list(read_suppression_csv(out, now=NOW)) == written


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(odd_text, st.text(max_size=300)), max_size=30), st.integers(0, 3))
def test_any_file_gives_entries_or_problems(lines: list[str], header: int) -> None:
    """Any text, however hostile, reads as entries and problems with line numbers: never an
    exception, never a line past the bound, never more results than lines."""
    heads = ["address", "address,reason,source,since,until,origin", "reason", "origin,address"]
    text = heads[header] + "\n" + "\n".join(lines)
    found = list(read_suppression_csv(io.StringIO(text), now=NOW))
    assert len(found) <= len(text.splitlines()) + 1
    for item in found:
        assert isinstance(item, SuppressionEntry | CsvProblem)
        if isinstance(item, SuppressionEntry):
            assert len(item.address) <= 254
            assert "@" in item.address
        else:
            assert 1 <= item.line <= text.count("\n") + 1
