"""Does bulksend hold a configured rate against a server that enforces exactly that rate?

A ``rate_per_s = 500`` campaign is sent to a sandbox limited to 500 requests/s (``--rate-limit
500``, its default burst of rate/10) for about 30 s (15,000 emails). While it runs, the sandbox's
``/_sandbox/stats`` counters are sampled; the achieved rate is the accepted sends over the sending
phase (first to last accepted send, interpolated between samples), cross-checked against the
creation times TEM reports in the outcomes file. Targets: achieved rate ≥ 97 % of 500/s, and 429
answers ≤ 0.5 % of all API requests.

Usage::

    python -m benchmarks.rate_adherence
    python -m benchmarks.rate_adherence --rate 200 --duration-s 10 --json rate.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    SandboxProcess,
    SendOptions,
    add_run_arguments,
    describe_machine,
    prepare,
    run_options,
    stamped,
    workbench,
    write_campaign,
    write_report,
)

__all__ = ["RateOptions", "achieved_rate", "main", "per_second", "run_rate_adherence"]

MIN_RATE_SHARE = 0.97
MAX_429_SHARE = 0.005


@dataclass
class RateOptions(SendOptions):
    """What to run; the defaults are the benchmark's."""

    rate_per_s: float = 500.0
    server_limit_per_s: float | None = 500.0
    """The sandbox's limit (``None``: unlimited, to see bulksend's own pacing alone)."""
    duration_s: float = 30.0
    sample_interval_s: float = 0.25
    timeout_s: float | None = None

    @property
    def emails(self) -> int:
        return max(1, round(self.rate_per_s * self.duration_s))


def _crossing(samples: Sequence[tuple[float, int]], level: float) -> float | None:
    """The time at which the sampled counter reached ``level``, linearly interpolated."""
    prev_t, prev_v = None, None
    for t, v in samples:
        if v >= level:
            if prev_t is None or prev_v is None or v == prev_v:
                return t
            return prev_t + (t - prev_t) * (level - prev_v) / (v - prev_v)
        prev_t, prev_v = t, v
    return None


def achieved_rate(samples: Sequence[tuple[float, int]], total: int) -> tuple[float, float] | None:
    """(rate, duration) of the sending phase from ``(time_s, accepted_sends)`` samples.

    The phase runs from the first accepted send to the last one; both ends are interpolated
    between samples, so the sampling interval does not stretch or shrink it. ``None`` when the
    samples do not cover it.
    """
    if total < 2:
        return None
    start = _crossing(samples, 1)
    end = _crossing(samples, total)
    if start is None or end is None or end <= start:
        return None
    return (total - 1) / (end - start), end - start


def per_second(samples: Sequence[tuple[float, int]], total: int) -> list[float]:
    """Accepted sends in each whole second of the sending phase (interpolated between samples)."""
    start = _crossing(samples, 1)
    end = _crossing(samples, total)
    if start is None or end is None:
        return []
    out: list[float] = []
    t = start
    while t + 1.0 <= end:
        out.append(_value_at(samples, t + 1.0) - _value_at(samples, t))
        t += 1.0
    return out


def _value_at(samples: Sequence[tuple[float, int]], t: float) -> float:
    prev: tuple[float, int] | None = None
    for s_t, s_v in samples:
        if s_t >= t:
            if prev is None or s_t == prev[0]:
                return float(s_v)
            return prev[1] + (s_v - prev[1]) * (t - prev[0]) / (s_t - prev[0])
        prev = (s_t, s_v)
    return float(samples[-1][1]) if samples else 0.0


def _outcome_rate(outcomes: Path) -> float | None:
    """Sends/s from the creation times in the outcomes file (TEM's own clock)."""
    times: list[float] = []
    with open(outcomes, "rb") as f:
        for line in f:
            at = orjson.loads(line).get("submitted_at")
            if at:
                times.append(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp())
    if len(times) < 2:
        return None
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else None


