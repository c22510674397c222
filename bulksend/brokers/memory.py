"""An in-process broker (``kind = "memory"``), for tests: the same contract as the real ones.

:class:`MemoryQueue` is the broker queue, :class:`MemorySource` a consumer of it and
:class:`MemoryResultPublisher` keeps outcomes in a list. Settings: a source takes ``name`` (the
queue's name) and ``max_in_flight`` (default 1000); a publisher takes ``name``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import orjson

from bulksend.brokers.base import (
    BaseDelivery,
    BrokerError,
    ConfigReader,
    Delivery,
    OpenClose,
    encode_outcome,
    not_open,
)

__all__ = [
    "DeadLetter",
    "MemoryDelivery",
    "MemoryQueue",
    "MemoryResultPublisher",
    "MemorySource",
    "make_publisher",
    "make_source",
]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message dead-lettered through a :class:`MemorySource`."""

    message_id: str
    body: bytes
    reason: str


class _MemoryMessage:
    __slots__ = ("body", "deliveries", "id")

    def __init__(self, message_id: str, body: bytes) -> None:
        self.id = message_id
        self.body = body
        self.deliveries = 0


class MemoryQueue:
    """An in-process broker queue: publish here, consume with one or more :class:`MemorySource`.

    Behaves like a work queue: each message goes to one consumer at a time; a released message, or
    one still unsettled when its consumer closes, goes back to the front and is redelivered.
    """

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._ready: deque[_MemoryMessage] = deque()
        self._ids = itertools.count(1)
        self._waiters: set[anyio.Event] = set()
        self.acked: list[str] = []
        """Ids of acked messages, in ack order."""
        self.dead_letters: list[DeadLetter] = []
        """Dead-lettered messages with their reasons, in order."""

    def publish(self, body: bytes) -> str:
        """Enqueue one message; returns its id."""
        message = _MemoryMessage(str(next(self._ids)), bytes(body))
        self._ready.append(message)
        self._wake()
        return message.id

    @property
    def waiting(self) -> int:
        """Messages not handed to any consumer right now."""
        return len(self._ready)

    def _requeue(self, messages: Sequence[_MemoryMessage]) -> None:
        # Back to the front, in their original order: they were next before they were taken.
        self._ready.extendleft(reversed(messages))
        self._wake()

    def _wake(self) -> None:
        for event in self._waiters:
            event.set()
        self._waiters.clear()

    async def _wait(self) -> None:
        event = anyio.Event()
        self._waiters.add(event)
        try:
            await event.wait()
        finally:
            self._waiters.discard(event)


class MemoryDelivery(BaseDelivery):
    """A delivery from a :class:`MemorySource`."""

    __slots__ = ("_message", "_owner")

    def __init__(self, owner: MemorySource, message: _MemoryMessage) -> None:
        super().__init__(
            body=message.body,
            source=owner.name,
            message_id=message.id,
            redelivered=message.deliveries > 1,
            on_settled=owner._forget,
        )
        self._owner = owner
        self._message = message

    def _check_held(self) -> None:
        # Like a broker: once the consumer is closed its unsettled messages were given back, and
        # settling them through the old consumer fails.
        if self._owner._in_flight.get(self._message.id) is not self._message:
            raise BrokerError(
                f"{self.source}: message {self.message_id} was given back when its consumer closed"
            )

    async def _ack(self) -> None:
        self._check_held()
        self._owner._queue.acked.append(self._message.id)

    async def _dead_letter(self, reason: str) -> None:
        self._check_held()
        self._owner._queue.dead_letters.append(DeadLetter(self._message.id, self._message.body, reason))

    async def _release(self) -> None:
        self._check_held()
        self._owner._queue._requeue([self._message])


class MemorySource(OpenClose):
    """A :class:`JobSource` over a :class:`MemoryQueue`, with the same contract as the brokers.

    ``max_in_flight`` bounds unsettled deliveries like NATS's ``max_ack_pending``.
    """

    def __init__(self, queue: MemoryQueue | None = None, *, max_in_flight: int = 1000) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._queue = queue if queue is not None else MemoryQueue()
        self._max_in_flight = max_in_flight
        self._in_flight: dict[str, _MemoryMessage] = {}
        self._state: Literal["new", "open", "closed"] = "new"

    @property
    def name(self) -> str:
        return f"memory:{self._queue.name}"

    @property
    def queue(self) -> MemoryQueue:
        return self._queue

    @property
    def in_flight(self) -> int:
        """Deliveries handed out and not yet settled."""
        return len(self._in_flight)

    def publish(self, body: bytes) -> str:
        """Shortcut for ``self.queue.publish(body)``."""
        return self._queue.publish(body)

    async def open(self) -> None:
        self._state = "open"

    async def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        # Like a broker noticing a dead consumer: everything unsettled becomes deliverable again.
        unsettled = list(self._in_flight.values())
        self._in_flight.clear()
        self._queue._requeue(unsettled)

    async def receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        if self._state != "open":
            raise BrokerError(f"{self.name}: receive() on a source that is not open")
        if max_messages < 1:
            return []
        with anyio.move_on_after(max(0.0, timeout_s)):
            while True:
                taken = self._take(max_messages)
                if taken:
                    return taken
                await self._queue._wait()
        return []

    def _take(self, max_messages: int) -> list[Delivery]:
        room = min(max_messages, self._max_in_flight - len(self._in_flight), len(self._queue._ready))
        out: list[Delivery] = []
        for _ in range(room):
            message = self._queue._ready.popleft()
            message.deliveries += 1
            self._in_flight[message.id] = message
            out.append(MemoryDelivery(self, message))
        return out

    def _forget(self, delivery: BaseDelivery) -> None:
        self._in_flight.pop(delivery.message_id, None)
        self._queue._wake()  # room for more: wake a receive() waiting on max_in_flight

    async def healthy(self) -> bool:
        return self._state == "open"

    async def lag(self) -> int | None:
        return self._queue.waiting

    def __repr__(self) -> str:
        return f"MemorySource({self._queue.name!r}, {self._state}, in_flight={len(self._in_flight)})"


class MemoryResultPublisher(OpenClose):
    """Keeps outcomes in memory (``outcomes`` decoded, ``messages`` as sent), for tests."""

    def __init__(self, name: str = "memory") -> None:
        self._name = name
        self._open = False
        self.messages: list[bytes] = []
        self.outcomes: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return f"memory:{self._name}"

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def publish(self, outcome: Mapping[str, Any]) -> None:
        if not self._open:
            raise not_open(self.name)
        body = encode_outcome(outcome)
        self.messages.append(body)
        self.outcomes.append(orjson.loads(body))

    async def healthy(self) -> bool:
        return self._open

    def __repr__(self) -> str:
        return f"MemoryResultPublisher({self._name!r}, {len(self.messages)} published)"


def make_source(cfg: Mapping[str, Any]) -> MemorySource:
    """A :class:`MemorySource` on a new queue, from a ``kind = "memory"`` configuration."""
    reader = ConfigReader(cfg, where="job source (memory)", known=("name", "max_in_flight"))
    return MemorySource(
        MemoryQueue(reader.text("name", "memory")),
        max_in_flight=reader.integer("max_in_flight", 1000),
    )


def make_publisher(cfg: Mapping[str, Any]) -> MemoryResultPublisher:
    """A :class:`MemoryResultPublisher` from a ``kind = "memory"`` configuration."""
    reader = ConfigReader(cfg, where="results (memory)", known=("name",))
    return MemoryResultPublisher(reader.text("name", "memory"))
