"""``bulksend suppress add|remove|list|import|export``: the suppression list by hand; ``push``
sends its hard bounces to TEM (:mod:`bulksend.deliverability.push`).

The list is the one sends use (:mod:`bulksend.pipeline.suppress`): ``--store``, else
``BULKSEND_SUPPRESSION_URL``, else ``BULKSEND_STORE_URL`` (or the settings file's keys), else the
per-user list; the project is ``--project-id`` or the usual Scaleway settings. ``import`` reads the
whole file once to check it and adds nothing if any line is wrong (the first problems are listed);
then it adds the entries a thousand at a time. ``list`` and ``export`` write CSV
(:mod:`bulksend.suppression_csv`).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Final, TextIO

import anyio
from rich.console import Console

from bulksend.cli.args import configure_suppress as configure
from bulksend.cli.display import print_error, print_text
from bulksend.deliverability.push import run_push
from bulksend.errors import BulksendError, ConfigError
from bulksend.pipeline.suppress import default_suppression_path
from bulksend.settings import AccountSettings, load_account_settings
from bulksend.store import Store, describe_store, open_store
from bulksend.suppression import (
    SuppressionEntry,
    SuppressionReason,
    SuppressionSource,
    iter_suppressed,
    normalize_suppressed,
)
from bulksend.suppression_csv import CsvProblem, parse_when, read_suppression_csv, write_suppression_csv
from bulksend.tem.config import TemSettings

__all__ = ["configure", "run"]

_BATCH: Final = 1000
_SHOWN_PROBLEMS: Final = 10
# The list needs the project only; no call is made to TEM, so no key is needed either.
_NO_KEY: Final = "not-needed-for-the-suppression-list"


def suppression_target(store: str | None, account: AccountSettings) -> str:
    """The list the command works on: ``--store``, else the account's suppression or shared store,
    else the per-user list."""
    return store or account.suppression_url or account.store_url or str(default_suppression_path())


def run(args: argparse.Namespace) -> int:
    if args.action == "push":
        return run_push(args)
    console = Console(stderr=True, soft_wrap=True)
    try:
        project = TemSettings.load(
            secret_key=_NO_KEY, project_id=args.project_id, profile=args.profile
        ).project_id
        account = load_account_settings(settings_file=args.settings, store_url=args.store)
        store = open_store(suppression_target(args.store, account))
        return anyio.run(_act, args, store, project, console)
    except (BulksendError, OSError) as exc:
        print_error(console, exc)
        return 1


async def _act(args: argparse.Namespace, store: Store, project: str, console: Console) -> int:
    await store.open()
    try:
        return await _do(args, store, project, console)
    finally:
        await store.close()


async def _do(args: argparse.Namespace, store: Store, project: str, console: Console) -> int:
    action = args.action
    if action == "add":
        return await _add(args, store, project, console)
    if action == "remove":
        source = SuppressionSource(args.source) if args.source else None
        removed = await store.unsuppress(project, [normalize_suppressed(a) for a in args.addresses], source)
        print_text(
            console,
            f"removed {removed} entr{'y' if removed == 1 else 'ies'} from the {describe_store(store)}",
        )
        return 0
    if action == "import":
        return await _import(args, store, project, console)
    entries = iter_suppressed(store, project, active_only=not args.all)
    if action == "list":
        await _write(sys.stdout, entries)
        return 0
    with args.file.open("w", encoding="utf-8", newline="") as out:
        n = await _write(out, entries)
    print_text(console, f"wrote {n} entries to {args.file}")
    return 0


async def _add(args: argparse.Namespace, store: Store, project: str, console: Console) -> int:
    now = datetime.now(UTC)
    try:
        until = parse_when(args.until) if args.until else None
    except ValueError:
        raise ConfigError(
            f"--until {args.until!r} is not a date: write 2026-12-01 or 2026-12-01T08:00:00Z"
        ) from None
    reason = SuppressionReason(args.reason)
    entries = [
        SuppressionEntry(a, reason, SuppressionSource.MANUAL, now, until, args.origin) for a in args.addresses
    ]
    await store.suppress(project, entries)
    print_text(console, f"suppressed {len(entries)} address(es) in the {describe_store(store)}")
    return 0


async def _import(args: argparse.Namespace, store: Store, project: str, console: Console) -> int:
    read = functools.partial(
        read_suppression_csv,
        reason=SuppressionReason(args.reason),
        now=datetime.now(UTC),
        origin=f"file {args.file.name}",
    )
    problems: list[CsvProblem] = []
    with args.file.open(encoding="utf-8", errors="replace", newline="") as lines:
        for found in read(lines):
            if isinstance(found, CsvProblem):
                problems.append(found)
    if problems:
        for problem in problems[:_SHOWN_PROBLEMS]:
            print_error(console, f"{args.file}, {problem}")
        more = len(problems) - _SHOWN_PROBLEMS
        print_error(
            console,
            f"nothing imported{f' ({more} more problems)' if more > 0 else ''}; fix the file and run again",
        )
        return 1
    total = 0
    with args.file.open(encoding="utf-8", errors="replace", newline="") as lines:
        batch: list[SuppressionEntry] = []
        for found in read(lines):
            if isinstance(found, SuppressionEntry):
                batch.append(found)
            if len(batch) == _BATCH:
                await store.suppress(project, batch)
                total, batch = total + len(batch), []
        await store.suppress(project, batch)
        total += len(batch)
    print_text(console, f"imported {total} entries into the {describe_store(store)}")
    return 0


async def _write(out: TextIO, entries: AsyncIterator[SuppressionEntry]) -> int:
    """Write the entries as CSV a page at a time (memory stays flat for any list)."""
    page: list[SuppressionEntry] = []
    n = 0
    async for entry in entries:
        page.append(entry)
        if len(page) == _BATCH:
            n += write_suppression_csv(out, page, header=n == 0)
            page = []
    return n + write_suppression_csv(out, page, header=n == 0)
