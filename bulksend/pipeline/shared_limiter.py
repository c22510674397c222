"""One request-rate limit for many processes: the AIMD/GCRA limiter with its state in Redis.

:class:`RedisRateLimiter` implements :class:`~bulksend.pipeline.limiter.RateLimiter` with the same
semantics as :class:`~bulksend.pipeline.limiter.AimdLimiter` (read that module first), but the
schedule and the rate live in one Redis hash shared by every process using the same ``key``, so N
bulksend workers on N machines together stay within ``rate_per_s``: one budget per TEM account.
How it is deployed and what fails how: docs/scaling.md, "The shared rate limiter".

One Lua script (``EVALSHA``) does everything atomically, in one round trip: it applies the
feedback this process gathered since its last call (additive increase; a multiplicative decrease
at most once per ``cooldown_s`` *across all processes*; a ``Retry-After`` pause every process
honours), then reserves the caller's GCRA slot and returns how long to wait. Feedback is folded
into the next call because ``on_success``/``on_throttle`` are not async. After sleeping, the caller
*confirms* its slot with a second call: if a throttle re-planned the schedule meanwhile, it gets a
new slot. That shared form of AimdLimiter's epoch check lets a decrease reach requests already
waiting in every process. A waiter cancelled while asleep hands its slot back when nobody
reserved after it (one more, shielded, round trip).

The script reads the Redis server's clock (``TIME``), so skewed machines share one schedule; an
injected ``clock`` (tests) is sent as ``now`` instead, and then every process sharing a key must
use it. The script returns *durations*, never absolute times, so local sleeping needs no shared
clock. If Redis cannot be reached, ``acquire`` grants nothing and retries with a capped backoff:
pausing every sender is the only safe choice, since nobody could tell how much of the account's
budget the others use. The state expires after ``state_ttl_s`` idle and then starts afresh at
``rate_per_s``. Every process sharing a key must use the same settings: each call applies its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Unpack

import anyio
import anyio.lowlevel
import redis.asyncio
import redis.exceptions
import structlog

from bulksend.clock import Clock
from bulksend.pipeline.limiter import LimiterBase, LimiterStats, honoured_pause
from bulksend.settings import TuningOptions

__all__ = ["RedisRateLimiter", "SharedLimiterState"]

log = structlog.get_logger("bulksend.limiter")

# KEYS[1]: the limiter's hash. ARGV: 1 op ('acquire' | 'sync' | 'cancel'), 2 now ('' = Redis TIME),
# 3 target rate, 4 min rate, 5 decrease factor, 6 increase per s, 7 burst, 8 cooldown s,
# 9 max pause s, 10 successes (0/1), 11 throttles (count), 12 Retry-After s ('' = none),
# 13 epoch of the caller's reservation ('' = new reservation), 14 its slot, 15/16 the tat before
# and after it (for 'cancel'), 17 time-to-live of the hash in ms.
# Numbers go back and forth as '%.17g' strings: Redis would truncate a Lua number reply to an
# integer, and Lua's default tostring keeps only 14 digits.
_LUA: Final = r"""
local key = KEYS[1]
local op = ARGV[1]
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[2])
end
-- ARGV[3] to ARGV[17] are numbers ('' becomes nil).
local num = {}
for i = 3, 17 do num[i] = tonumber(ARGV[i]) end
local target, min_rate, factor, increase, burst, cooldown, max_pause = unpack(num, 3, 9)
local successes, throttles, retry_after, old_epoch, old_slot = unpack(num, 10, 14)
local ttl_ms = num[17]

local NEVER = -1e300
local function fmt(x) return string.format('%.17g', x) end

local f = redis.call('HMGET', key, 'rate', 'tat', 'paused_until', 'last_decrease', 'last_increase',
  'epoch', 'replanned_at', 'decreases', 'pauses', 'throttles', 'grants')
local rate = tonumber(f[1]) or target
if rate > target then rate = target end
local tat = tonumber(f[2]) or NEVER
local paused_until = tonumber(f[3]) or NEVER
local last_decrease = tonumber(f[4])
local last_increase = tonumber(f[5]) or now
local epoch = tonumber(f[6]) or 0
local replanned_at = tonumber(f[7]) or NEVER
local decreases = tonumber(f[8]) or 0
local pauses = tonumber(f[9]) or 0
local throttle_count = tonumber(f[10]) or 0
local grants = tonumber(f[11]) or 0

