"""Tests for the retry policy (bulksend.pipeline.retry): what is retried, how long it waits, when it stops.

Sleeps are injected and recorded, and elapsed time comes from a FakeClock, so nothing waits for real.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import pytest
from tenacity import RetryCallState

from bulksend import errors
from bulksend.clock import FakeClock
from bulksend.pipeline.retry import (
    RetryPolicy,
    is_safe_to_resend,
    is_transient,
    retry_after_of,
    retrying,
)


def with_sent(exc: errors.TemTransportError, sent: bool) -> errors.TemTransportError:
    """Mark a transport error with whether the request may have reached TEM."""
    exc.sent = sent
    return exc


class Recorder:
    """An injectable sleep that records durations and moves a FakeClock instead of waiting."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.sleeps: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)


def failing(
    failures: list[BaseException], result: str = "ok", *, clock: FakeClock | None = None, takes_s: float = 0.0
) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """An async callable that raises ``failures`` in turn, then returns ``result``; counts its calls."""
    calls = [0]

    async def call() -> str:
        calls[0] += 1
        if clock is not None and takes_s:
            clock.advance(takes_s)
        if calls[0] <= len(failures):
            raise failures[calls[0] - 1]
        return result

    return call, calls


def server_error() -> errors.ServerError:
    # TEM's own JSON error body: the API answered, so a send may have created the email.
    return errors.ServerError(502, "bad gateway", raw_body='{"message": "bad gateway"}')


# Never worth a retry: permanent 4xx, configuration and input mistakes, foreign exceptions.
NOT_TRANSIENT: list[BaseException] = [
    errors.InvalidArgumentsError(400, "bad"),
    errors.AuthenticationError(401, "denied"),
    errors.PermissionsDeniedError(403, "nope"),
    errors.QuotaExceededError(403, "quota"),
    errors.NotFoundError(404, "gone"),
    errors.TransientStateError(409, "changing"),
    errors.PreconditionFailedError(412, "too late"),
    errors.LockedError(423, "locked"),
    errors.TemPermanentError(418, "teapot"),
    errors.ConfigError("SCW_SECRET_KEY is not set"),
    errors.CampaignError("bad template"),
    errors.StoreError("disk full"),
    ValueError("a bug"),
]


# --------------------------------------------------------------------------------------------------
# classification


@pytest.mark.parametrize(
    "exc",
    [
        errors.RateLimitedError(429, "too many requests"),
        errors.RateLimitedError(429, "slow down", retry_after_s=2.0),
        errors.ServerError(500, "boom"),
        errors.OutOfStockError(503, "out of stock", type="out_of_stock"),
        errors.TemConnectionError("connection reset"),
        errors.TemTimeoutError("no answer in 30 s"),
    ],
)
def test_transient_errors_are_transient(exc: BaseException) -> None:
    """429, 5xx and transport errors may succeed on retry."""
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [*NOT_TRANSIENT, KeyboardInterrupt()])
def test_permanent_and_foreign_errors_are_not_transient(exc: BaseException) -> None:
    """4xx other than 429, configuration mistakes and foreign exceptions are never retried."""
    assert not is_transient(exc)


