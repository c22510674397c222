"""The outbox contract, run against every store backend (memory and SQLite; PostgreSQL joins later).

A backend is a factory of store instances over one piece of storage: ``Opener.restart`` closes a
store and opens a fresh instance on the same storage, which is how resume after a crash or a
restart is exercised. Adding a backend means adding one branch to the ``backend`` fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

from bulksend.errors import ConfigError, StoreError
from bulksend.store import (
    TRANSITIONS,
    AdmitResult,
    CampaignState,
    FinalUpdate,
    MemoryStore,
    NewRecipient,
    RowState,
    SqliteStore,
    Store,
    open_store,
)

NOW = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
CAMPAIGN = "spring-sale"


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Backend:
    name: str
    make: Callable[[], Store]
    """A new store instance on this backend's storage (for memory: the one instance)."""


@dataclass
class Opener:
    """Opens stores of one backend and closes every one of them at teardown."""

    backend: Backend
    opened: list[Store] = field(default_factory=list)

    async def open(self) -> Store:
        store = self.backend.make()
        await store.open()
        self.opened.append(store)
        return store

    async def restart(self, store: Store) -> Store:
        await store.close()
        return await self.open()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Backend:
    if request.param == "memory":
        # One instance is the storage: close() + open() on it is a "restart" that keeps the data.
        shared = MemoryStore(clock=clock)
        return Backend("memory", lambda: shared)
    path = tmp_path / "outbox.db"
    return Backend("sqlite", lambda: SqliteStore(path, clock=clock))


@pytest.fixture
async def opener(backend: Backend) -> AsyncIterator[Opener]:
    op = Opener(backend)
    yield op
    for store in op.opened:
        await store.close()


@pytest.fixture
async def store(opener: Opener) -> Store:
    s = await opener.open()
    await s.create_campaign(CAMPAIGN, {"file": "campaign.toml"})
    return s


def recipients(rows: range | list[int], *, key_of: Callable[[int], str] | None = None) -> list[NewRecipient]:
    """Pending recipients for these input rows, each with its own key unless ``key_of`` says otherwise."""
    key_of = key_of or (lambda n: f"user{n}@example.com")
    return [
        NewRecipient(row=n, email=f"User{n}@Example.com", key=key_of(n), payload={"n": n, "first": "Zoë"})
        for n in rows
    ]


async def one_row(store: Store, row: int = 1) -> int:
    [res] = await store.admit(CAMPAIGN, recipients([row]))
    return res.id


async def drive(store: Store, row_id: int, state: RowState) -> None:
    """Bring a fresh pending row to ``state`` along legal transitions."""
    if state in (RowState.SENDING, RowState.SUBMITTED, RowState.FINAL):
        await store.mark_sending(row_id, started_at=NOW, correlation=f"corr-{row_id}")
    if state in (RowState.SUBMITTED, RowState.FINAL):
        await store.mark_submitted(row_id, email_id=f"email-{row_id}", message_id="msg", submitted_at=NOW)
    if state is RowState.FINAL:
        await store.mark_final([FinalUpdate(id=row_id, status="sent")])
    if state is RowState.REJECTED:
        await store.mark_rejected(row_id, reason="bad template")
    if state is RowState.SKIPPED:
        await store.mark_skipped(row_id, reason="campaign canceled")


async def apply(store: Store, row_id: int, target: RowState) -> None:
    """Ask the store to move the row to ``target`` with the method that does it."""
    if target is RowState.PENDING:
        await store.mark_retry(row_id, reason="reconciled: not created")
    elif target is RowState.SENDING:
        await store.mark_sending(row_id, started_at=NOW, correlation="again")
    elif target is RowState.SUBMITTED:
        await store.mark_submitted(row_id, email_id=f"email-x-{row_id}", message_id="m2", submitted_at=NOW)
    elif target is RowState.FINAL:
        await store.mark_final([FinalUpdate(id=row_id, status="failed")])
    elif target is RowState.REJECTED:
        await store.mark_rejected(row_id, reason="permanent 4xx")
    else:
        await store.mark_skipped(row_id, reason="canceled")


