"""Waiting on observable state (a file, a counter, an HTTP answer) instead of on time."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import anyio

POLL_S = 0.01
"""Pause between two checks: state in another process or on disk has no event to wait on."""

PATIENCE_S = 60.0
"""How long a condition may take before the test fails with a clear message. Generous: the
machine may be loaded; pytest-timeout bounds the whole test anyway."""


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]],
    *,
    what: str = "",
    timeout_s: float = PATIENCE_S,
    poll_s: float = POLL_S,
) -> None:
    """Return once ``check()`` (sync or async) is true; fail with ``what`` after ``timeout_s``."""
    try:
        with anyio.fail_after(timeout_s):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await anyio.sleep(poll_s)
    except TimeoutError:
        raise AssertionError(f"still waiting after {timeout_s} s: {what or check!r}") from None