@pytest.mark.parametrize(
    ("exc", "safe"),
    [
        (errors.RateLimitedError(429, "too many requests"), True),
        (errors.RateLimitedError(429, "slow down", retry_after_s=1.0), True),
        (with_sent(errors.TemConnectionError("connection refused"), sent=False), True),
        (with_sent(errors.TemTimeoutError("connect timeout"), sent=False), True),
        (with_sent(errors.TemConnectionError("reset after write"), sent=True), False),
        (errors.TemConnectionError("dropped, unknown when"), False),  # default ``sent``: it may have gone
        (with_sent(errors.TemTimeoutError("read timeout"), sent=True), False),
        (errors.TemTimeoutError("read timeout"), False),
        (errors.ServerError(500, "boom"), False),
        (errors.ServerError(502, "bad gateway"), True),  # no body: the gateway answered by itself
        (errors.ServerError(502, "bad gateway", raw_body="<html><h1>502 Bad Gateway</h1></html>"), True),
        (errors.ServerError(503, "unavailable", raw_body="upstream connect error"), True),
        (errors.ServerError(503, "unavailable", raw_body='{"message": "service unavailable"}'), False),
        (errors.ServerError(502, "internal", type="internal_error", raw_body="{}"), False),
        (errors.ServerError(504, "gateway timeout", raw_body="upstream request timeout"), False),
        (errors.ServerError(500, "boom", raw_body="<html>500</html>"), False),
        (errors.OutOfStockError(503, "out of stock"), False),
        (errors.InvalidArgumentsError(400, "bad"), False),
        (errors.NotFoundError(404, "gone"), False),
        (ValueError("a bug"), False),
    ],
)
def test_is_safe_to_resend(exc: BaseException, safe: bool) -> None:
    """Only failures that surely created no email are safe to resend: 429, never-sent transport
    errors, and a 502/503 the gateway answered without TEM's JSON error body."""
    assert is_safe_to_resend(exc) is safe


def test_retry_after_of_reads_only_api_errors() -> None:
    """retry_after_of returns the server's Retry-After when an API error carries one."""
    assert retry_after_of(errors.RateLimitedError(429, "x", retry_after_s=4.5)) == 4.5
    assert retry_after_of(errors.RateLimitedError(429, "x")) is None
    assert retry_after_of(errors.RateLimitedError(429, "x", retry_after_s=math.nan)) is None
    assert retry_after_of(errors.TemConnectionError("reset")) is None
    assert retry_after_of(None) is None


def test_retry_after_of_follows_explicit_chaining() -> None:
    """A wrapper raised ``from`` a 429 still carries the 429's Retry-After; implicit context does not."""

    class Wrapper(Exception):
        pass

    chained = Wrapper("retry me")
    chained.__cause__ = errors.RateLimitedError(429, "x", retry_after_s=3.0)  # what ``raise … from`` sets
    assert retry_after_of(chained) == 3.0
    unrelated = Wrapper("unrelated")
    unrelated.__context__ = errors.RateLimitedError(429, "x", retry_after_s=3.0)  # raised while handling
    assert retry_after_of(unrelated) is None


# --------------------------------------------------------------------------------------------------
# policy


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_elapsed_s": 0}, "max_elapsed_s"),
        ({"max_elapsed_s": math.inf}, "max_elapsed_s"),
        ({"initial_backoff_s": -1}, "initial_backoff_s"),
        ({"max_backoff_s": math.nan}, "max_backoff_s"),
        ({"initial_backoff_s": 5, "max_backoff_s": 1}, "max_backoff_s"),
    ],
)
def test_nonsense_policy_is_refused(kwargs: dict[str, object], name: str) -> None:
    """RetryPolicy rejects values that cannot describe a retry budget, naming the field."""
    with pytest.raises(ValueError, match=name):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


async def test_transient_errors_are_retried_up_to_max_attempts() -> None:
    """A call failing transiently every time is attempted max_attempts times; the last error surfaces."""
    sleep = Recorder()
    failures: list[BaseException] = [server_error() for _ in range(10)]
    call, calls = failing(failures)
    with pytest.raises(errors.ServerError) as info:
        await retrying(RetryPolicy(max_attempts=4), sleep=sleep)(call)
    assert info.value is failures[3]  # the last error itself, not a tenacity.RetryError
    assert calls[0] == 4
    assert len(sleep.sleeps) == 3


async def test_success_after_transient_failures_returns_the_result() -> None:
    """A call that fails twice then succeeds returns its result after two waits."""
    sleep = Recorder()
    call, calls = failing([server_error(), errors.TemConnectionError("reset")], result="done")
    assert await retrying(RetryPolicy(), sleep=sleep)(call) == "done"
    assert calls[0] == 3
    assert len(sleep.sleeps) == 2