LEGAL = [(src, dst) for src in RowState for dst in sorted(TRANSITIONS[src])]
# final → final is not an error: mark_final is idempotent (tested on its own).
ILLEGAL = [
    (src, dst)
    for src in RowState
    for dst in RowState
    if dst not in TRANSITIONS[src] and not (src is RowState.FINAL and dst is RowState.FINAL)
]


# -- lifecycle -------------------------------------------------------------------------------
async def test_store_satisfies_protocol(store: Store) -> None:
    """Every backend is a runtime-checkable ``Store``."""
    assert isinstance(store, Store)


async def test_open_twice_is_harmless(store: Store) -> None:
    """A second ``open()`` keeps the store usable and its data intact."""
    await store.open()
    assert await store.get_campaign(CAMPAIGN) is not None


async def test_closed_store_refuses_use(store: Store) -> None:
    """After ``close()`` reads and writes raise ``StoreError``."""
    row_id = await one_row(store)
    await store.close()
    with pytest.raises(StoreError):
        await store.mark_sending(row_id, started_at=NOW, correlation="c")
    with pytest.raises(StoreError):
        await store.get_row(row_id)


# -- campaigns -------------------------------------------------------------------------------
async def test_create_campaign_is_idempotent(opener: Opener, clock: FakeClock) -> None:
    """Creating an existing campaign returns it unchanged, even after a restart."""
    store = await opener.open()
    first = await store.create_campaign("c1", {"fingerprint": "abc", "n": [1, 2]})
    assert first.id == "c1"
    assert first.state is CampaignState.RUNNING
    assert first.spec == {"fingerprint": "abc", "n": [1, 2]}
    assert first.admitted_all is False
    assert first.created_at == clock.now
    clock.advance(60)
    store = await opener.restart(store)
    again = await store.create_campaign("c1", {"fingerprint": "changed"})
    assert again == first


async def test_campaign_get_list_state_admitted_all(store: Store, clock: FakeClock) -> None:
    """Campaigns are listed oldest first and keep their state and admitted_all flag."""
    clock.advance(10)
    await store.create_campaign("later", {})
    assert await store.get_campaign("nope") is None
    listed = await store.list_campaigns()
    assert [c.id for c in listed] == [CAMPAIGN, "later"]
    assert listed[0].created_at.tzinfo is not None

    await store.set_campaign_state("later", CampaignState.PAUSED)
    await store.mark_admitted_all("later")
    later = await store.get_campaign("later")
    assert later is not None
    assert later.state is CampaignState.PAUSED
    assert later.admitted_all is True
    untouched = await store.get_campaign(CAMPAIGN)
    assert untouched is not None
    assert untouched.state is CampaignState.RUNNING
    assert untouched.admitted_all is False


async def test_unknown_campaign_writes_raise(store: Store) -> None:
    """State changes and admission on an unknown campaign raise ``StoreError``."""
    with pytest.raises(StoreError):
        await store.set_campaign_state("ghost", CampaignState.CANCELED)
    with pytest.raises(StoreError):
        await store.mark_admitted_all("ghost")
    with pytest.raises(StoreError):
        await store.admit("ghost", recipients([1]))


async def test_spec_must_be_json(store: Store) -> None:
    """A campaign spec that JSON cannot hold is refused, and no campaign is created."""
    with pytest.raises(StoreError):
        await store.create_campaign("bad", {"when": object()})
    assert await store.get_campaign("bad") is None


# -- admission -------------------------------------------------------------------------------
async def test_admit_returns_results_in_input_order(store: Store) -> None:
    """Admission returns one result per input row, in input order, with the row stored as given."""
    results = await store.admit(CAMPAIGN, recipients([3, 1, 2]))
    assert [r.row for r in results] == [3, 1, 2]
    assert all(r.state is RowState.PENDING and r.reason == "" for r in results)
    assert len({r.id for r in results}) == 3
    row = await store.get_row(results[0].id)
    assert row is not None
    assert (row.campaign_id, row.row, row.email, row.key) == (
        CAMPAIGN,
        3,
        "User3@Example.com",
        "user3@example.com",
    )
    assert row.payload == {"n": 3, "first": "Zoë"}
    assert row.attempts == 0
    assert row.email_id == ""
    assert await store.get_row(10**9) is None


