"""Per-recipient outcome lines: one per input row, as JSONL or CSV.

The file is written from the store (in input-row order) into a temporary file and renamed into
place, so a reader never sees half a file and a crash mid-write leaves the previous one intact.
JSONL keeps every value exactly; in CSV, a text cell that a spreadsheet would run as a formula
gets a leading ``'`` (:func:`csv_cell`).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

import anyio
import orjson

from bulksend.private import make_private_dirs
from bulksend.store.base import (
    CANCELED_BEFORE_SENDING,
    OUTCOME_FACT_FIELDS,
    FinalUpdate,
    OutcomeValuesSource,
    RecipientRow,
    Store,
)

__all__ = [
    "CSV_FORMULA_TRIGGERS",
    "IN_PROGRESS",
    "OUTCOME_FIELDS",
    "OUTCOME_STATUSES",
    "csv_cell",
    "outcome_from_values",
    "outcome_lines",
    "outcome_of",
    "read_outcomes",
    "resolved_line",
    "write_file_atomically",
    "write_outcomes",
]

OUTCOME_FIELDS: Final = ("email", "name", "row", "status", *OUTCOME_FACT_FIELDS, "reason")
"""The fields of an outcome line, in the order of the CSV columns."""
OUTCOME_STATUSES: Final = ("sent", "failed", "canceled", "rejected", "skipped", "unknown")
IN_PROGRESS: Final = "in progress"
"""The status of a row not final yet in a live line (``live=True``): never in an outcomes file."""
_UNFINISHED: Final = "rerun the same command to resume"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def outcome_of(row: RecipientRow, *, unfinished: str = _UNFINISHED, live: bool = False) -> dict[str, Any]:
    """The outcome line of one row. A row that is not terminal yet reads as ``unknown``, with a
    reason ending in ``unfinished`` (what the reader can do about it); with ``live`` (a report of
    a campaign still running), as :data:`IN_PROGRESS`."""
    return outcome_from_values(
        (
            row.row,
            row.email,
            row.name,
            row.state.value,
            row.status,
            row.reason,
            row.email_id or None,
            row.message_id,
            list(row.flags),
            row.status_details,
            row.smtp_code,
            row.smtp_message,
            row.try_count,
            _iso(row.submitted_at),
            _iso(row.final_at),
            row.attempts,
        ),
        unfinished=unfinished,
        live=live,
    )


def outcome_from_values(
    values: Sequence[Any], *, unfinished: str = _UNFINISHED, live: bool = False
) -> dict[str, Any]:
    """The outcome line from a row's values in ``OUTCOME_VALUE_FIELDS`` order (see :func:`outcome_of`)."""
    (
        row,
        email,
        name,
        state,
        status,
        reason,
        email_id,
        message_id,
        flags,
        status_details,
        smtp_code,
        smtp_message,
        try_count,
        submitted_at,
        final_at,
        attempts,
    ) = values
    if state == "final":
        status = status or "unknown"
    elif state == "skipped" and reason == CANCELED_BEFORE_SENDING:
        status = "canceled"  # never sent: canceled with its campaign
    elif state == "rejected" or state == "skipped":
        status = state
    elif live:
        status = IN_PROGRESS  # the store's state says so: pending, sending or submitted
    else:
        status = "unknown"
        reason = reason or f"not finished (still {state}); {unfinished}"
    if status == "unknown":
        # `final_at` is when the email became final: an unknown one has not (a given-up row
        # keeps the time tracking gave up in the store, which is not that).
        final_at = None
    return {
        "email": email,
        "name": name,
        "row": row,
        "status": status,
        "email_id": email_id or None,
        "message_id": message_id or None,
        "flags": flags,
        "status_details": status_details or None,
        "smtp_code": smtp_code,
        "smtp_message": smtp_message or None,
        "try_count": try_count,
        "submitted_at": submitted_at,
        "final_at": final_at,
        "attempts": attempts,
        "reason": reason or None,
    }


def resolved_line(line: Mapping[str, Any], update: FinalUpdate) -> dict[str, Any]:
    """An ``unknown`` outcome line with the final facts TEM gave later (``bulksend recheck``)."""
    return {
        **line,
        "status": update.status,
        "flags": list(update.flags),
        "status_details": update.status_details or None,
        "smtp_code": update.smtp_code,
        "smtp_message": update.smtp_message or None,
        "try_count": update.try_count,
        "final_at": _iso(update.final_at),
        "reason": update.reason or None,
    }


async def outcome_lines(
    store: Store, campaign_id: str, *, unfinished: str = _UNFINISHED, live: bool = False
) -> AsyncIterator[dict[str, Any]]:
    """Every row's outcome line, in input row order: through the store's cheaper
    :class:`OutcomeValuesSource` path when it has one, else from its full rows. With ``live``,
    a row not final yet reads :data:`IN_PROGRESS` (see :func:`outcome_of`)."""
    if isinstance(store, OutcomeValuesSource):
        async for page in store.iter_outcome_values(campaign_id):
            for values in page:
                yield outcome_from_values(values, unfinished=unfinished, live=live)
    else:
        async for row in store.iter_outcomes(campaign_id):
            yield outcome_of(row, unfinished=unfinished, live=live)


