"""Smoke run of the report benchmark: a few hundred rows, no timing assertion."""

from __future__ import annotations

import pytest

from benchmarks.report_html import ReportOptions, format_report, run_report_benchmark

pytestmark = pytest.mark.slow


def test_report_benchmark_smoke_measures_both_children() -> None:
    """On 300 synthetic rows both measured children write a report, and the figures are reported."""
    result = run_report_benchmark(ReportOptions(rows=300, quiet=True))
    assert result["write_report"]["rows"] == 300
    for key in ("write_report", "report_command"):
        assert result[key]["html_bytes"] > 10_000
        assert result[key]["max_rss_mb"] > 0
    assert result["write_report"]["resend_rows"] > 0
    size, rss = result["targets"]
    assert size["pass"]
    # Not judged here: wait4's peak RSS of a child forked from this (large) test process may
    # count the parent's pages from before the exec.
    assert rss["target"] == "peak RSS under 200 MB"
    assert "HTML report of 300 outcomes" in format_report(result)
