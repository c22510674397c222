"""``bulksend recheck OUTCOMES_OR_CAMPAIGN``: look the ``unknown`` emails up at TEM again.

An email tracking gave up on (``tracking.give_up_after_s``) may have become final since. This
finds the final ones among them in batched list calls (:func:`~bulksend.pipeline.reconcile.find_final_emails`)
and records what TEM says: in the outcomes file (rewritten atomically), and, given a campaign
file, in the campaign's state store first, from which its outcomes file is then written again.

Exit codes: 0 every unknown email is final now; 1 the file, the settings or an option is wrong;
2 TEM refused the account; 3 some emails are still unknown (not final at TEM yet, never submitted,
or TEM could not be asked): run it again later.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console

from bulksend.campaign.load import Campaign, load_campaign
from bulksend.cli.args import configure_recheck as configure
from bulksend.cli.display import print_error, print_text
from bulksend.cli.runtime import uvloop_available
from bulksend.errors import BulksendError, CampaignError, ConfigError, TemError
from bulksend.log import configure_logging, register_secret
from bulksend.pipeline.context import SendContext
from bulksend.pipeline.dispatch import account_refusal
from bulksend.pipeline.limiter import AimdLimiter
from bulksend.pipeline.reconcile import find_final_emails
from bulksend.pipeline.retry import RetryPolicy
from bulksend.pipeline.stats import RunStats
from bulksend.pipeline.tracker import final_update
from bulksend.settings import load_account_settings
from bulksend.sinks.outcomes import outcome_lines, read_outcomes, resolved_line, write_outcomes
from bulksend.store import open_store
from bulksend.store.base import RowState, Store
from bulksend.store.memory import MemoryStore
from bulksend.tem.client import TemClient
from bulksend.tem.config import TemSettings
from bulksend.tem.models import Email, parse_rfc3339

__all__ = ["Recheck", "configure", "run"]

EXIT_OK, EXIT_CONFIG, EXIT_ACCOUNT, EXIT_OPEN = 0, 1, 2, 3
RATE_PER_S = 20.0
"""Requests per second without a campaign's own rate (an outcomes file): a few list calls."""


@dataclass
class Recheck:
    """What a recheck found."""

    unknown: int = 0
    """Unknown rows with a TEM email id (the ones that can be looked up)."""
    final: Counter[str] = field(default_factory=Counter)
    """Of those, the ones final at TEM now, by status."""
    never_submitted: int = 0
    """Unknown rows TEM never accepted: only resuming the campaign can send them."""

    @property
    def resolved(self) -> int:
        return sum(self.final.values())


def run(args: argparse.Namespace) -> int:
    configure_logging("auto", "warning")
    err = Console(stderr=True, soft_wrap=True)
    target: Path = args.target
    try:
        if not target.exists():
            raise ConfigError(f"{target}: no such file")
        campaign = load_campaign(target) if target.suffix.lower() == ".toml" else None
        if campaign is None and target.suffix.lower() not in (".jsonl", ".csv"):
            raise ConfigError(f"{target}: give an outcomes file (.jsonl or .csv) or a campaign file (.toml)")
        store_url = None
        if campaign is not None:
            store_url = load_account_settings(settings_file=args.settings, store_url=args.store).store_url
        elif args.store is not None:
            raise ConfigError("--store goes with a campaign file: give the campaign file, not its outcomes")
        settings = TemSettings.load(
            api_url=args.api_url, project_id=args.project_id, region=args.region, profile=args.profile
        )
    except (CampaignError, ConfigError) as exc:
        print_error(err, exc)
        return EXIT_CONFIG
    register_secret(settings.secret_key.reveal())
    try:
        if campaign is None:
            found = anyio.run(
                _recheck_file, target, settings, backend_options={"use_uvloop": uvloop_available()}
            )
            where = str(target)
        else:
            found = anyio.run(
                _recheck_campaign,
                campaign,
                settings,
                store_url,
                backend_options={"use_uvloop": uvloop_available()},
            )
            where = f"{campaign.output.outcomes} and the campaign's state"
    except TemError as exc:
        refused = account_refusal(exc)
        if refused is not None:
            print_error(err, refused, label="stopped")
            return EXIT_ACCOUNT
        print_error(err, f"TEM could not be asked ({exc}); nothing was changed: run it again later")
        return EXIT_OPEN
    except (BulksendError, ValueError, UnicodeDecodeError) as exc:
        print_error(err, exc)
        return EXIT_CONFIG
    return _report(found, where, target)


