"""Every sub-command's arguments, declared without importing what runs the command.

``bulksend --help`` and ``bulksend send --help`` build their parser from this module alone (plus
argparse), so they answer at once: the implementations (aiohttp, Rich, Jinja, the brokers, the
daemon…) are imported only when a command runs (see :mod:`bulksend.cli.main`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "COMMANDS",
    "Command",
    "add_api_options",
    "add_output_options",
    "configure_demo",
    "configure_recheck",
    "configure_report",
    "configure_send",
    "configure_serve",
    "configure_status",
    "configure_suppress",
    "configure_webhooks",
]

_LOG_LEVELS = ("debug", "info", "warning", "error")


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """Options that override the SCW_* environment and the scw profile."""
    g = parser.add_argument_group("API settings (override SCW_* variables and the scw profile)")
    g.add_argument("--api-url", help="API base URL (SCW_API_URL; default https://api.scaleway.com)")
    g.add_argument("--project-id", help="project id (SCW_DEFAULT_PROJECT_ID)")
    g.add_argument("--region", help="region (SCW_DEFAULT_REGION; default fr-par)")
    g.add_argument("--profile", help="scw config profile (SCW_PROFILE)")


def _add_log_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, log_format: str, log_level: str
) -> None:
    """``--log-format`` and ``--log-level``, defaulting to a command's own ``log_format`` ("auto":
    console text on a terminal, JSON elsewhere) and ``log_level``."""
    shown = "console on a terminal" if log_format == "auto" else log_format
    parser.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        default=log_format,
        help=f"log lines as console text or JSON (default: {shown})",
    )
    levels = ", ".join(f"{name} (default)" if name == log_level else name for name in _LOG_LEVELS)
    parser.add_argument("--log-level", default=log_level, help=levels)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Log format and level, and the live progress display."""
    g = parser.add_argument_group("output")
    _add_log_options(g, log_format="auto", log_level="warning")
    g.add_argument("--no-progress", action="store_true", help="no live progress display")


