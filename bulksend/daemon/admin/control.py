"""The control protocol between the admin HTTP API and the daemon, and an in-memory implementation.

The admin API (:mod:`bulksend.daemon.admin.api`) knows nothing about queues, stores or TEM: it turns HTTP
requests into calls on a :class:`DaemonControl` and the results (or :class:`NotFound`,
:class:`Conflict`, :class:`~bulksend.errors.CampaignError`) into HTTP answers. The daemon implements
the protocol; :class:`MemoryControl` implements it over an outbox :class:`~bulksend.store.base.Store`
(a :class:`~bulksend.store.memory.MemoryStore` by default) without sending anything, for tests and
local experiments.

Campaign lifecycle as seen through the protocol::

    submit ──► running ◄──► paused
                  │            │
                  ├────────────┴──► canceled     (pause/resume/cancel of a canceled campaign: 409)
                  ├──► finished                  (every recipient has its outcome)
                  └──► failed                    (the run stopped on an error it cannot get past)

``pause`` of a paused campaign, ``resume`` of a running one and ``cancel`` of a canceled one are
no-ops that return the campaign as it is (a retried request must not fail); any other change out of
a terminal state (``canceled``, ``finished``, ``failed``) raises :class:`Conflict`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Final, Literal, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import orjson

from bulksend.campaign.load import FileAccess, campaign_from_dict, check_campaign_id, parse_campaign_toml
from bulksend.campaign.recipients import BadRow, RecipientInput, iter_recipients, read_batch
from bulksend.campaign.validate import check_address, normalize_address
from bulksend.errors import CampaignError, Conflict, ControlError, NotFound
from bulksend.pipeline.flow import FlowStats
from bulksend.sinks.outcomes import outcome_lines
from bulksend.store.base import (
    CANCELED_BEFORE_SENDING,
    CampaignState,
    FinalUpdate,
    NewRecipient,
    RowState,
    Store,
)
from bulksend.store.memory import MemoryStore

__all__ = [
    "CAMPAIGN_STATUSES",
    "JOB_CAMPAIGN_PREFIX",
    "CampaignInfo",
    "CampaignStatus",
    "Conflict",
    "ControlError",
    "DaemonControl",
    "JobStreamInfo",
    "MemoryControl",
    "NotFound",
    "Overview",
    "Submission",
    "campaign_folder_error",
    "check_sender_given",
    "count_recipients",
    "done_of",
    "new_campaign_folder",
    "parse_submission",
    "safe_filename",
    "spool_private",
    "spooled_name",
    "write_private",
]

CampaignStatus = Literal["running", "paused", "canceled", "finished", "failed"]
CAMPAIGN_STATUSES: Final[tuple[CampaignStatus, ...]] = ("running", "paused", "canceled", "finished", "failed")
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({"canceled", "finished", "failed"})


@dataclass(frozen=True, slots=True)
class CampaignInfo:
    """What the daemon says about one campaign.

    ``counts`` are the store's counts: rows by state (``pending``, ``sending``, ``submitted``,
    ``final``, ``rejected``, ``skipped``) and final rows by TEM status as ``status:<s>``.
    ``total`` is the number of recipients read from the source when known (None while the
    source is still being read). ``error`` says why a ``failed`` campaign stopped, ``reason`` why
    it is in its state when a guardrail (not a person) put it there.
    """

    id: str
    state: CampaignStatus
    created_at: datetime
    counts: dict[str, int] = field(default_factory=dict)
    total: int | None = None
    error: str | None = None
    reason: str | None = None

    @property
    def done(self) -> int:
        """Recipients with their outcome (final, rejected or skipped)."""
        return done_of(self.counts)

    def as_json(self) -> dict[str, Any]:
        """The JSON object the admin API answers with (``created_at`` in RFC 3339, UTC)."""
        created = self.created_at if self.created_at.tzinfo else self.created_at.replace(tzinfo=UTC)
        return {
            "id": self.id,
            "state": self.state,
            "created_at": created.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "total": self.total,
            "done": self.done,
            "counts": dict(self.counts),
            "error": self.error,
            "reason": self.reason,
        }


def done_of(counts: Mapping[str, int]) -> int:
    """Rows of these store counts that have their outcome (final, rejected or skipped)."""
    return counts.get("final", 0) + counts.get("rejected", 0) + counts.get("skipped", 0)


@dataclass(frozen=True, slots=True)
class JobStreamInfo:
    """One job stream (``jobs.<template>``): its rows by state, as :attr:`CampaignInfo.counts`."""

    template: str
    campaign: str
    counts: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The JSON object of ``GET /v1/overview``'s ``job_streams``."""
        return {
            "template": self.template,
            "campaign": self.campaign,
            "done": done_of(self.counts),
            "counts": dict(self.counts),
        }


