"""What a campaign's outcomes add up to, counted row by row in bounded memory.

:class:`ReportAggregate` is fed one outcome at a time (:meth:`~ReportAggregate.add`), from an
outcomes file read back or from a live stream of results, and holds only fixed-size summaries
(:mod:`bulksend.reporting.sketch`): its memory and the time of one ``add`` do not grow with the
number of rows. :meth:`~ReportAggregate.to_json` gives everything as plain JSON for an API;
:mod:`bulksend.reporting.html` draws it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from bulksend.reporting.answers import answer_of, normalize_answer
from bulksend.reporting.outcome import Outcome, parse_outcome
from bulksend.reporting.sketch import Group, Groups, LogHistogram, TimeBuckets, TopItems
from bulksend.reporting.timeline import Sample, thin
from bulksend.sinks.outcomes import IN_PROGRESS, OUTCOME_STATUSES
from bulksend.sinks.report import domain_of
from bulksend.sinks.summary import reason_kind

__all__ = [
    "DEFERRED_FLAGS",
    "MAX_TRY_COUNT",
    "SERIES",
    "DomainStats",
    "OverTime",
    "ReportAggregate",
    "iso",
]

SERIES: Final = ("submitted", "sent", "failed")
"""The series of :attr:`ReportAggregate.timeline`, in order."""
DEFERRED_FLAGS: Final = frozenset({"soft_bounce", "greylisted"})
"""Flags saying TEM's first delivery attempt was put off (the email may still have been sent)."""
MAX_TRY_COUNT: Final = 10
"""``try_count`` values from this one up are counted together (``10+``)."""
MAX_SAMPLES: Final = 3600
TIMELINE_BUCKETS: Final = 5000
"""Intervals the timeline keeps: 72 h of tracking (TEM's soft-bounce retries) at one minute
each, so the send itself, often minutes long, is still drawn in detail (see :meth:`over_time`)."""
MAX_POINTS: Final = 240
"""Points drawn (and given by :meth:`ReportAggregate.to_json`) for the emails over time."""
DRAWN_SHARE: Final = 0.95
"""Share of the final statuses the drawn time window holds (every submission always)."""
_MAX_OTHER_STATUSES: Final = 20
_OTHER_STATUS: Final = "other"