# A spreadsheet opening the CSV runs a cell starting with one of these as a formula
# (=HYPERLINK(…), @SUM(…), -2+3, …): OWASP's CSV-injection list plus NUL (OWASP ASVS 1.2.10)
# and line feed.
CSV_FORMULA_TRIGGERS: Final = ("=", "+", "-", "@", "\t", "\r", "\n", "\0")


def csv_cell(value: Any) -> str:
    """``value`` as a CSV cell a spreadsheet shows as text: a leading ``'`` before a formula trigger.

    Names, addresses, reasons and TEM's answers come from outside; JSONL keeps them exactly.
    """
    if value is None:
        return ""
    text = ";".join(str(v) for v in value) if isinstance(value, list) else str(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return text  # a number bulksend counted (row, smtp_code, …), never a formula
    return "'" + text if text.startswith(CSV_FORMULA_TRIGGERS) else text


async def write_outcomes(
    path: Path,
    lines: AsyncIterable[Mapping[str, Any]],
    *,
    observe: Callable[[Mapping[str, Any]], None] | None = None,
) -> int:
    """Write outcome ``lines`` (see :func:`outcome_lines`) to ``path`` (.jsonl or .csv) atomically;
    returns the line count.

    File I/O runs in a worker thread in 256 KiB chunks, so a daemon serving other work while
    writing a million-line file is never blocked on the disk.
    """
    # A unique temporary name (not the PID: every container's worker is PID 1) in the target's
    # folder, so the rename stays atomic; mkstemp creates it 0600, as the file names recipients.
    fh, tmp = await anyio.to_thread.run_sync(_create_temp, path)
    as_csv = path.suffix.lower() == ".csv"
    count = 0
    text = io.StringIO()
    # CRLF, as RFC 4180 has it: the csv module then also quotes a cell holding a lone CR, which
    # with a LF terminator it writes bare, splitting the row for every reader.
    writer = csv.writer(text, lineterminator="\r\n")
    chunk = bytearray()
    try:
        if as_csv:
            writer.writerow(OUTCOME_FIELDS)
        async for line in lines:
            if observe is not None:
                observe(line)  # e.g. the end-of-run summary, without reading the file back
            if as_csv:
                writer.writerow([csv_cell(line[f]) for f in OUTCOME_FIELDS])
            else:
                chunk += orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
            count += 1
            if as_csv and text.tell() > _CHUNK:
                chunk += text.getvalue().encode()
                text.seek(0)
                text.truncate()
            if len(chunk) > _CHUNK:
                await anyio.to_thread.run_sync(fh.write, bytes(chunk))
                chunk.clear()
        chunk += text.getvalue().encode()
        await anyio.to_thread.run_sync(_finish, fh, bytes(chunk))
        await anyio.to_thread.run_sync(fh.close)
        await anyio.to_thread.run_sync(os.replace, tmp, path)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_discard, fh, tmp)
        raise
    return count


def write_file_atomically(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``path`` through a private temporary file renamed into place (a file
    that names recipients: ``0600``, never seen half written)."""
    fh, tmp = _create_temp(path)
    try:
        for chunk in chunks:
            fh.write(chunk)
        _finish(fh, b"")
        fh.close()
        os.replace(tmp, path)
    except BaseException:
        _discard(fh, tmp)
        raise


def _create_temp(path: Path) -> tuple[BinaryIO, Path]:
    make_private_dirs(path.parent)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    return os.fdopen(fd, "wb"), Path(name)


def _discard(fh: BinaryIO, tmp: Path) -> None:
    fh.close()
    tmp.unlink(missing_ok=True)


_CHUNK = 256 * 1024


def _finish(fh: BinaryIO, data: bytes) -> None:
    fh.write(data)
    fh.flush()
    os.fsync(fh.fileno())


_CSV_NUMBERS: Final = frozenset({"row", "smtp_code", "try_count", "attempts"})


def _from_csv_cell(name: str, text: str | None) -> Any:
    """A CSV cell as the JSONL line has it: numbers as numbers, empty as null, without the ``'``
    that :func:`csv_cell` put before a formula trigger."""
    if not text:
        return [] if name == "flags" else None
    if name == "flags":
        return [f for f in text.split(";") if f]
    if name in _CSV_NUMBERS and text.lstrip("-").isdigit():
        return int(text)
    if text.startswith("'") and text[1:2] and text[1:].startswith(CSV_FORMULA_TRIGGERS):
        return text[1:]
    return text


def read_outcomes(path: Path) -> Iterable[Mapping[str, Any]]:
    """Stream outcome lines back from a .jsonl or .csv file (for ``bulksend report``): a CSV
    line reads as the JSONL line would (numbers, nulls, flags as a list)."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            for rec in csv.DictReader(fh):
                yield {k: _from_csv_cell(k, v) for k, v in rec.items() if k is not None}
    else:
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    record = orjson.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError(f"line {number} is not a JSON object")
                    flags = record.get("flags")
                    if flags is not None and not isinstance(flags, list):
                        raise ValueError(f"line {number}: flags must be a list")
                    yield record
