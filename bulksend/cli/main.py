"""The ``bulksend`` command line: ``demo``, ``send``, ``report``, ``recheck``, ``status``, ``serve``,
``sandbox``.

The parser comes from :mod:`bulksend.cli.args`, which declares every sub-command's arguments
without importing what runs it; the module with the chosen command's ``run(args) -> int`` is
imported only once the arguments are parsed. ``bulksend --help`` therefore never loads aiohttp,
Rich, the brokers or the daemon.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Sequence

from bulksend import __version__
from bulksend.cli.args import COMMANDS

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full parser: every sub-command with its arguments (nothing of their implementations)."""
    parser = argparse.ArgumentParser(
        prog="bulksend",
        description="Async bulk email sender for Scaleway Transactional Email.",
    )
    parser.add_argument("--version", action="version", version=f"bulksend {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.configure(p)
        p.set_defaults(_module=command.module)
    return parser


def _tune_gc() -> None:
    # Everything imported so far lives for the whole run: move it out of the collector's way, and
    # collect young objects less often. A run allocates many short-lived objects per email, and
    # the default thresholds spend a visible share of the CPU (and event-loop pauses) on them.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bulksend`` console script."""
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(words)
    module = importlib.import_module(args._module)
    _tune_gc()
    try:
        code: int = module.run(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
