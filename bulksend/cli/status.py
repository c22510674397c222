"""``bulksend status [CAMPAIGN]``: what the shared store says, live: each worker's liveness and
counters, each campaign's rows by state and its recent rate.

Reads only: nothing is reaped or changed (the live workers reap dead ones within a second). The
store comes from ``--store``, ``BULKSEND_STORE_URL`` or the settings file (see
:mod:`bulksend.settings`); a SQLite store has campaigns and rows but no workers.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from rich.console import Console
from rich.table import Table

from bulksend.cli.args import configure_status as configure
from bulksend.cli.display import print_error
from bulksend.errors import BulksendError
from bulksend.settings import load_account_settings, redact_url
from bulksend.store import Store, describe_store, open_store

__all__ = ["collect_status", "configure", "run"]

_STATES = ("pending", "sending", "submitted", "final", "rejected", "skipped")


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    try:
        account = load_account_settings(settings_file=args.settings, store_url=args.store)
        if not account.store_url:
            print_error(console, "no store: pass --store URL, or set BULKSEND_STORE_URL or store_url")
            return 1
        store = open_store(account.store_url)
        status = anyio.run(collect_status, store, args.campaign, args.window_s)
    except BulksendError as exc:
        print_error(console, exc)
        return 1
    if args.campaign is not None and not status["campaigns"]:
        print_error(console, f"no campaign {args.campaign!r} in the {status['store']}")
        return 1
    if args.json:
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_tables(status, Console())
    return 0


async def collect_status(store: Store, campaign: str | None = None, window_s: float = 10.0) -> dict[str, Any]:
    """The status document: ``store``, ``workers`` and ``campaigns`` (see the module docstring)."""
    await store.open()
    try:
        if campaign is not None:
            record = await store.get_campaign(campaign)
            records = [record] if record is not None else []
        else:
            records = await store.list_campaigns()
        campaigns: list[dict[str, Any]] = []
        recent_rate = getattr(store, "recent_rate", None)
        for rec in records:
            counts = await store.counts(rec.id)
            rate = await recent_rate(rec.id, window_s=window_s) if recent_rate is not None else None
            campaigns.append(
                {
                    "id": rec.id,
                    "state": rec.state.value,
                    "admitted_all": rec.admitted_all,
                    "rows": {s: counts.get(s, 0) for s in _STATES},
                    "rate_per_s": rate,
                    "rate_window_s": window_s,
                }
            )
        workers: list[dict[str, Any]] = []
        list_workers = getattr(store, "list_workers", None)
        if list_workers is not None:
            now = datetime.now(UTC)
            for w in await list_workers(campaign):
                workers.append(
                    {
                        "worker_id": w.worker_id,
                        "campaign": w.campaign_id,
                        "alive": w.alive,
                        # A recorded `running` whose lock is free: dead, not reaped yet.
                        "state": w.state if w.alive or w.state != "running" else "dead",
                        "heartbeat_age_s": round((now - w.heartbeat_at).total_seconds(), 1),
                        "started_at": w.started_at.isoformat(),
                        "host": w.info.get("host", ""),
                        "pid": w.info.get("pid"),
                        "stats": w.stats,
                    }
                )
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
    return {"store": redact_url(describe_store(store)), "workers": workers, "campaigns": campaigns}


def _print_tables(status: dict[str, Any], console: Console) -> None:
    console.print(f"[bold]{status['store']}[/bold]")
    if status["workers"]:
        table = Table(title="workers")
        for column in ("worker", "campaign", "state", "heartbeat", "host", "pid", "sent", "429s"):
            table.add_column(column)
        for w in status["workers"]:
            stats = w["stats"]
            table.add_row(
                w["worker_id"],
                w["campaign"],
                w["state"],
                f"{w['heartbeat_age_s']:.1f} s ago",
                str(w["host"]),
                str(w["pid"] or ""),
                f"{stats.get('submitted', 0):,}",
                f"{stats.get('throttled', 0):,}",
            )
        console.print(table)
    table = Table(title="campaigns")
    for column in ("campaign", "state", *_STATES, "emails/s"):
        table.add_column(column, justify="right" if column in (*_STATES, "emails/s") else "left")
    for c in status["campaigns"]:
        rate = c["rate_per_s"]
        table.add_row(
            c["id"],
            c["state"] + ("" if c["admitted_all"] else " (admitting)"),
            *(f"{c['rows'][s]:,}" for s in _STATES),
            "" if rate is None else f"{rate:,.1f}",
        )
    console.print(table)