def run_rate_adherence(opts: RateOptions) -> dict[str, Any]:
    """Run the campaign against the rate-limited sandbox; returns numbers and verdicts."""
    machine = prepare()
    n = opts.emails
    samples: list[tuple[float, int]] = []  # (seconds since the child started, emails accepted)
    with workbench("bulksend-bench-rate-", opts.pin) as bench:
        campaign = write_campaign(
            bench.work,
            n,
            rate_per_s=opts.rate_per_s,
            concurrency=opts.concurrency,
            poll_interval_s=opts.poll_interval_s,
        )
        with SandboxProcess(
            final_after_s=opts.final_after_s,
            rate_limit_per_s=opts.server_limit_per_s,
            cpus=bench.cpus.sandbox,
        ) as sandbox:

            def sample(pid: int, started: float) -> bool:
                try:
                    t, accepted = stamped(lambda: int(sandbox.stats()["emails_total"]), started)
                except OSError:
                    return False
                samples.append((t, accepted))
                return accepted < n

            if not opts.quiet:
                limit = f"{opts.server_limit_per_s:g}/s" if opts.server_limit_per_s else "nothing"
                print(
                    f"sending {n:,} emails at rate_per_s={opts.rate_per_s:g} to a sandbox limited to "
                    f"{limit} ({sandbox.url}, {bench.cpus.describe()})…",
                    flush=True,
                )
            res = bench.send_sampled(
                campaign,
                sandbox,
                sample,
                interval_s=opts.sample_interval_s,
                timeout_s=opts.timeout_s or 120.0 + 3 * opts.duration_s,
            )
            stats = sandbox.stats()
        outcome_rate = _outcome_rate(bench.work / "out" / "bench.jsonl")

    phase = achieved_rate(samples, n)
    requests: dict[str, int] = stats["requests"]
    total_requests = sum(requests.values())
    rate_limited = int(stats["rate_limited"])
    share_429 = rate_limited / total_requests if total_requests else 0.0
    rate = phase[0] if phase else None
    return {
        "machine": machine,
        "options": asdict(opts),
        "cpus": bench.cpus.describe(),
        "emails": n,
        "accepted": stats["emails_total"],
        "wall_s": res.wall_s,
        "sending_phase_s": phase[1] if phase else None,
        "achieved_rate_per_s": rate,
        "achieved_rate_from_outcomes_per_s": outcome_rate,
        "requests": requests,
        "total_requests": total_requests,
        "rate_limited": rate_limited,
        "share_429": share_429,
        "samples": len(samples),
        "per_second": [round(v, 1) for v in per_second(samples, n)],
        "targets": [
            {
                "target": f"achieved rate ≥ {MIN_RATE_SHARE:.0%} of {opts.rate_per_s:g}/s",
                "value": rate,
                "bound": MIN_RATE_SHARE * opts.rate_per_s,
                "pass": rate is not None and rate >= MIN_RATE_SHARE * opts.rate_per_s,
            },
            {
                "target": f"429s ≤ {MAX_429_SHARE:.1%} of requests",
                "value": share_429,
                "bound": MAX_429_SHARE,
                "pass": share_429 <= MAX_429_SHARE,
            },
        ],
    }


def format_report(result: dict[str, Any]) -> str:
    """The figures and the PASS/FAIL lines, as printed."""
    m = result["machine"]
    rate = result["achieved_rate_per_s"]
    from_outcomes = result["achieved_rate_from_outcomes_per_s"]
    target = result["options"]["rate_per_s"]
    lines = [
        describe_machine(m),
        f"CPUs: {result['cpus']}",
        f"emails          : {result['emails']:,} sent, {result['accepted']:,} accepted by the sandbox",
        f"wall time       : {result['wall_s']:.1f} s (bulksend start to exit, tracking included)",
        "sending phase   : "
        + (
            f"{result['sending_phase_s']:.2f} s, {rate:,.1f} sends/s = {rate / target:.1%} of {target:g}/s"
            if rate
            else "not measured"
        ),
        "from outcomes   : "
        + (f"{from_outcomes:,.1f} sends/s (TEM creation times)" if from_outcomes else "n/a"),
        f"API requests    : {result['total_requests']:,} "
        + "("
        + ", ".join(f"{k} {v:,}" for k, v in result["requests"].items() if v)
        + f"); 429: {result['rate_limited']:,} = {result['share_429']:.3%}",
    ]
    if result["per_second"]:
        secs = result["per_second"]
        lines.append(
            f"per second      : min {min(secs):,.0f}, max {max(secs):,.0f}; "
            + " ".join(f"{v:.0f}" for v in secs)
        )
    for t in result["targets"]:
        lines.append(f"{'PASS' if t['pass'] else 'FAIL'}: {t['target']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.rate_adherence", description=__doc__.splitlines()[0]
    )
    p.add_argument("--rate", type=float, default=500.0, help="campaign rate_per_s and sandbox limit")
    p.add_argument(
        "--server-limit",
        type=float,
        default=None,
        help="the sandbox's limit in requests/s (default: --rate; 0: no limit, bulksend's pacing alone)",
    )
    p.add_argument("--duration-s", type=float, default=30.0, help="rate × duration emails are sent")
    add_run_arguments(p)
    args = p.parse_args(argv)
    server_limit = (args.rate if args.server_limit is None else args.server_limit) or None
    opts = RateOptions(
        rate_per_s=args.rate, server_limit_per_s=server_limit, duration_s=args.duration_s, **run_options(args)
    )
    result = run_rate_adherence(opts)
    write_report(format_report(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
