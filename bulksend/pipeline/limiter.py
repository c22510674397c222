"""The shared request-rate limiter: one per account, paced by GCRA, adapted by AIMD.

Every TEM call that costs quota (send, get, list, cancel, statistics) awaits
:meth:`RateLimiter.acquire` first, and reports how it went with :meth:`RateLimiter.on_success` or
:meth:`RateLimiter.on_throttle`. TEM publishes no rate limit and its gateway often answers 429 with a
bare body and no ``Retry-After``, so the limiter finds the sustainable rate by itself: it cuts the
rate by ``decrease_factor`` (half, by default) on throttling, at most once per cooldown window so a
burst of 429s from requests that were already in flight counts once, and adds back a little per
second of successes, never above the configured target.

Pacing is GCRA (virtual scheduling): each acquire reserves the next emission time
``t = max(now, tat - tau)`` and moves the theoretical arrival time ``tat`` one interval further, then
sleeps until ``t`` without holding anything. That is O(1) per acquire, FIFO in reservation order, and
guarantees that any window of length ``w`` sees at most ``rate × w + burst`` grants.

A throttle rebuilds the schedule (drops burst credit, applies the new rate, honours a
``Retry-After`` pause) and bumps an epoch; waiters that reserved before it and whose slot lies after
it reserve again when they wake, so the slowdown reaches the queue already waiting too. A cancelled
waiter's slot is handed back when it was the latest one, and when every reservation is abandoned
the schedule falls back to the grants actually made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, TypedDict, TypeGuard, Unpack, runtime_checkable

from bulksend.clock import SYSTEM_CLOCK, Clock
from bulksend.settings import LimiterTuning, TuningOptions

__all__ = ["AimdLimiter", "LimiterBase", "LimiterStats", "RateLimiter", "honoured_pause"]


@runtime_checkable
class RateLimiter(Protocol):
    """What the pipeline needs from a limiter (in-process here; shared across processes elsewhere)."""

    async def acquire(self, kind: str = "send") -> None:
        """Wait for a slot to make one quota-costing request of the given kind."""
        ...

    def on_success(self) -> None:
        """A request got an answer that was not throttling (a 4xx counts; a 5xx does not)."""
        ...

    def on_throttle(self, retry_after_s: float | None = None) -> None:
        """A request was throttled (429, ``too_many_requests``, ``x-envoy-ratelimited``);
        ``retry_after_s`` if the server said. 5xx and transport failures are not throttling: they
        go to :func:`bulksend.pipeline.flow.report_failure` (docs/flow-control.md)."""
        ...

    @property
    def rate_per_s(self) -> float:
        """The rate currently allowed."""
        ...

    @property
    def target_rate_per_s(self) -> float:
        """The configured ceiling the rate recovers to."""
        ...


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """A snapshot of a limiter's counters (times in seconds of the limiter's clock)."""

    acquired: int
    """Slots granted so far."""
    throttles: int
    """``on_throttle`` calls (every throttling answer reported)."""
    decreases: int
    """Multiplicative decreases applied (at most one per cooldown window)."""
    pauses: int
    """Times a ``Retry-After`` extended the pause."""
    rate_per_s: float
    target_rate_per_s: float
    waiting: int
    """Tasks currently inside ``acquire``."""
    wait_s_total: float
    """Time all granted acquires spent waiting, summed."""
    acquired_by_kind: Mapping[str, int] = field(default_factory=dict)


class _Adaptation(TypedDict):
    """The figures of :class:`LimiterStats` that only the limiter's own adaptation knows."""

    rate_per_s: float
    decreases: int
    pauses: int


def honoured_pause(retry_after_s: float | None) -> TypeGuard[float]:
    """Whether a throttling answer's ``Retry-After`` asks for a pause (a finite one, over zero)."""
    return retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s > 0


