"""The report as HTML: every section as a fragment a web page can embed, or one whole document.

:func:`render_sections` draws what a :class:`~bulksend.reporting.aggregate.ReportAggregate` holds
(outcomes, over time, why not sent, per domain, timing); :func:`render_report` wraps it in a
self-contained document with a header (the campaign, when it ran, the recipients file's
SHA-256) and links to the outcomes and resend files. Inline CSS and SVG only: no script, no
font or image to load, so the file opens offline, as an email attachment too. Every text that
comes from data (answers, reasons, domains, names) is escaped by the templates.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from markupsafe import Markup

from bulksend import __version__
from bulksend.reporting.aggregate import MAX_TRY_COUNT, ReportAggregate
from bulksend.reporting.charts import (
    PALETTE,
    Bar,
    Marker,
    Series,
    bars,
    histogram,
    render_template,
    time_series,
)
from bulksend.reporting.sketch import Groups
from bulksend.reporting.timeline import Sample, thin
from bulksend.sinks.outcomes import IN_PROGRESS, OUTCOME_STATUSES

__all__ = ["ReportMeta", "duration", "render_report", "render_sections", "stylesheet"]

KINDS_SHOWN: Final = 15
SAMPLES_DRAWN: Final = 500
DOMAINS_SHOWN: Final = 20
STATUS_COLORS: Final = {
    "sent": PALETTE["green"],
    "failed": PALETTE["vermillion"],
    "canceled": PALETTE["grey"],
    "rejected": PALETTE["orange"],
    "skipped": PALETTE["sky"],
    "unknown": PALETTE["purple"],
    IN_PROGRESS: PALETTE["blue"],
}
_CARD_TITLES: Final = {
    "recipients": "rows of the recipients file",
    "sent": "delivered: TEM's status sent",
    "failed": "TEM gave up delivering (bounce, spam, blocklist…)",
    "canceled": "canceled before it was delivered",
    "rejected": "bad input or refused by TEM: never sent",
    "skipped": "a duplicate of an earlier row",
    "unknown": "not final when tracking stopped, or not finished yet",
    IN_PROGRESS: "the campaign is still running: not final yet",
    "retried": "took more than one attempt: by bulksend (429, 5xx) or by TEM (deferred delivery)",
}
_UNITS: Final = ((86400, "d", 3600, "h"), (3600, "h", 60, "min"), (60, "min", 1, "s"))
"""A duration of a minute or more: its largest unit, then the next one (``2 h 05 min``)."""
# Edges of the time-to-final histogram, in seconds, with their labels.
_TO_FINAL_EDGES: Final = (
    (0.0, "< 0.1 s"),
    (0.1, "0.1–0.25 s"),
    (0.25, "0.25–0.5 s"),
    (0.5, "0.5–1 s"),
    (1, "1–2 s"),
    (2, "2–5 s"),
    (5, "5–10 s"),
    (10, "10–30 s"),
    (30, "30–60 s"),
    (60, "1–5 min"),
    (300, "5–15 min"),
    (900, "15–60 min"),
    (3600, "1–6 h"),
    (21600, "6–24 h"),
    (86400, "1–3 d"),
    (259200, "≥ 3 d"),
)


@dataclass(frozen=True)
class ReportMeta:
    """What the outcomes do not say: which campaign, which files, when it ran (Unix times)."""

    campaign_id: str | None = None
    sender: str | None = None
    recipients: str | None = None
    """The recipients file (its name is shown)."""
    recipients_sha256: str | None = None
    started: float | None = None
    ended: float | None = None
    runs: int = 0
    outcomes_href: str | None = None
    """Link to the outcomes file, relative to the report."""
    resend_href: str | None = None
    resend_rows: int = 0
    timeline_href: str | None = None
    generated: float | None = None


def stylesheet() -> Markup:
    """The report's CSS, scoped under ``.bs-report`` (for a page that embeds the sections)."""
    return render_template("report.css")


