"""The sandbox server: TEM's email endpoints on aiohttp.web, plus inspection endpoints.

Every TEM request goes through the same gate, in the order a real deployment applies them:
count it → rate limit (the gateway, bare 429) → authentication → region → added latency → fault
draw → the endpoint itself. The endpoints are synchronous code between two awaits, so the store
needs no locking: one event loop owns it.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import dataclasses
import hmac
import ipaddress
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import orjson
from aiohttp import web

from bulksend.campaign.validate import MAX_EMAIL_BYTES
from bulksend.lifecycle import OpenClose
from bulksend.tem.models import EmailFlag, EmailStatus

from .config import DOMAIN_STATUSES, MAX_COUNT, UUID_RE, SandboxConfig, SandboxStats, check_uuid
from .domains import BLOCKLIST_TYPES, DomainBook, SandboxDomain
from .publish import CERT_PATH, CONFIRM_PATH, EventPublisher
from .request import parse_create_email, parse_timestamp
from .state import ORDER_BY_VALUES, EmailFilter, EmailStore, Timing
from .webhooks import Emission, WebhookBook

__all__ = ["API_PREFIX", "REGION", "Sandbox", "is_loopback_host"]

REGION = "fr-par"
API_PREFIX = "/transactional-email/v1alpha1/regions/{region}"
REQUEST_KINDS = (
    "send",
    "get",
    "list",
    "cancel",
    "statistics",
    "webhook",
    "blocklists",
    "domains",
    "consumption",
    "other",
)
FAULT_KINDS = ("5xx_before", "5xx_after", "drop_created", "drop_not_created")
# What the list endpoint accepts as statuses and flags: exactly the values TEM documents.
_STATUSES = frozenset(EmailStatus)
_FLAGS = frozenset(EmailFlag)
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000
MAX_BLOCKLIST_PAGE_SIZE = 100
MAX_BLOCKLIST_EMAILS = 1000
"""Most addresses one ``POST /blocklists`` may carry in the sandbox (TEM documents no limit)."""
_BLOCKLIST_ORDERS = {
    "created_at_asc": (lambda e: e.created_at, False),
    "created_at_desc": (lambda e: e.created_at, True),
    # No end sorts last, as the latest end of all.
    "ends_at_asc": (lambda e: math.inf if e.ends_at is None else e.ends_at, False),
    "ends_at_desc": (lambda e: math.inf if e.ends_at is None else e.ends_at, True),
}

_T = TypeVar("_T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_JSON = "application/json"
_EMIT_POLL_S = 0.25
"""Longest wait of the emitter between two looks at the clock (it may be a test's fake clock)."""
_DELIVERIES = 32
"""Webhook events handed over at once."""
_UNAUTHORIZED = orjson.dumps(
    {
        "message": "authentication is denied",
        "method": "api_key",
        "reason": "invalid_argument",
        "type": "denied_authentication",
    }
)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=_JSON, headers=headers)


def _invalid(errors: list[tuple[str, str]], message: str = "invalid argument(s)") -> web.Response:
    details = [
        {"argument_name": name, "reason": "constraint", "help_message": help_} for name, help_ in errors
    ]
    return _json({"details": details, "message": message, "type": "invalid_arguments"}, 400)


def _not_found(resource: str, resource_id: str) -> web.Response:
    return _json(
        {
            "message": "resource is not found",
            "resource": resource,
            "resource_id": resource_id,
            "type": "not_found",
        },
        404,
    )


def _started(value: _T | None) -> _T:
    """``value``, known only once the sandbox is started."""
    if value is None:
        raise RuntimeError("the sandbox is not started")
    return value