def configure_send(parser: argparse.ArgumentParser) -> None:
    """``bulksend send CAMPAIGN.toml``."""
    parser.add_argument("campaign", type=Path, help="campaign file (TOML)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="render and validate every recipient, send nothing, say what would be rejected",
    )
    parser.add_argument(
        "--rejects",
        type=Path,
        metavar="PATH",
        help="with --dry-run: where to write the rejected rows, in the recipients file's format with a "
        "`reason` column added (default <campaign id>.rejected.csv or .jsonl next to the outcomes file)",
    )
    parser.add_argument(
        "--resume-paused",
        action="store_true",
        help="send again a campaign that paused itself (a bounce storm) or was paused; "
        "without it a paused campaign only tracks what it already sent",
    )
    parser.add_argument(
        "--reconcile-all",
        action="store_true",
        help="before sending, look every unfinished recipient up at TEM (batched lists) and never "
        "resend what TEM already has: the way back after the state store lost sends",
    )
    parser.add_argument(
        "--store",
        help="state store: a SQLite file (default from the campaign) or postgresql://… shared by workers "
        "(or BULKSEND_STORE_URL, or store_url in the settings file: keeps a password out of `ps`)",
    )
    parser.add_argument(
        "--settings",
        type=Path,
        metavar="FILE",
        help="account settings file (TOML; default $BULKSEND_SETTINGS or ~/.config/bulksend/settings.toml "
        "if it exists): store_url, redis_url, limiter_prefix, account_rate_per_s",
    )
    g = parser.add_argument_group("try it first (nothing is sent to the recipients)")
    g.add_argument(
        "--preview",
        type=int,
        metavar="N",
        help="write the first N rendered emails as .eml files to open in a mail client; sends nothing "
        "(alone, or with --dry-run)",
    )
    g.add_argument(
        "--preview-dir",
        type=Path,
        metavar="DIR",
        help="folder for --preview (default <campaign id>-preview next to the campaign file)",
    )
    g.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="send the first N valid rows, each rendered with its own variables, to --to only, with the "
        "subject prefixed '[sample] '; records nothing, so a later run still sends to everyone",
    )
    g.add_argument("--to", metavar="ADDRESS", help="the address that receives the --sample emails")
    g = parser.add_argument_group("pace (override the campaign file's [sending])")
    g.add_argument("--rate", type=float, metavar="PER_S", help="emails per second (rate_per_s)")
    g.add_argument("--concurrency", type=int, metavar="N", help="requests in flight at most (concurrency)")
    g = parser.add_argument_group("scale-out (several processes on one campaign)")
    g.add_argument(
        "--worker",
        action="store_true",
        help="run as one of several workers on the campaign (needs a PostgreSQL --store)",
    )
    g.add_argument("--worker-id", help="this worker's name (default hostname-pid)")
    g.add_argument(
        "--shared-limiter",
        metavar="REDIS_URL",
        help="redis://… — one rate limit shared by every process of the account "
        "(or BULKSEND_REDIS_URL, or redis_url in the settings file)",
    )
    g.add_argument(
        "--prefetch",
        type=int,
        metavar="N",
        help="rows a worker claims ahead of its sends (default 4 × concurrency); a dead worker's are "
        "taken back within seconds",
    )
    g.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on GET /metrics at this port (0: a free one, logged as "
        "metrics.listening); the same series as the daemon's",
    )
    g.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="interface of --metrics-port (default 127.0.0.1; no token: keep it private)",
    )
    g.add_argument(
        "--lease-s",
        type=float,
        default=30.0,
        help="how long a worker's claim on a recipient lasts without renewal (default 30)",
    )
    parser.add_argument(
        "--outcomes", type=Path, help="outcomes file (.jsonl or .csv); default from the campaign"
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=30.0,
        help="on Ctrl-C/SIGTERM, seconds to let in-flight requests finish (default 30)",
    )
    g = parser.add_argument_group("deliverability (docs/deliverability.md)")
    g.add_argument(
        "--force",
        action="store_true",
        help="send even when the domain's reputation score is under 50 (TEM locks it there)",
    )
    g.add_argument(
        "--monthly-quota",
        type=int,
        default=10_000,
        metavar="N",
        help="the project's monthly email quota, to warn past 70 %% of it (default 10,000; 0: no check)",
    )
    add_api_options(parser)
    add_output_options(parser)


def configure_serve(parser: argparse.ArgumentParser) -> None:
    """``bulksend serve --config daemon.toml``."""
    parser.add_argument("--config", type=Path, required=True, help="daemon config file (TOML)")
    _add_log_options(parser, log_format="json", log_level="info")


def configure_demo(parser: argparse.ArgumentParser) -> None:
    """``bulksend demo``."""
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("bulksend-demo"),
        help="folder for the demo campaign and its outcomes (default ./bulksend-demo)",
    )
    parser.add_argument(
        "--recipients", type=int, default=10_000, help="number of recipients (default 10,000)"
    )
    parser.add_argument(
        "--rate", type=float, default=20_000, help="rate_per_s of the campaign (default 20,000)"
    )
    add_output_options(parser)


def configure_report(parser: argparse.ArgumentParser) -> None:
    """``bulksend report OUTCOMES``."""
    parser.add_argument("outcomes", type=Path, help="outcomes file written by `bulksend send`")
    g = parser.add_argument_group("which rows")
    g.add_argument(
        "--status",
        metavar="LIST",
        help="only rows with one of these statuses, comma-separated: sent, failed, canceled, rejected, "
        "skipped, unknown",
    )
    g.add_argument(
        "--flag",
        metavar="LIST",
        help="only rows with one of these flags, comma-separated (hard_bounce, soft_bounce, …)",
    )
    g = parser.add_argument_group("what to print")
    g.add_argument(
        "--format",
        choices=["table", "csv", "jsonl"],
        default="table",
        help="table: the summary (default); csv or jsonl: the rows themselves, to stdout",
    )
    g.add_argument(
        "--domain",
        action="store_true",
        help="rows, sent, failed and other per recipient domain, the largest first",
    )
    g.add_argument(
        "--top", type=int, default=20, metavar="N", help="with --domain: the N largest domains (default 20)"
    )
    g.add_argument(
        "--resend-file",
        type=Path,
        metavar="PATH",
        help="write the rows worth sending again (canceled, unknown, failed with a temporary flag) as a "
        "recipients CSV, ready to send as a new campaign",
    )
    g.add_argument(
        "--html",
        type=Path,
        metavar="PATH",
        help="also write the report of every row (whatever --status or --flag) as one self-contained HTML "
        "file, with <name>.resend.csv beside it (docs/report.md)",
    )


