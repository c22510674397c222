"""One million recipients through ``bulksend send``: wall time, throughput and peak RSS.

The recipients CSV is generated in a temporary folder with streaming writes; the sandbox runs in
its own process with a fast lifecycle (final 0.2 s after the send) and no added latency. bulksend
runs as a child process, measured on its own (``os.wait4``): the target is a peak RSS of at most
200 MB, i.e. memory that does not grow with the recipient list. Its RSS is also sampled from /proc
while it runs, to show the curve. (The sandbox keeps every email in memory, about 400 MB for a
million: that is the sandbox, not bulksend.)

Usage::

    python -m benchmarks.million                  # 1,000,000 recipients (a few minutes)
    python -m benchmarks.million --emails 200000 --json million.json
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from benchmarks.common import (
    SandboxProcess,
    SendOptions,
    add_run_arguments,
    describe_machine,
    prepare,
    read_proc_cpu_s,
    read_proc_rss_kb,
    run_options,
    workbench,
    write_campaign,
    write_report,
)

__all__ = ["MillionOptions", "main", "run_million"]

RSS_TARGET_MB = 200.0


@dataclass
class MillionOptions(SendOptions):
    """What to run; the defaults are the benchmark's."""

    emails: int = 1_000_000
    recipients_format: Literal["csv", "jsonl"] = "csv"
    timeout_s: float = 3600.0
    sample_interval_s: float = 1.0
    progress_every_s: float = 30.0


def _count_final(outcomes: Path) -> tuple[int, int]:
    lines = final = 0
    with open(outcomes, "rb") as f:
        for line in f:
            lines += 1
            if b'"status":"sent"' in line or b'"status":"failed"' in line:
                final += 1
    return lines, final


def run_million(opts: MillionOptions) -> dict[str, Any]:
    """Generate, send, track; returns the raw numbers (and the RSS verdict)."""
    machine = prepare()
    samples: list[tuple[float, int]] = []  # (seconds since start, RSS KiB)
    with workbench("bulksend-bench-million-", opts.pin) as bench:
        started = time.monotonic()
        campaign = write_campaign(
            bench.work,
            opts.emails,
            fmt=opts.recipients_format,
            concurrency=opts.concurrency,
            poll_interval_s=opts.poll_interval_s,
        )
        gen_s = time.monotonic() - started
        if not opts.quiet:
            size_mb = (bench.work / f"recipients.{opts.recipients_format}").stat().st_size / 1e6
            print(f"generated {opts.emails:,} recipients ({size_mb:,.0f} MB) in {gen_s:.1f} s", flush=True)
        with SandboxProcess(final_after_s=opts.final_after_s, cpus=bench.cpus.sandbox) as sandbox:
            next_note = opts.progress_every_s

            def sample(pid: int, started: float) -> bool:
                # /proc only: asking the sandbox for its stats would serialise a map of every
                # recipient, disturbing the very run being measured.
                nonlocal next_note
                rss = read_proc_rss_kb(pid)
                if rss is None:
                    return False
                elapsed = time.monotonic() - started
                samples.append((elapsed, rss[0]))
                if not opts.quiet and elapsed >= next_note:
                    next_note += opts.progress_every_s
                    print(
                        f"  {elapsed:6.0f} s: bulksend RSS {rss[0] / 1024:.0f} MB, "
                        f"CPU {read_proc_cpu_s(pid) or 0:.0f} s; sandbox CPU "
                        f"{sandbox.cpu_s() - sandbox_cpu_at_start:.0f} s",
                        flush=True,
                    )
                return True

            sandbox_cpu_at_start = sandbox.cpu_s()
            if not opts.quiet:
                print(f"sending through {sandbox.url} ({bench.cpus.describe()})…", flush=True)
            res = bench.send_sampled(
                campaign,
                sandbox,
                sample,
                interval_s=opts.sample_interval_s,
                first_after_s=opts.sample_interval_s,
                join_timeout_s=10,
                timeout_s=opts.timeout_s,
            )
            sandbox_cpu = sandbox.cpu_s() - sandbox_cpu_at_start
            stats = sandbox.stats()
            sandbox_rss = sandbox.rss_kb()
        lines, final = _count_final(bench.work / "out" / "bench.jsonl")
    peak_mb = res.max_rss_kb / 1024
    return {
        "machine": machine,
        "options": asdict(opts),
        "cpus": bench.cpus.describe(),
        "campaign": str(campaign.name),
        "emails": opts.emails,
        "wall_s": res.wall_s,
        "throughput_per_s": opts.emails / res.wall_s,
        "cpu_s": res.cpu_s,
        "cpu_us_per_email": res.cpu_s * 1e6 / opts.emails,
        "peak_rss_mb": peak_mb,
        "rss_samples": [(round(t, 1), round(kb / 1024, 1)) for t, kb in samples],
        "outcome_lines": lines,
        "final_outcomes": final,
        "sandbox": {k: stats[k] for k in ("requests", "rate_limited", "emails_total") if k in stats},
        "sandbox_peak_rss_mb": sandbox_rss[1] / 1024 if sandbox_rss else None,
        "sandbox_cpu_s": sandbox_cpu,
        # Above ~80 % of one core, the sandbox (not bulksend) sets the pace.
        "sandbox_cpu_share": sandbox_cpu / res.wall_s if res.wall_s else 0.0,
        "target": {"peak_rss_mb_max": RSS_TARGET_MB, "pass": peak_mb <= RSS_TARGET_MB},
    }


