"""A faithful, fast local TEM server for tests, demos and benchmarks.

::

    from bulksend.sandbox import Sandbox, SandboxConfig

    async with Sandbox(SandboxConfig(final_after_s=2.0)) as sb:
        ...  # point a client at sb.url with X-Auth-Token = sb.config.secret_key

Outcomes are chosen by the recipient's local part (``bounce…``, ``softbounce…``, ``blocked…``,
``spam…``, ``full…``, ``greylist…``, ``stuck…``, ``hold…``); see docs/sandbox.md.
"""

from .app import Sandbox
from .config import DEFAULT_PROJECT_ID, DEFAULT_SECRET_KEY, SandboxConfig, SandboxStats
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