-- Restart the schedule after a throttle, exactly as AimdLimiter._replan: no burst credit, the
-- new rate, nothing before the pause; waiters holding later slots re-reserve when they confirm.
local function replan()
  local interval = 1 / rate
  local tau = (burst - 1) * interval
  local t = math.min(math.max(tat, now + tau), now + tau + interval)
  tat = math.max(t, paused_until + tau)
  epoch = epoch + 1
  replanned_at = now
end

if successes > 0 then
  if rate < target then
    rate = math.min(target, rate + increase * math.max(0, now - last_increase))
  end
  last_increase = now
end
if throttles > 0 then
  throttle_count = throttle_count + throttles
  local again = false
  -- One decrease per cooldown window for ALL processes: the 429s of requests already in flight
  -- everywhere arrive within about one round trip and must count as one signal.
  if last_decrease == nil or now - last_decrease >= cooldown then
    rate = math.max(min_rate, rate * factor)
    last_decrease = now
    decreases = decreases + 1
    again = true
  end
  last_increase = now
  if retry_after ~= nil and retry_after > 0 then
    local pause_end = now + math.min(retry_after, max_pause)
    if pause_end > paused_until then
      paused_until = pause_end
      pauses = pauses + 1
      again = true
    end
  end
  if again then replan() end
end

local status = 'ok'
local wait = 0
local slot = now
local tat_before = tat
if op == 'acquire' then
  if old_epoch ~= nil and (old_epoch == epoch or old_slot <= replanned_at) then
    -- Confirming a reservation that still holds.
    slot = old_slot
  else
    local interval = 1 / rate
    local tau = (burst - 1) * interval
    slot = math.max(now, tat - tau, paused_until)
    tat = math.max(tat, slot) + interval
  end
  wait = slot - now
  if wait <= 0 then
    grants = grants + 1
    status = 'granted'
  else
    status = 'wait'
  end
elseif op == 'cancel' then
  -- Hand an abandoned slot back if nobody reserved after it and no re-plan happened since.
  local before = num[15]
  local after = num[16]
  if old_epoch == epoch and after ~= nil and tat == after then
    tat = before
  end
end

redis.call('HSET', key, 'rate', fmt(rate), 'tat', fmt(tat), 'paused_until', fmt(paused_until),
  'last_increase', fmt(last_increase), 'epoch', fmt(epoch), 'replanned_at', fmt(replanned_at),
  'decreases', fmt(decreases), 'pauses', fmt(pauses), 'throttles', fmt(throttle_count),
  'grants', fmt(grants))
if last_decrease ~= nil then
  redis.call('HSET', key, 'last_decrease', fmt(last_decrease))
end
redis.call('PEXPIRE', key, ttl_ms)
return {status, fmt(wait), fmt(slot), fmt(epoch), fmt(rate), fmt(math.max(0, paused_until - now)),
  fmt(decreases), fmt(pauses), fmt(throttle_count), fmt(grants), fmt(tat_before), fmt(tat), fmt(now)}
