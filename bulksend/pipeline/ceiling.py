"""The earlier name of a campaign's ceiling inside the account's limiter: see
:mod:`bulksend.pipeline.nested`."""

from __future__ import annotations

from typing import Any

from bulksend.clock import Clock
from bulksend.pipeline.limiter import RateLimiter
from bulksend.pipeline.nested import NestedLimiter

__all__ = ["CeilingLimiter"]


class CeilingLimiter(NestedLimiter):
    """:class:`NestedLimiter` under its earlier name and signature (``account``, ``ceiling_per_s``)."""

    def __init__(
        self, account: RateLimiter, ceiling_per_s: float, *, burst: float = 1.0, clock: Clock | None = None
    ) -> None:
        super().__init__(account, ceiling_per_s, burst=burst, clock=clock)

    def __getattr__(self, name: str) -> Any:
        # The account's other signals and figures (on_failure, spend_retry, flow…) are its own.
        if name == "account":
            raise AttributeError(name)
        return getattr(self.account, name)

    @property
    def account(self) -> RateLimiter:
        return self.outer
