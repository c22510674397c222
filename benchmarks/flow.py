"""Flow control against the sandbox: an unknown account limit, stray faults, a full outage.

Each scenario runs ``bulksend send`` as a child process against a sandbox child process and
samples the sandbox's ``/_sandbox/stats`` every 0.25 s (emails created, requests, 429s):

1. **unknown limit**: the sandbox enforces L ∈ {50, 200, 1000}/s, the campaign says
   ``rate_per_s = 10 × L``. Targets: steady rate ≥ 90 % of L, 429s ≤ 3 % of requests, converged
   within 10 s (the first 2-s window at ≥ 90 % of L with ≤ 3 % 429s).
2. **stray faults**: a 400/s account with 3 % 5xx (half before, half after the email is created)
   and 1 % dropped connections, 2,000 emails. Targets: steady rate ≥ 85 % of 400/s, the whole run
   ≤ ideal + ``settle_s`` + 10 s, tracking and reconciliation ≤ 0.02 calls per email.
3. **outage**: a 300/s run whose sandbox answers a bare 503 to everything for 8 s. Targets:
   ≤ 10 % of the normal call rate during it, ≥ 80 % of the rate 2–5 s after, 0 duplicates, 0 lost.
4. **nested rates**: the daemon with two campaigns at their own ``rate_per_s`` and a job stream
   (``benchmarks.flow_nested``).

Usage::

    python -m benchmarks.flow                       # every scenario
    python -m benchmarks.flow --scenario 1 --limit 200
    python -m benchmarks.flow --scenario 3 --json flow.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import flow_nested
from benchmarks.common import (
    SandboxProcess,
    describe_machine,
    prepare,
    stamped,
    workbench,
    write_campaign,
    write_raw,
)

__all__ = ["Sample", "main", "scenario_faults", "scenario_outage", "scenario_unknown_limit"]

SAMPLE_S = 0.25


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the sandbox's counters, ``t`` seconds after the client started."""

    t: float
    created: int
    requests: int
    throttled: int
    outage: int


@dataclass
class Run:
    """What one ``bulksend send`` against one sandbox gave."""

    emails: int
    samples: list[Sample]
    stats: dict[str, Any]
    wall_s: float
    summary: str
    events: dict[str, float] = field(default_factory=dict)

    def created_between(self, start: float, end: float) -> float:
        return _at(self.samples, end, "created") - _at(self.samples, start, "created")

    def requests_between(self, start: float, end: float) -> float:
        return _at(self.samples, end, "requests") - _at(self.samples, start, "requests")

    def throttled_between(self, start: float, end: float) -> float:
        return _at(self.samples, end, "throttled") - _at(self.samples, start, "throttled")

    def per_second(self) -> list[tuple[float, float]]:
        """(emails created, 429s) in each whole second from the first email created."""
        out: list[tuple[float, float]] = []
        t, end = self.first_created_t(), self.samples[-1].t if self.samples else 0.0
        while t + 1.0 <= end:
            out.append(
                (round(self.created_between(t, t + 1.0), 1), round(self.throttled_between(t, t + 1.0), 1))
            )
            t += 1.0
        return out

    def first_created_t(self) -> float:
        return next((s.t for s in self.samples if s.created > 0), 0.0)

    def last_created_t(self) -> float:
        return next((s.t for s in self.samples if s.created >= self.emails), self.samples[-1].t)


def _at(samples: Sequence[Sample], t: float, name: str) -> float:
    """The counter ``name`` at time ``t``, linearly interpolated between samples."""
    prev: Sample | None = None
    for s in samples:
        if s.t >= t:
            if prev is None or s.t == prev.t:
                return float(getattr(s, name))
            a, b = float(getattr(prev, name)), float(getattr(s, name))
            return a + (b - a) * (t - prev.t) / (s.t - prev.t)
        prev = s
    return float(getattr(samples[-1], name)) if samples else 0.0


