"""Tracking: learn every submitted email's final status for a few API calls per thousand emails.

Each poll lists *final* emails of the campaign's window (``since`` the campaign began, sender
``mail_from``) ordered by ``updated_at`` descending, 1000 per page, and stops paging once it
reaches emails updated before the previous poll's high-water mark (minus an overlap for clock
skew and same-instant updates). A poll therefore costs about ``newly final / 1000 + 1`` calls,
whatever the campaign size. Emails the lists have not reported after ``straggler_after_s`` are
read one by one (``GET /emails/{id}``), with a per-email backoff so stuck soft bounces stay cheap;
an email still transient after ``give_up_after_s`` ends ``unknown``.

In ``events`` mode (:meth:`Tracker.apply_events`), TEM's webhook events say when an email is final,
and the lists are only the safety net: an email no event reported for ``fallback_after_s`` is read
by id, or, when more than ``fallback_batch`` are in that case (events stopped arriving), one
incremental list poll answers them all. A lost event costs latency, never an outcome: a fallback
pass runs every ``fallback_tick_s`` (half of ``fallback_after_s``, at least one poll interval),
counted from when the previous pass began, so an email no event reported is looked up between
``fallback_after_s`` and ``fallback_after_s + fallback_tick_s`` after its submission or its last
event, whichever is later. Its read is then paced by the account limiter like every call, and a
pass's reads wait for it together, not one after another. An email still not final when read is
read again after ``2 × fallback_after_s``, then with a doubling backoff (at most an hour). Events
and polls finalise under one lock, and only ``submitted`` rows: a duplicate, late or out-of-order
event finds the row final (the first final status stays) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import KW_ONLY, InitVar, dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import anyio
import structlog

from bulksend.campaign.validate import normalize_address
from bulksend.errors import NotFoundError, TemError
from bulksend.pipeline.context import SendContext
from bulksend.pipeline.dispatch import AccountRefusedError, account_refusal, utcnow
from bulksend.pipeline.stats import OutcomeHook
from bulksend.store.base import FinalUpdate, RecipientRow, RowState
from bulksend.store.rules import FINALISABLE_STATES
from bulksend.tem.models import FINAL_STATUSES, Email, ListEmailsQuery, OrderBy, parse_rfc3339
from bulksend.tem.webhooks import EmailEvent, WebhookEventType

__all__ = ["FinalsHook", "Tracker", "TrackerSettings", "event_update", "final_update"]

FinalsHook = Callable[[str, Sequence[tuple[FinalUpdate, str]]], Awaitable[None]]
"""Called with (campaign id, [(final update, recipient address)]) once the updates are recorded,
in the order TEM reported them; the address is empty when TEM's answer did not say it (a give-up).
The suppression list and the guardrails learn bounces and complaints from it."""

log = structlog.get_logger("bulksend.tracker")

PAGE_SIZE_MAX = 1000
_RECENT_MAX = 200_000
_EXPECT_MAX = 100_000
_HELD_MAX = 10_000
"""Final events held for emails not recorded as submitted yet; beyond, the fallback finds them."""
_READS_AT_ONCE = 16
"""Reads by id of one pass in flight at once: they queue for the limiter together, so a pass of n
reads waits for the limiter about once (plus n slots), not n times behind the sends."""
_FINAL_VALUES = frozenset(s.value for s in FINAL_STATUSES)


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    poll_interval_s: float = 5.0
    give_up_after_s: float = 259_200.0
    page_size: int = PAGE_SIZE_MAX
    overlap_s: float = 2.0
    """Re-read updates this much older than the last high-water mark (server clock skew)."""
    straggler_after_s: float | None = None
    """Read an email by id once the lists have not reported it for this long (default 12 polls, ≥ 60 s)."""
    straggler_max_per_pass: int = 200
    """At most this many per-email reads per pass, to bound quota on a stuck campaign."""
    mode: str = "polling"
    """``polling``: list calls learn final statuses; ``events``: webhook events do, polls are the fallback."""
    fallback_after_s: float = 300.0
    """Events mode: an email no event reported for this long is looked up (within ``fallback_tick_s``)."""
    fallback_batch: int = 20
    """Events mode: more emails than this to look up in one pass take one list poll, not reads by id."""

    @property
    def events(self) -> bool:
        return self.mode == "events"

    @property
    def straggler_s(self) -> float:
        if self.straggler_after_s is not None:
            return self.straggler_after_s
        return max(60.0, 12 * self.poll_interval_s)

    @property
    def fallback_tick_s(self) -> float:
        """Events mode: the fallback pass's period. An email no event reported is looked up at
        most this long after ``fallback_after_s`` has passed since its submission or last event."""
        return _pass_every_s(self, self.fallback_after_s)


def final_update(row_id: int, email: Email) -> FinalUpdate:
    """What the store records for a final email."""
    last = email.last_try
    return FinalUpdate(
        id=row_id,
        status=email.status.value,
        flags=email.raw_flags,
        status_details=email.status_details,
        smtp_code=last.code if last is not None else None,
        smtp_message=last.message if last is not None else "",
        try_count=email.try_count,
        final_at=email.updated_at or utcnow(),
    )


def event_update(row_id: int, event: EmailEvent) -> FinalUpdate:
    """What the store records for an email a final webhook event reported.

    Events carry less than an email read: the flags come from the event type, the try count is
    the event's (or one delivery attempt, none for a blocklisted address).
    """
    tries = event.try_count or (0 if event.type is WebhookEventType.EMAIL_BLOCKLISTED else 1)
    return FinalUpdate(
        id=row_id,
        status=event.final_status or "unknown",
        flags=event.flags,
        status_details=event.status_details,
        smtp_code=event.response_code,
        smtp_message=event.response_message,
        try_count=tries,
        final_at=event.created_at or utcnow(),
    )


def final_update_raw(row_id: int, raw: Mapping[str, Any]) -> FinalUpdate:
    """Like :func:`final_update`, straight from the decoded JSON of a final email (hot path)."""
    # Decoded JSON holds plain dicts: the exact type test spares the ABC check for every email.
    tries = [t for t in raw.get("last_tries") or () if type(t) is dict or isinstance(t, Mapping)]
    if not tries:
        last = None
    elif len(tries) == 1:
        last = tries[0]
    else:
        last = max(tries, key=lambda t: t.get("rank") or 0)
    code = last.get("code") if last is not None else None
    return FinalUpdate(
        id=row_id,
        status=str(raw.get("status")),
        flags=tuple(map(str, raw.get("flags") or ())),
        status_details=str(raw.get("status_details") or ""),
        smtp_code=int(code) if isinstance(code, int) else None,
        smtp_message=str(last.get("message") or "") if last is not None else "",
        try_count=int(raw.get("try_count") or 0),
        final_at=_updated_at(raw) or utcnow(),
    )


@dataclass(eq=False)
class Tracker:
    """Follows a campaign's submitted emails to their final status.

    ``now`` is the wall clock that rows' submission times are compared with; waits go through
    ``context.sleep``: together, a test's fake clock.
    """

    context: SendContext
    _: KW_ONLY
    campaign_id: str
    settings: TrackerSettings
    since: InitVar[datetime]
    mail_from: InitVar[str]
    on_outcome: OutcomeHook | None = None
    on_refused: Callable[[AccountRefusedError], object] | None = None
    on_finals: FinalsHook | None = None
    now: Callable[[], datetime] = utcnow
    events_applied: int = field(default=0, init=False)
    """Rows made final by events."""
    fallback_polls: int = field(default=0, init=False)
    """Events mode: list polls the fallback made because many emails had no event."""

    def __post_init__(self, since: datetime, mail_from: str) -> None:
        settings, now = self.settings, self.now
        # Every poll lists the campaign's final emails, the last updated first.
        self._query = ListEmailsQuery(
            since=since,
            mail_from=mail_from or None,
            statuses=tuple(sorted(FINAL_STATUSES)),
            order_by=OrderBy.UPDATED_AT_DESC,
        )
        self._watermark: datetime | None = None
        self._recent: dict[str, None] = {}
        self._expected: dict[str, int] = {}
        """Final email ids already handled, so the overlap of the next poll costs no parsing."""
        self._straggler_every = timedelta(seconds=_pass_every_s(settings, settings.straggler_s))
        self._next_straggler_pass = now() + self._straggler_every
        self._straggler_next_read: dict[int, tuple[datetime, float]] = {}
        self._fallback_every = timedelta(seconds=settings.fallback_tick_s)
        self._next_fallback = now() + self._fallback_every
        self._last_event: dict[str, datetime] = {}
        """Email id → when an event last reported it (a deferred email waits for its next event)."""
        self._held: dict[str, tuple[datetime, EmailEvent]] = {}
        """Final events whose email is not recorded ``submitted`` yet, by email id (or recipient)."""
        self._finalizing = anyio.Lock()
        """Events and polls finalise one at a time, so a row is never counted final twice."""
        self._wake = anyio.Event()

    async def run(self, sending_done: anyio.Event | None) -> None:
        """Poll until ``sending_done`` is set and nothing submitted is left to follow.

        With ``sending_done`` None (a daemon's job stream) it polls forever, and only while
        something is outstanding: an idle stream costs no API calls.
        """
        while True:
            busy = sending_done is not None or await self.outstanding() > 0
            if busy:
                await self.step()
            if sending_done is not None and sending_done.is_set() and await self.outstanding() == 0:
                return
            if self.settings.events:
                await self._nap(self._until_fallback_s() if busy else self.settings.poll_interval_s)
            else:
                await self.context.sleep(self.settings.poll_interval_s)

    def _until_fallback_s(self) -> float:
        """Events mode: how long to wait before the next step — a poll interval, or less when the
        fallback pass is due sooner (none when a long pass already made the next one due)."""
        until = (self._next_fallback - self.now()).total_seconds()
        return min(self.settings.poll_interval_s, max(0.0, until))

    async def _nap(self, seconds: float) -> None:
        """Wait ``seconds`` on the context's clock, or less when :meth:`expect` wakes the tracker
        because an event held for a just-submitted email can be applied."""
        wake = self._wake
        async with anyio.create_task_group() as tg:

            async def sleep() -> None:
                await self.context.sleep(seconds)
                tg.cancel_scope.cancel()

            tg.start_soon(sleep)
            await wake.wait()
            tg.cancel_scope.cancel()
        self._wake = anyio.Event()

    async def step(self) -> None:
        """One round: a poll, plus the straggler pass when it is due (in events mode: the held
        events, plus the fallback pass when it is due)."""
        if self.settings.events:
            await self._apply_held()
            began = self.now()
            if began >= self._next_fallback:
                # Counted from the pass's start: a pass slowed by the limiter must not push the
                # next one back, or the emails falling due meanwhile wait for both.
                self._next_fallback = began + self._fallback_every
                await self.fallback()
            return
        await self.poll()
        if self.now() >= self._next_straggler_pass:
            await self.stragglers()
            self._next_straggler_pass = self.now() + self._straggler_every

    async def outstanding(self) -> int:
        """Rows submitted and not final yet (rows still ``sending`` belong to reconciliation)."""
        counts = await self.context.store.counts(self.campaign_id)
        return counts.get(RowState.SUBMITTED.value, 0)

    async def poll(self) -> int:
        """One incremental sweep of newly final emails; returns how many rows became final."""
        overlap = timedelta(seconds=self.settings.overlap_s)
        stop_before = self._watermark - overlap if self._watermark else None
        page_size = self.settings.page_size
        newest: datetime | None = None
        seen: dict[str, None] = {}
        made_final = 0
        page = 1
        while True:
            try:
                call = partial(self.context.tem.list_emails_raw, self._query, page=page, page_size=page_size)
                emails = await self.context.paced("list", call)
            except TemError as exc:
                if not self._refused(exc):
                    log.warning("tracker.poll_failed", error=str(exc))
                return made_final
            if emails and page == 1:
                newest = _updated_at(emails[0])
            fresh: list[Mapping[str, Any]] = []
            for raw in emails:
                email_id = raw.get("id")
                if not isinstance(email_id, str) or email_id in self._recent:
                    continue
                if raw.get("status") in _FINAL_VALUES:
                    fresh.append(raw)
            # Only emails not met before are parsed into models: in the overlap window most are known.
            recorded, matched = await self._record_raw(fresh)
            made_final += recorded
            # Remember only emails that matched a row: an unmatched one may be ours but not
            # recorded yet (its send is still being reconciled), so it must be looked at again.
            seen.update(dict.fromkeys(matched))
            if len(emails) < page_size:
                break
            oldest = _updated_at(emails[-1])
            if stop_before is not None and oldest is not None and oldest < stop_before:
                break
            page += 1
        if newest is not None and (self._watermark is None or newest > self._watermark):
            self._watermark = newest
        # Remember what the next poll's overlap will show again; bounded (oldest forgotten first).
        self._recent.update(seen)
        if len(self._recent) > _RECENT_MAX:
            self._recent = dict(list(self._recent.items())[-_RECENT_MAX // 2 :])
        return made_final

    def _refused(self, exc: TemError) -> bool:
        """Hand an account refusal (401/403) to ``on_refused``, which stops the run and reports it:
        a warning per poll before that report would only repeat it. False: not handled here."""
        refused = account_refusal(exc) if self.on_refused is not None else None
        if refused is None or self.on_refused is None:
            return False
        self.on_refused(refused)
        return True

    async def _record(self, emails: Sequence[Email]) -> int:
        recorded, _ = await self._record_matched(emails)
        return recorded

    async def _record_raw(self, fresh: Sequence[Mapping[str, Any]]) -> tuple[int, list[str]]:
        """Record final emails given as decoded JSON; returns (rows made final, ids matching a row)."""
        if not fresh:
            return 0, []
        async with self._finalizing:
            return await self._record_raw_locked(fresh)

    async def _record_raw_locked(self, fresh: Sequence[Mapping[str, Any]]) -> tuple[int, list[str]]:
        updates: list[FinalUpdate] = []
        addresses: list[str] = []
        matched: list[str] = []
        unknown: list[Mapping[str, Any]] = []
        for raw in fresh:
            row_id = self._expected.pop(raw["id"], None)
            if row_id is None:
                unknown.append(raw)
            else:
                updates.append(final_update_raw(row_id, raw))
                addresses.append(_recipient(raw))
                matched.append(raw["id"])
        if unknown:
            # Emails submitted before this run (or beyond the in-memory cap): ask the store.
            ids = [str(raw["id"]) for raw in unknown]
            rows = await self.context.store.rows_by_email_id(self.campaign_id, ids)
            matched.extend(rows)
            for raw in unknown:
                if raw["id"] in rows and rows[raw["id"]].state in FINALISABLE_STATES:
                    updates.append(final_update_raw(rows[raw["id"]].id, raw))
                    addresses.append(_recipient(raw))
        if updates:
            await self._finalize(updates, addresses)
        return len(updates), matched

    async def _record_matched(self, emails: Sequence[Email]) -> tuple[int, list[str]]:
        """Record the final ones among ``emails``; returns (rows made final, ids matching a row)."""
        finals = [e for e in emails if e.status.is_final and e.id]
        if not finals:
            return 0, []
        async with self._finalizing:
            return await self._record_matched_locked(finals)

    async def _record_matched_locked(self, finals: Sequence[Email]) -> tuple[int, list[str]]:
        for e in finals:
            self._expected.pop(e.id, None)  # recorded here: the lists must not record it again
        rows = await self.context.store.rows_by_email_id(self.campaign_id, [e.id for e in finals])
        known = [e for e in finals if e.id in rows and rows[e.id].state in FINALISABLE_STATES]
        if known:
            await self._finalize(
                [final_update(rows[e.id].id, e) for e in known], [e.mail_rcpt for e in known]
            )
        return len(known), list(rows)

    def expect(self, email_id: str, row_id: int) -> None:
        """Note that ``email_id`` belongs to ``row_id`` (just submitted), saving a store lookup later.

        Bounded: past ``_EXPECT_MAX`` outstanding emails, the rest is looked up in the store.
        """
        if len(self._expected) < _EXPECT_MAX:
            self._expected[email_id] = row_id
        if email_id in self._held:
            self._wake.set()  # its final event came before the send's answer: apply it now

    async def record_known(self, email: Email, row_id: int) -> None:
        """Record a final email learned elsewhere (reconciliation) for ``row_id``."""
        if email.status.is_final:
            async with self._finalizing:
                await self._finalize([final_update(row_id, email)], [email.mail_rcpt])

    async def _finalize(self, updates: Sequence[FinalUpdate], addresses: Sequence[str] = ()) -> None:
        """Record final updates; ``addresses`` are their recipients, in the same order (if known)."""
        with anyio.CancelScope(shield=True):
            await self.context.store.mark_final(updates)
            if self.on_finals is not None:
                # Shielded too: a bounce learned is a suppression owed, whatever stops the run.
                known = list(addresses) or [""] * len(updates)
                await self.on_finals(self.campaign_id, list(zip(updates, known, strict=True)))
        self._count(updates)
        if self.on_outcome is not None:
            await self.on_outcome(self.campaign_id, [(u.id, u.status) for u in updates])

    def _count(self, updates: Sequence[FinalUpdate]) -> None:
        stats = self.context.stats
        for u in updates:
            stats.final += 1
            stats.final_by_status[u.status] += 1
            for flag in u.flags:
                stats.final_by_flag[flag] += 1
            self._straggler_next_read.pop(u.id, None)

    async def stragglers(self) -> None:
        """Read long-unreported emails one by one; give up on those past ``give_up_after_s``."""
        stale = await self._stale_rows(self.settings.straggler_s, self.settings.straggler_max_per_pass)
        await self._read(stale, self.settings.straggler_s)

    async def fallback(self) -> None:
        """Events mode: look up the emails no event reported for ``fallback_after_s`` — one list
        poll when there are many (events stopped coming), else a read each; give up as usual."""
        s = self.settings
        most = max(s.straggler_max_per_pass, s.fallback_batch + 1)
        stale = await self._stale_rows(s.fallback_after_s, most)
        if len(stale) > s.fallback_batch:
            log.warning(
                "tracker.events_missing",
                campaign=self.campaign_id,
                emails=len(stale),
                hint=f"no event for {s.fallback_after_s:g} s: polling for them; check the webhook, "
                "its topic's subscription and the event queue",
            )
            self.fallback_polls += 1
            await self.poll()
            return
        await self._read(stale, s.fallback_after_s)

    async def _stale_rows(self, after_s: float, limit: int) -> list[RecipientRow]:
        """Submitted rows unreported for ``after_s`` (since submission, or their last event) and due
        for a read, ``limit`` at most; rows past ``give_up_after_s`` end ``unknown`` here."""
        now = self.now()
        give_up = timedelta(seconds=self.settings.give_up_after_s)
        stale: list[RecipientRow] = []
        gave_up: list[FinalUpdate] = []
        async for row in self.context.store.iter_rows(self.campaign_id, states=[RowState.SUBMITTED]):
            submitted = row.submitted_at or now
            if now - submitted >= give_up:
                gave_up.append(_give_up(row, now, self.settings.give_up_after_s))
                self._expected.pop(row.email_id, None)  # a late event must not count it again
                continue
            heard = max(submitted, self._last_event.get(row.email_id, submitted))
            if (now - heard).total_seconds() < after_s or len(stale) >= limit:
                continue
            next_read, _ = self._straggler_next_read.get(row.id, (now, after_s))
            if next_read <= now:
                stale.append(row)
        if gave_up:
            async with self._finalizing:
                await self._finalize(gave_up)
        return stale

    async def _read(self, rows: Sequence[RecipientRow], first_backoff_s: float) -> None:
        """Read each row's email by id, up to ``_READS_AT_ONCE`` at a time; record the final ones,
        back off on the others. An account refusal ends the pass."""
        if not rows:
            return
        slots = anyio.CapacityLimiter(_READS_AT_ONCE)
        async with anyio.create_task_group() as tg:
            for row in rows:
                tg.start_soon(self._read_one, row, first_backoff_s, slots, tg.cancel_scope)

    async def _read_one(
        self,
        row: RecipientRow,
        first_backoff_s: float,
        slots: anyio.CapacityLimiter,
        scope: anyio.CancelScope,
    ) -> None:
        async with slots:
            now = self.now()
            try:
                email = await self.context.paced("get", partial(self.context.tem.get_email, row.email_id))
            except NotFoundError:
                return
            except TemError as exc:
                if self._refused(exc):
                    scope.cancel()
                else:
                    log.warning("tracker.get_failed", row=row.row, error=str(exc))
                return
            if email.status.is_final:
                await self._record([email])
            else:
                # Exponential per-email backoff, capped at an hour: a soft bounce can last 72 h.
                _, backoff_s = self._straggler_next_read.get(row.id, (now, first_backoff_s))
                backoff_s = min(backoff_s * 2, 3600.0)
                self._straggler_next_read[row.id] = (now + timedelta(seconds=backoff_s), backoff_s)

    # -- events --------------------------------------------------------------------------------
    async def apply_events(self, events: Sequence[EmailEvent], *, hold_unknown: bool = True) -> int:
        """Record the final statuses ``events`` report; returns how many rows became final.

        Only ``submitted`` rows are finalised: a row already final keeps its status (a duplicate,
        late or out-of-order event changes nothing), and an event for an email not recorded as
        submitted yet (its send's answer, or its reconciliation, is still on the way) is held and
        applied once it is, or left to the fallback if that takes too long. ``hold_unknown=False``
        drops those instead (events that may well be another campaign's).
        """
        now = self.now()
        finals: dict[str, EmailEvent] = {}
        for event in events:
            if event.email_id:
                self._note_event(event.email_id, now)
            if event.final_status is None:
                continue
            key = _event_key(event)
            first = finals.get(key)
            # Within a batch, the earliest final event wins, as it would have arriving alone first.
            if first is None or _earlier(event, first):
                finals[key] = event
        if not finals:
            return 0
        async with self._finalizing:
            made = await self._apply_locked([(now, e) for e in finals.values()], hold=hold_unknown)
        self.events_applied += made
        return made

    async def _apply_held(self) -> None:
        """Apply the held events whose emails are now recorded; forget the expired ones."""
        if not self._held:
            return
        expired = self.now() - timedelta(seconds=self.settings.fallback_after_s)
        held = [(at, event) for at, event in self._held.values() if at >= expired]
        self._held.clear()
        if held:
            async with self._finalizing:
                self.events_applied += await self._apply_locked(held, hold=True)

    async def _apply_locked(self, events: Sequence[tuple[datetime, EmailEvent]], *, hold: bool) -> int:
        """Finalise the rows of these final events (each with when it arrived); with ``hold``, keep
        those whose row is not ``submitted`` yet for later."""
        updates: list[FinalUpdate] = []
        addresses: list[str] = []
        arrived: dict[str, datetime] = {}
        by_id: list[EmailEvent] = []
        by_rcpt: dict[str, EmailEvent] = {}
        for at, event in events:
            arrived[_event_key(event)] = at
            if not event.email_id:
                by_rcpt[normalize_address(event.email_to)] = event
                continue
            row_id = self._expected.pop(event.email_id, None)
            if row_id is None:
                by_id.append(event)
            else:
                updates.append(event_update(row_id, event))
                addresses.append(event.email_to)
        store, campaign = self.context.store, self.campaign_id
        rows: dict[str, RecipientRow] = {}
        if by_id:
            rows = await store.rows_by_email_id(campaign, [e.email_id for e in by_id])
        if by_rcpt:
            by_key = await store.rows_by_keys(campaign, list(by_rcpt))
            rows.update({_event_key(by_rcpt[key]): row for key, row in by_key.items()})
        for event in [*by_id, *by_rcpt.values()]:
            row = rows.get(_event_key(event))
            if row is not None and row.state is RowState.SUBMITTED:
                updates.append(event_update(row.id, event))
                addresses.append(event.email_to or row.email)
            elif hold and (row is None or row.state in (RowState.PENDING, RowState.SENDING)):
                key = _event_key(event)
                if key in self._held or len(self._held) < _HELD_MAX:
                    self._held[key] = (arrived[key], event)
            # Any other state is terminal: the row's first final status stays.
        if updates:
            await self._finalize(updates, addresses)
        return len(updates)

    def _note_event(self, email_id: str, now: datetime) -> None:
        self._last_event[email_id] = now
        if len(self._last_event) > _EXPECT_MAX:
            self._last_event = dict(list(self._last_event.items())[-_EXPECT_MAX // 2 :])


def _pass_every_s(settings: TrackerSettings, delay_s: float) -> float:
    """How often to scan the store's submitted rows for those unreported for ``delay_s`` (and the
    give-ups): at half the shorter of the two delays, never more often than once per poll."""
    return max(settings.poll_interval_s, min(delay_s, settings.give_up_after_s) / 2)


def _event_key(event: EmailEvent) -> str:
    """The email an event is about: its id, or (``email_blocklisted``) its recipient."""
    return event.email_id or "to:" + normalize_address(event.email_to)


def _earlier(event: EmailEvent, than: EmailEvent) -> bool:
    return event.created_at is not None and (than.created_at is None or event.created_at < than.created_at)


def _give_up(row: RecipientRow, now: datetime, after_s: float) -> FinalUpdate:
    hours = after_s / 3600
    span = f"{hours:g} h" if hours >= 1 else f"{after_s:g} s"
    return FinalUpdate(
        id=row.id,
        status="unknown",
        flags=row.flags,
        status_details=row.status_details,
        try_count=row.try_count,
        final_at=now,
        reason=(
            f"still not final at TEM {span} after submission (tracking.give_up_after_s); "
            "TEM may still deliver it: run `bulksend recheck` on the outcomes file later to look it up again"
        ),
    )


def _recipient(raw: Mapping[str, Any]) -> str:
    return str(raw.get("mail_rcpt") or raw.get("rcpt_to") or "")


def _updated_at(raw: Mapping[str, Any]) -> datetime | None:
    try:
        return parse_rfc3339(raw.get("updated_at"))
    except ValueError:
        return None
