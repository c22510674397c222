"""Smoke runs of the benchmark harness: tiny sizes, no added latency, no timing assertions.

They prove the harness still works end to end (sandbox process, generated campaign, measured
children, reports) as bulksend changes; the figures themselves come from the full runs described
in benchmarks/README.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from benchmarks.common import SandboxProcess, render_bodies, run_measured, write_campaign
from benchmarks.compare import CompareOptions, Measurement, _ratios, _summary, format_report, run_compare
from benchmarks.flow_nested import steady_rate
from benchmarks.million import MillionOptions, run_million
from benchmarks.rate_adherence import RateOptions, achieved_rate, per_second, run_rate_adherence

pytestmark = pytest.mark.slow


def test_compare_smoke_reports_every_client() -> None:
    """A 200-email compare run at 0 ms completes and reports figures for all four clients."""
    result = run_compare(
        CompareOptions(
            emails=200,
            sdk_pool_emails=20,
            sdk_seq_emails=10,
            latencies_ms=(0.0,),
            poll_interval_s=0.2,
            pin=False,
            quiet=True,
        )
    )
    summary = result["summary"]["0"]
    assert set(summary) == {"floor", "bulksend", "sdk-pool", "sdk-seq"}
    for client, row in summary.items():
        assert row["errors"] == 0, client
        assert row["throughput_per_s"] > 0, client
        assert row["cpu_us_per_email"] > 0, client
        assert row["max_rss_mb"] > 0, client
    assert summary["bulksend"]["final_outcomes"] == 200
    assert summary["floor"]["sandbox"]["requests"]["send"] == 200
    assert summary["sdk-pool"]["sandbox"]["emails_total"] == 20
    assert summary["sdk-seq"]["sandbox"]["emails_total"] == 10
    assert result["ratios"]["0"]["bulksend_over_floor_throughput"] is not None
    # The targets are judged at 20 ms, which this run did not measure.
    assert all(t["pass"] is None for t in result["targets"])
    report = format_report(result)
    assert "bulksend send (end to end)" in report
    assert "NOT RUN" in report


def test_cpu_ratio_compares_median_cpus_not_the_median_throughput_runs() -> None:
    """The CPU ratio divides each client's median CPU per email, whichever run was the median one
    by throughput (that run's CPU may be the noisiest of the three)."""

    def run(client: str, wall_s: float, cpu_s: float) -> Measurement:
        return Measurement(client, 20.0, 1000, wall_s, cpu_s, 1024, None, 0)

    floor = [run("floor", 1.0, 0.13), run("floor", 0.9, 0.145), run("floor", 0.8, 0.12)]
    bulksend = [run("bulksend", 1.2, 0.29), run("bulksend", 1.1, 0.285), run("bulksend", 1.0, 0.28)]
    summary = {"floor": _summary(floor), "bulksend": _summary(bulksend)}
    # The median-throughput floor run is the 0.145 s one; the median CPU is 0.13 s.
    assert summary["floor"]["cpu_us_per_email"] == pytest.approx(145.0)
    assert summary["floor"]["cpu_us_per_email_median"] == pytest.approx(130.0)
    ratios = _ratios(summary)
    assert ratios["bulksend_over_floor_cpu_per_email"] == pytest.approx(285.0 / 130.0)
    assert ratios["bulksend_over_floor_throughput"] == pytest.approx((1000 / 1.1) / (1000 / 0.9))


def test_million_smoke_reports_rss() -> None:
    """The million-recipient script, run on 200, tracks every email and reports bulksend's peak RSS."""
    result = run_million(MillionOptions(emails=200, poll_interval_s=0.2, pin=False, quiet=True))
    assert result["outcome_lines"] == 200
    assert result["final_outcomes"] == 200
    assert result["sandbox"]["emails_total"] == 200
    assert result["peak_rss_mb"] > 0
    assert result["target"]["pass"] is (result["peak_rss_mb"] <= 200)


def test_rate_adherence_smoke_counts_requests() -> None:
    """A tiny rate-limited run completes and reports 429s against the sandbox's request counts."""
    result = run_rate_adherence(
        RateOptions(rate_per_s=400, duration_s=0.5, poll_interval_s=0.2, pin=False, quiet=True)
    )
    assert result["accepted"] == 200
    assert result["total_requests"] >= 200
    assert 0.0 <= result["share_429"] <= 1.0
    assert [t["pass"] for t in result["targets"]].count(None) == 0


def test_achieved_rate_interpolates_the_sending_phase() -> None:
    """The sending phase runs from the interpolated first send to the interpolated last one."""
    # 0 accepted at t=1, 100 at t=2: the first send is at t=1.01; 200 is reached at t=3.
    samples = [(0.0, 0), (1.0, 0), (2.0, 100), (3.0, 200), (4.0, 200)]
    rate_and_span = achieved_rate(samples, 200)
    assert rate_and_span is not None
    rate, span = rate_and_span
    assert span == pytest.approx(1.99)
    assert rate == pytest.approx(199 / 1.99)
    assert per_second(samples, 200) == pytest.approx([100.0])
    assert achieved_rate(samples[:3], 200) is None  # the last send was never seen


def test_run_measured_reports_the_childs_own_memory() -> None:
    """Peak RSS comes from the child itself: a child holding 64 MiB reports at least that."""
    code = "b = bytearray(64 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"
    res = run_measured([sys.executable, "-c", code], timeout_s=60)
    res.check("the allocating child")
    assert res.max_rss_kb >= 64 * 1024
    assert res.cpu_s > 0


def test_run_measured_kills_a_child_past_its_bound() -> None:
    """A child that outlives its timeout is killed and reported as timed out."""
    res = run_measured([sys.executable, "-c", "import time; time.sleep(120)"], timeout_s=0.5)
    assert res.timed_out
    assert res.returncode == -9
    with pytest.raises(RuntimeError, match="timed out"):
        res.check("the sleeping child")


def test_sandbox_process_is_gone_after_the_block() -> None:
    """The sandbox child answers inside the block and no longer exists after it."""
    with SandboxProcess() as sandbox:
        pid = sandbox.pid
        assert sandbox.stats()["emails_total"] == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_generated_campaign_renders_one_body_per_recipient(tmp_path: Path) -> None:
    """A generated JSONL campaign renders every recipient, with its three variables filled in."""
    campaign = write_campaign(tmp_path / "c", 25, fmt="jsonl")
    bodies = tmp_path / "bodies.jsonl"
    assert render_bodies(campaign, bodies) == 25
    lines = bodies.read_bytes().splitlines()
    assert len(lines) == 25
    assert b"user24@example.org" in lines[-1]
    assert b"C00000024" in lines[-1]


def test_store_ops_smoke_measures_every_phase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The store micro-benchmark runs every phase on both stores and writes its figures."""
    from benchmarks.store_ops import main as store_ops_main

    out = tmp_path / "store.json"
    assert store_ops_main(["--rows", "300", "--repeat", "1", "--json", str(out)]) == 0
    report = capsys.readouterr().out
    for phase in ("suppress", "admit", "send", "final", "outcomes", "total"):
        assert phase in report
    assert out.stat().st_size > 0


def test_render_ops_smoke_measures_read_and_render(tmp_path: Path) -> None:
    """The render micro-benchmark reads and renders a generated campaign, for both template kinds."""
    from benchmarks.render_ops import run_render_ops

    for templates in ("plain", "jinja"):
        result = run_render_ops(200, fmt="csv", templates=templates, repeat=1)
        assert result["rows"] == 200
        for label in ("read", "render", "both"):
            assert result[label]["cpu_us_per_row"] > 0


def test_flow_benchmark_reads_counters_between_samples() -> None:
    """benchmarks.flow interpolates the sandbox's counters between samples and counts each whole
    second of the sending phase from the first email created."""
    from benchmarks.flow import Run, Sample

    samples = [
        Sample(t=0.0, created=0, requests=0, throttled=0, outage=0),
        Sample(t=1.0, created=0, requests=10, throttled=0, outage=0),
        Sample(t=2.0, created=100, requests=120, throttled=10, outage=0),
        Sample(t=3.0, created=200, requests=230, throttled=20, outage=0),
    ]
    run = Run(emails=200, samples=samples, stats={}, wall_s=3.0, summary="")
    assert run.created_between(1.5, 2.5) == pytest.approx(100.0)
    assert run.requests_between(0.0, 3.0) == pytest.approx(230.0)
    assert run.throttled_between(1.0, 3.0) == pytest.approx(20.0)
    assert run.first_created_t() == 2.0
    assert run.last_created_t() == 3.0
    assert run.per_second() == [(100.0, 10.0)]


def test_steady_rate_leaves_out_the_ramps() -> None:
    """The nested-rates benchmark's steady rate counts the middle 80 % of the creation times: a
    slow start and a straggler at the end do not move it."""
    times = [0.0, 5.0] + [5.0 + i / 40 for i in range(1, 81)] + [60.0]
    assert steady_rate(times) == pytest.approx(40.0, rel=0.05)
    assert steady_rate([1.0, 2.0]) is None
