"""The send engine (bulksend.pipeline.engine) against the sandbox: lanes, resends, stopping.

Every wait is on the engine itself (leaving ``running()`` waits for its reconciliations).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from bulksend.campaign.render import RenderedEmail, Renderer
from bulksend.errors import TemTransportError
from bulksend.pipeline.context import SendContext
from bulksend.pipeline.dispatch import SendItem, utcnow
from bulksend.pipeline.engine import EngineSettings, SendEngine
from bulksend.pipeline.limiter import AimdLimiter
from bulksend.pipeline.retry import RetryPolicy
from bulksend.pipeline.stats import RunStats
from bulksend.sandbox import Sandbox
from bulksend.store import open_store
from bulksend.store.base import NewRecipient, RowState, Store
from bulksend.tem.client import SentEmail, TemClient
from bulksend.tem.models import Email
from tests.conftest import PROJECT, CampaignWriter, settings_for

CAMPAIGN = "engine-test"


class RecordingSink:
    """An OutcomeSink that keeps what it is told."""

    def __init__(self) -> None:
        self.submitted: list[tuple[int, str]] = []
        self.found: list[tuple[str, int]] = []
        self.outcomes: list[tuple[str, list[tuple[int, str]]]] = []

    def on_submitted(self, item: SendItem, email_id: str) -> None:
        self.submitted.append((item.row_id, email_id))

    async def on_found(self, email: Email, row_id: int) -> None:
        self.found.append((email.id, row_id))

    async def on_outcome(self, campaign_id: str, rows: Sequence[tuple[int, str]]) -> None:
        self.outcomes.append((campaign_id, list(rows)))


class TimingOutSends(TemClient):
    """The real client, except that its first ``failures`` sends time out after writing the
    request: ambiguous answers, reproducible, that touch no other endpoint."""

    def __init__(self, *args: Any, failures: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures
        self.attempts = 0

    async def submit(self, body: bytes) -> list[SentEmail]:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TemTransportError("TEM did not answer in time (read timeout)", sent=True)
        return await super().submit(body)


@asynccontextmanager
async def engine_for(
    sandbox: Sandbox, *, should_stop: Callable[[], bool] = lambda: False, failures: int = 0
) -> AsyncIterator[tuple[SendEngine, Store, RecordingSink, AimdLimiter, list[int]]]:
    """An engine over a memory store and the sandbox; also its sink, default limiter and the row
    ids it reported done."""
    store = open_store("memory:")
    await store.open()
    await store.create_campaign(CAMPAIGN, {})
    limiter = AimdLimiter(1000)
    sink = RecordingSink()
    done: list[int] = []
    async with TimingOutSends(settings_for(sandbox), timeout_s=5, failures=failures) as tem:
        retry = RetryPolicy(max_attempts=3, max_elapsed_s=30, initial_backoff_s=0.01, max_backoff_s=0.05)
        engine = SendEngine(
            context=SendContext(store, tem, limiter, RunStats(), retry),
            sink=sink,
            settings=EngineSettings(settle_s=0.05, timeout_s=5, mail_from="news@example.com"),
            should_stop=should_stop,
            on_done=done.append,
        )
        yield engine, store, sink, limiter, done
    await store.close()


async def admit(store: Store, renderer: Renderer, addresses: Sequence[str], lane: str = "") -> list[SendItem]:
    """Admit one pending row per address (after the rows already admitted) and build its item."""
    first = await store.max_admitted_row(CAMPAIGN) + 1
    by_row = {first + i: a for i, a in enumerate(addresses)}
    rows = [NewRecipient(row, a, key=a) for row, a in by_row.items()]
    items = []
    for res in await store.admit(CAMPAIGN, rows):
        correlation = f"{CAMPAIGN}/{res.row}"
        email = renderer.render(by_row[res.row], "", {}, correlation=correlation)
        assert isinstance(email, RenderedEmail)
        items.append(
            SendItem(
                res.id,
                res.row,
                by_row[res.row],
                email.subject,
                email.body,
                correlation,
                CAMPAIGN,
                "news@example.com",
                lane=lane,
            )
        )
    return items


@pytest.fixture
def renderer(write_campaign: CampaignWriter) -> Renderer:
    return Renderer(write_campaign([{"email": "x@example.com"}]), project_id=PROJECT)


async def test_a_resend_that_is_ambiguous_again_is_reconciled_again(
    sandbox: Sandbox, renderer: Renderer
) -> None:
    """A send that fails ambiguously is reconciled, resent through the engine (its lane), fails
    again while the engine drains, and is reconciled again: in the end TEM holds exactly one email
    and the row is submitted."""
    async with engine_for(sandbox, failures=2) as (engine, store, sink, limiter, done):
        lane = AimdLimiter(1000)
        engine.add_lane("stream-a", lane)
        (item,) = await admit(store, renderer, ["ann@example.com"], lane="stream-a")
        with anyio.fail_after(60):
            async with engine.running():
                await engine.send(item)  # ambiguous: handed to the reconciler
            # Leaving `running()` waited for the reconciliations and their resends.
        row = await store.get_row(item.row_id)
        assert row is not None
        assert row.state is RowState.SUBMITTED
    assert sandbox.stats().accepted_by_recipient == {"ann@example.com": 1}
    assert [row_id for row_id, _ in sink.submitted] == [item.row_id]
    assert lane.stats.acquired_by_kind.get("send") == 3  # the first send and both resends
    assert limiter.stats.acquired_by_kind.get("send", 0) == 0
    assert limiter.stats.acquired_by_kind.get("list", 0) >= 2  # the lookups
    assert item.row_id in done


async def test_items_go_through_their_lane_and_unknown_lanes_through_the_default(
    sandbox: Sandbox, renderer: Renderer
) -> None:
    """Workers send each queued item through the limiter of its lane; an item naming no lane, or a
    lane the engine does not have, goes through the default limiter."""
    async with engine_for(sandbox) as (engine, store, sink, limiter, done):
        lane = AimdLimiter(1000)
        engine.add_lane("stream-a", lane)
        items = await admit(store, renderer, ["a1@example.com", "a2@example.com"], lane="stream-a")
        items += await admit(store, renderer, ["b1@example.com"], lane="gone")
        items += await admit(store, renderer, ["c1@example.com", "c2@example.com", "c3@example.com"])
        send, receive = anyio.create_memory_object_stream[SendItem](max_buffer_size=10)
        async with engine.running(), anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(engine.work, receive.clone())
            receive.close()
            async with send:
                for item in items:
                    await send.send(item)
    assert lane.stats.acquired_by_kind.get("send") == 2
    assert limiter.stats.acquired_by_kind.get("send") == 4
    assert sorted(done) == sorted(i.row_id for i in items)
    assert len(sink.submitted) == 6


async def test_a_stopped_engine_sends_nothing_more(sandbox: Sandbox, renderer: Renderer) -> None:
    """Once ``should_stop`` holds, workers leave queued items ``pending`` (durable, for the next
    run) and a resend after reconciliation sends nothing."""
    async with engine_for(sandbox, should_stop=lambda: True) as (engine, store, sink, _limiter, _done):
        items = await admit(store, renderer, ["ann@example.com", "bob@example.com"])
        send, receive = anyio.create_memory_object_stream[SendItem](max_buffer_size=10)
        async with engine.running():
            async with send:
                await send.send(items[0])
            await engine.work(receive)
            assert await engine.resend(items[1]) is False
        for item in items:
            row = await store.get_row(item.row_id)
            assert row is not None
            assert row.state is RowState.PENDING
    assert sandbox.stats().requests.get("send", 0) == 0
    assert sink.submitted == []


async def test_a_stop_while_the_row_is_marked_sending_sends_nothing(
    sandbox: Sandbox, renderer: Renderer
) -> None:
    """A pause that lands while a task writes its row `sending` (after the task's last look at
    ``should_stop``) still sends nothing: the row goes back to `pending` for the next run."""
    stopped = False
    async with engine_for(sandbox, should_stop=lambda: stopped) as (engine, store, sink, _limiter, _done):
        (item,) = await admit(store, renderer, ["ann@example.com"])
        mark_sending = store.mark_sending

        async def mark_then_stop(*args: Any, **kwargs: Any) -> None:
            nonlocal stopped
            await mark_sending(*args, **kwargs)
            stopped = True  # the pause answered while this write was on its way

        store.mark_sending = mark_then_stop  # type: ignore[method-assign]
        async with engine.running():
            assert await engine.resend(item) is False
        row = await store.get_row(item.row_id)
    assert row is not None
    assert row.state is RowState.PENDING
    assert sandbox.stats().requests.get("send", 0) == 0
    assert sink.submitted == []


async def test_reconcile_outside_running_is_refused(sandbox: Sandbox, renderer: Renderer) -> None:
    """Handing a row to reconciliation when no ``running()`` hosts it is a programming error,
    said at once rather than lost."""
    async with engine_for(sandbox) as (engine, store, _sink, _limiter, _done):
        (item,) = await admit(store, renderer, ["ann@example.com"])
        with pytest.raises(RuntimeError, match="running"):
            await engine.reconcile(item, utcnow(), None)
