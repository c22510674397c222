"""The outbox contract, run against every store backend: memory, SQLite and PostgreSQL.

A backend is a factory of store instances over one piece of storage: ``Opener.restart`` closes a
store and opens a fresh instance on the same storage, which is how resume after a crash or a
restart is exercised, and opening several instances on one storage is how several workers are
simulated. Adding a backend means adding one branch to the ``backend`` fixture.

The PostgreSQL backend needs a server: ``BULKSEND_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Each test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, fields
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
    LeaseLostError,
    MemoryStore,
    NewRecipient,
    RecipientRow,
    RowState,
    SqliteStore,
    Store,
    open_store,
)
from bulksend.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from bulksend.suppression import SuppressionEntry, SuppressionReason, SuppressionSource, iter_suppressed
from bulksend.testing import FakeClock
from tests.stores import POSTGRES_DSN, hard_bounce, scratch_schema

NOW = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
CAMPAIGN = "spring-sale"


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
    return FakeClock(datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Backend]:
    if request.param == "memory":
        # One instance is the storage: close() + open() on it is a "restart" that keeps the data.
        shared = MemoryStore(clock=clock.utcnow)
        yield Backend("memory", lambda: shared)
    elif request.param == "sqlite":
        path = tmp_path / "outbox.db"
        yield Backend("sqlite", lambda: SqliteStore(path, clock=clock.utcnow))
    else:
        from bulksend.store.postgres import PostgresStore

        # One schema per test is one storage; several instances on it are several workers.
        async with scratch_schema() as schema:
            yield Backend(
                "postgres", lambda: PostgresStore(POSTGRES_DSN, schema=schema, max_size=4, clock=clock.utcnow)
            )


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


async def send_row(
    store: Store,
    row_id: int,
    *,
    started_at: datetime = NOW,
    correlation: str = "c",
    lease_token: int | None = None,
) -> RecipientRow:
    """mark_sending, then the row as it stands afterwards."""
    await store.mark_sending(row_id, started_at=started_at, correlation=correlation, lease_token=lease_token)
    row = await store.get_row(row_id)
    assert row is not None
    return row


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
    assert first.created_at == clock.utcnow()
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


async def test_ids_are_unique_across_calls_and_campaigns(store: Store) -> None:
    """Every admitted row gets its own id, increasing in admission order, whatever the campaign."""
    await store.create_campaign("other", {})
    first = await store.admit(CAMPAIGN, recipients([1, 2, 3]))
    other = await store.admit("other", recipients([1, 2]))
    again = await store.admit(CAMPAIGN, recipients([5, 2, 4]))
    assert again[1] == first[1]  # row 2 was admitted before: returned as it stands
    new_ids = [r.id for r in [*first, *other, again[0], again[2]]]
    assert new_ids == sorted(new_ids)
    assert len(set(new_ids)) == len(new_ids)
    for campaign_id, results in ((CAMPAIGN, first), ("other", other), (CAMPAIGN, again)):
        for res in results:
            row = await store.get_row(res.id)
            assert row is not None
            assert (row.campaign_id, row.row) == (campaign_id, res.row)


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
    """mark_sending counts the attempt (attempts += 1) and records its start time and correlation."""
    row_id = await one_row(store)
    row = await send_row(store, row_id, correlation="corr-1")
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
    row = await send_row(store, row_id, started_at=later, correlation="corr-2")
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
    row = await send_row(store, row_id, started_at=paris)
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
    bounce = hard_bounce(ids[0], when)
    await store.mark_final([bounce, FinalUpdate(id=ids[1], status="sent", try_count=2, final_at=when)])
    failed = await store.get_row(ids[0])
    assert failed is not None
    assert failed.state is RowState.FINAL
    facts = [f.name for f in fields(FinalUpdate)]
    assert {name: getattr(failed, name) for name in facts} == {name: getattr(bounce, name) for name in facts}
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


async def test_resolve_unknown_changes_only_given_up_rows(store: Store) -> None:
    """resolve_unknown gives a row tracking gave up on (final, unknown) TEM's final facts, and
    leaves every other row as it stands."""
    ids = [r.id for r in await store.admit(CAMPAIGN, recipients([1, 2, 3]))]
    for row_id in ids[:2]:
        await drive(store, row_id, RowState.SUBMITTED)
    await store.mark_final(
        [FinalUpdate(id=ids[0], status="unknown", reason="gave up"), FinalUpdate(id=ids[1], status="sent")]
    )
    sent_before, pending_before = await store.get_row(ids[1]), await store.get_row(ids[2])
    when = NOW + timedelta(hours=5)
    facts = functools.partial(
        FinalUpdate, status="failed", flags=("soft_bounce", "mailbox_full"), smtp_code=552, try_count=3
    )
    changed = await store.resolve_unknown([facts(id=i, final_at=when) for i in ids])
    assert changed == 1
    row = await store.get_row(ids[0])
    assert row is not None
    assert (row.state, row.status, row.flags, row.smtp_code, row.try_count, row.final_at, row.reason) == (
        RowState.FINAL,
        "failed",
        ("soft_bounce", "mailbox_full"),
        552,
        3,
        when,
        "",
    )
    assert (await store.get_row(ids[1]), await store.get_row(ids[2])) == (sent_before, pending_before)
    assert (await store.counts(CAMPAIGN)).get("status:unknown", 0) == 0


async def test_mark_final_batch_is_all_or_nothing(store: Store) -> None:
    """A batch naming a row that cannot be finalised raises and finalises nothing."""
    ids = [r.id for r in await store.admit(CAMPAIGN, recipients([1, 2]))]
    await drive(store, ids[0], RowState.SUBMITTED)
    with pytest.raises(StoreError, match=f"row {ids[1]}"):
        await store.mark_final([FinalUpdate(id=ids[0], status="sent"), FinalUpdate(id=ids[1], status="sent")])
    row = await store.get_row(ids[0])
    assert row is not None
    assert row.state is RowState.SUBMITTED


async def test_mark_final_batch_with_repeats_and_final_rows(store: Store) -> None:
    """A batch may name a row twice (first facts win) and rows already final; all of it is written."""
    ids = [r.id for r in await store.admit(CAMPAIGN, recipients([1, 2, 3]))]
    await drive(store, ids[0], RowState.FINAL)
    await drive(store, ids[1], RowState.SUBMITTED)
    await drive(store, ids[2], RowState.SENDING)
    before = await store.get_row(ids[0])
    await store.mark_final(
        [
            FinalUpdate(id=ids[1], status="sent", try_count=1),
            FinalUpdate(id=ids[0], status="failed"),
            FinalUpdate(id=ids[1], status="failed", try_count=9),
            FinalUpdate(id=ids[2], status="unknown"),
        ]
    )
    assert await store.get_row(ids[0]) == before
    rows = {r.id: (r.state, r.status, r.try_count) async for r in store.iter_rows(CAMPAIGN)}
    assert rows == {
        ids[0]: (RowState.FINAL, "sent", 0),
        ids[1]: (RowState.FINAL, "sent", 1),
        ids[2]: (RowState.FINAL, "unknown", 0),
    }


async def test_mark_final_names_every_row_it_cannot_finalise(store: Store) -> None:
    """The error names each row that cannot be finalised, in the order given; nothing is written."""
    ids = [r.id for r in await store.admit(CAMPAIGN, recipients([1, 2, 3]))]
    await drive(store, ids[1], RowState.SUBMITTED)
    updates = [
        FinalUpdate(id=ids[2], status="sent"),
        FinalUpdate(id=ids[1], status="sent"),
        FinalUpdate(id=424242, status="sent"),
        FinalUpdate(id=ids[0], status="sent"),
    ]
    with pytest.raises(StoreError) as caught:
        await store.mark_final(updates)
    message = str(caught.value)
    named = [f"row {ids[2]} ", "row 424242 ", f"row {ids[0]} "]
    assert all(part in message for part in named)
    assert [message.index(part) for part in named] == sorted(message.index(part) for part in named)
    assert f"row {ids[1]} " not in message
    assert await store.counts(CAMPAIGN) == {"pending": 2, "submitted": 1}


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


async def test_rows_by_keys(store: Store) -> None:
    """rows_by_keys maps dedupe keys to the rows owning them in the campaign, beyond one SQL chunk;
    keys owned in another campaign, by nobody, or only by rejected rows are absent."""
    rows = await store.admit(CAMPAIGN, recipients(range(1, 1201)))
    await store.create_campaign("other", {})
    await store.admit("other", [NewRecipient(1, "x@example.com", key="x@example.com")])
    keys = {r.row: f"user{r.row}@example.com" for r in rows}
    await store.mark_rejected(rows[0].id, reason="bad")
    wanted = [*keys.values(), "x@example.com", "nobody@example.com"]
    found = await store.rows_by_keys(CAMPAIGN, wanted)
    assert set(found) == set(list(keys.values())[1:])
    assert all(found[keys[r.row]].id == r.id for r in rows[1:])
    assert await store.rows_by_keys(CAMPAIGN, []) == {}


# -- concurrency -----------------------------------------------------------------------------
async def test_concurrent_writers_are_all_durable(opener: Opener, store: Store) -> None:
    """2,000 concurrent mark_sending calls all succeed, survive a restart, and share few commits."""
    ids: list[int] = []
    for start in range(1, 2001, 500):
        ids += [r.id for r in await store.admit(CAMPAIGN, recipients(range(start, start + 500)))]
    commits_before = getattr(store, "commits", None)
    acknowledged: set[int] = set()

    async def send(row_id: int) -> None:
        await store.mark_sending(row_id, started_at=NOW, correlation=f"c{row_id}")
        acknowledged.add(row_id)

    async with anyio.create_task_group() as tg:
        for row_id in ids:
            tg.start_soon(send, row_id)
    assert acknowledged == set(ids)
    if isinstance(commits_before, int):
        commits = getattr(store, "commits") - commits_before  # noqa: B009
        assert 1 <= commits <= len(ids) // 10, f"{commits} commits for {len(ids)} writes"

    store = await opener.restart(store)
    assert await store.counts(CAMPAIGN) == {"sending": 2000}
    sent = {r.id: (r.correlation, r.attempts) async for r in store.iter_rows(CAMPAIGN)}
    assert sent == {i: (f"c{i}", 1) for i in ids}


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


# -- leases and fencing (many workers) -------------------------------------------------------
LEASE_S = 30.0


async def pending_rows(store: Store, n: int, start: int = 1) -> list[int]:
    return [r.id for r in await store.admit(CAMPAIGN, recipients(range(start, start + n)))]


async def test_claim_leases_lowest_ids_with_new_token(store: Store, clock: FakeClock) -> None:
    """claim leases the lowest pending ids: owner set, expiry now + lease_s, token incremented."""
    ids = await pending_rows(store, 6)
    await drive(store, ids[0], RowState.SENDING)
    await drive(store, ids[2], RowState.REJECTED)
    claimed = await store.claim(CAMPAIGN, worker_id="w1", limit=3, lease_s=LEASE_S)
    assert [r.id for r in claimed] == [ids[1], ids[3], ids[4]]
    for row in claimed:
        assert (row.state, row.lease_owner, row.lease_token) == (RowState.PENDING, "w1", 1)
        assert row.lease_expires_at == clock.utcnow() + timedelta(seconds=LEASE_S)
        assert row.payload == {"n": row.row, "first": "Zoë"}
    stored = await store.get_row(ids[1])
    assert stored == claimed[0]
    # A live lease is nobody else's to take, and not handed out twice to its holder either.
    again = await store.claim(CAMPAIGN, worker_id="w2", limit=10, lease_s=LEASE_S)
    assert [r.id for r in again] == [ids[5]]
    assert await store.claim(CAMPAIGN, worker_id="w1", limit=10, lease_s=LEASE_S) == []


async def test_claim_is_per_campaign_and_limit_zero_claims_nothing(store: Store) -> None:
    """claim only takes rows of the named campaign, and limit 0 takes none."""
    await store.create_campaign("other", {})
    await store.admit("other", recipients([1, 2]))
    ids = await pending_rows(store, 2)
    assert await store.claim(CAMPAIGN, worker_id="w1", limit=0, lease_s=LEASE_S) == []
    claimed = await store.claim(CAMPAIGN, worker_id="w1", limit=10, lease_s=LEASE_S)
    assert [r.id for r in claimed] == ids
    assert await store.claim("ghost", worker_id="w1", limit=10, lease_s=LEASE_S) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"worker_id": "", "lease_s": 10.0},
        {"worker_id": "w", "lease_s": 0.0},
        {"worker_id": "w", "lease_s": -1.0},
        {"worker_id": "w", "lease_s": float("inf")},
    ],
)
async def test_claim_refuses_bad_arguments(store: Store, bad: dict[str, object]) -> None:
    """claim refuses an empty worker id and a lease that is not a finite positive duration."""
    await pending_rows(store, 1)
    with pytest.raises(StoreError):
        await store.claim(CAMPAIGN, limit=1, **bad)  # type: ignore[arg-type]


async def test_concurrent_claims_are_disjoint(opener: Opener, store: Store) -> None:
    """Four workers on their own store instances claiming at once never get the same row twice."""
    ids = await pending_rows(store, 120)
    workers = [await opener.open() for _ in range(4)]
    claimed: dict[str, list[int]] = {f"w{i}": [] for i in range(len(workers))}

    async def work(name: str, worker: Store) -> None:
        while True:
            rows = await worker.claim(CAMPAIGN, worker_id=name, limit=7, lease_s=LEASE_S)
            if not rows:
                return
            claimed[name] += [r.id for r in rows]

    async with anyio.create_task_group() as tg:
        for i, worker in enumerate(workers):
            tg.start_soon(work, f"w{i}", worker)
    everything = [i for got in claimed.values() for i in got]
    assert sorted(everything) == ids  # each row once, none lost
    rows = [r async for r in store.iter_rows(CAMPAIGN)]
    assert {r.id: r.lease_owner for r in rows} == {i: n for n, got in claimed.items() for i in got}
    assert {r.lease_token for r in rows} == {1}


async def test_expired_lease_is_taken_over_and_old_token_fenced(store: Store, clock: FakeClock) -> None:
    """After expiry another worker claims the row with a new token; the old token's write is refused."""
    [row_id] = await pending_rows(store, 1)
    [old] = await store.claim(CAMPAIGN, worker_id="w1", limit=1, lease_s=LEASE_S)
    clock.advance(LEASE_S - 1)
    assert await store.claim(CAMPAIGN, worker_id="w2", limit=1, lease_s=LEASE_S) == []
    clock.advance(1)  # lease_expires_at <= now: expired
    [new] = await store.claim(CAMPAIGN, worker_id="w2", limit=1, lease_s=LEASE_S)
    assert (new.id, new.lease_owner, new.lease_token) == (row_id, "w2", old.lease_token + 1)
    before = await store.get_row(row_id)
    with pytest.raises(LeaseLostError) as caught:
        await store.mark_sending(row_id, started_at=NOW, correlation="late", lease_token=old.lease_token)
    assert caught.value.row_id == row_id
    assert await store.get_row(row_id) == before
    sent = await send_row(store, row_id, correlation="new", lease_token=new.lease_token)
    assert (sent.state, sent.correlation, sent.lease_owner) == (RowState.SENDING, "new", "w2")


