"""Tests of the streaming recipient reader (bulksend.campaign.recipients)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from bulksend.campaign.recipients import (
    MAX_RECORD_LINES,
    BadRow,
    RecipientInput,
    check_recipients,
    iter_recipients,
)
from bulksend.errors import CampaignError


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def read_all(path: Path, start_after_row: int = 0) -> list[RecipientInput | BadRow]:
    return list(iter_recipients(path, start_after_row=start_after_row))


def good(rows: list[RecipientInput | BadRow]) -> list[RecipientInput]:
    return [r for r in rows if isinstance(r, RecipientInput)]


def bad(rows: list[RecipientInput | BadRow]) -> list[BadRow]:
    return [r for r in rows if isinstance(r, BadRow)]


# --- CSV: the ordinary case ---------------------------------------------------------------------


def test_csv_rows_are_numbered_by_line_and_columns_become_vars(tmp_path: Path) -> None:
    """The header is line 1, so recipients start at row 2; extra columns are string variables."""
    p = write(
        tmp_path / "r.csv", "Email,Name,first_name,age\n a@example.com ,Ann,Annie,41\nb@example.com,,B,7\n"
    )
    rows = read_all(p)
    assert rows == [
        RecipientInput(2, "a@example.com", "Ann", {"first_name": "Annie", "age": "41"}),
        RecipientInput(3, "b@example.com", "", {"first_name": "B", "age": "7"}),
    ]


def test_csv_without_name_column_and_with_bom_and_crlf(tmp_path: Path) -> None:
    """A UTF-8 BOM and CRLF line endings are accepted; the name column is optional."""
    p = write(tmp_path / "r.csv", "\ufeffemail,city\r\na@example.com,Paris\r\n")
    assert read_all(p) == [RecipientInput(2, "a@example.com", "", {"city": "Paris"})]


@pytest.mark.parametrize(("delimiter", "suffix"), [(";", ".csv"), ("\t", ".csv"), ("\t", ".tsv")])
def test_csv_delimiter_is_sniffed_from_the_header(tmp_path: Path, delimiter: str, suffix: str) -> None:
    """Semicolon- and tab-separated files are read with the delimiter found in the header."""
    d = delimiter
    p = write(tmp_path / f"r{suffix}", f"email{d}name{d}note\na@example.com{d}Ann{d}x, y\n")
    assert read_all(p) == [RecipientInput(2, "a@example.com", "Ann", {"note": "x, y"})]


def test_csv_blank_lines_are_skipped_but_keep_their_numbers(tmp_path: Path) -> None:
    """Blank lines are not recipients, and the rows after them keep their real line numbers."""
    p = write(tmp_path / "r.csv", "email,name\n\na@example.com,A\n   \n\nb@example.com,B\n")
    assert [(r.row, r.email) for r in good(read_all(p))] == [(3, "a@example.com"), (6, "b@example.com")]
    assert bad(read_all(p)) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            'email,name,address\na@example.com,"Ann ""the"" one","1 Road\nTown\nLand"\nb@example.com,B,x\n',
            [
                RecipientInput(2, "a@example.com", 'Ann "the" one', {"address": "1 Road\nTown\nLand"}),
                RecipientInput(5, "b@example.com", "B", {"address": "x"}),
            ],
            id="quoted-value-spanning-lines-is-numbered-by-its-first-line",
        ),
        pytest.param(
            'email,item\na@example.com,5" screen\nb@example.com,7" tablet\n',
            [
                RecipientInput(2, "a@example.com", "", {"item": '5" screen'}),
                RecipientInput(3, "b@example.com", "", {"item": '7" tablet'}),
            ],
            id="stray-quotes-on-two-lines-do-not-merge-rows",
        ),
    ],
)
def test_csv_quotes_delimit_records(tmp_path: Path, text: str, expected: list[RecipientInput]) -> None:
    """A quoted multi-line value is one record, numbered by its first line; a stray quote is literal."""
    assert read_all(write(tmp_path / "r.csv", text)) == expected


def test_csv_attachments_column_is_split_and_kept_in_vars(tmp_path: Path) -> None:
    """The attachments column holds ';'-separated paths, split for the caller and kept in vars for resume."""
    p = write(
        tmp_path / "r.csv", "email,Attachments,x\na@example.com, inv/1.pdf ; b.png ;,1\nb@example.com,,2\n"
    )
    rows = good(read_all(p))
    assert rows[0].attachments == ("inv/1.pdf", "b.png")
    assert rows[0].vars == {"attachments": " inv/1.pdf ; b.png ;", "x": "1"}
    assert rows[1].attachments == ()


def test_csv_start_after_row_skips_rows_including_a_multiline_record(tmp_path: Path) -> None:
    """Resuming skips every record that starts at or before the given row, even a multi-line one."""
    text = 'email,note\na@example.com,"x\ny"\nb@example.com,z\nc@example.com,w\n'
    p = write(tmp_path / "r.csv", text)
    assert [r.row for r in good(read_all(p, start_after_row=2))] == [4, 5]
    assert [r.row for r in good(read_all(p, start_after_row=4))] == [5]


# --- CSV: file-level mistakes -------------------------------------------------------------------


def test_csv_without_email_column_is_a_campaign_error(tmp_path: Path) -> None:
    """A header with no email column is refused up front, naming the file, line 1 and the fix."""
    p = write(tmp_path / "r.csv", "mail,name\na@example.com,A\n")
    with pytest.raises(CampaignError) as info:
        check_recipients(p)
    assert info.value.path == str(p)
    assert info.value.line == 1
    assert "no 'email' column" in str(info.value)
    assert "'mail'" in str(info.value)
    assert "name the column holding the addresses 'email'" in str(info.value)
    with pytest.raises(CampaignError, match="no 'email' column"):
        read_all(p)


def test_unknown_suffix_and_missing_file_are_campaign_errors(tmp_path: Path) -> None:
    """An unreadable kind of file or a missing file is refused with the path and a fix."""
    with pytest.raises(CampaignError, match=r"\.xlsx file; use a \.csv or \.tsv file"):
        read_all(write(tmp_path / "r.xlsx", b"PK"))
    with pytest.raises(CampaignError, match="does not exist"):
        check_recipients(tmp_path / "missing.csv")
    with pytest.raises(CampaignError, match="does not exist"):
        read_all(tmp_path / "missing.jsonl")


def test_duplicate_column_names_are_a_campaign_error(tmp_path: Path) -> None:
    """Two columns with one name would make one variable shadow the other, so it is refused."""
    with pytest.raises(CampaignError, match="two columns named 'city'"):
        check_recipients(write(tmp_path / "r.csv", "email,city,city\n"))


# --- CSV: bad rows ------------------------------------------------------------------------------


def test_csv_broken_utf8_names_the_column_and_byte_offset(tmp_path: Path) -> None:
    """A byte that is not UTF-8 rejects only its row, naming the column and offset; reading goes on."""
    data = b"email,name,city\na@example.com,Ann,Par\xe9s\nb@example.com,B,Lyon\n"
    rows = read_all(write(tmp_path / "r.csv", data))
    assert rows[0] == BadRow(
        2,
        "column 'city' is not valid UTF-8 (byte 0xe9 at byte offset 21 of the line); "
        "save the file as UTF-8 (in a spreadsheet: 'CSV UTF-8')",
        email="a@example.com",
        name="Ann",
    )
    assert rows[1] == RecipientInput(3, "b@example.com", "B", {"city": "Lyon"})


def test_csv_wrong_number_of_columns(tmp_path: Path) -> None:
    """A row with too many or too few values is rejected with the counts; later rows are read."""
    text = "email,name\na@example.com,Smith, Ann\nb@example.com\nc@example.com,C\n"
    rows = read_all(write(tmp_path / "r.csv", text))
    assert [type(r) for r in rows] == [BadRow, BadRow, RecipientInput]
    assert isinstance(rows[0], BadRow)
    assert rows[0].row == 2
    assert "the line has 3 values but the header has 2 columns" in rows[0].reason
    assert "wrapped in double quotes" in rows[0].reason
    assert "has 1 values" in bad(rows)[1].reason
    assert rows[2].row == 4


def test_csv_unclosed_quote_rejects_one_line_and_reading_goes_on(tmp_path: Path) -> None:
    """A quote never closed costs only the line it opened on: every following row is still read."""
    lines = ["email,name", 'a@example.com,"Ann'] + [f"u{i}@example.com,U{i}" for i in range(5)]
    rows = read_all(write(tmp_path / "r.csv", "\n".join(lines) + "\n"))
    assert bad(rows) == [
        BadRow(
            2,
            "a quoted value opened on this line is never closed; close the quote or double a quote "
            'inside a value ("")',
        )
    ]
    assert [r.row for r in good(rows)] == [3, 4, 5, 6, 7]


def test_csv_runaway_quote_is_capped_in_lines(tmp_path: Path) -> None:
    """A quote still open after MAX_RECORD_LINES lines is rejected and the lines after it are read."""
    n = MAX_RECORD_LINES + 50
    lines = ["email,name", 'a@example.com,"Ann'] + [f"u{i}@example.com,U{i}" for i in range(n)]
    lines.append('z@example.com,"closing quote far away"')
    rows = read_all(write(tmp_path / "r.csv", "\n".join(lines) + "\n"))
    assert len(bad(rows)) == 1
    assert f"not closed within {MAX_RECORD_LINES} lines" in bad(rows)[0].reason
    assert [r.row for r in good(rows)] == list(range(3, 3 + n + 1))
    assert good(rows)[-1].name == "closing quote far away"


def test_csv_text_after_a_closing_quote_is_broken_quoting(tmp_path: Path) -> None:
    """A value like "Ann" Smith is refused as broken quoting and the next row is read."""
    text = 'email,name\na@example.com,"Ann" Smith\nb@example.com,B\n'
    rows = read_all(write(tmp_path / "r.csv", text))
    assert isinstance(rows[0], BadRow)
    assert rows[0].row == 2
    assert rows[0].reason.startswith("broken CSV quoting (',' expected after '\"')")
    assert rows[1] == RecipientInput(3, "b@example.com", "B", {})


def test_csv_fully_quoted_file_recovers_after_each_kind_of_quoting_error(tmp_path: Path) -> None:
    """In a file quoting every value, each broken record costs one row and the others read correctly."""
    lines = [
        '"email","name"',
        '"a@example.com","A"',
        '"b@example.com","B" x',
        '"c@example.com","C"',
        '"d@example.com","D',
        '"e@example.com","E"',
        '"f@example.com","F',
    ]
    rows = read_all(write(tmp_path / "r.csv", "\n".join(lines) + "\n"))
    assert [(r.row, type(r).__name__) for r in rows] == [
        (2, "RecipientInput"),
        (3, "BadRow"),
        (4, "RecipientInput"),
        (5, "BadRow"),
        (6, "RecipientInput"),
        (7, "BadRow"),
    ]
    assert [r.name for r in good(rows)] == ["A", "C", "E"]
    assert bad(rows)[0].reason.startswith("broken CSV quoting")
    assert "never closed" in bad(rows)[2].reason


# --- JSONL --------------------------------------------------------------------------------------


def test_jsonl_objects_become_recipients_with_json_vars(tmp_path: Path) -> None:
    """Each line's object gives email, name and variables (any JSON value); blank lines are skipped."""
    text = (
        '{"email": " a@example.com ", "name": "Ann", "n": 3, "tags": ["x"]}\n'
        "\n"
        '{"email": "b@example.com", "name": null, "attachments": ["a.pdf", "b.pdf"]}\n'
        '{"email": "c@example.com", "attachments": "c.pdf;d.pdf"}\n'
    )
    rows = read_all(write(tmp_path / "r.jsonl", text))
    assert rows == [
        RecipientInput(1, "a@example.com", "Ann", {"n": 3, "tags": ["x"]}),
        RecipientInput(3, "b@example.com", "", {"attachments": "a.pdf;b.pdf"}, ("a.pdf", "b.pdf")),
        RecipientInput(4, "c@example.com", "", {"attachments": "c.pdf;d.pdf"}, ("c.pdf", "d.pdf")),
    ]


