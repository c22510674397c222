"""``bulksend suppress push``: local hard bounces to TEM as custom blocklists (Scale plan only).

Exit codes: 0 pushed (or nothing to push); 1 a setting is missing or wrong, or TEM refused (the
Essential plan has no custom blocklists: the message says so); 2 TEM refused the key.
"""

from __future__ import annotations

import argparse

import anyio
from rich.console import Console

from bulksend.cli.display import print_error, print_text
from bulksend.deliverability.blocklists import PushResult, push_hard_bounces
from bulksend.errors import AuthenticationError, BulksendError, PermissionsDeniedError
from bulksend.log import register_secret
from bulksend.settings import load_account_settings
from bulksend.store import open_store
from bulksend.tem.client import TemClient
from bulksend.tem.config import TemSettings

__all__ = ["run_push"]


def run_push(args: argparse.Namespace) -> int:
    """Push the hard bounces of the suppression list (``--store`` or the default list) to TEM."""
    # Imported here: the suppress command module imports this one.
    from bulksend.cli.suppress import suppression_target

    console = Console(stderr=True, soft_wrap=True)
    try:
        settings = TemSettings.load(
            api_url=args.api_url, project_id=args.project_id, region=args.region, profile=args.profile
        )
        account = load_account_settings(settings_file=args.settings, store_url=args.store)
        register_secret(settings.secret_key.reveal())
        result = anyio.run(_push, settings, suppression_target(args.store, account), args.domain)
    except (AuthenticationError, PermissionsDeniedError) as exc:
        print_error(
            console, f"TEM refused the key: {exc}; it needs TransactionalEmailFullAccess on the project"
        )
        return 2
    except BulksendError as exc:
        print_error(console, exc)
        return 1
    print_text(
        Console(),
        f"pushed {result.pushed:,} hard bounces to TEM as custom blocklists of {result.domains:,} "
        f"domain(s); {result.already:,} were blocklisted there already",
    )
    return 0


async def _push(settings: TemSettings, store_url: str, domain: str | None) -> PushResult:
    store = open_store(store_url)
    await store.open()
    try:
        async with TemClient(settings) as tem:
            return await push_hard_bounces(tem, store, domain=domain)
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