@dataclass(frozen=True, slots=True)
class Overview:
    """The daemon's live figures beside its campaigns: flow control of the account's limiter,
    work in hand, each source's queue lag and each job stream's progress.

    ``flow`` is None for a control without a limiter; ``queue_lag`` maps every source to the
    messages waiting in it (None until the broker has said); ``rate_per_s`` is the configured
    account rate and ``retry_tokens_max`` what the retry budget holds when full.
    """

    flow: FlowStats | None = None
    rate_per_s: float | None = None
    retry_tokens_max: float | None = None
    in_flight: int = 0
    tracker_backlog: int = 0
    queue_lag: dict[str, int | None] = field(default_factory=dict)
    job_streams: list[JobStreamInfo] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The answer of ``GET /v1/overview`` (docs/admin-api.md)."""
        flow = self.flow
        return {
            "flow": None
            if flow is None
            else {
                "rate_per_s": self.rate_per_s,
                "current_rate_per_s": flow.rate_per_s,
                "measured_rate_per_s": flow.measured_rate_per_s,
                "ceiling_per_s": flow.ceiling_per_s,
                "retry_tokens": flow.retry_tokens,
                "retry_tokens_max": self.retry_tokens_max,
                "retries": flow.retries,
                "circuit": flow.circuit.name.lower().replace("_", "-"),
                "circuit_opened": flow.circuit_opened,
                "throttles": flow.throttles,
                "failures": flow.failures,
            },
            "in_flight": self.in_flight,
            "tracker_backlog": self.tracker_backlog,
            "sources": [{"source": name, "queue_lag": lag} for name, lag in self.queue_lag.items()],
            "job_streams": [stream.as_json() for stream in self.job_streams],
        }


@dataclass(frozen=True, slots=True)
class Submission:
    """A campaign and its recipients, as the admin API received them.

    ``campaign`` is TOML text or a parsed JSON object, with the keys of a campaign file
    (docs/campaign-file.md); the uploaded recipients replace ``campaign.recipients``.
    ``recipients`` is the CSV/JSONL upload, streamed in chunks: it is only valid until
    :meth:`DaemonControl.submit_campaign` returns, so persist it (spool or admit) before returning,
    and abandon the submission if iterating it raises (the client went away).
    ``recipients_filename`` is a bare file name (no directory) whose suffix tells the format.
    """

    campaign: Mapping[str, Any] | str
    recipients: AsyncIterator[bytes] | bytes
    recipients_filename: str

    async def parse(self) -> tuple[dict[str, Any], str]:
        """The campaign as a fresh dict (:func:`parse_submission`) and its checked id.

        The id becomes a folder name and a store key, so it is checked before anything is stored:
        raises ``CampaignError`` for a campaign without a ``[campaign]`` table, with an invalid id
        or one of the job streams' ids, or without a sender.
        """
        data = await anyio.to_thread.run_sync(parse_submission, self.campaign)
        table = data.get("campaign")
        if not isinstance(table, Mapping):
            raise CampaignError("the campaign needs a [campaign] table with an `id`", path="campaign")
        campaign_id = check_campaign_id(table.get("id"))
        if campaign_id.startswith(JOB_CAMPAIGN_PREFIX):
            raise CampaignError(
                f"campaign id {campaign_id!r}: ids starting with 'jobs.' are reserved for queued jobs; "
                "pick another",
                path="campaign",
            )
        check_sender_given(table, as_json=not isinstance(self.campaign, str))
        return data, campaign_id


@runtime_checkable
class DaemonControl(Protocol):
    """What the admin API may ask of the daemon. Every method may raise ``ControlError`` subclasses."""

    async def submit_campaign(self, submission: Submission) -> CampaignInfo:
        """Accept a campaign and its recipients and start running it.

        Raises ``CampaignError`` for bad input (HTTP 400 with its message) and ``Conflict`` when a
        campaign with the same id exists (409).
        """
        ...

    async def list_campaigns(self) -> list[CampaignInfo]:
        """Every campaign the daemon knows, oldest first."""
        ...

    async def get_campaign(self, campaign_id: str) -> CampaignInfo | None:
        """One campaign, or None when unknown."""
        ...

    def outcomes(self, campaign_id: str, *, live: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Outcome lines in input order, with the fields of the outcomes file (not finished yet:
        ``unknown``; with ``live``, for the campaign's report, ``in progress``). Raises
        ``NotFound`` on first iteration for an unknown campaign."""
        ...

    async def pause(self, campaign_id: str) -> CampaignInfo:
        """Stop taking new recipients for sending; in-flight requests finish, tracking goes on."""
        ...

    async def resume(self, campaign_id: str) -> CampaignInfo:
        """Undo ``pause``."""
        ...

    async def cancel(self, campaign_id: str) -> CampaignInfo:
        """Stop sending for good; every email still ``new`` at TEM is canceled there."""
        ...

    async def templates(self) -> list[str]:
        """Names of the registered templates, sorted."""
        ...

    async def register_template(self, name: str, template: Mapping[str, Any]) -> None:
        """Create or replace a named template (keys: from, subject, text, html, headers)."""
        ...

    async def health(self) -> dict[str, bool]:
        """Readiness of each dependency, e.g. ``{"store": True, "source:nats": False}``."""
        ...

    async def health_details(self) -> dict[str, Any]:
        """Figures ``/readyz`` states beside the checks (e.g. ``{"results_backlog": 3}``)."""
        ...

    async def dead_letters(self) -> dict[str, Any]:
        """Dead letters since start, per source: ``{"since", "total", "sources": [{"source",
        "count", "by_kind", "recent": [{"at", "message_id", "kind", "reason"}]}]}``."""
        ...

    async def overview(self) -> Overview:
        """The live figures of ``GET /v1/overview``; cheap (read from what the daemon keeps
        current), as a dashboard asks for them every few seconds."""
        ...