def _run(
    emails: int,
    *,
    rate_per_s: float,
    sandbox: dict[str, Any],
    settle_s: float | None = None,
    poll_interval_s: float = 1.0,
    during: Callable[[SandboxProcess, Sample, dict[str, float]], None] | None = None,
    timeout_s: float = 600.0,
) -> Run:
    """Send ``emails`` at ``rate_per_s`` to a sandbox started with ``sandbox`` options."""
    samples: list[Sample] = []
    events: dict[str, float] = {}
    with workbench("bulksend-bench-flow-") as bench:
        campaign = write_campaign(
            bench.work, emails, rate_per_s=rate_per_s, poll_interval_s=poll_interval_s, settle_s=settle_s
        )
        with SandboxProcess(final_after_s=0.2, cpus=bench.cpus.sandbox, **sandbox) as sb:

            def read(pid: int, started: float) -> bool:
                try:
                    t, st = stamped(sb.stats, started)
                except OSError:
                    return False
                sample = Sample(
                    t=t,
                    created=int(st["emails_total"]),
                    requests=sum(int(v) for v in st["requests"].values()),
                    throttled=int(st["rate_limited"]),
                    outage=int(st.get("outage_answers") or 0),
                )
                samples.append(sample)
                if during is not None:
                    during(sb, sample, events)
                return True

            res = bench.send_sampled(campaign, sb, read, interval_s=SAMPLE_S, timeout_s=timeout_s)
            stats = sb.full_stats()
    return Run(emails, samples, stats, res.wall_s, res.stdout, events)


def _target(name: str, value: float | None, bound: float, ok: bool) -> dict[str, Any]:
    return {"target": name, "value": value, "bound": bound, "pass": ok}


def _found_line(summary: str) -> str | None:
    return next((line.strip() for line in summary.splitlines() if "found the account's limit" in line), None)


def scenario_unknown_limit(limit_per_s: float, *, duration_s: float = 25.0) -> dict[str, Any]:
    """Scenario 1 for one account limit L: the campaign is configured at 10 × L."""
    n = round(limit_per_s * duration_s)
    run = _run(n, rate_per_s=10 * limit_per_s, sandbox={"rate_limit_per_s": limit_per_s})
    start, end = run.first_created_t(), run.last_created_t()
    converged: float | None = None
    t = start
    while t + 2.0 <= end:
        created = run.created_between(t, t + 2.0) / 2.0
        requests = run.requests_between(t, t + 2.0)
        share = run.throttled_between(t, t + 2.0) / requests if requests else 0.0
        if created >= 0.9 * limit_per_s and share <= 0.03:
            converged = t - start
            break
        t += SAMPLE_S
    steady_from = start + (converged if converged is not None else 10.0)
    steady = run.created_between(steady_from, end) / (end - steady_from) if end > steady_from else None
    total = run.samples[-1].requests if run.samples else 0
    throttled = run.samples[-1].throttled if run.samples else 0
    share_429 = throttled / total if total else 0.0
    return {
        "scenario": 1,
        "limit_per_s": limit_per_s,
        "rate_per_s": 10 * limit_per_s,
        "emails": n,
        "wall_s": run.wall_s,
        "converged_s": converged,
        "steady_rate_per_s": steady,
        "requests": total,
        "throttled": throttled,
        "share_429": share_429,
        "per_second": run.per_second(),
        "summary_line": _found_line(run.summary),
        "targets": [
            _target(
                f"steady rate ≥ 90 % of {limit_per_s:g}/s",
                steady,
                0.9 * limit_per_s,
                steady is not None and steady >= 0.9 * limit_per_s,
            ),
            _target("429s ≤ 3 % of requests", share_429, 0.03, share_429 <= 0.03),
            _target("converged within 10 s", converged, 10.0, converged is not None and converged <= 10.0),
        ],
    }


def scenario_faults(*, emails: int = 2000, settle_s: float = 5.0) -> dict[str, Any]:
    """Scenario 2: a 400/s account with 3 % 5xx and 1 % dropped connections."""
    account = 400.0
    run = _run(
        emails,
        rate_per_s=account,
        settle_s=settle_s,
        sandbox={
            "rate_limit_per_s": account,
            "fault_5xx_before": 0.015,
            "fault_5xx_after": 0.015,
            "fault_drop": 0.01,
            "seed": 13,
        },
    )
    start = run.first_created_t()
    # The sending phase: up to the last email created before reconciliation's resends.
    first_pass = next((s.t for s in run.samples if s.created >= 0.95 * emails), run.last_created_t())
    steady = 0.95 * emails / (first_pass - start) if first_pass > start else None
    ideal_s = emails / account
    requests = run.stats["requests"]
    tracking = int(requests.get("list", 0)) + int(requests.get("get", 0))
    per_email = tracking / emails
    dupes = sum(1 for v in run.stats["accepted_by_recipient"].values() if v > 1)
    lost = emails - len(run.stats["accepted_by_recipient"])
    bound = ideal_s + settle_s + 10.0
    return {
        "scenario": 2,
        "emails": emails,
        "settle_s": settle_s,
        "wall_s": run.wall_s,
        "steady_rate_per_s": steady,
        "requests": requests,
        "faults": run.stats["faults"],
        "throttled": run.stats["rate_limited"],
        "per_second": run.per_second(),
        "tracking_calls_per_email": per_email,
        "duplicates": dupes,
        "lost": lost,
        "targets": [
            _target("steady rate ≥ 85 % of 400/s", steady, 340.0, steady is not None and steady >= 340.0),
            _target(
                f"whole run ≤ ideal {ideal_s:g} s + settle_s {settle_s:g} s + 10 s",
                run.wall_s,
                bound,
                run.wall_s <= bound,
            ),
            _target("tracking + reconciliation ≤ 0.02 calls per email", per_email, 0.02, per_email <= 0.02),
            _target("0 duplicates, 0 lost", dupes + lost, 0, dupes == 0 and lost == 0),
        ],
    }


