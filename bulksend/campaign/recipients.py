"""Streaming recipient reader for CSV and JSONL files.

One recipient per record; bad records become :class:`BadRow` with a reason a person can act on,
and reading goes on. Nothing is ever loaded whole: memory stays flat whatever the file size. The
format rules (columns, delimiters, quoting, JSONL keys) are in docs/campaign-file.md, Recipients.

Row numbers are *input line numbers* (1-based), so a person can jump straight to the line in an
editor: in a CSV the header is line 1 and the first recipient is row 2; a record whose quoted value
spans several lines has the number of the line it starts on. In JSONL the row is the line number
and blank lines are skipped (they keep their numbers).

The ``attachments`` value also stays in ``vars["attachments"]`` (a ``;``-separated string) so that
a stored ``vars`` is enough to render the row again on resume.

A quoted value may span at most :data:`MAX_RECORD_LINES` lines. A quote that is never closed
rejects only the line it opened on: reading resumes with the next line, so one stray quote does
not swallow the rest of the file.

Sizes are bounded, so a hostile file costs bounded memory: a record (CSV) or line (JSONL) of at
most :data:`MAX_RECORD_CHARS`, values of at most :data:`MAX_VALUE_CHARS`, at most
:data:`MAX_COLUMNS` columns or keys. A row past a limit is rejected with the limit in its reason
(and the address, when it can be read), a header past one refuses the file.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

from bulksend.errors import CampaignError, json_type_name

__all__ = [
    "CSV_SUFFIXES",
    "JSONL_SUFFIXES",
    "MAX_COLUMNS",
    "MAX_RECORD_CHARS",
    "MAX_RECORD_LINES",
    "MAX_VALUE_CHARS",
    "RECIPIENT_SUFFIXES",
    "BadRow",
    "RecipientInput",
    "check_recipients",
    "csv_header",
    "iter_recipients",
    "read_batch",
    "split_attachments",
]

CSV_SUFFIXES: Final = frozenset({".csv", ".tsv"})
JSONL_SUFFIXES: Final = frozenset({".jsonl", ".ndjson"})
RECIPIENT_SUFFIXES: Final = CSV_SUFFIXES | JSONL_SUFFIXES

MAX_RECORD_LINES: Final = 100
"""How many physical lines one CSV record (a quoted value with line breaks) may span."""

MAX_RECORD_CHARS: Final = 1_000_000
"""Longest CSV record (all its lines) or JSONL line, in characters (JSONL: bytes)."""
MAX_VALUE_CHARS: Final = 100_000
"""Longest single value (a CSV cell, a JSONL string), in characters."""
MAX_COLUMNS: Final = 1_000
"""Most columns in a CSV header, or keys in a JSONL object."""
_MAX_ADDRESS_CHARS: Final = 320
"""Longest address kept in a rejected row's outcome (a real one is at most 254)."""

_READ_BUFFER_BYTES: Final = 1 << 20
_ATTACHMENTS_KEY: Final = "attachments"
_BOM: Final = codecs.BOM_UTF8


@dataclass(frozen=True, slots=True)
class RecipientInput:
    """One readable recipient. ``email`` is stripped but not validated (the renderer does that).

    ``attachments`` are per-recipient attachment paths as written in the file (relative to the
    recipients file's folder), already split; ``vars["attachments"]`` holds the same list as one
    ``;``-separated string (present only when the file has the column/key).
    """

    row: int
    email: str
    name: str
    vars: dict[str, Any]
    attachments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BadRow:
    """A record that could not be read; ``reason`` says what to fix. Reading went on after it."""

    row: int
    reason: str
    email: str = ""
    name: str = ""


def split_attachments(value: str) -> tuple[str, ...]:
    """``"a.pdf; b.pdf"`` → ``("a.pdf", "b.pdf")`` (empty items dropped)."""
    if not value:
        return ()
    return tuple(p for p in (part.strip() for part in value.split(";")) if p)


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise CampaignError(
        f"cannot read recipients from a {suffix or 'suffix-less'!s} file; "
        f"use a .csv or .tsv file (with an 'email' column) or a .jsonl file (one JSON object per line)",
        path=str(path),
    )