async def test_duplicate_key_is_skipped_first_wins(store: Store) -> None:
    """A pending row whose key is taken becomes skipped "duplicate of row N", within and across calls."""
    same = lambda n: "dup@example.com" if n in (2, 4, 7) else f"user{n}@example.com"  # noqa: E731
    first = await store.admit(CAMPAIGN, recipients([1, 2, 3, 4], key_of=same))
    assert [(r.row, r.state, r.reason) for r in first] == [
        (1, RowState.PENDING, ""),
        (2, RowState.PENDING, ""),
        (3, RowState.PENDING, ""),
        (4, RowState.SKIPPED, "duplicate of row 2"),
    ]
    later = await store.admit(CAMPAIGN, recipients([7], key_of=same))
    assert later[0].state is RowState.SKIPPED
    assert later[0].reason == "duplicate of row 2"
    skipped = await store.get_row(later[0].id)
    assert skipped is not None
    assert skipped.key == "dup@example.com"  # kept for the outcome line


async def test_dedupe_is_per_campaign(store: Store) -> None:
    """The same key in another campaign is not a duplicate."""
    await store.create_campaign("other", {})
    await store.admit(CAMPAIGN, recipients([1], key_of=lambda n: "k@example.com"))
    [res] = await store.admit("other", recipients([1], key_of=lambda n: "k@example.com"))
    assert res.state is RowState.PENDING


async def test_rejected_and_skipped_rows_are_stored_as_given(store: Store) -> None:
    """Rows admitted rejected/skipped keep their state and reason, and never claim a key."""
    results = await store.admit(
        CAMPAIGN,
        [
            NewRecipient(row=1, email="not-an-address", state=RowState.REJECTED, reason="invalid address"),
            NewRecipient(
                row=2, email="a@example.com", key="a@example.com", state=RowState.SKIPPED, reason="suppressed"
            ),
            NewRecipient(row=3, email="A@example.com", key="a@example.com"),
        ],
    )
    assert [(r.state, r.reason) for r in results] == [
        (RowState.REJECTED, "invalid address"),
        (RowState.SKIPPED, "suppressed"),
        (RowState.PENDING, ""),
    ]
    rejected = await store.get_row(results[0].id)
    assert rejected is not None
    assert rejected.key is None


async def test_admit_refuses_rows_in_flight_states(store: Store) -> None:
    """A row cannot be admitted as sending/submitted/final; nothing of the call is written."""
    with pytest.raises(StoreError):
        await store.admit(
            CAMPAIGN, [*recipients([1]), NewRecipient(row=2, email="b@example.com", state=RowState.SENDING)]
        )
    assert await store.max_admitted_row(CAMPAIGN) == 0


async def test_admit_with_bad_payload_writes_nothing(store: Store) -> None:
    """A payload JSON cannot hold fails the whole admit call, with nothing written."""
    rows = [*recipients([1]), NewRecipient(row=2, email="b@example.com", payload={"x": {1, 2}})]
    with pytest.raises(StoreError):
        await store.admit(CAMPAIGN, rows)
    assert await store.counts(CAMPAIGN) == {}


async def test_readmit_after_restart_returns_same_results(opener: Opener, store: Store) -> None:
    """Re-admitting the same rows after a restart returns the stored results, inserting nothing."""
    same = lambda n: "dup@example.com" if n % 2 else f"user{n}@example.com"  # noqa: E731
    first = await store.admit(CAMPAIGN, recipients(range(1, 11), key_of=same))
    store = await opener.restart(store)
    again = await store.admit(CAMPAIGN, recipients(range(1, 11), key_of=same))
    assert again == first
    counts = await store.counts(CAMPAIGN)
    assert counts == {"pending": 6, "skipped": 4}


async def test_readmit_returns_row_as_it_stands(store: Store) -> None:
    """A re-admitted row that moved on is returned in its current state, untouched."""
    row_id = await one_row(store, 5)
    await drive(store, row_id, RowState.SENDING)
    [again] = await store.admit(CAMPAIGN, recipients([5]))
    assert again == AdmitResult(id=row_id, row=5, state=RowState.SENDING)
    row = await store.get_row(row_id)
    assert row is not None
    assert row.attempts == 1


