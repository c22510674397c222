"""Flow control on the fake clock: CUBIC from the measured rate, the retry budget, the breaker."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import anyio
import pytest

from bulksend.clock import FakeClock
from bulksend.errors import InvalidArgumentsError, RateLimitedError, ServerError, TemConnectionError
from bulksend.pipeline.ceiling import CeilingLimiter
from bulksend.pipeline.flow import (
    BreakerState,
    CircuitBreaker,
    CubicLimiter,
    FlowLimiter,
    RetryBudget,
    flow_stats,
    report_failure,
    spend_retry,
)
from bulksend.pipeline.limiter import AimdLimiter
from bulksend.pipeline.retry import Signal, signal_of
from tests.test_limiter import acquirers


@dataclass
class Account:
    """A server-side token bucket of ``limit_per_s`` (burst ``limit_per_s / 10``) on the fake clock."""

    clock: FakeClock
    limit_per_s: float
    fail_p: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    tokens: float = 0.0
    at: float = 0.0
    accepted: list[float] = field(default_factory=list)
    throttled: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self.at = self.clock.monotonic()

    @property
    def burst(self) -> float:
        return max(1.0, self.limit_per_s / 10)

    def answer(self) -> str:
        now = self.clock.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.limit_per_s)
        self.at = now
        if self.tokens < 1:
            self.throttled += 1
            return "429"
        self.tokens -= 1
        if self.rng.random() < self.fail_p:
            self.failed += 1
            return "5xx"
        self.accepted.append(now)
        return "ok"


async def drive(limiter: FlowLimiter, account: Account, *, seconds: float, workers: int = 32) -> None:
    """``workers`` senders, each: a slot, a 20 ms round trip, then the answer reported."""
    clock = account.clock

    async def worker() -> None:
        while clock.monotonic() < seconds:
            await limiter.acquire()
            await clock.sleep(0.02)
            answer = account.answer()
            if answer == "429":
                limiter.on_throttle()
            elif answer == "5xx":
                limiter.on_failure()
            else:
                limiter.on_success()

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)


def state_of(breaker: CircuitBreaker) -> BreakerState:
    # A call, not the property: mypy would narrow the property across the test's own steps.
    return breaker.state


def rate_between(accepted: list[float], start: float, end: float) -> float:
    return sum(1 for t in accepted if start <= t < end) / (end - start)


@pytest.mark.parametrize("limit", [50.0, 200.0, 1000.0])
async def test_finds_an_unknown_limit_ten_times_below_the_configured_rate(limit: float) -> None:
    """Configured at 10 × the account's limit, the limiter settles within 10 s at >= 90 % of the
    limit, and then gets at most 3 % of its requests throttled."""
    clock = FakeClock(autojump=True)
    account = Account(clock, limit)
    limiter = FlowLimiter(CubicLimiter(10 * limit, burst=10, clock=clock), clock=clock)
    await drive(limiter, account, seconds=40.0, workers=64)
    assert rate_between(account.accepted, 10.0, 40.0) >= 0.9 * limit
    throttled_late = account.throttled  # every 429 of the run, the first 10 s included
    assert throttled_late <= 0.03 * len(account.accepted) + 4 * limit / 10
    found = limiter.found_limit_per_s
    assert found is not None
    assert 0.7 * limit <= found <= 1.3 * limit
    assert state_of(limiter.breaker) is BreakerState.CLOSED


async def test_steady_state_429_share_stays_under_three_percent() -> None:
    """Once converged (after 10 s), 429s are at most 3 % of the requests of the next 30 s."""
    clock = FakeClock(autojump=True)
    account = Account(clock, 200.0)
    limiter = FlowLimiter(CubicLimiter(2000.0, burst=10, clock=clock), clock=clock)
    await drive(limiter, account, seconds=10.0)
    before_ok, before_429 = len(account.accepted), account.throttled
    await drive(limiter, account, seconds=40.0)
    ok, throttled = len(account.accepted) - before_ok, account.throttled - before_429
    assert throttled <= 0.03 * (ok + throttled)


async def test_occasional_server_errors_never_cut_the_rate() -> None:
    """With 1 % of answers 5xx and no throttling, the rate stays at the configured rate and the
    breaker stays closed."""
    clock = FakeClock(autojump=True)
    account = Account(clock, 10_000.0, fail_p=0.01)
    pacer = CubicLimiter(300.0, burst=6, clock=clock)
    limiter = FlowLimiter(pacer, clock=clock)
    await drive(limiter, account, seconds=20.0)
    assert account.failed > 20
    assert pacer.stats.decreases == 0
    assert limiter.rate_per_s == 300.0
    assert state_of(limiter.breaker) is BreakerState.CLOSED
    assert limiter.breaker.opened == 0
    assert rate_between(account.accepted, 1.0, 20.0) >= 0.95 * 300 * 0.99


async def test_throttle_cuts_from_the_measured_rate_not_the_configured_one() -> None:
    """Sending 100/s under a 1000/s configuration, a 429 drops the rate to about 0.7 × 100/s."""
    clock = FakeClock()
    pacer = CubicLimiter(1000.0, clock=clock)
    for _ in range(200):
        clock.advance(0.01)
        pacer.on_success()
    pacer.on_throttle()
    assert pacer.found_limit_per_s == pytest.approx(100.0, rel=0.15)
    assert pacer.rate_per_s == pytest.approx(70.0, rel=0.15)
    # Then it grows back: near the refused rate after K seconds, never above the configured rate.
    clock.advance(30.0)
    pacer.on_success()
    assert 100.0 < pacer.rate_per_s <= 1000.0


def test_breaker_opens_half_opens_and_closes() -> None:
    """Ten failures in a row open the breaker; after its pause it is half-open; two successes close it;
    a failure while half-open opens it again for a longer pause."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, rng=random.Random(1))
    for _ in range(9):
        breaker.on_failure()
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.on_failure()
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(0.25)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    breaker.on_failure()
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(0.26)  # the second pause is between 0.25 and 0.5 s
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(0.25)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    breaker.on_success()
    assert state_of(breaker) is BreakerState.HALF_OPEN
    breaker.on_success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.opened == 2


