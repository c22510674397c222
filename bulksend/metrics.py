"""Prometheus metrics of one bulksend process.

:class:`Metrics` owns its own ``CollectorRegistry`` (never the library's global one), so several
instances — one per test, or one per embedded daemon — never collide. The daemon feeds it through a
few methods; :meth:`Metrics.on_api_response` has the signature of ``TemClient(on_response=…)`` so it
plugs into the client directly. Gauges whose value already lives somewhere (a queue's length, a
store count) are better read at scrape time with :meth:`Metrics.add_gauge_callback` than copied
by a loop.

Every series (all prefixed ``bulksend_``), with PromQL queries, is listed in docs/daemon.md
("Health and metrics"); the standard ``process_*``, ``python_gc_*`` and ``python_info`` series
come too unless disabled.

Every method is cheap and thread-safe (prometheus-client locks each value), and none raises on a
label value it has not seen before: metrics must never break the pipeline that feeds them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from threading import Lock
from typing import TYPE_CHECKING, Final

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

if TYPE_CHECKING:
    from bulksend.pipeline.flow import FlowStats

__all__ = ["RECONCILE_OUTCOMES", "GaugeCallback", "Metrics"]

log = structlog.get_logger("bulksend.metrics")

GaugeCallback = Callable[[], float | Mapping[tuple[str, ...], float]]
"""Returns the gauge's value (no labels), or ``{label values: value}`` for a labelled gauge."""

_NAME_RE: Final = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

RECONCILE_OUTCOMES: Final = ("adopted", "resent", "deferred")
"""Label values of ``bulksend_reconciliations_total{outcome}``."""

API_LATENCY_BUCKETS_S: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Histogram buckets of TEM call latency, in seconds (30 s is the default request timeout)."""


class _CallbackGauge:
    """A gauge read from a callback at scrape time (a prometheus-client custom collector)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], fn: GaugeCallback) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.fn = fn

    def describe(self) -> Iterable[Metric]:
        # Names only, without calling the callback: registration must not run user code.
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        try:
            value = self.fn()
            if self.labelnames:
                if not isinstance(value, Mapping):
                    raise TypeError(
                        f"expected a mapping of label values to numbers, not {type(value).__name__}"
                    )
                for labels, v in value.items():
                    labels = (labels,) if isinstance(labels, str) else tuple(labels)
                    if len(labels) != len(self.labelnames):
                        raise ValueError(f"label values {labels!r} do not match {self.labelnames!r}")
                    family.add_metric([str(x) for x in labels], float(v))
            else:
                if isinstance(value, Mapping):
                    raise TypeError("a gauge without labels expects a number, got a mapping")
                family.add_metric([], float(value))
        except Exception as exc:
            # A failing callback loses its own series for this scrape, never the whole scrape.
            log.warning("metrics.callback_failed", metric=self.name, error=f"{type(exc).__name__}: {exc}")
            return []
        return [family]


