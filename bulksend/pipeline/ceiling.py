"""The earlier name of a campaign's ceiling inside the account's limiter: see
:mod:`bulksend.pipeline.nested`."""

from __future__ import annotations

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

    @property
    def account(self) -> RateLimiter:
        return self.outer
