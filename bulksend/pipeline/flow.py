"""Flow control: find the account's rate from throttling, budget retries, wait out outages.

Three signals, kept apart (docs/flow-control.md has the model, the defaults and why):

* **throttling** (429, ``too_many_requests``, ``x-envoy-ratelimited``) moves the rate:
  :class:`CubicLimiter` cuts it to β × the rate *measured* going through and grows it back along
  a CUBIC curve (AWS's adaptive retry mode);
* **server errors and transport failures** never move the rate; they feed the
  :class:`CircuitBreaker`, which stops every request after a run of them (or a bad window) and
  lets probes through after jittered, growing pauses;
* **retries** spend a :class:`RetryBudget` token, refilled by a share of all requests and a small
  trickle per second (Finagle's RetryBudget, gRPC's retry throttling).

:class:`FlowLimiter` puts the budget and the breaker in front of any
:class:`~bulksend.pipeline.limiter.RateLimiter` (a :class:`CubicLimiter` in one process, the Redis
limiter across processes, whose rate then lives in Redis). Code that may hold a plain limiter
reports through :func:`report_failure` and :func:`spend_retry`, which do nothing without one.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from bulksend.clock import SYSTEM_CLOCK, Clock
from bulksend.pipeline.limiter import AimdLimiter, RateLimiter

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "CubicLimiter",
    "CubicPacing",
    "FlowLimiter",
    "FlowStats",
    "RateMeter",
    "RetryBudget",
    "flow_stats",
    "report_failure",
    "spend_retry",
]


class RateMeter:
    """Events per second over the last ``window_s`` (counted in ``bucket_s`` buckets)."""

    def __init__(self, clock: Clock, *, window_s: float = 1.0, bucket_s: float = 0.1) -> None:
        self._clock = clock
        self._window_s = window_s
        self._bucket_s = bucket_s
        self._buckets: deque[list[float]] = deque()  # [bucket index, count]
        self._first: float | None = None

    def record(self, n: int = 1) -> None:
        now = self._clock.monotonic()
        if self._first is None:
            self._first = now
        index = math.floor(now / self._bucket_s)
        buckets = self._buckets
        if buckets and buckets[-1][0] == index:
            buckets[-1][1] += n
        else:
            buckets.append([index, n])
            self._trim(now)

    def _trim(self, now: float) -> None:
        oldest = math.floor((now - self._window_s) / self._bucket_s)
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()

    def rate_per_s(self) -> float | None:
        """The rate over the window (over the time since the first event, when shorter); None before any."""
        if self._first is None:
            return None
        now = self._clock.monotonic()
        self._trim(now)
        span = max(self._bucket_s, min(self._window_s, now - self._first))
        return sum(count for _, count in self._buckets) / span


class CubicPacing(TypedDict, total=False):
    """The pacing a :class:`CubicLimiter` takes as keywords, as :class:`~bulksend.settings.LimiterTuning`
    describes and checks it (CUBIC replaces the decrease factor and the additive increase)."""

    min_rate_per_s: float
    burst: float
    max_pause_s: float


class CubicLimiter(AimdLimiter):
    """The GCRA pacer of :class:`AimdLimiter`, adapted by CUBIC from the measured rate.

    On throttling (at most once per ``cooldown_s``), the rate that was going through — answers
    that were not throttled over the last second, or the current rate if lower — becomes
    ``w_max`` and the rate drops to ``beta × w_max``. It then grows back along a cubic: fast at
    first, flat near the rate that was refused, then probing above it, never above
    ``rate_per_s``. Both halves are scaled to ``w_max`` so that they take the same time at any
    rate: back to ``w_max`` in ``recovery_s`` (a stray 429 costs little), then ``probe_s`` more
    to probe ``(1 − β)`` above it (slowly, so the account is not hammered while probing).
    Server errors and transport failures are not reported here (see :class:`FlowLimiter`).
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        beta: float = 0.7,
        recovery_s: float = 1.0,
        probe_s: float = 4.0,
        cooldown_s: float = 0.5,
        clock: Clock | None = None,
        **pacing: Unpack[CubicPacing],
    ) -> None:
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 < beta < 1:
            raise ValueError(f"beta must be between 0 and 1 (exclusive), got {beta!r}")
        if (
            isinstance(recovery_s, bool)
            or not isinstance(recovery_s, int | float)
            or not 0 < recovery_s < math.inf
        ):
            raise ValueError(f"recovery_s must be a finite number of seconds > 0, got {recovery_s!r}")
        if isinstance(probe_s, bool) or not isinstance(probe_s, int | float) or not 0 < probe_s < math.inf:
            raise ValueError(f"probe_s must be a finite number of seconds > 0, got {probe_s!r}")
        super().__init__(
            rate_per_s, decrease_factor=beta, increase_per_s=0.0, cooldown_s=cooldown_s, clock=clock, **pacing
        )
        self._beta = float(beta)
        self._recovery_s = float(recovery_s)
        self._probe_s = float(probe_s)
        self._meter = RateMeter(self._clock)
        self._w_max: float | None = None
        self._epoch_start = 0.0

    @property
    def measured_rate_per_s(self) -> float | None:
        """Answers that were not throttled, per second, over the last second."""
        return self._meter.rate_per_s()

    @property
    def ceiling_per_s(self) -> float:
        """The rate last refused by the server (``w_max``), or the configured rate before any 429."""
        return self._w_max if self._w_max is not None else self._target

    @property
    def found_limit_per_s(self) -> float | None:
        """The account's limit as found by throttling; None while the server never throttled."""
        return self._w_max

    def _cubic(self, now: float) -> float:
        assert self._w_max is not None
        t = now - self._epoch_start - self._recovery_s
        x = t / (self._recovery_s if t < 0 else self._probe_s)
        rate = self._w_max * (1 + (1 - self._beta) * x * x * x)
        return min(self._target, max(self._min_rate, rate))

    def _restart_epoch(self, now: float, w_max: float) -> None:
        self._w_max = w_max
        self._epoch_start = now
        self._rate = max(self._min_rate, min(self._target, w_max * self._beta))

    def on_success(self) -> None:
        """Count the answer in the measured rate and follow the CUBIC curve."""
        self._meter.record()
        if self._w_max is not None:
            self._rate = self._cubic(self._clock.monotonic())

    def _decrease(self, now: float) -> None:
        """Cut to β × the rate going through (the measured rate, or the current one if lower)."""
        measured = self._meter.rate_per_s()
        going_through = self._rate if measured is None else min(self._rate, measured)
        self._restart_epoch(now, max(self._min_rate, going_through))

    def on_recovered(self) -> None:
        """After an outage: restart from β × the rate before it and grow back along the curve."""
        now = self._clock.monotonic()
        self._restart_epoch(now, self._rate)
        self._replan(now, self._paused_until)

    def __repr__(self) -> str:
        return (
            f"CubicLimiter(rate_per_s={self._rate:.3f}, target_rate_per_s={self._target:.3f}, "
            f"ceiling_per_s={self.ceiling_per_s:.3f}, throttles={self._throttles})"
        )


