"""A campaign's own rate as a ceiling inside the account's limiter.

The account's limiter (in-process or shared through Redis) is the budget of every API call of the
account; a campaign's ``[sending] rate_per_s`` only caps that campaign. :class:`CeilingLimiter`
takes a slot from the campaign's pacer first, then from the account's limiter; throttling
feedback goes to the account's limiter only (a 429 is the account's, not the campaign's).
"""

from __future__ import annotations

from typing import Any

from bulksend.clock import Clock
from bulksend.pipeline.limiter import AimdLimiter, RateLimiter

__all__ = ["CeilingLimiter"]


class CeilingLimiter:
    """``account`` with a local pacer of ``ceiling_per_s`` in front (see the module docstring)."""

    def __init__(
        self, account: RateLimiter, ceiling_per_s: float, *, burst: float = 1.0, clock: Clock | None = None
    ) -> None:
        self.account = account
        self._ceiling = AimdLimiter(ceiling_per_s, burst=burst, clock=clock)

    async def acquire(self, kind: str = "send") -> None:
        # The local ceiling first: a campaign held back by its own rate takes no slot of the account.
        await self._ceiling.acquire(kind)
        await self.account.acquire(kind)

    def on_success(self) -> None:
        self.account.on_success()

    def on_throttle(self, retry_after_s: float | None = None) -> None:
        self.account.on_throttle(retry_after_s)

    def __getattr__(self, name: str) -> Any:
        # The account's other signals and figures (on_failure, spend_retry, flow…) are its own.
        if name == "account":
            raise AttributeError(name)
        return getattr(self.account, name)

    @property
    def ceiling_per_s(self) -> float:
        return self._ceiling.target_rate_per_s

    @property
    def rate_per_s(self) -> float:
        return min(self._ceiling.target_rate_per_s, self.account.rate_per_s)

    @property
    def target_rate_per_s(self) -> float:
        return min(self._ceiling.target_rate_per_s, self.account.target_rate_per_s)

    def __repr__(self) -> str:
        return f"CeilingLimiter({self.account!r}, ceiling_per_s={self.ceiling_per_s:.3f})"
