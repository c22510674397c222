"""Sends per second the sandbox sustains on one core.

The sandbox runs as its own process (``python -m bulksend.sandbox --port 0``), pinned to one CPU.
The load comes from separate client processes pinned to the other CPU(s). Each client is a lean
pipelined HTTP/1.1 generator on uvloop (raw sockets, a few requests in flight per connection),
so that it costs far less CPU per request than the server and is not what limits the figure.
Every send is a real ``POST /emails`` to a distinct recipient; only 200 answers are counted.
The run is bounded: warm-up plus measurement, then everything stops.

Usage::

    python -m benchmarks.sandbox_throughput --duration-s 10
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing as mp
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, cast

import orjson

from benchmarks.common import cpu_model

_PATH = "/transactional-email/v1alpha1/regions/fr-par/emails"


@dataclass(frozen=True)
class ClientPlan:
    host: str
    port: int
    secret_key: str
    worker: int
    connections: int
    depth: int
    recipients_per_send: int
    start_at: float  # time.monotonic() (system-wide on Linux), start of the measured window
    end_at: float
    cpus: tuple[int, ...]


class _PipelinedConnection(asyncio.Protocol):
    """Keeps ``depth`` sends in flight on one keep-alive connection and counts the 200 answers."""

    def __init__(self, plan: ClientPlan, conn_no: int, done: asyncio.Future[None], counts: list[int]) -> None:
        self.plan = plan
        self.prefix = f"w{plan.worker}c{conn_no}n"
        self.n = 0
        self.buffer = b""
        self.in_flight = 0
        self.done = done
        self.counts = counts  # [ok in window, ok total, non-200]
        self.transport: asyncio.Transport | None = None
        self.head = (
            f"POST {_PATH} HTTP/1.1\r\nHost: {plan.host}:{plan.port}\r\nX-Auth-Token: {plan.secret_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()

    def _request(self) -> bytes:
        self.n += 1
        recipients = ",".join(
            f'{{"email":"user-{self.prefix}{self.n}-{i}@example.org"}}'
            for i in range(self.plan.recipients_per_send)
        )
        body = (
            '{"from":{"email":"news@example.com","name":"Benchmark"},"to":[' + recipients + "],"
            '"subject":"Sandbox throughput","text":"Hello from the benchmark.",'
            '"html":"<p>Hello from the benchmark.</p>"}'
        ).encode()
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"".join(self._request() for _ in range(self.plan.depth)))
        self.in_flight = self.plan.depth

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        answered = 0
        now = time.monotonic()
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            length = int(m.group(1)) if m else 0
            if len(buf) < end + 4 + length:
                break
            status = int(head[9:12])
            buf = buf[end + 4 + length :]
            answered += 1
            if status == 200:
                self.counts[1] += 1
                if self.plan.start_at <= now < self.plan.end_at:
                    self.counts[0] += 1
            else:
                self.counts[2] += 1
        self.buffer = buf
        self.in_flight -= answered
        if now < self.plan.end_at:
            if answered:
                assert self.transport is not None
                self.transport.write(b"".join(self._request() for _ in range(answered)))
                self.in_flight += answered
        elif self.in_flight == 0 and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _client_main(plan: ClientPlan) -> list[int]:
    loop = asyncio.get_running_loop()
    counts = [0, 0, 0]
    done: list[asyncio.Future[None]] = []
    for c in range(plan.connections):
        fut: asyncio.Future[None] = loop.create_future()
        done.append(fut)
        await loop.create_connection(
            functools.partial(_PipelinedConnection, plan, c, fut, counts), plan.host, plan.port
        )
    await asyncio.wait_for(asyncio.gather(*done), timeout=max(5.0, plan.end_at - time.monotonic() + 10.0))
    return counts


def _client_process(plan: ClientPlan, results: Any) -> None:
    if plan.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(plan.cpus))
    import uvloop

    results.put(uvloop.run(_client_main(plan)))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--connections", type=int, default=8, help="connections per client process")
    parser.add_argument("--depth", type=int, default=16, help="pipelined requests in flight per connection")
    parser.add_argument("--recipients-per-send", type=int, default=1)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpus", default="", help="e.g. '1' or '1,2,3' (default: every other CPU)")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    client_cpus = (
        tuple(int(c) for c in args.client_cpus.split(",") if c)
        if args.client_cpus
        else tuple(c for c in cpus if c != args.server_cpu)
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server_cmd = [sys.executable, "-m", "bulksend.sandbox", "--port", "0"]
    server = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=repo)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        m = re.search(r"http://([\d.]+):(\d+)", line)
        if m is None:
            print(f"the sandbox did not start: {line!r}", file=sys.stderr)
            return 1
        host, port = m.group(1), int(m.group(2))
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(server.pid, {args.server_cpu})

        start_at = time.monotonic() + 1.0 + args.warmup_s
        end_at = start_at + args.duration_s
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        procs = [
            ctx.Process(
                target=_client_process,
                args=(
                    ClientPlan(
                        host,
                        port,
                        "sandbox-secret",
                        w,
                        args.connections,
                        args.depth,
                        args.recipients_per_send,
                        start_at,
                        end_at,
                        client_cpus,
                    ),
                    results,
                ),
            )
            for w in range(args.clients)
        ]
        for p in procs:
            p.start()
        time.sleep(max(0.0, start_at - time.monotonic()))  # wait out the warm-up before sampling CPU
        cpu_before = _cpu_seconds(server.pid)
        time.sleep(max(0.0, end_at - time.monotonic()))
        cpu_after = _cpu_seconds(server.pid)
        counts = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)

        with urllib.request.urlopen(f"http://{host}:{port}/_sandbox/stats", timeout=30) as r:
            stats = orjson.loads(r.read())
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    ok_window = sum(c[0] for c in counts)
    errors = sum(c[2] for c in counts)
    rate = ok_window / args.duration_s
    server_cpu = (cpu_after - cpu_before) / args.duration_s
    machine = f"{platform.machine()} {cpu_model()} ({os.cpu_count()} CPUs)"
    print(f"machine      : {machine}, Python {platform.python_version()}")
    print(f"server       : python {' '.join(server_cmd[1:])} (uvloop), pinned to CPU {args.server_cpu}")
    print(
        f"load         : {args.clients} processes x {args.connections} connections x {args.depth} "
        f"in flight, on CPU(s) {','.join(map(str, client_cpus)) or 'any'}"
    )
    print(
        f"sends/s      : {rate:,.0f}  ({args.recipients_per_send} recipient(s) per send, "
        f"{ok_window:,} in {args.duration_s:g} s)"
    )
    print(
        f"server CPU   : {server_cpu:.0%} of one core during the window "
        f"({rate / server_cpu if server_cpu else 0:,.0f} sends per CPU-second)"
    )
    print(f"non-200      : {errors}")
    print(f"emails stored: {stats['emails_total']:,}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