def safe_filename(name: str) -> str:
    """The last component of an uploaded file name (either slash style), never a path."""
    base = PureWindowsPath(PurePosixPath(name).name).name
    return "" if base in ("", ".", "..") else base


JOB_CAMPAIGN_PREFIX: Final = "jobs."
"""Ids of the daemon's job streams; a submitted campaign may not use them."""

_DAEMON_FILES: Final = frozenset({"campaign.json", "outcomes.jsonl", "outcomes.db"})
"""Names the daemon writes in a campaign's folder: an upload never takes one of them."""


_MAX_NAME_BYTES: Final = 120


def spooled_name(uploaded: str) -> str:
    """The file name an uploaded recipients file is stored under, in its campaign's own folder:
    the upload's base name (its suffix tells the format) without unprintable characters, unless
    it is too long or one the daemon uses; then ``recipients`` and the suffix."""
    name = "".join(ch for ch in safe_filename(uploaded) if ch.isprintable()) or "recipients.csv"
    suffix = PurePosixPath(name).suffix
    if (
        name in (".", "..")
        or len(name.encode()) > _MAX_NAME_BYTES
        or name.lower() in _DAEMON_FILES
        or name.lower().startswith("outcomes.db")
    ):
        return "recipients" + (suffix if len(suffix.encode()) <= 16 else "")
    return name


def parse_submission(campaign: Mapping[str, Any] | str) -> dict[str, Any]:
    """A submitted campaign (TOML text or a JSON object) as a fresh dict, its nesting bounded.

    Blocking (a 1 MiB TOML takes a while to parse): run it in a worker thread.
    """
    if isinstance(campaign, str):
        return parse_campaign_toml(campaign, "campaign")
    if not isinstance(campaign, Mapping):
        raise CampaignError("a campaign must be an object with a 'campaign' table", path="campaign")
    # A deep copy through JSON: the caller's mapping is never changed, and a value that could
    # not have come from JSON or TOML is refused here (orjson also stops at 254 levels).
    try:
        copied: dict[str, Any] = orjson.loads(orjson.dumps(campaign))
    except (TypeError, orjson.JSONEncodeError):
        raise CampaignError(
            "the campaign holds a value that is not JSON, or is nested too deep", path="campaign"
        ) from None
    return copied