def check_recipients(path: Path) -> None:
    """Refuse, before anything is sent, a recipients file that cannot be read at all.

    Checks the suffix, that the file exists and, for CSV, the header (an ``email`` column).
    Raises :class:`CampaignError`.
    """
    kind = _kind(path)
    if not path.is_file():
        raise CampaignError(
            "the recipients file does not exist; fix the 'recipients' path (relative paths are "
            "resolved against the campaign file's folder)",
            path=str(path),
        )
    if kind == "csv":
        with _open_text(path) as f:
            _read_header(path, f)


def csv_header(path: Path) -> tuple[str, tuple[str, ...]]:
    """A CSV recipients file's delimiter and column names, as written (checked as when reading)."""
    with _open_text(path) as f:
        header = _read_header(path, f)
    return header.delimiter, header.columns


def iter_recipients(path: Path, *, start_after_row: int = 0) -> Iterator[RecipientInput | BadRow]:
    """Stream the recipients of ``path`` (CSV or JSONL), in file order.

    Rows numbered ``<= start_after_row`` are skipped cheaply (resume). Raises
    :class:`CampaignError` (on the first ``next``) only for file-level problems: unknown suffix,
    missing file, CSV header without an ``email`` column.
    """
    kind = _kind(path)
    try:
        if kind == "csv":
            yield from _iter_csv(path, start_after_row)
        else:
            yield from _iter_jsonl(path, start_after_row)
    except FileNotFoundError:
        raise CampaignError(
            "the recipients file does not exist; fix the 'recipients' path", path=str(path)
        ) from None


def read_batch(reader: Iterator[RecipientInput | BadRow], n: int) -> list[RecipientInput | BadRow]:
    """The next ``n`` records of ``reader`` (fewer at its end). It reads the file: run it in a
    worker thread, never on the event loop."""
    return list(islice(reader, n))


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOWrapper:
    # surrogateescape: a byte that is not UTF-8 becomes a lone surrogate instead of an exception,
    # so one bad byte rejects one row (and we can say which column) instead of stopping the file.
    # newline="": line endings are kept as they are, as the csv module expects.
    raw = open(path, "rb", buffering=_READ_BUFFER_BYTES)  # noqa: SIM115 - closed by the wrapper
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


@dataclass(frozen=True, slots=True)
class _Header:
    delimiter: str
    columns: tuple[str, ...]
    email_index: int
    name_index: int | None
    attachments_index: int | None
    var_names: tuple[str, ...]
    var_indexes: tuple[int, ...]


def _read_header(path: Path, f: io.TextIOWrapper) -> _Header:
    # Every problem found here is on the header line.
    header_error = partial(CampaignError, path=str(path), line=1)
    line = f.readline(MAX_RECORD_CHARS + 1)
    if len(line) > MAX_RECORD_CHARS:
        raise header_error(
            f"the header line is longer than {MAX_RECORD_CHARS:,} characters; a recipients file may "
            f"have at most {MAX_COLUMNS:,} columns, with short names"
        )
    # Leading blank lines would make "row = line number" confusing; the header must be line 1.
    if not line.strip():
        raise header_error(
            "the first line must be the header (column names, one of them 'email'); "
            "the file is empty or starts with a blank line"
        )
    if _has_surrogate(line):
        raise header_error(
            "the header line is not valid UTF-8; save the file as UTF-8 (in a spreadsheet: 'CSV UTF-8')"
        )
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
    else:
        # The header is the most reliable line to sniff: column names rarely contain delimiters.
        counts = {d: line.count(d) for d in (",", ";", "\t")}
        delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    try:
        columns = tuple(c.strip() for c in next(csv.reader([line], delimiter=delimiter, strict=True)))
    except csv.Error as exc:
        raise header_error(
            f"the header line has broken quoting ({exc}); write the column names separated by "
            f"{_delimiter_name(delimiter)}"
        ) from None
    if len(columns) > MAX_COLUMNS:
        raise header_error(
            f"the header has {len(columns):,} columns; a recipients file may have at most "
            f"{MAX_COLUMNS:,}: keep only the columns the templates use"
        )
    lowered = [c.lower() for c in columns]
    for special in ("email", "name", _ATTACHMENTS_KEY):
        if lowered.count(special) > 1:
            raise header_error(f"the header has more than one {special!r} column; keep one")
    if "email" not in lowered:
        found = ", ".join(repr(c) for c in columns[:10]) + (" …" if len(columns) > 10 else "")
        raise header_error(
            f"the header has no 'email' column (columns found: {found}, separated by "
            f"{_delimiter_name(delimiter)}); name the column holding the addresses 'email'"
        )
    seen: set[str] = set()
    for c in columns:
        if c and c in seen:
            raise header_error(
                f"the header has two columns named {c!r}; rename one (each column becomes a "
                f"template variable)"
            )
        seen.add(c)
    email_index = lowered.index("email")
    name_index = lowered.index("name") if "name" in lowered else None
    att_index = lowered.index(_ATTACHMENTS_KEY) if _ATTACHMENTS_KEY in lowered else None
    special_indexes = {email_index, name_index}
    # Columns with an empty name (a trailing delimiter) are read but not exposed as variables.
    # The attachments column keeps a fixed lower-case name whatever the header's case.
    var_pairs = [
        (_ATTACHMENTS_KEY if i == att_index else c, i)
        for i, c in enumerate(columns)
        if i not in special_indexes and c
    ]
    return _Header(
        delimiter=delimiter,
        columns=columns,
        email_index=email_index,
        name_index=name_index,
        attachments_index=att_index,
        var_names=tuple(c for c, _ in var_pairs),
        var_indexes=tuple(i for _, i in var_pairs),
    )