def _report(found: Recheck, where: str, target: Path) -> int:
    out = Console(soft_wrap=True)
    if not found.unknown and not found.never_submitted:
        print_text(out, f"{target}: no unknown email to look up.")
        return EXIT_OK
    statuses = ", ".join(f"{status} {n:,}" for status, n in found.final.most_common())
    print_text(
        out,
        f"looked up {found.unknown:,} unknown emails at TEM: {found.resolved:,} are final now"
        + (f" ({statuses}); {where} updated." if found.resolved else "."),
    )
    still = found.unknown - found.resolved
    if still:
        print_text(out, f"{still:,} are not final at TEM yet: run `bulksend recheck {target}` again later.")
    if found.never_submitted:
        print_text(
            out,
            f"{found.never_submitted:,} unknown rows were never submitted to TEM: resume the campaign "
            "(`bulksend send CAMPAIGN`) to send them.",
        )
    return EXIT_OK if not still and not found.never_submitted else EXIT_OPEN


async def _look_up(
    settings: TemSettings,
    submitted: Mapping[str, datetime | None],
    *,
    store: Store,
    rate_per_s: float,
    mail_from: str | None,
) -> dict[str, Email]:
    """The final emails among ``submitted`` (email id → submission time), from TEM."""
    if not submitted:
        return {}
    async with TemClient(settings) as tem:
        context = SendContext(store, tem, AimdLimiter(rate_per_s, burst=10), RunStats(), RetryPolicy())
        return await find_final_emails(context, submitted=submitted, mail_from=mail_from)


async def _recheck_file(path: Path, settings: TemSettings) -> Recheck:
    """Look the unknown lines of an outcomes file up; write the file again if any became final."""
    found = Recheck()
    submitted: dict[str, datetime | None] = {}
    for line in await anyio.to_thread.run_sync(lambda: list(_unknown(read_outcomes(path)))):
        if line.get("email_id"):
            submitted[str(line["email_id"])] = _when(line.get("submitted_at"))
        else:
            found.never_submitted += 1
    found.unknown = len(submitted)
    # The lookups write nothing: the file is the record here, an in-memory store stands by.
    emails = await _look_up(settings, submitted, store=MemoryStore(), rate_per_s=RATE_PER_S, mail_from=None)
    if not emails:
        return found

    async def lines() -> AsyncIterator[Mapping[str, Any]]:
        # Read again while writing: memory stays flat for any size of file.
        for line in read_outcomes(path):
            email = emails.get(str(line.get("email_id") or "")) if line.get("status") == "unknown" else None
            if email is None:
                yield line
                continue
            found.final[email.status.value] += 1
            yield resolved_line(line, final_update(0, email))

    await write_outcomes(path, lines())
    return found


async def _recheck_campaign(campaign: Campaign, settings: TemSettings, store_url: str | None) -> Recheck:
    """Look a campaign's unknown rows up; record the final ones in its store, then write its outcomes."""
    found = Recheck()
    store = open_store(store_url or campaign.store_path)
    await store.open()
    try:
        rows: dict[str, int] = {}
        submitted: dict[str, datetime | None] = {}
        async for row in store.iter_rows(campaign.id, states=[RowState.FINAL]):
            if row.status != "unknown":
                continue
            if row.email_id:
                rows[row.email_id] = row.id
                submitted[row.email_id] = row.submitted_at
            else:
                found.never_submitted += 1
        found.unknown = len(submitted)
        emails = await _look_up(
            settings,
            submitted,
            store=store,
            rate_per_s=campaign.sending.rate_per_s,
            mail_from=campaign.from_.email,
        )
        updates = [final_update(rows[email_id], email) for email_id, email in emails.items()]
        with anyio.CancelScope(shield=True):
            await store.resolve_unknown(updates)
        for u in updates:
            found.final[u.status] += 1
        if updates or not campaign.output.outcomes.exists():
            await write_outcomes(campaign.output.outcomes, outcome_lines(store, campaign.id))
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
    return found


def _unknown(lines: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    return (line for line in lines if line.get("status") == "unknown")


def _when(value: object) -> datetime | None:
    try:
        return parse_rfc3339(value) if value else None
    except ValueError:
        return None
