"""Tracking by events (Tracker in ``events`` mode): events finalise rows, never regress a final
status, wait for emails not recorded yet, and polling takes over for what no event reported."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend.pipeline.context import SendContext
from bulksend.pipeline.dispatch import utcnow
from bulksend.pipeline.limiter import AimdLimiter
from bulksend.pipeline.retry import RetryPolicy
from bulksend.pipeline.stats import RunStats
from bulksend.pipeline.tracker import Tracker, TrackerSettings
from bulksend.sandbox import Sandbox
from bulksend.secret import Secret
from bulksend.store import open_store
from bulksend.store.base import FinalUpdate, NewRecipient, RowState, Store
from bulksend.tem.client import TemClient
from bulksend.tem.config import TemSettings
from bulksend.tem.models import Address, CreateEmailRequest
from bulksend.tem.webhooks import EMAIL_EVENT_TYPES, EmailEvent, WebhookEventType
from tests.conftest import settings_for

CAMPAIGN = "events-test"
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
_ids = itertools.count()


def event(kind: WebhookEventType | str, email_id: str, *, at_s: float = 0.0, to: str = "") -> EmailEvent:
    """A TEM event about ``email_id`` created ``at_s`` seconds after T0."""
    return EmailEvent(
        id=f"event-{next(_ids)}",
        type=WebhookEventType(kind),
        email_id=email_id,
        email_to=to,
        created_at=T0 + timedelta(seconds=at_s),
        response_code=250 if kind == "email_delivered" else 550,
        response_message="2.0.0 OK" if kind == "email_delivered" else "5.1.1 unknown",
    )


@dataclass
class Tracked:
    """A tracker in events mode over a memory store whose rows 1..n are ``submitted``."""

    tracker: Tracker
    store: Store
    rows: dict[str, int]
    """Email id → row id."""
    outcomes: list[tuple[int, str]] = field(default_factory=list)

    async def states(self) -> dict[str, tuple[str, str]]:
        """Email id → (row state, final status)."""
        out = {}
        for email_id, row_id in self.rows.items():
            row = await self.store.get_row(row_id)
            assert row is not None
            out[email_id] = (row.state.value, row.status)
        return out


async def submit_rows(store: Store, email_ids: Sequence[str], *, submitted: bool = True) -> dict[str, int]:
    """Admit one row per email id (address ``<id>@example.org``); mark them sending, then submitted."""
    start = await store.max_admitted_row(CAMPAIGN) + 1
    addresses = [f"{e}@example.org" for e in email_ids]
    news = [NewRecipient(start + i, a, key=a) for i, a in enumerate(addresses)]
    rows = {}
    for new, res, email_id in zip(news, await store.admit(CAMPAIGN, news), email_ids, strict=True):
        await store.mark_sending(res.id, started_at=utcnow(), correlation=f"{CAMPAIGN}/{new.row}")
        if submitted:
            await store.mark_submitted(res.id, email_id=email_id, message_id="m", submitted_at=utcnow())
        rows[email_id] = res.id
    return rows


@asynccontextmanager
async def tracked(
    email_ids: Sequence[str], tem: TemClient | None = None, *, fallback_after_s: float = 300.0
) -> AsyncIterator[Tracked]:
    store = open_store("memory:")
    await store.open()
    await store.create_campaign(CAMPAIGN, {})
    rows = await submit_rows(store, email_ids)
    outcomes: list[tuple[int, str]] = []

    async def on_outcome(campaign_id: str, finals: Sequence[tuple[int, str]]) -> None:
        outcomes.extend(finals)

    context = SendContext(
        store,
        tem if tem is not None else TemClient(settings_for_nothing()),
        AimdLimiter(1000),
        RunStats(),
        RetryPolicy(max_attempts=2, max_elapsed_s=5, initial_backoff_s=0.01, max_backoff_s=0.05),
    )
    tracker = Tracker(
        context,
        campaign_id=CAMPAIGN,
        settings=TrackerSettings(mode="events", poll_interval_s=0.01, fallback_after_s=fallback_after_s),
        since=T0 - timedelta(minutes=1),
        mail_from="news@example.com",
        on_outcome=on_outcome,
    )
    try:
        yield Tracked(tracker, store, rows, outcomes)
    finally:
        await store.close()


def settings_for_nothing() -> TemSettings:
    """Settings of a client that is never used (the tests that pass none make no API call)."""
    return TemSettings(secret_key=Secret("unused"), project_id="p", api_url="http://127.0.0.1:9")


async def test_final_events_finalise_their_rows_with_the_event_details() -> None:
    """A delivered and a dropped event make their rows final `sent` and `failed` (hard bounce),
    with the SMTP answer; queued and deferred events leave a row submitted."""
    async with tracked(["a", "b", "c"]) as t:
        made = await t.tracker.apply_events(
            [
                event("email_queued", "a"),
                event("email_delivered", "a", at_s=1),
                event("email_dropped", "b", at_s=1),
                event("email_deferred", "c", at_s=1),
            ]
        )
        assert made == 2
        assert await t.states() == {"a": ("final", "sent"), "b": ("final", "failed"), "c": ("submitted", "")}
        row = await t.store.get_row(t.rows["b"])
        assert row is not None
        assert (row.flags, row.smtp_code, row.final_at) == (("hard_bounce",), 550, T0 + timedelta(seconds=1))
        assert sorted(t.outcomes) == sorted([(t.rows["a"], "sent"), (t.rows["b"], "failed")])


async def test_later_events_never_change_a_final_status() -> None:
    """A delivered after dropped, a queued after delivered and a duplicate are all ignored: the
    first final status stays, and the row is counted final once."""
    async with tracked(["a", "b"]) as t:
        first = [event("email_dropped", "a", at_s=1), event("email_delivered", "b", at_s=1)]
        await t.tracker.apply_events(first)
        made = await t.tracker.apply_events(
            [
                event("email_delivered", "a", at_s=2),
                event("email_queued", "b", at_s=2),
                event("email_delivered", "b", at_s=1),
                event("email_spam", "b", at_s=3),
            ]
        )
        assert made == 0
        assert await t.states() == {"a": ("final", "failed"), "b": ("final", "sent")}
        assert t.tracker._ctx.stats.final == 2
        assert len(t.outcomes) == 2


async def test_store_rules_keep_the_first_final_status() -> None:
    """The store itself ignores a second final update of a final row (what makes events and polls
    safe to race): `delivered` after `dropped` changes nothing."""
    async with tracked(["a"]) as t:
        row_id = t.rows["a"]
        await t.store.mark_final([FinalUpdate(row_id, "failed", ("hard_bounce",))])
        await t.store.mark_final([FinalUpdate(row_id, "sent")])
        assert await t.states() == {"a": ("final", "failed")}


async def test_within_a_batch_the_earliest_final_event_wins() -> None:
    """Two final events of one email in one batch: the one TEM created first is recorded."""
    async with tracked(["a"]) as t:
        both = [event("email_delivered", "a", at_s=5), event("email_spam", "a", at_s=2)]
        await t.tracker.apply_events(both)
        assert await t.states() == {"a": ("final", "failed")}


async def test_an_event_before_the_send_is_recorded_waits_for_it() -> None:
    """A final event for an email whose row is still `sending` (the POST's answer is on its way)
    is held, and applied once the row is submitted: at the next step, sooner when `expect` wakes
    the tracker."""
    async with tracked([]) as t:
        rows = await submit_rows(t.store, ["late"], submitted=False)
        assert await t.tracker.apply_events([event("email_delivered", "late")]) == 0
        await t.store.mark_submitted(rows["late"], email_id="late", message_id="m", submitted_at=utcnow())
        t.tracker.expect("late", rows["late"])
        await t.tracker.step()
        row = await t.store.get_row(rows["late"])
        assert row is not None
        assert (row.state, row.status) == (RowState.FINAL, "sent")


async def test_blocklisted_event_without_email_id_finds_its_row_by_recipient() -> None:
    """email_blocklisted names the recipient, not the email: the campaign's row for that address
    becomes `failed` with the blocklisted flag."""
    async with tracked(["x", "y"]) as t:
        await t.tracker.apply_events([event("email_blocklisted", "", to="Y@Example.org")])
        assert await t.states() == {"x": ("submitted", ""), "y": ("final", "failed")}


# -- the property: no order of events regresses a final status ------------------------------------
_KINDS = st.sampled_from([k.value for k in EMAIL_EVENT_TYPES])


@given(
    st.lists(
        st.lists(st.tuples(_KINDS, st.integers(0, 2), st.integers(0, 5)), min_size=1, max_size=6),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=150, deadline=None)
def test_no_sequence_of_events_regresses_a_final_status(batches: list[list[tuple[str, int, int]]]) -> None:
    """Whatever the events — duplicated, late, out of order, in any batching — a row becomes final
    once, with the first final status it was given, and never changes after."""

    async def scenario() -> None:
        ids = ["e0", "e1", "e2"]
        async with tracked(ids) as t:
            first: dict[str, str] = {}
            for batch in batches:
                events = [event(kind, ids[i], at_s=at) for kind, i, at in batch]
                await t.tracker.apply_events(events)
                # What this batch should have decided for the emails still open: its earliest
                # final event (the first of equal times).
                for e in sorted(events, key=lambda e: e.created_at or T0):
                    if e.final_status is not None:
                        first.setdefault(e.email_id, e.final_status)
                states = await t.states()
                for email_id, (state, status) in states.items():
                    if email_id in first:
                        assert (state, status) == ("final", first[email_id])
                    else:
                        assert state == "submitted"
            assert t.tracker._ctx.stats.final == len(first)
            assert len(t.outcomes) == len(first)

    anyio.run(scenario)


# -- polling as the safety net --------------------------------------------------------------------
async def sandbox_emails(tem: TemClient, n: int, local: str = "user") -> list[str]:
    ids: list[str] = []
    for i in range(n):
        request = CreateEmailRequest(
            from_=Address("news@example.com"), to=(Address(f"{local}{i}@example.org"),), subject="s", text="t"
        )
        ids.extend(e.id for e in await tem.send_email(request))
    return ids


@pytest.mark.parametrize(("lost", "polls", "gets"), [(3, 0, 3), (30, 1, 0)])
async def test_emails_no_event_reported_are_found_by_the_fallback(
    sandbox: Sandbox, lost: int, polls: int, gets: int
) -> None:
    """Emails whose events were lost end final all the same: a few are read by id, many at once
    take one incremental list poll instead (batched)."""
    requests: dict[str, int] = {"get": 0, "list": 0}

    def count(kind: str, status: int, elapsed_s: float) -> None:
        requests[kind] = requests.get(kind, 0) + 1

    async with TemClient(settings_for(sandbox), on_response=count) as tem:
        ids = await sandbox_emails(tem, lost)
        async with tracked(ids, tem, fallback_after_s=0.01) as t:
            await anyio.sleep(0.02)  # the emails must be older than fallback_after_s
            await t.tracker.fallback()
            assert set((await t.states()).values()) == {("final", "sent")}
            assert (t.tracker.fallback_polls, requests["get"]) == (polls, gets)
            assert requests["list"] == polls