def _count(n: int) -> str:
    return f"{n:,}"


def _share(n: int, total: int) -> str:
    if not total:
        return "–"
    share = 100 * n / total
    if 0 < share < 0.1:
        return "< 0.1 %"
    return f"{share:.1f} %"


def duration(seconds: float | None) -> str:
    """A duration to read: ``0.25 s``, ``4.5 s``, ``37 s``, ``4 min 05 s``, ``2 h 10 min``, ``3 d 04 h``.

    Two or three significant figures: the quantiles it shows are within 1–2 % anyway."""
    if seconds is None:
        return "–"
    s = max(0.0, seconds)
    if s == 0:
        return "0 s"
    if s < 1:
        return f"{s:.2f} s"
    if s < 10:
        return f"{s:.1f} s"
    if s < 59.5:
        return f"{s:.0f} s"
    whole = round(s)
    for unit, name, part, part_name in _UNITS:
        if whole >= unit:
            return f"{whole // unit} {name} {whole % unit // part:02d} {part_name}"
    return f"{whole} s"


def _when(t: float | None) -> str:
    if t is None:
        return "–"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _interval(width: int) -> str:
    """``per {…}``: ``second``, ``10 s``, ``minute``, ``5 min``, ``hour``, ``day``…"""
    single = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
    if width in single:
        return single[width]
    for unit, name in ((86400, "d"), (3600, "h"), (60, "min")):
        if width >= unit and width % unit == 0:
            return f"{width // unit} {name}"
    return f"{width} s"


def _groups_view(groups: Groups, share_of: int, n: int = KINDS_SHOWN) -> dict[str, Any] | None:
    if not groups.total:
        return None
    shown = groups.most_common(n)
    kinds = [
        {
            "kind": g.kind,
            "count": g.count,
            "count_text": _count(g.count),
            "share": _share(g.count, share_of),
            "examples": [
                {
                    "row": f"row {e.row:,}" if e.row is not None else "row ?",
                    # The kind itself when the row says nothing more: the row number is enough.
                    "text": "" if e.text == g.kind else e.text,
                }
                for e in g.shown_examples()
            ],
        }
        for g in shown
    ]
    rest = sum(g.count for g in groups.most_common()[n:]) + groups.other
    more_kinds = len(groups.groups) - len(shown)
    more = ""
    if rest:
        what = f"{more_kinds:,} more kinds" if more_kinds else "other kinds"
        more = f"… and {what} ({_count(rest)}): see the outcomes file."
    return {"kinds": kinds, "more": more}


def _headline(agg: ReportAggregate) -> dict[str, Any]:
    cards = [{"key": "recipients", "count": _count(agg.rows), "share": "100 %" if agg.rows else "–"}]
    for status in OUTCOME_STATUSES:
        n = agg.by_status.get(status, 0)
        cards.append({"key": status, "count": _count(n), "share": _share(n, agg.rows)})
    for status, n in agg.by_status.items():
        if status not in OUTCOME_STATUSES and n:
            cards.append({"key": status, "count": _count(n), "share": _share(n, agg.rows)})
    cards.append({"key": "retried", "count": _count(agg.retried), "share": _share(agg.retried, agg.rows)})
    for card in cards:
        card["title"] = _CARD_TITLES.get(card["key"], "")
    note = ""
    if agg.retried:
        note = (
            f"Retried: {_count(agg.retried_by_bulksend)} sent more than once to TEM's API (429, 5xx, "
            f"timeouts), {_count(agg.retried_by_tem)} delivered by TEM after more than one try."
        )
    status_bars = bars(
        [
            Bar(status, n, f"{n:,} ({_share(n, agg.rows)})", STATUS_COLORS.get(status, PALETTE["grey"]))
            for status, n in agg.by_status.items()
            if n
        ],
        title="Recipients by outcome",
        chart_id="bs-status-bars",
        label_width=110,
    )
    return {"cards": cards, "retried_note": note, "status_bars": status_bars if agg.rows else ""}


