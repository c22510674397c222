"""The daemon tracking by events over HTTP: the sandbox's webhook POSTs signed SNS messages to
``/events/sns`` on the admin server, which confirms the subscription, verifies every message and
applies the events; hostile posts are refused without changing anything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import orjson
import pytest

from bulksend.daemon.config import load_daemon_config
from bulksend.errors import ConfigError
from bulksend.sandbox import Sandbox
from bulksend.testing import toml_table
from tests.pki import CertServer, cert_server, shared_pki
from tests.test_daemon import job_set, make_daemon, running, write_config
from tests.test_sandbox_webhooks import watch_example_com

ARN = "arn:scw:sns:fr-par:project-11111111-2222-4333-8444-555555555555:tem-events"


@pytest.fixture
async def certs() -> AsyncIterator[CertServer]:
    async with cert_server(shared_pki()) as server:
        yield server


def events_table(tmp_path: Path, sandbox: Sandbox, certs: CertServer) -> str:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(shared_pki().ca_pem)
    return toml_table(
        "events",
        {
            "http": True,
            "cert_urls": [certs.base_url + "/sns/"],
            "cert_ca_file": str(ca),
            "subscribe_urls": [sandbox.url + "/_sandbox/sns/"],
            "topics": [ARN],
        },
    )


async def test_jobs_tracked_by_http_events_need_no_list_call(
    tmp_path: Path, sandbox: Sandbox, certs: CertServer
) -> None:
    """Every job's result is published from the webhook events alone (no list call, no read by
    id); the subscription was confirmed by the daemon and nothing was refused."""
    jobs = job_set(12)
    daemon, source, results = make_daemon(
        tmp_path,
        sandbox,
        tracking={"mode": "events", "fallback_after_s": 600},
        extra=events_table(tmp_path, sandbox, certs),
    )
    key = tmp_path / "signing.pem"
    key.write_bytes(shared_pki().signing_key_pem())
    await watch_example_com(sandbox, ARN)
    for body in jobs.bodies:
        source.publish(body)
    with anyio.fail_after(30):
        async with running(daemon):
            sandbox.update(
                webhook_http_url=f"{daemon.admin_url}/events/sns",
                webhook_signing_key=str(key),
                webhook_cert_url=certs.cert_url,
            )
            await results.wait_for_keys(set(jobs.valid))
    assert {o["idempotency_key"] for o in results.outcomes} == set(jobs.valid)
    for outcome in results.outcomes:
        assert outcome["status"] == jobs.valid[outcome["idempotency_key"]][1], outcome
    assert daemon.stats.calls("list", "get") == 0
    receiver = daemon.events_http
    assert receiver is not None
    assert (receiver.confirmed, receiver.refused) == ([ARN], 0)


async def test_hostile_posts_are_refused(tmp_path: Path, sandbox: Sandbox, certs: CertServer) -> None:
    """Junk, an oversized body, an unsigned or forged message, a topic not accepted and a
    confirmation pointing elsewhere are refused (400, 413, 403) and change nothing."""
    daemon, _, _ = make_daemon(
        tmp_path, sandbox, tracking={"mode": "events"}, extra=events_table(tmp_path, sandbox, certs)
    )
    envelope = {
        "Type": "Notification",
        "MessageId": "m",
        "TopicArn": ARN,
        "Message": "{}",
        "Timestamp": "2026-03-01T10:00:00Z",
        "SignatureVersion": "2",
        "Signature": "AAAA",
        "SigningCertURL": certs.cert_url,
    }
    confirmation = envelope | {"Type": "SubscriptionConfirmation", "SubscribeURL": "https://evil.example/x"}
    cases = [
        (b"junk", 400),
        (b"{" * 400_000, 413),
        (orjson.dumps(envelope), 403),
        (orjson.dumps(envelope | {"TopicArn": "arn:scw:sns:fr-par:project-x:other"}), 403),
        (orjson.dumps(envelope | {"SigningCertURL": "https://evil.example/cert.pem"}), 403),
        (orjson.dumps(confirmation), 403),
    ]
    with anyio.fail_after(30):
        async with running(daemon), aiohttp.ClientSession() as session:
            for body, status in cases:
                async with session.post(f"{daemon.admin_url}/events/sns", data=body) as resp:
                    assert resp.status == status, (body[:60], await resp.text())
    assert daemon.events is not None
    assert daemon.events.counts.received == 0
    assert certs.requests == 1  # only the allowed certificate URL was fetched, and once


def test_events_mode_needs_a_way_for_events_to_arrive(tmp_path: Path) -> None:
    """tracking.mode = "events" without [events.sqs] or http is refused at load, saying how."""
    path = write_config(tmp_path, tracking={"mode": "events"})
    with pytest.raises(ConfigError, match=r"\[events.sqs\]"):
        load_daemon_config(path)