SENDER_EXAMPLE: Final = '{"email": "news@example.com", "name": "Example News"}'


def check_sender_given(table: Mapping[str, Any], *, as_json: bool) -> None:
    """Refuse a submitted campaign without a sender, in the words of what was sent: JSON field
    names for a JSON campaign, the TOML table for a TOML one (every email needs a sender)."""
    if table.get("from") is not None:
        return
    if as_json:
        raise CampaignError(
            f'"campaign.from" is required: the sender address, e.g. {SENDER_EXAMPLE}', path="campaign"
        )
    raise CampaignError(
        "[campaign] needs 'from' (the sender); write from = { email = \"news@example.com\", "
        'name = "Example News" }',
        path="campaign",
    )


def count_recipients(path: Path) -> int:
    """Rows of a spooled recipients file, as the run will read them (bad rows included).

    Blocking: run it in a worker thread. Counted once at submission so ``total`` is known from
    the first answer on, and the same in every later read.
    """
    return sum(1 for _ in iter_recipients(path))


def campaign_folder_error(error: CampaignError, folder: Path) -> CampaignError:
    """``error`` with the campaign's folder taken out of its path and message: a caller sees
    ``people.csv:3``, never where the daemon keeps its files."""
    message = str(error)
    if error.path:
        where = f"{error.path}:{error.line}: " if error.line else f"{error.path}: "
        message = message.removeprefix(where)
    path = error.path
    for base in {str(folder.resolve()), str(folder)}:
        message = message.replace(base + os.sep, "").replace(base, "the campaign's folder")
        if path is not None and path.startswith(base + os.sep):
            path = path[len(base) + 1 :]
    return CampaignError(message, path=path, line=error.line)


def new_campaign_folder(parent: Path, cid: str) -> Path:
    """Create ``parent/cid`` (0700), refusing one that exists: it is not this request's to reuse."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = parent / cid
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        raise Conflict(
            f"campaign id {cid!r}: files of an earlier, unfinished submission of this id remain on the "
            f"daemon (campaigns/{cid} in its data folder); choose another id, or have the operator "
            "remove them"
        ) from None
    return folder


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` readable by the daemon's user only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


async def spool_private(recipients: AsyncIterator[bytes] | bytes, path: Path) -> tuple[int, int]:
    """Write an upload to a new file at ``path``, readable by the daemon's user only (0600: it
    holds personal data), as it arrives; returns (bytes, chunks). Never overwrites a file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = await anyio.to_thread.run_sync(os.open, path, flags, 0o600)
    size = chunks = 0
    async with await anyio.open_file(fd, "wb") as f:
        if isinstance(recipients, bytes | bytearray | memoryview):
            await f.write(bytes(recipients))
            return len(recipients), 1
        async for chunk in recipients:
            await f.write(chunk)
            size += len(chunk)
            chunks += 1
    return size, chunks


# -- in-memory implementation --------------------------------------------------------------------

ADMIT_BATCH: Final = 500
"""Rows admitted per store call (one commit in a durable store)."""

_STATUS_OF: Final[dict[CampaignState, CampaignStatus]] = {
    CampaignState.RUNNING: "running",
    CampaignState.PAUSED: "paused",
    CampaignState.CANCELED: "canceled",
    CampaignState.FINISHED: "finished",
}


