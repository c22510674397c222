"""Half-open requests against the admin API: how many are refused, dropped, and how fast.

Serves the admin API (over a MemoryControl, on loopback) with the daemon's listener, opens
``--clients`` connections that each send half a request head and then nothing, and reports how
many the server refused at once (503, over ``max_connections``) and how many it closed after
``idle_timeout_s``, with how long the server held each once connected (the connects themselves
may wait on the kernel's accept queue). Bounded: it gives up after ``--budget-s``.

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

from bulksend.daemon.admin import MemoryControl, create_admin_app, serve_admin
from bulksend.metrics import Metrics
from bulksend.secret import Secret


async def _client(port: int, results: list[tuple[str, float, float]]) -> None:
    """Connect, send half a request head, and record (outcome, connect time, held time)."""
    begun = time.monotonic()
    try:
        stream: SocketStream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        results.append(("connect_failed", time.monotonic() - begun, 0.0))
        return
    connected = time.monotonic()
    async with stream:
        try:
            await stream.send(b"POST /v1/campaigns HTTP/1.1\r\nHost: admin\r\nContent-Ty")
            first = b""
            while True:
                first += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            kind = "refused_503" if first.startswith(b"HTTP/1.1 503") else "dropped"
            results.append((kind, connected - begun, time.monotonic() - connected))


async def main(
    clients: int, idle_timeout_s: float, max_connections: int, budget_s: float
) -> dict[str, object]:
    """Run the clients against a fresh listener; a summary of what happened to them."""
    with tempfile.TemporaryDirectory() as spool:
        control = MemoryControl(Path(spool))
        app = create_admin_app(control, token=Secret("bench-token"), metrics=Metrics())
        server = await serve_admin(
            app, "127.0.0.1", 0, idle_timeout_s=idle_timeout_s, max_connections=max_connections
        )
        port = int(server.url.rsplit(":", 1)[1])
        results: list[tuple[str, float, float]] = []
        try:
            with anyio.move_on_after(budget_s):
                async with anyio.create_task_group() as tg:
                    for _ in range(clients):
                        tg.start_soon(_client, port, results)
        finally:
            await server.cleanup()
            await control.aclose()
    report: dict[str, object] = {
        "clients": clients,
        "idle_timeout_s": idle_timeout_s,
        "max_connections": max_connections,
        "unfinished_at_budget": clients - len(results),
        "slowest_connect_s": round(max((r[1] for r in results), default=0.0), 2),
    }
    for kind in sorted({r[0] for r in results}):
        held = sorted(r[2] for r in results if r[0] == kind)
        report[kind] = len(held)
        report[f"{kind}_held_median_s"] = round(held[len(held) // 2], 3)
        report[f"{kind}_held_max_s"] = round(held[-1], 3)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--idle-timeout-s", type=float, default=2.0)
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=60.0)
    args = parser.parse_args()
    report = anyio.run(main, args.clients, args.idle_timeout_s, args.max_connections, args.budget_s)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
