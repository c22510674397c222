"""``bulksend serve --config daemon.toml``: run the daemon until SIGTERM/SIGINT.

First signal: stop pulling jobs and starting sends, let in-flight requests finish and ambiguous
ones be reconciled within ``daemon.grace_s``, and record them (exit 0). Second signal: log
``daemon.forced_stop`` and stop at once (the next start reconciles), exit 130.
"""

from __future__ import annotations

import argparse

import anyio
import structlog
from rich.console import Console

from bulksend.cli.args import configure_serve as configure
from bulksend.cli.display import print_error
from bulksend.cli.runtime import stop_on_signals, uvloop_available
from bulksend.daemon.config import load_daemon_config
from bulksend.daemon.service import Daemon
from bulksend.errors import BulksendError, first_bulksend_error
from bulksend.log import configure_logging, register_secret
from bulksend.tem.config import TemSettings

__all__ = ["configure", "run"]

log = structlog.get_logger("bulksend.serve")

EXIT_FORCED = 130
"""Exit code of a stop forced by a second signal (128 + SIGINT, as shells report an interrupt)."""


def run(args: argparse.Namespace) -> int:
    fmt = configure_logging(args.log_format, args.log_level)
    console = Console(stderr=True, soft_wrap=True)

    def fatal(error: BaseException) -> int:
        # In JSON mode a fatal error is one more JSON line: a log pipeline must parse every line.
        if fmt == "json":
            log.error("daemon.failed", error=str(error), exit_code=1)
        else:
            print_error(console, error)
        return 1

    try:
        config = load_daemon_config(args.config)
        api = config.api
        settings = TemSettings.load(
            api_url=api.get("api_url"),
            project_id=api.get("project_id"),
            region=api.get("region"),
            profile=api.get("profile"),
            overrides={
                key: f"set {key} in [api] of {args.config}" for key in ("project_id", "region", "api_url")
            },
        )
        register_secret(settings.secret_key.reveal())
        if config.admin.token is not None:
            register_secret(config.admin.token.reveal())
        daemon = Daemon(config, settings)
    except BulksendError as exc:
        return fatal(exc)
    try:
        anyio.run(_main, daemon, backend_options={"use_uvloop": uvloop_available()})
    except (BulksendError, BaseExceptionGroup) as raised:
        found = first_bulksend_error(raised)
        if found is None:
            if fmt != "json":
                raise
            log.exception("daemon.crashed", exit_code=1)
            return 1
        return fatal(found)
    except Exception:
        if fmt != "json":
            raise
        # A bug: the traceback goes out as one JSON line too (the redaction still applies).
        log.exception("daemon.crashed", exit_code=1)
        return 1
    return EXIT_FORCED if daemon.forced else 0


async def _main(daemon: Daemon) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signals, daemon.request_stop, daemon.abort)
        await daemon.run()
        tg.cancel_scope.cancel()
