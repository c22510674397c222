"""``bulksend sandbox`` / ``python -m bulksend.sandbox``: serve a local TEM until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys

import anyio

from .app import Sandbox, is_loopback_host
from .args import SECRET_ENV, configure
from .config import DEFAULT_SECRET_KEY, SandboxConfig

__all__ = ["SECRET_ENV", "blocklist_from_args", "config_from_args", "configure", "run"]


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """The :class:`SandboxConfig` the options describe (``ValueError`` when inconsistent)."""
    return SandboxConfig(
        secret_key=args.secret_key or os.environ.get(SECRET_ENV) or DEFAULT_SECRET_KEY,
        project_id=args.project_id,
        sending_after_s=args.sending_after_s,
        final_after_s=args.final_after_s,
        soft_bounce_retry_s=args.soft_bounce_retry_s,
        hold_s=args.hold_s,
        rate_limit_per_s=args.rate_limit,
        rate_limit_burst=args.rate_burst,
        fault_5xx_before_p=args.fault_5xx_before,
        fault_5xx_after_p=args.fault_5xx_after,
        fault_drop_p=args.fault_drop,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.jitter_ms,
        allowed_from_domains=tuple(args.allow_from_domain) if args.allow_from_domain else None,
        seed=args.seed,
        webhook_sns_url=args.webhook_sns_url,
        webhook_http_url=args.webhook_http_url,
        webhook_signing_key=args.webhook_signing_key,
        webhook_cert_url=args.webhook_cert_url,
        domain_status=args.domain_status,
        domain_reputation=None if args.domain_reputation == -1 else args.domain_reputation,
        failing_records=tuple(args.failing_record or ()),
        monthly_emails_base=args.monthly_emails,
        offer=args.offer,
    )


def blocklist_from_args(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(type, address)`` of each ``--blocklist TYPE:ADDRESS`` (``ValueError`` when malformed)."""
    entries = []
    for value in args.blocklist or ():
        type_, sep, address = value.partition(":")
        if not sep or type_ not in ("mailbox_full", "mailbox_not_found") or "@" not in address:
            raise ValueError(
                f"--blocklist {value!r}: write TYPE:ADDRESS, TYPE mailbox_full or mailbox_not_found"
            )
        entries.append((type_, address))
    return entries


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; returns the process exit code."""
    try:
        config = config_from_args(args)
        blocklist = blocklist_from_args(args)
    except ValueError as exc:
        print(f"bulksend sandbox: {exc}", file=sys.stderr)
        return 2
    if not is_loopback_host(args.host):
        print(
            f"warning: binding {args.host}, which is not loopback: the /_sandbox/* inspection endpoints "
            "need no authentication, so anyone who can reach this port can read and reset the sandbox",
            file=sys.stderr,
        )
    try:
        anyio.run(
            _serve,
            config,
            args.host,
            args.port,
            blocklist,
            backend="asyncio",
            backend_options={"use_uvloop": True},
        )
    except OSError as exc:
        print(
            f"bulksend sandbox: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


async def _serve(config: SandboxConfig, host: str, port: int, blocklist: list[tuple[str, str]]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Sandbox(config, host=host, port=port) as sandbox:
            for type_, address in blocklist:
                sandbox.block([address], type=type_)
            # The sandbox key is not a real credential, but a custom one might be: only echo the default.
            key = DEFAULT_SECRET_KEY if config.secret_key == DEFAULT_SECRET_KEY else "<your --secret-key>"
            print(
                f"bulksend sandbox listening on {sandbox.url} — point bulksend at it with "
                f"SCW_API_URL={sandbox.url} SCW_SECRET_KEY={key} (Ctrl-C to stop)",
                flush=True,
            )
            async for _ in signals:
                break