class LimiterBase:
    """What the in-process and the Redis-shared limiters keep alike: the checked tuning (kept as
    :attr:`tuning`), the clock, and this process's counters behind :class:`LimiterStats`."""

    def __init__(self, rate_per_s: float, clock: Clock | None, tuning: TuningOptions) -> None:
        # Both limiters check their tuning with the same class: both refuse the same values.
        self.tuning = t = LimiterTuning.of(rate_per_s, tuning)
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._target = float(t.rate_per_s)
        self._min_rate = t.floor_per_s
        self._acquired = 0
        self._by_kind: dict[str, int] = {}
        self._throttles = 0
        self._waiting = 0
        self._wait_s_total = 0.0

    @property
    def target_rate_per_s(self) -> float:
        return self._target

    @property
    def min_rate_per_s(self) -> float:
        return self._min_rate

    def _granted(self, kind: str, started: float) -> None:
        """Count one slot of ``kind`` granted to an ``acquire`` that began at ``started``."""
        self._acquired += 1
        self._by_kind[kind] = self._by_kind.get(kind, 0) + 1
        self._wait_s_total += self._clock.monotonic() - started

    def _stats(self, **adaptation: Unpack[_Adaptation]) -> LimiterStats:
        """The counters, with the rate and the adaptations the subclass knows."""
        return LimiterStats(
            acquired=self._acquired,
            throttles=self._throttles,
            target_rate_per_s=self._target,
            waiting=self._waiting,
            wait_s_total=self._wait_s_total,
            acquired_by_kind=MappingProxyType(dict(self._by_kind)),
            **adaptation,
        )


