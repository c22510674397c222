"""bulksend side by side with the floor (a bare aiohttp loop) and the official ``scaleway`` SDK.

For each added latency (default 20 ms, standing for the network, and 0 ms), a sandbox is started
in its own process and the same emails are sent through:

- **bulksend** end to end: ``bulksend send campaign.toml`` as a child process (render, store,
  send, track every email to a final status, write the outcomes file);
- **the floor**: a child that only POSTs the same pre-rendered bodies at the same concurrency over
  one aiohttp session (no store, no tracking, no retries): the limit for a Python client;
- **the official SDK** as people use it: ``TemV1Alpha1API.create_email`` in a 32-thread pool and
  in a plain sequential loop, on a subset of the emails (the rates are comparable).

Each client runs in its own process, pinned to a core the sandbox does not use; its CPU time and
peak RSS are that process's own (``os.wait4``). Every child and the sandbox are bounded in time
and stopped on the way out.

Usage::

    python -m benchmarks.compare                      # 20,000 emails at 20 ms and 0 ms
    python -m benchmarks.compare --emails 2000 --latencies 0 --json out.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from benchmarks.common import (
    BENCH_ACCESS_KEY,
    BENCH_PROJECT_ID,
    REPO_ROOT,
    CpuPlan,
    SandboxProcess,
    SendOptions,
    add_run_arguments,
    bulksend_command,
    describe_machine,
    prepare,
    render_bodies,
    run_measured,
    run_options,
    sandbox_client_env,
    uses_uvloop,
    workbench,
    write_campaign,
    write_raw,
)

__all__ = ["CompareOptions", "Measurement", "main", "run_compare"]

EMAILS_PATH = "/transactional-email/v1alpha1/regions/fr-par/emails"
SECRET_ENV = "SCW_SECRET_KEY"  # how every child gets the key: never on a command line

ClientName = Literal["bulksend", "floor", "sdk-pool", "sdk-seq"]
CLIENT_LABELS: dict[str, str] = {
    "bulksend": "bulksend send (end to end)",
    "floor": "floor: bare aiohttp loop",
    "sdk-pool": "SDK, 32-thread pool",
    "sdk-seq": "SDK, sequential loop",
}


@dataclass
class CompareOptions(SendOptions):
    """What to measure. Defaults are the benchmark's; the smoke test shrinks them."""

    emails: int = 20_000
    sdk_pool_emails: int = 2_000
    sdk_seq_emails: int = 500
    latencies_ms: tuple[float, ...] = (20.0, 0.0)
    sdk_threads: int = 32
    recipients_format: Literal["csv", "jsonl"] = "csv"
    repeat: int = 1
    target_latency_ms: float = 20.0
    child_timeout_s: float | None = None
    clients: tuple[str, ...] = ("floor", "bulksend", "sdk-pool", "sdk-seq")


@dataclass
class Measurement:
    """One client's run at one latency."""

    client: str
    latency_ms: float
    emails: int
    wall_s: float
    """Process wall time: start of the child to its exit (interpreter start-up included)."""
    cpu_s: float
    """User + system CPU time of that child process (all its threads)."""
    max_rss_kb: int
    inner_s: float | None
    """The child's own timing of its send loop (floor and SDK), start-up excluded."""
    errors: int
    sandbox: dict[str, Any] = field(default_factory=dict)
    """Sandbox counters after the run (requests by kind, 429s, emails stored)."""
    final_outcomes: int | None = None
    """bulksend: outcome lines with a final status (sent or failed)."""
    sandbox_cpu_share: float = 0.0
    """The sandbox's CPU time over the client's wall time: near 1.0, the sandbox set the pace."""

    @property
    def throughput_per_s(self) -> float:
        """Headline rate. bulksend and the floor: emails / process wall time (everything
        included). The SDK: emails / its send loop time, start-up and imports excluded, which
        favours the SDK; it is the conservative side of the bulksend / SDK ratio."""
        if self.client.startswith("sdk") and self.inner_s:
            return self.emails / self.inner_s
        return self.emails / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us_per_email(self) -> float:
        return self.cpu_s * 1e6 / self.emails if self.emails else 0.0

    @property
    def max_rss_mb(self) -> float:
        return self.max_rss_kb / 1024

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["throughput_per_s"] = self.throughput_per_s
        data["cpu_us_per_email"] = self.cpu_us_per_email
        data["max_rss_mb"] = self.max_rss_mb
        return data


