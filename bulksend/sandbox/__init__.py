"""A faithful, fast local TEM server for tests, demos and benchmarks.

::

    from bulksend.sandbox import Sandbox, SandboxConfig

    async with Sandbox(SandboxConfig(final_after_s=2.0)) as sb:
        ...  # point a client at sb.url with X-Auth-Token = sb.config.secret_key

Outcomes are chosen by the recipient's local part (``bounce…``, ``softbounce…``, ``blocked…``,
``spam…``, ``full…``, ``greylist…``, ``stuck…``, ``hold…``); see docs/sandbox.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_PROJECT_ID, DEFAULT_SECRET_KEY, SandboxConfig, SandboxStats

if TYPE_CHECKING:
    from .app import Sandbox
    from .threaded import ThreadedSandbox, sandbox_in_thread

__all__ = [
    "DEFAULT_PROJECT_ID",
    "DEFAULT_SECRET_KEY",
    "Sandbox",
    "SandboxConfig",
    "SandboxStats",
    "ThreadedSandbox",
    "sandbox_in_thread",
]

# The server (aiohttp) is imported on first use, not with the package: ``bulksend --help`` reads
# the sandbox's options from .args and must not start aiohttp for that.
_LAZY = {"Sandbox": ".app", "ThreadedSandbox": ".threaded", "sandbox_in_thread": ".threaded"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
