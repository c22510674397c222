"""What ``bulksend send`` and ``bulksend serve`` share to run: the event loop, and stopping on signals.

Both stop in two phases: the first Ctrl-C or SIGTERM asks for a graceful stop (in-flight requests
finish and are recorded), a second one stops at once (the next run reconciles what was in flight).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import anyio

__all__ = ["stop_on_signals", "uvloop_available"]


def uvloop_available() -> bool:
    """Whether uvloop can run the event loop (it is not installed on every platform)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


async def stop_on_signals(
    request_stop: Callable[[], None],
    abort: Callable[[], None],
    *,
    stopping: Callable[[], bool] | None = None,
    notice: str | None = None,
) -> None:
    """Until cancelled: the first SIGINT/SIGTERM calls ``request_stop``, any later one ``abort``.

    ``stopping`` says whether a graceful stop is already under way for another reason: then even
    the first signal aborts, since the graceful stop has been asked for already. ``notice`` is
    written to stderr when the graceful stop starts.
    """
    asked = False
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if asked or (stopping is not None and stopping()):
                abort()
                continue
            asked = True
            if notice is not None:
                sys.stderr.write(notice)
            request_stop()
