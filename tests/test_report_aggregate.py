"""The report's aggregate: exact counts where it promises them, bounded memory where rows are many."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksend.reporting.aggregate import ReportAggregate
from bulksend.reporting.html import render_sections
from bulksend.reporting.outcome import Outcome, parse_outcome, read_outcome_file
from bulksend.reporting.sketch import Groups, LogHistogram, TimeBuckets, TopItems
from bulksend.sinks.outcomes import CSV_FORMULA_TRIGGERS, IN_PROGRESS, OUTCOME_STATUSES, write_outcomes

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def line(
    row: int,
    status: str,
    *,
    email: str | None = None,
    flags: tuple[str, ...] = (),
    smtp: tuple[int, str] | None = None,
    details: str | None = None,
    try_count: int = 1,
    attempts: int = 1,
    submitted: float | None = None,
    final: float | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """An outcome line as the outcomes file holds it."""
    return {
        "email": email or f"user{row}@example.com",
        "name": f"Person {row}",
        "row": row,
        "status": status,
        "email_id": None,
        "message_id": None,
        "flags": list(flags),
        "status_details": details,
        "smtp_code": smtp[0] if smtp else None,
        "smtp_message": smtp[1] if smtp else None,
        "try_count": try_count,
        "submitted_at": iso(submitted) if submitted is not None else None,
        "final_at": iso(final) if final is not None else None,
        "attempts": attempts,
        "reason": reason,
    }


def never_sent(row: int, status: str, reason: str, email: str | None = None) -> dict[str, Any]:
    """The line of a row that never reached TEM."""
    return line(row, status, email=email, reason=reason, try_count=0, attempts=0)


def known_lines() -> list[dict[str, Any]]:
    """Twelve rows whose every count is known: the fixture of the aggregate tests."""
    hard_bounces = [
        line(
            row,
            "failed",
            email=email,
            submitted=T0 + 2,
            final=T0 + 14,
            flags=("hard_bounce",),
            smtp=(550, f"5.1.1 <{email}>: user unknown"),
        )
        for row, email in ((4, "b@other.org"), (5, "user5@example.com"))
    ]
    invalid = [
        never_sent(row, "rejected", f"invalid recipient address: '{email}' is not an email address", email)
        for row, email in ((8, "not-an-email"), (9, "c@x"))
    ]
    return [
        line(1, "sent", submitted=T0, final=T0 + 2),
        line(2, "sent", submitted=T0 + 1, final=T0 + 5, attempts=3),
        line(
            3,
            "sent",
            email="a@other.org",
            submitted=T0 + 1,
            final=T0 + 61,
            try_count=3,
            flags=("soft_bounce",),
        ),
        *hard_bounces,
        line(
            6,
            "failed",
            submitted=T0 + 3,
            final=T0 + 3,
            flags=("blocklisted",),
            try_count=0,
            details="recipient is blocklisted",
        ),
        line(7, "failed", submitted=T0 + 3, final=T0 + 40, flags=("mailbox_full",), smtp=(552, "5.2.2 full")),
        *invalid,
        never_sent(10, "skipped", "duplicate of row 1", "user1@example.com"),
        line(11, "unknown", submitted=T0 + 4, try_count=0, reason="not finished (still submitted)"),
        never_sent(12, "canceled", "canceled with its campaign before it was sent"),
    ]


def test_counts_of_a_known_file_are_exact() -> None:
    """Statuses, retries, flags, kinds of failure and of rejection, and domains add up exactly."""
    agg = ReportAggregate().add_all(known_lines())
    assert agg.rows == 12
    assert agg.by_status == {"sent": 3, "failed": 4, "canceled": 1, "rejected": 2, "skipped": 1, "unknown": 1}
    assert (agg.retried, agg.retried_by_bulksend, agg.retried_by_tem) == (2, 1, 1)
    by_answer = {g.kind: g.count for g in agg.failures_by_answer.most_common()}
    assert by_answer == {
        "550 5.1.1 <address>: user unknown": 2,
        "recipient is blocklisted": 1,
        "552 5.2.2 full": 1,
    }
    hard = agg.failures_by_flag.groups["hard_bounce"]
    assert hard.count == 2
    assert [(e.row, e.text) for e in hard.shown_examples()] == [
        (4, "550 5.1.1 <b@other.org>: user unknown"),
        (5, "550 5.1.1 <user5@example.com>: user unknown"),
    ]
    assert {g.kind: g.count for g in agg.rejections.most_common()} == {
        "invalid recipient address: <address> is not an email address": 2
    }
    top = {name: (count, s.sent, s.failed, s.deferred) for name, count, s in agg.domains.most_common(5)}
    assert top == {
        "example.com": (8, 2, 3, 0),
        "other.org": (2, 1, 1, 1),
        "(none)": (1, 0, 0, 0),
        "x": (1, 0, 0, 0),
    }
    assert agg.try_counts[:4] == [1, 5, 0, 1]
    assert agg.to_final.count == 7
    assert agg.to_final.quantile(1.0) == 60.0
    assert agg.first_submitted == T0
    assert agg.last_final == T0 + 61


def test_rows_in_progress_are_counted_apart_not_as_unknown_nor_as_not_sent() -> None:
    """A running campaign's live lines: rows not final yet are `in progress` (a card, a bar, a
    note), never among the rows not sent or their reasons; the file's statuses are unchanged."""
    lines = [
        *known_lines(),
        line(13, IN_PROGRESS, submitted=T0 + 5, try_count=0),
        line(14, IN_PROGRESS, try_count=0, attempts=0),
    ]
    agg = ReportAggregate().add_all(lines)
    assert agg.rows == 14
    assert agg.by_status == {
        "sent": 3,
        "failed": 4,
        "canceled": 1,
        "rejected": 2,
        "skipped": 1,
        "unknown": 1,
        IN_PROGRESS: 2,
    }
    assert (agg.in_progress, agg.not_sent) == (2, 9)
    assert agg.not_sent_other.total == 3  # skipped, canceled and unknown: in progress has no reason
    assert agg.to_json()["statuses"][IN_PROGRESS] == 2
    assert sum(c[0] for _, c in agg.timeline.rows()) == 9  # row 13 was submitted
    html = render_sections(agg)
    assert 'data-key="in progress"' in html
    assert "9 of 14 recipients were not sent: failed 4, canceled 1, rejected 2, skipped 1, unknown 1." in html
    assert "2 still in progress." in html

    only_sent = ReportAggregate().add_all([line(1, "sent", submitted=T0, final=T0 + 1), lines[-1]])
    assert only_sent.not_sent == 0
    assert "Every recipient final so far was sent. 1 still in progress." in render_sections(only_sent)
    finished = ReportAggregate().add_all(known_lines())
    assert IN_PROGRESS not in finished.to_json()["statuses"]
    assert "in progress" not in render_sections(finished)


