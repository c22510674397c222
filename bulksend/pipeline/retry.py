"""Retry policy for TEM calls, declared once and composed with tenacity.

Two questions decide whether a failed call is tried again:

* :func:`is_transient` — may retrying help at all? (429, 5xx, transport errors; never a 4xx.)
  This is the right predicate for reads (get, list, statistics), which are harmless to repeat.
* :func:`is_safe_to_resend` — is it certain that the failed *send* did not create an email? TEM has
  no idempotency key, so a send may only be repeated blindly when the request surely never took
  effect (a 429 refused at the gateway, a connection that was never made, a gateway 502/503 that
  carries no API error body). Every other transient send failure is ambiguous and must go through
  reconciliation instead. docs/flow-control.md has the table.
* :func:`signal_of` — which flow-control signal an answer is: throttling, a failure (5xx or
  transport) or neither.

Use ``retrying(policy, retry_on=is_safe_to_resend)`` around a send and
``retrying(policy)`` around reads::

    async for attempt in retrying(policy):
        with attempt:
            email = await client.get_email(email_id)

Waits are jittered exponential (full jitter), never shorter than a server's ``Retry-After``; the
budget is ``max_attempts`` attempts and ``max_elapsed_s`` seconds, whichever ends first; the last
error is re-raised as itself (never :class:`tenacity.RetryError`).
"""

from __future__ import annotations

import enum
import math
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import orjson
import tenacity
from tenacity import RetryCallState
from tenacity.retry import retry_if_exception
from tenacity.stop import stop_after_attempt, stop_base
from tenacity.wait import wait_base, wait_random_exponential

from bulksend.clock import Clock
from bulksend.errors import (
    BulksendError,
    OutOfStockError,
    RateLimitedError,
    ServerError,
    TemApiError,
    TemPermanentError,
    TemTransportError,
)

