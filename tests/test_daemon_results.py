"""Job results on each real broker: held while the results broker refuses them, published in the
background once it takes them again (no restart), with the backlog in /metrics and /readyz."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import structlog
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from bulksend.clock import FakeClock
from bulksend.daemon.config import load_daemon_config
from bulksend.daemon.results import ResultBacklog, result_id, result_message
from bulksend.daemon.service import Daemon
from bulksend.jobs.intake import job_campaign_id, job_row
from bulksend.metrics import Metrics
from bulksend.sandbox import Sandbox
from bulksend.store.base import RecipientRow, RowState
from tests.conftest import settings_for
from tests.test_daemon import job, running, write_config
from tests.test_daemon_brokers import Broker, NatsBroker, RabbitBroker, RedisBroker, SqsBroker, broker

__all__ = ["broker"]  # the broker fixture (one test per real broker), used here


@pytest.fixture(autouse=True)
def _plain_logging() -> None:
    """Log through structlog's defaults (a CLI test may have left it on a closed stream)."""
    structlog.reset_defaults()


class BacklogWatch:
    """Follows the daemon's results backlog gauge so a test can wait for a value."""

    def __init__(self, daemon: Daemon) -> None:
        self.values: list[int] = []
        self._changed = anyio.Event()
        setter = daemon.metrics.set_results_backlog

        def observed(n: int) -> None:
            setter(n)
            self.values.append(n)
            self._changed.set()
            self._changed = anyio.Event()

        daemon.metrics.set_results_backlog = observed  # type: ignore[method-assign]

    async def wait_for(self, n: int, timeout_s: float = 20) -> None:
        """Return once the backlog is ``n``."""
        with anyio.fail_after(timeout_s):
            while not self.values or self.values[-1] != n:
                await self._changed.wait()


async def readyz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    """The daemon's /readyz status and body."""
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.admin_url}/readyz") as response:
        return response.status, await response.json()


async def refuse_results(broker: Broker) -> None:
    """Make the broker refuse every result until :func:`take_results` (it stays up for the jobs)."""
    if isinstance(broker, RedisBroker):
        # A key of the wrong type: every XADD to the results stream fails (WRONGTYPE).
        await broker._client.set(broker.results_stream, b"not a stream")
    elif isinstance(broker, RabbitBroker):
        # No queue behind the routing key: a mandatory publish comes back unroutable.
        await broker.channel.queue_delete(broker.results_queue)
    elif isinstance(broker, NatsBroker):
        # No stream captures the subject any more: a JetStream publish gets no answer.
        await broker.js.delete_stream(broker.results_stream)
    elif isinstance(broker, SqsBroker):
        # No queue at the URL any more: SendMessageBatch answers that it does not exist.
        await broker.admin.delete_queue(QueueUrl=await broker.queue_url(broker.results_queue))


async def take_results(broker: Broker) -> None:
    """Undo :func:`refuse_results`: the broker takes results again."""
    if isinstance(broker, RedisBroker):
        await broker._client.delete(broker.results_stream)
    elif isinstance(broker, RabbitBroker):
        broker._results = await broker.channel.declare_queue(broker.results_queue, durable=True)
    elif isinstance(broker, NatsBroker):
        await broker.js.add_stream(name=broker.results_stream, subjects=[broker.results_subject])
        broker._results = await broker.js.pull_subscribe(broker.results_subject, durable="reader")
    elif isinstance(broker, SqsBroker):
        await broker.admin.create_queue(QueueName=broker.results_queue)


async def test_held_results_go_out_when_the_broker_is_back(
    tmp_path: Path, sandbox: Sandbox, broker: Broker
) -> None:
    """Results the results broker refused are held (backlog in /metrics and /readyz), then
    published by the running daemon once the broker takes them again, each with its stable
    result_id, and none is left due for a restart."""
    path = write_config(tmp_path, sources=[broker.source_config()], results=broker.results_config())
    daemon = Daemon(load_daemon_config(path), settings_for(sandbox))
    watch = BacklogWatch(daemon)
    tag = uuid.uuid4().hex[:8]
    keys = {f"held-{tag}-{i}": f"held{i}.{tag}@example.com" for i in range(5)}
    with anyio.fail_after(60):
        async with running(daemon):
            await refuse_results(broker)
            await broker.publish([job(k, a) for k, a in keys.items()])
            await watch.wait_for(len(keys))
            status, body = await readyz(daemon)
            assert status == 200, body
            assert body["details"] == {"results_backlog": len(keys)}
            assert body["checks"]["results_backlog"] is True
            daemon.results_backlog_unready = 2
            status, body = await readyz(daemon)
            assert (status, body["failing"]) == (503, ["results_backlog"])
            daemon.results_backlog_unready = 10_000
            await take_results(broker)
            await broker.read_results(set(keys), timeout_s=30)
            await watch.wait_for(0)
            journal = await daemon.store.counts(f"results:{job_campaign_id('welcome')}")
            samples = {
                name: daemon.metrics.registry.get_sample_value(f"bulksend_results_{name}")
                for name in ("published_messages_total", "failed_messages_total", "backlog_messages")
            }
    assert journal.get(RowState.PENDING.value, 0) == 0  # nothing left due for a restart
    assert samples["published_messages_total"] == len(keys)
    assert (samples["failed_messages_total"] or 0) >= 1
    assert samples["backlog_messages"] == 0
    assert sorted(r["idempotency_key"] for r in broker.results) == sorted(keys)
    for result in broker.results:
        row = job_row(result["idempotency_key"])
        assert result["result_id"] == result_id(job_campaign_id("welcome"), row, result["status"])


