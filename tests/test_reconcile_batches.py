"""Ambiguous sends are reconciled in batches: one listing answers many rows."""

from __future__ import annotations

from datetime import timedelta

import anyio
import orjson

from bulksend.clock import FakeClock
from bulksend.pipeline.context import SendContext
from bulksend.pipeline.dispatch import SendItem, utcnow
from bulksend.pipeline.flow import FlowLimiter, RetryBudget
from bulksend.pipeline.limiter import AimdLimiter
from bulksend.pipeline.reconcile import Reconciler, ReconcileSettings
from bulksend.pipeline.retry import RetryPolicy
from bulksend.pipeline.stats import RunStats
from bulksend.sandbox import Sandbox
from bulksend.store import NewRecipient, RowState
from bulksend.store.memory import MemoryStore
from bulksend.tem.client import TemClient
from bulksend.tem.models import Email
from tests.conftest import PROJECT, settings_for

SENDER = "news@example.com"


def body(rcpt: str, subject: str) -> bytes:
    return orjson.dumps(
        {
            "from": {"email": SENDER},
            "to": [{"email": rcpt}],
            "subject": subject,
            "text": "hello",
            "project_id": PROJECT,
        }
    )


async def test_one_listing_answers_every_ambiguous_row_of_a_batch(sandbox: Sandbox) -> None:
    """60 ambiguous rows, half of which TEM created, are settled by one GET /emails: the created ones
    adopt their email, the others go back to pending and are sent again, each resend spending a
    retry token; an email of the same recipient with another subject is not taken for the row's."""
    store = MemoryStore()
    await store.open()
    await store.create_campaign("c", {})
    admitted = await store.admit(
        "c", [NewRecipient(row=i, email=f"u{i}@example.org", key=f"u{i}@example.org") for i in range(60)]
    )
    started = utcnow() - timedelta(seconds=1)
    stats = RunStats()
    resent: list[int] = []
    clock = FakeClock()
    limiter = FlowLimiter(AimdLimiter(1000.0, burst=10), budget=RetryBudget(clock=clock), clock=clock)

    async def resend(item: SendItem) -> bool:
        resent.append(item.row)
        return True

    async def on_final(email: Email, row_id: int) -> None:
        return None

    async with TemClient(settings_for(sandbox)) as tem:
        for res in admitted:
            await store.mark_sending(res.id, started_at=started, correlation=f"c/{res.row}")
            if res.row % 2 == 0:
                await tem.send_email_raw(body(f"u{res.row}@example.org", "Hello"))
            elif res.row % 3 == 0:
                await tem.send_email_raw(body(f"u{res.row}@example.org", "Another subject"))
        ended = utcnow()
        lists_before = sandbox.stats().requests["list"]
        async with anyio.create_task_group() as tg:
            reconciler = Reconciler(
                SendContext(store, tem, limiter, stats, RetryPolicy(max_attempts=2)),
                ReconcileSettings(settle_s=0.0, timeout_s=5.0, skew_s=1.0, mail_from=SENDER),
                task_group=tg,
                resend=resend,
                on_final=on_final,
                batch_window_s=0.0,
            )
            for res in admitted:
                item = SendItem(
                    row_id=res.id,
                    row=res.row,
                    email=f"u{res.row}@example.org",
                    subject="Hello",
                    body=b"",
                    correlation=f"c/{res.row}",
                    mail_from=SENDER,
                )
                await reconciler.submit(item, started, ended)
    assert reconciler.pending == 0
    assert reconciler.list_calls == 1
    assert sandbox.stats().requests["list"] - lists_before == 1
    assert stats.reconciled_adopted == 30
    assert stats.reconciled_resent == 30
    assert sorted(resent) == list(range(1, 60, 2))
    assert limiter.budget.spent == 30
    states = {row.row: row.state async for row in store.iter_rows("c")}
    assert {states[r] for r in range(0, 60, 2)} == {RowState.SUBMITTED}
    assert {states[r] for r in range(1, 60, 2)} == {RowState.PENDING}
    await store.close()