def test_timeline_counts_submissions_and_final_statuses_per_interval() -> None:
    """Every submission and every sent or failed status lands in the interval of its time."""
    agg = ReportAggregate().add_all(known_lines())
    rows = agg.timeline.rows()
    assert agg.timeline.width == 1
    assert [sum(c[0] for _, c in rows), sum(c[1] for _, c in rows), sum(c[2] for _, c in rows)] == [8, 3, 4]
    by_time = dict(rows)
    assert by_time[T0 + 3] == [2, 0, 1]
    assert by_time[T0 + 61] == [0, 1, 0]


def test_to_json_is_plain_json_with_the_same_numbers() -> None:
    """to_json gives JSON-serialisable values carrying the aggregate's counts."""
    doc = ReportAggregate().add_all(known_lines()).to_json()
    again = orjson.loads(orjson.dumps(doc))
    assert again["rows"] == 12
    assert again["statuses"]["failed"] == 4
    assert again["failures_by_answer"]["kinds"][0] == {
        "kind": "550 5.1.1 <address>: user unknown",
        "count": 2,
        "examples": [
            {"row": 4, "text": "550 5.1.1 <b@other.org>: user unknown"},
            {"row": 5, "text": "550 5.1.1 <user5@example.com>: user unknown"},
        ],
    }
    assert again["domains"]["top"][0]["domain"] == "example.com"
    assert again["time_to_final_s"]["max"] == 60.0
    assert again["first_submitted_at"] == "2026-03-01T12:00:00Z"
    assert again["try_count"] == {"0": 1, "1": 5, "3": 1}


