"""``bulksend report OUTCOMES``: summarise an outcomes file (.jsonl or .csv) again, filter it, export
its rows, count them by recipient domain, and write the rows worth sending again."""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bulksend.cli.args import configure_report as configure
from bulksend.cli.display import print_error, print_text
from bulksend.cli.html_report import write_html_report
from bulksend.cli.summary import print_summary
from bulksend.errors import ConfigError
from bulksend.sinks.outcomes import OUTCOME_FIELDS, OUTCOME_STATUSES, csv_cell, read_outcomes
from bulksend.sinks.report import (
    KNOWN_FLAGS,
    DomainCount,
    OutcomeFilter,
    by_domain,
    parse_list,
    worth_resending,
    write_resend_file,
)
from bulksend.sinks.summary import summarize_outcomes

__all__ = ["configure", "run"]


def run(args: argparse.Namespace) -> int:
    err = Console(stderr=True, soft_wrap=True)
    path: Path = args.outcomes
    if not path.exists():
        print_error(err, f"{path}: no such file")
        return 1
    try:
        wanted = _filter(args)
    except ConfigError as exc:
        print_error(err, exc)
        return 1
    # Data goes to stdout with --format csv/jsonl: then what is said about it goes to stderr.
    notes = err if args.format != "table" else Console(soft_wrap=True)
    try:
        if args.resend_file is not None:
            rows = (line for line in read_outcomes(path) if wanted.matches(line) and worth_resending(line))
            count, columns = write_resend_file(args.resend_file, rows)
            print_text(
                notes,
                f"resend file: {args.resend_file} ({count:,} rows; columns {', '.join(columns)}): send it as "
                "the `recipients` of a new campaign (run `bulksend recheck` on the outcomes first: an "
                "unknown email may still be delivered).",
            )
        lines = (line for line in read_outcomes(path) if wanted.matches(line))
        if args.domain:
            _print_domains(by_domain(lines), args.top, args.format)
        elif args.format == "table":
            print_summary(summarize_outcomes(_title(path, args), lines), Console())
        else:
            _export(lines, args.format)
    except (ValueError, UnicodeDecodeError) as exc:
        print_error(err, f"{path} is not an outcomes file (.jsonl or .csv): {exc}")
        return 1
    except OSError as exc:
        print_error(err, f"{args.resend_file}: cannot write it: {exc.strerror or exc}")
        return 1
    if args.html is not None:
        return write_html_report(path, args.html, notes)
    return 0


def _filter(args: argparse.Namespace) -> OutcomeFilter:
    """The rows the options select; ConfigError for a value that is not known, or a bad option."""
    statuses = parse_list("--status", args.status, OUTCOME_STATUSES) if args.status is not None else None
    flags = parse_list("--flag", args.flag, KNOWN_FLAGS) if args.flag is not None else None
    if args.top < 1:
        raise ConfigError(f"--top must be 1 or more (got {args.top})")
    target: Path | None = args.resend_file
    if target is not None:
        if target.resolve() == args.outcomes.resolve():
            raise ConfigError(
                f"--resend-file {target} is the outcomes file itself: "
                "write the rows to resend to another file"
            )
        if target.suffix.lower() != ".csv":
            raise ConfigError(f"--resend-file {target}: it is written as CSV; name it with a .csv suffix")
    return OutcomeFilter(statuses or frozenset(), flags or frozenset())


def _title(path: Path, args: argparse.Namespace) -> str:
    which = [f"{name} {value}" for name, value in (("status", args.status), ("flag", args.flag)) if value]
    return f"outcomes of {path}" + (f" ({'; '.join(which)})" if which else "")


def _export(lines: Iterator[Mapping[str, Any]], fmt: str) -> None:
    """The rows to stdout, as the outcomes file has them (CSV cells made safe for spreadsheets)."""
    if fmt == "jsonl":
        out = sys.stdout.buffer
        for line in lines:
            out.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        out.flush()
        return
    writer = csv.writer(sys.stdout, lineterminator="\r\n")
    writer.writerow(OUTCOME_FIELDS)
    for line in lines:
        writer.writerow([csv_cell(line.get(f)) for f in OUTCOME_FIELDS])
    sys.stdout.flush()


def _print_domains(domains: list[DomainCount], top: int, fmt: str) -> None:
    shown, rest = domains[:top], domains[top:]
    if fmt == "jsonl":
        for d in shown:
            sys.stdout.buffer.write(orjson.dumps(d.as_dict(), option=orjson.OPT_APPEND_NEWLINE))
        sys.stdout.buffer.flush()
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\r\n")
        writer.writerow(["domain", "rows", "sent", "failed", "other"])
        for d in shown:
            row = d.as_dict()
            writer.writerow([csv_cell(row["domain"]), *(row[k] for k in ("rows", "sent", "failed", "other"))])
        return
    console = Console()
    table = Table(title=Text(f"recipient domains, the {len(shown):,} largest"), header_style="bold")
    for column in ("domain", "rows", "sent", "failed", "other"):
        table.add_column(column, justify="left" if column == "domain" else "right")
    for d in shown:
        row = d.as_dict()
        table.add_row(Text(d.domain), *(Text(f"{row[k]:,}") for k in ("rows", "sent", "failed", "other")))
    console.print(table)
    if rest:
        print_text(console, f"… and {len(rest):,} more domains ({sum(d.rows for d in rest):,} rows)")
