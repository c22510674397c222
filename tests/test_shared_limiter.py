"""The Redis-shared rate limiter against a real Redis, on a fake clock (no sleeps, exact times).

Needs Redis: ``BULKSEND_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Every test uses
its own key, deleted afterwards. Time is a manual :class:`FakeClock` shared by all limiter
instances (as ``now`` for the script and for sleeping); :func:`run_until` moves it from one
sleeper's deadline to the next only once every task is asleep, so Redis round trips never race
the clock.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bulksend.clock import FakeClock
from bulksend.pipeline.limiter import RateLimiter
from bulksend.pipeline.shared_limiter import RedisRateLimiter

pytestmark = pytest.mark.services  # the limiter's state lives in Redis

REDIS_URL = os.environ.get("BULKSEND_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def client() -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(REDIS_URL, socket_timeout=10)
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
async def key(client: redis.asyncio.Redis) -> AsyncIterator[str]:
    name = f"bulksend-test:limiter:{uuid.uuid4().hex}"
    yield name
    await client.delete(name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limiters(
    client: redis.asyncio.Redis, key: str, clock: FakeClock, n: int, **settings: Any
) -> list[RedisRateLimiter]:
    """``n`` instances on one key: as many processes sharing one account."""
    return [RedisRateLimiter(client, key=key, clock=clock, **settings) for _ in range(n)]


async def drive(clock: FakeClock, tasks: int, until: float) -> None:
    """Move fake time deadline by deadline up to ``until``, each time once all ``tasks`` sleep."""
    while True:
        await clock.wait_for_sleepers(tasks)
        deadline = clock.next_deadline()
        if deadline is None or deadline > until:
            return
        clock.advance_to(deadline)


async def run_until(
    clock: FakeClock, tasks: list[Callable[[], Coroutine[Any, Any, None]]], until: float
) -> None:
    """Run ``tasks`` (each loops forever) while moving fake time up to ``until``, then stop them."""
    async with anyio.create_task_group() as tg:
        for task in tasks:
            tg.start_soon(task)
        await drive(clock, len(tasks), until)
        tg.cancel_scope.cancel()


def acquirer(
    limiter: RedisRateLimiter, clock: FakeClock, grants: list[float]
) -> Callable[[], Coroutine[Any, Any, None]]:
    async def loop() -> None:
        while True:
            await limiter.acquire()
            grants.append(clock.now)

    return loop


async def test_is_a_rate_limiter(client: redis.asyncio.Redis, key: str) -> None:
    """RedisRateLimiter satisfies the pipeline's RateLimiter protocol."""
    assert isinstance(RedisRateLimiter(client, key=key, rate_per_s=10), RateLimiter)


async def test_three_processes_share_one_rate(
    client: redis.asyncio.Redis, key: str, clock: FakeClock
) -> None:
    """Three instances at 300/s on one key grant at most 300 × 30 + burst in 30 s, and at least 97 % of it."""
    group = limiters(client, key, clock, 3, rate_per_s=300, burst=1)
    grants: list[float] = []
    tasks = [acquirer(lim, clock, grants) for lim in group for _ in range(4)]
    await run_until(clock, tasks, until=30.0)
    assert len(grants) <= 300 * 30 + 1
    assert len(grants) >= 0.97 * 300 * 30
    # No window of one second holds more than the rate (+ burst): the budget is shared, not tripled.
    grants.sort()
    start = 0
    for end, t in enumerate(grants):
        while grants[start] <= t - 1.0:
            start += 1
        assert end - start + 1 <= 300 + 1
    assert all(lim.stats.acquired > 0.25 * len(grants) for lim in group)
    # One round trip per immediate grant, two per waited one; plus each task's last reservation
    # and the slot it hands back when the run stops.
    assert sum(lim.round_trips for lim in group) <= 2 * len(grants) + 2 * len(tasks)


async def test_throttle_in_one_process_slows_all(
    client: redis.asyncio.Redis, key: str, clock: FakeClock
) -> None:
    """A 429 reported by one instance halves the rate the other instances are held to."""
    a, b, c = limiters(client, key, clock, 3, rate_per_s=100, increase_per_s=0)
    a.on_throttle()
    state = await a.sync()
    assert (state.rate_per_s, state.decreases) == (50.0, 1)
    grants: list[float] = []
    await run_until(clock, [acquirer(b, clock, grants), acquirer(c, clock, grants)], until=10.0)
    assert 0.97 * 50 * 10 <= len(grants) <= 50 * 10 + 1
    assert b.rate_per_s == c.rate_per_s == 50.0


async def test_one_decrease_per_cooldown_across_processes(
    client: redis.asyncio.Redis, key: str, clock: FakeClock
) -> None:
    """429s reported by all three instances within one cooldown cut the shared rate once."""
    group = limiters(client, key, clock, 3, rate_per_s=100, cooldown_s=1.0)
    for lim in group:
        lim.on_throttle()
        lim.on_throttle()
        await lim.sync()
    assert (group[2].shared.rate_per_s, group[2].shared.decreases, group[2].shared.throttles) == (50.0, 1, 6)
    clock.advance(0.5)
    group[1].on_throttle()
    assert (await group[1].sync()).decreases == 1
    clock.advance(0.5)  # one cooldown after the first decrease
    group[0].on_throttle()
    state = await group[0].sync()
    assert (state.rate_per_s, state.decreases) == (25.0, 2)


