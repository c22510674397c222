"""Refused admin API calls, logged without flooding: one line per client, then a count.

A client that keeps calling with a wrong or missing token (a misconfigured scraper, a script in
a loop, a scan) would write one warning per request. :class:`UnauthorizedLog` writes the first
refusal of a client in full (``admin.unauthorized``), counts the ones that follow, and at the end
of each window (a minute by default) writes one ``admin.unauthorized_repeated`` line with the
count. A window without repeats ends the client's entry; its next refusal is logged in full again.
Memory is bounded: past ``max_clients`` tracked clients, new ones are counted together under
``remote="(other clients)"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import structlog

from bulksend.clock import SYSTEM_CLOCK, Clock

__all__ = ["OTHER_CLIENTS", "UnauthorizedLog"]

log = structlog.get_logger("bulksend.admin")

OTHER_CLIENTS: Final = "(other clients)"
"""The ``remote`` under which clients beyond ``max_clients`` are counted together."""


@dataclass(slots=True)
class _Window:
    started: float
    repeats: int = 0
    method: str = ""
    path: str = ""


class UnauthorizedLog:
    """Logs refused requests per client: the first in full, the rest as a count per window."""

    def __init__(
        self, *, window_s: float = 60.0, max_clients: int = 1024, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._clients: dict[str, _Window] = {}

    def __repr__(self) -> str:
        return f"UnauthorizedLog(clients={len(self._clients)}, window_s={self.window_s:g})"

    def refused(self, remote: str | None, method: str, path: str) -> None:
        """Note one refused request from ``remote``."""
        now = self._clock.monotonic()
        self.flush(now)
        client = remote or "unknown"
        if client not in self._clients and len(self._clients) >= self.max_clients:
            client = OTHER_CLIENTS
        window = self._clients.get(client)
        if window is None:
            self._clients[client] = _Window(started=now, method=method, path=path)
            log.warning("admin.unauthorized", method=method, path=path, remote=client)
            return
        window.repeats += 1
        window.method, window.path = method, path

    def flush(self, now: float | None = None) -> None:
        """Write the count of every window that has ended (called on each refusal and by a timer)."""
        now = self._clock.monotonic() if now is None else now
        for client, window in list(self._clients.items()):
            if now - window.started < self.window_s:
                continue
            if window.repeats == 0:
                del self._clients[client]  # quiet: the next refusal is logged in full
                continue
            log.warning(
                "admin.unauthorized_repeated",
                remote=client,
                count=window.repeats,
                window_s=self.window_s,
                last_method=window.method,
                last_path=window.path,
            )
            # Still refused: a new window, so a client that keeps at it writes one line a window.
            self._clients[client] = _Window(started=now)