async def fenced_write(store: Store, method: str, row_id: int, token: int) -> None:
    if method == "mark_sending":
        await store.mark_sending(row_id, started_at=NOW, correlation="c", lease_token=token)
    elif method == "mark_submitted":
        await store.mark_submitted(row_id, email_id="e", message_id="m", submitted_at=NOW, lease_token=token)
    elif method == "mark_ambiguous":
        await store.mark_ambiguous(row_id, ended_at=NOW, reason="timeout", lease_token=token)
    elif method == "mark_retry":
        await store.mark_retry(row_id, reason="not created", lease_token=token)
    elif method == "mark_rejected":
        await store.mark_rejected(row_id, reason="4xx", lease_token=token)
    else:
        await store.mark_skipped(row_id, reason="canceled", lease_token=token)


# Each fenced write, and the state it is legal from.
FENCED = [
    ("mark_sending", RowState.PENDING),
    ("mark_submitted", RowState.SENDING),
    ("mark_ambiguous", RowState.SENDING),
    ("mark_retry", RowState.SENDING),
    ("mark_rejected", RowState.SENDING),
    ("mark_skipped", RowState.PENDING),
]


@pytest.mark.parametrize(("method", "state"), FENCED, ids=[m for m, _ in FENCED])
async def test_every_dispatch_write_is_fenced(
    store: Store, clock: FakeClock, method: str, state: RowState
) -> None:
    """A dispatch write with a stale token raises LeaseLostError, row unchanged; the current token works."""
    [row_id] = await pending_rows(store, 1)
    await drive(store, row_id, state)
    [old] = await store.claim(CAMPAIGN, worker_id="w1", limit=1, lease_s=LEASE_S, states=[state])
    clock.advance(LEASE_S)
    [new] = await store.claim(CAMPAIGN, worker_id="w2", limit=1, lease_s=LEASE_S, states=[state])
    before = await store.get_row(row_id)
    with pytest.raises(LeaseLostError):
        await fenced_write(store, method, row_id, old.lease_token)
    assert await store.get_row(row_id) == before
    await fenced_write(store, method, row_id, new.lease_token)
    after = await store.get_row(row_id)
    assert after is not None
    assert after != before


