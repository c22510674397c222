"""Tracking by events (Tracker in ``events`` mode): events finalise rows, never regress a final
status, wait for emails not recorded yet, and polling takes over for what no event reported."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend.clock import FakeClock
from bulksend.pipeline.context import SendContext
from bulksend.pipeline.dispatch import utcnow
from bulksend.pipeline.limiter import AimdLimiter, RateLimiter
from bulksend.pipeline.retry import RetryPolicy
from bulksend.pipeline.stats import RunStats
from bulksend.pipeline.tracker import Tracker, TrackerSettings
from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.secret import Secret
from bulksend.store import open_store
from bulksend.store.base import FinalUpdate, NewRecipient, RowState, Store
from bulksend.tem.client import TemClient
from bulksend.tem.config import TemSettings
from bulksend.tem.models import Address, CreateEmailRequest
from bulksend.tem.webhooks import EMAIL_EVENT_TYPES, EmailEvent, WebhookEventType
from tests.conftest import PROJECT, SECRET, settings_for
from tests.waiting import wait_until

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
    final_at: dict[int, datetime] = field(default_factory=dict)
    """Row id → when (on the tracker's clock) it was recorded final."""

    async def states(self) -> dict[str, tuple[str, str]]:
        """Email id → (row state, final status)."""
        out = {}
        for email_id, row_id in self.rows.items():
            row = await self.store.get_row(row_id)
            assert row is not None
            out[email_id] = (row.state.value, row.status)
        return out


async def submit_rows(
    store: Store,
    email_ids: Sequence[str],
    *,
    submitted: bool = True,
    now: Callable[[], datetime] = utcnow,
) -> dict[str, int]:
    """Admit one row per email id (address ``<id>@example.org``); mark them sending, then submitted
    (at ``now()``)."""
    start = await store.max_admitted_row(CAMPAIGN) + 1
    addresses = [f"{e}@example.org" for e in email_ids]
    news = [NewRecipient(start + i, a, key=a) for i, a in enumerate(addresses)]
    rows = {}
    for new, res, email_id in zip(news, await store.admit(CAMPAIGN, news), email_ids, strict=True):
        await store.mark_sending(res.id, started_at=now(), correlation=f"{CAMPAIGN}/{new.row}")
        if submitted:
            await store.mark_submitted(res.id, email_id=email_id, message_id="m", submitted_at=now())
        rows[email_id] = res.id
    return rows


@asynccontextmanager
async def tracked(
    email_ids: Sequence[str],
    tem: TemClient | None = None,
    *,
    fallback_after_s: float = 300.0,
    poll_interval_s: float = 0.01,
    clock: FakeClock | None = None,
    limiter: RateLimiter | None = None,
) -> AsyncIterator[Tracked]:
    """A tracker over ``email_ids``' rows; with ``clock``, the rows' submission times, the
    tracker's clock and its waits are that fake clock's."""
    now = clock.utcnow if clock is not None else utcnow
    store = open_store("memory:")
    await store.open()
    await store.create_campaign(CAMPAIGN, {})
    rows = await submit_rows(store, email_ids, now=now)
    outcomes: list[tuple[int, str]] = []
    final_at: dict[int, datetime] = {}

    async def on_outcome(campaign_id: str, finals: Sequence[tuple[int, str]]) -> None:
        outcomes.extend(finals)
        final_at.update(dict.fromkeys((row_id for row_id, _ in finals), now()))

    context = SendContext(
        store,
        tem if tem is not None else TemClient(settings_for_nothing()),
        limiter if limiter is not None else AimdLimiter(1000),
        RunStats(),
        RetryPolicy(max_attempts=2, max_elapsed_s=5, initial_backoff_s=0.01, max_backoff_s=0.05),
        sleep=clock.sleep if clock is not None else anyio.sleep,
    )
    tracker = Tracker(
        context,
        campaign_id=CAMPAIGN,
        settings=TrackerSettings(
            mode="events", poll_interval_s=poll_interval_s, fallback_after_s=fallback_after_s
        ),
        since=T0 - timedelta(minutes=1),
        mail_from="news@example.com",
        on_outcome=on_outcome,
        now=now,
    )
    try:
        yield Tracked(tracker, store, rows, outcomes, final_at)
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
        assert t.tracker.context.stats.final == 2
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
            assert t.tracker.context.stats.final == len(first)
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


class Requests(dict[str, int]):
    """TEM requests answered, by kind (a client's ``on_response``)."""

    def __call__(self, kind: str, status: int, elapsed_s: float) -> None:
        self[kind] = self.get(kind, 0) + 1


@pytest.mark.parametrize(("lost", "polls", "gets"), [(3, 0, 3), (30, 1, 0)])
async def test_emails_no_event_reported_are_found_by_the_fallback(
    sandbox: Sandbox, lost: int, polls: int, gets: int
) -> None:
    """Emails whose events were lost end final all the same: a few are read by id, many at once
    take one incremental list poll instead (batched)."""
    requests = Requests()
    clock = FakeClock(utcnow())
    async with TemClient(settings_for(sandbox), on_response=requests) as tem:
        ids = await sandbox_emails(tem, lost)
        async with tracked(ids, tem, fallback_after_s=10, clock=clock) as t:
            clock.advance(10)
            await t.tracker.fallback()
            assert set((await t.states()).values()) == {("final", "sent")}
            assert (t.tracker.fallback_polls, requests.get("get", 0)) == (polls, gets)
            assert requests.get("list", 0) == polls


async def asleep_or_done(clock: FakeClock, done: anyio.Event) -> None:
    """Return once a task sleeps on ``clock`` (the tracker between two steps) or ``done`` is set."""
    async with anyio.create_task_group() as tg:

        async def first(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        tg.start_soon(first, lambda: clock.wait_for_sleepers(1))
        tg.start_soon(first, done.wait)


async def run_clock(clock: FakeClock, done: anyio.Event, until: float = math.inf) -> None:
    """Move ``clock`` to ``until``, waking the tracker at each of its deadlines on the way, and
    letting each step finish (it sleeps again) before time moves on; stops once ``done``."""
    while True:
        await asleep_or_done(clock, done)
        if done.is_set():
            return
        deadline = clock.next_deadline()
        assert deadline is not None  # the tracker sleeps
        if deadline > until:
            clock.advance_to(until)
            return
        clock.advance_to(deadline)


async def test_an_email_no_event_reported_is_looked_up_within_one_tick_of_falling_due() -> None:
    """The fallback's promise, on a fake clock and the running tracker: an email whose final
    event was lost is read by id no sooner than `fallback_after_s` after its submission and no
    later than one fallback tick (`fallback_tick_s`) after that, wherever its submission falls
    between two passes, and though the poll interval (3 s) does not divide the tick (5 s); an
    email whose event came is never read."""
    after_s = 10.0
    # (seconds after the start, final event lost): due just before or after the passes at 5, 10…
    sends = [(0.0, True), (1.0, False), (2.01, True), (4.99, True), (5.01, True), (6.0, False), (8.01, True)]
    clock = FakeClock(T0)
    requests = Requests()
    config = SandboxConfig(secret_key=SECRET, project_id=PROJECT, seed=1)
    async with (
        Sandbox(config, clock=clock) as sb,
        TemClient(settings_for(sb), on_response=requests) as tem,
        tracked([], tem, fallback_after_s=after_s, poll_interval_s=3, clock=clock) as t,
    ):
        tick_s = t.tracker.settings.fallback_tick_s
        assert tick_s == after_s / 2
        sending_done, done = anyio.Event(), anyio.Event()
        submitted: dict[int, float] = {}
        lost: set[int] = set()

        async def track() -> None:
            await t.tracker.run(sending_done)
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(track)
            for i, (at_s, lose) in enumerate(sends):
                await run_clock(clock, done, until=T0.timestamp() + at_s)
                [email_id] = await sandbox_emails(tem, 1, local=f"r{i}-")
                row_id = (await submit_rows(t.store, [email_id], now=clock.utcnow))[email_id]
                t.tracker.expect(email_id, row_id)
                submitted[row_id] = at_s
                if lose:
                    lost.add(row_id)
                else:
                    await t.tracker.apply_events([event("email_delivered", email_id, at_s=at_s)])
            sending_done.set()
            await run_clock(clock, done)

        assert set(t.final_at) == set(submitted)
        waited = {row: (t.final_at[row] - T0).total_seconds() - submitted[row] for row in lost}
        assert all(after_s <= w <= after_s + tick_s for w in waited.values()), waited
        assert requests.get("get", 0) == len(lost)
        assert t.tracker.fallback_polls == 0


async def test_a_pass_slowed_by_the_limiter_holds_up_neither_its_reads_nor_the_next_pass(
    sandbox: Sandbox,
) -> None:
    """A fallback pass's reads by id queue for the account limiter side by side (one after another,
    each read went to the back of the queue behind the sends again), and the next pass comes one
    tick after this one began, however long its reads took."""
    requests = Requests()
    clock = FakeClock(utcnow())
    limiter = AimdLimiter(1, burst=1, clock=clock)
    async with TemClient(settings_for(sandbox), on_response=requests) as tem:
        ids = await sandbox_emails(tem, 5)
        async with tracked(ids[:4], tem, fallback_after_s=10, clock=clock, limiter=limiter) as t:
            clock.advance(4.5)
            late = await submit_rows(t.store, ids[4:], now=clock.utcnow)  # due 14.5 s after the start
            clock.advance(5.5)  # 10 s: the first four are due, the pass (tick 5 s) too
            async with anyio.create_task_group() as tg:
                tg.start_soon(t.tracker.step)
                # One slot is free at once; the three other reads all wait for the limiter.
                await wait_until(lambda: limiter.stats.waiting == 3, what="three reads queued at once")
                clock.advance(3)  # their slots: 11, 12 and 13 s
            assert set(t.final_at) == set(t.rows.values())
            clock.advance(2)  # 15 s: one tick after the slow pass began
            await t.tracker.step()
            assert set(t.final_at) == {*t.rows.values(), *late.values()}
            assert requests.get("get", 0) == 5