class RetryBudget:
    """Retries as a share of traffic: each request deposits ``ratio`` token, each retry takes one.

    ``min_per_s`` tokens also come back per second, so a slow stream may still retry a little; the
    bucket holds at most ``max_tokens`` and starts full. :meth:`withdraw` waits for a token rather
    than failing: a bulk send must not drop an email because others failed at the same time.
    """

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_s: float = 10.0,
        max_tokens: float = 100.0,
        clock: Clock | None = None,
    ) -> None:
        if not (0 <= ratio <= 1):
            raise ValueError(f"ratio must be within [0, 1], got {ratio!r}")
        if not (0 < min_per_s < math.inf):
            raise ValueError(f"min_per_s must be a finite number > 0, got {min_per_s!r}")
        if not (1 <= max_tokens < math.inf):
            raise ValueError(f"max_tokens must be a finite number >= 1, got {max_tokens!r}")
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self.ratio = float(ratio)
        self.min_per_s = float(min_per_s)
        self.max_tokens = float(max_tokens)
        self._tokens = self.max_tokens
        self._at = self._clock.monotonic()
        self.spent = 0
        self.waited = 0

    @property
    def tokens(self) -> float:
        """Tokens left now."""
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock.monotonic()
        if now > self._at:
            self._tokens = min(self.max_tokens, self._tokens + (now - self._at) * self.min_per_s)
            self._at = now

    def deposit(self) -> None:
        """One request went out: ``ratio`` of a retry is earned."""
        self._tokens = min(self.max_tokens, self._tokens + self.ratio)

    def try_withdraw(self) -> bool:
        """Take a token for one retry if one is left."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.spent += 1
            return True
        return False

    async def withdraw(self) -> None:
        """Take a token for one retry, waiting for one when the budget is spent."""
        if self.try_withdraw():
            return
        self.waited += 1
        while not self.try_withdraw():
            # Deposits from other requests may come sooner; this is the latest a token comes back.
            await self._clock.sleep(max(0.001, (1.0 - self._tokens) / self.min_per_s))


class BreakerState(enum.IntEnum):
    """The breaker's state; the values are the ``bulksend_circuit_state`` gauge's."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Stops every request during an outage and probes until the server answers again.

    Closed: trips after ``failures_to_open`` consecutive failures (5xx or transport), or when at
    least ``min_answers`` answers of the last ``window_s`` seconds failed in a share of
    ``failure_share`` or more. Open: nothing goes out for a pause of ``pause_s`` doubling per
    reopening up to ``max_pause_s``, each scaled by a random factor in [0.5, 1] so processes do not
    probe in step. Half-open: one probe at a time; ``successes_to_close`` answers in a row close it,
    a failure opens it again. Any HTTP answer but a 5xx is a success here (a 429 or a 400 shows the
    server is up).
    """

    def __init__(
        self,
        *,
        failures_to_open: int = 10,
        window_s: float = 5.0,
        min_answers: int = 20,
        failure_share: float = 0.5,
        pause_s: float = 0.25,
        max_pause_s: float = 2.0,
        successes_to_close: int = 2,
        probe_timeout_s: float = 10.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if failures_to_open < 1 or successes_to_close < 1 or min_answers < 1:
            raise ValueError("failures_to_open, successes_to_close and min_answers must be >= 1")
        if not (0 < failure_share <= 1):
            raise ValueError(f"failure_share must be within (0, 1], got {failure_share!r}")
        if not (0 < pause_s <= max_pause_s < math.inf) or not (0 < window_s < math.inf):
            raise ValueError("pause_s, max_pause_s and window_s must be finite, > 0, pause_s <= max_pause_s")
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self._rng = rng or random.Random()
        self.failures_to_open = failures_to_open
        self.window_s = float(window_s)
        self.min_answers = min_answers
        self.failure_share = float(failure_share)
        self.pause_s = float(pause_s)
        self.max_pause_s = float(max_pause_s)
        self.successes_to_close = successes_to_close
        self.probe_timeout_s = float(probe_timeout_s)
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._window: deque[list[float]] = deque()  # [bucket index, answers, failures]
        self._bucket_s = self.window_s / 10
        self._reopen_at = 0.0
        self._reopenings = 0
        self._probe_at: float | None = None
        self._probe_successes = 0
        self.opened = 0
        self.on_closed: list[Callable[[], None]] = []
        """Callables run when the breaker closes again (the pacer's ramp back)."""

    @property
    def closed(self) -> bool:
        """Closed: requests go at once (the one check on every request's path)."""
        return self._state is BreakerState.CLOSED

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose pause is over is half-open)."""
        if self._state is BreakerState.OPEN and self._clock.monotonic() >= self._reopen_at:
            self._state = BreakerState.HALF_OPEN
            self._probe_at = None
            self._probe_successes = 0
        return self._state

    def _count(self, failed: bool) -> None:
        now = self._clock.monotonic()
        index = int(now // self._bucket_s)
        window = self._window
        if window and window[-1][0] == index:
            window[-1][1] += 1
            window[-1][2] += failed
        else:
            window.append([index, 1, int(failed)])
            oldest = math.floor((now - self.window_s) / self._bucket_s)
            while window and window[0][0] <= oldest:
                window.popleft()

    def on_success(self) -> None:
        """The server answered (anything but a 5xx)."""
        if self._state is BreakerState.CLOSED:
            self._consecutive = 0
            self._count(False)
            return
        if self.state is BreakerState.HALF_OPEN:
            self._probe_successes += 1
            self._probe_at = None
            if self._probe_successes >= self.successes_to_close:
                self._close()
        # Open: an answer to a request sent before the trip says nothing about now.

    def on_failure(self) -> None:
        """A 5xx or a transport failure."""
        state = self.state
        if state is BreakerState.CLOSED:
            self._consecutive += 1
            self._count(True)
            if self._consecutive >= self.failures_to_open or self._bad_window():
                self._open()
        elif state is BreakerState.HALF_OPEN:
            self._open()

    def _bad_window(self) -> bool:
        answers = sum(b[1] for b in self._window)
        failures = sum(b[2] for b in self._window)
        return answers >= self.min_answers and failures >= self.failure_share * answers

    def _open(self) -> None:
        pause = min(self.max_pause_s, self.pause_s * 2.0**self._reopenings)
        self._reopenings += 1
        self._state = BreakerState.OPEN
        self._reopen_at = self._clock.monotonic() + pause * self._rng.uniform(0.5, 1.0)
        self.opened += 1

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._reopenings = 0
        self._window.clear()
        for callback in self.on_closed:
            callback()

    async def wait(self) -> None:
        """Return when a request may go: at once while closed; as the probe when half-open."""
        clock = self._clock
        while True:
            state = self.state
            if state is BreakerState.CLOSED:
                return
            now = clock.monotonic()
            if state is BreakerState.OPEN:
                await clock.sleep(self._reopen_at - now)
                continue
            if self._probe_at is None or now - self._probe_at >= self.probe_timeout_s:
                # This caller is the probe; the others wait for its answer (or for it to be lost).
                self._probe_at = now
                return
            await clock.sleep(min(0.05, self._probe_at + self.probe_timeout_s - now))


@dataclass(frozen=True, slots=True)
class FlowStats:
    """What the progress line, the metrics and the summary show of flow control."""

    rate_per_s: float
    measured_rate_per_s: float | None
    ceiling_per_s: float
    found_limit_per_s: float | None
    retry_tokens: float
    retries: int
    retries_waited: int
    circuit: BreakerState
    circuit_opened: int
    throttles: int
    failures: int


class FlowLimiter:
    """A :class:`RateLimiter` with a retry budget and a circuit breaker in front of ``pacer``."""

    def __init__(
        self,
        pacer: RateLimiter,
        *,
        budget: RetryBudget | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
    ) -> None:
        clock = clock if clock is not None else SYSTEM_CLOCK
        self.pacer = pacer
        self.budget = budget if budget is not None else RetryBudget(clock=clock)
        self.breaker = breaker if breaker is not None else CircuitBreaker(clock=clock)
        recovered = getattr(pacer, "on_recovered", None)
        if recovered is not None:
            self.breaker.on_closed.append(recovered)
        # The pacer's own measure when it has one: one count per answer on the hot path.
        self._meter: RateMeter | None = None if hasattr(pacer, "measured_rate_per_s") else RateMeter(clock)
        self._throttles = 0
        self._failures = 0

    async def acquire(self, kind: str = "send", **kwargs: Any) -> None:
        """Wait for the breaker, then for a slot of the pacer."""
        if not self.breaker.closed:
            await self.breaker.wait()
        self.budget.deposit()
        await self.pacer.acquire(kind, **kwargs)

    def on_success(self) -> None:
        """An answer that was neither throttled nor a server error (4xx included)."""
        if self._meter is not None:
            self._meter.record()
        self.breaker.on_success()
        self.pacer.on_success()

    def on_throttle(self, retry_after_s: float | None = None) -> None:
        """Throttling: the pacer slows down; for the breaker, the server is up."""
        self._throttles += 1
        self.breaker.on_success()
        self.pacer.on_throttle(retry_after_s)

    def on_failure(self) -> None:
        """A 5xx or a transport failure: counts towards the breaker, never moves the rate."""
        self._failures += 1
        self.breaker.on_failure()

    async def spend_retry(self) -> None:
        """Take a retry token (waiting when the budget is spent)."""
        await self.budget.withdraw()

    @property
    def rate_per_s(self) -> float:
        return self.pacer.rate_per_s

    @property
    def target_rate_per_s(self) -> float:
        return self.pacer.target_rate_per_s

    @property
    def measured_rate_per_s(self) -> float | None:
        """Answers not throttled per second, over the last second (this process)."""
        if self._meter is None:
            measured = getattr(self.pacer, "measured_rate_per_s", None)
            return float(measured) if measured is not None else None
        return self._meter.rate_per_s()

    @property
    def ceiling_per_s(self) -> float:
        """The rate the account last refused, or the configured rate before any throttling."""
        ceiling = getattr(self.pacer, "ceiling_per_s", None)
        return float(ceiling) if ceiling is not None else self.pacer.target_rate_per_s

    @property
    def found_limit_per_s(self) -> float | None:
        """The account's limit found by throttling; None while nothing was throttled."""
        found = getattr(self.pacer, "found_limit_per_s", None)
        if found is not None:
            return float(found)
        if self._throttles and self.pacer.rate_per_s < self.pacer.target_rate_per_s:
            return self.pacer.rate_per_s
        return None

    @property
    def stats(self) -> Any:
        """The pacer's statistics (see :class:`~bulksend.pipeline.limiter.LimiterStats`)."""
        return getattr(self.pacer, "stats", None)

    @property
    def flow(self) -> FlowStats:
        """A snapshot of the flow-control figures."""
        return FlowStats(
            rate_per_s=self.pacer.rate_per_s,
            measured_rate_per_s=self.measured_rate_per_s,
            ceiling_per_s=self.ceiling_per_s,
            found_limit_per_s=self.found_limit_per_s,
            retry_tokens=self.budget.tokens,
            retries=self.budget.spent,
            retries_waited=self.budget.waited,
            circuit=self.breaker.state,
            circuit_opened=self.breaker.opened,
            throttles=self._throttles,
            failures=self._failures,
        )

    def __getattr__(self, name: str) -> Any:
        # Anything else (paused_until, sync, close…) is the pacer's.
        if name == "pacer":
            raise AttributeError(name)
        return getattr(self.pacer, name)

    def __repr__(self) -> str:
        return f"FlowLimiter({self.pacer!r}, circuit={self.breaker.state.name.lower()})"


def report_failure(limiter: RateLimiter) -> None:
    """Report a 5xx or a transport failure to ``limiter`` if it takes that signal."""
    hook = getattr(limiter, "on_failure", None)
    if hook is not None:
        hook()


async def spend_retry(limiter: RateLimiter) -> None:
    """Take a retry token from ``limiter``'s budget if it has one (waits when it is spent)."""
    hook = getattr(limiter, "spend_retry", None)
    if hook is not None:
        await hook()


def flow_stats(limiter: RateLimiter) -> FlowStats | None:
    """``limiter``'s flow-control figures, or None for a limiter without flow control."""
    flow = getattr(limiter, "flow", None)
    return flow if isinstance(flow, FlowStats) else None