class MemoryControl:
    """A :class:`DaemonControl` that validates and admits campaigns for real but never sends.

    Campaigns are checked by the same rules as campaign files (:func:`campaign_from_dict`), the
    upload is spooled to ``spool_dir`` chunk by chunk and read by the real recipient reader, and
    rows are admitted into ``store`` (an open store; by default a fresh :class:`MemoryStore`).
    Nothing moves by itself afterwards: :meth:`finish` and :meth:`fail` play the part of a run.
    ``checks`` is what :meth:`health` reports; change it to simulate an unready dependency.
    """

    def __init__(
        self,
        spool_dir: Path,
        *,
        store: Store | None = None,
        clock: Callable[[], datetime] | None = None,
        files_root: Path | None = None,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.files = FileAccess.confined_to(files_root)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._owns_store = store is None
        self._store: Store = store if store is not None else MemoryStore(clock=self._clock)
        self._opened = store is not None
        self._totals: dict[str, int] = {}
        self._errors: dict[str, str] = {}
        self._reserved: set[str] = set()
        self._templates: dict[str, dict[str, Any]] = {}
        self.checks: dict[str, bool] = {"store": True}
        self._started_at = self._clock()
        self.uploads: dict[str, tuple[int, int]] = {}
        """campaign id → (bytes, chunks) received for its recipients upload."""

    async def _ready_store(self) -> Store:
        if not self._opened:
            await self._store.open()
            self._opened = True
        return self._store

    async def aclose(self) -> None:
        """Close the store if this control created it."""
        if self._owns_store and self._opened:
            await self._store.close()
            self._opened = False

    # -- protocol ----------------------------------------------------------------------------
    async def submit_campaign(self, submission: Submission) -> CampaignInfo:
        store = await self._ready_store()
        data, campaign_id = await submission.parse()
        if campaign_id in self._reserved or await store.get_campaign(campaign_id) is not None:
            raise Conflict(f"a campaign with id {campaign_id!r} already exists; give this one a new id")
        if not safe_filename(submission.recipients_filename):
            raise CampaignError("the recipients upload needs a file name ending in .csv, .tsv or .jsonl")
        filename = spooled_name(submission.recipients_filename)
        # Reserve the id before touching the disk: two concurrent submissions of one id must not
        # both pass the check above.
        self._reserved.add(campaign_id)
        folder = self.spool_dir / uuid.uuid4().hex
        try:
            await anyio.Path(self.spool_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            await anyio.Path(folder).mkdir(mode=0o700)
            spooled = folder / filename
            try:
                size, chunks = await spool_private(submission.recipients, spooled)
                data["campaign"] = {**data["campaign"], "recipients": filename}
                built = await anyio.to_thread.run_sync(
                    lambda: campaign_from_dict(data, base_dir=folder, source="campaign", files=self.files)
                )
                await store.create_campaign(
                    built.id,
                    {"source": "admin-api", "recipients": filename, "fingerprint": built.fingerprint},
                )
                total = await self._admit(store, built.id, spooled)
                await store.mark_admitted_all(built.id)
            except BaseException as exc:
                await _remove_tree(folder)
                if isinstance(exc, CampaignError):
                    raise campaign_folder_error(exc, folder) from None
                raise
        finally:
            self._reserved.discard(campaign_id)
        self._totals[built.id] = total
        self.uploads[built.id] = (size, chunks)
        return await self._info(built.id)

    async def list_campaigns(self) -> list[CampaignInfo]:
        store = await self._ready_store()
        return [await self._info(rec.id) for rec in await store.list_campaigns()]

    async def get_campaign(self, campaign_id: str) -> CampaignInfo | None:
        store = await self._ready_store()
        if await store.get_campaign(campaign_id) is None:
            return None
        return await self._info(campaign_id)

    async def outcomes(self, campaign_id: str, *, live: bool = False) -> AsyncIterator[dict[str, Any]]:
        store = await self._ready_store()
        if await store.get_campaign(campaign_id) is None:
            raise NotFound(f"no campaign with id {campaign_id!r}")
        async for line in outcome_lines(store, campaign_id, live=live):
            yield line

    async def pause(self, campaign_id: str) -> CampaignInfo:
        return await self._change(campaign_id, "paused", frm=("running",))

    async def resume(self, campaign_id: str) -> CampaignInfo:
        return await self._change(campaign_id, "running", frm=("paused",))

    async def cancel(self, campaign_id: str) -> CampaignInfo:
        info = await self._change(campaign_id, "canceled", frm=("running", "paused"))
        store = await self._ready_store()
        # Nothing was sent by this control, so every open row is still `pending`: it becomes
        # `skipped` as canceled, which is what the daemon records for an email never sent.
        async for row in store.iter_rows(campaign_id, states=[RowState.PENDING]):
            await store.mark_skipped(row.id, reason=CANCELED_BEFORE_SENDING)
        return await self._info(info.id)

    async def templates(self) -> list[str]:
        return sorted(self._templates)

    async def register_template(self, name: str, template: Mapping[str, Any]) -> None:
        self._templates[name] = orjson.loads(orjson.dumps(dict(template)))

    def template(self, name: str) -> dict[str, Any] | None:
        """A registered template as stored (a copy), or None."""
        found = self._templates.get(name)
        return None if found is None else orjson.loads(orjson.dumps(found))

    async def health(self) -> dict[str, bool]:
        return dict(self.checks)

    async def health_details(self) -> dict[str, Any]:
        return {}

    async def dead_letters(self) -> dict[str, Any]:
        return {"since": self._started_at, "total": 0, "sources": []}

    async def overview(self) -> Overview:
        return Overview()

    # -- what a run would do ---------------------------------------------------------------------
    async def finish(self, campaign_id: str, status: str = "sent", *, flags: tuple[str, ...] = ()) -> None:
        """Play a whole run: every ``pending`` row is sent and ends ``final`` with ``status``."""
        store = await self._ready_store()
        await self._require(campaign_id)
        now = self._clock()
        async for row in store.iter_rows(campaign_id, states=[RowState.PENDING]):
            await store.mark_sending(row.id, started_at=now, correlation=f"{campaign_id}/{row.row}")
            email_id = str(uuid.uuid4())
            await store.mark_submitted(row.id, email_id=email_id, message_id=email_id, submitted_at=now)
            await store.mark_final([FinalUpdate(row.id, status=status, flags=flags, final_at=now)])
        await store.set_campaign_state(campaign_id, CampaignState.FINISHED)

    async def fail(self, campaign_id: str, error: str) -> None:
        """Mark the campaign ``failed`` with ``error`` (as a run that hit an unrecoverable error)."""
        await self._require(campaign_id)
        self._errors[campaign_id] = error

    # -- internals ---------------------------------------------------------------------------
    async def _require(self, campaign_id: str) -> None:
        store = await self._ready_store()
        if await store.get_campaign(campaign_id) is None:
            raise NotFound(f"no campaign with id {campaign_id!r}")

    async def _info(self, campaign_id: str) -> CampaignInfo:
        store = await self._ready_store()
        rec = await store.get_campaign(campaign_id)
        if rec is None:
            raise NotFound(f"no campaign with id {campaign_id!r}")
        counts = {s.value: 0 for s in RowState} | await store.counts(campaign_id)
        error = self._errors.get(campaign_id)
        state: CampaignStatus = "failed" if error is not None else _STATUS_OF[rec.state]
        return CampaignInfo(
            id=rec.id,
            state=state,
            created_at=rec.created_at,
            counts=counts,
            total=self._totals.get(campaign_id),
            error=error,
        )

    async def _change(
        self, campaign_id: str, target: CampaignStatus, *, frm: tuple[CampaignStatus, ...]
    ) -> CampaignInfo:
        info = await self._info(campaign_id)
        if info.state == target:
            return info
        if info.state not in frm:
            raise Conflict(f"campaign {campaign_id!r} is {info.state}; it cannot become {target}")
        store = await self._ready_store()
        await store.set_campaign_state(campaign_id, CampaignState(target))
        return await self._info(campaign_id)

    async def _admit(self, store: Store, campaign_id: str, path: Path) -> int:
        """Read the spooled recipients and admit them in batches; returns the number of rows."""
        reader = iter_recipients(path)
        total = 0
        while True:
            chunk = await anyio.to_thread.run_sync(read_batch, reader, ADMIT_BATCH)
            if not chunk:
                return total
            total += len(chunk)
            await store.admit(campaign_id, [_new_recipient(rec) for rec in chunk])


async def _remove_tree(folder: Path) -> None:
    with anyio.CancelScope(shield=True):
        root = anyio.Path(folder)
        if not await root.exists():
            return
        async for child in root.iterdir():
            await child.unlink(missing_ok=True)
        await root.rmdir()


def _new_recipient(rec: RecipientInput | BadRow) -> NewRecipient:
    if isinstance(rec, BadRow):
        return NewRecipient(rec.row, rec.email, rec.name, None, RowState.REJECTED, rec.reason)
    problem = check_address(rec.email)
    if problem is not None:
        return NewRecipient(rec.row, rec.email, rec.name, None, RowState.REJECTED, problem)
    return NewRecipient(
        rec.row,
        rec.email,
        rec.name,
        normalize_address(rec.email),
        RowState.PENDING,
        payload={"vars": rec.vars},
    )
