"""The outbox in one SQLite file: durable, single-host, thousands of acknowledged writes per second.

One **writer thread** owns the only write connection; async callers queue each write and await a
future. The writer takes everything queued and runs it in ONE transaction, then resolves every
caller's future: while one commit is fsynced, the next writes pile up and share the next commit.
This **group commit** is what makes ``synchronous=FULL`` affordable. The writer **lingers**
``commit_linger_s`` after a batch's first write, so commits carry more writes for a latency that a
send's round trip to TEM dwarfs (figures in benchmarks/README.md). Each operation runs in its own
``SAVEPOINT`` (one guarded ``UPDATE`` needs none), so a failing one fails only its caller; a failed
``COMMIT`` fails the whole batch. Reads use a pool of read-only connections (WAL) in worker threads:
neither reads nor writes block the event loop.

``durability="full"`` (the default) fsyncs every commit before its callers are told;
``"normal"`` survives ``kill -9`` but may lose the last commits on a power loss, and a lost
``sending`` mark can mean a duplicate email (docs/delivery-guarantees.md, Durability). A send
journal beside the file (:mod:`bulksend.store.journal`) catches a database that lost sends at
open (:meth:`SqliteStore.state_loss`). An awaited write is committed when the await returns; a
cancelled caller's write may still be committed after it has gone.

``MIGRATIONS`` (:mod:`bulksend.store.migrations.sqlite`) is append-only. ``recipients.dedupe_key`` holds the
dedupe key only while the row *owns* it (a duplicate is admitted ``skipped`` with NULL, a row
turning ``rejected`` or ``skipped`` gives it up), so a unique partial index enforces "first wins".
Datetimes are ISO-8601 UTC text (sortable); naive ones are taken as UTC. Lease writes are queued
like any other, on the store's clock; fenced writes add the token to their guarded UPDATE, so the
fence and the state check are one atomic statement. The store needs an asyncio event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from os import PathLike, fspath
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, TypeVar

import anyio
import anyio.to_thread
import orjson
import structlog

from bulksend.errors import BulksendError, ConfigError, StoreError
from bulksend.private import create_private_file, make_private_dirs
from bulksend.store.base import (
    AdmitResult,
    CampaignRecord,
    CampaignState,
    RecipientRow,
    RowState,
    SendRecord,
    StateLoss,
)
from bulksend.store.core import FIRST_INPUT_ROW, keyset_pages
from bulksend.store.journal import SUSPECT, JournalEntry, SendJournal
from bulksend.store.migrations.sqlite import MIGRATIONS, SCHEMA_VERSION, migrate
from bulksend.store.rules import (
    ROW_WRITES,
    TO_FINAL,
    TO_SENDING,
    TO_SUBMITTED,
    admitted_as,
    check_finalisable,
    checked_payloads,
    encode_json,
    final_values,
    row_write_refusal,
    utc,
)
from bulksend.store.sql import (
    ALREADY_FINAL,
    CAMPAIGN_COLUMNS,
    ROW_COLUMN_LIST,
    SqlStore,
    sqlite_update,
)
from bulksend.suppression import SuppressionEntry

if TYPE_CHECKING:
    from bulksend.store.base import FinalUpdate, NewRecipient
    from bulksend.store.rules import RowWrite

__all__ = ["JOURNAL_SUFFIX", "MIGRATIONS", "SCHEMA_VERSION", "Durability", "SqliteStore"]

Durability = Literal["full", "normal"]
_T = TypeVar("_T")


_ROW_COLUMNS: Final = ROW_COLUMN_LIST
# The outcomes file reads every row but never shows its payload (the template variables, often the
# largest column): those rows come back with an empty one, which spares decoding it per row.
_OUTCOME_COLUMNS = _ROW_COLUMNS.replace(", payload, ", ", '{}', ")


def _outcome_ts(column: str) -> str:
    # Stored text is always "…SS.ffffff+00:00" (_dt_text); the outcome text is what
    # datetime.isoformat gives for it with "Z" for "+00:00": no fraction when it is zero.
    return (
        f"CASE WHEN {column} LIKE '%.000000+00:00' THEN substr({column}, 1, length({column}) - 13) || 'Z' "
        f"ELSE substr({column}, 1, length({column}) - 6) || 'Z' END"
    )


# OUTCOME_VALUE_FIELDS, in that order (iter_outcome_values).
_OUTCOME_VALUES = (
    "input_row, email, name, state, status, reason, NULLIF(email_id, ''), message_id, flags, "
    f"status_details, smtp_code, smtp_message, try_count, {_outcome_ts('submitted_at')}, "
    f"{_outcome_ts('final_at')}, attempts"
)
# Well under SQLite's bound-parameter limit, and a sensible page for IN lists.
_IN_CHUNK: Final = 500
# Upper bound on operations per transaction, so one huge burst cannot hold the write lock for long.
_MAX_BATCH_OPS: Final = 4096
_PRAGMA_NAME = re.compile(r"^[a-z_]+$")
JOURNAL_SUFFIX: Final = ".sends"
"""The send journal is the database's path with this suffix (see bulksend.store.journal)."""

