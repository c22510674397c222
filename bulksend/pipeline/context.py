"""What every stage of a send works with, handed on as one value.

Dispatch, reconciliation, tracking and a canceled campaign's settling all use the same store, TEM
client, limiter, run counters and retry policy. The engine or the campaign run builds one
:class:`SendContext` and passes it on; a lane with a limiter of its own gets a copy with that
limiter (:func:`dataclasses.replace`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import anyio

from bulksend.pipeline.limiter import RateLimiter
from bulksend.pipeline.paced import paced_call
from bulksend.pipeline.retry import RetryPolicy
from bulksend.pipeline.stats import RunStats
from bulksend.store.base import Store
from bulksend.tem.client import TemClient
from bulksend.tem.models import ListEmailsPage, ListEmailsQuery

__all__ = ["LIST_PAGE_SIZE", "SendContext"]

LIST_PAGE_SIZE = 1000
"""Emails per list call when every page is read (TEM's largest page)."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SendContext:
    """The store, TEM client, limiter, counters and retry policy of one send pipeline."""

    store: Store
    tem: TemClient
    limiter: RateLimiter
    stats: RunStats
    retry: RetryPolicy
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    """How the stages wait: between attempts, for a settle time, between polls."""

    async def paced(self, kind: str, fn: Callable[[], Awaitable[_T]]) -> _T:
        """Make one API call of ``kind`` through the limiter, retrying transient errors."""
        return await paced_call(self.limiter, self.retry, kind, fn, sleep=self.sleep)

    async def list_pages(self, query: ListEmailsQuery) -> AsyncIterator[ListEmailsPage]:
        """Every page of ``GET /emails`` for ``query``, :data:`LIST_PAGE_SIZE` emails a page."""
        page = 1
        while True:
            call = partial(self.tem.list_emails, query, page=page, page_size=LIST_PAGE_SIZE)
            result = await self.paced("list", call)
            yield result
            if len(result.emails) < LIST_PAGE_SIZE:
                return
            page += 1
