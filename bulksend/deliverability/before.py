"""What ``bulksend send`` does before a campaign sends: check the sender's domain, sync TEM's
blocklists into the suppression list, and check the monthly quota.

Warnings and notes go to stderr, one line each; a domain that must not send raises
:class:`~bulksend.deliverability.preflight.DomainRefused` (exit code 1, nothing sent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog
from rich.console import Console

from bulksend.campaign.model import Campaign
from bulksend.cli.display import print_text
from bulksend.deliverability.blocklists import sync_blocklists
from bulksend.deliverability.preflight import check_domain, check_quota
from bulksend.errors import BulksendError
from bulksend.store.base import CampaignState, Store
from bulksend.suppression import SuppressionStore
from bulksend.tem.client import TemClient

__all__ = ["SendChecks", "before_sending"]

log = structlog.get_logger("bulksend.deliverability")


class SendChecks(Protocol):
    """The options :func:`before_sending` reads (``RunOptions`` of ``bulksend send``)."""

    @property
    def force(self) -> bool: ...

    @property
    def monthly_quota(self) -> int | None: ...


def _stderr_line(text: str) -> None:
    print_text(Console(stderr=True, soft_wrap=True), text)


async def before_sending(
    tem: TemClient,
    store: Store,
    campaign: Campaign,
    options: SendChecks,
    total_rows: int | None,
    *,
    suppression: SuppressionStore | None = None,
    say: Callable[[str], None] = _stderr_line,
) -> None:
    """Run the checks; a campaign that already finished is not checked (it sends nothing).

    ``store`` holds the campaign's state; ``suppression`` the suppression list (default: ``store``).
    """
    record = await store.get_campaign(campaign.id)
    if record is not None and record.state is CampaignState.FINISHED:
        return
    check = await check_domain(tem, campaign.from_.email, force=options.force)
    for warning in check.warnings:
        say(f"warning: {warning}")
    if check.domain is not None:
        try:
            synced = await sync_blocklists(tem, store if suppression is None else suppression)
        except BulksendError as exc:
            say(f"warning: could not sync TEM's blocklists into the suppression list: {exc}")
        else:
            if synced.entries or synced.removed:
                say(
                    f"suppression list: {synced.entries:,} addresses blocklisted by TEM"
                    + (f", {synced.removed:,} no longer blocklisted" if synced.removed else "")
                )
    done = 0
    if record is not None:
        counts = await store.counts(campaign.id)
        done = sum(n for key, n in counts.items() if key != "pending")
    remaining = max(0, (total_rows or 0) - done)
    quota = await check_quota(tem, remaining, options.monthly_quota)
    if quota is not None:
        say(f"warning: {quota}")