def _runs(samples: list[Sample]) -> list[list[Sample]]:
    runs: list[list[Sample]] = []
    for s in samples:
        if not runs or runs[-1][-1].run != s.run:
            runs.append([])
        runs[-1].append(s)
    return runs


def _rates(runs: list[list[Sample]], value: str) -> list[tuple[float, float | None]]:
    """Per-second rate of a cumulative counter of the samples, broken between runs."""
    points: list[tuple[float, float | None]] = []
    for run in runs:
        for a, b in itertools.pairwise(run):
            dt = b.t - a.t
            if dt > 0:
                points.append((b.t, max(0.0, (getattr(b, value) - getattr(a, value)) / dt)))
        if run:
            points.append((run[-1].t, None))
    return points


def _gauge(runs: list[list[Sample]], value: str) -> list[tuple[float, float | None]]:
    points: list[tuple[float, float | None]] = []
    for run in runs:
        points.extend((s.t, getattr(s, value)) for s in run)
        if run:
            points.append((run[-1].t, None))
    return points


def _over_time(agg: ReportAggregate) -> dict[str, Any]:
    drawn = agg.over_time()
    width = drawn.interval_s
    half = width / 2

    def series(i: int) -> list[tuple[float, float | None]]:
        return [(t + half, float(counts[i])) for t, counts in drawn.rows]

    chart = time_series(
        [
            Series("submitted", series(0), PALETTE["blue"]),
            Series("sent", series(1), PALETTE["green"], area=True),
            Series("failed", series(2), PALETTE["vermillion"], area=True),
        ],
        title=f"Emails submitted to TEM and final (sent, failed) per {_interval(width)}",
        y_unit=f"emails per {_interval(width)}",
        chart_id="bs-emails-over-time",
        empty="no email was submitted",
        whole=True,
    )
    note = (
        f"One point per {_interval(width)}: emails TEM accepted (submitted) and emails that became final "
        "in that interval, by the time TEM gave."
    )
    if drawn.later:
        note += (
            f" Not drawn: {_count(drawn.later)} emails that became final later, until "
            f"{_when(drawn.last_later)} (TEM retries soft bounces for up to 72 h)."
        )
    view: dict[str, Any] = {
        "over_time": chart,
        "interval_note": note,
        "rate_chart": "",
        "rate_note": "",
        "throttle_chart": "",
        "throttle_note": "",
        "runs": len({s.run for s in agg.samples}),
        "no_timeline": "No flow-control timeline was found for these outcomes: `bulksend send` records the "
        "limiter's rate, the 429 answers and the breaker's trips in <outcomes>.timeline.jsonl.",
    }
    if not agg.samples:
        return view
    runs = _runs(agg.samples)
    # A chart 760 units wide shows no more than this many points: fewer keep the file small.
    shown = _runs(thin(agg.samples, SAMPLES_DRAWN))
    limit = Series("limiter rate", _gauge(shown, "limit_per_s"), PALETTE["orange"], dashed=True)
    rates = [
        Series("measured answers/s", _gauge(shown, "measured_per_s"), PALETTE["blue"]),
        Series("submitted/s", _rates(shown, "submitted"), PALETTE["green"], area=True),
    ]
    highest_limit = max((v for _, v in limit.points if v is not None), default=0.0)
    highest_rate = max((v for s in rates for _, v in s.points if v is not None), default=0.0)
    view["rate_note"] = ""
    if highest_rate and highest_limit > 4 * highest_rate:
        # A limit far above what TEM took would flatten every other line: say it instead.
        view["rate_note"] = (
            f"The limiter allowed up to {highest_limit:,.0f}/s, far above the rates drawn: "
            "the sends were paced by TEM's answers and the concurrency, not by the limiter."
        )
    else:
        rates.insert(0, limit)
    view["rate_chart"] = time_series(
        rates,
        title="Sending rate: the limiter's, the measured one, emails submitted per second",
        y_unit="per second",
        chart_id="bs-rate",
    )
    # The counters start from 0 with each run: a run's last sample holds its total.
    throttled = sum(run[-1].throttled for run in runs)
    trips = [
        Marker(b.t, "breaker", f"circuit breaker opened at {_when(b.t)}")
        for run in runs
        for a, b in itertools.pairwise(run)
        if b.trips > a.trips
    ]
    tripped = sum(run[-1].trips for run in runs)
    view["throttle_note"] = (
        f"{_count(throttled)} answers were 429 (throttled); the circuit breaker opened "
        f"{_count(tripped)} time{'s' if tripped != 1 else ''}."
    )
    if throttled or tripped:
        view["throttle_chart"] = time_series(
            [Series("429 answers/s", _rates(shown, "throttled"), PALETTE["vermillion"], area=True)],
            title="429 answers per second, and the circuit breaker's trips",
            y_unit="per second",
            markers=trips,
            chart_id="bs-throttling",
        )
    return view