async def test_fence_checked_before_the_state_machine(store: Store) -> None:
    """A stale token is reported as LeaseLostError even when the transition would be illegal anyway."""
    [row_id] = await pending_rows(store, 1)
    [held] = await store.claim(CAMPAIGN, worker_id="w1", limit=1, lease_s=LEASE_S)
    with pytest.raises(LeaseLostError):
        await store.mark_submitted(
            row_id, email_id="e", message_id="m", submitted_at=NOW, lease_token=held.lease_token + 5
        )
    with pytest.raises(StoreError) as caught:  # the right token: the state machine speaks
        await store.mark_submitted(
            row_id, email_id="e", message_id="m", submitted_at=NOW, lease_token=held.lease_token
        )
    assert not isinstance(caught.value, LeaseLostError)


async def test_expired_lease_still_serves_its_holder_until_claimed(store: Store, clock: FakeClock) -> None:
    """A lease that expired but that nobody claimed since still lets its holder record its answer."""
    [row_id] = await pending_rows(store, 1)
    [held] = await store.claim(CAMPAIGN, worker_id="w1", limit=1, lease_s=LEASE_S)
    await store.mark_sending(row_id, started_at=NOW, correlation="c", lease_token=held.lease_token)
    clock.advance(LEASE_S * 3)
    await store.mark_submitted(
        row_id, email_id="e-1", message_id="m", submitted_at=NOW, lease_token=held.lease_token
    )
    row = await store.get_row(row_id)
    assert row is not None
    assert (row.state, row.email_id) == (RowState.SUBMITTED, "e-1")