async def test_recovery_is_shared_and_capped(client: redis.asyncio.Redis, key: str, clock: FakeClock) -> None:
    """Successes from any instance add increase_per_s per second to everyone's rate, up to the target."""
    a, b, c = limiters(client, key, clock, 3, rate_per_s=300, increase_per_s=30)
    a.on_throttle()
    assert (await a.sync()).rate_per_s == 150.0
    clock.advance(2.0)
    b.on_success()
    assert (await b.sync()).rate_per_s == pytest.approx(210.0)
    assert (await c.sync()).rate_per_s == pytest.approx(210.0)
    clock.advance(10.0)
    c.on_success()
    assert (await c.sync()).rate_per_s == 300.0
    assert (await a.sync()).rate_per_s == 300.0


async def test_retry_after_pause_is_shared(client: redis.asyncio.Redis, key: str, clock: FakeClock) -> None:
    """A Retry-After reported by one instance holds every instance's grants until the pause ends."""
    a, b = limiters(client, key, clock, 2, rate_per_s=10, increase_per_s=0)
    a.on_throttle(retry_after_s=5.0)
    assert (await a.sync()).paused_for_s == pytest.approx(5.0)
    grants: list[float] = []
    await run_until(clock, [acquirer(b, clock, grants)], until=5.5)
    assert grants[0] == pytest.approx(5.0)
    assert grants == pytest.approx([5.0, 5.2, 5.4])  # the halved rate after the pause


async def test_waiters_already_queued_follow_a_throttle_elsewhere(
    client: redis.asyncio.Redis, key: str, clock: FakeClock
) -> None:
    """Requests already waiting in one process re-plan when another process reports a pause."""
    a, b = limiters(client, key, clock, 2, rate_per_s=10, increase_per_s=0)
    grants: list[float] = []
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(acquirer(b, clock, grants))
        await clock.wait_for_sleepers(4)  # slots at 0 (granted), 0.1, 0.2, 0.3, 0.4 reserved
        assert grants == [0.0]
        a.on_throttle(retry_after_s=2.0)
        await a.sync()
        await drive(clock, 4, until=2.5)
        tg.cancel_scope.cancel()
    # Nobody used the slots reserved before the pause; after it, the halved rate.
    assert grants == pytest.approx([0.0, 2.0, 2.2, 2.4])


async def test_cancelled_waiter_gives_its_slot_back(
    client: redis.asyncio.Redis, key: str, clock: FakeClock
) -> None:
    """A waiter cancelled while asleep returns its slot, so the next caller does not wait behind it."""
    (lim,) = limiters(client, key, clock, 1, rate_per_s=1, min_rate_per_s=1)
    await lim.acquire()  # granted at 0; the next slot is at 1
    async with anyio.create_task_group() as tg:
        tg.start_soon(lim.acquire)
        await clock.wait_for_sleepers(1)
        assert clock.next_deadline() == 1.0
        tg.cancel_scope.cancel()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lim.acquire)
        await clock.wait_for_sleepers(1)
        assert clock.next_deadline() == 1.0  # not 2.0: the abandoned slot was handed back
        clock.advance_to(1.0)
    assert lim.stats.acquired == 2


async def test_many_waiters_share_few_connections(key: str, clock: FakeClock) -> None:
    """Two hundred tasks waiting on one instance never exhaust a 10-connection pool."""
    small = redis.asyncio.Redis.from_url(REDIS_URL, max_connections=10, socket_timeout=10)
    try:
        lim = RedisRateLimiter(small, key=key, rate_per_s=1000, clock=clock, max_inflight=4)
        grants: list[float] = []
        await run_until(clock, [acquirer(lim, clock, grants) for _ in range(200)], until=0.5)
        assert 0.97 * 500 <= len(grants) <= 501
        assert lim.redis_errors == 0
    finally:
        await small.aclose()


async def test_server_time_by_default(client: redis.asyncio.Redis, key: str) -> None:
    """Without an injected clock the script uses Redis time; a burst is granted in one round trip each."""
    lim = RedisRateLimiter(client, key=key, rate_per_s=100, burst=5)
    for _ in range(5):
        await lim.acquire("poll")
    assert lim.stats.acquired_by_kind == {"poll": 5}
    assert lim.shared.grants == 5
    assert lim.round_trips == 5


async def test_unreachable_redis_grants_nothing(clock: FakeClock) -> None:
    """While Redis cannot be reached, acquire keeps retrying with backoff and grants nothing."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nobody listens there: connection refused
    dead = redis.asyncio.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    lim = RedisRateLimiter(
        dead, key="bulksend-test:unreachable", rate_per_s=10, clock=clock, max_backoff_s=0.2
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lim.acquire)
            for _ in range(5):
                await clock.wait_for_sleepers(1)
                clock.advance(0.2)
            await clock.wait_for_sleepers(1)
            tg.cancel_scope.cancel()
        assert lim.redis_errors >= 5
        assert lim.stats.acquired == 0
    finally:
        await dead.aclose()


@pytest.mark.parametrize(
    "bad",
    [
        {"rate_per_s": 0},
        {"rate_per_s": float("nan")},
        {"rate_per_s": 10, "burst": 0.5},
        {"rate_per_s": 10, "decrease_factor": 1.0},
        {"rate_per_s": 10, "min_rate_per_s": -1},
        {"rate_per_s": 10, "increase_per_s": -1},
        {"rate_per_s": 10, "cooldown_s": -1},
        {"rate_per_s": True},
    ],
)
async def test_refuses_bad_settings(client: redis.asyncio.Redis, bad: dict[str, Any]) -> None:
    """Settings that make no sense are refused with ValueError."""
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the setting; any is fine
        RedisRateLimiter(client, key="k", **bad)