log = structlog.get_logger("bulksend.store")


def _dt_text(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is not UTC:
        dt = utc(dt)
    # Same text either way; plain isoformat() is the cheaper call, but drops a zero fraction.
    return dt.isoformat() if dt.microsecond else dt.isoformat(timespec="microseconds")


_fromisoformat: Final = datetime.fromisoformat


def _dt_parse(text: str | None) -> datetime | None:
    if text is None:
        return None
    # What we store ends in "+00:00", which parses straight to UTC: no conversion needed.
    parsed = _fromisoformat(text)
    return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)


_STATES: Final[dict[str, RowState]] = {s.value: s for s in RowState}


def _row_from_db(r: tuple[Any, ...]) -> RecipientRow:
    # The columns come in the order of RecipientRow's fields (ROW_COLUMNS), passed positionally.
    # Called for every row read (the outcomes file reads them all), hence the shortcuts.
    flags = r[17]
    return RecipientRow(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        _STATES[r[6]],
        {} if r[7] == "{}" else orjson.loads(r[7]),
        r[8],
        r[9],
        _dt_parse(r[10]),
        _dt_parse(r[11]),
        r[12],
        r[13] or "",
        r[14],
        _dt_parse(r[15]),
        r[16],
        () if flags == "[]" else tuple(orjson.loads(flags)),
        r[18],
        r[19],
        r[20],
        r[21],
        _dt_parse(r[22]),
        r[23],
        r[24],
        _dt_parse(r[25]),
    )


def _suppression_from_db(r: tuple[Any, ...]) -> SuppressionEntry:
    since = _dt_parse(r[3])
    assert since is not None  # NOT NULL column
    return SuppressionEntry(r[0], r[1], r[2], since, _dt_parse(r[4]), r[5])


def _send_record(campaign_id: str, entry: JournalEntry) -> SendRecord:
    return SendRecord(
        campaign_id,
        entry.started,
        datetime.fromtimestamp(entry.first_at, UTC),
        datetime.fromtimestamp(entry.last_at, UTC),
    )


def _campaigns_of(conn: sqlite3.Connection, row_ids: list[int]) -> dict[str, int]:
    """How many of ``row_ids`` each campaign has."""
    out: dict[str, int] = {}
    for chunk in _chunks(row_ids):
        for cid, n in conn.execute(
            f"SELECT campaign_id, COUNT(*) FROM recipients WHERE id IN ({_marks(len(chunk))}) "
            "GROUP BY campaign_id",
            chunk,
        ):
            out[cid] = out.get(cid, 0) + n
    return out


def _first(values: tuple[Any, ...]) -> Any:
    return values[0]


def _outcome_values_from_db(r: tuple[Any, ...]) -> tuple[Any, ...]:
    # _OUTCOME_VALUES has everything in its outcome shape but flags, which are stored as JSON.
    flags = r[8]
    return (*r[:8], [] if flags == "[]" else list(orjson.loads(flags)), *r[9:])


def _campaign_from_db(r: tuple[Any, ...]) -> CampaignRecord:
    created = _dt_parse(r[1])
    assert created is not None  # NOT NULL column
    return CampaignRecord(
        id=r[0],
        created_at=created,
        state=CampaignState(r[2]),
        spec=orjson.loads(r[3]),
        admitted_all=bool(r[4]),
        state_reason=r[5],
    )


def _chunks(items: Sequence[_T], size: int = _IN_CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


@dataclass(frozen=True, slots=True)
class _Move:
    """The guarded single-row UPDATE of a declared write, its SQL built once (not on every write).

    Parameters: the values of the write's columns, then the row id, then (``fenced`` only) the lease
    token. A write without a token uses the statement without the fence: no token, no check.
    """

    write: RowWrite
    plain: str
    fenced: str

    @classmethod
    def of(cls, write: RowWrite) -> _Move:
        return cls(write, sqlite_update(write), sqlite_update(write, fenced=True))


_MOVES: Final[dict[RowWrite, _Move]] = {w: _Move.of(w) for w in ROW_WRITES if w.fenced}
_TO_SENDING: Final = _MOVES[TO_SENDING]
_TO_SUBMITTED: Final = _MOVES[TO_SUBMITTED]
_FINAL: Final = sqlite_update(TO_FINAL)


@dataclass(slots=True)
class _Op:
    """One queued write, and the future through which its caller learns the outcome.

    Either ``fn``, run on the writer connection, or (``fn`` None) a guarded single-row UPDATE, the
    hot path of dispatch: ``sql`` with ``params`` must change the row ``row_id``; when it changes
    nothing, the row is read to tell why (``move``, ``lease_token``). A guarded UPDATE that fails
    wrote nothing, so it needs no savepoint.
    """

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    fn: Callable[[sqlite3.Connection], Any] | None
    single_write: bool
    """True when ``fn`` writes with at most one statement, after all its checks: if it fails,
    nothing of it was written, so it can skip the cost of a savepoint."""
    sql: str = ""
    params: tuple[Any, ...] = ()
    row_id: int = 0
    move: _Move | None = None
    lease_token: int | None = None


def _refuse(conn: sqlite3.Connection, op: _Op) -> NoReturn:
    """Raise why ``op``'s guarded UPDATE changed nothing: unknown row, stale lease, or wrong state."""
    assert op.move is not None  # only guarded UPDATEs are refused
    found = conn.execute(
        "SELECT state, lease_token, lease_owner FROM recipients WHERE id = ?", (op.row_id,)
    ).fetchone()
    raise row_write_refusal(op.move.write, op.row_id, op.lease_token, found)


_STOP: Final = object()
# (future, result, exception) for one caller.
_Delivery = tuple[asyncio.Future[Any], Any, BaseException | None]


def _deliver(items: list[_Delivery]) -> None:
    """Resolve futures; runs on the callers' event loop."""
    for fut, result, exc in items:
        if fut.done():  # the caller was cancelled; its write happened (or failed) all the same
            continue
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)