def format_report(result: dict[str, Any]) -> str:
    """The figures and the PASS/FAIL line, as printed."""
    m = result["machine"]
    samples: list[tuple[float, float]] = result["rss_samples"]
    curve = ""
    if samples:
        picks = [samples[min(len(samples) - 1, round(i * (len(samples) - 1) / 10))] for i in range(11)]
        curve = " → ".join(f"{mb:.0f}" for _, mb in picks)
    sandbox_mb = result["sandbox_peak_rss_mb"]
    lines = [
        describe_machine(m),
        f"CPUs: {result['cpus']}",
        f"recipients      : {result['emails']:,} ({result['options']['recipients_format']}, streamed)",
        f"wall time       : {result['wall_s']:,.1f} s (start to exit: send, track to final, write outcomes)",
        f"throughput      : {result['throughput_per_s']:,.0f} emails/s",
        f"CPU             : {result['cpu_s']:,.1f} s ({result['cpu_us_per_email']:.0f} µs/email)",
        f"bulksend RSS    : peak {result['peak_rss_mb']:.1f} MB; over the run (MB, every 10 %): {curve}",
        f"outcomes        : {result['outcome_lines']:,} lines, {result['final_outcomes']:,} final",
        f"sandbox         : {result['sandbox'].get('emails_total', 0):,} emails stored"
        + (f", its own peak RSS {sandbox_mb:,.0f} MB" if sandbox_mb else "")
        + f", busy {result['sandbox_cpu_share']:.0%} of the run"
        + (" (it, not bulksend, set the pace)" if result["sandbox_cpu_share"] >= 0.8 else ""),
        f"{'PASS' if result['target']['pass'] else 'FAIL'}: bulksend peak RSS {result['peak_rss_mb']:.1f} MB "
        f"(target ≤ {result['target']['peak_rss_mb_max']:g} MB)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.million", description=__doc__.splitlines()[0])
    p.add_argument("--emails", type=int, default=1_000_000)
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv", help="recipients file format")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="bound on the bulksend run")
    add_run_arguments(p)
    args = p.parse_args(argv)
    opts = MillionOptions(
        emails=args.emails, recipients_format=args.format, timeout_s=args.timeout_s, **run_options(args)
    )
    result = run_million(opts)
    write_report(format_report(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