def test_jsonl_bad_lines_are_rejected_and_reading_goes_on(tmp_path: Path) -> None:
    """Not JSON, not an object, email missing or not a string: each is one BadRow, then reading goes on."""
    lines = [
        b'{"email": "a@example.com"',
        b'["a@example.com"]',
        b'{"name": "Ann"}',
        b'{"email": 42}',
        b'{"email": "b@example.com", "name": 5}',
        b'{"email": "c@example.com", "city": "Par\xe9s"}',
        b'{"email": "d@example.com", "attachments": 3}',
        b'{"email": "ok@example.com"}',
    ]
    rows = read_all(write(tmp_path / "r.jsonl", b"\n".join(lines) + b"\n"))
    reasons = [r.reason for r in bad(rows)]
    assert [r.row for r in bad(rows)] == [1, 2, 3, 4, 5, 6, 7]
    assert reasons[0].startswith("the line is not valid JSON")
    assert reasons[1].startswith("the line is a JSON array, not an object")
    assert reasons[2] == "'email' is missing; every object needs an \"email\" string"
    assert reasons[3] == "'email' is a JSON number, not a string; every object needs an \"email\" string"
    assert reasons[4].startswith("'name' is a JSON number, not a string")
    assert reasons[5] == "the line is not valid UTF-8 (byte 0xe9 at byte offset 39); save the file as UTF-8"
    assert reasons[6].startswith("'attachments' must be a list of paths")
    assert bad(rows)[2].name == "Ann"
    assert good(rows) == [RecipientInput(8, "ok@example.com", "", {})]