def scenario_outage(
    *, rate_per_s: float = 300.0, outage_s: float = 8.0, duration_s: float = 25.0
) -> dict[str, Any]:
    """Scenario 3: an 8-s full outage (bare 503) once a fifth of the emails went out."""
    n = round(rate_per_s * duration_s)

    def during(sb: SandboxProcess, sample: Sample, events: dict[str, float]) -> None:
        if "outage_start" not in events and sample.created >= n // 5:
            sb.outage(outage_s, 503)
            events["outage_start"] = sample.t
            events["outage_end"] = sample.t + outage_s

    run = _run(n, rate_per_s=rate_per_s, sandbox={}, settle_s=5.0, during=during)
    begin, end = run.events["outage_start"], run.events["outage_end"]
    calls_during = run.requests_between(begin + 0.5, end) / (outage_s - 0.5)
    after = run.created_between(end + 2.0, end + 5.0) / 3.0
    dupes = sum(1 for v in run.stats["accepted_by_recipient"].values() if v > 1)
    lost = n - len(run.stats["accepted_by_recipient"])
    return {
        "scenario": 3,
        "emails": n,
        "rate_per_s": rate_per_s,
        "wall_s": run.wall_s,
        "outage_answers": run.stats.get("outage_answers"),
        "calls_per_s_during": calls_during,
        "rate_2_5_s_after": after,
        "per_second": run.per_second(),
        "duplicates": dupes,
        "lost": lost,
        "targets": [
            _target(
                "≤ 10 % of the normal call rate during the outage (from 0.5 s in)",
                calls_during,
                0.1 * rate_per_s,
                calls_during <= 0.1 * rate_per_s,
            ),
            _target(
                "≥ 80 % of the rate 2–5 s after it ends", after, 0.8 * rate_per_s, after >= 0.8 * rate_per_s
            ),
            _target("0 duplicates, 0 lost", dupes + lost, 0, dupes == 0 and lost == 0),
        ],
    }


def scenario_nested() -> dict[str, Any]:
    """Scenario 4, measured by ``benchmarks.flow_nested``."""
    return flow_nested.scenario_nested()


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1 else f"{value:,.1f}"
    return str(value)


def format_report(results: list[dict[str, Any]]) -> str:
    """The PASS/FAIL lines of every scenario, as printed."""
    lines: list[str] = []
    for r in results:
        head = {k: v for k, v in r.items() if k not in ("targets", "requests", "faults", "per_second")}
        lines.append(" ".join(f"{k}={_fmt(v)}" for k, v in head.items()))
        for t in r.get("targets", []):
            verdict = "PASS" if t["pass"] else "FAIL"
            lines.append(f"  {verdict}: {t['target']}: {_fmt(t['value'])} (bound {_fmt(t['bound'])})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flow", description=__doc__.splitlines()[0])
    p.add_argument("--scenario", type=int, choices=(1, 2, 3, 4), action="append", help="run only these")
    p.add_argument("--limit", type=float, action="append", help="scenario 1's account limits (50, 200, 1000)")
    p.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    args = p.parse_args(argv)
    chosen = set(args.scenario or (1, 2, 3, 4))
    machine = prepare()
    print(describe_machine(machine), flush=True)
    results: list[dict[str, Any]] = []
    if 1 in chosen:
        for limit in args.limit or (50.0, 200.0, 1000.0):
            results.append(scenario_unknown_limit(limit))
            print(format_report(results[-1:]), flush=True)
    if 2 in chosen:
        results.append(scenario_faults())
        print(format_report(results[-1:]), flush=True)
    if 3 in chosen:
        results.append(scenario_outage())
        print(format_report(results[-1:]), flush=True)
    if 4 in chosen:
        results.append(scenario_nested())
        print(format_report(results[-1:]), flush=True)
    write_raw({"machine": machine, "results": results}, args.json)
    return 0  # a report, not a gate (see benchmarks/README.md)


if __name__ == "__main__":
    sys.exit(main())