async def test_writes_without_token_ignore_leases(store: Store) -> None:
    """Without lease_token a write behaves as in single-process mode, even on a row leased to someone."""
    [row_id] = await pending_rows(store, 1)
    await store.claim(CAMPAIGN, worker_id="w1", limit=1, lease_s=LEASE_S)
    row = await send_row(store, row_id)
    assert (row.state, row.lease_owner) == (RowState.SENDING, "w1")


async def test_release_makes_rows_claimable_and_fences_the_released_token(store: Store) -> None:
    """release frees only the caller's leases: claimable at once, and the old token is refused."""
    ids = await pending_rows(store, 3)
    mine = await store.claim(CAMPAIGN, worker_id="w1", limit=2, lease_s=LEASE_S)
    [theirs] = await store.claim(CAMPAIGN, worker_id="w2", limit=1, lease_s=LEASE_S)
    await store.release(worker_id="w1", row_ids=[ids[0], ids[1], theirs.id, 10**9])
    released = await store.get_row(ids[0])
    assert released is not None
    assert (released.lease_owner, released.lease_expires_at, released.lease_token) == ("", None, 1)
    kept = await store.get_row(theirs.id)
    assert kept is not None
    assert kept.lease_owner == "w2"
    with pytest.raises(LeaseLostError):
        await store.mark_sending(ids[0], started_at=NOW, correlation="c", lease_token=mine[0].lease_token)
    again = await store.claim(CAMPAIGN, worker_id="w3", limit=5, lease_s=LEASE_S)
    assert [(r.id, r.lease_token) for r in again] == [(ids[0], 2), (ids[1], 2)]