def _why_not_sent(agg: ReportAggregate) -> dict[str, Any]:
    failed = agg.by_status.get("failed", 0)
    rejected = agg.by_status.get("rejected", 0)
    in_progress = f" {_count(agg.in_progress)} still in progress." if agg.in_progress else ""
    if agg.not_sent:
        parts = [
            f"{status} {_count(n)}"
            for status, n in agg.by_status.items()
            if n and status != "sent" and status != IN_PROGRESS
        ]
        summary = (
            f"{_count(agg.not_sent)} of {_count(agg.rows)} recipients were not sent: {', '.join(parts)}."
            + in_progress
        )
    elif agg.in_progress:
        summary = f"Every recipient final so far was sent.{in_progress}"
    else:
        summary = "Every recipient was sent." if agg.rows else "No outcome yet."
    by_flag = agg.failures_by_flag.most_common(KINDS_SHOWN)
    flag_bars = bars(
        [
            Bar(g.kind, g.count, f"{g.count:,} ({_share(g.count, failed)})", PALETTE["vermillion"])
            for g in by_flag
        ],
        title="Failed emails by TEM flag",
        chart_id="bs-flag-bars",
        label_width=150,
    )
    return {
        "not_sent_summary": summary,
        "failures_by_flag": _groups_view(agg.failures_by_flag, failed),
        "flag_bars": flag_bars if by_flag else "",
        "failures_by_answer": _groups_view(agg.failures_by_answer, failed),
        "rejections": _groups_view(agg.rejections, rejected),
        "not_sent_other": _groups_view(agg.not_sent_other, agg.not_sent_other.total),
    }


def _domains(agg: ReportAggregate) -> dict[str, Any]:
    top = agg.domains.most_common(DOMAINS_SHOWN)
    biggest = top[0][1] if top else 1
    rows = [
        {
            "domain": name,
            "recipients": _count(count),
            "share": _share(count, agg.rows),
            "sent": _share(stats.sent, count),
            "failed": _share(stats.failed, count),
            "deferred": _share(stats.deferred, count),
            "median": duration(stats.to_final.quantile(0.5)),
            "meter": round(60 * count / biggest),
        }
        for name, count, stats in top
    ]
    tracked = len(agg.domains.items)
    if agg.domains.error:
        note = (
            f"More than {_count(agg.domains.capacity)} domains: the least frequent were counted in turns, "
            f"so a count may miss up to {_count(agg.domains.error)} rows (the top of the list is right)."
        )
    else:
        shown = min(tracked, DOMAINS_SHOWN)
        note = f"{_count(tracked)} domain{'s' if tracked != 1 else ''} in all; the {shown} largest shown."
    note += (
        " Shares are of the domain's recipients; deferred: TEM could not deliver at the first try "
        "(soft bounce, greylisting) and tried again. Time to final: from submission to sent or failed."
    )
    return {"domains": rows, "domains_note": note}


