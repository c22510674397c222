"""Run a :class:`Sandbox` on its own event loop in a background thread, for synchronous callers
(the official Scaleway SDK, scripts, sync test suites)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .app import Sandbox
from .config import SandboxConfig, SandboxStats

__all__ = ["ThreadedSandbox", "sandbox_in_thread"]


@dataclass(frozen=True)
class ThreadedSandbox:
    """A handle on a sandbox served from another thread; every call crosses into its loop."""

    _sandbox: Sandbox
    _portal: BlockingPortal

    @property
    def url(self) -> str:
        """The API URL to give clients."""
        return self._sandbox.url

    @property
    def config(self) -> SandboxConfig:
        """The current configuration, as the sandbox's loop sees it."""
        return self._portal.call(lambda: self._sandbox.config)

    def stats(self) -> SandboxStats:
        """A snapshot of the counters."""
        return self._portal.call(self._sandbox.stats)

    def update(self, **changes: Any) -> SandboxConfig:
        """Change settings live; returns the new configuration."""
        return self._portal.call(lambda: self._sandbox.update(**changes))

    def reset(self) -> None:
        """Forget every email and counter."""
        self._portal.call(self._sandbox.reset)

    def block(self, emails: list[str], **options: Any) -> int:
        """Script blocklist entries (see :meth:`Sandbox.block`)."""
        return self._portal.call(lambda: self._sandbox.block(emails, **options))


@contextmanager
def sandbox_in_thread(
    config: SandboxConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], float] | None = None,
) -> Iterator[ThreadedSandbox]:
    """Serve a sandbox from a background thread for the duration of the ``with`` block."""
    with start_blocking_portal() as portal:
        sandbox = Sandbox(config, host=host, port=port, clock=clock)
        with portal.wrap_async_context_manager(sandbox):
            yield ThreadedSandbox(sandbox, portal)
