"""Nested rates: a lane's own ceiling (a campaign's ``rate_per_s``, a job stream's) inside the
account's limiter.

The account's limiter (in-process, or shared through Redis) is the outer budget of every API call
of the account; it finds the account's real rate and reacts to throttling. A lane's ceiling is a
fixed inner pace on top of it: :class:`NestedLimiter` waits for the lane's :class:`Pacer` first,
then for the outer limiter, so a lane held back by its own rate takes no slot of the account that
another lane could use. Every signal (success, throttle, and whatever else the outer limiter
understands) goes to the outer limiter: a 429 speaks of the account, not of one lane.
"""

from __future__ import annotations

import math
from typing import Any

from bulksend.clock import SYSTEM_CLOCK, Clock
from bulksend.pipeline.limiter import RateLimiter

__all__ = ["NestedLimiter", "Pacer", "lane_burst", "nested"]


def lane_burst(rate_per_s: float) -> float:
    """The burst of a lane's pacer: one slot per 50/s of rate, between 1 and 10 (as the account's)."""
    return max(1.0, min(10.0, rate_per_s / 50))


class Pacer:
    """A fixed-rate pacer (GCRA): any window of length ``w`` sees at most ``rate × w + burst`` grants.

    Each :meth:`wait` reserves the next slot synchronously and sleeps until it, so waiters are
    served in arrival order without a lock. A cancelled waiter whose slot was the latest one gives
    it back. Not thread-safe: one event loop.
    """

    def __init__(self, rate_per_s: float, *, burst: float = 1.0, clock: Clock | None = None) -> None:
        if isinstance(rate_per_s, bool) or not isinstance(rate_per_s, int | float):
            raise ValueError(f"rate_per_s must be a number, got {rate_per_s!r}")
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError(f"rate_per_s must be a finite number > 0, got {rate_per_s!r}")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError(f"burst must be a finite number >= 1, got {burst!r}")
        self._rate = float(rate_per_s)
        self._interval = 1.0 / self._rate
        self._tau = (float(burst) - 1.0) * self._interval
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self._tat = -math.inf
        self.granted = 0

    @property
    def rate_per_s(self) -> float:
        return self._rate

    async def wait(self) -> None:
        """Return once this caller's slot has come (at once if one is free)."""
        now = self._clock.monotonic()
        before = self._tat
        slot = max(now, before - self._tau)
        self._tat = after = max(before, slot) + self._interval
        if slot > now:
            try:
                await self._clock.sleep(slot - now)
            except BaseException:
                if self._tat == after:
                    # Nobody reserved after us: the slot goes back, so the schedule stays tight.
                    self._tat = before
                raise
        self.granted += 1

    def __repr__(self) -> str:
        return f"Pacer(rate_per_s={self._rate:g}, granted={self.granted})"


class NestedLimiter:
    """``outer`` (the account's limiter) with a lane's fixed ceiling of ``rate_per_s`` inside it.

    Implements :class:`~bulksend.pipeline.limiter.RateLimiter`. Keyword arguments of
    :meth:`acquire` and of the signals are passed to the outer limiter unchanged, and any attribute
    this class does not define is the outer limiter's: hooks the account's limiter has (or gains)
    work through a lane without this class knowing them.
    """

    def __init__(
        self, outer: RateLimiter, rate_per_s: float, *, burst: float | None = None, clock: Clock | None = None
    ) -> None:
        self.outer = outer
        self.pacer = Pacer(rate_per_s, burst=lane_burst(rate_per_s) if burst is None else burst, clock=clock)

    async def acquire(self, kind: str = "send", **kwargs: Any) -> None:
        # The lane's ceiling first: a lane waiting for its own pace holds no slot of the account.
        await self.pacer.wait()
        await self.outer.acquire(kind, **kwargs)

    def on_success(self, **kwargs: Any) -> None:
        self.outer.on_success(**kwargs)

    def on_throttle(self, retry_after_s: float | None = None, **kwargs: Any) -> None:
        self.outer.on_throttle(retry_after_s, **kwargs)

    @property
    def ceiling_per_s(self) -> float:
        """The lane's own ceiling."""
        return self.pacer.rate_per_s

    @property
    def rate_per_s(self) -> float:
        return min(self.pacer.rate_per_s, self.outer.rate_per_s)

    @property
    def target_rate_per_s(self) -> float:
        return min(self.pacer.rate_per_s, self.outer.target_rate_per_s)

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found the normal way. ``outer`` itself is looked up in
        # the instance dict, so a half-built instance (copy, pickle) cannot recurse here.
        if name == "outer" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.outer, name)

    def __repr__(self) -> str:
        return f"NestedLimiter({self.outer!r}, rate_per_s={self.pacer.rate_per_s:g})"


def nested(outer: RateLimiter, rate_per_s: float | None, *, clock: Clock | None = None) -> RateLimiter:
    """``outer`` with a lane ceiling of ``rate_per_s``; ``outer`` itself when there is none."""
    if rate_per_s is None:
        return outer
    return NestedLimiter(outer, rate_per_s, clock=clock)