class Metrics:
    """The process's metrics, in a registry of their own. See the module docstring for the series."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        counter, gauge = self._counter, self._gauge
        self.emails = counter(
            "bulksend_emails_total",
            "Recipients that reached their final outcome, by campaign and outcome status.",
            "campaign",
            "status",
        )
        self.api_calls = counter(
            "bulksend_api_calls_total",
            "TEM API calls by endpoint and HTTP status code (0: transport error, no HTTP answer).",
            "endpoint",
            "code",
        )
        self.api_latency = Histogram(
            "bulksend_api_call_duration_seconds",
            "TEM API call latency by endpoint, in seconds.",
            ["endpoint"],
            buckets=API_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.api_throttled = counter(
            "bulksend_api_throttled_total", "TEM API answers 429 (too many requests)."
        )
        self.limiter_rate = gauge(
            "bulksend_limiter_rate_per_second",
            "Current rate of the shared TEM request limiter, in requests per second.",
        )
        self.measured_rate = gauge(
            "bulksend_limiter_measured_rate_per_second",
            "TEM answers that were not throttled, per second, over the last second.",
        )
        self.ceiling = gauge(
            "bulksend_limiter_ceiling_per_second",
            "The rate the account last refused with throttling (the configured rate before any).",
        )
        self.retry_tokens = gauge(
            "bulksend_retry_budget_tokens", "Retries the retry budget allows right now."
        )
        self.circuit_state = gauge(
            "bulksend_circuit_state",
            "Circuit breaker in front of TEM: 0 closed, 1 half-open (probing), 2 open (waiting).",
        )
        self.in_flight = gauge("bulksend_in_flight_emails", "TEM send requests in flight.")
        self.backlog = gauge(
            "bulksend_tracker_backlog_emails", "Emails submitted to TEM whose final status is not known yet."
        )
        self.queue_lag = gauge(
            "bulksend_queue_lag_messages", "Messages waiting in a source queue, by source.", "source"
        )
        self.jobs = counter(
            "bulksend_jobs_total",
            "Queue messages by source and result (admitted, duplicate, dead_lettered).",
            "source",
            "result",
        )
        self.dead_letters = counter(
            "bulksend_dead_letters_total",
            "Dead-lettered queue messages by source and kind of reason.",
            "source",
            "reason_kind",
        )
        self.results_published = counter(
            "bulksend_results_published_messages_total", "Job results the results broker took."
        )
        self.results_failed = counter(
            "bulksend_results_failed_messages_total",
            "Job results whose publish failed (held and published again later).",
        )
        self.results_backlog = gauge(
            "bulksend_results_backlog_messages",
            "Job results held after a failed publish, waiting to be published again.",
        )
        self.reconciliations = counter(
            "bulksend_reconciliations_total",
            "Ambiguous sends looked up at TEM, by outcome (adopted: TEM had the email; resent: it "
            "had not, sent again; deferred: the lookup failed, left for later).",
            "outcome",
        )
        for outcome in RECONCILE_OUTCOMES:
            self.reconciliations.labels(outcome)  # at 0 from the start, so rate() sees the first
        self.store_errors = counter(
            "bulksend_store_errors_total", "Store operations that failed, by operation.", "operation"
        )
        self.ready = gauge(
            "bulksend_ready", "1 while every readiness check passes (/readyz answers 200), else 0."
        )
        self.guardrail_paused = gauge(
            "bulksend_guardrail_paused",
            "1 while a campaign or job stream is paused by its guardrail (too many hard bounces or "
            "spam complaints among its last final emails), else 0.",
            "campaign",
        )
        self.guardrail_trips = counter(
            "bulksend_guardrail_trips_total",
            "Times a campaign's or job stream's guardrail paused it.",
            "campaign",
        )
        self.suppressed = counter(
            "bulksend_suppressed_total",
            "Recipients skipped because their address is on the suppression list, by campaign.",
            "campaign",
        )
        self._callbacks: dict[str, _CallbackGauge] = {}
        self._statuses_by_campaign: dict[str, set[str]] = {}
        self._lock = Lock()

    def __repr__(self) -> str:
        return f"Metrics(callbacks={sorted(self._callbacks)!r})"

    def _counter(self, name: str, documentation: str, *labelnames: str) -> Counter:
        return Counter(name, documentation, labelnames, registry=self.registry)

    def _gauge(self, name: str, documentation: str, *labelnames: str) -> Gauge:
        return Gauge(name, documentation, labelnames, registry=self.registry)

    # -- what the daemon calls -------------------------------------------------------------------
    def on_api_response(self, endpoint: str, code: int, elapsed_s: float) -> None:
        """Count one TEM call. Same signature as ``TemClient(on_response=…)``: pass it directly."""
        self.api_calls.labels(endpoint, str(code)).inc()
        if elapsed_s >= 0:
            self.api_latency.labels(endpoint).observe(elapsed_s)
        if code == 429:
            self.api_throttled.inc()

    def observe_outcome(self, campaign: str, status: str, n: int = 1) -> None:
        """Count ``n`` recipients of ``campaign`` reaching their final outcome ``status``."""
        if n <= 0:
            return
        with self._lock:
            self._statuses_by_campaign.setdefault(campaign, set()).add(status)
        self.emails.labels(campaign, status).inc(n)

    def forget_campaign(self, campaign: str) -> None:
        """Drop the series of ``campaign`` (a long-lived daemon must not grow labels forever)."""
        with self._lock:
            statuses = self._statuses_by_campaign.pop(campaign, set())
        for status in statuses:
            with contextlib.suppress(KeyError):
                self.emails.remove(campaign, status)

    def set_limiter_rate(self, rate_per_s: float) -> None:
        """The shared limiter's current rate (requests per second)."""
        self.limiter_rate.set(rate_per_s)

    def set_flow(self, flow: FlowStats | None) -> None:
        """The flow-control figures of the account's limiter (nothing for a limiter without them)."""
        if flow is None:
            return
        self.measured_rate.set(flow.measured_rate_per_s or 0.0)
        self.ceiling.set(flow.ceiling_per_s)
        self.retry_tokens.set(flow.retry_tokens)
        self.circuit_state.set(int(flow.circuit))

    def set_in_flight(self, n: int) -> None:
        """TEM send requests currently in flight."""
        self.in_flight.set(n)

    def set_backlog(self, n: int) -> None:
        """Emails submitted but not final yet."""
        self.backlog.set(n)

    def set_queue_lag(self, source: str, n: int) -> None:
        """Messages waiting in ``source`` (as the broker reports it)."""
        self.queue_lag.labels(source).set(n)

    def job(self, source: str, result: str) -> None:
        """Count one queue message from ``source`` by ``result`` (admitted/duplicate/dead_lettered)."""
        self.jobs.labels(source, result).inc()

    def dead_letter(self, source: str, reason_kind: str) -> None:
        """Count one message from ``source`` dead-lettered for a reason of kind ``reason_kind``."""
        self.dead_letters.labels(source, reason_kind).inc()

    def result_published(self, n: int = 1) -> None:
        """Count ``n`` job results the results broker took."""
        self.results_published.inc(n)

    def result_failed(self, n: int = 1) -> None:
        """Count ``n`` job results whose publish failed."""
        self.results_failed.inc(n)

    def set_results_backlog(self, n: int) -> None:
        """Job results held, waiting to be published again."""
        self.results_backlog.set(n)

    def reconciled(self, outcome: str, n: int = 1) -> None:
        """Count ``n`` reconciliations that ended with ``outcome`` (adopted/resent/deferred)."""
        if n > 0:
            self.reconciliations.labels(outcome).inc(n)

    def store_error(self, operation: str) -> None:
        """Count one failed store operation (``operation`` names what was being done)."""
        self.store_errors.labels(operation).inc()

    def guardrail(self, campaign: str, paused: bool) -> None:
        """A guardrail paused ``campaign`` (a trip), or it was resumed."""
        self.guardrail_paused.labels(campaign).set(1 if paused else 0)
        if paused:
            self.guardrail_trips.labels(campaign).inc()

    def set_ready(self, ready: bool) -> None:
        """Whether every readiness check passes."""
        self.ready.set(1 if ready else 0)

    # -- scrape-time gauges ----------------------------------------------------------------------
    def add_gauge_callback(
        self,
        name: str,
        fn: GaugeCallback,
        *,
        documentation: str = "",
        labelnames: Sequence[str] = (),
    ) -> None:
        """Expose gauge ``name`` whose value ``fn()`` returns at each scrape.

        Without ``labelnames``, ``fn`` returns a number; with them, a mapping from label-value
        tuples to numbers (``{("nats",): 12.0}``). ``fn`` runs on the scraping thread or task and
        must be quick and non-blocking; if it raises, that one series is left out of the scrape
        (and a warning logged). Raises ``ValueError`` for an invalid or already used name.
        """
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        labels = tuple(labelnames)
        for label in labels:
            if not _LABEL_RE.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for metric {name!r}")
        collector = _CallbackGauge(name, documentation or f"{name} (read at scrape time)", labels, fn)
        with self._lock:
            if name in self._callbacks:
                raise ValueError(f"a gauge callback named {name!r} is already registered")
            # The registry refuses a name that clashes with any other series (ValueError).
            self.registry.register(collector)
            self._callbacks[name] = collector

    def remove_gauge_callback(self, name: str) -> None:
        """Stop exposing a callback gauge (for example when its component shuts down)."""
        with self._lock:
            collector = self._callbacks.pop(name, None)
            if collector is not None:
                self.registry.unregister(collector)

    # -- exposition ------------------------------------------------------------------------------
    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in a text format and its content type.

        ``accept`` is the scraper's ``Accept`` header: OpenMetrics when it asks for it, the
        Prometheus text format otherwise (also when empty).
        """
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