def _delimiter_name(delimiter: str) -> str:
    return {",": "commas", ";": "semicolons", "\t": "tabs"}[delimiter]


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _Overlong(str):
    """A line longer than MAX_RECORD_CHARS: its first MAX_RECORD_CHARS + 1 characters only."""

    __slots__ = ()


def _physical_lines(f: io.TextIOWrapper, pending: deque[str]) -> Iterator[str]:
    """The file's lines, with ``pending`` (lines pushed back for re-reading) served first.

    Lines are pushed back only while this generator is suspended, and always precede the line it
    may be holding, so the order of the file is kept. At the end of the file it yields ``""``
    (never a real line: those end with a newline or are non-empty) instead of finishing, so that
    lines pushed back after a read hit the end are still served. A line longer than
    MAX_RECORD_CHARS comes as an :class:`_Overlong` prefix, the rest read and dropped.
    """
    limit = MAX_RECORD_CHARS + 1
    # iter(callable, sentinel) loops in C: as cheap as iterating the file, but bounded per line.
    for line in iter(partial(f.readline, limit), ""):
        if len(line) == limit and not line.endswith(("\n", "\r")):
            while rest := f.readline(limit):  # skip the rest of it, one bounded piece at a time
                if rest.endswith(("\n", "\r")):
                    break
            line = _Overlong(line)
        while pending:
            yield pending.popleft()
        yield line
    while True:
        while pending:
            yield pending.popleft()
        yield ""


