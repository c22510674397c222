"""The sandbox's /webhooks endpoints (through the client) and the events it emits, signed like SNS,
to an HTTP endpoint that verifies them (bulksend's own receiver)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from bulksend.errors import InvalidArgumentsError, NotFoundError
from bulksend.events.http import SnsHttpReceiver
from bulksend.events.sns import SnsVerifier, UrlAllowlist
from bulksend.sandbox import Sandbox
from bulksend.sandbox.webhooks import domain_id_of
from bulksend.tem.client import TemClient
from bulksend.tem.models import Address, CreateEmailRequest, Header
from bulksend.tem.webhooks import EMAIL_EVENT_TYPES, EmailEvent
from tests.conftest import settings_for
from tests.pki import CertServer, cert_server, shared_pki
from tests.waiting import wait_until

ARN = "arn:scw:sns:fr-par:project-11111111-2222-4333-8444-555555555555:tem-events"
DOMAIN = domain_id_of("example.com")
TYPES = [t.value for t in EMAIL_EVENT_TYPES]


async def watch_example_com(sandbox: Sandbox, arn: str) -> None:
    """Give the sandbox's example.com a webhook of every email event type, publishing to ``arn``."""
    async with TemClient(settings_for(sandbox)) as tem:
        await tem.create_webhook(domain_id=DOMAIN, name="bulksend", event_types=TYPES, sns_arn=arn)


@pytest.fixture
async def tem(sandbox: Sandbox) -> AsyncIterator[TemClient]:
    async with TemClient(settings_for(sandbox)) as client:
        yield client


async def test_webhooks_can_be_created_listed_updated_and_deleted(tem: TemClient) -> None:
    """The /webhooks resource as the spec has it: create, list by domain, get, update, delete."""
    created = await tem.create_webhook(domain_id=DOMAIN, name="bulksend", event_types=TYPES, sns_arn=ARN)
    assert (created.domain_id, created.event_types, created.sns_arn) == (DOMAIN, tuple(TYPES), ARN)
    await tem.create_webhook(
        domain_id=domain_id_of("other.org"), name="x", event_types=["email_queued"], sns_arn=ARN
    )
    assert [w.id for w in await tem.list_webhooks(domain_id=DOMAIN)] == [created.id]
    updated = await tem.update_webhook(created.id, event_types=["email_delivered"])
    assert (updated.name, updated.event_types) == ("bulksend", ("email_delivered",))
    assert (await tem.get_webhook(created.id)).event_types == ("email_delivered",)
    await tem.delete_webhook(created.id)
    with pytest.raises(NotFoundError):
        await tem.get_webhook(created.id)
    assert await tem.list_webhooks(domain_id=DOMAIN) == []


@pytest.mark.parametrize(
    ("domain_id", "types", "arn", "argument"),
    [
        ("not-a-uuid", TYPES, ARN, "domain_id"),
        (DOMAIN, ["email_opened"], ARN, "event_types"),
        (DOMAIN, [], ARN, "event_types"),
        (DOMAIN, TYPES, "https://example.com/topic", "sns_arn"),
    ],
)
async def test_invalid_webhooks_are_refused_with_the_argument_named(
    tem: TemClient, domain_id: str, types: list[str], arn: str, argument: str
) -> None:
    """A bad domain id, an unknown or missing event type, or an ARN that is not one: a 400 naming it."""
    with pytest.raises(InvalidArgumentsError) as caught:
        await tem.create_webhook(domain_id=domain_id, name="w", event_types=types, sns_arn=arn)
    assert argument in str(caught.value.details) or argument in caught.value.raw_body


async def send(tem: TemClient, *recipients: str) -> list[str]:
    ids: list[str] = []
    for i, rcpt in enumerate(recipients):
        request = CreateEmailRequest(
            from_=Address("news@example.com"),
            to=(Address(rcpt),),
            subject="s",
            text="t",
            additional_headers=(Header("X-Bulksend-Ref", f"spring/{i + 1}"),),
        )
        ids.extend(e.id for e in await tem.send_email(request))
    return ids


@pytest.fixture
async def certs() -> AsyncIterator[CertServer]:
    async with cert_server(shared_pki()) as server:
        yield server


async def test_events_reach_an_http_endpoint_signed_and_after_confirmation(
    sandbox: Sandbox, tem: TemClient, certs: CertServer, tmp_path: Path
) -> None:
    """With webhook_http_url set, the sandbox first asks the endpoint to confirm the subscription
    (bulksend's receiver visits the SubscribeURL), then POSTs each lifecycle event signed like
    SNS; the receiver verifies every one, and the webhook's log says they were sent."""
    received: list[EmailEvent] = []

    async def deliver(events: Sequence[EmailEvent]) -> None:
        received.extend(events)

    pki = shared_pki()
    receiver = SnsHttpReceiver(
        deliver,
        SnsVerifier([certs.base_url + "/sns/"], ssl_context=pki.client_context()),
        UrlAllowlist([sandbox.url + "/_sandbox/sns/"]),
        topics=[ARN],
    )
    app = web.Application()
    app.router.add_post("/events/sns", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    key = tmp_path / "signing.pem"
    key.write_bytes(pki.signing_key_pem())
    try:
        sandbox.update(
            webhook_http_url=f"http://127.0.0.1:{runner.addresses[0][1]}/events/sns",
            webhook_signing_key=str(key),
            webhook_cert_url=certs.cert_url,
            webhook_signature_version=1,
        )
        webhook = await tem.create_webhook(domain_id=DOMAIN, name="w", event_types=TYPES, sns_arn=ARN)
        ok, bounce, blocked, soft = await send(
            tem, "ann@example.org", "bounce@example.org", "blocked@example.org", "softbounce@example.org"
        )
        await wait_until(lambda: len(received) == 9, what="9 events")
    finally:
        await runner.cleanup()
    assert receiver.confirmed == [ARN]
    assert receiver.refused == 0
    kinds = {(e.email_id or e.email_to, e.type.value) for e in received}
    assert kinds == {
        (ok, "email_queued"),
        (ok, "email_delivered"),
        (bounce, "email_queued"),
        (bounce, "email_mailbox_not_found"),
        (blocked, "email_queued"),
        ("blocked@example.org", "email_blocklisted"),
        (soft, "email_queued"),
        (soft, "email_deferred"),
        (soft, "email_delivered"),
    }
    assert {e.ref for e in received} == {"spring/1", "spring/2", "spring/3", "spring/4"}
    log = await tem.list_webhook_events(webhook.id, email_id=ok)
    assert sorted(r.type for r in log) == ["email_delivered", "email_queued"]
    assert {r.status for r in log} == {"sent"}
    assert orjson.loads(log[0].data)["email_id"] == ok


async def test_no_webhook_no_event(sandbox: Sandbox, tem: TemClient) -> None:
    """Emails of a domain without a webhook schedule nothing and log nothing."""
    await send(tem, "ann@example.org")
    assert await sandbox.emit_due() == 0
    assert len(sandbox.webhooks.log) == 0
