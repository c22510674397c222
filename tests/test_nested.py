"""Nested rates (bulksend.pipeline.nested): a lane's ceiling inside the account's limiter.

Every timing assertion reads a FakeClock (autojump): no wall-clock time is measured or waited for.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from bulksend.clock import FakeClock
from bulksend.pipeline.ceiling import CeilingLimiter
from bulksend.pipeline.limiter import AimdLimiter, RateLimiter
from bulksend.pipeline.nested import NestedLimiter, Pacer, nested
from tests.test_limiter import max_grants_in_window


async def run_lane(limiter: RateLimiter, clock: FakeClock, until: float, workers: int = 8) -> list[float]:
    """``workers`` tasks acquiring from ``limiter`` until fake time ``until``; the grant times."""
    times: list[float] = []

    async def worker() -> None:
        while True:
            await limiter.acquire()
            now = clock.monotonic()
            if now >= until:
                return
            times.append(now)

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
    return times


class RecordingOuter:
    """An outer limiter that records every call, with a hook the pipeline's limiter does not have."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.breaker_state = "closed"

    async def acquire(self, kind: str = "send", **kwargs: Any) -> None:
        self.calls.append(("acquire", (kind, kwargs)))

    def on_success(self, **kwargs: Any) -> None:
        self.calls.append(("success", kwargs))

    def on_throttle(self, retry_after_s: float | None = None, **kwargs: Any) -> None:
        self.calls.append(("throttle", (retry_after_s, kwargs)))

    def on_server_error(self) -> None:
        self.calls.append(("server_error", None))

    @property
    def rate_per_s(self) -> float:
        return 500.0

    @property
    def target_rate_per_s(self) -> float:
        return 1000.0


async def test_inner_ceiling_is_respected_inside_a_faster_account() -> None:
    """A lane of 10/s inside an account of 1,000/s is granted 10 slots per second (plus its burst
    of one), and every grant also spends a slot of the account."""
    clock = FakeClock(autojump=True)
    account = AimdLimiter(1000, clock=clock)
    lane = NestedLimiter(account, 10, clock=clock)
    times = await run_lane(lane, clock, until=5.0)
    assert 50 <= len(times) <= 51
    assert max_grants_in_window(times, 1.0) <= 10 + 1
    assert account.stats.acquired == lane.pacer.granted


async def test_two_lanes_share_the_outer_budget() -> None:
    """Two lanes of 80/s inside an account of 100/s: together they never exceed the account's
    100/s, each stays under its own 80/s, and both keep being served."""
    clock = FakeClock(autojump=True)
    account = AimdLimiter(100, clock=clock)
    a = NestedLimiter(account, 80, clock=clock)
    b = NestedLimiter(account, 80, clock=clock)
    grants: dict[str, list[float]] = {}

    async def lane(name: str, limiter: RateLimiter) -> None:
        grants[name] = await run_lane(limiter, clock, until=10.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lane, "a", a)
        tg.start_soon(lane, "b", b)
    both = grants["a"] + grants["b"]
    assert max_grants_in_window(both, 1.0) <= 100 + 1
    assert len(both) >= 100 * 10 - 2  # the account's budget is used, not wasted
    for name in ("a", "b"):
        assert max_grants_in_window(grants[name], 1.0) <= 80 + 2
        assert len(grants[name]) >= 300, name  # neither lane starves the other


async def test_a_lane_waiting_for_its_pace_leaves_the_account_to_others() -> None:
    """A slow lane (2/s) with many tasks waiting takes only its 2/s from an account of 50/s; an
    unlimited lane gets the rest. (The slow lane's grants trail its pace by the account's queue,
    but keep its pace.)"""
    clock = FakeClock(autojump=True)
    account = AimdLimiter(50, clock=clock)
    slow = NestedLimiter(account, 2, clock=clock)
    grants: dict[str, list[float]] = {}

    async def lane(name: str, limiter: RateLimiter) -> None:
        grants[name] = await run_lane(limiter, clock, until=10.0, workers=32)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lane, "slow", slow)
        tg.start_soon(lane, "free", account)
    assert 18 <= len(grants["slow"]) <= 21
    assert len(grants["free"]) >= 50 * 10 - 20 - 2


async def test_signals_and_unknown_hooks_reach_the_outer_limiter() -> None:
    """Successes, throttles (with Retry-After), keyword arguments of acquire and hooks the lane
    does not define all go to the account's limiter; the lane's rate is the lower of the two."""
    outer = RecordingOuter()
    lane = NestedLimiter(outer, 40)
    await lane.acquire("send", retry=True)
    lane.on_success()
    lane.on_throttle(2.5)
    lane.on_server_error()
    assert outer.calls == [
        ("acquire", ("send", {"retry": True})),
        ("success", {}),
        ("throttle", (2.5, {})),
        ("server_error", None),
    ]
    assert lane.breaker_state == "closed"
    assert lane.rate_per_s == 40
    assert lane.target_rate_per_s == 40
    assert NestedLimiter(outer, 2000).rate_per_s == 500
    with pytest.raises(AttributeError):
        _ = lane.no_such_hook
    assert isinstance(lane, RateLimiter)


async def test_a_throttle_through_a_lane_slows_the_account() -> None:
    """A 429 seen by one lane lowers and pauses the account's limiter, which every lane shares."""
    clock = FakeClock(autojump=True)
    account = AimdLimiter(100, clock=clock)
    lane = NestedLimiter(account, 1000, clock=clock)
    lane.on_throttle(3.0)
    assert account.stats.throttles == 1
    assert account.rate_per_s < 100
    start = clock.monotonic()
    await account.acquire()
    assert clock.monotonic() - start == pytest.approx(3.0)


async def test_no_rate_means_no_inner_ceiling() -> None:
    """``nested(outer, None)`` is the outer limiter itself; with a rate it is a lane around it."""
    account = AimdLimiter(100)
    assert nested(account, None) is account
    lane = nested(account, 5)
    assert isinstance(lane, NestedLimiter)
    assert lane.outer is account


async def test_pacer_gives_back_the_slot_of_a_cancelled_waiter() -> None:
    """A waiter cancelled while it waits for the latest slot hands it back: the next caller gets
    that slot instead of one interval later."""
    clock = FakeClock()
    pacer = Pacer(1.0, clock=clock)
    await pacer.wait()  # t=0, free
    async with anyio.create_task_group() as tg:
        tg.start_soon(pacer.wait)  # reserves t=1
        await clock.wait_for_sleepers(1)
        tg.cancel_scope.cancel()
    done = anyio.Event()

    async def wait() -> None:
        await pacer.wait()
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await clock.wait_for_sleepers(1)
        assert clock.next_deadline() == pytest.approx(1.0)
        clock.advance(1.0)
        await done.wait()
    assert pacer.granted == 2


def test_pacer_refuses_a_rate_that_is_not_a_positive_number() -> None:
    """Zero, negative, infinite or non-numeric rates are refused with the value named."""
    for bad in (0, -1, float("inf"), float("nan"), True, "10"):
        with pytest.raises(ValueError, match="rate_per_s"):
            Pacer(bad)  # type: ignore[arg-type]


async def test_ceiling_limiter_is_a_nested_limiter() -> None:
    """The earlier CeilingLimiter keeps its signature and its ``account`` and is a NestedLimiter."""
    account = AimdLimiter(1000)
    limiter = CeilingLimiter(account, 10, burst=2)
    assert isinstance(limiter, NestedLimiter)
    assert limiter.account is account
    assert limiter.ceiling_per_s == 10
