"""A bare ``GET /metrics`` endpoint for ``bulksend send --worker --metrics-port``.

The daemon serves its metrics from the admin API; a worker has no API, so this is the smallest
server that exposes the same :class:`~bulksend.metrics.Metrics` series: no token (bind it to a
private interface), nothing but ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import structlog
from aiohttp import web
from anyio.abc import TaskStatus

from bulksend.metrics import Metrics

__all__ = ["serve_metrics"]

log = structlog.get_logger("bulksend.metrics")


async def serve_metrics(
    metrics: Metrics,
    *,
    host: str,
    port: int,
    refresh: Callable[[], None] | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``metrics`` on ``host:port`` until cancelled; reports the bound port (``port`` 0 picks
    a free one) through ``task_status`` and the ``metrics.listening`` log event.

    ``refresh`` runs before each scrape, to copy gauges whose values live elsewhere.
    """

    async def handle(request: web.Request) -> web.Response:
        if refresh is not None:
            refresh()
        body, content_type = metrics.render(request.headers.get("Accept", ""))
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        addresses = runner.addresses
        bound = int(addresses[0][1]) if addresses else port
        log.info("metrics.listening", host=host, port=bound)
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