def iso(t: float | None) -> str | None:
    """Unix time ``t`` as RFC 3339 UTC, to the second."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class OverTime:
    """Emails per interval (:data:`SERIES`) over the drawn window, and the final statuses after it."""

    interval_s: int
    rows: list[tuple[float, list[int]]]
    later: int
    """Final statuses after the window."""
    last_later: float | None
    """When the last of them came (the end of its interval)."""


class DomainStats:
    """One recipient domain: how its emails ended, and how long they took."""

    __slots__ = ("deferred", "failed", "sent", "to_final")

    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0
        self.deferred = 0
        self.to_final = LogHistogram(0.02)


def _group_json(groups: Groups, n: int | None = None) -> dict[str, Any]:
    def one(g: Group) -> dict[str, Any]:
        return {
            "kind": g.kind,
            "count": g.count,
            "examples": [{"row": e.row, "text": e.text} for e in g.shown_examples()],
        }

    shown = groups.most_common(n)
    return {
        "total": groups.total,
        "kinds": [one(g) for g in shown],
        "more_kinds": len(groups.groups) - len(shown),
        "other_rows": groups.other,
    }


class ReportAggregate:
    """Counts of a campaign's outcomes for the report (see the module docstring).

    ``add`` takes an :class:`~bulksend.reporting.outcome.Outcome` or an outcome line as written
    in the outcomes file (a mapping); ``add_sample`` takes the run's flow-control samples. A
    running campaign's live lines say :data:`~bulksend.sinks.outcomes.IN_PROGRESS` for a row not
    final yet: counted apart (:attr:`in_progress`), neither sent nor among the rows not sent.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.by_status: dict[str, int] = dict.fromkeys(OUTCOME_STATUSES, 0)
        self.retried = 0
        """Rows whose email took more than one attempt, by bulksend or by TEM."""
        self.retried_by_bulksend = 0
        """Rows sent more than once to TEM's API (429, 5xx, timeouts): ``attempts`` > 1."""
        self.retried_by_tem = 0
        """Rows TEM tried to deliver more than once: ``try_count`` > 1."""
        self.flags: dict[str, int] = {}
        self.failures_by_flag = Groups(100)
        self.failures_by_answer = Groups(1000)
        self.rejections = Groups(1000)
        """Rejected rows by kind of reason."""
        self.not_sent_other = Groups(1000)
        """Skipped, canceled and unknown rows by kind of reason."""
        self.domains: TopItems[DomainStats] = TopItems(DomainStats, capacity=1000)
        self.to_final = LogHistogram(0.01)
        """Seconds from submission to final status, of the sent and failed emails."""
        self.try_counts = [0] * (MAX_TRY_COUNT + 1)
        """Sent and failed emails by TEM's ``try_count`` (the last entry: that many or more)."""
        self.timeline = TimeBuckets(len(SERIES), max_buckets=TIMELINE_BUCKETS)
        self.first_submitted: float | None = None
        self.last_final: float | None = None
        self.samples: list[Sample] = []
        self.updated = time.time()

    # -- feeding -----------------------------------------------------------------------------
    def add(self, row: Outcome | Mapping[str, Any]) -> None:
        """Count one outcome."""
        o = row if isinstance(row, Outcome) else parse_outcome(row)
        self.rows += 1
        status = o.status
        by_status = self.by_status
        if status in by_status:
            by_status[status] += 1
        elif status == IN_PROGRESS or len(by_status) < len(OUTCOME_STATUSES) + _MAX_OTHER_STATUSES:
            by_status[status] = 1
        else:
            by_status[_OTHER_STATUS] = by_status.get(_OTHER_STATUS, 0) + 1
        if o.attempts > 1 or o.try_count > 1:
            self.retried += 1
            self.retried_by_bulksend += o.attempts > 1
            self.retried_by_tem += o.try_count > 1
        flags = o.flags
        for flag in flags:
            if flag in self.flags or len(self.flags) < 100:
                self.flags[flag] = self.flags.get(flag, 0) + 1
        domain = self.domains.get(domain_of(o.email))
        deferred = o.try_count > 1 or not DEFERRED_FLAGS.isdisjoint(flags)
        domain.deferred += deferred
        submitted, final = o.submitted_at, o.final_at
        if submitted is not None:
            self.timeline.add(submitted, 0)
            if self.first_submitted is None or submitted < self.first_submitted:
                self.first_submitted = submitted
        if status == "sent" or status == "failed":
            if status == "sent":
                domain.sent += 1
            else:
                domain.failed += 1
                self._failure(o)
            self.try_counts[min(max(o.try_count, 0), MAX_TRY_COUNT)] += 1
            if final is not None:
                self.timeline.add(final, 1 if status == "sent" else 2)
                if self.last_final is None or final > self.last_final:
                    self.last_final = final
                if submitted is not None:
                    took = max(0.0, final - submitted)
                    self.to_final.add(took)
                    domain.to_final.add(took)
        elif status == "rejected":
            self.rejections.add(self._reason_kind(o), o.row, o.reason or "(no reason given)")
        elif status != IN_PROGRESS:  # not a reason it was not sent: it may be yet
            self.not_sent_other.add(self._reason_kind(o), o.row, o.reason or f"({status})")

    @staticmethod
    def _reason_kind(o: Outcome) -> str:
        if not o.reason:
            return f"({o.status}, no reason given)"
        return reason_kind(o.reason, email=o.email)

    def _failure(self, o: Outcome) -> None:
        answer = answer_of(o)
        for flag in o.flags or ("(no flag)",):
            self.failures_by_flag.add(flag, o.row, answer)
        self.failures_by_answer.add(normalize_answer(answer), o.row, answer)

    def add_all(self, rows: Iterable[Outcome | Mapping[str, Any]]) -> ReportAggregate:
        """Count every outcome of ``rows``; returns self."""
        for row in rows:
            self.add(row)
        return self

    def add_sample(self, sample: Sample) -> None:
        """Add one flow-control sample (kept in time order; thinned past a few thousand)."""
        self.samples.append(sample)
        if len(self.samples) > MAX_SAMPLES:
            self.samples = thin(self.samples, MAX_SAMPLES // 2)

    # -- reading -----------------------------------------------------------------------------
    def over_time(self, max_points: int = MAX_POINTS) -> OverTime:
        """Emails per interval over the time that matters: from the first submission to the last
        one or to when 95 % of the final statuses were in, whichever is later. The rest (the
        slow tail of soft bounces TEM retries for days) is counted in ``later``, not drawn."""
        rows = self.timeline.rows()
        events = [(t, c) for t, c in rows if any(c)]
        if not events:
            return OverTime(self.timeline.width, [], 0, None)
        last_submitted = max((t for t, c in events if c[0]), default=events[0][0])
        finals = sum(c[1] + c[2] for _, c in events)
        needed = math.ceil(finals * DRAWN_SHARE)
        end, seen = last_submitted, 0
        for t, c in events:
            seen += c[1] + c[2]
            if seen >= needed:
                end = max(end, t)
                break
        width, drawn = self.timeline.window(events[0][0], end, max_points=max_points)
        every_width, everything = self.timeline.window(events[0][0], events[-1][0], max_points=max_points)
        if every_width <= width:  # the tail fits at the same interval: draw it all
            return OverTime(width, everything, 0, None)
        later = [(t, c[1] + c[2]) for t, c in events if t > end]
        last = later[-1][0] + self.timeline.width if later else None
        return OverTime(width, drawn, sum(n for _, n in later), last)

    @property
    def in_progress(self) -> int:
        """Rows of a running campaign not final yet (live lines only)."""
        return self.by_status.get(IN_PROGRESS, 0)

    @property
    def not_sent(self) -> int:
        """Rows that were not delivered: every row but the sent ones and those still in progress."""
        return self.rows - self.by_status.get("sent", 0) - self.in_progress

    def share(self, n: int) -> float:
        """``n`` as a share (0–1) of all rows."""
        return n / self.rows if self.rows else 0.0

    def to_json(self, *, top: int = 20, kinds: int = 20) -> dict[str, Any]:
        """Everything counted, as plain JSON values (times as RFC 3339, durations in seconds)."""
        domains = []
        for name, count, stats in self.domains.most_common(top):
            domains.append(
                {
                    "domain": name,
                    "recipients": count,
                    "sent": stats.sent,
                    "failed": stats.failed,
                    "deferred": stats.deferred,
                    "median_to_final_s": stats.to_final.quantile(0.5),
                }
            )
        q = self.to_final.quantile
        drawn = self.over_time()
        return {
            "rows": self.rows,
            "statuses": {k: v for k, v in self.by_status.items() if v or k in OUTCOME_STATUSES},
            "retried": {
                "rows": self.retried,
                "by_bulksend": self.retried_by_bulksend,
                "by_tem": self.retried_by_tem,
            },
            "flags": dict(sorted(self.flags.items(), key=lambda kv: -kv[1])),
            "failures_by_flag": _group_json(self.failures_by_flag, kinds),
            "failures_by_answer": _group_json(self.failures_by_answer, kinds),
            "rejections": _group_json(self.rejections, kinds),
            "not_sent_other": _group_json(self.not_sent_other, kinds),
            "domains": {
                "top": domains,
                "tracked": len(self.domains.items),
                "exact": self.domains.error == 0,
                "max_error": self.domains.error,
            },
            "time_to_final_s": {
                "count": self.to_final.count,
                "p50": q(0.5),
                "p90": q(0.9),
                "p99": q(0.99),
                "max": q(1.0),
            },
            "try_count": {
                (f"{i}+" if i == MAX_TRY_COUNT else str(i)): n for i, n in enumerate(self.try_counts) if n
            },
            "timeline": {
                "interval_s": drawn.interval_s,
                "series": list(SERIES),
                "rows": [[iso(t), *counts] for t, counts in drawn.rows],
                "final_later": drawn.later,
                "last_final_later_at": iso(drawn.last_later),
            },
            "flow": [{**s.to_json(), "t": iso(s.t)} for s in self.samples],
            "first_submitted_at": iso(self.first_submitted),
            "last_final_at": iso(self.last_final),
        }