def is_loopback_host(host: str) -> bool:
    """True when ``host`` only listens on the loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Sandbox(OpenClose):
    """A local TEM server. Use ``async with Sandbox(cfg) as sb:`` or ``await sb.start()/stop()``.

    ``clock`` returns seconds (default ``time.time``); it drives every lifecycle decision,
    ``created_at``/``updated_at`` and the rate limiter, so tests can move time by hand.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] | None = None,
        shutdown_timeout_s: float = 1.0,
    ) -> None:
        self._config = config if config is not None else SandboxConfig()
        self._host = host
        self._port = port
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        self._shutdown_timeout_s = shutdown_timeout_s
        self._outage_status = 503
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._emitter: asyncio.Task[None] | None = None
        self._emit_wake = asyncio.Event()
        self._publisher = EventPublisher(lambda: self._config, lambda: self.url, self._clock)
        self._clear()
        self._apply_config(None)

    def __repr__(self) -> str:
        return f"Sandbox(url={self._url_or_none()!r}, emails={len(self._store)})"

    # -- public API -------------------------------------------------------------------------------

    @property
    def config(self) -> SandboxConfig:
        """The current configuration."""
        return self._config

    @property
    def url(self) -> str:
        """The API URL to give clients (``SCW_API_URL``), without a trailing slash."""
        return _started(self._url_or_none())

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return _started(self._bound_port)

    @property
    def store(self) -> EmailStore:
        """The email store (read it from the sandbox's own event loop only)."""
        return self._store

    @property
    def webhooks(self) -> WebhookBook:
        """The webhooks and their event log (read them from the sandbox's own event loop only)."""
        return self._webhooks

    async def emit_due(self) -> int:
        """Emit the webhook events due by now (the sandbox does it by itself every 0.25 s at most:
        this is for tests on a fake clock); returns how many were handed to a topic."""
        emissions = [*self._webhooks.take_due(self._store, self._clock()), *self._publisher.released()]
        if not emissions:
            return 0
        gate = asyncio.Semaphore(_DELIVERIES)

        async def deliver(emission: Emission) -> bool:
            async with gate:
                ok = await self._publisher.publish(emission)
            if ok is not None:
                self._webhooks.delivered(emission, ok=ok)
            return bool(ok)

        return sum(await asyncio.gather(*(deliver(e) for e in emissions)))

    @property
    def domains(self) -> DomainBook:
        """The domains and blocklists (read and change them from the sandbox's own event loop only)."""
        return self._domains

    def block(
        self,
        emails: list[str],
        *,
        type: str = "mailbox_not_found",
        domain: str | None = None,
        ends_in_s: float | None = None,
        reason: str = "",
    ) -> int:
        """Script blocklist entries (TEM's automatic kind) for ``domain``, or every domain when None.

        Returns how many were added; ``ValueError`` for a bad type, domain or duration.
        """
        if type not in BLOCKLIST_TYPES:
            raise ValueError(f"type must be one of {', '.join(BLOCKLIST_TYPES)}, got {type!r}")
        if ends_in_s is not None and not (isinstance(ends_in_s, int | float) and 0 < ends_in_s < math.inf):
            raise ValueError(f"ends_in_s must be a number of seconds > 0, got {ends_in_s!r}")
        if not all(isinstance(e, str) and "@" in e for e in emails):
            raise ValueError("emails must be a list of email addresses")
        now = self._clock()
        domain_id = None
        if domain is not None:
            found = self._domains.lookup(domain, self._config, now)
            if found is None:
                raise ValueError(f"the sandbox does not accept {domain!r} as a sending domain")
            domain_id = found.id
        ends_at = None if ends_in_s is None else now + float(ends_in_s)
        added = self._domains.block(
            emails, type=type, now=now, domain_id=domain_id, reason=reason, ends_at=ends_at
        )
        return len(added)

    def stats(self) -> SandboxStats:
        """A snapshot of the counters (the same content as ``GET /_sandbox/stats``)."""
        return SandboxStats(
            accepted_by_recipient=self._store.accepted_by_recipient(),
            requests=dict(self._requests),
            rate_limited=self._rate_limited,
            faults=dict(self._faults),
            emails_total=len(self._store),
            outage_answers=self._outage_answers,
        )

    def update(self, **changes: Any) -> SandboxConfig:
        """Change settings live (``dataclasses.replace``); returns the new configuration."""
        unknown = set(changes) - SandboxConfig.field_names()
        if unknown:
            raise ValueError(f"unknown sandbox setting(s): {', '.join(sorted(unknown))}")
        previous = self._config
        # Checked in full (SandboxConfig refuses bad values) before anything changes.
        self._config = dataclasses.replace(previous, **changes)
        self._apply_config(previous)
        return self._config

    def outage(self, seconds: float, status: int = 503) -> float:
        """Answer every TEM request with a bare ``status`` for the next ``seconds`` (0 ends it).

        Nothing takes effect during the outage: the gateway cannot reach the API. Returns the
        sandbox-clock time at which it ends.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 3600:
            raise ValueError(f"seconds must be a number within 0..3600, got {seconds!r}")
        if isinstance(status, bool) or not isinstance(status, int) or not 500 <= status <= 599:
            raise ValueError(f"status must be a 5xx HTTP status, got {status!r}")
        self._outage_status = status
        self._outage_until = self._clock() + float(seconds)
        return self._outage_until

    def reset(self) -> None:
        """Forget every email and counter (ids handed out before become unknown)."""
        self._clear()
        self._tokens = self._config.burst
        self._tokens_at = self._clock()

    def build_app(self) -> web.Application:
        """The aiohttp application (``start()`` serves it; tests may mount it elsewhere)."""
        # Large enough to read an over-limit body and answer TEM's 400 instead of aiohttp's 413.
        app = web.Application(client_max_size=8 * 1024 * 1024)
        p = API_PREFIX
        add = app.router.add_route
        add("POST", f"{p}/emails", self._gated("send", self._send))
        add("GET", f"{p}/emails", self._gated("list", self._list))
        add("GET", f"{p}/emails/{{email_id}}", self._gated("get", self._get))
        add("POST", f"{p}/emails/{{email_id}}/cancel", self._gated("cancel", self._cancel))
        add("GET", f"{p}/statistics", self._gated("statistics", self._statistics))
        add("GET", f"{p}/webhooks", self._gated("webhook", self._webhooks_list))
        add("POST", f"{p}/webhooks", self._gated("webhook", self._webhooks_create))
        add("GET", f"{p}/webhooks/{{webhook_id}}", self._gated("webhook", self._webhooks_get))
        add("PATCH", f"{p}/webhooks/{{webhook_id}}", self._gated("webhook", self._webhooks_update))
        add("DELETE", f"{p}/webhooks/{{webhook_id}}", self._gated("webhook", self._webhooks_delete))
        add("GET", f"{p}/webhooks/{{webhook_id}}/events", self._gated("webhook", self._webhooks_events))
        add("GET", f"{p}/blocklists", self._gated("blocklists", self._list_blocklists))
        add("POST", f"{p}/blocklists", self._gated("blocklists", self._create_blocklists))
        add("GET", f"{p}/domains", self._gated("domains", self._list_domains))
        add("GET", f"{p}/domains/{{domain_id}}", self._gated("domains", self._get_domain))
        add("GET", f"{p}/domains/{{domain_id}}/verification", self._gated("domains", self._verification))
        add("GET", f"{p}/project-consumption", self._gated("consumption", self._consumption))
        add("*", f"{p}/{{tail:.*}}", self._gated("other", self._other))
        add("GET", CERT_PATH, self._inspect_sns_cert)
        add("GET", CONFIRM_PATH, self._inspect_sns_confirm)
        add("GET", "/_sandbox/stats", self._inspect_stats)
        add("POST", "/_sandbox/reset", self._inspect_reset)
        add("GET", "/_sandbox/config", self._inspect_config)
        add("PATCH", "/_sandbox/config", self._inspect_config)
        add("POST", "/_sandbox/outage", self._inspect_outage)
        add("POST", "/_sandbox/blocklists", self._inspect_block)
        return app

    async def start(self) -> None:
        """Bind and serve. Works inside an already running event loop."""
        if self._runner is not None:
            raise RuntimeError("the sandbox is already started")
        runner = web.AppRunner(
            self.build_app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._shutdown_timeout_s,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        self._emitter = asyncio.get_running_loop().create_task(self._emit_loop())

    async def stop(self) -> None:
        """Stop serving (idempotent); stored emails stay readable through ``stats()``."""
        runner, self._runner = self._runner, None
        emitter, self._emitter = self._emitter, None
        if emitter is not None:
            emitter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await emitter
            await self._publisher.close()
        if runner is not None:
            await runner.cleanup()

    # ``async with`` (from OpenClose) starts and stops the server.
    open = start
    close = stop

    # -- internals --------------------------------------------------------------------------------

    async def _emit_loop(self) -> None:
        """Emit webhook events as they fall due (nothing to do while no webhook exists)."""
        while True:
            await self.emit_due()
            due = self._webhooks.next_due()
            wait = _EMIT_POLL_S if due is None else min(_EMIT_POLL_S, max(0.0, due - self._clock()))
            self._emit_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emit_wake.wait(), wait)

    def _clear(self) -> None:
        """The emails, webhooks, counters and random draws of a fresh sandbox."""
        self._store = EmailStore()
        self._webhooks = WebhookBook(default_project_id=self._config.project_id, clock=self._clock)
        self._domains = DomainBook()
        self._requests = dict.fromkeys(REQUEST_KINDS, 0)
        self._faults = dict.fromkeys(FAULT_KINDS, 0)
        self._rate_limited = 0
        self._outage_until = -math.inf
        self._outage_answers = 0
        self._rng = random.Random(self._config.seed)

    def _url_or_none(self) -> str | None:
        if self._bound_port is None or self._runner is None:
            return None
        host = self._host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self._bound_port}"

    def _apply_config(self, previous: SandboxConfig | None) -> None:
        c = self._config
        # Emails keep the Timing they were created with, so a live change never rewrites history.
        self._timing = Timing(c.sending_after_s, c.final_after_s, c.soft_bounce_retry_s, c.hold_s)
        if previous is None or previous.rate_limit_per_s is None:
            self._tokens = c.burst
            self._tokens_at = self._clock()
        else:
            self._tokens = min(self._tokens, c.burst)
        if previous is not None and previous.seed != c.seed:
            self._rng = random.Random(c.seed)
        self._secret = c.secret_key.encode()
        self._faults_on = bool(c.fault_5xx_before_p or c.fault_5xx_after_p or c.fault_drop_p)
        self._latency_on = bool(c.latency_ms or c.latency_jitter_ms)

    def _take_token(self, rate_per_s: float) -> bool:
        now = self._clock()
        elapsed = now - self._tokens_at
        if elapsed > 0:  # a clock that steps back refills nothing
            self._tokens = min(self._config.burst, self._tokens + elapsed * rate_per_s)
            self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _gated(self, kind: str, endpoint: Handler) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            self._requests[kind] += 1
            c = self._config
            if c.rate_limit_per_s is not None and not self._take_token(c.rate_limit_per_s):
                self._rate_limited += 1
                # Like the real gateway: bare text, no Retry-After, no X-RateLimit-* headers.
                return web.Response(status=429, text="Too Many Requests")
            if self._outage_until > self._clock():
                # The gateway cannot reach the API: a bare answer, nothing takes effect.
                self._outage_answers += 1
                return web.Response(
                    status=self._outage_status,
                    text="upstream connect error or disconnect/reset before headers. "
                    "reset reason: connection failure",
                )
            token = request.headers.get("X-Auth-Token")
            if token is None or not hmac.compare_digest(token.encode(), self._secret):
                return web.Response(body=_UNAUTHORIZED, status=401, content_type=_JSON)
            region = request.match_info.get("region", "")
            if region != REGION:
                return _not_found("region", region)
            if self._latency_on:
                delay_ms = c.latency_ms + (
                    self._rng.random() * c.latency_jitter_ms if c.latency_jitter_ms else 0.0
                )
                await anyio.sleep(delay_ms / 1000.0)
            try:
                if not self._faults_on:
                    return await endpoint(request)
                return await self._with_fault(request, endpoint, self._config)
            except ConnectionResetError:
                # The client went away mid-request (a killed sender): nobody is left to answer,
                # and it is not a server error worth a traceback.
                return web.Response(status=499)

        return handler

    async def _with_fault(
        self, request: web.Request, endpoint: Handler, c: SandboxConfig
    ) -> web.StreamResponse:
        rng = self._rng
        u = rng.random()
        if u < c.fault_5xx_before_p:
            self._faults["5xx_before"] += 1
            return self._server_error(rng, took_effect=False)
        u -= c.fault_5xx_before_p
        if u < c.fault_5xx_after_p:
            await endpoint(request)
            self._faults["5xx_after"] += 1
            return self._server_error(rng, took_effect=True)
        u -= c.fault_5xx_after_p
        if u < c.fault_drop_p:
            # The second coin: did the request take effect before the connection died?
            if rng.random() < 0.5:
                await endpoint(request)
                self._faults["drop_created"] += 1
            else:
                self._faults["drop_not_created"] += 1
            return self._drop(request)
        return await endpoint(request)

    @staticmethod
    def _server_error(rng: random.Random, *, took_effect: bool) -> web.Response:
        # A mix of shapes, as seen behind a gateway: typed JSON, untyped JSON, and bare gateway
        # bodies. As in front of the real API, the gateway answers 502/503 by itself only when it
        # could not hand the request over; once the API took it, the answer is the API's JSON or
        # the gateway's 504 (it gave up waiting).
        status = rng.choice((500, 503, 504) if took_effect else (500, 502, 503))
        if status == 500:
            return _json({"message": "internal error", "type": "internal_error"}, 500)
        if status == 502:
            return web.Response(
                status=502,
                text="<html><body><h1>502 Bad Gateway</h1></body></html>",
                content_type="text/html",
            )
        if status == 504:
            return web.Response(status=504, text="upstream request timeout")
        return _json({"message": "service unavailable, please retry later"}, 503)

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        # Closing the transport makes aiohttp's attempt to write the response below fail quietly,
        # so the client sees the connection end with no HTTP answer at all.
        request.protocol.force_close()
        return web.Response(status=500)

    # -- TEM endpoints ----------------------------------------------------------------------------

    async def _send(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        c = self._config
        data: Any = None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            # An oversized body is refused for its size below, whatever its content.
            if len(body) <= MAX_EMAIL_BYTES:
                return _invalid([("body", "the request body is not valid JSON")])
        parsed, errors, sender_refused = parse_create_email(
            body, data, default_project_id=c.project_id, allowed_from_domains=c.allowed_from_domains
        )
        if parsed is None:
            return _invalid(errors, "Invalid email from address" if sender_refused else "invalid argument(s)")
        now = self._clock()
        domain = self._domains.lookup(parsed.mail_from.rpartition("@")[2], c, now)
        if domain is None or c.domain_status != "checked":
            status = "unknown" if domain is None else c.domain_status
            return _invalid(
                [("from", f"the domain of {parsed.mail_from!r} is {status}; only a checked domain may send")],
                "Invalid email from address",
            )
        store = self._store
        blocked = self._domains.blocked(domain.id, now)
        positions = store.create(parsed, timing=self._timing, now=now, blocked=blocked)
        if self._webhooks.watches(domain.id):
            headers = tuple((h["key"], h["value"]) for h in data.get("additional_headers") or ())
            self._webhooks.schedule(store, positions, headers, domain.id)
            self._emit_wake.set()
        # TEM answers a send with the emails as queued (`new`), whatever happens next.
        return _json({"emails": [store.render(p, now, as_created=True) for p in positions]})

    async def _get(self, request: web.Request) -> web.StreamResponse:
        email_id = request.match_info["email_id"]
        position = self._store.position_of(email_id)
        if position is None:
            return _not_found("email", email_id)
        return _json(self._store.render(position, self._clock()))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        email_id = request.match_info["email_id"]
        store = self._store
        position = store.position_of(email_id)
        if position is None:
            return _not_found("email", email_id)
        now = self._clock()
        if not store.cancel(position, now):
            status = store.render(position, now)["status"]
            return _json(
                {
                    "help_message": f"the email is {status}; only a `new` email can be canceled",
                    "message": "precondition is not respected",
                    "precondition": "email_not_new",
                    "type": "precondition_failed",
                },
                412,
            )
        return _json(store.render(position, now))

    async def _list(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        errors: list[tuple[str, str]] = []
        flt = self._parse_filter(query, errors, listing=True)
        page, page_size = _page(query, errors, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        order_by = query.get("order_by") or "created_at_desc"
        if order_by not in ORDER_BY_VALUES:
            errors.append(("order_by", f"unknown order_by {order_by!r}"))
        if errors:
            return _invalid(errors)
        assert flt is not None
        now = self._clock()
        store = self._store
        total, positions = store.list_page(flt, order_by, now, (page - 1) * page_size, page_size)
        emails = [store.render(p, now) for p in positions]
        return _json({"total_count": total, "emails": emails}, headers={"X-Total-Count": str(total)})

    async def _statistics(self, request: web.Request) -> web.StreamResponse:
        errors: list[tuple[str, str]] = []
        flt = self._parse_filter(request.rel_url.query, errors, listing=False)
        if errors or flt is None:
            return _invalid(errors)
        return _json(self._store.statistics(flt, self._clock()))

    async def _webhooks_list(self, request: web.Request) -> web.StreamResponse:
        return _answer(self._webhooks.find(request.rel_url.query))

    async def _webhooks_create(self, request: web.Request) -> web.StreamResponse:
        return _answer(self._webhooks.create(await _body(request)))

    async def _webhooks_get(self, request: web.Request) -> web.StreamResponse:
        return _answer(self._webhooks.get(request.match_info["webhook_id"]))

    async def _webhooks_update(self, request: web.Request) -> web.StreamResponse:
        return _answer(self._webhooks.update(request.match_info["webhook_id"], await _body(request)))

    async def _webhooks_delete(self, request: web.Request) -> web.StreamResponse:
        return _answer(self._webhooks.delete(request.match_info["webhook_id"]))

    async def _webhooks_events(self, request: web.Request) -> web.StreamResponse:
        return _answer(self._webhooks.events(request.match_info["webhook_id"], request.rel_url.query))

    # -- deliverability endpoints ----------------------------------------------------------------

    def _domain_or_404(self, request: web.Request) -> SandboxDomain | web.Response:
        domain_id = request.match_info["domain_id"]
        if not UUID_RE.match(domain_id):
            return _invalid([("domain_id", "domain_id must be a UUID")])
        domain = self._domains.by_id(domain_id, self._config)
        return domain if domain is not None else _not_found("domain", domain_id)

    async def _get_domain(self, request: web.Request) -> web.StreamResponse:
        domain = self._domain_or_404(request)
        if isinstance(domain, web.Response):
            return domain
        return _json(self._domains.render_domain(domain, self._config))

    async def _verification(self, request: web.Request) -> web.StreamResponse:
        domain = self._domain_or_404(request)
        if isinstance(domain, web.Response):
            return domain
        return _json(self._domains.render_verification(domain, self._config))

    async def _list_domains(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        errors: list[tuple[str, str]] = []
        for name in ("project_id", "organization_id"):
            value = query.get(name)
            if value and not UUID_RE.match(value):
                errors.append((name, f"{name} must be a UUID"))
        statuses = query.getall("status", [])
        bad = [s for s in statuses if s not in _DOMAIN_STATUSES]
        if bad:
            errors.append(("status", f"unknown status(es): {', '.join(bad)}"))
        page, page_size = _page(query, errors, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if errors:
            return _invalid(errors)
        c, now = self._config, self._clock()
        wanted = query.get("name")
        domains: list[SandboxDomain]
        if wanted:
            found = self._domains.lookup(wanted, c, now)
            domains = [found] if found is not None else []
        else:
            domains = self._domains.domains(c, now)
        project = query.get("project_id") or query.get("organization_id")
        if (project and project.lower() != c.project_id.lower()) or (
            statuses and c.domain_status not in statuses
        ):
            domains = []  # every domain is in the sandbox's project and has the configured status
        shown = domains[(page - 1) * page_size : page * page_size]
        return _json(
            {"total_count": len(domains), "domains": [self._domains.render_domain(d, c) for d in shown]}
        )

    async def _list_blocklists(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        errors: list[tuple[str, str]] = []
        domain_id = query.get("domain_id") or ""
        if not UUID_RE.match(domain_id):
            errors.append(("domain_id", "domain_id is required: a UUID"))
        type_ = query.get("type")
        if type_ is not None and type_ not in BLOCKLIST_TYPES:
            errors.append(("type", f"unknown type {type_!r}"))
        custom_text = query.get("custom")
        custom = None if custom_text is None else _BOOLEANS.get(custom_text)
        if custom_text is not None and custom is None:
            errors.append(("custom", "custom must be true or false"))
        order_by = query.get("order_by") or "created_at_desc"
        if order_by not in _BLOCKLIST_ORDERS:
            errors.append(("order_by", f"unknown order_by {order_by!r}"))
        page, page_size = _page(query, errors, DEFAULT_PAGE_SIZE, MAX_BLOCKLIST_PAGE_SIZE)
        if errors:
            return _invalid(errors)
        domain = self._domains.by_id(domain_id, self._config)
        if domain is None:
            return _not_found("domain", domain_id)
        email = (query.get("email") or "").strip().lower()
        entries = [
            e
            for e in self._domains.entries(domain.id, self._clock())
            if (not email or e.email == email)
            and (type_ in (None, "unknown_type") or e.type == type_)
            and (custom is None or e.custom == custom)
        ]
        key, reverse = _BLOCKLIST_ORDERS[order_by]
        entries.sort(key=key, reverse=reverse)
        shown = entries[(page - 1) * page_size : page * page_size]
        return _json({"total_count": len(entries), "blocklists": [e.render(domain.id) for e in shown]})

    async def _create_blocklists(self, request: web.Request) -> web.StreamResponse:
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _invalid([("body", "the request body is not valid JSON")])
        if not isinstance(data, dict):
            return _invalid([("body", "the request body must be a JSON object")])
        errors: list[tuple[str, str]] = []
        domain_id = data.get("domain_id")
        check_uuid(domain_id, "domain_id", "domain_id is required: a UUID", errors)
        emails = data.get("emails")
        if (
            not isinstance(emails, list)
            or not 1 <= len(emails) <= MAX_BLOCKLIST_EMAILS
            or not all(isinstance(e, str) and 3 <= len(e) <= 254 and "@" in e for e in emails)
        ):
            errors.append(("emails", f"emails must be a list of 1 to {MAX_BLOCKLIST_EMAILS} email addresses"))
        type_ = data.get("type", "unknown_type")
        if type_ not in BLOCKLIST_TYPES:
            errors.append(("type", f"unknown type {type_!r}"))
        reason = data.get("reason", "")
        if not isinstance(reason, str):
            errors.append(("reason", "reason must be a string"))
        if errors:
            return _invalid(errors)
        domain = self._domains.by_id(str(domain_id), self._config)
        if domain is None:
            return _not_found("domain", str(domain_id))
        if self._config.offer != "scale":
            # Custom blocklists are a Scale-plan feature: the Essential plan's quota of them is 0.
            return _json(
                {
                    "details": [{"resource": "custom_blocklists_per_domain", "quota": 0, "current": 0}],
                    "message": "quota(s) exceeded for this resource",
                    "type": "quotas_exceeded",
                },
                403,
            )
        assert isinstance(emails, list)
        added = self._domains.block(
            emails, type=str(type_), now=self._clock(), domain_id=domain.id, reason=reason, custom=True
        )
        return _json({"blocklists": [e.render(domain.id) for e in added]})

    async def _consumption(self, request: web.Request) -> web.StreamResponse:
        project_id = request.rel_url.query.get("project_id") or ""
        if not UUID_RE.match(project_id):
            return _invalid([("project_id", "project_id is required: a UUID")])
        project_id = project_id.lower()
        c, now = self._config, self._clock()
        domains = [d for d in self._domains.domains(c, now) if d.project_id == project_id]
        month = time.gmtime(now)
        month_start = float(calendar.timegm((month.tm_year, month.tm_mon, 1, 0, 0, 0)))
        sent = len(self._store.select(EmailFilter(project_id=project_id, since=month_start), now))
        return _json(
            {
                "project_id": project_id,
                "domains_count": len(domains),
                "dedicated_ips_count": 0,
                "monthly_emails_count": min(MAX_COUNT, c.monthly_emails_base + sent),
                "webhooks_count": 0,
                "custom_blocklists_count": self._domains.custom_count({d.id for d in domains}, now),
            }
        )

    async def _other(self, request: web.Request) -> web.StreamResponse:
        return _json({"message": "resource is not found", "type": "not_found"}, 404)

    def _parse_filter(
        self, query: Any, errors: list[tuple[str, str]], *, listing: bool
    ) -> EmailFilter | None:
        for name in ("project_id", "domain_id", "message_id") if listing else ("project_id", "domain_id"):
            value = query.get(name)
            if value and not UUID_RE.match(value):
                errors.append((name, f"{name} must be a UUID"))
        times: dict[str, float | None] = {"since": None, "until": None}
        for name in times:
            value = query.get(name)
            if value:
                try:
                    times[name] = parse_timestamp(value)
                except ValueError as exc:
                    errors.append((name, f"{name}: {exc}"))
        mail_from = query.get("mail_from") or None
        if not listing:
            if errors:
                return None
            return EmailFilter(
                project_id=query.get("project_id") or None,
                since=times["since"],
                until=times["until"],
                mail_from=mail_from.lower() if mail_from else None,
            )
        statuses = query.getall("statuses", [])
        bad = [s for s in statuses if s not in _STATUSES]
        if bad:
            errors.append(("statuses", f"unknown status(es): {', '.join(bad)}"))
        flags = query.getall("flags", [])
        bad = [f for f in flags if f not in _FLAGS]
        if bad:
            errors.append(("flags", f"unknown flag(s): {', '.join(bad)}"))
        search = query.get("search") or None
        if search is not None and not 3 <= len(search) <= 100:
            errors.append(("search", "search must be 3 to 100 characters long"))
        mail_rcpt = query.get("mail_rcpt") or None
        mail_to = query.get("mail_to") or None  # deprecated alias of mail_rcpt
        if mail_rcpt and mail_to and mail_rcpt.lower() != mail_to.lower():
            mail_rcpt = "\x00"  # both given and different: nothing can match both
        mail_rcpt = mail_rcpt or mail_to
        if errors:
            return None
        return EmailFilter(
            project_id=query.get("project_id") or None,
            message_id=(query.get("message_id") or "").lower() or None,
            since=times["since"],
            until=times["until"],
            mail_from=mail_from.lower() if mail_from else None,
            mail_rcpt=mail_rcpt.strip().lower() if mail_rcpt else None,
            statuses=frozenset(statuses) if statuses else None,
            flags=frozenset(flags) if flags else None,
            subject=query.get("subject") or None,
            search=search.lower() if search else None,
        )

    # -- inspection endpoints (no auth: the sandbox is for loopback use) -------------------------------

    async def _inspect_sns_cert(self, request: web.Request) -> web.StreamResponse:
        if not self._publisher.cert_pem:
            return _json({"message": "no certificate: no event was signed by a key of the sandbox"}, 404)
        return web.Response(body=self._publisher.cert_pem, content_type="application/x-pem-file")

    async def _inspect_sns_confirm(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if not self._publisher.confirm(query.get("topic", ""), query.get("token", "")):
            return _json({"message": "unknown topic or token"}, 404)
        self._emit_wake.set()  # the held events go out now
        return _json({"confirmed": query.get("topic", "")})

    async def _inspect_stats(self, request: web.Request) -> web.StreamResponse:
        return _json(self.stats().to_json())

    async def _inspect_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return _json({"ok": True})

    async def _inspect_outage(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or set(body) - {"seconds", "status"} or "seconds" not in body:
            hint = 'the body must be a JSON object like {"seconds": 8, "status": 503}'
            return _json({"message": hint}, 400)
        try:
            until = self.outage(body["seconds"], body.get("status", 503))
        except ValueError as exc:
            return _json({"message": str(exc)}, 400)
        return _json({"seconds": body["seconds"], "status": self._outage_status, "until": until})

    async def _inspect_block(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        known = {"emails", "type", "domain", "ends_in_s", "reason"}
        if not isinstance(body, dict) or set(body) - known or not isinstance(body.get("emails"), list):
            hint = (
                'the body must be a JSON object like {"emails": ["ann@example.org"], '
                '"type": "mailbox_full", "domain": "example.com", "ends_in_s": 86400}'
            )
            return _json({"message": hint}, 400)
        try:
            added = self.block(**body)
        except (TypeError, ValueError) as exc:
            return _json({"message": str(exc)}, 400)
        return _json({"added": added})

    async def _inspect_config(self, request: web.Request) -> web.StreamResponse:
        if request.method == "PATCH":
            try:
                changes = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                return _json({"message": "the body must be a JSON object of settings"}, 400)
            if not isinstance(changes, dict):
                return _json({"message": "the body must be a JSON object of settings"}, 400)
            for name in ("allowed_from_domains", "failing_records"):
                if isinstance(changes.get(name), list):
                    changes[name] = tuple(changes[name])
            try:
                self.update(**changes)
            except (TypeError, ValueError) as exc:
                return _json({"message": str(exc)}, 400)
        return _json(self._config.to_public_json())


def _answer(answer: tuple[int, Any]) -> web.Response:
    status, body = answer
    return web.Response(status=status) if body is None else _json(body, status)


async def _body(request: web.Request) -> Any:
    """The request's JSON body, or None when it is not JSON (the endpoint then refuses it)."""
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None