def _timing(agg: ReportAggregate) -> dict[str, Any]:
    h = agg.to_final
    percentiles = [
        {"key": key, "value": duration(h.quantile(q))}
        for key, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
    ]
    note = (
        f"Of {_count(h.count)} sent and failed emails, from TEM accepting the email to its final status "
        "(percentiles within 1 %)."
    )
    edges = [float(e) for e, _ in _TO_FINAL_EDGES]
    counts = h.counts_between(edges)
    used = [i for i, n in enumerate(counts) if n]
    to_final_chart: Markup | str = ""
    if used:
        bins = [(_TO_FINAL_EDGES[i][1], counts[i]) for i in range(used[0], used[-1] + 1)]
        to_final_chart = histogram(
            bins,
            title="Time to final status",
            x_label="time from submission to sent or failed",
            chart_id="bs-to-final",
        )
    tries = agg.try_counts
    try_chart: Markup | str = ""
    tried = [i for i, n in enumerate(tries) if n]
    if tried:
        bins = [
            (f"{i}+" if i == MAX_TRY_COUNT else str(i), tries[i])
            for i in range(min(tried[0], 1), tried[-1] + 1)
        ]
        try_chart = histogram(
            bins,
            title="TEM's delivery tries per email",
            x_label="try_count (0: never tried, e.g. blocklisted)",
            color=PALETTE["purple"],
            chart_id="bs-try-count",
        )
    return {
        "percentiles": percentiles,
        "timing_note": note,
        "to_final_chart": to_final_chart,
        "try_chart": try_chart,
    }


def render_sections(aggregate: ReportAggregate) -> Markup:
    """Every section of the report as one HTML fragment (styled by :func:`stylesheet`)."""
    context: dict[str, Any] = {}
    for part in (_headline, _over_time, _why_not_sent, _domains, _timing):
        context.update(part(aggregate))
    return render_template("sections.html.j2", **context)


def _name(path: str | None) -> str:
    return path.rsplit("/", 1)[-1] if path else ""


def render_report(aggregate: ReportAggregate, meta: ReportMeta) -> str:
    """The whole report: one self-contained HTML document."""
    started = min((t for t in (meta.started, aggregate.first_submitted) if t is not None), default=None)
    ended = max((t for t in (meta.ended, aggregate.last_final) if t is not None), default=None)
    took = duration(ended - started) if started is not None and ended is not None else "–"
    if meta.runs > 1:
        took += f" over {meta.runs} runs"
    title = f"Campaign {meta.campaign_id}" if meta.campaign_id else f"Outcomes {_name(meta.outcomes_href)}"
    recipients = "–"
    if meta.recipients:
        recipients = _name(meta.recipients)
    header = [
        ("Campaign", meta.campaign_id or "–", "campaign"),
        ("Sender", meta.sender or "–", "sender"),
        ("Start", _when(started), "start"),
        ("End", _when(ended), "end"),
        ("Duration", took, "duration"),
        ("Recipients file", recipients, "recipients"),
        ("Recipients SHA-256", meta.recipients_sha256 or "–", "sha256"),
    ]
    return render_template(
        "report.html.j2",
        title=f"{title} — bulksend report",
        version=__version__,
        css=stylesheet(),
        header=header,
        sections=render_sections(aggregate),
        outcomes_href=meta.outcomes_href,
        outcomes_name=_name(meta.outcomes_href),
        resend_href=meta.resend_href if meta.resend_rows else None,
        resend_name=_name(meta.resend_href),
        resend_rows=_count(meta.resend_rows),
        timeline_href=meta.timeline_href,
        timeline_name=_name(meta.timeline_href),
        generated=_when(meta.generated if meta.generated is not None else time.time()),
    )
