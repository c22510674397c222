"""The sandbox's final index answers list queries exactly as filtering and sorting everything does.

``EmailStore.list_page`` answers "final statuses by updated_at" (what bulksend's tracker polls)
from an index of emails by the moment they turn final; every other query filters and sorts. The
generic answer, ``order(select(...))`` sliced, is the reference for both.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.sandbox.request import CreateEmail
from bulksend.sandbox.state import (
    ORDER_BY_VALUES,
    EmailFilter,
    EmailStore,
    Timing,
    final_at,
    format_timestamp,
    status_at,
    view_at,
)
from bulksend.testing import FakeClock

PREFIX = "/transactional-email/v1alpha1/regions/fr-par"
SECRET = "index-test-secret"
PROJECT = "11111111-2222-4333-8444-555555555555"
OTHER_PROJECT = "99999999-8888-4777-8666-555555555555"
T0 = 1_700_000_000.0
FINAL = frozenset({"sent", "failed", "canceled"})
LOCAL_PARTS = (
    "user",
    "user",
    "user",
    "Bounce",
    "softbounce",
    "blocked",
    "spam",
    "full",
    "greylist",
    "stuck",
    "hold",
    "hold",
)
SENDERS = ("a@example.com", "B@example.com", "c@example.net")
SUBJECTS = ("Alpha", "Bravo")
FLAGS = ("soft_bounce", "hard_bounce", "spam", "greylisted", "send_before_expiration", "blocklisted")
# Awkward floats on purpose: the moment an email turns final must be exactly its updated_at.
TIMINGS = (
    Timing(),
    Timing(0.0, 0.2, 0.0, 0.0),
    Timing(0.1, 0.7, 0.3, 1.3),
    Timing(1.0, 0.1, 2.5, 0.0),
    Timing(0.0, 0.0, 0.0, math.inf),
)


def generic(store: EmailStore, flt: EmailFilter, order_by: str, now: float) -> list[int]:
    """The reference answer: every match, sorted."""
    return store.order(store.select(flt, now), order_by, now)


def random_filter(rng: random.Random, store: EmailStore, now: float) -> EmailFilter:
    """A filter the index usually serves (final statuses), sometimes one it must leave alone."""
    roll = rng.random()
    if roll < 0.75:
        statuses: frozenset[str] | None = frozenset(
            rng.sample(sorted(FINAL | {"unknown"}), rng.randint(1, 3))
        )
    elif roll < 0.9:
        statuses = frozenset(rng.sample(["new", "sending", "sent", "failed"], rng.randint(1, 3)))
    else:
        statuses = None
    since = until = None
    if rng.random() < 0.4:
        since = now - rng.uniform(0.0, 30.0)
    if rng.random() < 0.2:
        until = now - rng.uniform(0.0, 15.0)
    search = None
    if rng.random() < 0.1:
        search = rng.choice(["bounce", "user", "example.net", "alpha"])
    mail_rcpt = None
    if rng.random() < 0.05 and len(store):
        mail_rcpt = store.emails[rng.randrange(len(store))].mail_rcpt.lower()
    return EmailFilter(
        project_id=rng.choice([None, None, PROJECT, OTHER_PROJECT]),
        since=since,
        until=until,
        mail_from=rng.choice([None, None, *(s.lower() for s in SENDERS)]),
        mail_rcpt=mail_rcpt,
        statuses=statuses,
        flags=frozenset(rng.sample(FLAGS, rng.randint(1, 2))) if rng.random() < 0.15 else None,
        subject=rng.choice([None, None, None, *SUBJECTS]),
        search=search,
    )


def send(
    store: EmailStore, addresses: Iterable[str], now: float, timing: Timing, send_before: float | None = None
) -> None:
    """One send from the first sender to ``addresses`` (all ``to``), created at ``now``."""
    recipients = tuple((address, "to") for address in addresses)
    store.create(CreateEmail(PROJECT, SENDERS[0], "s", send_before, recipients), timing=timing, now=now)


def create_random(rng: random.Random, store: EmailStore, now: float, counter: Iterator[int]) -> None:
    """One send of 1–3 recipients with random outcomes, sender, timing and send_before."""
    send_before = None
    if rng.random() < 0.15:
        send_before = now + rng.choice([-1.0, 0.05, 0.3, 100.0])
    # Drawn in this order so that a seed keeps giving the same history.
    project_id = rng.choice([PROJECT, PROJECT, OTHER_PROJECT])
    mail_from = rng.choice(SENDERS)
    subject = rng.choice(SUBJECTS)
    timing = rng.choice(TIMINGS)
    count = rng.choice([1, 1, 1, 2, 3])
    recipients = tuple((f"{rng.choice(LOCAL_PARTS)}{next(counter)}@example.org", "to") for _ in range(count))
    store.create(CreateEmail(project_id, mail_from, subject, send_before, recipients), timing=timing, now=now)


@pytest.mark.parametrize("seed", range(30))
def test_index_pages_equal_the_generic_answer_on_random_histories(seed: int) -> None:
    """Over random sends, cancels, clock readings (some stepping back), filters, orders and
    pages, list_page always equals the sorted generic answer."""
    rng = random.Random(seed)
    store = EmailStore()
    counter = iter(range(1_000_000))
    now = T0
    pool = [random_filter(rng, store, T0 + 20.0) for _ in range(6)]  # reused, so views live on
    indexed = 0
    for _ in range(500):
        step = rng.random()
        if step < 0.05:
            now -= rng.uniform(0.1, 3.0)
        elif step < 0.25:
            pass  # the same clock reading again
        else:
            now += rng.choice([0.01, 0.05, 0.1, 0.3, 1.0, 2.5])
        action = rng.random()
        if action < 0.45:
            create_random(rng, store, now, counter)
        elif action < 0.55 and len(store):
            store.cancel(rng.randrange(len(store)), now)
        else:
            flt = rng.choice(pool) if rng.random() < 0.7 else random_filter(rng, store, now)
            order_by = rng.choice(["updated_at_desc"] * 4 + ["updated_at_asc"] * 2 + sorted(ORDER_BY_VALUES))
            expected = generic(store, flt, order_by, now)
            limit = rng.choice([1, 2, 3, 5, 10, 50])
            offset = rng.choice([0, 0, rng.randrange(len(expected) + 2)])
            total, page = store.list_page(flt, order_by, now, offset, limit)
            assert (total, page) == (len(expected), expected[offset : offset + limit])
            # Every page of the same query, as a client paging through would ask.
            pages: list[int] = []
            for start in range(0, len(expected) + limit, limit):
                pages += store.list_page(flt, order_by, now, start, limit)[1]
            assert pages == expected
            indexed += flt.statuses is not None and flt.statuses <= FINAL | {"unknown"}
    assert indexed > 20


def test_final_at_is_when_the_status_turns_final_and_the_updated_at_it_shows() -> None:
    """For every outcome and timing, an email is final exactly from final_at on, and shows
    final_at as its updated_at."""
    store = EmailStore()
    counter = iter(range(1_000_000))
    for timing in TIMINGS:
        for local in LOCAL_PARTS:
            for send_before in (None, T0 + 0.15, T0 + 1_000.0):
                address = f"{local}{next(counter)}@example.org"
                send(store, [address], T0 + 0.1, timing, send_before)
    for email in store.emails:
        at = final_at(email)
        if at is None or at == math.inf:
            assert status_at(email, T0 + 1e6) not in FINAL
            continue
        before = math.nextafter(at, -math.inf)
        assert status_at(email, before) not in FINAL
        assert status_at(email, at) in FINAL
        assert view_at(email, at).status == status_at(email, at)
        assert view_at(email, at).updated_at == at
        assert view_at(email, at + 1e5).updated_at == at


def test_a_cancel_stamped_after_now_is_still_listed() -> None:
    """When the clock steps back behind a cancel, the canceled email is still listed, as the
    generic answer lists it."""
    store = EmailStore()
    hold = Timing(hold_s=100.0)
    for i in range(5):
        if i % 2:
            send(store, [f"user{i}@example.org"], T0 + i, Timing())
        else:
            send(store, [f"hold{i}@example.org"], T0 + i, hold)
    flt = EmailFilter(statuses=FINAL)
    assert store.list_page(flt, "updated_at_desc", T0 + 10, 0, 10) == (2, [3, 1])
    assert store.cancel(2, T0 + 50)
    for now in (T0 + 60, T0 + 20):  # after the cancel, then back before it
        expected = generic(store, flt, "updated_at_desc", now)
        assert store.list_page(flt, "updated_at_desc", now, 0, 10) == (3, expected)
        assert expected == [2, 3, 1]


def test_timings_the_index_cannot_rely_on_fall_back_to_the_generic_answer() -> None:
    """A negative duration (only possible by building a Timing directly) makes every list
    filter and sort, with the same answer."""
    store = EmailStore()
    for i, timing in enumerate([Timing(), Timing(0.0, -5.0, 0.0, 0.0), Timing()]):
        send(store, [f"greylist{i}@example.org", f"user{i}@example.org"], T0 + i, timing)
    flt = EmailFilter(statuses=FINAL)
    for now in (T0, T0 + 1, T0 + 2, T0 + 3):
        expected = generic(store, flt, "updated_at_desc", now)
        assert store.list_page(flt, "updated_at_desc", now, 0, 100) == (len(expected), expected)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def clocked_sandbox(clock: FakeClock) -> AsyncIterator[Sandbox]:
    config = SandboxConfig(secret_key=SECRET, project_id=PROJECT, final_after_s=0.2, hold_s=2.0, seed=3)
    async with Sandbox(config, clock=clock) as sb:
        yield sb


async def test_tracker_query_over_http_pages_like_the_generic_answer(
    clocked_sandbox: Sandbox, clock: FakeClock
) -> None:
    """The tracker's poll (final statuses since the start, one sender, updated_at_desc) answers
    over HTTP what the generic path computes, page after page, as emails turn final or canceled."""
    sb = clocked_sandbox
    headers = {"X-Auth-Token": SECRET}
    rng = random.Random(11)
    since = format_timestamp(T0)
    ids: list[str] = []
    async with aiohttp.ClientSession(headers=headers) as http:

        async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
            async with http.request(method, sb.url + PREFIX + path, **kwargs) as r:
                return r.status, orjson.loads(await r.read())

        for round_ in range(12):
            for i in range(15):
                local = rng.choice(["user", "user", "hold", "bounce", "softbounce", "stuck"])
                body = {
                    "from": {"email": rng.choice(["news@example.com", "other@example.com"])},
                    "to": [{"email": f"{local}{round_}-{i}@example.org"}],
                    "subject": "Hi",
                    "text": "Hi",
                    "project_id": PROJECT,
                }
                status, data = await call("POST", "/emails", json=body)
                assert status == 200, data
                ids.append(data["emails"][0]["id"])
                clock.advance(rng.choice([0.0, 0.05, 0.1]))
            for email_id in rng.sample(ids, 3):
                await call("POST", f"/emails/{email_id}/cancel", json={})  # 412 once past `new`
            clock.advance(0.3)
            params = [
                ("project_id", PROJECT),
                ("since", since),
                ("mail_from", "news@example.com"),
                ("statuses", "canceled"),
                ("statuses", "failed"),
                ("statuses", "sent"),
                ("order_by", "updated_at_desc"),
                ("page_size", "7"),
            ]
            got: list[str] = []
            page = 1
            while True:
                status, data = await call("GET", "/emails", params=[*params, ("page", str(page))])
                assert status == 200, data
                got += [e["id"] for e in data["emails"]]
                if len(data["emails"]) < 7:
                    break
                page += 1
            store = sb.store
            flt = EmailFilter(project_id=PROJECT, since=T0, mail_from="news@example.com", statuses=FINAL)
            expected = generic(store, flt, "updated_at_desc", clock.now)
            assert data["total_count"] == len(expected)
            assert got == [store.email_id(p) for p in expected]