# --------------------------------------------------------------------------------------------
# the parent: orchestration


def _timeout_for(opts: CompareOptions, client: str, emails: int, latency_ms: float) -> float:
    if opts.child_timeout_s is not None:
        return opts.child_timeout_s
    if client == "sdk-seq":
        return 60.0 + emails * (0.05 + 2 * latency_ms / 1000)
    # Generous: ten times slower than expected still finishes; a hang is cut.
    return 120.0 + emails / 50


def _say(opts: CompareOptions, text: str) -> None:
    if not opts.quiet:
        print(text, flush=True)


def _child_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            data: dict[str, Any] = orjson.loads(line)
            return data
    raise RuntimeError(f"the child printed no result: {stdout[-2000:]!r}")


def _count_final(outcomes: Path) -> int:
    n = 0
    with open(outcomes, "rb") as f:
        for line in f:
            if b'"status":"sent"' in line or b'"status":"failed"' in line:
                n += 1
    return n


def _measure(
    opts: CompareOptions,
    client: str,
    *,
    sandbox: SandboxProcess,
    latency_ms: float,
    campaign: Path,
    bodies: Path,
    work: Path,
    cpus: CpuPlan,
    uvloop: bool,
    run_no: int,
) -> Measurement:
    sandbox.reset()
    sandbox_cpu_at_start = sandbox.cpu_s()
    env = sandbox_client_env(sandbox.url, work)
    final: int | None = None
    inner_s: float | None = None
    errors = 0
    if client == "bulksend":
        emails = opts.emails
        run_dir = work / f"bulksend-{latency_ms:g}ms-{run_no}"
        run_dir.mkdir()
        outcomes = run_dir / "outcomes.jsonl"
        cmd = bulksend_command(campaign, "--store", str(run_dir / "state.db"), "--outcomes", str(outcomes))
        res = run_measured(
            cmd, timeout_s=_timeout_for(opts, client, emails, latency_ms), env=env, cwd=work, cpus=cpus.client
        )
        res.check("bulksend send")
        final = _count_final(outcomes)
        errors = emails - final
    else:
        if client == "floor":
            emails = opts.emails
            extra = ["--concurrency", str(opts.concurrency)] + (["--uvloop"] if uvloop else [])
        else:
            emails = opts.sdk_pool_emails if client == "sdk-pool" else opts.sdk_seq_emails
            extra = ["--threads", str(opts.sdk_threads)]
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.compare",
            "--child",
            client,
            "--bodies",
            str(bodies),
            "--url",
            sandbox.url,
            "--emails",
            str(emails),
            *extra,
        ]
        res = run_measured(
            cmd,
            timeout_s=_timeout_for(opts, client, emails, latency_ms),
            env=env,
            cwd=REPO_ROOT,
            cpus=cpus.client,
        )
        res.check(CLIENT_LABELS[client])
        out = _child_json(res.stdout)
        inner_s = float(out["inner_s"])
        errors = int(out["errors"])
        if errors:
            _say(opts, f"  {client}: {errors} errors, first: {out.get('first_error')}")
    sandbox_cpu_s = sandbox.cpu_s() - sandbox_cpu_at_start
    stats = sandbox.stats()
    return Measurement(
        client=client,
        latency_ms=latency_ms,
        emails=emails,
        wall_s=res.wall_s,
        cpu_s=res.cpu_s,
        max_rss_kb=res.max_rss_kb,
        inner_s=inner_s,
        errors=errors,
        sandbox={k: stats[k] for k in ("requests", "rate_limited", "emails_total") if k in stats},
        final_outcomes=final,
        sandbox_cpu_share=sandbox_cpu_s / res.wall_s if res.wall_s else 0.0,
    )