def _iter_csv(path: Path, start_after_row: int) -> Iterator[RecipientInput | BadRow]:
    with _open_text(path) as f:
        header = _read_header(path, f)
        delimiter = header.delimiter
        ncols = len(header.columns)
        email_i = header.email_index
        name_i = header.name_index
        att_i = header.attachments_index
        var_names = header.var_names
        get_vars = itemgetter(*header.var_indexes) if len(header.var_indexes) > 1 else None
        single_var = (var_names[0], header.var_indexes[0]) if len(var_names) == 1 else None

        def build(row: int, fields: list[str], line: str) -> RecipientInput | BadRow:
            """One record's fields → a recipient (or the reason it is bad)."""
            if len(fields) != ncols:
                reason = (
                    f"the line has {len(fields)} values but the header has {ncols} columns; "
                    f"a value containing {_delimiter_name(delimiter)[:-1]}s must be wrapped in double quotes"
                )
                return _recovered_row(row, reason, fields, header)
            email = fields[email_i].strip()
            name = fields[name_i].strip() if name_i is not None else ""
            if len(line) > MAX_VALUE_CHARS:
                for i, value in enumerate(fields):
                    if len(value) > MAX_VALUE_CHARS:
                        reason = (
                            f"the value of column {header.columns[i] or f'#{i + 1}'!r} is "
                            f"{len(value):,} characters long; at most {MAX_VALUE_CHARS:,} are allowed"
                        )
                        return _recovered_row(row, reason, fields, header)
            if not line.isascii() and _has_surrogate(line):
                return _utf8_bad_row(row, fields, line, header, email, name)
            if get_vars is not None:
                variables: dict[str, Any] = dict(zip(var_names, get_vars(fields), strict=True))
            elif single_var is not None:
                variables = {single_var[0]: fields[single_var[1]]}
            else:
                variables = {}
            if att_i is not None:
                return RecipientInput(row, email, name, variables, split_attachments(fields[att_i]))
            return RecipientInput(row, email, name, variables)

        pending: deque[str] = deque()
        lines = _physical_lines(f, pending)
        quoted = _QuotedRecords(lines, delimiter)
        lineno = 1  # the header
        for line in lines:
            if not line:
                break  # end of file
            lineno += 1
            if type(line) is _Overlong:
                if lineno > start_after_row:
                    # The prefix may still hold the address (a long value after it, say).
                    prefix = line.split(delimiter, email_i + 1)
                    yield BadRow(
                        lineno,
                        f"the line is longer than {MAX_RECORD_CHARS:,} characters, the most a record "
                        f"may have (and a value at most {MAX_VALUE_CHARS:,}); shorten it",
                        email=_recovered(prefix[:-1], email_i),
                    )
                continue
            if '"' not in line:
                # Fast path, by far the most common: no quoting, so a plain split is exact.
                if lineno <= start_after_row:
                    continue
                fields = line.rstrip("\r\n").split(delimiter)
                if (len(fields) != ncols or ncols == 1) and not line.strip():
                    continue  # blank line
                yield build(lineno, fields, line)
                continue

            # A quote: let the csv module parse the record, feeding it further lines only while a
            # quoted value is open, and at most MAX_RECORD_LINES of them.
            start = lineno
            try:
                record = quoted.parse(line)
            except csv.Error as exc:
                # Reject only the line the record started on and read the others again as
                # records of their own: a stray quote then costs one row, not the rest of the file.
                consumed = quoted.consumed
                if quoted.too_long:
                    reason = (
                        f"the record is longer than {MAX_RECORD_CHARS:,} characters, the most a record may "
                        "have; shorten it, or close a quoted value left open"
                    )
                elif "field larger than field limit" in str(exc):
                    reason = (
                        f"a quoted value is longer than {min(MAX_VALUE_CHARS, csv.field_size_limit()):,} "
                        "characters, the most a value may have; shorten it"
                    )
                elif str(exc) == "unexpected end of data":
                    if len(consumed) >= MAX_RECORD_LINES:
                        reason = (
                            f"a quoted value opened on this line is not closed within "
                            f"{MAX_RECORD_LINES} lines; close the quote or double a quote inside a "
                            f'value ("")'
                        )
                    else:
                        reason = (
                            "a quoted value opened on this line is never closed; close the quote or double "
                            'a quote inside a value ("")'
                        )
                else:
                    reason = (
                        f"broken CSV quoting ({exc}); wrap a value in double quotes only as a whole "
                        f'and double any quote inside it ("")'
                    )
                pending.extendleft(reversed(consumed[1:]))
                if start > start_after_row:
                    yield BadRow(start, reason)
                continue
            consumed = quoted.consumed
            lineno = start + len(consumed) - 1
            if start <= start_after_row:
                continue
            if not record or (len(record) == 1 and not record[0].strip() and ncols > 1):
                continue
            yield build(start, record, line if len(consumed) == 1 else "".join(consumed))