def test_jsonl_start_after_row(tmp_path: Path) -> None:
    """Resuming a JSONL file skips lines up to and including the given row."""
    text = "".join(f'{{"email": "u{i}@example.com"}}\n' for i in range(5))
    assert [r.row for r in read_all(write(tmp_path / "r.jsonl", text), start_after_row=3)] == [4, 5]


# --- Streaming ----------------------------------------------------------------------------------


def test_a_million_row_csv_streams_with_flat_memory(tmp_path: Path) -> None:
    """Reading 1,000,000 rows holds a few hundred KB at most: the file is streamed, never loaded.

    tracemalloc slows every allocation several-fold, so it watches two windows of the stream: the
    start (opening and buffering: a reader that loads the whole file peaks here) and the end (a
    reader that keeps anything per row has grown by then); the 900,000 rows between run untraced.
    """
    p = tmp_path / "big.csv"
    block = "".join(f"user{i}@example.com,U{i}\n" for i in range(10_000))
    with p.open("w", encoding="utf-8") as f:
        f.write("email,name\n")
        for _ in range(100):
            f.write(block)
    assert p.stat().st_size > 25_000_000
    window = 50_000
    peaks: list[int] = []
    count = 0
    last = 0
    tracemalloc.start()
    try:
        for r in iter_recipients(p):
            count += 1
            last = r.row
            if count == window or count == 1_000_000:
                peaks.append(tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()
            elif count == 1_000_000 - window:
                tracemalloc.start()
    finally:
        tracemalloc.stop()
    assert count == 1_000_000
    assert last == 1_000_001
    assert len(peaks) == 2
    assert max(peaks) < 4 * 1024 * 1024, f"peaks {peaks}"


# --- CSV: unquoted and quoted rows ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [
        ("email,name,first_name,city,code", ","),
        ("first_name;Email;city;NAME", ";"),
        ("email\tcity\tcode", "\t"),
        ("city,email,,code", ","),
    ],
)
def test_csv_unquoted_rows_read_like_quoted_ones(tmp_path: Path, header: str, delimiter: str) -> None:
    """An unquoted row (split on the delimiter) reads exactly like the same row quoted (csv module).

    Every row is written twice, once plain and once with every value quoted: the recipients,
    variables (in order) and rejections are the same, row for row.
    """
    ncols = len(header.split(delimiter))
    samples = [
        [f"user{i}@example.org" if j == 0 else f"v{i}-{j}" for j in range(ncols)] for i in range(3)
    ] + [
        [" padded@example.org ", *[" spaced value "] * (ncols - 1)],
        ["", *[""] * (ncols - 1)],
        ["x@example.org"] * ncols,
        ["José@example.org", *["Zoë"] * (ncols - 1)],
        ["too@few.example"] * (ncols - 1),
        ["too@many.example"] * (ncols + 1),
    ]
    # Rotate each sample so that its first value lands in the email column whatever its position.
    email_at = [c.strip().lower() for c in header.split(delimiter)].index("email")
    rows = [s[-email_at:] + s[:-email_at] if email_at else s for s in samples]
    ends = ["\n", "\r\n"]
    plain = header + "\n" + "".join(delimiter.join(r) + ends[i % 2] for i, r in enumerate(rows))
    quoted = (
        header + "\n" + "".join(delimiter.join(f'"{v}"' for v in r) + ends[i % 2] for i, r in enumerate(rows))
    )
    split = read_all(write(tmp_path / "plain.csv", plain))
    parsed = read_all(write(tmp_path / "quoted.csv", quoted))
    assert split == parsed
    assert [list(r.vars.items()) for r in good(split)] == [list(r.vars.items()) for r in good(parsed)]
    assert len(good(split)) == len(samples) - 2
    assert len(bad(split)) == 2