def test_breaker_opens_on_a_bad_window_without_a_run_of_failures() -> None:
    """Failures interleaved with successes open the breaker once half of a window's answers failed."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, failures_to_open=100)
    for _ in range(9):
        breaker.on_success()
        clock.advance(0.1)
        breaker.on_failure()
        clock.advance(0.1)
    assert state_of(breaker) is BreakerState.CLOSED  # 18 answers: under min_answers
    breaker.on_success()
    breaker.on_failure()
    assert state_of(breaker) is BreakerState.OPEN


def test_breaker_pauses_grow_and_are_capped() -> None:
    """Each reopening doubles the pause (jittered within [0.5, 1] of it) up to max_pause_s."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, failures_to_open=1, pause_s=0.25, max_pause_s=2.0)
    pauses = []
    breaker.on_failure()
    for _ in range(7):
        opened_at = clock.monotonic()
        while state_of(breaker) is BreakerState.OPEN:
            clock.advance(0.01)
        pauses.append(clock.monotonic() - opened_at)
        breaker.on_failure()
    for n, pause in enumerate(pauses):
        bound = min(2.0, 0.25 * 2**n)
        assert 0.5 * bound - 0.011 <= pause <= bound + 0.011
    assert max(pauses) <= 2.011


async def test_open_breaker_holds_every_request_and_lets_one_probe_through() -> None:
    """While open nobody acquires; when half-open exactly one caller (the probe) gets through until
    it answers; its success and the next close the breaker and everybody goes."""
    clock = FakeClock()
    limiter = FlowLimiter(AimdLimiter(1000.0, burst=100, clock=clock), clock=clock)
    for _ in range(10):
        limiter.on_failure()
    assert state_of(limiter.breaker) is BreakerState.OPEN
    async with acquirers(limiter, clock, 5) as granted:
        await clock.wait_for_sleepers(5)
        assert granted == []
        clock.advance(0.25)
        await clock.wait_for_sleepers(4)
        assert len(granted) == 1  # the probe
        limiter.on_success()
        clock.advance(0.05)
        await clock.wait_for_sleepers(3)
        assert len(granted) == 2
        limiter.on_success()
        assert state_of(limiter.breaker) is BreakerState.CLOSED
        clock.advance(0.05)
    assert sorted(i for i, _ in granted) == [0, 1, 2, 3, 4]


async def test_breaker_closing_restarts_the_cubic_curve_below_the_old_rate() -> None:
    """After an outage the pacer starts again from 0.7 × its rate before it and grows back."""
    clock = FakeClock()
    pacer = CubicLimiter(300.0, clock=clock)
    limiter = FlowLimiter(pacer, clock=clock)
    for _ in range(10):
        limiter.on_failure()
    assert limiter.rate_per_s == 300.0  # failures never cut the rate
    clock.advance(0.25)
    limiter.on_success()
    limiter.on_success()
    assert state_of(limiter.breaker) is BreakerState.CLOSED
    assert pacer.rate_per_s == pytest.approx(210.0)
    clock.advance(1.0)
    pacer.on_success()
    assert pacer.rate_per_s >= 0.95 * 300


