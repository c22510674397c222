"""Half-open requests against the admin API: how many are refused, dropped, and how fast.

Serves the admin API (over a MemoryControl, on loopback) with the daemon's listener, opens
``--clients`` connections that each send half a request head and then nothing, and reports how
many the server refused at once (503, over ``max_connections``), how many it closed after
``idle_timeout_s``, and when the last one was closed. Bounded: it gives up after ``--budget-s``.

    python -m benchmarks.admin_slow_clients --clients 2000 --idle-timeout-s 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anyio
import orjson
from anyio.abc import SocketStream

from bulksend.admin import MemoryControl, create_admin_app, serve_admin
from bulksend.metrics import Metrics
from bulksend.secret import Secret


async def _client(port: int, started: float, results: list[tuple[str, float]]) -> None:
    try:
        stream: SocketStream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        results.append(("connect_failed", time.monotonic() - started))
        return
    async with stream:
        try:
            await stream.send(b"POST /v1/campaigns HTTP/1.1\r\nHost: admin\r\nContent-Ty")
            first = b""
            while True:
                first += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            kind = "refused_503" if first.startswith(b"HTTP/1.1 503") else "dropped"
            results.append((kind, time.monotonic() - started))


async def main(
    clients: int, idle_timeout_s: float, max_connections: int, budget_s: float
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as spool:
        control = MemoryControl(Path(spool))
        app = create_admin_app(control, token=Secret("bench-token"), metrics=Metrics())
        server = await serve_admin(
            app, "127.0.0.1", 0, idle_timeout_s=idle_timeout_s, max_connections=max_connections
        )
        port = int(server.url.rsplit(":", 1)[1])
        results: list[tuple[str, float]] = []
        started = time.monotonic()
        try:
            with anyio.move_on_after(budget_s):
                async with anyio.create_task_group() as tg:
                    for _ in range(clients):
                        tg.start_soon(_client, port, started, results)
        finally:
            await server.cleanup()
            await control.aclose()
    by_kind: dict[str, list[float]] = {}
    for kind, at in results:
        by_kind.setdefault(kind, []).append(at)
    return {
        "clients": clients,
        "idle_timeout_s": idle_timeout_s,
        "max_connections": max_connections,
        "still_open_at_budget": clients - len(results),
        **{f"{kind}": len(times) for kind, times in sorted(by_kind.items())},
        **{f"{kind}_last_s": round(max(times), 2) for kind, times in sorted(by_kind.items())},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--idle-timeout-s", type=float, default=2.0)
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=60.0)
    args = parser.parse_args()
    report = anyio.run(main, args.clients, args.idle_timeout_s, args.max_connections, args.budget_s)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
