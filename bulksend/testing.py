"""Helpers for tests of bulksend and of code built on it: a fake clock that makes timing exact,
the TOML writers that build campaign and daemon files, and a campaign run set up in-process.

:class:`FakeClock` serves both kinds of time the code takes: it is a :class:`bulksend.clock.Clock`
(``monotonic()`` and ``sleep()``) for pacing and timeouts, and a wall clock for the sandbox
(``clock()``: seconds since the epoch) and the stores (``clock.utcnow()``: an aware datetime).

:func:`campaign_toml` writes a campaign file from Python values (over a default sender, subject
and text), :func:`toml_document` any TOML file of tables, such as a daemon configuration.
:func:`campaign_run` sets a campaign up as one ``bulksend send`` would, in-process.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence, Sized
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from os import PathLike
from types import MappingProxyType
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import orjson

if TYPE_CHECKING:
    from bulksend.campaign.model import Campaign
    from bulksend.events.router import EventRouter
    from bulksend.pipeline.run import CampaignRun
    from bulksend.pipeline.stats import RunStats
    from bulksend.tem.config import TemSettings

__all__ = [
    "TEST_SENDER",
    "FakeClock",
    "TomlTable",
    "campaign_run",
    "campaign_toml",
    "toml_document",
    "toml_key",
    "toml_table",
    "toml_value",
    "topic_with_queue",
]


class _Sleeper:
    __slots__ = ("cancelled", "deadline", "event", "woken")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.event = anyio.Event()
        self.woken = False
        self.cancelled = False


class _CountWaiter:
    __slots__ = ("count", "event")

    def __init__(self, count: int) -> None:
        self.count = count
        self.event = anyio.Event()


# Used only when the event loop does not expose its ready queue (not CPython's asyncio loop):
# how many consecutive loop iterations the autojump check waits before it assumes every task
# is blocked.
_FALLBACK_IDLE_ROUNDS = 64


class FakeClock:
    """A clock whose time only moves when told to (or, with ``autojump``, when everyone sleeps).

    Manual mode (default): :meth:`sleep` blocks until :meth:`advance` moves ``now`` to or past the
    sleeper's deadline. Use :meth:`wait_for_sleepers` to know that tasks have reached their sleep
    before advancing, so tests need no real sleeps.

    Autojump mode (``FakeClock(autojump=True)``): whenever the event loop has nothing left to run
    (every task is blocked), time jumps straight to the earliest pending deadline and the sleepers
    due then are woken, in deadline order and FIFO among equal deadlines. A simulation of
    ``N`` seconds of pacing therefore runs as fast as the code under test can go, and the same
    program always observes the same timestamps. Semantics and limits:

    * Time never moves while any task is runnable, so code between two awaits sees a frozen ``now``.
    * "Blocked" means blocked on anything: a task waiting for real I/O counts as blocked too, so
      autojump is meant for in-memory simulations (limiters, pipelines over memory streams), not
      for tests that talk to real sockets; use manual mode there.
    * A task that busy-waits (``while clock.monotonic() < t: await anyio.sleep(0)``) keeps the loop
      busy and time never moves: sleep on the clock instead.
    * Autojump needs the asyncio backend. It watches the loop's ready queue; on an event loop that
      does not expose one it falls back to waiting a fixed number of loop iterations.
    * If only sleepers with an infinite deadline remain, time does not jump (that is a deadlock).

    As a wall clock: calling the clock (``clock()``) gives ``now`` as seconds since the epoch, and
    :meth:`utcnow` the same instant as an aware datetime; ``start`` may be given as a datetime.
    With ``allow_backwards=True``, :meth:`advance` also takes negative steps, like a wall clock
    that an NTP correction sets back (monotonic users must leave it off).

    Not thread-safe for sleeping: use one FakeClock per event loop. Reading it from another
    thread (a sandbox served from a thread) while the test advances it is fine.
    """

    def __init__(
        self, start: float | datetime = 0.0, *, autojump: bool = False, allow_backwards: bool = False
    ) -> None:
        if isinstance(start, datetime):
            start = start.timestamp()
        if not math.isfinite(start):
            raise ValueError(f"FakeClock start must be a finite number of seconds, got {start!r}")
        self._now = float(start)
        self.autojump = autojump
        self.allow_backwards = allow_backwards
        self._heap: list[tuple[float, int, _Sleeper]] = []
        self._seq = itertools.count()
        self._live = 0
        self._count_waiters: list[_CountWaiter] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jump_handle: asyncio.Handle | None = None
        self._idle_rounds = 0

    # -- reading time --------------------------------------------------------------------------
    @property
    def now(self) -> float:
        """Current fake time in seconds."""
        return self._now

    def monotonic(self) -> float:
        return self._now

    def __call__(self) -> float:
        """``now``: the clock as a wall-clock source (seconds since the epoch)."""
        return self._now

    def utcnow(self) -> datetime:
        """``now`` as an aware UTC datetime (the stores' clock)."""
        return datetime.fromtimestamp(self._now, UTC)

    @property
    def sleepers(self) -> int:
        """How many tasks are currently sleeping on this clock."""
        return self._live

    def next_deadline(self) -> float | None:
        """Earliest deadline among current sleepers, or None when nobody sleeps."""
        self._prune()
        return self._heap[0][0] if self._heap else None

    # -- moving time ---------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper whose deadline has passed.

        Woken tasks run the next time the caller yields to the event loop. A negative step (only
        with ``allow_backwards``) moves the wall clock back and wakes nobody.
        """
        if not math.isfinite(seconds) or (seconds < 0 and not self.allow_backwards):
            raise ValueError(f"FakeClock.advance needs a finite number of seconds >= 0, got {seconds!r}")
        self._now += seconds
        self._wake_due()

    def advance_to(self, when: float) -> None:
        """Move time forward to ``when`` (no-op if already past it) and wake due sleepers."""
        if not math.isfinite(when):
            raise ValueError(f"FakeClock.advance_to needs a finite time, got {when!r}")
        if when > self._now:
            self._now = when
        self._wake_due()

    # -- sleeping ------------------------------------------------------------------------------
    async def sleep(self, seconds: float) -> None:
        """Block until fake time reaches now + ``seconds``. ``seconds <= 0`` just yields once."""
        if math.isnan(seconds):
            raise ValueError("FakeClock.sleep: seconds is NaN")
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        if self.autojump:
            # Before registering: it raises outside asyncio, and the jump only runs once we block.
            self._schedule_jump()
        sleeper = _Sleeper(self._now + seconds)
        heapq.heappush(self._heap, (sleeper.deadline, next(self._seq), sleeper))
        self._live += 1
        self._notify_count_waiters()
        try:
            await sleeper.event.wait()
        finally:
            if not sleeper.woken:
                # Cancelled (or failed) while asleep: forget the entry. It stays in the heap until
                # popped, but is skipped and no longer counted.
                sleeper.cancelled = True
                self._live -= 1

    async def wait_for_sleepers(self, count: int) -> None:
        """Return once at least ``count`` tasks are sleeping on this clock (manual-mode helper)."""
        if self._live >= count:
            await anyio.lowlevel.checkpoint()
            return
        waiter = _CountWaiter(count)
        self._count_waiters.append(waiter)
        try:
            await waiter.event.wait()
        finally:
            if waiter in self._count_waiters:
                self._count_waiters.remove(waiter)

    # -- internals -----------------------------------------------------------------------------
    def _prune(self) -> None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)

    def _wake_due(self) -> None:
        heap = self._heap
        now = self._now
        while heap and heap[0][0] <= now:
            _, _, sleeper = heapq.heappop(heap)
            if sleeper.cancelled:
                continue
            sleeper.woken = True
            self._live -= 1
            sleeper.event.set()

    def _notify_count_waiters(self) -> None:
        for waiter in [w for w in self._count_waiters if self._live >= w.count]:
            self._count_waiters.remove(waiter)
            waiter.event.set()

    def _schedule_jump(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("FakeClock(autojump=True) needs the asyncio backend") from None
        if self._jump_handle is not None and self._loop is loop:
            return
        self._loop = loop
        self._idle_rounds = 0
        self._jump_handle = loop.call_soon(self._jump_if_idle)

    def _loop_is_idle(self, loop: asyncio.AbstractEventLoop) -> bool:
        # CPython's asyncio loop keeps runnable callbacks (task steps included) in ``_ready``. When
        # this callback runs and that queue is empty, every task is blocked on something: exactly
        # the moment a real clock would let time pass.
        ready = getattr(loop, "_ready", None)
        if isinstance(ready, Sized):
            return len(ready) == 0
        self._idle_rounds += 1
        return self._idle_rounds >= _FALLBACK_IDLE_ROUNDS

    def _jump_if_idle(self) -> None:
        self._jump_handle = None
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if not self._loop_is_idle(loop):
            # Check again after the runnable callbacks had their turn (one check per loop pass).
            self._jump_handle = loop.call_soon(self._jump_if_idle)
            return
        self._idle_rounds = 0
        self._prune()
        if not self._heap:
            return
        deadline = self._heap[0][0]
        if not math.isfinite(deadline):
            return
        if deadline > self._now:
            self._now = deadline
        self._wake_due()
        if self._live:
            self._jump_handle = loop.call_soon(self._jump_if_idle)

    def __repr__(self) -> str:
        mode = ", autojump=True" if self.autojump else ""
        return f"FakeClock(now={self._now!r}{mode}, sleepers={self._live})"


# -- TOML files ------------------------------------------------------------------------------------

TomlTable = Mapping[str, object]
"""A TOML table: keys and their values (strings, numbers, booleans, arrays, inline tables)."""

TEST_SENDER: Mapping[str, str] = MappingProxyType({"email": "news@example.com", "name": "Example News"})
"""The sender of :func:`campaign_toml` unless the campaign names its own."""

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    """``key`` as a TOML key: bare when TOML allows it, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else toml_value(key)


def toml_value(value: object) -> str:
    """``value`` as a TOML value: a string, number, boolean, array or inline table."""
    if isinstance(value, str):
        # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped too.
        return orjson.dumps(value).decode().replace("\x7f", "\\u007f")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML value for {value!r}")


def toml_table(name: str, values: TomlTable, *, array: bool = False) -> str:
    """The table ``[name]`` (with ``array``: one ``[[name]]`` of an array of tables) and its keys.

    ``name`` is written as given, so a dotted one (``templates.welcome``) names a sub-table.
    """
    head = f"[[{name}]]" if array else f"[{name}]"
    return head + "\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in values.items())


def toml_document(tables: Mapping[str, TomlTable | Sequence[TomlTable]]) -> str:
    """A TOML document of ``tables``, in order; a sequence of tables becomes an array of tables.

    No blank lines: a key's line number is easy to tell, for tests of the errors that name it.
    """
    return "".join(
        toml_table(name, table)
        if isinstance(table, Mapping)
        else "".join(toml_table(name, element, array=True) for element in table)
        for name, table in tables.items()
    )


def campaign_toml(
    campaign_id: str, *, campaign: TomlTable = MappingProxyType({}), **tables: TomlTable
) -> str:
    """A campaign file: ``[campaign]`` with ``campaign_id``, :data:`TEST_SENDER`, a subject and a
    text that greet ``first_name`` (each overridden, and keys such as ``recipients`` added, by
    ``campaign``), then ``tables`` (``sending``, ``tracking``, ``output``…) in order."""
    head = {
        "id": campaign_id,
        "from": TEST_SENDER,
        "subject": "Hello {{ first_name }}",
        "text": "Hi {{ first_name }}",
        **campaign,
    }
    return toml_document({"campaign": head, **tables})


# -- a campaign run in-process -------------------------------------------------------------------


@asynccontextmanager
async def campaign_run(
    campaign: Campaign,
    settings: TemSettings,
    *,
    stats: RunStats,
    store_url: str | PathLike[str] | None = None,
    grace_s: float = 30.0,
    resume_paused: bool = False,
    events: EventRouter | None = None,
) -> AsyncIterator[CampaignRun]:
    """A run of ``campaign`` set up as one ``bulksend send`` sets it up, all closed on the way out.

    Its store (the campaign's own, or ``store_url``) is opened, its TEM client for ``settings``
    reports every response to ``stats``, its AIMD limiter starts at the campaign's rate (burst 10).
    """
    # Imported here, not above: bulksend.clock imports this module, and the pipeline imports it.
    from bulksend.pipeline.limiter import AimdLimiter
    from bulksend.pipeline.run import CampaignRun
    from bulksend.store import open_store
    from bulksend.tem.client import TemClient

    store = open_store(store_url or campaign.store_path)
    await store.open()
    try:
        async with TemClient(settings, on_response=stats.on_response) as tem:
            yield CampaignRun(
                campaign,
                store=store,
                tem=tem,
                limiter=AimdLimiter(campaign.sending.rate_per_s, burst=10),
                project_id=settings.project_id,
                stats=stats,
                grace_s=grace_s,
                resume_paused=resume_paused,
                events=events,
            )
    finally:
        await store.close()


async def topic_with_queue(
    url: str, region: str, name: str, *, access_key: str, secret_key: str
) -> tuple[str, str]:
    """An SNS topic and an SQS queue subscribed to it (raw delivery off, as TEM's events need),
    through the SNS and SQS APIs at ``url`` (moto in tests); returns (topic ARN, queue URL)."""
    from aiobotocore.session import AioSession

    session = AioSession()
    client = functools.partial(
        session.create_client,
        region_name=region,
        endpoint_url=url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )
    async with client("sns") as sns, client("sqs") as sqs:
        arn = (await sns.create_topic(Name=name))["TopicArn"]
        queue = (await sqs.create_queue(QueueName=name))["QueueUrl"]
        attributes = await sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
        await sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=attributes["Attributes"]["QueueArn"])
    return arn, queue
