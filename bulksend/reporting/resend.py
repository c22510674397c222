"""The recipients worth sending again, as a recipients CSV to send as a campaign of its own.

Worth it: an email that failed for a reason that may pass (a soft bounce, a full mailbox,
greylisting, ``send_before`` expired, and no permanent flag with it), a canceled one, and an
unknown one (not final when tracking stopped: TEM may still deliver it, so the report says to
look it up first). Permanent failures (hard bounce, no such mailbox, blocklisted, spam) and
rejected rows (fix them from ``--dry-run``'s rejects file instead) are left out.

Each row gets the recipient's email and name and, when the recipients file is at hand, the
row's variables, read from that file alongside: outcomes come in input row order, so one
forward pass over both keeps memory flat. Values are written exactly (no spreadsheet escaping):
the file is meant to be read by bulksend again.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

from bulksend.errors import CampaignError
from bulksend.private import make_private_dirs
from bulksend.reporting.outcome import Outcome

__all__ = ["PERMANENT_FLAGS", "TEMPORARY_FLAGS", "RecipientVariables", "ResendWriter", "worth_resending"]

TEMPORARY_FLAGS: Final = frozenset({"soft_bounce", "mailbox_full", "greylisted", "send_before_expiration"})
PERMANENT_FLAGS: Final = frozenset({"hard_bounce", "mailbox_not_found", "blocklisted", "spam"})
_FIXED: Final = ("email", "name")
_MAX_COLUMNS: Final = 1000


def worth_resending(outcome: Outcome) -> bool:
    """Whether sending ``outcome``'s recipient again may succeed (see the module docstring)."""
    if outcome.status in ("canceled", "unknown"):
        return True
    if outcome.status != "failed":
        return False
    flags = set(outcome.flags)
    return bool(flags & TEMPORARY_FLAGS) and not flags & PERMANENT_FLAGS


class RecipientVariables:
    """The variables of recipient rows, asked for in increasing row order, read in one pass."""

    def __init__(self, path: Path) -> None:
        # Imported here: reading recipients is only needed when a resend file has rows.
        from bulksend.campaign.recipients import RecipientInput, iter_recipients

        self._input = RecipientInput
        self._reader: Iterator[Any] = iter_recipients(path)
        self._current: Any = None
        self._done = False

    def get(self, row: int, email: str) -> dict[str, Any] | None:
        """Row ``row``'s variables, if it is a readable recipient with address ``email``."""
        while not self._done and (self._current is None or self._current.row < row):
            try:
                self._current = next(self._reader)
            except StopIteration:
                self._done = True
            except (CampaignError, OSError):  # the file changed or went: no variables
                self._done = True
        rec = self._current
        if rec is None or rec.row != row or not isinstance(rec, self._input) or rec.email != email:
            return None
        return dict(rec.vars)


class ResendWriter:
    """Collects the rows worth sending again (:meth:`add`) and writes them as CSV (:meth:`finish`).

    Rows go to a private temporary file as they come; their columns (email, name, then every
    variable in order of first appearance) are known only at the end, when the CSV is written
    and renamed into place (``0600``: it names recipients).
    """

    def __init__(self, path: Path, *, recipients: Path | None = None) -> None:
        self.path = path
        self.rows = 0
        self._variables = RecipientVariables(recipients) if recipients is not None else None
        self._columns: dict[str, None] = dict.fromkeys(_FIXED)
        self._spool: BinaryIO | None = None
        self._spool_path: Path | None = None

    def add(self, outcome: Outcome) -> None:
        """Keep ``outcome``'s recipient if it is worth sending again."""
        if not worth_resending(outcome) or not outcome.email:
            return
        values: dict[str, Any] = {}
        if self._variables is not None and outcome.row is not None:
            values = self._variables.get(outcome.row, outcome.email) or {}
        record = {"email": outcome.email, "name": outcome.name}
        for key, value in values.items():
            if key.lower() in _FIXED:
                continue
            if key not in self._columns and len(self._columns) >= _MAX_COLUMNS:
                continue
            self._columns[key] = None
            record[key] = value
        if self._spool is None:
            make_private_dirs(self.path.parent)
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".rows")
            self._spool, self._spool_path = os.fdopen(fd, "w+b"), Path(name)
        self._spool.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        self.rows += 1

    def finish(self) -> int:
        """Write the CSV (or remove an earlier one when no row is worth it); the row count."""
        if self._spool is None:
            self.path.unlink(missing_ok=True)  # an earlier run's file would be stale
            return 0
        columns = list(self._columns)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
                writer = csv.writer(out, lineterminator="\r\n")
                writer.writerow(columns)
                self._spool.seek(0)
                for line in self._spool:
                    record = orjson.loads(line)
                    writer.writerow([_cell(record.get(c)) for c in columns])
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            self.discard()
        return self.rows

    def discard(self) -> None:
        """Drop the rows collected so far (the temporary file)."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self._spool_path is not None:
            self._spool_path.unlink(missing_ok=True)
            self._spool_path = None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # A JSONL recipient's number, list or object: as JSON, which a template can still read.
    return orjson.dumps(value).decode()
