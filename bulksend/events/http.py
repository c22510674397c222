"""Webhook events over HTTP: the ``POST /events/sns`` endpoint of the daemon's admin server.

Topics and Events delivers to an HTTP subscription the way SNS does. The endpoint needs no token
(SNS cannot send one): every message must instead carry a valid SNS signature (see
:mod:`bulksend.events.sns`). Answers:

=====  =======================================================================================
200    a notification applied (or not an email event: nothing to do), a confirmation visited
400    not an SNS envelope (or over :data:`~bulksend.events.sns.MAX_ENVELOPE_BYTES`: 413)
403    the signature does not verify, the topic is not an accepted one, or the confirmation's
       ``SubscribeURL`` is not allowed (confirm it by hand: the log line says how)
503    the store could not record the events: SNS delivers the message again later
=====  =======================================================================================

A ``SubscriptionConfirmation`` is confirmed by visiting its ``SubscribeURL`` only when that URL
matches the subscribe allowlist, after its signature verified.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import structlog
from aiohttp import web

from bulksend.errors import BulksendError, EventVerificationError
from bulksend.events.router import read_message
from bulksend.events.sns import MAX_ENVELOPE_BYTES, SnsEnvelope, SnsVerifier, UrlAllowlist
from bulksend.tem.webhooks import EmailEvent

__all__ = ["SnsHttpReceiver"]

log = structlog.get_logger("bulksend.events")

_CONFIRM_TIMEOUT = aiohttp.ClientTimeout(total=10)


class SnsHttpReceiver:
    """Handles SNS HTTP deliveries: verifies each, confirms subscriptions, delivers email events."""

    def __init__(
        self,
        deliver: Callable[[Sequence[EmailEvent]], Awaitable[None]],
        verifier: SnsVerifier,
        subscribe_urls: UrlAllowlist,
        *,
        topics: Sequence[str] = (),
    ) -> None:
        self._deliver = deliver
        self.verifier = verifier
        self.subscribe_urls = subscribe_urls
        self.topics = frozenset(topics)
        """Accepted ``TopicArn`` values; empty: any topic."""
        self.refused = 0
        self.confirmed: list[str] = []
        """Topics whose subscription this process confirmed."""

    async def handle(self, request: web.Request) -> web.Response:
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(64 * 1024):
            size += len(chunk)
            if size > MAX_ENVELOPE_BYTES:
                return _answer(413, f"larger than {MAX_ENVELOPE_BYTES} bytes")
            chunks.append(chunk)
        envelope, event = read_message(b"".join(chunks))
        if envelope is None:
            return _answer(400, "not an SNS message")
        if self.topics and envelope.topic_arn not in self.topics:
            return self._refuse(envelope, "its TopicArn is not one of events.topics")
        try:
            await self.verifier.verify(envelope)
        except EventVerificationError as exc:
            return self._refuse(envelope, str(exc))
        if envelope.type == "SubscriptionConfirmation":
            return await self._confirm(envelope)
        if envelope.type == "UnsubscribeConfirmation":
            log.warning("events.unsubscribed", topic=envelope.topic_arn)
            return _answer(200, "ok")
        if event is not None:
            try:
                await self._deliver([event])
            except BulksendError as exc:
                log.warning("events.not_recorded", error=str(exc))
                return _answer(503, "not recorded; deliver it again later")
        return _answer(200, "ok")

    def _refuse(self, envelope: SnsEnvelope, reason: str) -> web.Response:
        self.refused += 1
        log.warning("events.refused", source="http", topic=envelope.topic_arn[:200], reason=reason)
        return _answer(403, "refused")

    async def _confirm(self, envelope: SnsEnvelope) -> web.Response:
        url = envelope.subscribe_url
        if not self.subscribe_urls.allows(url):
            self.refused += 1
            log.warning(
                "events.subscription_not_confirmed",
                topic=envelope.topic_arn[:200],
                reason="its SubscribeURL is not in events.subscribe_urls",
                hint="if the topic is yours, confirm the subscription in the console, or allow the "
                "URL's host in events.subscribe_urls",
            )
            return _answer(403, "SubscribeURL not allowed")
        try:
            async with (
                aiohttp.ClientSession(timeout=_CONFIRM_TIMEOUT) as session,
                session.get(url, allow_redirects=False) as resp,
            ):
                await resp.content.read(64 * 1024)
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("events.confirm_failed", topic=envelope.topic_arn[:200], error=type(exc).__name__)
            return _answer(503, "could not confirm; send it again")
        if not ok:
            log.warning("events.confirm_failed", topic=envelope.topic_arn[:200], status=resp.status)
            return _answer(503, "could not confirm; send it again")
        self.confirmed.append(envelope.topic_arn)
        log.info("events.subscription_confirmed", topic=envelope.topic_arn[:200])
        return _answer(200, "confirmed")


def _answer(status: int, message: str) -> web.Response:
    key = "status" if status < 400 else "error"
    return web.json_response({key: message}, status=status)
