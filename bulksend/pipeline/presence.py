"""A worker's presence on a shared store: registered while it runs, heartbeats with its counters,
and the reaping of dead workers' rows by the live ones.

While a worker runs it holds a PostgreSQL session lock of its own (``PostgresStore.register_worker``).
Every ``interval_s`` each worker records a heartbeat (with its counters, so that a killed worker's
throttled requests are not forgotten) and probes the locks of the other workers recorded running:
a free lock means a dead worker, whose claimed rows go back to ``pending`` at once and whose
``sending`` rows are handed to reconciliation at once, instead of after ``lease_s``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, runtime_checkable

import anyio
import structlog

from bulksend import __version__
from bulksend.errors import StoreError
from bulksend.pipeline.stats import RunStats

__all__ = ["DEFAULT_HEARTBEAT_S", "WorkerRegistry", "worker_counters", "worker_presence"]

log = structlog.get_logger("bulksend.workers")

DEFAULT_HEARTBEAT_S = 1.0
"""How often a worker heartbeats and looks for dead workers: a kill costs about this long."""


@runtime_checkable
class WorkerRegistry(Protocol):
    """What a store needs for worker presence (PostgreSQL; the single-process stores have none)."""

    async def register_worker(
        self, worker_id: str, *, campaign_id: str = "", info: dict[str, Any] | None = None
    ) -> Any: ...

    async def heartbeat_worker(self, worker_id: str, *, stats: dict[str, Any] | None = None) -> None: ...

    async def unregister_worker(self, worker_id: str, *, stats: dict[str, Any] | None = None) -> None: ...

    async def reap_dead_workers(self, *, exclude: Any = ()) -> list[Any]: ...


def worker_counters(stats: RunStats) -> dict[str, Any]:
    """The counters a worker reports with each heartbeat (kept in the store after it dies)."""
    return {
        "submitted": stats.submitted_this_run,
        "throttled": stats.throttled,
        "api_calls": stats.calls(),
        "in_flight": stats.in_flight,
        "reconciled_adopted": stats.reconciled_adopted,
        "reconciled_resent": stats.reconciled_resent,
    }


@asynccontextmanager
async def worker_presence(
    store: object,
    *,
    worker_id: str | None,
    campaign_id: str,
    stats: RunStats,
    interval_s: float = DEFAULT_HEARTBEAT_S,
) -> AsyncIterator[None]:
    """Register ``worker_id`` for the duration of the block, heartbeat and reap dead workers.

    Does nothing without a worker id or with a store that keeps no workers.
    """
    if worker_id is None or not isinstance(store, WorkerRegistry):
        yield
        return
    info = {"host": socket.gethostname(), "pid": os.getpid(), "version": __version__}
    reaped = await store.register_worker(worker_id, campaign_id=campaign_id, info=info)
    if reaped is not None:
        log.info("worker.recovered", worker=worker_id, released=reaped.released, reconcile=reaped.expired)

    async def beat() -> None:
        failing = False
        while True:
            try:
                await store.heartbeat_worker(worker_id, stats=worker_counters(stats))
                for dead in await store.reap_dead_workers():
                    log.warning(
                        "worker.dead",
                        worker=dead.worker_id,
                        released=dead.released,
                        reconcile=dead.expired,
                    )
            except StoreError as exc:
                # The store is unreachable: the sends stop by themselves (no `sending` mark can be
                # written); keep trying, the next beat re-takes the lock if the connection dropped.
                # One line per outage, not one per second.
                if not failing:
                    log.warning("worker.heartbeat_failed", worker=worker_id, error=str(exc))
                failing = True
            else:
                if failing:
                    log.info("worker.heartbeat_recovered", worker=worker_id)
                failing = False
            await anyio.sleep(interval_s)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(beat)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            try:
                await store.unregister_worker(worker_id, stats=worker_counters(stats))
            except StoreError as exc:
                log.warning("worker.unregister_failed", worker=worker_id, error=str(exc))