async def test_renew_extends_only_leases_still_held(store: Store, clock: FakeClock) -> None:
    """renew extends the caller's leases and reports which ids are still its own."""
    ids = await pending_rows(store, 3)
    await store.claim(CAMPAIGN, worker_id="w1", limit=3, lease_s=LEASE_S)
    clock.advance(LEASE_S - 5)
    assert await store.renew(worker_id="w1", row_ids=ids[:2], lease_s=LEASE_S) == set(ids[:2])
    renewed = await store.get_row(ids[0])
    assert renewed is not None
    assert renewed.lease_expires_at == clock.utcnow() + timedelta(seconds=LEASE_S)
    clock.advance(5)  # ids[2] expired, the others were renewed
    taken = await store.claim(CAMPAIGN, worker_id="w2", limit=3, lease_s=LEASE_S)
    assert [r.id for r in taken] == [ids[2]]
    assert await store.renew(worker_id="w1", row_ids=[*ids, 10**9], lease_s=LEASE_S) == set(ids[:2])
    assert await store.renew(worker_id="w2", row_ids=ids, lease_s=LEASE_S) == {ids[2]}


async def test_terminal_transitions_end_the_lease(store: Store) -> None:
    """rejected, skipped and final rows lose their lease (owner, expiry); the token keeps its value."""
    ids = await pending_rows(store, 3)
    held = {r.id: r for r in await store.claim(CAMPAIGN, worker_id="w1", limit=3, lease_s=LEASE_S)}
    await store.mark_rejected(ids[0], reason="4xx", lease_token=held[ids[0]].lease_token)
    await store.mark_skipped(ids[1], reason="canceled", lease_token=held[ids[1]].lease_token)
    token = held[ids[2]].lease_token
    await store.mark_sending(ids[2], started_at=NOW, correlation="c", lease_token=token)
    await store.mark_submitted(ids[2], email_id="e", message_id="m", submitted_at=NOW, lease_token=token)
    submitted = await store.get_row(ids[2])
    assert submitted is not None
    assert submitted.lease_owner == "w1"  # non-terminal moves keep the lease
    await store.mark_final([FinalUpdate(id=ids[2], status="sent")])
    for row_id in ids:
        row = await store.get_row(row_id)
        assert row is not None
        assert (row.lease_owner, row.lease_expires_at, row.lease_token) == ("", None, 1)
    assert await store.renew(worker_id="w1", row_ids=ids, lease_s=LEASE_S) == set()


async def test_retry_keeps_the_lease(store: Store) -> None:
    """mark_retry sends the row back to pending under the same lease: its holder may send it again."""
    [row_id] = await pending_rows(store, 1)
    [held] = await store.claim(CAMPAIGN, worker_id="w1", limit=1, lease_s=LEASE_S)
    await store.mark_sending(row_id, started_at=NOW, correlation="c1", lease_token=held.lease_token)
    await store.mark_retry(row_id, reason="not created", lease_token=held.lease_token)
    assert await store.claim(CAMPAIGN, worker_id="w2", limit=1, lease_s=LEASE_S) == []
    row = await send_row(store, row_id, correlation="c2", lease_token=held.lease_token)
    assert (row.attempts, row.lease_owner) == (2, "w1")


async def test_sending_rows_of_dead_worker_claimable_after_expiry(store: Store, clock: FakeClock) -> None:
    """A row left sending is claimable with states=(SENDING,) once its lease expired, and not as pending."""
    ids = await pending_rows(store, 2)
    [held] = await store.claim(CAMPAIGN, worker_id="dead", limit=1, lease_s=LEASE_S)
    await store.mark_sending(held.id, started_at=NOW, correlation="c", lease_token=held.lease_token)
    assert (
        await store.claim(CAMPAIGN, worker_id="w2", limit=5, lease_s=LEASE_S, states=[RowState.SENDING]) == []
    )
    clock.advance(LEASE_S + 1)
    pending = await store.claim(CAMPAIGN, worker_id="w2", limit=5, lease_s=LEASE_S)
    assert [r.id for r in pending] == [ids[1]]
    [adopted] = await store.claim(
        CAMPAIGN, worker_id="w2", limit=5, lease_s=LEASE_S, states=[RowState.SENDING]
    )
    assert (adopted.id, adopted.state, adopted.correlation, adopted.lease_token) == (
        held.id,
        RowState.SENDING,
        "c",
        held.lease_token + 1,
    )