class SqliteStore(SqlStore):
    """The outbox state machine in a SQLite file, with group commit (see the module docstring).

    ``path`` is the database file (created if missing). ``busy_timeout_s`` is how long a write
    waits for the file lock held by another process before failing. ``clock`` stamps
    ``created_at`` of campaigns and is ``now`` for leases and roles. ``commit_linger_s`` is how
    long the writer waits after a batch's first write for more to share its commit (0: none).
    """

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        durability: Durability = "full",
        busy_timeout_s: float = 10.0,
        clock: Callable[[], datetime] | None = None,
        commit_linger_s: float = 0.002,
    ) -> None:
        self.path = fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file::memory:"):
            raise ConfigError(
                "SqliteStore needs a database file (an in-memory SQLite database cannot be shared "
                "between its connections); use the 'memory:' store instead"
            )
        if durability not in ("full", "normal"):
            raise ConfigError(f"store durability must be 'full' or 'normal', not {durability!r}")
        if not 0 <= commit_linger_s <= 1:
            raise ConfigError(f"commit_linger_s must be between 0 and 1 s, not {commit_linger_s!r}")
        self.durability: Durability = durability
        self._linger_s = commit_linger_s
        self._pause: Callable[[float], None] = time.sleep  # the linger (replaced by tests)
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._accepting = False
        self._commits = 0
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.journal_path = Path(self.path + JOURNAL_SUFFIX)
        # Owned by the writer thread once open; ``_losses`` is only read by callers after open.
        self._journal: SendJournal | None = None
        self._store_id = ""
        self._entries: dict[str, JournalEntry] = {}
        self._losses: dict[str, StateLoss] = {}

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r}, durability={self.durability!r})"

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the file, switch it to WAL, apply missing migrations, start the writer. Idempotent."""
        if self._writer is not None:
            return
        # The store usually sits next to the outcomes file, whose folder may not exist yet. Both
        # name every recipient: folders 0700, the file 0600 (SQLite gives its -wal and -shm files
        # the database file's mode).
        parent = Path(self.path).parent
        await anyio.to_thread.run_sync(make_private_dirs, parent)
        await anyio.to_thread.run_sync(create_private_file, self.path)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._queue = queue.SimpleQueue()
        writer = threading.Thread(
            target=self._writer_main,
            args=(loop, ready),
            name=f"bulksend-sqlite-writer:{self.path}",
            daemon=True,
        )
        writer.start()
        try:
            # Shielded: a cancelled open() must not leave a half-started writer behind unnoticed.
            with anyio.CancelScope(shield=True):
                await ready
        except BaseException:
            await anyio.to_thread.run_sync(writer.join)
            raise
        self._writer = writer
        self._accepting = True

    async def close(self) -> None:
        """Commit everything queued, stop the writer, close every connection. Idempotent."""
        writer = self._writer
        if writer is None:
            return
        self._accepting = False
        self._queue.put(_STOP)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.join)
        self._writer = None
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (the sqlite3 module's implicit
        # transactions would otherwise open and commit behind our back).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        return conn

    def _setup_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            mode = _set_wal(conn, self._busy_timeout_ms / 1000)
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"{self.path}: SQLite refused WAL mode (got {mode!r}); "
                    "put the store on a local filesystem"
                )
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.durability == 'full' else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn, self.path)
            self._commits += 1
            self._open_journal(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- the send journal --------------------------------------------------------------------
    def _open_journal(self, conn: sqlite3.Connection) -> None:
        """Compare the journal with what the database knows; note every campaign that lost sends.

        Runs on the writer connection before the store accepts writes. The journal is then
        rewritten as one snapshot that keeps a lost campaign's record as it was, so the loss is
        found again by every open until :meth:`accept_state`.
        """
        # The journal first, then the database: a process sending into this file meanwhile
        # journals only after its commits, so what is read here can only show the journal behind.
        journal = SendJournal(self.journal_path, sync=self.durability == "full")
        state = journal.load()
        found = conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()
        self._store_id = str(found[0])
        # Every send started added one attempt to its row, and rows are never deleted: the sum is
        # the database's own count of sends started.
        known = {
            str(cid): int(n)
            for cid, n in conn.execute(
                "SELECT campaign_id, COALESCE(SUM(attempts), 0) FROM recipients GROUP BY campaign_id"
            )
        }
        created = {
            str(cid): _dt_parse(at) for cid, at in conn.execute("SELECT id, created_at FROM campaigns")
        }
        entries: dict[str, JournalEntry] = {}
        losses: dict[str, StateLoss] = {}
        for cid, entry in state.entries.items():
            have = known.get(cid, 0)
            if entry.store_id == SUSPECT:
                what = (
                    f"its send journal {self.journal_path} was found damaged, and the campaign was not "
                    "reconciled since, so the database cannot be vouched for"
                )
            elif entry.started > 0 and entry.store_id != self._store_id:
                what = (
                    f"its send journal {self.journal_path} records {entry.started} sends started from "
                    f"another database than {self.path} (the file was deleted, truncated, replaced or "
                    f"recreated), which records {have}"
                )
            elif have < entry.started:
                what = (
                    f"the database {self.path} records {have} sends started, but its send journal "
                    f"{self.journal_path} records {entry.started}: the database lost writes (a deleted "
                    "or damaged -wal file, a truncated or restored database file)"
                )
            else:
                entries[cid] = JournalEntry(self._store_id, have, entry.first_at, entry.last_at)
                continue
            entries[cid] = entry
            losses[cid] = StateLoss(cid, what, _send_record(cid, entry))
        for cid, have in known.items():
            if cid not in entries and have > 0:
                # Sends the journal never saw (a database older than journals): from the campaign's start.
                at = created.get(cid)
                ts = at.timestamp() if at is not None else time.time()
                entries[cid] = JournalEntry(self._store_id, have, ts, time.time())
        if state.damaged_line is not None:
            now = time.time()
            for cid in sorted(set(entries) | {c for c, n in known.items() if n > 0}):
                if cid in losses:
                    continue
                prev = entries.get(cid)
                # Marked suspect in the rewritten journal: the loss outlives this open.
                entries[cid] = JournalEntry(
                    SUSPECT,
                    max(known.get(cid, 0), prev.started if prev else 0),
                    prev.first_at if prev else now,
                    prev.last_at if prev else now,
                )
                losses[cid] = StateLoss(
                    cid,
                    f"the send journal {self.journal_path} is damaged (line {state.damaged_line}), "
                    "so it cannot vouch for the database",
                    _send_record(cid, entries[cid]),
                )
        if not state.existed and any(known.values()):
            log.warning(
                "store.journal_rebuilt",
                path=str(self.journal_path),
                hint="the send journal was missing: rebuilt from the database, unchecked this time",
            )
        for loss in losses.values():
            log.error("store.state_lost", campaign=loss.campaign_id, what=loss.what)
        journal.rewrite(self._store_id, entries)
        self._journal = journal
        self._entries = entries
        self._losses = losses

    def _journal_sends(self, started: dict[str, int]) -> None:
        """Add this commit's sends started to the journal (writer thread, after the commit)."""
        journal = self._journal
        assert journal is not None  # opened with the writer connection
        now = time.time()
        touched: dict[str, JournalEntry] = {}
        for cid, n in started.items():
            prev = self._entries.get(cid)
            if prev is None:
                entry = JournalEntry(self._store_id, n, now, now)
            else:
                # A lost campaign keeps counting on its old record: the loss stays visible.
                entry = JournalEntry(prev.store_id, prev.started + n, prev.first_at, now)
            self._entries[cid] = touched[cid] = entry
        journal.append(self._store_id, touched)
        if journal.wants_compaction():
            journal.rewrite(self._store_id, self._entries)

    def state_loss(self, campaign_id: str) -> StateLoss | None:
        """The loss of sends found at open for this campaign (None: the state is as recent as the journal)."""
        return self._losses.get(campaign_id)

    def send_record(self, campaign_id: str) -> SendRecord | None:
        """The journal's record of the campaign's sends, None if it never sent from this store."""
        entry = self._entries.get(campaign_id)
        return None if entry is None else _send_record(campaign_id, entry)

    async def accept_state(self, campaign_id: str) -> None:
        """Make the campaign's current state the journal's baseline (once it is reconciled)."""

        def op(conn: sqlite3.Connection) -> None:
            have = int(
                conn.execute(
                    "SELECT COALESCE(SUM(attempts), 0) FROM recipients WHERE campaign_id = ?", (campaign_id,)
                ).fetchone()[0]
            )
            assert self._journal is not None
            prev = self._entries.get(campaign_id)
            now = time.time()
            entry = JournalEntry(
                self._store_id, have, prev.first_at if prev else now, prev.last_at if prev else now
            )
            self._journal.append(self._store_id, {campaign_id: entry})
            self._entries[campaign_id] = entry
            self._losses.pop(campaign_id, None)

        await self._write(op)

    # -- the writer thread -------------------------------------------------------------------
    def _writer_main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._setup_writer()
        except BaseException as exc:
            err = exc if isinstance(exc, BulksendError) else StoreError(f"cannot open {self.path}: {exc}")
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                err = StoreError(
                    f"cannot open {self.path}: {exc}. The state file is damaged: move it away (keep it "
                    f"for inspection, with any -wal file) and rerun; the send journal {self.journal_path} "
                    "will then refuse to send until --reconcile-all, so nobody is emailed twice"
                )
            failed: list[_Delivery] = [(ready, None, err)]
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, failed)
            return
        opened: list[_Delivery] = [(ready, None, None)]
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_deliver, opened)
        try:
            self._write_loop(conn)
        finally:
            try:
                if self._journal is not None:
                    self._journal.close()
            except OSError as exc:
                log.error("store.journal_close_failed", path=str(self.journal_path), error=str(exc))
            conn.close()

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        q = self._queue
        stopping = False
        while not stopping:
            batch: list[_Op] = []
            item = q.get()
            if self._linger_s and item is not _STOP:
                # Let more writes join this commit (module docstring, "group commit").
                self._pause(self._linger_s)
            # Take everything that is already queued: these writes share one commit.
            while True:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Op):
                    batch.append(item)
                if len(batch) >= _MAX_BATCH_OPS:
                    break
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._run_batch(conn, batch)
        # Anything queued after the stop marker was sent by a caller racing close(): refuse it.
        leftovers: list[_Op] = []
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Op):
                leftovers.append(item)
        if leftovers:
            self._fail(leftovers, StoreError("the store is closed"))

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        # deliveries[i] is the outcome of batch[i].
        deliveries: list[_Delivery] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail(batch, StoreError(f"{self.path}: cannot start a write transaction: {exc}"))
            return
        # One cursor for the guarded UPDATEs: conn.execute would make a new one for each.
        cur = conn.cursor()
        started_ids: list[int] = []  # rows this batch moved to `sending`, for the send journal
        started_at: list[int] = []  # their places in ``deliveries``
        try:
            for op in batch:
                fn = op.fn
                if fn is None:
                    try:
                        if cur.execute(op.sql, op.params).rowcount == 0:
                            _refuse(conn, op)
                        if op.move is _TO_SENDING:
                            started_ids.append(op.row_id)
                            started_at.append(len(deliveries))
                    except Exception as exc:
                        deliveries.append((op.future, None, self._as_store_error(conn, exc)))
                    else:
                        deliveries.append((op.future, None, None))
                    continue
                if op.single_write:
                    try:
                        result = fn(conn)
                    except Exception as exc:
                        deliveries.append((op.future, None, self._as_store_error(conn, exc)))
                    else:
                        deliveries.append((op.future, result, None))
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    result = fn(conn)
                except Exception as exc:
                    # Undo only this operation; the rest of the batch still commits.
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    deliveries.append((op.future, None, self._as_store_error(conn, exc)))
                else:
                    conn.execute("RELEASE op")
                    deliveries.append((op.future, result, None))
            # Which campaigns the sends belong to, for the journal: one indexed read per batch
            # (a RETURNING clause on the hot UPDATE would cost a temporary table per row).
            started = _campaigns_of(conn, started_ids) if started_ids else {}
            conn.execute("COMMIT")
            self._commits += 1
        except Exception as exc:
            # The transaction itself broke (I/O error, disk full…): nothing in it was written.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._fail(batch, StoreError(f"{self.path}: commit failed, nothing written: {exc}"))
            return
        finally:
            cur.close()
        if started:
            # Journal the sends before any caller may POST (module docstring of store.journal).
            try:
                self._journal_sends(started)
            except OSError as exc:
                err = StoreError(
                    f"{self.journal_path}: cannot write the send journal ({exc}); nothing was sent. "
                    "Free disk space or fix the folder's permissions, then rerun to resume"
                )
                for i in started_at:
                    deliveries[i] = (deliveries[i][0], None, err)
        # Only now, with the commit durable, may any caller learn that its write succeeded.
        self._resolve(batch, deliveries)

    def _as_store_error(self, conn: sqlite3.Connection, exc: Exception) -> BaseException:
        if isinstance(exc, sqlite3.Error) and not conn.in_transaction:
            # SQLite rolled the whole transaction back (disk full, I/O error): the batch fails.
            raise exc
        return exc if isinstance(exc, BulksendError) else StoreError(f"{self.path}: write failed: {exc}")

    def _fail(self, batch: list[_Op], err: BaseException) -> None:
        self._resolve(batch, [(op.future, None, err) for op in batch])

    @staticmethod
    def _resolve(batch: list[_Op], deliveries: list[_Delivery]) -> None:
        """Hand ``deliveries[i]`` to the caller of ``batch[i]``: one wake-up per loop and batch."""
        first = batch[0].loop
        by_loop: dict[asyncio.AbstractEventLoop, list[_Delivery]]
        if all(op.loop is first for op in batch):  # the usual case: one event loop
            by_loop = {first: deliveries}
        else:
            by_loop = {}
            for op, item in zip(batch, deliveries, strict=True):
                by_loop.setdefault(op.loop, []).append(item)
        for loop, items in by_loop.items():
            # A closed loop means its callers are gone.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, items)

    async def _write(self, fn: Callable[[sqlite3.Connection], _T], *, single_write: bool = False) -> _T:
        if not self._accepting:
            raise StoreError("the store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_T] = loop.create_future()
        self._queue.put(_Op(loop, fut, fn, single_write))
        result: _T = await fut
        return result

    _timestamp = staticmethod(_dt_text)

    async def _row_write(
        self, write: RowWrite, row_id: int, values: tuple[Any, ...], lease_token: int | None
    ) -> None:
        """Queue the guarded UPDATE of ``write`` for one row and await its commit."""
        if not self._accepting:
            raise StoreError("the store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        move = _MOVES[write]
        if lease_token is None:
            sql, args = move.plain, (*values, row_id)
        else:
            sql, args = move.fenced, (*values, row_id, lease_token)
        self._queue.put(_Op(loop, fut, None, True, sql, args, row_id, move, lease_token))
        await fut

    # -- reads -------------------------------------------------------------------------------
    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if not self._accepting:
            raise StoreError("the store is not open")
        return await anyio.to_thread.run_sync(self._read_in_thread, fn)

    def _read_in_thread(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._readers_lock:
            conn = self._readers.pop() if self._readers else None
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: read failed: {exc}") from exc
        finally:
            with self._readers_lock:
                keep = self._accepting
                if keep:
                    self._readers.append(conn)
            if not keep:  # the store was closed while this read ran
                conn.close()

    # The statements of SqlStore: SQLite's tables, parameters and row decoding. The outcomes file never
    # shows a payload: iter_outcomes leaves it out (see _OUTCOME_COLUMNS).
    _recipients = "recipients"
    _campaigns = "campaigns"
    _roles = "roles"
    _suppressions = "suppressions"
    _OUTCOME_COLUMNS = _OUTCOME_COLUMNS

    @staticmethod
    def _mark(n: int) -> str:
        return f"?{n}"

    async def _fetch_rows(self, sql: str, args: tuple[Any, ...]) -> list[RecipientRow]:
        return await self._read(lambda conn: [_row_from_db(r) for r in conn.execute(sql, args)])

    async def _fetch_campaigns(self, sql: str, args: tuple[Any, ...]) -> list[CampaignRecord]:
        return await self._read(lambda conn: [_campaign_from_db(r) for r in conn.execute(sql, args)])

    async def _fetch_value(self, sql: str, args: tuple[Any, ...]) -> Any:
        return await self._read(lambda conn: conn.execute(sql, args).fetchone()[0])

    async def _execute(self, sql: str, args: tuple[Any, ...]) -> int:
        # One statement: when it fails, nothing of it was written (no savepoint needed).
        return await self._write(lambda conn: conn.execute(sql, args).rowcount, single_write=True)

    def _wall_clock(self) -> datetime:
        return utc(self._clock())

    async def _execute_many(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        await self._write(lambda conn: conn.executemany(sql, params))

    async def _fetch_suppressions(self, sql: str, args: tuple[Any, ...]) -> list[SuppressionEntry]:
        return await self._read(lambda conn: [_suppression_from_db(r) for r in conn.execute(sql, args)])

    async def pragma(self, name: str) -> Any:
        """The value of ``PRAGMA <name>`` as the writer connection sees it (for checks and diagnostics)."""
        if not _PRAGMA_NAME.match(name):
            raise StoreError(f"not a pragma name: {name!r}")
        return await self._write(lambda conn: conn.execute(f"PRAGMA {name}").fetchone()[0])

    # -- campaigns ---------------------------------------------------------------------------
    async def create_campaign(self, campaign_id: str, spec: dict[str, Any]) -> CampaignRecord:
        """Create the campaign, or return the existing one unchanged (resume)."""
        blob = encode_json(spec, f"spec of campaign {campaign_id!r}").decode()
        created = _dt_text(self._clock())

        def op(conn: sqlite3.Connection) -> CampaignRecord:
            conn.execute(
                "INSERT INTO campaigns (id, created_at, state, spec) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (campaign_id, created, CampaignState.RUNNING.value, blob),
            )
            found = conn.execute(f"SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = ?", (campaign_id,))
            return _campaign_from_db(found.fetchone())

        return await self._write(op)

    # -- admission ---------------------------------------------------------------------------
    async def admit(self, campaign_id: str, rows: Sequence[NewRecipient]) -> list[AdmitResult]:
        """Insert rows durably in one commit; idempotent on ``row``; first pending row with a key wins it."""
        # Encoded here, on the caller's side, so a bad payload fails before anything is queued.
        blobs = [blob.decode() for blob in checked_payloads(rows)]
        rows = list(rows)

        def op(conn: sqlite3.Connection) -> list[AdmitResult]:
            if conn.execute("SELECT 1 FROM campaigns WHERE id = ?", (campaign_id,)).fetchone() is None:
                raise StoreError(f"unknown campaign {campaign_id!r}")
            done: dict[int, AdmitResult] = {}
            for numbers in _chunks(sorted({r.row for r in rows})):
                for rid, n, state, reason in conn.execute(
                    "SELECT id, input_row, state, reason FROM recipients "
                    f"WHERE campaign_id = ? AND input_row IN ({_marks(len(numbers))})",
                    (campaign_id, *numbers),
                ):
                    done[n] = AdmitResult(rid, n, _STATES[state], reason)
            new_pending = [r for r in rows if r.state is RowState.PENDING and r.row not in done]
            keys = sorted({r.key for r in new_pending if r.key is not None})
            owners: dict[str, int] = {}
            for chunk in _chunks(keys):
                for key, n in conn.execute(
                    "SELECT dedupe_key, input_row FROM recipients "
                    f"WHERE campaign_id = ? AND dedupe_key IN ({_marks(len(chunk))})",
                    (campaign_id, *chunk),
                ):
                    owners[key] = n
            # The ids SQLite would pick itself (largest so far + 1; this transaction holds the write
            # lock), given explicitly so that one executemany inserts every new row.
            next_id: int = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM recipients").fetchone()[0]
            inserts: list[tuple[Any, ...]] = []
            results: list[AdmitResult] = []
            for r, blob in zip(rows, blobs, strict=True):
                existing = done.get(r.row)
                if existing is not None:  # admitted before (resume) or earlier in this call
                    results.append(existing)
                    continue
                state, reason, dedupe = admitted_as(r, owners)
                inserts.append(
                    (next_id, campaign_id, r.row, r.email, r.name, r.key, dedupe, state.value, reason, blob)
                )
                result = AdmitResult(next_id, r.row, state, reason)
                next_id += 1
                done[r.row] = result
                results.append(result)
            conn.executemany(
                "INSERT INTO recipients (id, campaign_id, input_row, email, name, recipient_key, dedupe_key, "
                "state, reason, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                inserts,
            )
            return results

        return await self._write(op)

    # -- dispatch (the mark_* methods are StoreBase's) ----------------------------------------
    async def mark_final(self, updates: Sequence[FinalUpdate]) -> None:
        """submitted/sending → final, many rows in one commit, all or nothing.

        Rows already final are left as they are (the tracker may learn a final status twice).
        """
        params = [(*final_values(u, _dt_text), u.id) for u in updates]

        def op(conn: sqlite3.Connection) -> None:
            if conn.executemany(_FINAL, params).rowcount == len(params):
                return
            # Some rows did not move. Every row that could is final now, so a row found in any other
            # state (or not found) is a problem; a final one moved now or was final already (the
            # tracker learned it twice), which is fine.
            found = (
                (p[-1], conn.execute("SELECT state FROM recipients WHERE id = ?", (p[-1],)).fetchone())
                for p in params
            )
            # Raising rolls this operation back to its savepoint.
            check_finalisable(((row_id, None if f is None else f[0]) for row_id, f in found), ALREADY_FINAL)

        await self._write(op)

    # -- leases ------------------------------------------------------------------------------
    async def _idle(self) -> None:
        return None

    async def _claim(
        self, campaign_id: str, worker_id: str, limit: int, lease_s: float, wanted: list[str]
    ) -> list[RecipientRow]:
        # One UPDATE on the single writer connection, so two claims can never take the same row.
        now = utc(self._clock())
        now_text, expires_text = _dt_text(now), _dt_text(now + timedelta(seconds=lease_s))

        def op(conn: sqlite3.Connection) -> list[RecipientRow]:
            cur = conn.execute(
                "UPDATE recipients SET lease_owner = ?, lease_expires_at = ?, lease_token = lease_token + 1 "
                "WHERE id IN (SELECT id FROM recipients WHERE campaign_id = ? "
                f"AND state IN ({_marks(len(wanted))}) AND (lease_owner = '' OR lease_expires_at <= ?) "
                f"ORDER BY id LIMIT ?) RETURNING {_ROW_COLUMNS}",
                (worker_id, expires_text, campaign_id, *wanted, now_text, limit),
            )
            return sorted((_row_from_db(r) for r in cur.fetchall()), key=lambda row: row.id)

        return await self._write(op, single_write=True)

    async def _renew(self, worker_id: str, row_ids: list[int], lease_s: float) -> set[int]:
        expires_text = _dt_text(utc(self._clock()) + timedelta(seconds=lease_s))

        def op(conn: sqlite3.Connection) -> set[int]:
            kept: set[int] = set()
            for chunk in _chunks(row_ids):
                cur = conn.execute(
                    "UPDATE recipients SET lease_expires_at = ? "
                    f"WHERE lease_owner = ? AND id IN ({_marks(len(chunk))}) RETURNING id",
                    (expires_text, worker_id, *chunk),
                )
                kept.update(r[0] for r in cur.fetchall())
            return kept

        return await self._write(op)

    async def _release(self, worker_id: str, row_ids: list[int]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for chunk in _chunks(row_ids):
                conn.execute(
                    "UPDATE recipients SET lease_owner = '', lease_expires_at = NULL "
                    f"WHERE lease_owner = ? AND id IN ({_marks(len(chunk))})",
                    (worker_id, *chunk),
                )

        await self._write(op)

    async def _acquire_role(self, campaign_id: str, role: str, worker_id: str, ttl_s: float) -> bool:
        now = utc(self._clock())
        now_text, expires_text = _dt_text(now), _dt_text(now + timedelta(seconds=ttl_s))

        def op(conn: sqlite3.Connection) -> bool:
            # One upsert: insert, or take over when the holder is us or its lease has run out.
            cur = conn.execute(
                "INSERT INTO roles (campaign_id, role, owner, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (campaign_id, role) DO UPDATE SET owner = excluded.owner, "
                "expires_at = excluded.expires_at "
                "WHERE roles.owner = excluded.owner OR roles.expires_at <= ? RETURNING owner",
                (campaign_id, role, worker_id, expires_text, now_text),
            )
            return cur.fetchone() is not None

        return await self._write(op, single_write=True)

    # -- reads -------------------------------------------------------------------------------
    async def rows_by_email_id(self, campaign_id: str, email_ids: Sequence[str]) -> dict[str, RecipientRow]:
        """The rows of the campaign holding these TEM email ids (unknown ids are absent)."""
        # "+campaign_id" keeps the planner off the campaign index: without statistics it would
        # scan a whole campaign instead of probing ix_recipients_email_id.
        rows = await self._rows_in(
            "email_id IN ({}) AND +campaign_id = ?", {e for e in email_ids if e}, campaign_id
        )
        return {row.email_id: row for row in rows}

    async def rows_by_keys(self, campaign_id: str, keys: Sequence[str]) -> dict[str, RecipientRow]:
        """The rows of the campaign that own these dedupe keys (keys nobody owns are absent)."""
        # The owner of a key holds it in dedupe_key: ux_recipients_campaign_dedupe finds it.
        rows = await self._rows_in("dedupe_key IN ({}) AND campaign_id = ?", set(keys), campaign_id)
        return {row.key: row for row in rows if row.key is not None}

    async def _rows_in(self, where: str, wanted: set[str], campaign_id: str) -> list[RecipientRow]:
        """The rows matching ``where`` (its ``{}``: the marks of a chunk of ``wanted``, then the campaign)."""
        values = sorted(wanted)

        def op(conn: sqlite3.Connection) -> list[RecipientRow]:
            found: list[RecipientRow] = []
            for chunk in _chunks(values):
                sql = f"SELECT {_ROW_COLUMNS} FROM recipients WHERE {where.format(_marks(len(chunk)))}"
                found += map(_row_from_db, conn.execute(sql, (*chunk, campaign_id)))
            return found

        return await self._read(op)

    async def iter_outcome_values(
        self, campaign_id: str, *, batch_size: int = 1000
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        """Pages of the outcome values of every row (``OUTCOME_VALUE_FIELDS``), in input ``row`` order.

        The cheap path for the outcomes file (see :class:`OutcomeValuesSource`): only the fields
        a line shows, with the timestamps turned into their outcome text by SQLite itself.
        """
        sql = self._in_row_order_sql(_OUTCOME_VALUES)

        async def page(after: int) -> list[tuple[Any, ...]]:
            def op(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
                return [
                    _outcome_values_from_db(r) for r in conn.execute(sql, (campaign_id, after, batch_size))
                ]

            return await self._read(op)

        async for values in keyset_pages(page, FIRST_INPUT_ROW, batch_size, _first):
            yield values

    async def counts(self, campaign_id: str) -> dict[str, int]:
        """Number of rows by state, and of final rows by status as ``status:<s>`` (zeros omitted)."""

        def op(conn: sqlite3.Connection) -> dict[str, int]:
            out: dict[str, int] = {}
            for state, n in conn.execute(
                "SELECT state, COUNT(*) FROM recipients WHERE campaign_id = ? GROUP BY state", (campaign_id,)
            ):
                out[state] = n
            for status, n in conn.execute(
                "SELECT status, COUNT(*) FROM recipients "
                "WHERE campaign_id = ? AND state = 'final' GROUP BY status",
                (campaign_id,),
            ):
                out[f"status:{status}"] = n
            return out

        return await self._read(op)


def _set_wal(conn: sqlite3.Connection, timeout_s: float) -> str:
    """Switch to WAL, retrying while another connection holds the lock.

    Changing the journal mode of a new file needs an exclusive lock, and SQLite may answer
    "database is locked" at once instead of waiting on busy_timeout when two processes open the
    same new file together; so wait here, with a short growing pause, up to ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    pause_s = 0.005
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, 0.1)
