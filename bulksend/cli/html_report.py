"""The HTML report from the command line: ``report --html``, and what ``send`` adds to a run
(its flow-control timeline while it runs, the report beside the outcomes when it ends)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from bulksend.campaign.model import Campaign
from bulksend.cli.display import print_error, print_text
from bulksend.reporting.files import default_report_path, timeline_path, write_report
from bulksend.reporting.html import ReportMeta
from bulksend.reporting.timeline import RunInfo, record_timeline

if TYPE_CHECKING:
    from bulksend.pipeline.limiter import RateLimiter
    from bulksend.pipeline.stats import RunStats

__all__ = ["campaign_report", "record_campaign_timeline", "write_html_report"]


def write_html_report(outcomes: Path, html: Path, console: Console, *, meta: ReportMeta | None = None) -> int:
    """Write the report of ``outcomes`` to ``html`` and say where on ``console`` (with the summary);
    0, or 1 when it could not be written (said on stderr)."""
    try:
        files = write_report(outcomes, html, meta=meta)
    except (ValueError, UnicodeDecodeError, OSError) as exc:  # not outcomes, or a file not writable
        print_error(Console(stderr=True, soft_wrap=True), f"no report written to {html}: {exc}")
        return 1
    resend = ""
    if files.resend is not None:
        who = "recipient" if files.resend_rows == 1 else "recipients"
        resend = f"; {files.resend_rows:,} {who} worth sending again: {files.resend}"
    print_text(console, f"report: {files.html} ({files.bytes / 1024:,.0f} KB){resend}")
    return 0


def _sender(campaign: Campaign) -> str:
    sender = campaign.from_
    return f"{sender.name} <{sender.email}>" if sender.name else sender.email


def campaign_report(campaign: Campaign, outcomes: Path | None) -> None:
    """The report of a ``send`` run, beside its outcomes file (nothing when none was written);
    where it is goes to stdout after the summary (stderr has the progress and the log lines).

    A report that cannot be written is said on stderr; it never changes how the run ended.
    """
    if outcomes is None or not outcomes.exists():
        return
    meta = ReportMeta(
        campaign_id=campaign.id, sender=_sender(campaign), recipients=str(campaign.recipients.resolve())
    )
    write_html_report(outcomes, default_report_path(outcomes), Console(soft_wrap=True), meta=meta)


async def record_campaign_timeline(campaign: Campaign, stats: RunStats, limiter: RateLimiter) -> None:
    """Record the run's flow control beside its outcomes file until cancelled (see
    :mod:`bulksend.reporting.timeline`)."""
    run = RunInfo(
        campaign=campaign.id,
        sender=_sender(campaign),
        recipients=str(campaign.recipients.resolve()),
        recipients_sha256=None,
        started=time.time(),
    )
    await record_timeline(timeline_path(campaign.output.outcomes), stats, limiter, run)