@pytest.mark.parametrize("exc", NOT_TRANSIENT)
async def test_permanent_errors_are_never_retried(exc: BaseException) -> None:
    """A permanent 4xx (or a foreign exception) propagates after a single attempt, without waiting."""
    sleep = Recorder()
    call, calls = failing([exc])
    with pytest.raises(type(exc)):
        await retrying(RetryPolicy(), sleep=sleep)(call)
    assert calls[0] == 1
    assert sleep.sleeps == []


async def test_waits_are_jittered_exponential_and_capped() -> None:
    """Each wait lies in [0, min(max_backoff, initial × 2^n)] and the waits are not all identical."""
    policy = RetryPolicy(max_attempts=8, initial_backoff_s=0.5, max_backoff_s=4.0, max_elapsed_s=1000)
    all_sleeps: list[list[float]] = []
    for _ in range(20):
        sleep = Recorder()
        call, _ = failing([server_error() for _ in range(7)])
        await retrying(policy, sleep=sleep)(call)
        assert len(sleep.sleeps) == 7
        for n, seconds in enumerate(sleep.sleeps):
            assert 0 <= seconds <= min(4.0, 0.5 * 2**n) + 1e-9
        all_sleeps.append(sleep.sleeps)
    assert len({tuple(s) for s in all_sleeps}) > 1  # jitter: runs do not wait in lockstep


async def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    """A 429 with Retry-After waits at least that long, even beyond max_backoff_s."""
    sleep = Recorder()
    call, calls = failing(
        [
            errors.RateLimitedError(429, "slow down", retry_after_s=7.0),
            errors.RateLimitedError(429, "bare body"),
        ],
        result="sent",
    )
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0)
    assert await retrying(policy, sleep=sleep)(call) == "sent"
    assert calls[0] == 3
    assert sleep.sleeps[0] == 7.0
    assert 0 <= sleep.sleeps[1] <= 0.2 + 1e-9  # no Retry-After: the plain jittered backoff


async def test_retry_after_shorter_than_backoff_does_not_shorten_it() -> None:
    """The wait is max(Retry-After, computed backoff), never less than either."""
    policy = RetryPolicy(initial_backoff_s=2.0, max_backoff_s=2.0)
    for _ in range(20):
        sleep = Recorder()
        call, _ = failing([errors.RateLimitedError(429, "x", retry_after_s=0.25)])
        await retrying(policy, sleep=sleep)(call)
        assert 0.25 <= sleep.sleeps[0] <= 2.0


async def test_stops_when_the_elapsed_budget_would_be_exceeded() -> None:
    """No retry starts whose wait would end past max_elapsed_s; attempt durations count too."""
    clock = FakeClock()
    sleep = Recorder(clock)
    failures: list[BaseException] = [errors.RateLimitedError(429, "x", retry_after_s=4.0) for _ in range(100)]
    call, calls = failing(failures, clock=clock, takes_s=2.0)
    policy = RetryPolicy(max_attempts=100, max_elapsed_s=10.0, initial_backoff_s=0.01, max_backoff_s=0.01)
    with pytest.raises(errors.RateLimitedError):
        await retrying(policy, sleep=sleep, clock=clock)(call)
    # attempt 1: 0→2, wait → 6; attempt 2: 6→8, and a wait to 12 would end past the 10 s budget.
    assert calls[0] == 2
    assert sleep.sleeps == [4.0]
    assert clock.now == 8.0


async def test_clock_sleep_is_the_default_when_a_clock_is_given() -> None:
    """Given only a clock, retrying sleeps on it (a FakeClock in autojump mode runs instantly)."""
    clock = FakeClock(autojump=True)
    call, calls = failing([errors.RateLimitedError(429, "x", retry_after_s=60.0)], result="ok")
    assert await retrying(RetryPolicy(), clock=clock)(call) == "ok"
    assert calls[0] == 2
    assert clock.now == 60.0


