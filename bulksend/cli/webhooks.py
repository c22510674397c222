"""``bulksend webhooks setup``: the TEM webhook that tracking by events needs, and what is left.

It creates the domain's webhook (or updates the one of the same name, or on the same topic) so
that TEM publishes every email event bulksend uses to the Topics and Events topic, through the
TEM API. Creating the topic, the queue and the subscription between them are Topics and Events
and Queues operations with their own credentials: it prints those steps, ready to run.

Exit codes: ``0`` done, ``1`` an argument or setting is wrong, ``2`` TEM refused the key.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import anyio
from rich.console import Console

from bulksend.cli.args import configure_webhooks as configure
from bulksend.cli.display import print_error
from bulksend.errors import AuthenticationError, ConfigError, PermissionsDeniedError, TemError
from bulksend.tem.client import TemClient
from bulksend.tem.config import TemSettings
from bulksend.tem.webhooks import EMAIL_EVENT_TYPES, Webhook

__all__ = ["configure", "next_steps", "run", "setup_webhook"]

EVENT_TYPES = [t.value for t in EMAIL_EVENT_TYPES]
_ENDPOINT = {"sns": "https://sns.mnq.fr-par.scaleway.com", "sqs": "https://sqs.mnq.fr-par.scaleway.com"}


async def setup_webhook(tem: TemClient, *, domain_id: str, sns_arn: str, name: str) -> tuple[Webhook, str]:
    """Create the webhook, or bring the domain's one of this name (or topic) up to date.

    Returns it and what was done: ``created``, ``updated`` or ``unchanged``.
    """
    for webhook in await tem.list_webhooks(domain_id=domain_id):
        if webhook.name != name and webhook.sns_arn != sns_arn:
            continue
        if set(webhook.event_types) >= set(EVENT_TYPES) and webhook.sns_arn == sns_arn:
            return webhook, "unchanged"
        wanted = list(dict.fromkeys([*webhook.event_types, *EVENT_TYPES]))
        return await tem.update_webhook(webhook.id, event_types=wanted, sns_arn=sns_arn), "updated"
    created = await tem.create_webhook(
        domain_id=domain_id, name=name, event_types=EVENT_TYPES, sns_arn=sns_arn
    )
    return created, "created"


def next_steps(sns_arn: str, *, queue: str | None, http_endpoint: str | None) -> list[str]:
    """The steps only the user can take (other services, other credentials), as text."""
    if http_endpoint:
        return [
            "Subscribe the daemon's endpoint to the topic (Topics and Events credentials):",
            f"  aws sns subscribe --endpoint-url {_ENDPOINT['sns']} --topic-arn {sns_arn} "
            f"--protocol {'https' if http_endpoint.startswith('https') else 'http'} "
            f"--notification-endpoint {http_endpoint}",
            'In the daemon\'s file: [tracking] mode = "events" and [events] http = true. The daemon '
            "confirms the subscription itself when its SubscribeURL matches events.subscribe_urls.",
        ]
    queue_name = queue or "tem-events"
    return [
        "Create the queue (Queues credentials) and subscribe it to the topic (Topics and Events "
        "credentials), leaving raw message delivery off:",
        f"  aws sqs create-queue --endpoint-url {_ENDPOINT['sqs']} --queue-name {queue_name}",
        f"  aws sns subscribe --endpoint-url {_ENDPOINT['sns']} --topic-arn {sns_arn} --protocol sqs "
        "--notification-endpoint <the queue's ARN: aws sqs get-queue-attributes --attribute-names QueueArn>",
        "Then point bulksend at the queue, with the Queues credentials in AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY:",
        f'  bulksend send: BULKSEND_EVENTS_QUEUE={queue_name}, and mode = "events" in [tracking]',
        f'  bulksend serve: [events.sqs] queue = "{queue_name}" and [tracking] mode = "events"',
    ]


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    out = Console(soft_wrap=True)
    try:
        settings = TemSettings.load(
            api_url=args.api_url, project_id=args.project_id, region=args.region, profile=args.profile
        )
    except ConfigError as exc:
        print_error(console, exc)
        return 1

    async def setup() -> tuple[Webhook, str]:
        async with TemClient(settings) as tem:
            return await setup_webhook(tem, domain_id=args.domain_id, sns_arn=args.sns_arn, name=args.name)

    try:
        webhook, done = anyio.run(setup)
    except (AuthenticationError, PermissionsDeniedError) as exc:
        print_error(console, f"TEM refused the key: {exc} (it needs TransactionalEmailFullAccess)")
        return 2
    except TemError as exc:
        print_error(console, exc)
        return 1
    _print(out, webhook, done, next_steps(args.sns_arn, queue=args.queue, http_endpoint=args.http_endpoint))
    return 0


def _print(out: Console, webhook: Webhook, done: str, steps: Sequence[str]) -> None:
    out.print(f"webhook {webhook.id} ({webhook.name}) {done}", markup=False, highlight=False)
    out.print(f"  domain  {webhook.domain_id}", markup=False, highlight=False)
    out.print(f"  topic   {webhook.sns_arn}", markup=False, highlight=False)
    out.print(f"  events  {', '.join(webhook.event_types)}", markup=False, highlight=False)
    out.print("\nWhat is left to do (bulksend cannot do it with a TEM key):", markup=False, highlight=False)
    for step in steps:
        out.print(step, markup=False, highlight=False)
