"""SNS envelopes and TEM event payloads: parsing hostile input, the URL allowlist, signatures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend.errors import EventVerificationError
from bulksend.events.sns import (
    MAX_ENVELOPE_BYTES,
    SnsEnvelope,
    SnsVerifier,
    UrlAllowlist,
    parse_envelope,
    sign_envelope,
)
from bulksend.tem.webhooks import MAX_EVENT_BYTES, WebhookEventType, parse_email_event
from tests.pki import CertServer, cert_server, shared_pki
from tests.strategies import json_values, odd_text, to_wire

EMAIL_ID = "0b9b3c7e-8a38-4d5f-9a3e-6f0a6f5c1d2e"


def event_payload(kind: str = "email_delivered", **extra: Any) -> dict[str, Any]:
    """A TEM event payload as Scaleway documents it."""
    payload: dict[str, Any] = {
        "id": "5a1c0e4e-0c2b-4f7e-9d8a-4b7f2f1e9c3d",
        "type": kind,
        "organization_id": "11111111-2222-4333-8444-555555555555",
        "project_id": "11111111-2222-4333-8444-555555555555",
        "domain_id": "8d5b1c2e-3f4a-4b6c-9d7e-0f1a2b3c4d5e",
        "domain_name": "example.com",
        "created_at": "2026-03-01T10:00:00.123456789Z",
        "email_sent_at": "2026-03-01T10:00:00Z",
        "email_id": EMAIL_ID,
        "email_from": "news@example.com",
        "email_to": "ann@example.org",
        "email_headers": [{"key": "X-Bulksend-Ref", "value": "spring-2026/42"}],
        "email_response_code": 250,
        "email_response_message": "2.0.0 OK",
    }
    payload.update(extra)
    return payload


def envelope(message: str = "{}", **extra: Any) -> dict[str, Any]:
    body = {
        "Type": "Notification",
        "MessageId": "a7d3c5c8-7c61-4a0e-8f3a-3b1d0b0a9c1e",
        "TopicArn": "arn:scw:sns:fr-par:project-11111111-2222-4333-8444-555555555555:tem-events",
        "Message": message,
        "Timestamp": "2026-03-01T10:00:00.200Z",
        "SignatureVersion": "2",
        "Signature": "",
        "SigningCertURL": "https://messaging.s3.fr-par.scw.cloud/fr-par/sns/sns_certificate_1.crt",
    }
    body.update(extra)
    return body


# -- the TEM event payload -----------------------------------------------------------------------
def test_delivered_event_is_final_sent_with_its_ref() -> None:
    """A documented email_delivered payload reads as a final `sent` for its email, with the
    X-Bulksend-Ref header naming the campaign and row."""
    event = parse_email_event(orjson.dumps(event_payload()))
    assert event is not None
    assert (event.type, event.email_id, event.final_status) == (
        WebhookEventType.EMAIL_DELIVERED,
        EMAIL_ID,
        "sent",
    )
    assert (event.ref, event.campaign_id, event.flags) == ("spring-2026/42", "spring-2026", ())
    assert event.status_details == "250 2.0.0 OK"


@pytest.mark.parametrize(
    ("kind", "message", "flags"),
    [
        ("email_dropped", "5.1.1 user unknown", ("hard_bounce",)),
        ("email_dropped", "5.2.2 mailbox full", ("mailbox_full",)),
        ("email_mailbox_not_found", "5.1.1 no such user", ("hard_bounce", "mailbox_not_found")),
        ("email_spam", "5.7.1 spam", ("spam",)),
        ("email_blocklisted", "", ("blocklisted",)),
    ],
)
def test_failure_events_are_final_failed_with_flags(kind: str, message: str, flags: tuple[str, ...]) -> None:
    """Each failure event type makes the email `failed` with the flags TEM gives such an email."""
    event = parse_email_event(event_payload(kind, email_response_code=550, email_response_message=message))
    assert event is not None
    assert (event.final_status, event.flags) == ("failed", flags)


@pytest.mark.parametrize("kind", ["email_queued", "email_deferred"])
def test_transient_events_are_not_final(kind: str) -> None:
    """Queued and deferred say nothing final."""
    event = parse_email_event(event_payload(kind))
    assert event is not None
    assert event.final_status is None


def test_blocklisted_without_email_id_is_kept_by_recipient() -> None:
    """email_blocklisted, documented without an email_id, is still an event (matched by recipient)."""
    payload = event_payload("email_blocklisted")
    del payload["email_id"]
    event = parse_email_event(payload)
    assert event is not None
    assert (event.email_id, event.email_to) == ("", "ann@example.org")


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        orjson.dumps(event_payload("blocklist_created")),
        orjson.dumps(event_payload("unknown_type")),
        orjson.dumps(event_payload(email_id="")),
        orjson.dumps(event_payload(id=7)),
        b'{"type": "email_delivered", "id": "x", "email_id": "' + b"a" * MAX_EVENT_BYTES + b'"}',
    ],
)
def test_what_is_not_an_email_event_reads_as_none(payload: bytes) -> None:
    """Malformed JSON, another type, a missing id and an oversized payload are all None."""
    assert parse_email_event(payload) is None


@given(json_values)
@settings(max_examples=300)
def test_event_parser_never_raises_on_any_json(value: Any) -> None:
    """Any JSON value at all, as text or decoded, reads as an event or None: never an exception."""
    for form in (to_wire(value), value if isinstance(value, dict) else {"x": value}):
        result = parse_email_event(form)
        assert result is None or result.id


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(odd_text, json_values),
            "type": st.sampled_from(["email_delivered", "email_blocklisted", "email_dropped", "x"]),
            "email_id": st.one_of(odd_text, json_values),
            "email_to": st.one_of(odd_text, json_values),
            "email_headers": json_values,
            "email_response_code": json_values,
            "email_try_count": json_values,
            "created_at": json_values,
        },
    )
)
def test_event_parser_takes_wrong_field_types_as_absent(payload: dict[str, Any]) -> None:
    """Event-shaped objects with fields of any type parse or are refused, never raise; what is
    kept is bounded text."""
    event = parse_email_event(payload)
    if event is not None:
        assert isinstance(event.email_id, str)
        assert len(event.email_id) <= 1000
        assert event.response_code is None or 0 <= event.response_code < 1000


# -- the SNS envelope -----------------------------------------------------------------------------
def test_envelope_round_trips_and_signs_the_documented_fields() -> None:
    """A notification envelope parses back to what was written, and its string to sign lists
    Message, MessageId, Timestamp, TopicArn and Type (Subject only when present)."""
    parsed = parse_envelope(orjson.dumps(envelope("hello")))
    assert parsed is not None
    assert parse_envelope(parsed.to_json()) == parsed
    assert parsed.string_to_sign() == (
        b"Message\nhello\nMessageId\na7d3c5c8-7c61-4a0e-8f3a-3b1d0b0a9c1e\n"
        b"Timestamp\n2026-03-01T10:00:00.200Z\n"
        b"TopicArn\narn:scw:sns:fr-par:project-11111111-2222-4333-8444-555555555555:tem-events\n"
        b"Type\nNotification\n"
    )
    confirmation = parse_envelope(
        envelope(Type="SubscriptionConfirmation", SubscribeURL="https://sns.example/confirm", Token="t")
    )
    assert confirmation is not None
    assert b"SubscribeURL\nhttps://sns.example/confirm\nTimestamp" in confirmation.string_to_sign()
    assert b"Token\nt\nTopicArn" in confirmation.string_to_sign()


@pytest.mark.parametrize(
    "body",
    [
        envelope(Type="Other"),
        envelope(Message=7),
        envelope(Type="SubscriptionConfirmation"),  # no SubscribeURL
        envelope(Subject=["x"]),
        envelope(SigningCertURL="x" * 5000),
    ],
)
def test_what_is_not_an_envelope_reads_as_none(body: dict[str, Any]) -> None:
    """An unknown Type, a field of the wrong type or size, a confirmation without its URL: None."""
    assert parse_envelope(body) is None
    assert parse_envelope(b"{" * (MAX_ENVELOPE_BYTES + 1)) is None


@given(json_values)
@settings(max_examples=300)
def test_envelope_parser_never_raises_on_any_json(value: Any) -> None:
    """Any JSON value reads as an envelope or None."""
    parse_envelope(to_wire(value))
    if isinstance(value, dict):
        parse_envelope(value)


@given(st.dictionaries(st.sampled_from(list(envelope())), json_values, max_size=8))
def test_envelope_parser_with_any_field_values(overrides: dict[str, Any]) -> None:
    """Envelope-shaped objects with fields of any value parse or are refused, never raise."""
    result = parse_envelope(envelope(**overrides))
    assert result is None or isinstance(result.message, str)


# -- the URL allowlist ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://messaging.s3.fr-par.scw.cloud/fr-par/sns/sns_certificate_1.crt", True),
        ("https://messaging.s3.nl-ams.scw.cloud/x.pem", True),
        ("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem", True),
        ("http://messaging.s3.fr-par.scw.cloud/x.pem", False),
        ("https://messaging.s3.fr-par.scw.cloud.evil.com/x.pem", False),
        ("https://evil.com/.messaging.s3.fr-par.scw.cloud/x.pem", False),
        ("https://messaging.s3.a.b.scw.cloud/x.pem", False),
        ("https://user@messaging.s3.fr-par.scw.cloud/x.pem", False),
        ("https://messaging.s3.fr-par.scw.cloud:8443/x.pem", False),
        ("https://messaging.s3.fr-par.scw.cloud\\@evil.com/x.pem", False),
        ("https://messaging.s3.fr-par.scw.cloud/x.pem#frag", False),
        ("https://messaging.s3.fr-par.scw.cloud/\u00e9.pem", False),
        ("https://[::1]/x.pem", False),
        ("", False),
    ],
)
def test_default_certificate_allowlist(url: str, allowed: bool) -> None:
    """Only HTTPS URLs on the Topics and Events or Amazon SNS certificate hosts pass; a look-alike
    host, credentials, an unlisted port, a backslash or a fragment never do."""
    allowlist = UrlAllowlist(("https://messaging.s3.*.scw.cloud/", "https://sns.*.amazonaws.com/"))
    assert allowlist.allows(url) is allowed


@given(odd_text)
def test_allowlist_never_raises(url: str) -> None:
    """Any text is a URL the allowlist answers about."""
    UrlAllowlist(["https://127.0.0.1:8443/sns/"]).allows("https://127.0.0.1:8443/sns/" + url)


def test_allowlist_refuses_a_pattern_that_is_not_a_url() -> None:
    """A configuration typo is told at once."""
    with pytest.raises(ValueError, match="URL pattern"):
        UrlAllowlist(["messaging.s3.*.scw.cloud"])


# -- signatures -----------------------------------------------------------------------------------
@pytest.fixture
async def certs() -> AsyncIterator[CertServer]:
    async with cert_server(shared_pki()) as server:
        yield server


def verifier_for(server: CertServer, **options: Any) -> SnsVerifier:
    pki = shared_pki()
    return SnsVerifier([server.base_url + "/sns/"], ssl_context=pki.client_context(), **options)


def signed(server: CertServer, version: str = "2", **fields: Any) -> SnsEnvelope:
    parsed = parse_envelope(envelope(orjson.dumps(event_payload()).decode(), **fields))
    assert parsed is not None
    return sign_envelope(parsed, shared_pki().signing_key, server.cert_url, version=version)


@pytest.mark.parametrize("version", ["1", "2"])
async def test_signed_envelopes_verify_with_one_fetch(certs: CertServer, version: str) -> None:
    """Envelopes signed with SignatureVersion 1 or 2 verify; the certificate is fetched once."""
    verifier = verifier_for(certs, trust_chain=shared_pki().ca_pem)
    await verifier.verify(signed(certs, version))
    await verifier.verify(signed(certs, version, MessageId="another"))
    assert (verifier.fetches, certs.requests) == (1, 1)


async def test_tampered_or_forged_envelopes_are_refused(certs: CertServer) -> None:
    """A message changed after signing, a signature by another key, an unknown version or a bad
    base64 are each refused with a reason."""
    verifier = verifier_for(certs)
    good = signed(certs)
    tampered = replace(good, message=good.message.replace("delivered", "dropped"))
    forged = sign_envelope(good, shared_pki().other_key, certs.cert_url)
    for bad, reason in (
        (tampered, "does not match"),
        (forged, "does not match"),
        (replace(good, signature_version="3"), "SignatureVersion"),
        (replace(good, signature="***"), "base64"),
    ):
        with pytest.raises(EventVerificationError, match=reason):
            await verifier.verify(bad)


async def test_a_certificate_url_off_the_allowlist_is_never_fetched(certs: CertServer) -> None:
    """A SigningCertURL outside the allowlist (or plain http) is refused before any request."""
    verifier = SnsVerifier(["https://messaging.s3.*.scw.cloud/"], ssl_context=shared_pki().client_context())
    with pytest.raises(EventVerificationError, match="not an allowed certificate URL"):
        await verifier.verify(signed(certs))
    http_url = replace(signed(certs), signing_cert_url=certs.cert_url.replace("https", "http"))
    with pytest.raises(EventVerificationError, match="not an allowed certificate URL"):
        await verifier_for(certs).verify(http_url)
    assert certs.requests == 0


async def test_a_certificate_outside_the_trust_chain_is_refused(certs: CertServer) -> None:
    """With a trust chain configured, a signing certificate another CA issued is refused."""
    other_ca = shared_pki().tls_cert_pem  # a certificate that issued nothing
    verifier = verifier_for(certs, trust_chain=other_ca)
    with pytest.raises(EventVerificationError, match="trust chain"):
        await verifier.verify(signed(certs))


async def test_an_unreachable_certificate_is_refused_and_not_fetched_again_at_once() -> None:
    """A certificate server that does not answer makes verification fail; the failure is
    remembered for a while instead of fetching for every message."""
    verifier = SnsVerifier(["https://127.0.0.1:9/"], fetch_timeout_s=2)
    unsigned = parse_envelope(envelope(SigningCertURL="https://127.0.0.1:9/cert.pem", Signature="AAAA"))
    assert unsigned is not None
    for _ in range(2):
        with pytest.raises(EventVerificationError, match="signing certificate"):
            await verifier.verify(unsigned)
    assert verifier.fetches == 1