class _QuotedRecords:
    """Parses the records that contain a quote, with one long-lived csv reader.

    Making a csv reader per record would cost more than the parse itself. The reader pulls its
    lines from :meth:`_feed`: first the line given to :meth:`parse`, then, only while a quoted
    value stays open, further physical lines (at most MAX_RECORD_LINES in all). ``consumed`` holds
    the lines of the last record, so a failed one can be pushed back and read again.
    """

    __slots__ = ("_delimiter", "_ended", "_fresh", "_lines", "_reader", "consumed", "too_long")

    def __init__(self, lines: Iterator[str], delimiter: str) -> None:
        self._lines = lines
        self._delimiter = delimiter
        self.consumed: list[str] = []
        self.too_long = False
        """The last record was cut off at MAX_RECORD_CHARS (or reached an overlong line)."""
        self._fresh = False
        self._ended = False
        self._reader = self._new_reader()

    def _new_reader(self) -> Iterator[list[str]]:
        self._ended = False
        return csv.reader(self._feed(), delimiter=self._delimiter, strict=True)

    def _feed(self) -> Iterator[str]:
        consumed = self.consumed
        lines = self._lines
        size = 0
        while True:
            if self._fresh:
                self._fresh = False
                size = len(consumed[0])
                yield consumed[0]
                continue
            if len(consumed) >= MAX_RECORD_LINES:
                break
            nxt = next(lines)
            if not nxt:
                break  # end of file
            consumed.append(nxt)  # pushed back with the rest if the record fails
            size += len(nxt)
            if type(nxt) is _Overlong or size > MAX_RECORD_CHARS:
                self.too_long = True
                break
            yield nxt
        # Ending the iterator makes the reader report "unexpected end of data" for the open
        # quote; this generator is spent, so the next parse needs a new reader.
        self._ended = True

    def parse(self, line: str) -> list[str]:
        """The fields of the record starting with ``line``; raises ``csv.Error`` if it is broken."""
        self.consumed.clear()
        self.consumed.append(line)
        self.too_long = False
        self._fresh = True
        try:
            return next(self._reader)
        except csv.Error:
            if self._ended:
                self._reader = self._new_reader()
            raise


def _recovered(fields: list[str], index: int | None) -> str:
    """A rejected row's value at ``index``, kept for its outcome when it is there and plausible."""
    if index is None or index >= len(fields):
        return ""
    value = fields[index].strip()
    if len(value) > _MAX_ADDRESS_CHARS or _has_surrogate(value):
        return ""
    return value


def _recovered_row(row: int, reason: str, fields: list[str], header: _Header) -> BadRow:
    """A bad row, keeping the email and name its fields hold (when plausible) for its outcome."""
    return BadRow(
        row, reason, email=_recovered(fields, header.email_index), name=_recovered(fields, header.name_index)
    )


def _utf8_bad_row(row: int, fields: list[str], line: str, header: _Header, email: str, name: str) -> BadRow:
    """Name the column and the byte offset of the first byte that is not UTF-8."""
    column = "?"
    for i, value in enumerate(fields):
        if _has_surrogate(value):
            column = header.columns[i] or f"#{i + 1}"
            break
    offset = 0
    byte = 0
    for i, ch in enumerate(line):
        if "\udc80" <= ch <= "\udcff":
            offset = len(line[:i].encode("utf-8", "surrogateescape"))
            byte = ord(ch) - 0xDC00
            break
    # Do not hand back text holding lone surrogates: it cannot be written out as UTF-8.
    safe_email = email if not _has_surrogate(email) else ""
    safe_name = name if not _has_surrogate(name) else ""
    return BadRow(
        row,
        f"column {column!r} is not valid UTF-8 (byte 0x{byte:02x} at byte offset {offset} of the line); "
        f"save the file as UTF-8 (in a spreadsheet: 'CSV UTF-8')",
        email=safe_email,
        name=safe_name,
    )


# ---------------------------------------------------------------------------------------------
# JSONL
# ---------------------------------------------------------------------------------------------


def _skip_line(f: BinaryIO, limit: int) -> None:
    """Read and drop the rest of an overlong line, one bounded piece at a time."""
    while rest := f.readline(limit):
        if rest.endswith(b"\n"):
            return