async def test_same_row_twice_in_one_call(store: Store) -> None:
    """A row number repeated within one call is admitted once; the repeat returns the first."""
    results = await store.admit(CAMPAIGN, [*recipients([1]), *recipients([1], key_of=lambda n: "other@x.io")])
    assert results[0] == results[1]
    assert await store.counts(CAMPAIGN) == {"pending": 1}


async def test_key_released_by_rejection(store: Store) -> None:
    """A row rejected after admission gives its key up: a later row with that key is pending."""
    row_id = await one_row(store, 1)
    await store.mark_rejected(row_id, reason="bad template variable")
    [later] = await store.admit(CAMPAIGN, recipients([2], key_of=lambda n: "user1@example.com"))
    assert later.state is RowState.PENDING


async def test_max_admitted_row(store: Store) -> None:
    """``max_admitted_row`` is the highest input row admitted, 0 for none."""
    assert await store.max_admitted_row(CAMPAIGN) == 0
    await store.admit(CAMPAIGN, recipients([4, 9, 2]))
    assert await store.max_admitted_row(CAMPAIGN) == 9
    assert await store.max_admitted_row("ghost") == 0


# -- transitions -----------------------------------------------------------------------------
@pytest.mark.parametrize(("src", "dst"), LEGAL, ids=[f"{s}->{d}" for s, d in LEGAL])
async def test_legal_transition(store: Store, src: RowState, dst: RowState) -> None:
    """Every transition in ``TRANSITIONS`` is accepted and lands the row in the target state."""
    row_id = await one_row(store)
    await drive(store, row_id, src)
    await apply(store, row_id, dst)
    row = await store.get_row(row_id)
    assert row is not None
    assert row.state is dst


@pytest.mark.parametrize(("src", "dst"), ILLEGAL, ids=[f"{s}->{d}" for s, d in ILLEGAL])
async def test_illegal_transition(store: Store, src: RowState, dst: RowState) -> None:
    """Every transition outside ``TRANSITIONS`` raises ``StoreError`` and leaves the row unchanged."""
    row_id = await one_row(store)
    await drive(store, row_id, src)
    before = await store.get_row(row_id)
    with pytest.raises(StoreError):
        await apply(store, row_id, dst)
    assert await store.get_row(row_id) == before


async def test_unknown_row_raises(store: Store) -> None:
    """Transitions on a row id that does not exist raise ``StoreError``."""
    with pytest.raises(StoreError):
        await store.mark_sending(424242, started_at=NOW, correlation="c")
    with pytest.raises(StoreError):
        await store.mark_final([FinalUpdate(id=424242, status="sent")])


async def test_mark_sending_counts_attempts(store: Store) -> None:
    """mark_sending returns the updated row: attempts += 1, start time and correlation recorded."""
    row_id = await one_row(store)
    row = await store.mark_sending(row_id, started_at=NOW, correlation="corr-1")
    assert (row.state, row.attempts, row.attempt_started_at, row.correlation) == (
        RowState.SENDING,
        1,
        NOW,
        "corr-1",
    )
    await store.mark_ambiguous(row_id, ended_at=NOW + timedelta(seconds=30), reason="timeout")
    ambiguous = await store.get_row(row_id)
    assert ambiguous is not None
    assert ambiguous.state is RowState.SENDING
    assert ambiguous.attempt_ended_at == NOW + timedelta(seconds=30)
    assert ambiguous.reason == "timeout"

    await store.mark_retry(row_id, reason="reconciled: not created")
    later = NOW + timedelta(minutes=5)
    row = await store.mark_sending(row_id, started_at=later, correlation="corr-2")
    assert (row.attempts, row.attempt_started_at, row.attempt_ended_at, row.correlation) == (
        2,
        later,
        None,
        "corr-2",
    )
    assert row.payload == {"n": 1, "first": "Zoë"}


