"""The ``bulksend`` command line: ``demo``, ``send``, ``report``, ``status``, ``serve``, ``sandbox``.

Each sub-command lives in its own module with ``configure(parser)`` and ``run(args) -> int``, so
this file only wires them.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Sequence

from bulksend import __version__

# sub-command → module providing configure(parser) and run(args) -> int
_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("bulksend.cli.demo", "run a 10,000-recipient demo campaign against the built-in sandbox"),
    "send": ("bulksend.cli.send", "send a campaign file (TOML) and write per-recipient outcomes"),
    "report": ("bulksend.cli.report", "summarise an outcomes file (.jsonl or .csv)"),
    "status": ("bulksend.cli.status", "show workers, rows by state and rates from a shared store"),
    "serve": ("bulksend.cli.serve", "run the daemon: queue-fed jobs and an admin HTTP API"),
    "sandbox": ("bulksend.sandbox.cli", "run a local TEM sandbox server"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, other sub-commands are listed but their modules (and their
    dependencies: brokers, PostgreSQL, Prometheus…) are not imported, which keeps start-up short."""
    parser = argparse.ArgumentParser(
        prog="bulksend",
        description="Async bulk email sender for Scaleway Transactional Email.",
    )
    parser.add_argument("--version", action="version", version=f"bulksend {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            module = importlib.import_module(module_name)
            module.configure(p)
        p.set_defaults(_module=module_name)
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
    command = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(only=command if command in _COMMANDS else None)
    args = parser.parse_args(words)
    module = importlib.import_module(args._module)
    _tune_gc()
    try:
        code: int = module.run(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
