"""The rows a dry run rejects, copied from the recipient file with a ``reason`` column, ready to fix
and send again.

Each rejected record is copied as it is in the input (every column, quoting, even a line the
reader could not parse), in the input's format: a CSV (or TSV) row gets one more value, the reason;
a JSONL object gets a ``reason`` key (a line that is not a JSON object becomes
``{"reason": …, "original": "<the line>"}``). Reading streams the input once more alongside the
dry run, so memory stays flat whatever the file size.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any, AnyStr, Final, Generic

import orjson

from bulksend.campaign.recipients import CSV_SUFFIXES, MAX_RECORD_CHARS, csv_header
from bulksend.private import make_private_dirs
from bulksend.sinks.outcomes import csv_cell

__all__ = ["RejectsWriter", "reason_column"]

_LIMIT: Final = MAX_RECORD_CHARS + 1
_ORIGINAL_SHOWN: Final = 1_000
"""Characters of an unreadable JSONL line longer than a record may be that are kept."""


def reason_column(names: Collection[str]) -> str:
    """``reason``, or ``reason_2``, ``reason_3``… when the file already has that column or key (a
    rejects file sent again and rejected again keeps both reasons, and no column name twice)."""
    taken = {n.lower() for n in names}
    name, n = "reason", 1
    while name in taken:
        n += 1
        name = f"reason_{n}"
    return name


class _Lines(Generic[AnyStr]):
    """A file read in bounded pieces, counting lines (1-based, as the recipient reader numbers rows)."""

    def __init__(self, fh: IO[AnyStr], newline: Callable[[AnyStr], bool]) -> None:
        self._fh: IO[AnyStr] = fh
        self._ends_line: Callable[[AnyStr], bool] = newline
        self.done = 0
        """Lines read to their end."""

    def piece(self) -> tuple[AnyStr, bool]:
        """The next piece of the current line and whether it ends the line (empty at the end)."""
        piece = self._fh.readline(_LIMIT)
        ends = not piece or len(piece) < _LIMIT or self._ends_line(piece)
        if ends and piece:
            self.done += 1
        return piece, ends

    def skip_to(self, row: int) -> None:
        """Read and drop lines until ``row`` is the next one."""
        while self.done < row - 1:
            piece, _ = self.piece()
            if not piece:
                return


class RejectsWriter:
    """Copies rejected records of ``source`` into ``target`` (written atomically by :meth:`finish`).

    Call :meth:`row` for every record the reader yields, in order, with the reason for a rejected
    one and None for the others: a record's extent in the file ends where the next one starts.
    """

    def __init__(self, source: Path, target: Path) -> None:
        self.target = target
        self.count = 0
        self._csv = source.suffix.lower() in CSV_SUFFIXES
        make_private_dirs(target.parent)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        self._tmp = Path(name)
        self._pending: tuple[int, str] | None = None
        if self._csv:
            self._delimiter, columns = csv_header(source)
            # Read as the recipient reader does (UTF-8, undecodable bytes kept as they are, line
            # endings untouched), and written back the same way.
            self._text_in = open(source, encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115
            self._text_out = open(fd, "w", encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115
            self._text_lines = _Lines(self._text_in, lambda s: s.endswith(("\n", "\r")))
            header, _ = self._text_lines.piece()
            body = header.rstrip("\r\n")
            self._reason_name = reason_column(columns)
            self._text_out.write(body + self._delimiter + self._reason_name + (header[len(body) :] or "\r\n"))
        else:
            self._bytes_in = open(source, "rb")  # noqa: SIM115
            self._bytes_out = open(fd, "wb")  # noqa: SIM115
            self._byte_lines = _Lines(self._bytes_in, lambda b: b.endswith(b"\n"))

    def row(self, row: int, reason: str | None) -> None:
        """The reader yielded the record at ``row``; ``reason``: it is rejected."""
        if self._pending is not None:
            self._copy(*self._pending, stop=row)
            self._pending = None
        if reason is not None:
            self._pending = (row, reason)

    def finish(self) -> int:
        """Copy the last rejected record, move the file into place; the number of rows written."""
        try:
            if self._pending is not None:
                self._copy(*self._pending, stop=None)
                self._pending = None
            self._close()
            os.replace(self._tmp, self.target)
        except BaseException:
            self.discard()
            raise
        return self.count

    def discard(self) -> None:
        """Stop and remove the partial file."""
        self._close()
        self._tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        handles: tuple[Any, ...] = (
            (self._text_in, self._text_out) if self._csv else (self._bytes_in, self._bytes_out)
        )
        for fh in handles:
            fh.close()

    def _copy(self, row: int, reason: str, *, stop: int | None) -> None:
        self.count += 1
        if self._csv:
            self._copy_csv(row, reason, stop)
        else:
            self._copy_jsonl(row, reason)

    def _copy_csv(self, row: int, reason: str, stop: int | None) -> None:
        """Lines ``row`` to ``stop`` (excluded), blank lines at the end left out, the reason last."""
        lines, out = self._text_lines, self._text_out
        lines.skip_to(row)
        ending: str | None = None  # held back: the reason goes before the record's last line ending
        blanks: list[str] = []
        while stop is None or lines.done < stop - 1:
            piece, ends = lines.piece()
            if not piece:
                break
            if ends and not piece.strip():
                blanks.append(piece)
                continue
            if ending is not None:
                out.write(ending + "".join(blanks))
            blanks.clear()
            while not ends:  # a line longer than a record may be: copied piece by piece
                out.write(piece)
                piece, ends = lines.piece()
            content = piece.rstrip("\r\n")
            out.write(content)
            ending = piece[len(content) :] or "\r\n"
        cell = io.StringIO()
        csv.writer(cell, delimiter=self._delimiter, lineterminator="").writerow([csv_cell(reason)])
        out.write(self._delimiter + cell.getvalue() + (ending or "\r\n"))

    def _copy_jsonl(self, row: int, reason: str) -> None:
        lines = self._byte_lines
        lines.skip_to(row)
        raw, ends = lines.piece()
        whole = ends
        while not ends:  # longer than a line may be: the reader kept none of it either
            _, ends = lines.piece()
        obj: Any = None
        if whole:
            try:
                obj = orjson.loads(raw[3:] if row == 1 and raw.startswith(b"\xef\xbb\xbf") else raw)
            except orjson.JSONDecodeError:
                obj = None
        if isinstance(obj, dict):
            obj[reason_column(obj)] = reason
        else:
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not whole:
                text = text[:_ORIGINAL_SHOWN] + "…"
            obj = {"reason": reason, "original": text}
        self._bytes_out.write(orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))
