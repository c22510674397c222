"""The account's rate limiter: one for every API call a process makes for a TEM account.

Used by ``bulksend send`` (with the campaign's rate as a ceiling inside it) and by the daemon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bulksend.pipeline.flow import CubicLimiter, FlowLimiter
from bulksend.pipeline.limiter import RateLimiter
from bulksend.settings import DEFAULT_LIMITER_PREFIX, limiter_key

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["account_limiter", "shared_limiter_client"]


def shared_limiter_client(url: str) -> redis.asyncio.Redis:
    """A Redis client for :func:`account_limiter`'s shared limiter; the caller closes it
    (``await client.aclose()``) when the run is over, or its connections outlive the run."""
    # Imported here: Redis is only needed by runs that share a limiter.
    import redis.asyncio

    return redis.asyncio.from_url(url, socket_timeout=5)


def account_limiter(
    rate_per_s: float,
    *,
    shared: redis.asyncio.Redis | None = None,
    project_id: str = "",
    region: str = "",
    prefix: str = DEFAULT_LIMITER_PREFIX,
) -> RateLimiter:
    """The one limiter for every API call of the account: in-process, or shared through Redis.

    Either way it is a :class:`~bulksend.pipeline.flow.FlowLimiter`: a retry budget and a circuit
    breaker (per process) in front of the pacer. In one process the pacer finds the account's
    limit by CUBIC from the measured rate (docs/flow-control.md); through Redis (``shared``, from
    :func:`shared_limiter_client`; the caller closes it) the shared rate lives in Redis and adapts
    by AIMD there.
    """
    burst = max(1.0, min(10.0, rate_per_s / 50))
    if shared is None:
        return FlowLimiter(CubicLimiter(rate_per_s, burst=burst))
    from bulksend.pipeline.shared_limiter import RedisRateLimiter

    tuning: dict[str, Any] = {"burst": burst, "decrease_factor": 0.85, "increase_per_s": rate_per_s / 3}
    # One key per TEM account and region: every process sending for this project shares one budget.
    key = limiter_key(prefix, project_id, region)
    return FlowLimiter(RedisRateLimiter(shared, key=key, rate_per_s=rate_per_s, **tuning))
