"""Webhook events from an SQS queue (Scaleway Queues) subscribed to the webhook's topic.

Long polls for up to ``batch`` messages at a time, reads each (an SNS envelope, or the TEM event
alone with raw message delivery), hands the events to the router, and only then deletes the
messages, in one batch: a message whose events were not recorded (the store failed) is received
again after the queue's visibility timeout. A message that holds no email event (another event
type, or junk) is deleted too: nothing would ever read it.

With ``verify_signatures`` the SNS envelopes' signatures are checked as on the HTTP endpoint; off
by default, as only holders of the queue's credentials can write to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
import structlog

from bulksend.brokers.sqs import SQS_ERRORS, SqsSettings, call_batch, queue_url, sqs_client
from bulksend.errors import ConfigError, EventVerificationError
from bulksend.events.router import read_message
from bulksend.events.sns import SnsVerifier
from bulksend.tem.webhooks import EmailEvent

__all__ = ["SqsEventSettings", "SqsEventSource"]

log = structlog.get_logger("bulksend.events")

_BACKOFF_S = (0.1, 5.0)


@dataclass(frozen=True, slots=True)
class SqsEventSettings(SqsSettings):
    """The queue events arrive on (``[events.sqs]``): the SQS keys, plus the queue and how to read it."""

    where: ClassVar[str] = "events.sqs"

    queue: str | None = None
    """The queue's name or URL (required)."""
    wait_s: float = dataclasses.field(default=20.0, metadata={"allow_zero": True})
    """Long-poll wait of one receive (SQS allows 0..20)."""
    batch: int = 10
    """Messages per receive (SQS allows 1..10)."""
    verify_signatures: bool = False

    def __post_init__(self) -> None:
        SqsSettings.__post_init__(self)
        if not self.queue:
            raise ConfigError(f"{self.where}: queue is required: the name or URL of the queue of events")
        if not 0 <= self.wait_s <= 20 or not 1 <= self.batch <= 10:
            raise ConfigError(f"{self.where}: wait_s must be within 0..20 and batch within 1..10")


Deliver = Callable[[Sequence[EmailEvent]], Awaitable[None]]


class SqsEventSource:
    """Reads events off one queue into ``deliver`` until cancelled."""

    def __init__(
        self, settings: SqsEventSettings, deliver: Deliver, *, verifier: SnsVerifier | None = None
    ) -> None:
        self.settings = settings
        self._deliver = deliver
        self._verifier = verifier if settings.verify_signatures else None
        if settings.verify_signatures and verifier is None:
            self._verifier = SnsVerifier()
        self.received = 0
        """Queue messages received."""
        self.refused = 0
        """Messages whose signature did not verify (deleted, not applied)."""

    async def run(self) -> None:
        """Receive, deliver, delete, over and over; a failing queue is retried with a backoff."""
        backoff = _BACKOFF_S[0]
        while True:
            try:
                async with sqs_client(self.settings) as client:
                    url = await queue_url(client, str(self.settings.queue))
                    log.info("events.sqs_reading", queue=url)
                    while True:
                        await self._once(client, url)
                        backoff = _BACKOFF_S[0]
            except SQS_ERRORS as exc:
                creds = self.settings.credentials()
                log.warning(
                    "events.sqs_failed",
                    error=creds.scrub(str(exc) or type(exc).__name__),
                    retry_in_s=backoff,
                )
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_S[1])

    async def _once(self, client: Any, url: str) -> None:
        answer = await client.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=self.settings.batch,
            WaitTimeSeconds=int(self.settings.wait_s),
        )
        messages = answer.get("Messages") or []
        if not messages:
            return
        self.received += len(messages)
        events: list[EmailEvent] = []
        for message in messages:
            event = await self._event_of(str(message.get("Body") or ""))
            if event is not None:
                events.append(event)
        if events:
            await self._deliver(events)
        # Only now: the events are recorded (or held for a row not recorded yet).
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        failed = await call_batch(
            lambda chunk: client.delete_message_batch(QueueUrl=url, Entries=chunk), entries
        )
        if failed:
            # Harmless: SQS delivers those again and an event applied twice changes nothing.
            log.debug(
                "events.delete_refused", count=len(failed), codes=sorted({f.code for f in failed.values()})
            )

    async def _event_of(self, body: str) -> EmailEvent | None:
        envelope, event = read_message(body)
        if event is None or self._verifier is None:
            return event
        try:
            if envelope is None:
                raise EventVerificationError("raw message delivery carries no signature to verify")
            await self._verifier.verify(envelope)
        except EventVerificationError as exc:
            self.refused += 1
            log.warning("events.refused", source="sqs", reason=str(exc))
            return None
        return event