"""

# Errors that mean "Redis is not reachable right now": retried, never granted through.
_UNREACHABLE: Final = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class SharedLimiterState:
    """The shared limiter state as the last script call saw it (counters are for all processes)."""

    rate_per_s: float
    """The rate every process is held to right now."""
    paused_for_s: float
    """How much longer a ``Retry-After`` pause lasts (0 when none)."""
    decreases: int
    """Multiplicative decreases applied so far, by all processes together."""
    pauses: int
    """``Retry-After`` pauses that extended the shared pause."""
    throttles: int
    """Throttles reported so far by all processes."""
    grants: int
    """Slots granted so far to all processes."""
    epoch: int
    """Bumped by every re-plan (decrease or pause)."""


@dataclass(frozen=True, slots=True)
class _Reply:
    status: str
    wait_s: float
    slot: str
    epoch: str
    tat_before: str
    tat_after: str
    state: SharedLimiterState


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


class RedisRateLimiter(LimiterBase):
    """GCRA pacing with AIMD adaptation, shared through Redis by every process using ``key``.

    :param redis: an asyncio Redis client (``redis.asyncio.Redis``); ``decode_responses`` may be
        either. Give it a ``socket_timeout`` so a hung server fails calls instead of hanging them.
    :param key: the Redis key of the shared state; one key per TEM account (say
        ``bulksend:limiter:<project id>:<region>``). Every process on the key must use the same
        settings below.
    :param rate_per_s: target (and starting) rate for all processes together, requests per second.
    :param burst, min_rate_per_s, decrease_factor, increase_per_s, cooldown_s, max_pause_s: as for
        :class:`~bulksend.pipeline.limiter.AimdLimiter`, checked by the same
        :class:`~bulksend.settings.LimiterTuning` (kept as :attr:`tuning`); the cooldown holds
        across all processes.
    :param clock: local time source for sleeping; when given, its ``monotonic()`` is also the
        shared ``now`` (tests); when omitted, the shared ``now`` is the Redis server's clock.
    :param state_ttl_s: the shared state expires after this long without any call.
    :param max_backoff_s: longest wait between two attempts while Redis is unreachable.
    :param max_inflight: most script calls this instance has in flight at once (each holds one
        connection of the client's pool; keep it well under the pool's ``max_connections``).

    Safe to share among all tasks of one event loop; create one per process (or more: instances
    on one key share one budget whatever process they live in).
    """

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        *,
        key: str,
        rate_per_s: float,
        clock: Clock | None = None,
        state_ttl_s: float = 3600.0,
        max_backoff_s: float = 2.0,
        max_inflight: int = 8,
        **tuning: Unpack[TuningOptions],
    ) -> None:
        if not key:
            raise ValueError("key must not be empty")
        super().__init__(rate_per_s, clock, tuning)
        t = self.tuning
        ttl = _number("state_ttl_s", state_ttl_s)
        backoff = _number("max_backoff_s", max_backoff_s)
        if ttl <= 0 or backoff <= 0:
            raise ValueError("state_ttl_s and max_backoff_s must be > 0")
        if isinstance(max_inflight, bool) or not isinstance(max_inflight, int) or max_inflight < 1:
            raise ValueError(f"max_inflight must be an integer >= 1, got {max_inflight!r}")

        self._redis = redis
        self._script = redis.register_script(_LUA)
        self.key = key
        self._shared_clock = clock is not None
        self._config = tuple(
            repr(float(value))
            for value in (
                self._target,
                self._min_rate,
                t.decrease_factor,
                t.increase,
                t.burst,
                t.cooldown_s,
                t.max_pause_s,
            )
        )
        self._ttl_ms = max(1, int(ttl * 1000))
        self._max_backoff_s = backoff
        # Hundreds of tasks waking at once must not open hundreds of connections: a call is short
        # (one script run), so a few in flight per process carry thousands of calls per second.
        self._inflight = anyio.Semaphore(max_inflight)
        self._outage = False

        # Feedback waiting for the next script call.
        self._pending_success = False
        self._pending_throttles = 0
        self._pending_retry_after: float | None = None

        self._state = SharedLimiterState(
            rate_per_s=self._target, paused_for_s=0.0, decreases=0, pauses=0, throttles=0, grants=0, epoch=0
        )
        self.round_trips = 0
        """Script calls this instance made to Redis (successful ones)."""
        self.redis_errors = 0
        """Calls that failed because Redis could not be reached (each was retried)."""

    # -- properties ----------------------------------------------------------------------------
    @property
    def rate_per_s(self) -> float:
        """The shared rate as of this process's last call to Redis."""
        return self._state.rate_per_s

    @property
    def shared(self) -> SharedLimiterState:
        """The shared state as of this process's last call to Redis (see :meth:`sync`)."""
        return self._state

    @property
    def stats(self) -> LimiterStats:
        """This process's counters; ``decreases``/``pauses`` and the rate are the shared ones."""
        state = self._state
        return self._stats(rate_per_s=state.rate_per_s, decreases=state.decreases, pauses=state.pauses)

    # -- the script ----------------------------------------------------------------------------
    def _now_arg(self) -> str:
        return repr(self._clock.monotonic()) if self._shared_clock else ""

    async def _call_once(self, op: str, reservation: _Reply | None) -> _Reply:
        # Take the pending feedback; it goes back if the call fails, so nothing is lost.
        success, throttles, retry_after = (
            self._pending_success,
            self._pending_throttles,
            self._pending_retry_after,
        )
        self._pending_success, self._pending_throttles, self._pending_retry_after = False, 0, None
        args: tuple[str, ...] = (
            op,
            self._now_arg(),
            *self._config,
            "1" if success else "0",
            str(throttles),
            "" if retry_after is None else repr(retry_after),
            "" if reservation is None else reservation.epoch,
            "" if reservation is None else reservation.slot,
            "" if reservation is None else reservation.tat_before,
            "" if reservation is None else reservation.tat_after,
            str(self._ttl_ms),
        )
        try:
            async with self._inflight:
                raw = await self._script(keys=[self.key], args=args)
        except BaseException:
            self._pending_success = self._pending_success or success
            self._pending_throttles += throttles
            if retry_after is not None:
                self._pending_retry_after = max(retry_after, self._pending_retry_after or 0.0)
            raise
        self.round_trips += 1
        values = [_text(v) for v in raw]
        state = SharedLimiterState(
            rate_per_s=float(values[4]),
            paused_for_s=float(values[5]),
            decreases=int(float(values[6])),
            pauses=int(float(values[7])),
            throttles=int(float(values[8])),
            grants=int(float(values[9])),
            epoch=int(float(values[3])),
        )
        self._state = state
        return _Reply(
            status=values[0],
            wait_s=float(values[1]),
            slot=values[2],
            epoch=values[3],
            tat_before=values[10],
            tat_after=values[11],
            state=state,
        )

    async def _call(self, op: str, reservation: _Reply | None = None) -> _Reply:
        """One script call, retried with backoff for as long as Redis cannot be reached."""
        delay_s = 0.05
        while True:
            try:
                reply = await self._call_once(op, reservation)
            except redis.exceptions.MaxConnectionsError:
                # The client's pool is exhausted (it is shared with other users): congestion on
                # this side, not an outage. Wait briefly and try again.
                await self._clock.sleep(0.005)
                continue
            except _UNREACHABLE as exc:
                self.redis_errors += 1
                if not self._outage:
                    self._outage = True
                    log.warning(
                        "shared limiter: Redis unreachable, holding requests until it answers",
                        key=self.key,
                        error=type(exc).__name__,
                    )
            else:
                if self._outage:
                    self._outage = False
                    log.info("shared limiter: Redis answers again", key=self.key)
                return reply
            await self._clock.sleep(delay_s)
            delay_s = min(self._max_backoff_s, delay_s * 2)

    async def sync(self) -> SharedLimiterState:
        """Push pending feedback (successes, throttles) to Redis now and refresh :attr:`shared`."""
        reply = await self._call("sync")
        return reply.state

    # -- RateLimiter ---------------------------------------------------------------------------
    async def acquire(self, kind: str = "send") -> None:
        """Wait until this caller may make one request; ``kind`` only labels the statistics.

        Cancellation is safe: a caller cancelled before its first call to Redis takes no slot; one
        cancelled while asleep hands its slot back when nobody reserved after it.
        """
        await anyio.lowlevel.checkpoint()
        clock = self._clock
        started = clock.monotonic()
        self._waiting += 1
        try:
            reply = await self._call("acquire")
            while reply.status != "granted":
                try:
                    await clock.sleep(reply.wait_s)
                except BaseException:
                    await self._give_back(reply)
                    raise
                # Confirm: granted if no throttle re-planned the schedule meanwhile, else a new slot.
                reply = await self._call("acquire", reply)
        finally:
            self._waiting -= 1
        self._granted(kind, started)

    async def _give_back(self, reservation: _Reply) -> None:
        # Shielded so the cancellation that brought us here does not cut it short; bounded so a
        # dead Redis cannot hold the cancellation up. Losing the slot is harmless (it goes unused).
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            try:
                await self._call_once("cancel", reservation)
            except (*_UNREACHABLE, redis.exceptions.RedisError):
                pass

    def on_success(self) -> None:
        """Additive increase, applied in Redis with this process's next call."""
        self._pending_success = True

    def on_throttle(self, retry_after_s: float | None = None) -> None:
        """Multiplicative decrease (once per cooldown across all processes) and, with
        ``retry_after_s``, a pause for everyone; sent to Redis with this process's next call
        (call :meth:`sync` to send it at once)."""
        self._throttles += 1
        self._pending_throttles += 1
        if honoured_pause(retry_after_s):
            self._pending_retry_after = max(retry_after_s, self._pending_retry_after or 0.0)

    @property
    def acquired_by_kind(self) -> Mapping[str, int]:
        return MappingProxyType(dict(self._by_kind))

    def __repr__(self) -> str:
        return (
            f"RedisRateLimiter(key={self.key!r}, rate_per_s={self.rate_per_s:.3f}, "
            f"target_rate_per_s={self._target:.3f}, acquired={self._acquired})"
        )