def test_memory_stays_bounded_when_every_row_is_different() -> None:
    """Distinct domains, answers and reasons on every row: every summary keeps to its capacity."""
    agg = ReportAggregate()
    for i in range(30_000):
        agg.add(
            line(
                i,
                "failed" if i % 2 else "rejected",
                email=f"u@d{i}.example",
                flags=(f"flag{i}",),
                smtp=(550, f"no such user here {chr(0x4E00 + i % 20000)} mailbox"),
                submitted=T0 + i * 37,
                final=T0 + i * 37 + 5,
                reason=f"invalid {chr(0x4E00 + i % 20000)}",
            )
        )
    assert len(agg.domains.items) <= agg.domains.capacity
    assert agg.domains.error >= 1
    assert len(agg.failures_by_answer.groups) == agg.failures_by_answer.capacity
    assert agg.failures_by_answer.total == 15_000
    assert len(agg.failures_by_flag.groups) <= 100
    assert len(agg.flags) == 100
    assert len(agg.rejections.groups) <= agg.rejections.capacity
    assert len(agg.timeline.rows()) <= agg.timeline.max_buckets


def test_frequent_domains_keep_their_exact_counts_among_many_rare_ones() -> None:
    """With far more domains than it tracks, the top items are the frequent ones, counted exactly."""
    top: TopItems[list[int]] = TopItems(list, capacity=50)
    for i in range(20_000):
        top.get(f"rare{i}")
        if i % 10 == 0:
            top.get("big.example")
        if i % 25 == 0:
            top.get("mid.example")
    ranked = top.most_common(2)
    assert [(name, count) for name, count, _ in ranked] == [("big.example", 2000), ("mid.example", 800)]
    assert top.error == 1


@given(st.lists(st.floats(min_value=0.001, max_value=1e6), min_size=1, max_size=300))
def test_quantiles_are_within_the_relative_error(values: list[float]) -> None:
    """Every quantile read back is within 1 % of the true value at that rank."""
    sketch = LogHistogram(0.01)
    for v in values:
        sketch.add(v)
    ordered = sorted(values)
    for q in (0.0, 0.5, 0.9, 0.99):
        true = ordered[max(0, math.ceil(q * len(values) - 1e-9) - 1)]
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert abs(estimate - true) <= 0.01 * true + 1e-12
    assert sketch.quantile(1.0) == max(values)