class AimdLimiter(LimiterBase):
    """In-process GCRA pacer with AIMD rate adaptation; share one instance among all tasks.

    The tuning (``rate_per_s``, ``min_rate_per_s``, ``decrease_factor``, ``increase_per_s``,
    ``burst``, ``cooldown_s``, ``max_pause_s``) is described and checked by
    :class:`~bulksend.settings.LimiterTuning` (kept as :attr:`tuning`); a wrong value raises
    :class:`~bulksend.errors.SettingError`, a ``ValueError``. ``max_pause_s`` protects against
    absurd HTTP dates stalling every sender. ``clock``: time source
    (:class:`~bulksend.clock.FakeClock` in tests).

    Not thread-safe: all callers must run on the same event loop (reservation is synchronous code
    between awaits, which is what makes it lock-free).
    """

    def __init__(
        self, rate_per_s: float, *, clock: Clock | None = None, **tuning: Unpack[TuningOptions]
    ) -> None:
        super().__init__(rate_per_s, clock, tuning)
        # The adaptations so far, beside the counters the base keeps.
        self._decreases = 0
        self._pauses = 0
        t = self.tuning
        self._factor = float(t.decrease_factor)
        self._increase_per_s = t.increase
        self._burst = float(t.burst)
        self._cooldown_s = float(t.cooldown_s)
        self._max_pause_s = float(t.max_pause_s)

        self._rate = self._target
        self._tat = -math.inf  # theoretical arrival time of the next slot
        # The tat as if only granted reservations existed (abandoned ones excluded), and how many
        # reservations are still asleep: together they let cancelled waiters give slots back.
        self._committed_tat = -math.inf
        self._sleeping = 0
        self._paused_until = -math.inf
        self._last_decrease: float | None = None
        self._last_increase = self._clock.monotonic()
        # Bumped whenever the schedule is rebuilt; a waiter compares it with the value it saw when
        # reserving to know whether its slot still holds.
        self._epoch = 0
        self._replanned_at = -math.inf

    # -- properties ----------------------------------------------------------------------------
    @property
    def rate_per_s(self) -> float:
        return self._rate

    @property
    def paused_until(self) -> float | None:
        """Clock time until which grants are paused by a ``Retry-After``, if that is in the future."""
        return self._paused_until if self._paused_until > self._clock.monotonic() else None

    @property
    def stats(self) -> LimiterStats:
        """A consistent snapshot of the counters."""
        return self._stats(rate_per_s=self._rate, decreases=self._decreases, pauses=self._pauses)

    # -- pacing --------------------------------------------------------------------------------
    def _reserve(self, now: float) -> tuple[float, float, float]:
        """Reserve the next slot; returns (slot time, tat before, tat after). Synchronous = atomic."""
        interval = 1.0 / self._rate
        tau = (self._burst - 1.0) * interval  # how far ahead of schedule a grant may be
        slot = max(now, self._tat - tau, self._paused_until)
        before = self._tat
        self._tat = max(self._tat, slot) + interval
        return slot, before, self._tat

    def _replan(self, now: float, not_before: float) -> None:
        """Restart the schedule after a throttle: no burst credit, new rate, nothing before ``not_before``.

        Waiters that reserved under the old plan notice the new epoch when they wake and reserve
        again, so a decrease or a pause also applies to the queue already waiting, not only to
        callers arriving later (otherwise a deep queue keeps sending at the old rate into 429s).
        """
        interval = 1.0 / self._rate
        tau = (self._burst - 1.0) * interval
        # Lower bound now + tau: the next slot is no earlier than now (burst credit is dropped).
        # Upper bound now + tau + interval: slots reserved further out are rewound, because every
        # waiter holding one reserves again anyway.
        tat = min(max(self._tat, now + tau), now + tau + interval)
        self._tat = max(tat, not_before + tau)
        # Same floors for the granted-only schedule, which must never be ahead of the real one.
        self._committed_tat = min(max(self._committed_tat, now + tau, not_before + tau), self._tat)
        self._epoch += 1
        self._replanned_at = now

    async def acquire(self, kind: str = "send") -> None:
        """Wait until this caller may make one request; ``kind`` only labels the statistics.

        Cancellation is safe: a cancelled waiter's slot is given back when no later slot was
        reserved, and otherwise simply goes unused (never blocking the waiters behind it).
        """
        # A slot free at once is granted without any checkpoint: this runs once per request, and
        # both a trip through the event loop and the walk up the cancel scopes were a measurable
        # share of a send's CPU. A caller that must wait sleeps below (a cancellation point), and
        # every caller's next step is a request, which is one; a caller cancelled just after a
        # free slot leaves one slot unused, which only slows the rate down a little.
        clock = self._clock
        started = now = clock.monotonic()
        self._waiting += 1
        try:
            while True:
                epoch = self._epoch
                slot, tat_before, tat_after = self._reserve(now)
                delay = slot - now
                if delay <= 0:
                    break
                self._sleeping += 1
                try:
                    await clock.sleep(delay)
                except BaseException:
                    self._sleeping -= 1
                    if self._sleeping == 0:
                        # Every outstanding reservation was abandoned (say, a whole task group was
                        # cancelled): return to the schedule of the grants actually made, so the
                        # next caller does not wait behind slots nobody will use.
                        self._tat = min(self._tat, self._committed_tat)
                    elif self._tat == tat_after:
                        # Nobody reserved after us: hand the slot back so the schedule stays tight.
                        self._tat = tat_before
                    raise
                self._sleeping -= 1
                if epoch == self._epoch or slot <= self._replanned_at:
                    break
                # The plan changed while we slept (a decrease or a Retry-After pause) and our slot
                # lies after the change: it was computed for a rate the server just refused.
                # Reserve again under the new plan.
                now = clock.monotonic()
        finally:
            self._waiting -= 1
        self._committed_tat = max(self._committed_tat, tat_after)
        self._granted(kind, started)

    # -- adaptation ----------------------------------------------------------------------------
    def on_success(self) -> None:
        """Additive increase: ``increase_per_s`` × time since the last change, capped at the target."""
        now = self._clock.monotonic()
        if self._rate < self._target:
            elapsed = max(0.0, now - self._last_increase)
            self._rate = min(self._target, self._rate + self._increase_per_s * elapsed)
        self._last_increase = now

    def on_throttle(self, retry_after_s: float | None = None) -> None:
        """Multiplicative decrease (once per cooldown window) and, with ``retry_after_s``, a pause.

        Works without ``Retry-After``: the decrease alone slows every future reservation.
        """
        now = self._clock.monotonic()
        self._throttles += 1
        replan = False
        if self._last_decrease is None or now - self._last_decrease >= self._cooldown_s:
            # The 429s of requests already in flight at the old rate arrive within about one
            # round trip; the cooldown makes them count as one signal instead of halving repeatedly.
            self._decrease(now)
            self._last_decrease = now
            self._decreases += 1
            replan = True
        # Recovery restarts from the throttle, not from the last success before it.
        self._last_increase = now
        if honoured_pause(retry_after_s):
            until = now + min(retry_after_s, self._max_pause_s)
            if until > self._paused_until:
                self._paused_until = until
                self._pauses += 1
                replan = True
        if replan:
            self._replan(now, self._paused_until)

    def _decrease(self, now: float) -> None:
        """Cut the rate on throttling: by ``decrease_factor``, down to the floor."""
        self._rate = max(self._min_rate, self._rate * self._factor)

    def __repr__(self) -> str:
        return (
            f"AimdLimiter(rate_per_s={self._rate:.3f}, target_rate_per_s={self._target:.3f}, "
            f"acquired={self._acquired}, throttles={self._throttles})"
        )