def configure_recheck(parser: argparse.ArgumentParser) -> None:
    """``bulksend recheck OUTCOMES_OR_CAMPAIGN``."""
    parser.add_argument(
        "target",
        type=Path,
        metavar="OUTCOMES_OR_CAMPAIGN",
        help="an outcomes file (.jsonl or .csv), or a campaign file (.toml): then its state store and "
        "its outcomes file are both updated",
    )
    parser.add_argument(
        "--store",
        help="with a campaign file: its state store, as given to `bulksend send --store` (default from "
        "the campaign, or BULKSEND_STORE_URL, or store_url in the settings file)",
    )
    parser.add_argument("--settings", type=Path, metavar="FILE", help="account settings file (TOML)")
    add_api_options(parser)


def configure_status(parser: argparse.ArgumentParser) -> None:
    """``bulksend status [CAMPAIGN]``."""
    parser.add_argument("campaign", nargs="?", help="one campaign id (default: every campaign)")
    parser.add_argument(
        "--store",
        help="the shared store (postgresql://… or a SQLite file); default BULKSEND_STORE_URL or "
        "store_url in the settings file",
    )
    parser.add_argument("--settings", type=Path, metavar="FILE", help="account settings file (TOML)")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    parser.add_argument(
        "--window-s", type=float, default=10.0, help="the rate is over this many recent seconds (default 10)"
    )


# The reasons and sources of bulksend.suppression, spelled out here so that `--help` imports nothing.
def configure_suppress(parser: argparse.ArgumentParser) -> None:
    """``bulksend suppress add|remove|list|import|export|push``."""
    # The list's own vocabulary (a light module: no store, no client is imported with it).
    from bulksend.suppression import SuppressionReason, SuppressionSource

    reasons = [r.value for r in SuppressionReason]
    sources = [s.value for s in SuppressionSource]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        help="the store whose list to use (default: BULKSEND_SUPPRESSION_URL, else BULKSEND_STORE_URL, "
        "else the per-user list)",
    )
    common.add_argument("--settings", type=Path, metavar="FILE", help="account settings file (TOML)")
    common.add_argument("--project-id", help="TEM project of the list (SCW_DEFAULT_PROJECT_ID)")
    common.add_argument("--profile", help="scw config profile (SCW_PROFILE)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", parents=[common], help="suppress addresses")
    add.add_argument("addresses", nargs="+", metavar="ADDRESS")
    add.add_argument("--reason", choices=reasons, default="manual", help="default: manual")
    add.add_argument("--until", help="end of the suppression (YYYY-MM-DD or RFC 3339; default: none)")
    add.add_argument("--origin", default="bulksend suppress add", help="a note saying where it came from")
    remove = sub.add_parser("remove", parents=[common], help="remove addresses from the list")
    remove.add_argument("addresses", nargs="+", metavar="ADDRESS")
    remove.add_argument("--source", choices=sources, help="only the entries from this source")
    for name, what in (("list", "print the list as CSV"), ("export", "write the list to a CSV file")):
        p = sub.add_parser(name, parents=[common], help=what)
        if name == "export":
            p.add_argument(
                "file", type=Path, help="CSV file to write (address,reason,source,since,until,origin)"
            )
        p.add_argument("--all", action="store_true", help="expired entries too")
    imp = sub.add_parser("import", parents=[common], help="add the entries of a CSV file")
    imp.add_argument(
        "file", type=Path, help="CSV with an address column (reason,source,since,until,origin optional)"
    )
    imp.add_argument("--reason", choices=reasons, default="manual", help="for rows without one")
    push = sub.add_parser(
        "push",
        parents=[common],
        help="add the list's hard bounces to TEM as custom blocklists (needs TEM's Scale plan)",
        description="Add the suppression list's hard bounces (reasons hard_bounce and mailbox_not_found) "
        "to TEM as custom blocklists of each domain of the project, so that every sender of the project "
        "stops mailing them. Custom blocklists need TEM's Scale plan: on Essential, TEM refuses.",
    )
    push.add_argument("--domain", help="only this sending domain (default: every domain of the project)")
    push.add_argument("--api-url", help="API base URL (SCW_API_URL; default https://api.scaleway.com)")
    push.add_argument("--region", help="region (SCW_DEFAULT_REGION; default fr-par)")


