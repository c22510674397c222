"""Metrics: counters and gauges move with the calls the daemon makes; scrape output parses."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bulksend.metrics import Metrics
from bulksend.sandbox import Sandbox
from bulksend.tem.client import TemClient
from tests.conftest import settings_for


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def families(m: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    body, _ = m.render()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_api_responses_count_by_endpoint_and_code() -> None:
    """on_api_response counts calls per endpoint/code, 429s as throttled, transport errors as code 0."""
    m = Metrics(process_metrics=False)
    m.on_api_response("send", 200, 0.05)
    m.on_api_response("send", 200, 0.07)
    m.on_api_response("send", 429, 0.01)
    m.on_api_response("list", 0, 30.0)
    assert value(m, "bulksend_api_calls_total", endpoint="send", code="200") == 2
    assert value(m, "bulksend_api_calls_total", endpoint="send", code="429") == 1
    assert value(m, "bulksend_api_calls_total", endpoint="list", code="0") == 1
    assert value(m, "bulksend_api_throttled_total") == 1
    assert value(m, "bulksend_api_call_duration_seconds_count", endpoint="send") == 3
    assert value(m, "bulksend_api_call_duration_seconds_bucket", endpoint="list", le="10.0") == 0
    assert value(m, "bulksend_api_call_duration_seconds_bucket", endpoint="list", le="30.0") == 1


def test_outcomes_count_per_campaign_and_can_be_forgotten() -> None:
    """observe_outcome counts final outcomes per campaign/status; forget_campaign drops its series."""
    m = Metrics(process_metrics=False)
    m.observe_outcome("spring", "sent")
    m.observe_outcome("spring", "sent")
    m.observe_outcome("spring", "failed")
    m.observe_outcome("autumn", "rejected", 5)
    m.observe_outcome("autumn", "sent", 0)
    assert value(m, "bulksend_emails_total", campaign="spring", status="sent") == 2
    assert value(m, "bulksend_emails_total", campaign="spring", status="failed") == 1
    assert value(m, "bulksend_emails_total", campaign="autumn", status="rejected") == 5
    assert value(m, "bulksend_emails_total", campaign="autumn", status="sent") is None
    m.forget_campaign("spring")
    assert value(m, "bulksend_emails_total", campaign="spring", status="sent") is None
    assert value(m, "bulksend_emails_total", campaign="autumn", status="rejected") == 5


def test_gauges_follow_the_last_value_set() -> None:
    """The limiter, in-flight, backlog and queue-lag gauges show the last value given."""
    m = Metrics(process_metrics=False)
    m.set_limiter_rate(100)
    m.set_limiter_rate(62.5)
    m.set_in_flight(12)
    m.set_backlog(3400)
    m.set_queue_lag("nats", 17)
    m.set_queue_lag("redis", 0)
    assert value(m, "bulksend_limiter_rate_per_second") == 62.5
    assert value(m, "bulksend_in_flight_emails") == 12
    assert value(m, "bulksend_tracker_backlog_emails") == 3400
    assert value(m, "bulksend_queue_lag_messages", source="nats") == 17
    assert value(m, "bulksend_queue_lag_messages", source="redis") == 0


def test_jobs_and_dead_letters_count_by_source() -> None:
    """job() and dead_letter() count queue messages per source and result/reason kind."""
    m = Metrics(process_metrics=False)
    m.job("nats", "admitted")
    m.job("nats", "admitted")
    m.job("nats", "duplicate")
    m.job("rabbitmq", "dead_lettered")
    m.dead_letter("rabbitmq", "bad_json")
    assert value(m, "bulksend_jobs_total", source="nats", result="admitted") == 2
    assert value(m, "bulksend_jobs_total", source="nats", result="duplicate") == 1
    assert value(m, "bulksend_jobs_total", source="rabbitmq", result="dead_lettered") == 1
    assert value(m, "bulksend_dead_letters_total", source="rabbitmq", reason_kind="bad_json") == 1


def test_callback_gauges_are_read_at_scrape_time() -> None:
    """A callback gauge shows what its callback returns at each scrape, labelled or not."""
    m = Metrics(process_metrics=False)
    running = [1.0]
    lag: dict[tuple[str, ...], float] = {("nats",): 4.0}
    m.add_gauge_callback("bulksend_campaigns_running", lambda: running[-1], documentation="Running.")
    m.add_gauge_callback("bulksend_source_lag", lambda: lag, labelnames=["source"])
    assert families(m)["bulksend_campaigns_running"] == [({}, 1.0)]
    assert families(m)["bulksend_source_lag"] == [({"source": "nats"}, 4.0)]
    running.append(3.0)
    lag.clear()
    lag.update({("nats",): 0.0, ("redis",): 9.0})
    fams = families(m)
    assert fams["bulksend_campaigns_running"] == [({}, 3.0)]
    assert sorted(fams["bulksend_source_lag"], key=lambda s: s[0]["source"]) == [
        ({"source": "nats"}, 0.0),
        ({"source": "redis"}, 9.0),
    ]
    m.remove_gauge_callback("bulksend_campaigns_running")
    assert "bulksend_campaigns_running" not in families(m)


def test_failing_callback_drops_only_its_own_series() -> None:
    """A callback that raises (or returns the wrong shape) is left out; the rest of the scrape works."""
    m = Metrics(process_metrics=False)
    m.set_in_flight(2)

    def broken() -> float:
        raise RuntimeError("queue is gone")

    m.add_gauge_callback("bulksend_broken", broken)
    m.add_gauge_callback("bulksend_wrong_shape", lambda: {("a",): 1.0})
    m.add_gauge_callback("bulksend_fine", lambda: 7)
    fams = families(m)
    assert "bulksend_broken" not in fams
    assert "bulksend_wrong_shape" not in fams
    assert fams["bulksend_fine"] == [({}, 7.0)]
    assert fams["bulksend_in_flight_emails"] == [({}, 2.0)]


@pytest.mark.parametrize(
    ("name", "labels", "message"),
    [
        ("bulksend_in_flight_emails", (), "Duplicated timeseries"),  # clashes with a built-in series
        ("bulksend dash", (), "invalid metric name"),
        ("bulksend_ok", ("bad-label",), "invalid label name"),
        ("bulksend_ok", ("__reserved",), "invalid label name"),
    ],
)
def test_invalid_or_clashing_callback_names_are_refused(
    name: str, labels: tuple[str, ...], message: str
) -> None:
    """add_gauge_callback refuses invalid names and names already taken by another series."""
    m = Metrics(process_metrics=False)
    with pytest.raises(ValueError, match=message):
        m.add_gauge_callback(name, lambda: 1.0, labelnames=labels)
    assert "bulksend_ok" not in families(m)


def test_same_callback_name_twice_is_refused() -> None:
    """Registering a callback gauge name twice raises instead of silently replacing the first."""
    m = Metrics(process_metrics=False)
    m.add_gauge_callback("bulksend_x", lambda: 1.0)
    with pytest.raises(ValueError, match="already registered"):
        m.add_gauge_callback("bulksend_x", lambda: 2.0)


def test_render_is_parseable_prometheus_text_with_every_series() -> None:
    """render() gives Prometheus text that parses and names every bulksend family."""
    m = Metrics(process_metrics=False)
    m.on_api_response("get", 404, 0.02)
    m.observe_outcome("c1", "sent")
    m.set_queue_lag("nats", 1)
    m.job("nats", "admitted")
    m.dead_letter("nats", "invalid_address")
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {
        "bulksend_emails",
        "bulksend_api_calls",
        "bulksend_api_call_duration_seconds",
        "bulksend_api_throttled",
        "bulksend_limiter_rate_per_second",
        "bulksend_in_flight_emails",
        "bulksend_tracker_backlog_emails",
        "bulksend_queue_lag_messages",
        "bulksend_jobs",
        "bulksend_dead_letters",
        "bulksend_reconciliations",
        "bulksend_store_errors",
        "bulksend_ready",
    } <= names


def test_every_series_name_says_its_unit() -> None:
    """Gauges and counters carry their unit (`_per_second`, `_seconds`, `_emails`, `_messages`) or
    are counts of one named thing (`_total`) or a 0/1 state: the old unit-less names are gone."""
    m = Metrics(process_metrics=False)
    m.set_queue_lag("nats", 1)
    families = list(text_string_to_metric_families(m.render()[0].decode()))
    names = {f.name for f in families}
    for old in ("limiter_rate_per_s", "in_flight", "tracker_backlog", "queue_lag"):
        assert f"bulksend_{old}" not in names
    # `_created` gauges are prometheus-client's creation timestamps of the counters.
    gauges = {f.name for f in families if f.type == "gauge" and not f.name.endswith("_created")}
    units = ("_per_second", "_emails", "_messages", "_seconds", "_tokens")
    # States, not quantities: 0/1 readiness, 0/1/2 for the breaker, 0/1 paused by a guardrail.
    states = {"bulksend_ready", "bulksend_circuit_state", "bulksend_guardrail_paused"}
    assert all(name.endswith(units) for name in gauges - states), gauges


def test_reconciliation_and_store_error_counters() -> None:
    """Reconciliations are counted by outcome (each outcome at 0 from the start); store errors by
    operation; `bulksend_ready` follows set_ready."""
    m = Metrics(process_metrics=False)
    assert value(m, "bulksend_reconciliations_total", outcome="resent") == 0
    m.reconciled("adopted", 2)
    m.reconciled("resent", 0)
    m.store_error("admit")
    m.set_ready(True)
    assert value(m, "bulksend_reconciliations_total", outcome="adopted") == 2
    assert value(m, "bulksend_store_errors_total", operation="admit") == 1
    assert value(m, "bulksend_ready") == 1
    m.set_ready(False)
    assert value(m, "bulksend_ready") == 0


def test_render_speaks_openmetrics_when_asked() -> None:
    """An Accept header asking for OpenMetrics gets OpenMetrics (ends with # EOF)."""
    m = Metrics(process_metrics=False)
    body, content_type = m.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_instances_do_not_share_a_registry() -> None:
    """Two Metrics objects count independently (no global registry behind them)."""
    a, b = Metrics(), Metrics()
    a.job("nats", "admitted")
    assert value(a, "bulksend_jobs_total", source="nats", result="admitted") == 1
    assert value(b, "bulksend_jobs_total", source="nats", result="admitted") is None


def test_process_series_are_optional() -> None:
    """The standard python/process series are exposed by default and can be turned off."""
    assert "python_info" in families(Metrics())
    assert "python_info" not in families(Metrics(process_metrics=False))


async def test_plugs_into_tem_client_as_on_response(sandbox: Sandbox) -> None:
    """Metrics.on_api_response works as TemClient's on_response hook against a real (sandbox) API."""
    m = Metrics(process_metrics=False)
    async with TemClient(settings_for(sandbox), on_response=m.on_api_response) as tem:
        await tem.get_statistics()
        await tem.list_emails()
    assert value(m, "bulksend_api_calls_total", endpoint="statistics", code="200") == 1
    assert value(m, "bulksend_api_calls_total", endpoint="list", code="200") == 1


def test_flow_control_gauges_show_the_limiter_figures() -> None:
    """Measured rate, ceiling, retry budget and breaker state (0/1/2) of a flow limiter reach
    /metrics; a limiter without flow control changes none of them."""
    from bulksend.clock import FakeClock
    from bulksend.pipeline.flow import CubicLimiter, FlowLimiter, flow_stats

    clock = FakeClock()
    limiter = FlowLimiter(CubicLimiter(1000.0, clock=clock), clock=clock)
    for _ in range(100):
        clock.advance(0.01)
        limiter.on_success()
    limiter.on_throttle()
    for _ in range(10):
        limiter.on_failure()
    m = Metrics(process_metrics=False)
    m.set_flow(flow_stats(limiter))
    assert value(m, "bulksend_limiter_measured_rate_per_second") == pytest.approx(100.0, rel=0.15)
    assert value(m, "bulksend_limiter_ceiling_per_second") == pytest.approx(100.0, rel=0.15)
    assert value(m, "bulksend_retry_budget_tokens") == 100.0
    assert value(m, "bulksend_circuit_state") == 2
    m.set_flow(None)
    assert value(m, "bulksend_circuit_state") == 2