def test_result_id_is_stable_per_job_and_status() -> None:
    """The same job and status always give the same result_id; another job or status another one."""
    row = RecipientRow(
        id=7,
        campaign_id="jobs.welcome",
        row=12345,
        email="ann@example.com",
        name="",
        key="order-1",
        state=RowState.FINAL,
        payload={"idempotency_key": "order-1", "template": "welcome"},
        status="sent",
    )
    first = result_message(row, "jobs.welcome", unfinished="x")
    again = result_message(row, "jobs.welcome", unfinished="x")
    assert first["result_id"] == again["result_id"] == result_id("jobs.welcome", 12345, first["status"])
    assert len({first["result_id"], result_id("jobs.welcome", 12346, first["status"])}) == 2
    assert result_id("jobs.welcome", 12345, "sent") != result_id("jobs.welcome", 12345, "failed")
    assert first["idempotency_key"] == "order-1"


async def test_backlog_backs_off_and_keeps_the_order() -> None:
    """Held results are retried after 0.5 s, then with the wait doubling up to 5 s, and go out in
    the order they became due, those held meanwhile behind the first ones."""
    clock = FakeClock(autojump=True)
    metrics = Metrics(process_metrics=False)
    calls: list[tuple[float, str, list[int]]] = []
    published: list[tuple[str, list[int]]] = []
    backlog: ResultBacklog

    async def publish(campaign_id: str, rows: Sequence[int]) -> list[int]:
        calls.append((clock.now, campaign_id, list(rows)))
        if len(calls) == 2:
            backlog.hold("jobs.b", [9])  # a result that became due while the broker was away
        if len(calls) <= 5:
            return list(rows)  # refused: everything is still held
        published.append((campaign_id, list(rows)))
        return []

    backlog = ResultBacklog(publish, metrics, clock=clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(backlog.run)
            await anyio.wait_all_tasks_blocked()  # run() waits for something to be held
            backlog.hold("jobs.a", [1, 2])
            assert backlog.active
            while backlog.active:
                await clock.sleep(1)
            backlog.stop()
    assert [t for t, _, _ in calls] == [0.5, 1.0, 2.0, 4.0, 8.0, 13.0, 13.0]
    assert published == [("jobs.a", [1, 2]), ("jobs.b", [9])]
    assert backlog.attempts == 6
    assert metrics.registry.get_sample_value("bulksend_results_backlog_messages") == 0


class CuttableProxy:
    """A TCP proxy to Redis on loopback that can cut every connection and refuse new ones, as a
    results broker that goes away and comes back looks to the daemon."""

    def __init__(self, target_port: int = 6379) -> None:
        self.target_port = target_port
        self.port = 0
        self.up = True
        self._scopes: set[anyio.CancelScope] = set()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen on a free port until cancelled."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = listener.extra(SocketAttribute.local_port)
        task_status.started()
        # serve() leaves the listening socket open when cancelled.
        async with listener:
            await listener.serve(self._handle)

    def go_away(self) -> None:
        """Drop every open connection; new ones are closed at once."""
        self.up = False
        for scope in self._scopes:
            scope.cancel()

    def come_back(self) -> None:
        """Accept and forward connections again."""
        self.up = True

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            if not self.up:
                return
            with anyio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    async with (
                        await anyio.connect_tcp("127.0.0.1", self.target_port) as upstream,
                        anyio.create_task_group() as tg,
                    ):
                        tg.start_soon(self._pipe, client, upstream)
                        tg.start_soon(self._pipe, upstream, client)
                finally:
                    self._scopes.discard(scope)

    @staticmethod
    async def _pipe(source: SocketStream, sink: SocketStream) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            async for chunk in source:
                await sink.send(chunk)
        # One side ended: end the connection both ways.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await sink.send_eof()


@pytest.mark.services
async def test_results_broker_away_then_back_without_restart(tmp_path: Path, sandbox: Sandbox) -> None:
    """The Redis that takes results goes away (connections cut, new ones refused): outcomes are
    held and /readyz names the results destination; once it is back, the running daemon publishes
    every held result and is ready again."""
    broker = RedisBroker()
    await broker.open()
    proxy = CuttableProxy()
    tag = uuid.uuid4().hex[:8]
    keys = {f"away-{tag}-{i}": f"away{i}.{tag}@example.com" for i in range(20)}
    try:
        async with anyio.create_task_group() as proxy_tg:
            await proxy_tg.start(proxy.serve)
            results = {**broker.results_config(), "url": f"redis://127.0.0.1:{proxy.port}/0"}
            path = write_config(tmp_path, sources=[broker.source_config()], results=results)
            daemon = Daemon(load_daemon_config(path), settings_for(sandbox))
            watch = BacklogWatch(daemon)
            with anyio.fail_after(60):
                async with running(daemon):
                    proxy.go_away()
                    await broker.publish([job(k, a) for k, a in keys.items()])
                    await watch.wait_for(len(keys))
                    status, body = await readyz(daemon)
                    assert status == 503, body
                    assert f"results:{daemon.publisher.name}" in body["failing"]  # type: ignore[union-attr]
                    assert body["details"] == {"results_backlog": len(keys)}
                    proxy.come_back()
                    await broker.read_results(set(keys), timeout_s=30)
                    await watch.wait_for(0)
                    status, body = await readyz(daemon)
            proxy_tg.cancel_scope.cancel()
        assert status == 200, body
        assert sorted(r["idempotency_key"] for r in broker.results) == sorted(keys)
    finally:
        await broker.close()
