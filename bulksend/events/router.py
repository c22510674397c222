"""Where webhook events go in one process: to the tracker of the campaign each one names.

An email's ``X-Bulksend-Ref`` header (``<campaign id>/<row>``) comes back in its events, so each
event goes to the tracker of that campaign, if this process tracks it (another process sharing
the store and the queue may; its fallback covers what this one skips). An event without the
header is offered to every tracker, which each take only the emails they know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from bulksend.events.sns import MAX_ENVELOPE_BYTES, SnsEnvelope, parse_envelope
from bulksend.pipeline.tracker import Tracker
from bulksend.tem.webhooks import EmailEvent, json_object, parse_email_event

__all__ = ["EventCounts", "EventRouter", "read_message"]

log = structlog.get_logger("bulksend.events")


def read_message(body: bytes | str) -> tuple[SnsEnvelope | None, EmailEvent | None]:
    """A queue message or HTTP body: an SNS envelope and the TEM event in it, or a TEM event
    alone (an SQS subscription with raw message delivery). (None, None) when it is neither."""
    data = json_object(body, MAX_ENVELOPE_BYTES)
    if data is None:
        return None, None
    if "Type" in data:
        envelope = parse_envelope(data)
        if envelope is None or envelope.type != "Notification":
            return envelope, None
        return envelope, parse_email_event(envelope.message)
    return None, parse_email_event(data)


@dataclass
class EventCounts:
    """What the router was handed and what became of it."""

    received: int = 0
    final: int = 0
    """Rows made final by events."""
    foreign: int = 0
    """Events naming a campaign this process does not track (another process's, or an old one)."""


class EventRouter:
    """Hands events to the trackers registered here, by the campaign their ref names."""

    def __init__(self) -> None:
        self._trackers: dict[str, Tracker] = {}
        self.counts = EventCounts()

    def register(self, campaign_id: str, tracker: Tracker) -> None:
        self._trackers[campaign_id] = tracker

    def unregister(self, campaign_id: str, tracker: Tracker) -> None:
        if self._trackers.get(campaign_id) is tracker:
            del self._trackers[campaign_id]

    @property
    def campaigns(self) -> list[str]:
        return sorted(self._trackers)

    async def deliver(self, events: Sequence[EmailEvent]) -> None:
        """Apply ``events``; returns once the final statuses they carry are in the store (or held
        by their tracker for an email not recorded yet). A store error propagates, so that the
        caller does not acknowledge what was not recorded."""
        self.counts.received += len(events)
        by_campaign: dict[str, list[EmailEvent]] = {}
        unnamed: list[EmailEvent] = []
        for event in events:
            campaign = event.campaign_id
            if not campaign:
                unnamed.append(event)
            elif campaign in self._trackers:
                by_campaign.setdefault(campaign, []).append(event)
            else:
                self.counts.foreign += 1
        for campaign, batch in by_campaign.items():
            self.counts.final += await self._trackers[campaign].apply_events(batch)
        if unnamed:
            for tracker in list(self._trackers.values()):
                self.counts.final += await tracker.apply_events(unnamed, hold_unknown=False)
