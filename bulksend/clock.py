"""Time sources: the real one, and (re-exported from :mod:`bulksend.testing`) a fake one.

Everything in bulksend that paces, backs off or times out takes a :class:`Clock` instead of calling
``time.monotonic`` / ``anyio.sleep`` directly, so tests can run seconds (or minutes) of pacing in a
few milliseconds of real time and assert exact timestamps.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import anyio

# The fake clock lives with the other test helpers; re-exported for code that imports it from here.
from bulksend.testing import FakeClock

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A monotonic time source (seconds, arbitrary origin) and a matching sleep."""

    def monotonic(self) -> float:
        """Current time in seconds; never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds`` of this clock's time (<= 0: just yield)."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`anyio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
"""Shared default instance (stateless)."""
