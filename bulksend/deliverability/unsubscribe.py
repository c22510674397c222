"""``/u/{token}``: the public one-click unsubscribe endpoint of ``bulksend serve`` (RFC 8058).

``POST /u/{token}`` (what a mail client sends, body ``List-Unsubscribe=One-Click``, no cookies, no
authentication) records the unsubscribe in the suppression list and answers 200, never a
redirect. ``GET /u/{token}`` only shows a page with a button that makes that POST: link scanners
and previews fetch links, and must not unsubscribe anyone.

A token that is malformed, forged, tampered with, expired or for another project gets the same
404 and the same body, whatever the reason. Requests are bounded: the path by the token's length,
the body to :data:`MAX_BODY_BYTES`, and their rate by a token bucket (429 beyond). Only ``/u/``
should be exposed to the Internet, behind a reverse proxy; the admin API stays private
(docs/deliverability.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Final

import structlog
from aiohttp import web

from bulksend.deliverability.tokens import BadToken, UnsubscribeSigner
from bulksend.errors import BulksendError
from bulksend.suppression import SuppressionEntry, SuppressionReason, SuppressionSource, SuppressionStore

__all__ = [
    "MAX_BODY_BYTES",
    "ROUTE_NAMES",
    "RateLimit",
    "UnsubscribeEndpoint",
]

log = structlog.get_logger("bulksend.unsubscribe")

MAX_BODY_BYTES: Final = 1024
"""Largest POST body read (RFC 8058's is 26 bytes)."""
ROUTE_NAMES: Final = frozenset({"unsubscribe.page", "unsubscribe.post"})
"""The names of the two routes, which need no admin token."""
_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}
_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title><style>body{{font:16px/1.5 sans-serif;max-width:32em;margin:3em auto;padding:0 1em}}
button{{font-size:1em;padding:.5em 1.2em}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""
_INVALID: Final = _PAGE.format(
    title="Link not valid", body="<p>This unsubscribe link is not valid. Use the link of a recent email.</p>"
)
_BUSY: Final = _PAGE.format(title="Please try again", body="<p>Too many requests; try again in a minute.</p>")


@dataclass
class RateLimit:
    """A token bucket over every request to ``/u/`` (requests per second, burst).

    One bucket for everyone, not one per client address: one-click POSTs come from the mailbox
    providers' servers, many recipients from one address, and behind a reverse proxy every
    request comes from the proxy. The bucket bounds the load a flood can put on the store.
    """

    per_s: float = 100.0
    burst: float = 1000.0
    clock: Callable[[], float] = time.monotonic
    _tokens: float = field(default=-1.0, init=False)
    _at: float = field(default=0.0, init=False)

    def allow(self) -> bool:
        """True when one more request may be served now."""
        now = self.clock()
        if self._tokens < 0:
            self._tokens, self._at = self.burst, now
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.per_s)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


@dataclass
class UnsubscribeEndpoint:
    """Serves ``/u/{token}`` for one project, recording unsubscribes in ``store``."""

    signer: UnsubscribeSigner
    store: SuppressionStore
    project_id: str
    max_age_s: float | None = None
    """Links older than this are refused; None: they never expire."""
    limit: RateLimit = field(default_factory=RateLimit)

    def add_routes(self, app: web.Application) -> None:
        """Add ``GET`` and ``POST /u/{token}`` to ``app`` (named as in :data:`ROUTE_NAMES`)."""
        app.router.add_get("/u/{token}", self.page, name="unsubscribe.page", allow_head=False)
        app.router.add_post("/u/{token}", self.unsubscribe, name="unsubscribe.post")

    def _verified(self, request: web.Request) -> tuple[str, str] | web.Response:
        """(address, campaign) of the request's token, or the answer to give instead."""
        if not self.limit.allow():
            return _html(_BUSY, 429, {"Retry-After": "60"})
        try:
            found = self.signer.verify(request.match_info["token"], max_age_s=self.max_age_s)
        except BadToken:
            found = None
        if found is None or found.project_id != self.project_id.lower():
            log.info("unsubscribe.refused")
            return _html(_INVALID, 404)
        return found.address, found.campaign_id

    async def page(self, request: web.Request) -> web.Response:
        """The confirmation page: a button that POSTs; nothing is recorded."""
        verified = self._verified(request)
        if isinstance(verified, web.Response):
            return verified
        address, _ = verified
        body = (
            f"<p>Stop sending emails to <strong>{escape(address)}</strong>?</p>"
            '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return _html(_PAGE.format(title="Unsubscribe", body=body), 200)

    async def unsubscribe(self, request: web.Request) -> web.Response:
        """Record the unsubscribe (RFC 8058 one-click, or the page's button); 200, no redirect."""
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _html(_INVALID, 413)
        verified = self._verified(request)
        if isinstance(verified, web.Response):
            return verified
        # Read (and drop) what the client sends, within the bound; the token alone decides.
        await request.content.read(MAX_BODY_BYTES)
        address, campaign = verified
        entry = SuppressionEntry(
            address,
            SuppressionReason.UNSUBSCRIBE,
            SuppressionSource.UNSUBSCRIBE,
            since=datetime.now(UTC),
            origin=f"unsubscribe link of {campaign}",
        )
        try:
            await self.store.suppress(self.project_id, [entry])
        except BulksendError:
            log.exception("unsubscribe.store_failed", campaign=campaign)
            return _html(_BUSY, 503, {"Retry-After": "60"})
        log.info("unsubscribe.recorded", campaign=campaign)
        body = f"<p><strong>{escape(address)}</strong> will get no more emails from us.</p>"
        return _html(_PAGE.format(title="You are unsubscribed", body=body), 200)


def _html(text: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={**_HEADERS, **(headers or {})},
    )