async def test_leases_survive_a_restart(opener: Opener, store: Store) -> None:
    """A claimed row keeps its owner, token and expiry across a restart of the store."""
    await pending_rows(store, 2)
    [held] = await store.claim(CAMPAIGN, worker_id="w1", limit=1, lease_s=LEASE_S)
    store = await opener.restart(store)
    assert await store.get_row(held.id) == held
    [other] = await store.claim(CAMPAIGN, worker_id="w2", limit=5, lease_s=LEASE_S)
    assert other.id != held.id


# -- campaign roles ----------------------------------------------------------------------------
async def test_role_is_exclusive_and_renewable(store: Store) -> None:
    """One worker holds a role; others are refused; the holder renews by acquiring again."""
    assert await store.acquire_role(CAMPAIGN, "admit", worker_id="w1", ttl_s=10)
    assert not await store.acquire_role(CAMPAIGN, "admit", worker_id="w2", ttl_s=10)
    assert await store.acquire_role(CAMPAIGN, "admit", worker_id="w1", ttl_s=10)
    # Roles are per campaign and per role name.
    assert await store.acquire_role(CAMPAIGN, "track", worker_id="w2", ttl_s=10)
    assert await store.acquire_role("other", "admit", worker_id="w2", ttl_s=10)


async def test_role_expires_and_can_be_taken_over(store: Store, clock: FakeClock) -> None:
    """An unrenewed role expires after ttl_s and another worker takes it; a renewal pushes expiry."""
    assert await store.acquire_role(CAMPAIGN, "track", worker_id="w1", ttl_s=10)
    clock.advance(8)
    assert await store.acquire_role(CAMPAIGN, "track", worker_id="w1", ttl_s=10)  # now expires at 18
    clock.advance(9)
    assert not await store.acquire_role(CAMPAIGN, "track", worker_id="w2", ttl_s=10)
    clock.advance(1)
    assert await store.acquire_role(CAMPAIGN, "track", worker_id="w2", ttl_s=10)
    assert not await store.acquire_role(CAMPAIGN, "track", worker_id="w1", ttl_s=10)


async def test_release_role(store: Store) -> None:
    """release_role frees the role for others; a non-holder's release changes nothing."""
    assert await store.acquire_role(CAMPAIGN, "admit", worker_id="w1", ttl_s=10)
    await store.release_role(CAMPAIGN, "admit", worker_id="w2")
    assert not await store.acquire_role(CAMPAIGN, "admit", worker_id="w2", ttl_s=10)
    await store.release_role(CAMPAIGN, "admit", worker_id="w1")
    assert await store.acquire_role(CAMPAIGN, "admit", worker_id="w2", ttl_s=10)
    await store.release_role(CAMPAIGN, "never-held", worker_id="w1")


async def test_concurrent_role_acquisition_has_one_winner(opener: Opener, store: Store) -> None:
    """Eight workers racing for a free role on their own store instances: exactly one wins."""
    workers = [await opener.open() for _ in range(8)]
    won: list[str] = []

    async def race(name: str, worker: Store) -> None:
        if await worker.acquire_role(CAMPAIGN, "admit", worker_id=name, ttl_s=30):
            won.append(name)

    async with anyio.create_task_group() as tg:
        for i, worker in enumerate(workers):
            tg.start_soon(race, f"w{i}", worker)
    assert len(won) == 1


async def test_role_refuses_bad_arguments(store: Store) -> None:
    """acquire_role refuses an empty worker id and a ttl that is not a finite positive duration."""
    with pytest.raises(StoreError):
        await store.acquire_role(CAMPAIGN, "admit", worker_id="", ttl_s=10)
    with pytest.raises(StoreError):
        await store.acquire_role(CAMPAIGN, "admit", worker_id="w1", ttl_s=0)


async def test_campaign_state_keeps_its_reason(opener: Opener, store: Store) -> None:
    """A state set with a reason keeps it across a restart; a state set without one clears it."""
    await store.set_campaign_state(CAMPAIGN, CampaignState.PAUSED, reason="bounce storm")
    store = await opener.restart(store)
    paused = await store.get_campaign(CAMPAIGN)
    assert paused is not None
    assert (paused.state, paused.state_reason) == (CampaignState.PAUSED, "bounce storm")
    await store.set_campaign_state(CAMPAIGN, CampaignState.RUNNING)
    running = await store.get_campaign(CAMPAIGN)
    assert running is not None
    assert (running.state, running.state_reason) == (CampaignState.RUNNING, "")


# -- suppression list ------------------------------------------------------------------------
PROJECT = "11111111-2222-4333-8444-555555555555"
DAY = timedelta(days=1)


def entry(
    address: str,
    reason: SuppressionReason = SuppressionReason.HARD_BOUNCE,
    *,
    source: SuppressionSource = SuppressionSource.AUTO,
    since: datetime = NOW,
    until: datetime | None = None,
    origin: str = "spring-sale",
) -> SuppressionEntry:
    return SuppressionEntry(address, reason, source, since, until, origin)


