"""TEM's blocklists and the local suppression list, both ways.

:func:`sync_blocklists` copies every blocklist entry of the project's domains into the suppression
list, with source ``tem`` (reason ``mailbox_full`` or ``mailbox_not_found``, ``until`` = the
entry's ``ends_at``), and takes out the ``tem`` entries TEM no longer lists (deleted in the
console, or ended). ``bulksend send`` runs it before a campaign, ``bulksend serve`` every
``[deliverability] blocklist_sync_s``.

:func:`push_hard_bounces` goes the other way: local hard bounces (reasons ``hard_bounce`` and
``mailbox_not_found`` not from TEM) become custom blocklists of each domain, so that other senders
of the project (SMTP, other tools) stop mailing them too. Custom blocklists are a feature of TEM's
**Scale** plan: on Essential, TEM refuses, and :class:`PushRefused` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import structlog

from bulksend.errors import AuthenticationError, PushRefused, TemPermanentError
from bulksend.suppression import (
    SuppressionEntry,
    SuppressionReason,
    SuppressionSource,
    SuppressionStore,
    iter_suppressed,
)
from bulksend.tem.client import TemClient
from bulksend.tem.deliverability import Blocklist, BlocklistType, Domain

__all__ = [
    "PUSH_BATCH",
    "PushRefused",
    "PushResult",
    "SyncResult",
    "push_hard_bounces",
    "sync_blocklists",
]

log = structlog.get_logger("bulksend.deliverability")

PUSH_BATCH: Final = 100
"""Addresses per ``POST /blocklists``."""
_WRITE_BATCH: Final = 1000
_REASONS: Final = {
    BlocklistType.MAILBOX_FULL: SuppressionReason.MAILBOX_FULL,
    BlocklistType.MAILBOX_NOT_FOUND: SuppressionReason.MAILBOX_NOT_FOUND,
}
_HARD_BOUNCES: Final = frozenset({SuppressionReason.HARD_BOUNCE, SuppressionReason.MAILBOX_NOT_FOUND})
_SCALE_PLAN: Final = (
    "custom blocklists need TEM's Scale plan; change the project's plan in the Scaleway console "
    "(Transactional Email → Plan), or rely on bulksend's own suppression list, which every "
    "bulksend send already consults and which needs no plan"
)


@dataclass(frozen=True)
class SyncResult:
    """What one sync did."""

    domains: int
    entries: int
    """TEM blocklist entries copied (added or refreshed)."""
    removed: int
    """Local ``tem`` entries taken out because TEM no longer lists them."""


@dataclass(frozen=True)
class PushResult:
    """What one push did."""

    domains: int
    pushed: int
    """Addresses added to TEM as custom blocklists (summed over domains)."""
    already: int
    """Addresses TEM already blocked (summed over domains)."""


def _entry(block: Blocklist, domain: Domain, now: datetime) -> SuppressionEntry:
    return SuppressionEntry(
        address=block.email,
        reason=_REASONS.get(block.type, SuppressionReason.BLOCKLISTED),
        source=SuppressionSource.TEM,
        since=block.created_at or now,
        until=block.ends_at,
        origin=f"TEM blocklist of {domain.name}",
    )


async def sync_blocklists(
    tem: TemClient, store: SuppressionStore, *, now: datetime | None = None
) -> SyncResult:
    """Copy the blocklists of every domain of the client's project into the suppression list."""
    now = now or datetime.now(UTC)
    project = tem.settings.project_id
    domains = [d async for d in tem.iter_domains()]
    seen: set[str] = set()
    batch: list[SuppressionEntry] = []
    copied = 0
    for domain in domains:
        async for block in tem.iter_blocklists(domain.id):
            if not block.email or (block.ends_at is not None and block.ends_at <= now):
                continue
            entry = _entry(block, domain, now)
            seen.add(entry.address)
            batch.append(entry)
            if len(batch) >= _WRITE_BATCH:
                await store.suppress(project, batch)
                copied += len(batch)
                batch = []
    if batch:
        await store.suppress(project, batch)
        copied += len(batch)
    gone = sorted(
        {
            e.address
            async for e in iter_suppressed(store, project)
            if e.source is SuppressionSource.TEM and e.address not in seen
        }
    )
    removed = await store.unsuppress(project, gone, SuppressionSource.TEM) if gone else 0
    log.info("blocklists.synced", project=project, domains=len(domains), entries=copied, removed=removed)
    return SyncResult(domains=len(domains), entries=copied, removed=removed)


async def push_hard_bounces(
    tem: TemClient, store: SuppressionStore, *, domain: str | None = None
) -> PushResult:
    """Add the project's local hard bounces to TEM as custom blocklists of each domain (or of
    ``domain`` only). Raises :class:`PushRefused` when TEM refuses (the Essential plan)."""
    project = tem.settings.project_id
    bounces = sorted(
        {
            e.address
            async for e in iter_suppressed(store, project, active_only=True)
            if e.reason in _HARD_BOUNCES and e.source is not SuppressionSource.TEM
        }
    )
    if domain is None:
        domains = [d async for d in tem.iter_domains()]
    else:
        found = await tem.find_domain(domain.strip())
        if found is None:
            raise PushRefused(f"{domain} is not a domain of TEM project {project}")
        domains = [found]
    pushed = already = 0
    for target in domains:
        blocked = {b.email.lower() async for b in tem.iter_blocklists(target.id)}
        todo = [a for a in bounces if a not in blocked]
        already += len(bounces) - len(todo)
        for start in range(0, len(todo), PUSH_BATCH):
            chunk = todo[start : start + PUSH_BATCH]
            try:
                await tem.create_blocklists(
                    target.id,
                    chunk,
                    type=BlocklistType.MAILBOX_NOT_FOUND,
                    reason="hard bounce recorded by bulksend",
                )
            except AuthenticationError:
                raise
            except TemPermanentError as exc:
                raise PushRefused(
                    f"TEM refused to create custom blocklists for {target.name} ({exc}); {_SCALE_PLAN}"
                    + (f". {pushed:,} addresses were pushed before the refusal" if pushed else "")
                ) from None
            pushed += len(chunk)
    log.info("blocklists.pushed", project=project, domains=len(domains), pushed=pushed, already=already)
    return PushResult(domains=len(domains), pushed=pushed, already=already)