async def test_mark_ambiguous_needs_sending(store: Store) -> None:
    """mark_ambiguous on a row that is not sending raises and changes nothing."""
    row_id = await one_row(store)
    with pytest.raises(StoreError):
        await store.mark_ambiguous(row_id, ended_at=NOW, reason="timeout")
    row = await store.get_row(row_id)
    assert row is not None
    assert (row.state, row.reason, row.attempt_ended_at) == (RowState.PENDING, "", None)


async def test_mark_submitted_records_email(store: Store) -> None:
    """mark_submitted records TEM's email id, message id and submission time."""
    row_id = await one_row(store)
    await drive(store, row_id, RowState.SENDING)
    await store.mark_submitted(row_id, email_id="e-1", message_id="m-1", submitted_at=NOW)
    row = await store.get_row(row_id)
    assert row is not None
    assert (row.state, row.email_id, row.message_id, row.submitted_at) == (
        RowState.SUBMITTED,
        "e-1",
        "m-1",
        NOW,
    )


async def test_datetimes_come_back_aware_utc(store: Store) -> None:
    """Datetimes in any zone come back as the same instant in UTC; naive ones are taken as UTC."""
    row_id = await one_row(store)
    paris = datetime(2026, 6, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    row = await store.mark_sending(row_id, started_at=paris, correlation="c")
    assert row.attempt_started_at == paris
    assert row.attempt_started_at is not None
    assert row.attempt_started_at.utcoffset() == timedelta(0)
    await store.mark_submitted(
        row_id, email_id="e", message_id="m", submitted_at=datetime(2026, 6, 1, 12, 0, 1)
    )
    row2 = await store.get_row(row_id)
    assert row2 is not None
    assert row2.submitted_at == datetime(2026, 6, 1, 12, 0, 1, tzinfo=UTC)


# -- final -----------------------------------------------------------------------------------
async def test_mark_final_records_facts(store: Store) -> None:
    """mark_final finalises submitted and adopted (sending) rows with every fact, in one call."""
    ids = [r.id for r in await store.admit(CAMPAIGN, recipients([1, 2]))]
    await drive(store, ids[0], RowState.SUBMITTED)
    await drive(store, ids[1], RowState.SENDING)
    when = NOW + timedelta(minutes=3)
    await store.mark_final(
        [
            FinalUpdate(
                id=ids[0],
                status="failed",
                flags=("hard_bounce", "mailbox_not_found"),
                status_details="550 no such user",
                smtp_code=550,
                smtp_message="5.1.1 user unknown",
                try_count=1,
                final_at=when,
                reason="hard bounce",
            ),
            FinalUpdate(id=ids[1], status="sent", try_count=2, final_at=when),
        ]
    )
    failed = await store.get_row(ids[0])
    assert failed is not None
    assert (failed.state, failed.status, failed.flags, failed.smtp_code, failed.final_at) == (
        RowState.FINAL,
        "failed",
        ("hard_bounce", "mailbox_not_found"),
        550,
        when,
    )
    assert (failed.status_details, failed.smtp_message, failed.try_count, failed.reason) == (
        "550 no such user",
        "5.1.1 user unknown",
        1,
        "hard bounce",
    )
    adopted = await store.get_row(ids[1])
    assert adopted is not None
    assert (adopted.state, adopted.status, adopted.try_count) == (RowState.FINAL, "sent", 2)


async def test_mark_final_is_idempotent(store: Store) -> None:
    """Finalising a final row again is silently ignored and keeps the first facts."""
    row_id = await one_row(store)
    await drive(store, row_id, RowState.FINAL)
    before = await store.get_row(row_id)
    await store.mark_final([FinalUpdate(id=row_id, status="failed", smtp_code=550)])
    await store.mark_final([FinalUpdate(id=row_id, status="canceled"), FinalUpdate(id=row_id, status="x")])
    assert await store.get_row(row_id) == before


async def test_mark_final_batch_is_all_or_nothing(store: Store) -> None:
    """A batch naming a row that cannot be finalised raises and finalises nothing."""
    ids = [r.id for r in await store.admit(CAMPAIGN, recipients([1, 2]))]
    await drive(store, ids[0], RowState.SUBMITTED)
    with pytest.raises(StoreError, match=f"row {ids[1]}"):
        await store.mark_final([FinalUpdate(id=ids[0], status="sent"), FinalUpdate(id=ids[1], status="sent")])
    row = await store.get_row(ids[0])
    assert row is not None
    assert row.state is RowState.SUBMITTED


# -- reads -----------------------------------------------------------------------------------
async def test_counts_by_state_and_status(store: Store) -> None:
    """counts() gives rows per state and final rows per status, omitting zeros."""
    ids = [r.id for r in await store.admit(CAMPAIGN, recipients(range(1, 9)))]
    await store.admit(CAMPAIGN, [NewRecipient(row=9, email="x", state=RowState.REJECTED, reason="bad")])
    for row_id in ids[:3]:
        await drive(store, row_id, RowState.FINAL)  # status sent
    await drive(store, ids[3], RowState.SUBMITTED)
    await store.mark_final([FinalUpdate(id=ids[3], status="failed")])
    await drive(store, ids[4], RowState.SUBMITTED)
    await drive(store, ids[5], RowState.SENDING)
    await drive(store, ids[6], RowState.SKIPPED)
    assert await store.counts(CAMPAIGN) == {
        "final": 4,
        "status:sent": 3,
        "status:failed": 1,
        "submitted": 1,
        "sending": 1,
        "skipped": 1,
        "pending": 1,
        "rejected": 1,
    }
    assert await store.counts("ghost") == {}


async def test_iter_outcomes_in_row_order_across_batches(store: Store) -> None:
    """iter_outcomes yields every row in input-row order, whatever the admission order and page size."""
    await store.admit(CAMPAIGN, recipients([7, 3, 10]))
    await store.admit(CAMPAIGN, recipients([1, 8, 2, 5]))
    await store.admit(CAMPAIGN, [NewRecipient(row=4, email="bad", state=RowState.REJECTED, reason="bad")])
    await store.create_campaign("other", {})
    await store.admit("other", recipients([6]))
    for batch_size in (1, 2, 3, 1000):
        rows = [r.row async for r in store.iter_outcomes(CAMPAIGN, batch_size=batch_size)]
        assert rows == [1, 2, 3, 4, 5, 7, 8, 10]


async def test_iter_rows_by_id_with_states_and_after_id(store: Store) -> None:
    """iter_rows pages in id order, filters on states and starts after ``after_id``."""
    ids = [r.id for r in await store.admit(CAMPAIGN, recipients(range(1, 11)))]
    for row_id in ids[1::3]:
        await drive(store, row_id, RowState.SENDING)
    for row_id in ids[2::3]:
        await drive(store, row_id, RowState.SUBMITTED)
    await store.create_campaign("other", {})
    await store.admit("other", recipients(range(1, 4)))
    for batch_size in (1, 2, 4, 1000):
        everything = [r.id async for r in store.iter_rows(CAMPAIGN, batch_size=batch_size)]
        assert everything == ids
        sending = [
            r.id async for r in store.iter_rows(CAMPAIGN, states=[RowState.SENDING], batch_size=batch_size)
        ]
        assert sending == ids[1::3]
        two = [
            r.id
            async for r in store.iter_rows(
                CAMPAIGN, states=[RowState.SUBMITTED, RowState.PENDING], batch_size=batch_size
            )
        ]
        assert two == [i for i in ids if i not in ids[1::3]]
        after = [r.id async for r in store.iter_rows(CAMPAIGN, after_id=ids[4], batch_size=batch_size)]
        assert after == ids[5:]
    assert [r async for r in store.iter_rows(CAMPAIGN, states=[RowState.FINAL])] == []


async def test_rows_by_email_id(store: Store) -> None:
    """rows_by_email_id maps known ids of the campaign to rows, beyond one SQL chunk, skipping others."""
    ids = [r.id for r in await store.admit(CAMPAIGN, recipients(range(1, 1201)))]
    await store.create_campaign("other", {})
    [other] = await store.admit("other", recipients([1]))

    async def submit(row_id: int) -> None:
        await store.mark_sending(row_id, started_at=NOW, correlation=f"c{row_id}")
        await store.mark_submitted(row_id, email_id=f"email-{row_id}", message_id="m", submitted_at=NOW)

    async with anyio.create_task_group() as tg:
        for row_id in [*ids, other.id]:
            tg.start_soon(submit, row_id)
    wanted = [f"email-{i}" for i in ids] + ["email-unknown", f"email-{other.id}"]
    found = await store.rows_by_email_id(CAMPAIGN, wanted)
    assert set(found) == {f"email-{i}" for i in ids}
    assert all(found[f"email-{i}"].id == i for i in ids)
    assert await store.rows_by_email_id(CAMPAIGN, []) == {}


# -- concurrency -----------------------------------------------------------------------------
async def test_concurrent_writers_are_all_durable(opener: Opener, store: Store) -> None:
    """2,000 concurrent mark_sending calls all succeed, survive a restart, and share few commits."""
    ids: list[int] = []
    for start in range(1, 2001, 500):
        ids += [r.id for r in await store.admit(CAMPAIGN, recipients(range(start, start + 500)))]
    commits_before = getattr(store, "commits", None)
    returned: dict[int, int] = {}

    async def send(row_id: int) -> None:
        row = await store.mark_sending(row_id, started_at=NOW, correlation=f"c{row_id}")
        returned[row_id] = row.attempts

    async with anyio.create_task_group() as tg:
        for row_id in ids:
            tg.start_soon(send, row_id)
    assert returned == dict.fromkeys(ids, 1)
    if isinstance(commits_before, int):
        commits = getattr(store, "commits") - commits_before  # noqa: B009
        assert 1 <= commits <= len(ids) // 10, f"{commits} commits for {len(ids)} writes"

    store = await opener.restart(store)
    assert await store.counts(CAMPAIGN) == {"sending": 2000}
    correlations = {r.id: r.correlation async for r in store.iter_rows(CAMPAIGN)}
    assert correlations == {i: f"c{i}" for i in ids}


async def test_cancelled_writer_leaves_store_consistent(store: Store) -> None:
    """A caller cancelled while its write is in flight leaves the row legal and the store usable."""
    ids = [r.id for r in await store.admit(CAMPAIGN, recipients([1, 2]))]
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.mark_sending(ids[0], started_at=NOW, correlation="c")
    assert scope.cancelled_caught
    # Writes are applied in order: once this one is back, the cancelled one is settled too.
    await store.mark_sending(ids[1], started_at=NOW, correlation="c")
    row = await store.get_row(ids[0])
    assert row is not None
    assert (row.state, row.attempts) in {(RowState.PENDING, 0), (RowState.SENDING, 1)}
    if row.state is RowState.PENDING:
        await store.mark_sending(ids[0], started_at=NOW, correlation="c")
    await store.mark_submitted(ids[0], email_id="e", message_id="m", submitted_at=NOW)


# -- open_store ------------------------------------------------------------------------------
def test_open_store_picks_backend(tmp_path: Path) -> None:
    """open_store maps 'memory:', paths and sqlite URLs to the right backend and settings."""
    assert isinstance(open_store("memory:"), MemoryStore)
    by_path = open_store(tmp_path / "a.db")
    assert isinstance(by_path, SqliteStore)
    assert by_path.path == str(tmp_path / "a.db")
    assert by_path.durability == "full"
    by_url = open_store(f"sqlite://{tmp_path}/b.db?durability=normal")
    assert isinstance(by_url, SqliteStore)
    assert (by_url.path, by_url.durability) == (f"{tmp_path}/b.db", "normal")
    forced = open_store(f"sqlite://{tmp_path}/b.db?durability=normal", durability="full")
    assert isinstance(forced, SqliteStore)
    assert forced.durability == "full"


@pytest.mark.parametrize(
    "target",
    [
        "postgresql://bulksend@localhost/bulksend",
        "mysql://localhost/db",
        "sqlite:///tmp/x.db?durability=fast",
        "sqlite:///tmp/x.db?journal=off",
        "sqlite://",
        ":memory:",
    ],
)
def test_open_store_refuses(target: str) -> None:
    """open_store raises ConfigError for PostgreSQL (not yet), unknown schemes/options, in-memory SQLite."""
    with pytest.raises(ConfigError):
        open_store(target)