def test_retry_budget_is_a_share_of_requests() -> None:
    """Starting full, the budget lets max_tokens retries through, then one per 1/ratio requests
    (plus min_per_s per second)."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.25, min_per_s=1.0, max_tokens=10, clock=clock)
    assert all(budget.try_withdraw() for _ in range(10))
    assert not budget.try_withdraw()
    for _ in range(10):
        budget.deposit()  # 2.5 tokens
    assert budget.try_withdraw()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.advance(1.0)
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    assert budget.spent == 13


async def test_exhausted_budget_makes_retries_wait_not_fail() -> None:
    """A retry with no token left waits until one comes back, then goes."""
    clock = FakeClock()
    limiter = FlowLimiter(
        AimdLimiter(1000.0, clock=clock),
        budget=RetryBudget(min_per_s=2.0, max_tokens=1, clock=clock),
        clock=clock,
    )
    await spend_retry(limiter)
    done = anyio.Event()

    async def retry() -> None:
        await spend_retry(limiter)
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(retry)
        await clock.wait_for_sleepers(1)
        assert not done.is_set()
        assert limiter.budget.waited == 1
        clock.advance(0.5)
    assert done.is_set()
    assert limiter.budget.spent == 2


async def test_plain_limiters_ignore_the_new_signals() -> None:
    """A limiter without flow control takes report_failure and spend_retry as no-ops; through a
    campaign ceiling, the account's flow limiter gets them."""
    clock = FakeClock()
    plain = AimdLimiter(100.0, clock=clock)
    report_failure(plain)
    await spend_retry(plain)
    assert plain.stats.decreases == 0
    assert flow_stats(plain) is None
    flow = FlowLimiter(AimdLimiter(100.0, clock=clock), clock=clock)
    ceiling = CeilingLimiter(flow, 10.0, clock=clock)
    for _ in range(10):
        report_failure(ceiling)
    assert state_of(flow.breaker) is BreakerState.OPEN
    stats = flow_stats(ceiling)
    assert stats is not None
    assert stats.circuit is BreakerState.OPEN
    assert stats.failures == 10


@pytest.mark.parametrize(
    ("exc", "signal"),
    [
        (RateLimitedError(429, "slow down"), Signal.THROTTLE),
        (RateLimitedError(503, "rate limited", type="too_many_requests"), Signal.THROTTLE),
        (ServerError(500, "boom"), Signal.FAILURE),
        (TemConnectionError("reset"), Signal.FAILURE),
        (InvalidArgumentsError(400, "bad"), Signal.NONE),
        (ValueError("a bug"), Signal.NONE),
    ],
)
def test_signal_of_keeps_the_three_signals_apart(exc: BaseException, signal: Signal) -> None:
    """429s throttle, 5xx and transport errors are failures, other 4xx and foreign errors nothing."""
    assert signal_of(exc) is signal


def test_summary_says_which_limit_was_found_only_after_throttling() -> None:
    """`bulksend send` notes "found the account's limit at ~200/s" when TEM throttled, not otherwise."""
    from bulksend.cli.send import flow_notes
    from bulksend.pipeline.stats import RunStats

    clock = FakeClock()
    limiter = FlowLimiter(CubicLimiter(2000.0, clock=clock), clock=clock)
    stats = RunStats()
    for _ in range(300):
        clock.advance(0.005)
        limiter.on_success()
        stats.on_response("send", 200, 0.01)
    assert flow_notes(limiter, stats) == []
    limiter.on_throttle()
    stats.on_response("send", 429, 0.01)
    notes = flow_notes(limiter, stats)
    assert notes[0].startswith("found the account's limit at ~200/s")
    assert flow_notes(AimdLimiter(100.0), stats) == []


def test_progress_line_shows_the_flow_figures() -> None:
    """The progress line of `bulksend send` shows the measured rate, the ceiling, the retry budget
    and the breaker state of a flow limiter, and only the old figures for a plain limiter."""
    from bulksend.cli.progress import _line
    from bulksend.pipeline.stats import RunStats

    clock = FakeClock()
    limiter = FlowLimiter(CubicLimiter(300.0, clock=clock), clock=clock)
    for _ in range(10):
        limiter.on_failure()
    text = _line(RunStats(), limiter, 0.0).plain
    assert "ceiling 300/s" in text
    assert "retry budget 100" in text
    assert "circuit open" in text
    assert "circuit" not in _line(RunStats(), AimdLimiter(300.0), 0.0).plain