def _median(runs: Sequence[Measurement]) -> Measurement:
    """The run with the median throughput (a real run, so its numbers belong together)."""
    ordered = sorted(runs, key=lambda m: m.throughput_per_s)
    return ordered[(len(ordered) - 1) // 2]


def _summary(runs: Sequence[Measurement]) -> dict[str, Any]:
    """The median run, with the spread of throughput and CPU over every run.

    ``cpu_us_per_email_median`` is the median of every run's own CPU per email: the median-
    throughput run's CPU can be any of them, and one noisy floor run would then move the CPU
    ratio by 10 % either way.
    """
    row = _median(runs).to_json()
    row["cpu_us_per_email_median"] = statistics.median(m.cpu_us_per_email for m in runs)
    row["throughput_range_per_s"] = (
        min(m.throughput_per_s for m in runs),
        max(m.throughput_per_s for m in runs),
    )
    row["cpu_us_per_email_range"] = (
        min(m.cpu_us_per_email for m in runs),
        max(m.cpu_us_per_email for m in runs),
    )
    return row


def run_compare(opts: CompareOptions) -> dict[str, Any]:
    """Run every client at every latency; returns the raw numbers and the target checks."""
    machine = prepare()
    uvloop = uses_uvloop()
    with workbench("bulksend-bench-compare-", opts.pin) as bench:
        work, cpus = bench.work, bench.cpus
        result: dict[str, Any] = {
            "machine": machine,
            "options": asdict(opts),
            "cpus": cpus.describe(),
            "uvloop": uvloop,
            "runs": {},
            "summary": {},
        }
        _say(opts, f"generating {opts.emails:,} recipients ({opts.recipients_format}) and their bodies…")
        campaign = write_campaign(
            work / "campaign",
            opts.emails,
            fmt=opts.recipients_format,
            concurrency=opts.concurrency,
            poll_interval_s=opts.poll_interval_s,
        )
        bodies = work / "bodies.jsonl"
        render_bodies(campaign, bodies)
        for latency_ms in opts.latencies_ms:
            key = f"{latency_ms:g}"
            runs: dict[str, list[Measurement]] = {c: [] for c in opts.clients}
            with SandboxProcess(
                latency_ms=latency_ms, final_after_s=opts.final_after_s, cpus=cpus.sandbox
            ) as sandbox:
                _say(
                    opts,
                    f"\n== {latency_ms:g} ms added latency: sandbox at {sandbox.url} ({cpus.describe()})",
                )
                for run_no in range(opts.repeat):
                    for client in opts.clients:
                        started = time.monotonic()
                        m = _measure(
                            opts,
                            client,
                            sandbox=sandbox,
                            latency_ms=latency_ms,
                            campaign=campaign,
                            bodies=bodies,
                            work=work,
                            cpus=cpus,
                            uvloop=uvloop,
                            run_no=run_no,
                        )
                        runs[client].append(m)
                        _say(
                            opts,
                            f"  run {run_no + 1}/{opts.repeat} {client:9} {m.emails:>7,} emails "
                            f"{m.throughput_per_s:>9,.0f}/s  {m.cpu_us_per_email:>7.1f} µs CPU/email  "
                            f"({time.monotonic() - started:.1f} s)",
                        )
            result["runs"][key] = {c: [m.to_json() for m in ms] for c, ms in runs.items()}
            result["summary"][key] = {c: _summary(ms) for c, ms in runs.items() if ms}
    result["ratios"] = {k: _ratios(v) for k, v in result["summary"].items()}
    result["targets"] = _targets(result, opts.target_latency_ms)
    return result


def _ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def ratio(a: str, b: str, metric: str) -> float | None:
        if a not in summary or b not in summary or not summary[b][metric]:
            return None
        return float(summary[a][metric]) / float(summary[b][metric])

    return {
        "bulksend_over_floor_throughput": ratio("bulksend", "floor", "throughput_per_s"),
        "bulksend_over_sdk_pool_throughput": ratio("bulksend", "sdk-pool", "throughput_per_s"),
        "bulksend_over_sdk_seq_throughput": ratio("bulksend", "sdk-seq", "throughput_per_s"),
        "bulksend_over_floor_cpu_per_email": ratio("bulksend", "floor", "cpu_us_per_email_median"),
    }


def _targets(result: dict[str, Any], latency_ms: float) -> list[dict[str, Any]]:
    ratios = result["ratios"].get(f"{latency_ms:g}")
    checks = [
        ("bulksend throughput ≥ 0.6 × floor", "bulksend_over_floor_throughput", 0.6, ">="),
        ("bulksend CPU/email ≤ 2 × floor", "bulksend_over_floor_cpu_per_email", 2.0, "<="),
        ("bulksend throughput ≥ 6 × SDK pool", "bulksend_over_sdk_pool_throughput", 6.0, ">="),
    ]
    out: list[dict[str, Any]] = []
    for name, key, bound, op in checks:
        value = ratios.get(key) if ratios else None
        passed = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out.append(
            {
                "target": name,
                "latency_ms": latency_ms,
                "ratio": value,
                "bound": bound,
                "op": op,
                "pass": passed,
            }
        )
    return out


def format_report(result: dict[str, Any]) -> str:
    """The tables, ratios and PASS/FAIL lines, as printed."""
    m = result["machine"]
    lines = [
        describe_machine(m),
        f"CPUs: {result['cpus']}; event loop: {'uvloop' if result['uvloop'] else 'asyncio'}",
    ]
    for key, summary in result["summary"].items():
        lines.append("")
        lines.append(
            f"{key} ms added latency (median of {result['options']['repeat']} run(s): wall and emails/s "
            "of the median-throughput run, CPU the median of every run's own)"
        )
        lines.append(
            f"{'client':28} {'emails':>8} {'wall s':>8} {'emails/s':>10} {'CPU µs/email':>13} "
            f"{'peak RSS MB':>12}"
        )
        for client, row in summary.items():
            notes: list[str] = []
            if result["options"]["repeat"] > 1:
                lo, hi = row["throughput_range_per_s"]
                notes.append(f"runs {lo:,.0f}–{hi:,.0f}/s")
                lo, hi = row["cpu_us_per_email_range"]
                notes.append(f"CPU {lo:,.0f}–{hi:,.0f} µs")
            if row.get("inner_s") and not client.startswith("sdk"):
                notes.append(f"send loop alone {row['emails'] / row['inner_s']:,.0f}/s")
            notes.append(f"sandbox busy {row['sandbox_cpu_share']:.0%}")
            inner = f"  ({'; '.join(notes)})" if notes else ""
            lines.append(
                f"{CLIENT_LABELS.get(client, client):28} {row['emails']:>8,} {row['wall_s']:>8.2f} "
                f"{row['throughput_per_s']:>10,.0f} {row['cpu_us_per_email_median']:>13.1f} "
                f"{row['max_rss_mb']:>12.1f}{inner}"
            )
        r = result["ratios"][key]

        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2f}"

        lines.append(
            f"bulksend/floor throughput {fmt(r['bulksend_over_floor_throughput'])} · "
            f"bulksend/SDK-pool throughput {fmt(r['bulksend_over_sdk_pool_throughput'])} · "
            f"bulksend/SDK-sequential {fmt(r['bulksend_over_sdk_seq_throughput'])} · "
            f"bulksend CPU/email ÷ floor {fmt(r['bulksend_over_floor_cpu_per_email'])}"
        )
    lines.append("")
    lines.append("targets:")
    for t in result["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "NOT RUN"}[t["pass"]]
        value = "n/a" if t["ratio"] is None else f"{t['ratio']:.2f}"
        lines.append(
            f"  {verdict:7} {t['target']} at {t['latency_ms']:g} ms: {value} (bound {t['op']} {t['bound']:g})"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the children (each run as `python -m benchmarks.compare --child …`)


def _load_bodies(path: Path, n: int) -> list[bytes]:
    bodies: list[bytes] = []
    with open(path, "rb") as f:
        for line in f:
            if len(bodies) >= n:
                break
            bodies.append(line.rstrip(b"\n"))
    if len(bodies) < n:
        raise SystemExit(f"{path} has {len(bodies)} bodies, {n} asked")
    return bodies


def _floor_child(args: argparse.Namespace) -> dict[str, Any]:
    """POST the pre-rendered bodies, ``concurrency`` at a time, over one session. Nothing else."""
    import aiohttp
    import anyio

    bodies = _load_bodies(args.bodies, args.emails)
    url = args.url + EMAILS_PATH
    headers = {"X-Auth-Token": os.environ[SECRET_ENV], "Content-Type": "application/json"}
    counts = {"ok": 0, "errors": 0}
    first_error: list[str] = []

    async def main() -> float:
        pending = iter(bodies)  # shared by the workers; next() never yields to the loop
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                for body in pending:
                    try:
                        async with session.post(url, data=body, headers=headers) as resp:
                            await resp.read()
                            ok = resp.status == 200
                    except aiohttp.ClientError as exc:
                        ok = False
                        first_error.append(f"{type(exc).__name__}: {exc}")
                    else:
                        if not ok:
                            first_error.append(f"HTTP {resp.status}")
                    counts["ok" if ok else "errors"] += 1

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(args.concurrency):
                    tg.start_soon(worker)
            return time.perf_counter() - started

    inner_s = anyio.run(main, backend="asyncio", backend_options={"use_uvloop": bool(args.uvloop)})
    return {**counts, "inner_s": inner_s, "first_error": first_error[0] if first_error else None}


def _sdk_child(args: argparse.Namespace, *, pool: bool) -> dict[str, Any]:
    """``create_email`` per recipient with the official SDK: sequential, or in a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    from scaleway import Client
    from scaleway.tem.v1alpha1 import CreateEmailRequestAddress, CreateEmailRequestHeader, TemV1Alpha1API

    parsed = [orjson.loads(b) for b in _load_bodies(args.bodies, args.emails)]
    client = Client(
        access_key=BENCH_ACCESS_KEY,
        secret_key=os.environ[SECRET_ENV],
        default_project_id=BENCH_PROJECT_ID,
        default_region="fr-par",
        api_url=args.url,
    )
    api = TemV1Alpha1API(client)
    first_error: list[str] = []

    def send(body: dict[str, Any]) -> bool:
        # What a script around the SDK does per recipient: build the request objects, call.
        try:
            api.create_email(
                from_=CreateEmailRequestAddress(email=body["from"]["email"], name=body["from"].get("name")),
                to=[CreateEmailRequestAddress(email=t["email"], name=t.get("name")) for t in body["to"]],
                subject=body["subject"],
                text=body.get("text", ""),
                html=body.get("html", ""),
                project_id=body.get("project_id"),
                additional_headers=[
                    CreateEmailRequestHeader(key=h["key"], value=h["value"])
                    for h in body.get("additional_headers", [])
                ]
                or None,
            )
        except Exception as exc:
            first_error.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            return False
        return True

    started = time.perf_counter()
    if pool:
        with ThreadPoolExecutor(max_workers=args.threads) as executor:
            results = list(executor.map(send, parsed))
    else:
        results = [send(b) for b in parsed]
    inner_s = time.perf_counter() - started
    ok = sum(results)
    return {
        "ok": ok,
        "errors": len(results) - ok,
        "inner_s": inner_s,
        "first_error": first_error[0] if first_error else None,
    }


# --------------------------------------------------------------------------------------------
# command line


def _parse_latencies(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="bulksend vs. a bare aiohttp loop vs. the official scaleway SDK, against the sandbox.",
    )
    p.add_argument("--emails", type=int, default=20_000, help="emails for bulksend and the floor")
    p.add_argument(
        "--sdk-emails",
        type=int,
        default=None,
        help="emails for the SDK variants (default: 2,000 for the pool, 500 for the sequential loop)",
    )
    p.add_argument("--latencies", type=_parse_latencies, default=(20.0, 0.0), help="ms, e.g. '20,0'")
    p.add_argument("--sdk-threads", type=int, default=32)
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv", help="recipients file format")
    p.add_argument("--repeat", type=int, default=1, help="runs per client and latency; the median is shown")
    p.add_argument("--clients", default="floor,bulksend,sdk-pool,sdk-seq", help="which clients to run")
    p.add_argument(
        "--child-timeout-s", type=float, default=None, help="bound on each child (default: scaled)"
    )
    add_run_arguments(p, clients="the clients")
    # Internal: the measured children.
    p.add_argument("--child", choices=["floor", "sdk-pool", "sdk-seq"], help=argparse.SUPPRESS)
    p.add_argument("--bodies", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        out = _floor_child(args) if args.child == "floor" else _sdk_child(args, pool=args.child == "sdk-pool")
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
        return 0
    clients = tuple(c for c in args.clients.split(",") if c)
    unknown = set(clients) - set(CLIENT_LABELS)
    if unknown:
        print(f"unknown client(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    opts = CompareOptions(
        emails=args.emails,
        sdk_pool_emails=args.sdk_emails if args.sdk_emails is not None else 2_000,
        sdk_seq_emails=args.sdk_emails if args.sdk_emails is not None else 500,
        latencies_ms=args.latencies,
        sdk_threads=args.sdk_threads,
        recipients_format=args.format,
        repeat=max(1, args.repeat),
        child_timeout_s=args.child_timeout_s,
        clients=clients,
        **run_options(args),
    )
    opts.sdk_pool_emails = min(opts.sdk_pool_emails, opts.emails)
    opts.sdk_seq_emails = min(opts.sdk_seq_emails, opts.emails)
    result = run_compare(opts)
    print()
    print(format_report(result))
    write_raw(result, args.json)
    return 0  # targets are reported, not enforced


if __name__ == "__main__":
    sys.exit(main())