async def test_suppressed_finds_entries_by_normalised_address(store: Store) -> None:
    """An entry is found whatever the case and spaces of the address asked; other addresses and
    other projects see nothing."""
    await store.suppress(PROJECT, [entry(" Gone@Example.COM ")])
    found = await store.suppressed(PROJECT, ["gone@example.com", "GONE@example.com", "here@example.com"])
    assert found == {"gone@example.com": entry("gone@example.com")}
    assert found["gone@example.com"].describe() == "suppressed: hard_bounce since 2026-03-04 (spring-sale)"
    assert await store.suppressed("another-project", ["gone@example.com"]) == {}
    assert await store.suppressed(PROJECT, []) == {}


async def test_suppressed_leaves_out_expired_entries(store: Store, clock: FakeClock) -> None:
    """Only entries without an end, or ending after now (the store's clock), are active."""
    now = clock.utcnow()
    await store.suppress(
        PROJECT,
        [
            entry("past@example.com", SuppressionReason.MAILBOX_FULL, until=now - DAY),
            entry("soon@example.com", SuppressionReason.MAILBOX_FULL, until=now + DAY),
            entry("ever@example.com"),
        ],
    )
    wanted = ["past@example.com", "soon@example.com", "ever@example.com"]
    assert sorted(await store.suppressed(PROJECT, wanted)) == ["ever@example.com", "soon@example.com"]
    clock.advance(2 * DAY.total_seconds())
    assert sorted(await store.suppressed(PROJECT, wanted)) == ["ever@example.com"]


async def test_suppress_merges_an_entry_already_listed(store: Store, clock: FakeClock) -> None:
    """A live entry keeps its earliest start and its latest end (no end beats any) and takes the
    newer source and origin; an expired one is replaced outright."""
    now = clock.utcnow()
    await store.suppress(PROJECT, [entry("a@example.com", since=now - DAY, until=now + DAY)])
    await store.suppress(
        PROJECT,
        [entry("a@example.com", source=SuppressionSource.TEM, since=now, until=now + 3 * DAY, origin="tem")],
    )
    [merged] = await store.list_suppressed(PROJECT)
    assert (merged.since, merged.until, merged.source, merged.origin) == (
        now - DAY,
        now + 3 * DAY,
        SuppressionSource.TEM,
        "tem",
    )
    await store.suppress(PROJECT, [entry("a@example.com", since=now + DAY, until=None)])
    [forever] = await store.list_suppressed(PROJECT)
    assert (forever.since, forever.until) == (now - DAY, None)
    await store.suppress(PROJECT, [entry("a@example.com", until=now + 9 * DAY)])
    [still] = await store.list_suppressed(PROJECT)
    assert still.until is None
    await store.suppress(PROJECT, [entry("b@example.com", since=now - 9 * DAY, until=now - DAY)])
    await store.suppress(PROJECT, [entry("b@example.com", since=now, until=now + DAY, origin="again")])
    [_, renewed] = await store.list_suppressed(PROJECT)
    assert (renewed.since, renewed.until, renewed.origin) == (now, now + DAY, "again")


async def test_suppressed_gives_the_strongest_reason_not_ignored(store: Store) -> None:
    """An address listed for several reasons is answered with the strongest one; reasons a
    campaign ignores do not count."""
    await store.suppress(
        PROJECT,
        [
            entry("x@example.com", SuppressionReason.MAILBOX_FULL),
            entry("x@example.com", SuppressionReason.UNSUBSCRIBE, source=SuppressionSource.UNSUBSCRIBE),
            entry("y@example.com", SuppressionReason.MAILBOX_FULL),
        ],
    )
    found = await store.suppressed(PROJECT, ["x@example.com", "y@example.com"])
    assert {a: e.reason for a, e in found.items()} == {
        "x@example.com": SuppressionReason.UNSUBSCRIBE,
        "y@example.com": SuppressionReason.MAILBOX_FULL,
    }
    kept = await store.suppressed(
        PROJECT, ["x@example.com", "y@example.com"], ignore={SuppressionReason.MAILBOX_FULL}
    )
    assert {a: e.reason for a, e in kept.items()} == {"x@example.com": SuppressionReason.UNSUBSCRIBE}


async def test_unsuppress_removes_entries_of_one_source_or_all(store: Store) -> None:
    """unsuppress removes an address's entries (only one source's when asked) and counts them."""
    await store.suppress(
        PROJECT,
        [
            entry("x@example.com"),
            entry("x@example.com", SuppressionReason.MANUAL, source=SuppressionSource.MANUAL),
            entry("y@example.com", SuppressionReason.MANUAL, source=SuppressionSource.MANUAL),
        ],
    )
    assert await store.unsuppress(PROJECT, ["X@Example.com"], source=SuppressionSource.MANUAL) == 1
    assert (await store.suppressed(PROJECT, ["x@example.com"]))["x@example.com"].reason == "hard_bounce"
    assert await store.unsuppress(PROJECT, ["x@example.com", "y@example.com", "z@example.com"]) == 2
    assert await store.list_suppressed(PROJECT) == []
    assert await store.unsuppress(PROJECT, []) == 0


