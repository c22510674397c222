"""One paced API call: a limiter slot, the call, feedback to the limiter, retries on transient errors.

Every quota-costing read (tracking lists and gets, reconciliation lookups, cancels) goes through
:func:`paced_call`, so they all share the limiter's budget and its reaction to 429/5xx the same
way: throttling slows the rate, failures feed the circuit breaker, retries spend the retry budget.
Sends have their own path (:mod:`bulksend.pipeline.dispatch`): whether a failed send may be
repeated depends on whether TEM may have created the email.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from bulksend.errors import TemError
from bulksend.pipeline.flow import report_failure, spend_retry
from bulksend.pipeline.limiter import RateLimiter
from bulksend.pipeline.retry import RetryPolicy, Signal, is_transient, retrying, signal_of

__all__ = ["paced_call"]

_T = TypeVar("_T")


async def paced_call(
    limiter: RateLimiter,
    retry: RetryPolicy,
    kind: str,
    fn: Callable[[], Awaitable[_T]],
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> _T:
    """Call ``fn`` (an API call of ``kind``) through ``limiter``, retrying transient errors."""
    first = True
    async for attempt in retrying(retry, retry_on=is_transient, sleep=sleep):
        with attempt:
            if not first:
                await spend_retry(limiter)
            first = False
            await limiter.acquire(kind)
            try:
                result = await fn()
            except TemError as exc:
                signal = signal_of(exc)
                if signal is Signal.THROTTLE:
                    limiter.on_throttle(getattr(exc, "retry_after_s", None))
                elif signal is Signal.FAILURE:
                    report_failure(limiter)
                else:
                    limiter.on_success()
                raise
            limiter.on_success()
            return result
    raise AssertionError("unreachable")  # pragma: no cover - retrying re-raises the last error
