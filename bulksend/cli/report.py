"""``bulksend report OUTCOMES``: summarise an outcomes file (.jsonl or .csv) again."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from bulksend.cli.args import configure_report as configure
from bulksend.cli.display import print_error
from bulksend.cli.summary import print_summary
from bulksend.sinks.outcomes import read_outcomes
from bulksend.sinks.summary import summarize_outcomes

__all__ = ["configure", "run"]


def run(args: argparse.Namespace) -> int:
    path: Path = args.outcomes
    if not path.exists():
        print_error(Console(stderr=True, soft_wrap=True), f"{path}: no such file")
        return 1
    try:
        summary = summarize_outcomes(f"outcomes of {path}", read_outcomes(path))
    except (ValueError, UnicodeDecodeError) as exc:
        print_error(
            Console(stderr=True, soft_wrap=True), f"{path} is not an outcomes file (.jsonl or .csv): {exc}"
        )
        return 1
    print_summary(summary, Console())
    return 0