def configure_webhooks(parser: argparse.ArgumentParser) -> None:
    """``bulksend webhooks setup --domain-id ID --sns-arn ARN``."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    setup = sub.add_parser(
        "setup",
        help="create or update the domain's TEM webhook for tracking by events, and say what to subscribe",
        description="Create (or update) the TEM webhook that publishes a domain's email events to a "
        "Topics and Events topic, then print the steps that connect the topic to bulksend.",
    )
    setup.add_argument("--domain-id", required=True, help="the TEM domain whose emails are tracked (UUID)")
    setup.add_argument("--sns-arn", required=True, help="the Topics and Events topic to publish to (its ARN)")
    setup.add_argument("--name", default="bulksend", help="the webhook's name (default %(default)s)")
    target = setup.add_mutually_exclusive_group()
    target.add_argument("--queue", help="the SQS queue (Scaleway Queues) bulksend reads: name or URL")
    target.add_argument("--http-endpoint", help="or the daemon's URL of POST /events/sns")
    add_api_options(setup)


def _configure_sandbox(parser: argparse.ArgumentParser) -> None:
    # The sandbox declares its own options (``python -m bulksend.sandbox`` uses them too); its
    # argument module imports neither aiohttp nor the server.
    from bulksend.sandbox.args import configure

    configure(parser)


@dataclass(frozen=True)
class Command:
    """One sub-command: its help line, its arguments, and the module whose ``run(args)`` runs it."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    module: str


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "run a 10,000-recipient demo campaign against the built-in sandbox",
        configure_demo,
        "bulksend.cli.demo",
    ),
    "send": Command(
        "send a campaign file (TOML) and write per-recipient outcomes",
        configure_send,
        "bulksend.cli.send",
    ),
    "report": Command(
        "summarise an outcomes file (.jsonl or .csv)",
        configure_report,
        "bulksend.cli.report",
    ),
    "recheck": Command(
        "look the unknown emails of an outcomes file (or a campaign) up at TEM again",
        configure_recheck,
        "bulksend.cli.recheck",
    ),
    "status": Command(
        "show workers, rows by state and rates from a shared store",
        configure_status,
        "bulksend.cli.status",
    ),
    "suppress": Command(
        "add, remove, list, import or export suppressed addresses; push hard bounces to TEM",
        configure_suppress,
        "bulksend.cli.suppress",
    ),
    "serve": Command(
        "run the daemon: queue-fed jobs and an admin HTTP API",
        configure_serve,
        "bulksend.cli.serve",
    ),
    "webhooks": Command(
        'set up TEM\'s webhook events for tracking by events (tracking.mode = "events")',
        configure_webhooks,
        "bulksend.cli.webhooks",
    ),
    "sandbox": Command(
        "run a local TEM sandbox server",
        _configure_sandbox,
        "bulksend.sandbox.cli",
    ),
}
"""Sub-command name → :class:`Command`, in the order ``bulksend --help`` lists them."""