async def test_elapsed_budget_is_per_call_when_the_object_is_reused() -> None:
    """Reusing one retrying object for a second call starts a fresh elapsed budget."""
    clock = FakeClock()
    sleep = Recorder(clock)
    retry = retrying(
        RetryPolicy(max_attempts=5, max_elapsed_s=5.0, max_backoff_s=0.01, initial_backoff_s=0.01),
        sleep=sleep,
        clock=clock,
    )
    first, first_calls = failing(
        [errors.RateLimitedError(429, "x", retry_after_s=4.0)], clock=clock, takes_s=0.5
    )
    assert await retry(first) == "ok"
    clock.advance(100.0)
    second, second_calls = failing(
        [errors.RateLimitedError(429, "x", retry_after_s=4.0)], clock=clock, takes_s=0.5
    )
    assert await retry(second) == "ok"
    assert (first_calls[0], second_calls[0]) == (2, 2)


async def test_sends_retry_only_when_safe_to_resend() -> None:
    """With retry_on=is_safe_to_resend, a 429 or never-sent error is retried but a 5xx is not."""
    policy = RetryPolicy()
    sleep = Recorder()
    call, calls = failing(
        [errors.RateLimitedError(429, "x"), with_sent(errors.TemConnectionError("refused"), sent=False)],
        result="id-1",
    )
    assert await retrying(policy, retry_on=is_safe_to_resend, sleep=sleep)(call) == "id-1"
    assert calls[0] == 3

    ambiguous = server_error()
    call, calls = failing([ambiguous])
    with pytest.raises(errors.ServerError) as info:
        await retrying(policy, retry_on=is_safe_to_resend, sleep=sleep)(call)
    assert info.value is ambiguous
    assert calls[0] == 1

    call, calls = failing([with_sent(errors.TemTimeoutError("read timeout"), sent=True)])
    with pytest.raises(errors.TemTimeoutError):
        await retrying(policy, retry_on=is_safe_to_resend, sleep=sleep)(call)
    assert calls[0] == 1


async def test_before_sleep_sees_every_retry() -> None:
    """The before_sleep hook is called once per wait with the failed attempt's state."""
    seen: list[tuple[int, str]] = []

    def hook(state: RetryCallState) -> None:
        assert state.outcome is not None
        seen.append((state.attempt_number, type(state.outcome.exception()).__name__))

    call, _ = failing([server_error(), errors.RateLimitedError(429, "x")])
    await retrying(RetryPolicy(), sleep=Recorder(), before_sleep=hook)(call)
    assert seen == [(1, "ServerError"), (2, "RateLimitedError")]


async def test_attempt_iterator_form_works() -> None:
    """The ``async for attempt in retrying(...)`` form retries the block and stops on success."""
    call, calls = failing([server_error(), server_error()], result="listed")
    results = []
    async for attempt in retrying(RetryPolicy(), sleep=Recorder()):
        with attempt:
            results.append(await call())
    assert results == ["listed"]
    assert calls[0] == 3


async def test_failures_that_do_not_count_only_spend_time() -> None:
    """With counts_as_attempt, 429s are retried past max_attempts (bounded by max_elapsed_s),
    while counted failures still stop at max_attempts."""
    clock = FakeClock()
    sleep = Recorder(clock)
    failures: list[BaseException] = [errors.RateLimitedError(429, "slow down") for _ in range(7)]
    call, calls = failing(failures, result="sent")
    policy = RetryPolicy(max_attempts=2, max_elapsed_s=300)
    not_429 = lambda e: not isinstance(e, errors.RateLimitedError)  # noqa: E731
    assert await retrying(policy, sleep=sleep, clock=clock, counts_as_attempt=not_429)(call) == "sent"
    assert calls[0] == 8

    call, calls = failing([server_error(), server_error(), server_error()], result="sent")
    with pytest.raises(errors.ServerError):
        await retrying(policy, sleep=sleep, clock=clock, counts_as_attempt=not_429)(call)
    assert calls[0] == 2

    fresh = FakeClock()
    call, calls = failing([errors.RateLimitedError(429, "slow down") for _ in range(1000)], result="sent")
    with pytest.raises(errors.RateLimitedError):
        await retrying(policy, sleep=Recorder(fresh), clock=fresh, counts_as_attempt=not_429)(call)
    assert fresh.now <= 300  # the time budget still ends it
    assert calls[0] < 1000
