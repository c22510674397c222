"""Writing a report: the outcomes file read once, the HTML report and its resend file beside it.

For ``out/welcome.jsonl``, ``bulksend send`` writes ``out/welcome.report.html`` and
``out/welcome.resend.csv``, and reads the run's ``out/welcome.timeline.jsonl``
(:mod:`~bulksend.reporting.timeline`); ``bulksend report OUT --html PATH`` writes PATH and the
resend file beside it. The report links the other files by relative paths, so the folder can be
moved or zipped whole. Files are written to a temporary name and renamed, ``0600`` (they name
recipients); the outcomes are streamed, so memory stays flat whatever their size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bulksend.reporting.aggregate import ReportAggregate
from bulksend.reporting.html import ReportMeta, render_report
from bulksend.reporting.outcome import outcome_lines
from bulksend.reporting.resend import RecipientVariables, resend_row
from bulksend.reporting.timeline import RunInfo, file_sha256, read_timeline
from bulksend.sinks.outcomes import write_file_atomically
from bulksend.sinks.report import worth_resending, write_resend_file

__all__ = [
    "ReportFiles",
    "default_report_path",
    "resend_path",
    "timeline_path",
    "write_report",
]


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    html: Path
    resend: Path | None
    """None when no row is worth sending again."""
    resend_rows: int
    rows: int
    bytes: int


def _stem(path: Path) -> Path:
    return path.with_name(path.name[: -len(path.suffix)] if path.suffix else path.name)


def default_report_path(outcomes: Path) -> Path:
    """``<outcomes stem>.report.html`` beside the outcomes file."""
    return _stem(outcomes).with_name(_stem(outcomes).name + ".report.html")


def timeline_path(outcomes: Path) -> Path:
    """``<outcomes stem>.timeline.jsonl`` beside the outcomes file."""
    return _stem(outcomes).with_name(_stem(outcomes).name + ".timeline.jsonl")


def resend_path(report: Path) -> Path:
    """``<name>.resend.csv`` beside the report ``<name>.report.html`` (or ``<name>.html``)."""
    name = _stem(report).name.removesuffix(".report")
    return report.with_name(f"{name}.resend.csv")


def _href(target: Path, report: Path) -> str:
    """``target`` as a link relative to the report's folder."""
    relative = os.path.relpath(target.resolve(), report.resolve().parent)
    return quote(Path(relative).as_posix())


def _from_runs(meta: ReportMeta, runs: list[RunInfo]) -> ReportMeta:
    """``meta`` completed from the runs the timeline recorded (what it already says wins)."""
    if not runs:
        return meta
    last = runs[-1]
    ends = [r.ended for r in runs if r.ended is not None]
    return replace(
        meta,
        campaign_id=meta.campaign_id or last.campaign,
        sender=meta.sender or last.sender or None,
        recipients=meta.recipients or last.recipients or None,
        recipients_sha256=meta.recipients_sha256 or last.recipients_sha256,
        started=min(r.started for r in runs),
        ended=max(ends) if ends else None,
        runs=len(runs),
    )


def _recipients_at_hand(meta: ReportMeta) -> Path | None:
    """The recipients file when it is there and still the one the campaign ran with."""
    if not meta.recipients:
        return None
    path = Path(meta.recipients)
    if not path.is_file():
        return None
    if meta.recipients_sha256 is not None and file_sha256(path) != meta.recipients_sha256:
        return None
    return path


def write_report(outcomes: Path, html: Path, *, meta: ReportMeta | None = None) -> ReportFiles:
    """Read ``outcomes`` (.jsonl or .csv) once and write the report to ``html`` with its resend file.

    ``meta`` says what the outcomes cannot (campaign, sender, recipients file); what it leaves
    out is taken from the run's timeline file when there is one. Raises ``ValueError`` (or
    ``UnicodeDecodeError``) when ``outcomes`` is not an outcomes file; nothing is written then.
    """
    runs, samples = read_timeline(timeline_path(outcomes))
    meta = _from_runs(meta or ReportMeta(), runs)
    recipients = _recipients_at_hand(meta)
    variables = RecipientVariables(recipients) if recipients is not None else None
    aggregate = ReportAggregate()

    def worth_it() -> Iterator[dict[str, Any]]:
        # One pass: every line is counted, and the rows worth resending go on to the writer.
        for line, outcome in outcome_lines(outcomes):
            aggregate.add(outcome)
            if worth_resending(line):
                yield resend_row(outcome, variables)

    resend = resend_path(html)
    resend_rows, _ = write_resend_file(resend, worth_it())
    if not resend_rows:
        resend.unlink()  # nothing to resend (and an earlier report's file would be stale)
    for sample in samples:
        aggregate.add_sample(sample)
    timeline = timeline_path(outcomes)
    meta = replace(
        meta,
        outcomes_href=_href(outcomes, html),
        resend_href=_href(resend, html) if resend_rows else None,
        resend_rows=resend_rows,
        timeline_href=_href(timeline, html) if runs else None,
        generated=time.time(),
    )
    document = render_report(aggregate, meta).encode()
    write_file_atomically(html, [document])
    return ReportFiles(
        html=html,
        resend=resend if resend_rows else None,
        resend_rows=resend_rows,
        rows=aggregate.rows,
        bytes=len(document),
    )
