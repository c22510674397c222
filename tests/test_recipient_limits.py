"""Hostile recipient files: bounded sizes with clear refusals, addresses kept, no exception on any bytes."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksend.campaign.recipients import (
    MAX_COLUMNS,
    MAX_RECORD_CHARS,
    MAX_VALUE_CHARS,
    BadRow,
    RecipientInput,
    iter_recipients,
)
from bulksend.errors import CampaignError


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _read(path: Path) -> list[RecipientInput | BadRow]:
    return list(iter_recipients(path))


def test_unquoted_oversized_cell_is_refused_with_the_limit(tmp_path: Path) -> None:
    """An unquoted CSV value over the per-value cap rejects its row (the limit named, the address
    kept); the rows around it are read as usual."""
    big = "x" * (MAX_VALUE_CHARS + 1)
    path = _write(
        tmp_path, "r.csv", f"email,bio\na@example.com,hi\nb@example.com,{big}\nc@example.com,ok\n".encode()
    )
    rows = _read(path)
    assert [type(r) for r in rows] == [RecipientInput, BadRow, RecipientInput]
    bad = rows[1]
    assert isinstance(bad, BadRow)
    assert f"{MAX_VALUE_CHARS:,}" in bad.reason
    assert "'bio'" in bad.reason
    assert bad.email == "b@example.com"


def test_quoted_oversized_cell_is_refused_with_the_limit(tmp_path: Path) -> None:
    """A quoted CSV value over the cap is refused with a reason naming the limit, not a parser error."""
    big = "y" * (MAX_VALUE_CHARS * 2)
    path = _write(tmp_path, "r.csv", f'email,bio\nb@example.com,"{big}"\nc@example.com,ok\n'.encode())
    rows = _read(path)
    assert isinstance(rows[0], BadRow)
    assert "characters, the most a value may have" in rows[0].reason
    assert isinstance(rows[1], RecipientInput)


def test_huge_line_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """A 30 MB CSV line and a 30 MB JSONL line are each one rejected row naming the record limit;
    reading them never holds more than a few record limits in memory."""
    huge = "z" * 30_000_000
    csv_path = _write(tmp_path, "r.csv", f"email,bio\nb@example.com,{huge}\nc@example.com,ok\n".encode())
    jsonl_path = _write(
        tmp_path,
        "r.jsonl",
        orjson.dumps({"email": "b@example.com", "bio": huge}) + b'\n{"email": "c@example.com"}\n',
    )
    for path, unit in ((csv_path, "characters"), (jsonl_path, "bytes")):
        tracemalloc.start()
        try:
            rows = _read(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 12 * MAX_RECORD_CHARS, (path, peak)
        assert [type(r) for r in rows] == [BadRow, RecipientInput]
        bad = rows[0]
        assert isinstance(bad, BadRow)
        assert f"longer than {MAX_RECORD_CHARS:,} {unit}" in bad.reason
        assert bad.email == "b@example.com"


def test_too_many_columns_refuse_the_file(tmp_path: Path) -> None:
    """A header with more columns than the cap, or 1,000,000 of them, refuses the file with the limit."""
    wide = _write(
        tmp_path, "wide.csv", (",".join(["email", *(f"c{i}" for i in range(MAX_COLUMNS))]) + "\n").encode()
    )
    with pytest.raises(CampaignError, match=f"at most {MAX_COLUMNS:,}"):
        _read(wide)
    million = _write(tmp_path, "million.csv", ("email" + ",c" * 1_000_000 + "\n").encode())
    with pytest.raises(CampaignError, match=f"at most {MAX_COLUMNS:,} columns"):
        _read(million)


def test_jsonl_object_with_too_many_keys_or_a_long_value_is_refused(tmp_path: Path) -> None:
    """A JSONL object with more keys than the cap, or a string value over the value cap, is one
    rejected row naming the limit, with its address kept."""
    many = {"email": "a@example.com", **{f"k{i}": i for i in range(MAX_COLUMNS)}}
    long = {"email": "b@example.com", "bio": "w" * (MAX_VALUE_CHARS + 1)}
    path = _write(tmp_path, "r.jsonl", orjson.dumps(many) + b"\n" + orjson.dumps(long) + b"\n")
    rows = _read(path)
    assert all(isinstance(r, BadRow) for r in rows)
    assert f"at most {MAX_COLUMNS:,}" in rows[0].reason  # type: ignore[union-attr]
    assert f"at most {MAX_VALUE_CHARS:,}" in rows[1].reason  # type: ignore[union-attr]
    assert [r.email for r in rows] == ["a@example.com", "b@example.com"]


def test_rejected_rows_keep_the_address_they_had(tmp_path: Path) -> None:
    """A CSV row with too few or too many values, and a JSONL line that is not valid JSON but has a
    readable "email", keep that address in their rejection."""
    csv_path = _write(
        tmp_path, "r.csv", b"name,email,city\nAnn,ann@example.com\nBob,bob@example.com,Paris,extra\n"
    )
    rows = _read(csv_path)
    assert [(type(r), r.email) for r in rows] == [(BadRow, "ann@example.com"), (BadRow, "bob@example.com")]
    jsonl_path = _write(
        tmp_path, "r.jsonl", b'{"name": "Cy", "email": "cy@example.com", "age": }\n{"x": 1,\n'
    )
    rows = _read(jsonl_path)
    assert [(type(r), r.email) for r in rows] == [(BadRow, "cy@example.com"), (BadRow, "")]


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check_rows(rows: list[RecipientInput | BadRow]) -> None:
    for r in rows:
        assert isinstance(r, RecipientInput | BadRow)
        if isinstance(r, BadRow):
            assert r.reason
            r.email.encode("utf-8")  # writable to an outcomes file
        else:
            assert len(r.vars) <= MAX_COLUMNS


@_FUZZ
@given(body=st.binary(max_size=2000))
def test_any_bytes_after_a_csv_header_give_rows_or_rejections(tmp_path: Path, body: bytes) -> None:
    """Whatever bytes follow a valid CSV header, reading gives rows or per-row rejections with
    reasons, never an exception."""
    path = _write(tmp_path, "fuzz.csv", b'email,name,"notes"\n' + body)
    _check_rows(_read(path))


@_FUZZ
@given(data=st.binary(max_size=2000))
def test_any_bytes_as_csv_give_rows_rejections_or_a_file_refusal(tmp_path: Path, data: bytes) -> None:
    """Any bytes as a CSV file give rows and rejections, or a CampaignError about the header: never
    another exception."""
    path = _write(tmp_path, "fuzz.csv", data)
    try:
        rows = _read(path)
    except CampaignError as exc:
        refusal = str(exc)
    else:
        _check_rows(rows)
        return
    assert "header" in refusal or "first line" in refusal


_JSON_LINE = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(
        st.sampled_from(["email", "name", "attachments", "x", "y"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**63), 2**63 - 1),
            st.text(max_size=40),
            st.lists(st.text(max_size=5)),
        ),
    ).map(orjson.dumps),
)


@_FUZZ
@given(lines=st.lists(_JSON_LINE, max_size=20))
def test_any_jsonl_bytes_give_rows_or_rejections(tmp_path: Path, lines: list[bytes]) -> None:
    """Any bytes, or JSON objects of any shape, as a JSONL file give rows or per-row rejections
    with reasons, never an exception."""
    path = _write(tmp_path, "fuzz.jsonl", b"\n".join(lines))
    _check_rows(_read(path))