def _iter_jsonl(path: Path, start_after_row: int) -> Iterator[RecipientInput | BadRow]:
    loads = orjson.loads
    limit = MAX_RECORD_CHARS + 1
    with open(path, "rb", buffering=_READ_BUFFER_BYTES) as f:
        lineno = 0
        # iter(callable, sentinel) loops in C: as cheap as iterating the file, but bounded per line.
        for raw in iter(partial(f.readline, limit), b""):
            lineno += 1
            too_long = len(raw) == limit and not raw.endswith(b"\n")
            if too_long:
                _skip_line(f, limit)  # a line over MAX_RECORD_CHARS bytes: only its prefix is kept
            if lineno <= start_after_row:
                continue
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if too_long:
                yield BadRow(
                    lineno,
                    f"the line is longer than {MAX_RECORD_CHARS:,} bytes, the most a line may have "
                    f"(and a value at most {MAX_VALUE_CHARS:,} characters); shorten it",
                    email=_email_in(raw),
                )
                continue
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError as exc:
                if not raw.strip():
                    continue  # blank line
                yield BadRow(lineno, _json_reason(raw, exc), email=_email_in(raw))
                continue
            if type(obj) is not dict:
                yield BadRow(
                    lineno,
                    f"the line is a JSON {json_type_name(obj)}, not an object; write one object per line, "
                    f'like {{"email": "ann@example.com", "name": "Ann"}}',
                )
                continue
            problem = _oversized(obj) if len(obj) > MAX_COLUMNS or len(raw) > MAX_VALUE_CHARS else None
            if problem is not None:
                found = obj.get("email")
                yield BadRow(lineno, problem, email=found.strip() if isinstance(found, str) else "")
                continue
            email = obj.pop("email", None)
            name = obj.pop("name", None)
            if name is None:
                name = ""
            elif not isinstance(name, str):
                yield BadRow(
                    lineno,
                    f"'name' is a JSON {json_type_name(name)}, not a string; write it as a string",
                    email=email.strip() if isinstance(email, str) else "",
                )
                continue
            if not isinstance(email, str):
                what = "missing" if email is None else f"a JSON {json_type_name(email)}, not a string"
                yield BadRow(
                    lineno,
                    f"'email' is {what}; every object needs an \"email\" string",
                    name=name.strip(),
                )
                continue
            attachments: tuple[str, ...] = ()
            if _ATTACHMENTS_KEY in obj:
                value = obj[_ATTACHMENTS_KEY]
                if isinstance(value, str):
                    attachments = split_attachments(value)
                elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                    attachments = tuple(v.strip() for v in value if v.strip())
                    obj[_ATTACHMENTS_KEY] = ";".join(attachments)
                elif value is None:
                    del obj[_ATTACHMENTS_KEY]
                else:
                    yield BadRow(
                        lineno,
                        "'attachments' must be a list of paths or one ';'-separated string of paths",
                        email=email.strip(),
                        name=name.strip(),
                    )
                    continue
            yield RecipientInput(lineno, email.strip(), name.strip(), obj, attachments)


# A JSON string after an "email" key, for the outcome of a line that is not valid JSON.
_EMAIL_IN_RAW: Final = re.compile(rb'"email"\s*:\s*("(?:[^"\\\n]|\\.){0,%d}")' % _MAX_ADDRESS_CHARS)


def _email_in(raw: bytes) -> str:
    """The address of a line that could not be read as a whole, when its "email" can be."""
    found = _EMAIL_IN_RAW.search(raw)
    if found is None:
        return ""
    try:
        value = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return ""
    return value.strip() if isinstance(value, str) else ""


def _oversized(obj: dict[str, Any]) -> str | None:
    """Why a JSONL object is past a size limit (keys, value length), or None."""
    if len(obj) > MAX_COLUMNS:
        return f"the object has {len(obj):,} keys; at most {MAX_COLUMNS:,} are allowed"
    for key, value in obj.items():
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            return (
                f"the value of {key[:40]!r} is {len(value):,} characters long; at most "
                f"{MAX_VALUE_CHARS:,} are allowed"
            )
    return None


def _json_reason(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return (
            f"the line is not valid UTF-8 (byte 0x{raw[uexc.start]:02x} at byte offset {uexc.start}); "
            f"save the file as UTF-8"
        )
    return f"the line is not valid JSON ({exc.msg} at column {exc.colno}); write one JSON object per line"