@given(st.lists(st.floats(min_value=0, max_value=3e7), min_size=1, max_size=400), st.integers(2, 50))
def test_time_buckets_keep_every_count_within_the_interval_limit(times: list[float], limit: int) -> None:
    """Whatever the times and their order: no count is lost, the intervals are at most ``limit``,
    and each time is counted in the interval that holds it."""
    buckets = TimeBuckets(1, max_buckets=limit)
    for t in times:
        buckets.add(t, 0)
    rows = buckets.rows()
    assert len(rows) <= limit
    assert sum(c[0] for _, c in rows) == len(times)
    by_start = {start: c[0] for start, c in rows}
    for t in times:
        start = (t // buckets.width) * buckets.width
        assert by_start[start] >= 1


def test_groups_count_new_kinds_as_other_once_full_and_keep_different_examples() -> None:
    """Past its capacity a group counts new kinds in `other`; examples prefer different texts."""
    groups = Groups(2)
    for row, (kind, text) in enumerate([("a", "x"), ("a", "x"), ("a", "y"), ("b", "z"), ("c", "w")]):
        groups.add(kind, row, text)
    assert groups.other == 1
    assert groups.total == 5
    assert [(e.row, e.text) for e in groups.groups["a"].shown_examples()] == [(0, "x"), (2, "y")]
    assert [(e.row, e.text) for e in groups.groups["b"].shown_examples()] == [(3, "z")]


# -- the outcomes parser, through the real writer -------------------------------------------------
texts = st.text(max_size=30).filter(lambda t: not (t[:1] == "'" and t[1:2] in CSV_FORMULA_TRIGGERS))
optional_texts = st.one_of(st.none(), texts)
moments = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.isoformat().replace("+00:00", "Z"))
outcome_lines = st.fixed_dictionaries(
    {
        "email": texts,
        "name": texts,
        "row": st.integers(1, 10**9),
        "status": st.sampled_from(OUTCOME_STATUSES),
        "email_id": st.none(),
        "message_id": st.none(),
        "flags": st.lists(st.from_regex(r"[a-z_]{1,20}", fullmatch=True), max_size=3),
        "status_details": optional_texts,
        "smtp_code": st.one_of(st.none(), st.integers(0, 599)),
        "smtp_message": optional_texts,
        "try_count": st.integers(0, 50),
        "submitted_at": st.one_of(st.none(), moments),
        "final_at": st.one_of(st.none(), moments),
        "attempts": st.integers(0, 50),
        "reason": optional_texts,
    }
)


async def _each(lines: list[dict[str, Any]]) -> AsyncIterator[Mapping[str, Any]]:
    for item in lines:
        yield item


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(outcome_lines, min_size=1, max_size=5))
def test_csv_and_jsonl_outcomes_parse_to_the_same_outcomes(
    tmp_path: Path, lines: list[dict[str, Any]]
) -> None:
    """Lines written by bulksend as CSV (formula cells quoted, flags joined, numbers as text) and as
    JSONL read back to the Outcomes of the lines themselves."""
    expected = [parse_outcome(item) for item in lines]
    for suffix in (".csv", ".jsonl"):
        path = tmp_path / f"o{suffix}"
        anyio.run(write_outcomes, path, _each(lines))
        got: list[Outcome] = list(read_outcome_file(path))
        assert got == expected, suffix


@given(
    st.dictionaries(
        st.sampled_from(["row", "status", "flags", "try_count", "final_at", "email"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.lists(st.text())),
    )
)
def test_the_parser_takes_any_values_without_raising(values: dict[str, Any]) -> None:
    """A hand-edited line with values of the wrong types parses (unreadable values become empty)."""
    outcome = parse_outcome(values)
    assert isinstance(outcome.try_count, int)
    assert outcome.status
    ReportAggregate().add(outcome)


def test_over_time_draws_the_send_and_counts_the_slow_tail_apart() -> None:
    """A 100-s send whose last few emails became final two days later: the drawn window is the
    send, at a fine interval, and the late final statuses are counted as `later`."""
    agg = ReportAggregate()
    for i in range(100):
        late = i >= 97
        agg.add(line(i + 1, "sent", submitted=T0 + i, final=T0 + i + (172_800 if late else 2)))
    drawn = agg.over_time()
    assert drawn.interval_s == 60  # two days of tail kept at one-minute intervals, within 5,000
    assert drawn.rows[0][0] == T0
    assert len(drawn.rows) == 2  # 12:00 and 12:01
    assert sum(c[0] for _, c in drawn.rows) == 100
    assert sum(c[1] for _, c in drawn.rows) == 97
    assert drawn.later == 3
    assert drawn.last_later == T0 + 172_920  # the end of the minute of the last one, T0 + 172,899 s


def test_over_time_draws_a_short_tail_with_the_send() -> None:
    """Final statuses a little after the send, that fit at the same interval, are drawn too."""
    agg = ReportAggregate()
    for i in range(100):
        agg.add(line(i + 1, "sent", submitted=T0 + i, final=T0 + i + (30 if i >= 97 else 2)))
    drawn = agg.over_time()
    assert drawn.later == 0
    assert sum(c[1] for _, c in drawn.rows) == 100
