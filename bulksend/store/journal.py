"""The send journal: beside a SQLite state file, how many sends each campaign has started.

A state file whose WAL was deleted or garbled, or that was truncated or replaced, forgets the
``sending`` marks of emails TEM already has, and a rerun would send them again. The journal keeps
a second record of how many sends were started per campaign, written after every commit that
marked rows ``sending`` and before any of those POSTs may leave, so at open a database that
knows of fewer sends than the journal (or is another database altogether) is caught.

The file is append-only, one line per commit: ``<crc32 hex> <json>``, the JSON holding the
database's id and, per campaign touched, ``[sends started, first at, last at]`` (epoch seconds).
The last valid line of a campaign wins. A torn last line (a crash mid-write) is ignored; a bad
line before the last is damage, reported as such. Opening rewrites the journal as one snapshot.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson

from bulksend.private import FILE_MODE

__all__ = ["SUSPECT", "JournalEntry", "JournalState", "SendJournal"]

SUSPECT: Final = "suspect"
"""The store id of an entry found in a damaged journal: no database is vouched for until reconciled."""

_COMPACT_BYTES: Final = 1 << 20
"""Rewrite the journal as one snapshot once appends have made it this large."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """What the journal says of one campaign."""

    store_id: str
    """The id of the database the count belongs to."""
    started: int
    """Sends started (rows moved to ``sending``) in that database."""
    first_at: float
    """When its first recorded send started (epoch seconds)."""
    last_at: float
    """When its last recorded send started (epoch seconds)."""


@dataclass(slots=True)
class JournalState:
    """A journal as read back: the latest entry per campaign, and any damage found."""

    entries: dict[str, JournalEntry] = field(default_factory=dict)
    existed: bool = False
    damaged_line: int | None = None
    """The first line, before the last, that could not be read (None: no damage)."""


def _encode(store_id: str, entries: Mapping[str, JournalEntry]) -> bytes:
    body = orjson.dumps(
        {"store": store_id, "c": {cid: [e.started, e.first_at, e.last_at] for cid, e in entries.items()}}
    )
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _encode_all(store_id: str, entries: Mapping[str, JournalEntry]) -> bytes:
    # Entries of another database (a lost one) keep their own store id: one line per id.
    by_store: dict[str, dict[str, JournalEntry]] = {}
    for cid, entry in entries.items():
        by_store.setdefault(entry.store_id, {})[cid] = entry
    return b"".join(_encode(sid, group) for sid, group in by_store.items()) or _encode(store_id, {})


def _decode(line: bytes) -> tuple[str, dict[str, list[float]]] | None:
    crc, _, body = line.rstrip(b"\n").partition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
            return None
        data = orjson.loads(body)
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("store"), str):
        return None
    campaigns = data.get("c")
    if not isinstance(campaigns, dict):
        return None
    for value in campaigns.values():
        if not isinstance(value, list) or len(value) != 3:
            return None
        if not all(isinstance(v, int | float) for v in value):
            return None
    return data["store"], campaigns


class SendJournal:
    """One journal file. Not thread-safe: the store's writer thread is its only user."""

    def __init__(self, path: Path, *, sync: bool) -> None:
        self.path = path
        self._sync = sync
        """fsync after every append (the store's ``durability="full"``)."""
        self._fd: int | None = None
        self._size = 0

    def load(self) -> JournalState:
        """Read the journal (an absent file reads as empty, ``existed`` False)."""
        state = JournalState()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return state
        state.existed = True
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for number, line in enumerate(lines, start=1):
            decoded = _decode(line)
            if decoded is None:
                # Only the last line may be torn by a crash mid-append; anything else is damage.
                if number < len(lines) or data.endswith(b"\n"):
                    state.damaged_line = state.damaged_line or number
                continue
            store_id, campaigns = decoded
            for cid, (started, first_at, last_at) in campaigns.items():
                state.entries[cid] = JournalEntry(store_id, int(started), float(first_at), float(last_at))
        return state

    def rewrite(self, store_id: str, entries: Mapping[str, JournalEntry]) -> None:
        """Replace the file with one snapshot line (durably), and reopen it for appends."""
        blob = _encode_all(store_id, entries)
        self.close()
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            os.write(fd, blob)
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_folder(self.path.parent)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self._size = len(blob)

    def append(self, store_id: str, entries: Mapping[str, JournalEntry]) -> None:
        """Record ``entries`` (one line); on disk when it returns if the journal syncs."""
        if self._fd is None:
            raise OSError(f"{self.path}: the send journal is not open")
        line = _encode_all(store_id, entries)
        # One write(2) of a few short lines: a killed process leaves it whole or not at all.
        os.write(self._fd, line)
        if self._sync:
            os.fsync(self._fd)
        self._size += len(line)

    def wants_compaction(self) -> bool:
        return self._size > _COMPACT_BYTES

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.fsync(fd)
            os.close(fd)


def _fsync_folder(folder: Path) -> None:
    # The rename is only durable once the folder's entry is; some filesystems refuse the fsync.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