__all__ = [
    "RetryPolicy",
    "Signal",
    "backoff_wait",
    "is_gateway_refusal",
    "is_safe_to_resend",
    "is_transient",
    "retry_after_of",
    "retrying",
    "signal_of",
]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry: attempt and time budgets and the backoff envelope (seconds)."""

    max_attempts: int = 6
    """Attempts in total, the first one included (1 = never retry)."""
    max_elapsed_s: float = 300.0
    """No retry is started if its wait would end more than this long after the first attempt."""
    initial_backoff_s: float = 0.5
    """Upper bound of the first jittered wait; it doubles per retry."""
    max_backoff_s: float = 30.0
    """Cap of the computed wait (a server's Retry-After may still be longer)."""

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("max_elapsed_s", "initial_backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError(
                f"max_backoff_s ({self.max_backoff_s}) must be >= "
                f"initial_backoff_s ({self.initial_backoff_s})"
            )


def is_transient(exc: BaseException) -> bool:
    """True when retrying may help: a bulksend error marked transient, never a permanent 4xx.

    Errors from outside bulksend (bugs, cancellation) are not retried.
    """
    if isinstance(exc, TemPermanentError):
        return False
    return isinstance(exc, BulksendError) and exc.transient


def is_safe_to_resend(exc: BaseException) -> bool:
    """True only when the failed request surely did NOT create an email, so resending cannot duplicate.

    * 429 (:class:`RateLimitedError`): refused at the gateway before reaching TEM.
    * A transport error whose ``sent`` attribute is exactly ``False``: the request was never
      written (connection refused, DNS failure, connect timeout).
    * A 502 or 503 whose body is not the API's JSON error: the gateway could not reach TEM and
      answered by itself (:func:`is_gateway_refusal`).

    False for other 5xx, read timeouts, connections dropped after the request was written,
    transport errors that do not say (``sent`` missing counts as "may have been sent"), permanent
    4xx and anything else: those sends are ambiguous or must not be repeated.
    """
    if isinstance(exc, RateLimitedError):
        return True
    if isinstance(exc, TemTransportError):
        return getattr(exc, "sent", True) is False
    return is_gateway_refusal(exc)


_GATEWAY_REFUSALS = frozenset({502, 503})


def is_gateway_refusal(exc: BaseException) -> bool:
    """A 502/503 answered by the gateway itself: no JSON object with ``message`` or ``type``.

    TEM's API answers its errors in JSON; a bare or HTML 502/503 comes from the gateway in front
    of it, which could not hand the request over. A 500 or a 504 (the gateway gave up waiting for
    an answer to a request it had passed on) stays ambiguous, whatever its body.
    """
    if not isinstance(exc, ServerError) or exc.status not in _GATEWAY_REFUSALS:
        return False
    if exc.type or isinstance(exc, OutOfStockError):
        return False  # a typed error: the API itself answered
    raw = exc.raw_body.strip()
    if not raw:
        return True
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return True
    return not (isinstance(data, dict) and ("message" in data or "type" in data))


class Signal(enum.Enum):
    """What a failed call tells flow control (docs/flow-control.md)."""

    THROTTLE = "throttle"
    """Slow down: the rate moves."""
    FAILURE = "failure"
    """A 5xx or a transport failure: the circuit breaker counts it; the rate does not move."""
    NONE = "none"
    """A client error (4xx other than 429) or not a TEM error: moves nothing."""


def signal_of(exc: BaseException) -> Signal:
    """The flow-control signal of a failed TEM call."""
    if isinstance(exc, RateLimitedError):
        return Signal.THROTTLE
    if isinstance(exc, TemPermanentError):
        return Signal.NONE
    if isinstance(exc, TemApiError | TemTransportError) and exc.transient:
        return Signal.FAILURE
    return Signal.NONE


def retry_after_of(exc: BaseException | None) -> float | None:
    """The server's ``Retry-After`` in seconds carried by ``exc``, if any.

    Follows explicit chaining (``raise Wrapper(...) from api_error``), so a caller that wraps TEM
    errors in its own retry signal still has the server's wish honoured.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TemApiError):
            value = exc.retry_after_s
            if value is not None and math.isfinite(value) and value >= 0:
                return float(value)
            return None
        exc = exc.__cause__
    return None


class _WaitHonouringRetryAfter(wait_base):
    """Jittered exponential wait, but never shorter than the failed attempt's ``Retry-After``."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._backoff = wait_random_exponential(multiplier=policy.initial_backoff_s, max=policy.max_backoff_s)

    def __call__(self, retry_state: RetryCallState) -> float:
        computed = self._backoff(retry_state)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        retry_after = retry_after_of(exc)
        return computed if retry_after is None else max(retry_after, computed)


def backoff_wait(policy: RetryPolicy) -> wait_base:
    """The wait strategy of ``policy`` (full-jitter exponential, floored by ``Retry-After``)."""
    return _WaitHonouringRetryAfter(policy)


class _StopAfterElapsed(stop_base):
    """Stop when the next attempt would start more than ``max_elapsed_s`` after the first one.

    Measured with an injectable monotonic function (tenacity's own timing always reads the wall
    clock). The start is recorded by :meth:`before` at attempt 1 and kept per retry state, so one
    retrying object may be reused for successive calls.
    """

    def __init__(self, max_elapsed_s: float, monotonic: Callable[[], float]) -> None:
        self._max_elapsed_s = max_elapsed_s
        self._monotonic = monotonic
        self._started: weakref.WeakKeyDictionary[RetryCallState, float] = weakref.WeakKeyDictionary()

    def before(self, retry_state: RetryCallState) -> None:
        if retry_state.attempt_number == 1 or retry_state not in self._started:
            self._started[retry_state] = self._monotonic()

    def __call__(self, retry_state: RetryCallState) -> bool:
        started = self._started.get(retry_state)
        if started is None:
            return False
        elapsed = self._monotonic() - started
        # Do not start a wait that would end past the budget: stop now and surface the error.
        return elapsed + retry_state.upcoming_sleep > self._max_elapsed_s


class _StopAfterCountedAttempts(stop_base):
    """Stop after ``max_attempts`` failures that ``counts`` says count (others only cost time)."""

    def __init__(self, max_attempts: int, counts: Callable[[BaseException], bool]) -> None:
        self._max_attempts = max_attempts
        self._counts = counts
        self._counted: weakref.WeakKeyDictionary[RetryCallState, int] = weakref.WeakKeyDictionary()

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        counted = self._counted.get(retry_state, 0)
        if exc is None or self._counts(exc):
            counted += 1
        self._counted[retry_state] = counted
        return counted >= self._max_attempts


def retrying(
    policy: RetryPolicy,
    *,
    retry_on: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
    clock: Clock | None = None,
    counts_as_attempt: Callable[[BaseException], bool] | None = None,
) -> tenacity.AsyncRetrying:
    """A tenacity ``AsyncRetrying`` for ``policy``; build a fresh one per call site invocation.

    :param retry_on: which exceptions are retried (:func:`is_transient` for reads,
        :func:`is_safe_to_resend` for sends). Anything else propagates immediately.
    :param sleep: how to wait between attempts (default: ``clock.sleep`` or :func:`anyio.sleep`);
        tests inject a recorder so they never wait.
    :param before_sleep: tenacity hook called before each wait (logging, metrics).
    :param clock: time source for the ``max_elapsed_s`` budget (and the default sleep).
    :param counts_as_attempt: which failures use up ``max_attempts`` (default: all). Failures it
        rejects are retried until ``max_elapsed_s`` alone runs out — for a 429, say, which only
        means "later" and which the shared limiter already answers by slowing down.

    Exhausting the budget re-raises the last error itself. The returned object keeps per-iteration
    state, so do not share one instance between concurrent tasks.
    """
    if sleep is None:
        sleep = clock.sleep if clock is not None else anyio.sleep
    monotonic = clock.monotonic if clock is not None else time.monotonic
    elapsed_stop = _StopAfterElapsed(policy.max_elapsed_s, monotonic)
    attempts_stop: stop_base = (
        stop_after_attempt(policy.max_attempts)
        if counts_as_attempt is None
        else _StopAfterCountedAttempts(policy.max_attempts, counts_as_attempt)
    )
    return tenacity.AsyncRetrying(
        sleep=sleep,
        stop=attempts_stop | elapsed_stop,
        wait=backoff_wait(policy),
        retry=retry_if_exception(retry_on),
        before=elapsed_stop.before,
        before_sleep=before_sleep,
        reraise=True,
    )
