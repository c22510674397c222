"""What importing a part of bulksend loads, seen from a fresh interpreter.

The command line's parser and help must not load what the commands run with (so ``bulksend
--help`` answers at once).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import orjson


def modules_loaded_by(code: str) -> set[str]:
    """The names in ``sys.modules`` once ``code`` has run in a new interpreter."""
    script = textwrap.dedent(code) + "\nimport sys as _s, json as _j\nprint(_j.dumps(sorted(_s.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(orjson.loads(done.stdout.strip().splitlines()[-1]))


def loaded_among(loaded: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == p or m.startswith(p + ".") for p in prefixes))


HEAVY_FOR_HELP = (
    "aiohttp",
    "rich",
    "jinja2",
    "asyncpg",
    "nats",
    "aio_pika",
    "redis",
    "structlog",
    "prometheus_client",
    "bulksend.daemon",
    "bulksend.cli.demo",
    "bulksend.cli.send",
    "bulksend.cli.serve",
    "bulksend.pipeline",
    "bulksend.sources",
    "bulksend.brokers",
    "bulksend.sandbox.app",
)


def test_building_the_parser_and_every_help_loads_no_command_implementation() -> None:
    """``bulksend --help`` and ``bulksend COMMAND --help`` import argument declarations only."""
    loaded = modules_loaded_by(
        """
        import contextlib, io
        from bulksend.cli.args import COMMANDS
        from bulksend.cli.main import build_parser

        parser = build_parser()
        with contextlib.redirect_stdout(io.StringIO()) as out:
            for argv in (["--help"], *([name, "--help"] for name in COMMANDS)):
                try:
                    parser.parse_args(argv)
                except SystemExit:
                    pass
        assert "usage: bulksend" in out.getvalue() and "--dry-run" in out.getvalue()
        """
    )
    assert "bulksend.cli.main" in loaded
    assert loaded_among(loaded, HEAVY_FOR_HELP) == []


LIBRARY = (
    "bulksend.pipeline.run",
    "bulksend.pipeline.account",
    "bulksend.daemon.service",
    "bulksend.jobs.intake",
    "bulksend.campaign.render",
    "bulksend.sinks.summary",
)


def test_the_library_needs_neither_the_command_line_nor_rich() -> None:
    """A campaign run and the daemon import without Rich installed, and without any bulksend.cli module."""
    loaded = modules_loaded_by(
        f"""
        import importlib, importlib.abc, sys

        class NoRich(importlib.abc.MetaPathFinder):
            # As if Rich were not installed: structlog, which only uses it when present, falls back.
            def find_spec(self, name, path=None, target=None):
                if name == "rich" or name.startswith("rich."):
                    raise ImportError(f"{{name}} is blocked")
                return None

        sys.meta_path.insert(0, NoRich())
        for name in {LIBRARY!r}:
            importlib.import_module(name)
        """
    )
    assert set(LIBRARY) <= loaded
    assert loaded_among(loaded, ("rich", "bulksend.cli")) == []