_UINT32 = re.compile(r"[0-9]{1,10}")
_DOMAIN_STATUSES = frozenset(("unknown", *DOMAIN_STATUSES))
# What the API's gateway reads as a boolean query parameter (Go's strconv.ParseBool): the
# official Python SDK sends "True" and "False".
_BOOLEANS = {
    **dict.fromkeys(("1", "t", "T", "true", "TRUE", "True"), True),
    **dict.fromkeys(("0", "f", "F", "false", "FALSE", "False"), False),
}


def _page(query: Any, errors: list[tuple[str, str]], default_size: int, largest: int) -> tuple[int, int]:
    """``(page, page_size)`` of a list query, checked as TEM checks them."""
    page = _int_param(query, "page", 1, errors)
    page_size = _int_param(query, "page_size", default_size, errors)
    if page < 1:
        errors.append(("page", "page starts at 1"))
    if not 1 <= page_size <= largest:
        errors.append(("page_size", f"page_size must be within 1..{largest}"))
    return page, page_size


def _int_param(query: Any, name: str, default: int, errors: list[tuple[str, str]]) -> int:
    value = query.get(name)
    if value is None or value == "":
        return default
    # ASCII digits only, as TEM's uint32 fields: int() would also take "1_000", " 7 " and "١٢".
    if _UINT32.fullmatch(value) is None or int(value) > 0xFFFFFFFF:
        errors.append((name, f"{name} must be a whole number from 0 to 4294967295, got {value[:20]!r}"))
        return default
    return int(value)