async def test_list_suppressed_pages_in_key_order(store: Store, clock: FakeClock) -> None:
    """Listing walks (address, reason) order a page at a time, with or without expired entries."""
    now = clock.utcnow()
    entries = [entry(f"u{n:02d}@example.com") for n in range(7)]
    entries.append(entry("u03@example.com", SuppressionReason.SPAM))
    entries.append(entry("u05@example.com", SuppressionReason.MAILBOX_FULL, until=now - DAY))
    await store.suppress(PROJECT, list(reversed(entries)))
    seen: list[tuple[str, str]] = []
    after: tuple[str, str] | None = None
    while page := await store.list_suppressed(PROJECT, after, 3):
        seen += [e.key for e in page]
        after = page[-1].key
    assert seen == sorted(e.key for e in entries)
    active = [e.key async for e in iter_suppressed(store, PROJECT, active_only=True, batch_size=2)]
    assert active == sorted(e.key for e in entries if e.until is None)
    assert await store.list_suppressed(PROJECT, limit=0) == []


async def test_suppression_survives_a_restart_and_large_lookups(opener: Opener, store: Store) -> None:
    """Entries are durable, and a lookup of more addresses than one statement holds finds them all."""
    await store.suppress(PROJECT, [entry(f"r{n}@example.com") for n in range(0, 1300, 3)])
    store = await opener.restart(store)
    found = await store.suppressed(PROJECT, [f"r{n}@example.com" for n in range(1300)])
    assert sorted(found) == sorted(f"r{n}@example.com" for n in range(0, 1300, 3))


@pytest.mark.parametrize(
    "address", ["no-at-sign", "", "a b@example.com", "ctl\x00@example.com", "x" * 250 + "@e.com"]
)
def test_suppression_entry_refuses_what_is_not_an_address(address: str) -> None:
    """An entry needs an address: an '@', no spaces or control characters, at most 254 characters."""
    with pytest.raises(StoreError):
        entry(address)


async def test_suppression_needs_a_project(store: Store) -> None:
    """Every suppression call refuses an empty project id."""
    with pytest.raises(StoreError):
        await store.suppress("", [entry("a@example.com")])
    with pytest.raises(StoreError):
        await store.suppressed("", ["a@example.com"])


# -- SQLite schema v2 --------------------------------------------------------------------------
async def test_sqlite_v1_database_is_migrated_to_leases(tmp_path: Path) -> None:
    """A database written by the v1 schema is migrated in place: data kept, leases and roles work."""
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for statement in SQLITE_MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1, '2026-01-01T00:00:00+00:00')")
        conn.execute(
            "INSERT INTO campaigns (id, created_at, state, spec) "
            "VALUES ('old', '2026-01-01T00:00:00.000000+00:00', 'running', '{}')"
        )
        conn.execute(
            "INSERT INTO recipients (campaign_id, input_row, email, recipient_key, dedupe_key, state, "
            "payload) VALUES ('old', 1, 'a@example.com', 'a@example.com', 'a@example.com', 'pending', ?)",
            ('{"n": 1}',),
        )
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = SqliteStore(path, clock=clock.utcnow)
    await store.open()
    try:
        [row] = [r async for r in store.iter_rows("old")]
        assert (row.email, row.payload, row.lease_expires_at) == ("a@example.com", {"n": 1}, None)
        [held] = await store.claim("old", worker_id="w1", limit=5, lease_s=LEASE_S)
        assert (held.id, held.lease_token, held.lease_expires_at) == (
            row.id,
            1,
            clock.utcnow() + timedelta(seconds=LEASE_S),
        )
        assert await store.acquire_role("old", "admit", worker_id="w1", ttl_s=10)
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, len(SQLITE_MIGRATIONS) + 1))


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


def test_open_store_picks_postgres() -> None:
    """open_store maps postgresql:// and postgres:// URLs to PostgresStore, with ?schema=, password hidden."""
    from bulksend.store.postgres import PostgresStore

    plain = open_store("postgresql://bulksend@db.internal:5432/outbox")
    assert isinstance(plain, PostgresStore)
    assert plain.schema == "bulksend"
    custom = open_store("postgres://u:s3cr3t-pw@db.internal/outbox?schema=tenant_a&sslmode=require")
    assert isinstance(custom, PostgresStore)
    assert custom.schema == "tenant_a"
    assert "s3cr3t-pw" not in repr(custom)
    assert "s3cr3t-pw" not in custom.dsn
    assert "sslmode=require" in custom.dsn


@pytest.mark.parametrize(
    "target",
    [
        "postgresql://localhost/db?durability=normal",
        "postgresql://localhost/db?schema=no-dashes",
        "mysql://localhost/db",
        "sqlite:///tmp/x.db?durability=fast",
        "sqlite:///tmp/x.db?journal=off",
        "sqlite://",
        ":memory:",
    ],
)
def test_open_store_refuses(target: str) -> None:
    """open_store raises ConfigError for unknown schemes/options, bad schema names, in-memory SQLite."""
    with pytest.raises(ConfigError):
        open_store(target)
