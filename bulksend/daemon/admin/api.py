"""The admin HTTP API of ``bulksend serve`` (aiohttp.web), over a :class:`DaemonControl`.

Every route, its authentication and its answers are in docs/admin-api.md. JSON in and out; every
error is ``{"error": "…"}`` with a fitting status; ``/healthz``, ``/readyz`` and the dashboard's
static page (``/ui/``, :mod:`~bulksend.daemon.admin.dashboard`) are open, the rest needs the token
(``/metrics`` is open with ``metrics_public=True``).

Authentication is ``Authorization: Bearer <admin token>``, compared in constant time. Without a
configured token the API is open, which :func:`check_listen_address` allows on loopback only. The
token, and the ``Authorization`` header, never reach a log line.

The recipients upload is handed to the control as an async iterator of chunks, read from the
socket as the control consumes it: a 1 GB file never sits in memory.

:func:`serve_admin` listens with bounds on idle and slow clients (docs/daemon.md, Security).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

import orjson
import structlog
from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.typedefs import Handler, Middleware

from bulksend.campaign.load import CAMPAIGN_ID_PATTERN
from bulksend.campaign.validate import check_address, check_header
from bulksend.daemon.admin.control import (
    JOB_CAMPAIGN_PREFIX,
    CampaignInfo,
    Conflict,
    DaemonControl,
    NotFound,
    Submission,
    safe_filename,
)
from bulksend.daemon.admin.dashboard import UI_ROUTES, add_dashboard, security_headers
from bulksend.daemon.admin.reports import CampaignReports
from bulksend.daemon.admin.throttle import UnauthorizedLog
from bulksend.errors import CampaignError, ConfigError
from bulksend.events.http import SnsHttpReceiver
from bulksend.metrics import Metrics
from bulksend.secret import Secret

__all__ = [
    "MAX_CAMPAIGN_BYTES",
    "OPEN_ROUTES",
    "AdminServer",
    "check_listen_address",
    "create_admin_app",
    "serve_admin",
    "validate_template",
]

_T = TypeVar("_T")

log = structlog.get_logger("bulksend.admin")

MAX_CAMPAIGN_BYTES: Final = 1024 * 1024
"""Largest ``campaign`` part accepted (the recipients part has no limit: it is streamed)."""
UPLOAD_CHUNK_BYTES: Final = 256 * 1024
"""Size of the chunks the recipients upload is read in."""
OUTCOMES_FLUSH_BYTES: Final = 64 * 1024
"""Outcome lines are written to the socket in chunks of about this size."""
OPEN_ROUTES: Final = frozenset({"healthz", "readyz", "unsubscribe.page", "unsubscribe.post"}) | UI_ROUTES
"""Route names served without a token (``metrics`` too when ``metrics_public``): the probes, the
dashboard's static page, which holds no data, and the unsubscribe links (when served)."""

NDJSON: Final = "application/x-ndjson"
TEMPLATE_KEYS: Final = frozenset({"from", "subject", "text", "html", "headers", "unsubscribe"})
TEMPLATE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SUBMITTED_ID_RE: Final = re.compile(CAMPAIGN_ID_PATTERN)
RESERVED_HEADERS: Final = frozenset({"x-bulksend-ref"})
_JSON_TYPES: Final = frozenset({"application/json", "text/json"})
_RECIPIENT_TYPES: Final = {
    "text/csv": "recipients.csv",
    "text/tab-separated-values": "recipients.tsv",
    "application/x-ndjson": "recipients.jsonl",
    "application/jsonl": "recipients.jsonl",
    "application/x-jsonlines": "recipients.jsonl",
}

_CONTROL: Final = web.AppKey("control", DaemonControl)
_METRICS: Final = web.AppKey("metrics", Metrics)
_REPORTS: Final = web.AppKey("reports", CampaignReports)
_READ_TIMEOUT: Final = web.AppKey("read_timeout_s", float)
_STREAMING: Final = web.RequestKey("streaming", bool)
"""Request key set once a streamed answer has started: an error after that cannot become JSON."""


# -- listening -----------------------------------------------------------------------------------
def check_listen_address(host: str, token: Secret | None) -> None:
    """Refuse to serve the API beyond this machine without a token.

    Loopback is ``localhost``, ``127.0.0.0/8`` and ``::1`` (also IPv4-mapped, and in brackets);
    anything else — ``0.0.0.0``, ``::``, an empty host (every interface), a host name — needs a
    token. Raises :class:`~bulksend.errors.ConfigError`.
    """
    if token:
        return
    if _is_loopback(host):
        return
    shown = host or "every interface"
    raise ConfigError(
        f"refusing to listen on {shown} without an admin token; set admin.token or BULKSEND_ADMIN_TOKEN "
        "(or listen on 127.0.0.1)"
    )


def _is_loopback(host: str) -> bool:
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h == "localhost":
        return True
    try:
        address = ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        return False  # a host name may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


# -- the application -----------------------------------------------------------------------------
def create_admin_app(
    control: DaemonControl,
    *,
    token: Secret | None,
    metrics: Metrics,
    metrics_public: bool = False,
    read_timeout_s: float = 30.0,
    unauthorized_log: UnauthorizedLog | None = None,
    events: SnsHttpReceiver | None = None,
) -> web.Application:
    """The admin API as an ``aiohttp.web.Application``, serving ``control``.

    With ``events``, ``POST /events/sns`` takes TEM's webhook events as Topics and Events delivers
    them over HTTP: no token (SNS cannot send one), each message's SNS signature checked instead.

    ``token`` (None or empty: no authentication, for loopback only — see
    :func:`check_listen_address`) protects every route but ``/healthz`` and ``/readyz``;
    ``metrics_public`` opens ``/metrics`` too, for a scraper that cannot send a token. A request
    body that sends nothing for ``read_timeout_s`` is answered 408 and its connection closed.
    Refused calls are logged through ``unauthorized_log`` (a fresh :class:`UnauthorizedLog` by
    default), which keeps a client in a loop from flooding the log.
    """
    auth = _BearerAuth(token) if token else None
    public = (OPEN_ROUTES | {"metrics"}) if metrics_public else OPEN_ROUTES
    if events is not None:
        public = public | {"events.sns"}
    refusals = unauthorized_log or UnauthorizedLog()
    app = web.Application(middlewares=[_error_middleware, _auth_middleware(auth, public, refusals)])
    app.cleanup_ctx.append(partial(_flush_refusals, refusals))
    app.on_response_prepare.append(security_headers)
    app[_CONTROL] = control
    app[_METRICS] = metrics
    app[_REPORTS] = CampaignReports()
    app[_READ_TIMEOUT] = read_timeout_s
    r = app.router
    r.add_get("/healthz", _healthz, name="healthz", allow_head=True)
    r.add_get("/readyz", _readyz, name="readyz", allow_head=True)
    r.add_get("/metrics", _metrics, name="metrics")
    r.add_post("/v1/campaigns", _submit, name="campaigns.submit")
    r.add_get("/v1/campaigns", _list, name="campaigns")
    r.add_get("/v1/campaigns/{campaign_id}", _get, name="campaign")
    r.add_get("/v1/campaigns/{campaign_id}/outcomes", _outcomes, name="campaign.outcomes")
    r.add_get("/v1/campaigns/{campaign_id}/report", _report, name="campaign.report")
    for action in _CAMPAIGN_ACTIONS:
        path = f"/v1/campaigns/{{campaign_id}}/{action}"
        r.add_post(path, partial(_campaign_action, action), name=f"campaign.{action}")
    r.add_get("/v1/templates", _templates, name="templates")
    r.add_put("/v1/templates/{name}", _put_template, name="template.put")
    r.add_get("/v1/dead-letters", _dead_letters, name="dead_letters")
    if events is not None:
        r.add_post("/events/sns", events.handle, name="events.sns")
    r.add_get("/v1/overview", _overview, name="overview")
    add_dashboard(app)
    return app


@dataclass
class AdminServer:
    """A listening admin API; :meth:`cleanup` stops listening, then closes every connection."""

    runner: web.AppRunner
    url: str
    _listener: asyncio.AbstractServer

    async def cleanup(self) -> None:
        """Stop accepting connections, then shut the application down."""
        self._listener.close()
        await self.runner.cleanup()


async def serve_admin(
    app: web.Application,
    host: str,
    port: int,
    *,
    idle_timeout_s: float = 15.0,
    max_connections: int = 256,
) -> AdminServer:
    """Listen on ``host:port`` (port 0: any free port) and serve ``app``.

    A connection that has not sent a whole request head ``idle_timeout_s`` after connecting or
    after its previous answer is closed (aiohttp's keep-alive timer runs from the connection's
    start, so a half-sent head is covered too). Beyond ``max_connections`` open connections, a
    new one is answered 503 and closed at once, so idle clients cannot exhaust the process.
    """
    read_timeout_s = app.get(_READ_TIMEOUT, 30.0)
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=idle_timeout_s,
        # After a 408 the rest of the body is drained this long at most before closing.
        lingering_time=min(10.0, read_timeout_s),
    )
    await runner.setup()
    server = runner.server
    assert server is not None
    loop = asyncio.get_running_loop()
    gate = _ConnectionGate(server, max_connections)
    try:
        listener = await loop.create_server(gate, host or None, port, backlog=128)
    except BaseException:
        await runner.cleanup()
        raise
    bound = listener.sockets[0].getsockname()[1] if listener.sockets else port
    shown = f"[{host}]" if ":" in host else host
    return AdminServer(runner=runner, url=f"http://{shown}:{bound}", _listener=listener)


_BUSY: Final = orjson.dumps({"error": "too many connections to the admin API; try again shortly"})
_BUSY_RESPONSE: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY
)


class _ConnectionGate:
    """The listener's protocol factory: aiohttp's request handler while fewer than ``limit``
    connections are open, else a protocol that answers 503 and hangs up."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self._server = server
        self._limit = limit
        self.open = 0

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open >= self._limit:
            return _Busy()
        self.open += 1
        return _Counted(self, self._server())

    def release(self) -> None:
        self.open -= 1


class _Counted(asyncio.Protocol):
    """Forwards every event to aiohttp's handler and gives the gate its slot back when the
    connection is gone (counted here, not from aiohttp's list, which fills only once
    connection_made has run: a burst of accepts would overshoot the limit)."""

    def __init__(self, gate: _ConnectionGate, inner: asyncio.Protocol) -> None:
        self._inner = inner
        # Runs once: at connection_lost, or when collected if the connection never got made.
        self._release = weakref.finalize(self, gate.release)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self._inner.connection_lost(exc)


class _Busy(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY_RESPONSE)
        transport.close()


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_UTC_Z),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json({"error": message}, status, headers)


# -- middlewares ---------------------------------------------------------------------------------
class _BearerAuth:
    """Holds the expected token; masks itself in reprs so a debugger or log never shows it."""

    __slots__ = ("_expected",)

    def __init__(self, token: Secret) -> None:
        self._expected = token.reveal().encode()

    def __repr__(self) -> str:
        return "_BearerAuth('****')"

    def check(self, authorization: str | None) -> str | None:
        """None when ``authorization`` carries the token, else what is wrong (safe to show)."""
        if not authorization:
            return "missing bearer token: send 'Authorization: Bearer <admin token>'"
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return "the Authorization header must be 'Bearer <admin token>'"
        # Constant time, whatever the length or content: no prefix leaks through timing.
        if not hmac.compare_digest(presented.strip().encode(), self._expected):
            return "invalid admin token"
        return None


async def _flush_refusals(refusals: UnauthorizedLog, app: web.Application) -> AsyncIterator[None]:
    """Write the counts of refused calls when their window ends, even if no refusal follows."""

    async def tick() -> None:
        while True:
            await asyncio.sleep(refusals.window_s)
            refusals.flush()

    task = asyncio.create_task(tick())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    refusals.flush()


def _auth_middleware(
    auth: _BearerAuth | None, public: frozenset[str], refusals: UnauthorizedLog
) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if auth is None:
            return await handler(request)
        route = request.match_info.route.name
        if route in public:
            return await handler(request)
        problem = auth.check(request.headers.get(hdrs.AUTHORIZATION))
        if problem is not None:
            # Never log the header: a near-miss token is still a secret.
            refusals.refused(request.remote, request.method, request.path)
            challenge = 'Bearer realm="bulksend"'
            if problem == "invalid admin token":
                challenge += ', error="invalid_token"'
            return _error(401, problem, {hdrs.WWW_AUTHENTICATE: challenge})
        return await handler(request)

    return middleware


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotFound as exc:
        return _error(404, str(exc))
    except Conflict as exc:
        return _error(409, str(exc))
    except CampaignError as exc:
        return _error(400, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and exc.content_type != "text/html" else exc.reason
        if message.startswith(f"{exc.status}: "):
            message = message.removeprefix(f"{exc.status}: ")
        headers = {k: v for k, v in exc.headers.items() if k in (hdrs.ALLOW, hdrs.WWW_AUTHENTICATE)}
        response = _error(exc.status, message, headers)
        if exc.status == 408:
            response.force_close()  # the rest of a stalled body is not worth waiting for
        return response
    except ConnectionError:
        # The client went away (mid-upload or mid-stream): nothing to answer, nothing to alarm about.
        log.info("admin.client_gone", method=request.method, path=request.path)
        raise
    except Exception:
        log.exception("admin.error", method=request.method, path=request.path)
        if request.get(_STREAMING):
            # The status line is sent: re-raising makes aiohttp drop the connection, so the client
            # sees a truncated chunked body instead of a stream that looks complete.
            raise
        return _error(500, "internal error; see the daemon's log")


# -- health and metrics --------------------------------------------------------------------------
async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    try:
        checks = await request.app[_CONTROL].health()
    except Exception:
        log.exception("admin.health_failed")
        return _json({"status": "unready", "checks": {}, "failing": ["health"]}, 503)
    failing = sorted(name for name, ok in checks.items() if not ok)
    body: dict[str, Any] = {
        "status": "unready" if failing else "ready",
        "checks": dict(checks),
        "failing": failing,
    }
    try:
        details = await request.app[_CONTROL].health_details()
    except Exception:
        log.exception("admin.health_failed")
        details = {}
    if details:
        body["details"] = details
    return _json(body, 503 if failing else 200)


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[_METRICS].render(request.headers.get(hdrs.ACCEPT, ""))
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})


# -- campaigns -----------------------------------------------------------------------------------
async def _submit(request: web.Request) -> web.Response:
    if request.content_type != "multipart/form-data":
        return _error(
            415,
            "send multipart/form-data with a 'campaign' part (TOML, or JSON with Content-Type "
            "application/json) followed by a 'recipients' file part",
        )
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError):
        return _error(400, "malformed multipart body")
    timeout_s = request.app[_READ_TIMEOUT]
    campaign: Mapping[str, Any] | str | None = None
    info: CampaignInfo | None = None
    while info is None:
        part = await _next_part(reader, timeout_s)
        if part is None:
            missing = "'campaign' and 'recipients' parts" if campaign is None else "a 'recipients' part"
            return _error(400, f"the upload lacks {missing}")
        if part.name == "campaign":
            if campaign is not None:
                return _error(400, "the 'campaign' part appears twice")
            campaign = await _read_campaign(part, timeout_s)
        elif part.name == "recipients":
            if campaign is None:
                # Streaming means the campaign must be known before the first recipient byte.
                return _error(400, "the 'campaign' part must come before the 'recipients' part")
            filename = _recipients_filename(part)
            control = request.app[_CONTROL]
            info = await control.submit_campaign(Submission(campaign, _chunks(part, timeout_s), filename))
        else:
            return _error(400, f"unexpected part {part.name!r}; send 'campaign' and 'recipients'")
    # Whatever follows the recipients is ignored, but read, so the connection can be reused.
    while (extra := await _next_part(reader, timeout_s)) is not None:
        await _within(timeout_s, extra.release())
    location = str(request.app.router["campaign"].url_for(campaign_id=info.id))
    return _json(info.as_json(), 201, {hdrs.LOCATION: location})


async def _within(timeout_s: float, read: Awaitable[_T]) -> _T:
    """``read``, or 408 when the client sends nothing for ``timeout_s`` (a stalled upload would
    otherwise hold its connection, and a spooled file, forever)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await read
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"the request body stalled: nothing arrived for {timeout_s:g} s; send it again"
        ) from None


async def _next_part(reader: MultipartReader, timeout_s: float) -> BodyPartReader | None:
    try:
        part = await _within(timeout_s, reader.next())
    except (ValueError, AssertionError) as exc:
        raise CampaignError(f"malformed multipart body: {exc}") from None
    if part is None:
        return None
    if not isinstance(part, BodyPartReader):
        raise CampaignError("nested multipart bodies are not supported")
    return part


async def _read_campaign(part: BodyPartReader, timeout_s: float) -> Mapping[str, Any] | str:
    data = bytearray()
    while chunk := await _within(timeout_s, part.read_chunk(64 * 1024)):
        data += chunk
        if len(data) > MAX_CAMPAIGN_BYTES:
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_CAMPAIGN_BYTES,
                actual_size=len(data),
                text=f"the 'campaign' part is larger than {MAX_CAMPAIGN_BYTES} bytes",
            )
    media = part.headers.get(hdrs.CONTENT_TYPE, "").split(";", 1)[0].strip().lower()
    is_json = media in _JSON_TYPES or media.endswith("+json") or (part.filename or "").endswith(".json")
    if is_json:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CampaignError(f"the campaign is not valid JSON: {exc}", path="campaign") from None
        if not isinstance(parsed, dict):
            raise CampaignError("a JSON campaign must be an object with a 'campaign' table", path="campaign")
        return parsed
    try:
        return bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CampaignError(
            "the campaign is not valid UTF-8; send it as UTF-8", path="campaign", line=line
        ) from None


def _recipients_filename(part: BodyPartReader) -> str:
    name = safe_filename(part.filename or "")
    if name:
        return name
    media = part.headers.get(hdrs.CONTENT_TYPE, "").split(";", 1)[0].strip().lower()
    guessed = _RECIPIENT_TYPES.get(media)
    if guessed is None:
        raise CampaignError(
            "the 'recipients' part needs a file name ending in .csv, .tsv or .jsonl (or a Content-Type "
            "of text/csv or application/x-ndjson)"
        )
    return guessed


async def _chunks(part: BodyPartReader, timeout_s: float) -> AsyncIterator[bytes]:
    # Read from the socket only as fast as the control consumes: TCP flow control then slows the
    # client down, and memory stays at one chunk whatever the upload's size.
    while chunk := await _within(timeout_s, part.read_chunk(UPLOAD_CHUNK_BYTES)):
        yield chunk


def _campaign_id(request: web.Request) -> str:
    """The campaign id of the path, or 404 for an id no submission can have.

    One rule for every campaign route, the same one the list follows: the API shows campaigns,
    not the daemon's job streams (``jobs.<template>``) nor their results journals. Those are
    followed through the results queue and /metrics.
    """
    campaign_id = request.match_info["campaign_id"]
    if not _SUBMITTED_ID_RE.fullmatch(campaign_id) or campaign_id.startswith(JOB_CAMPAIGN_PREFIX):
        raise NotFound(f"no campaign with id {campaign_id[:80]!r}")
    return campaign_id


async def _list(request: web.Request) -> web.Response:
    infos = await request.app[_CONTROL].list_campaigns()
    return _json({"campaigns": [i.as_json() for i in infos]})


async def _get(request: web.Request) -> web.Response:
    campaign_id = _campaign_id(request)
    info = await request.app[_CONTROL].get_campaign(campaign_id)
    if info is None:
        raise NotFound(f"no campaign with id {campaign_id!r}")
    return _json(info.as_json())


async def _outcomes(request: web.Request) -> web.StreamResponse:
    campaign_id = _campaign_id(request)
    control = request.app[_CONTROL]
    if await control.get_campaign(campaign_id) is None:
        raise NotFound(f"no campaign with id {campaign_id!r}")
    lines = control.outcomes(campaign_id)
    try:
        # The first line is read before the status line goes out, so an error the control raises
        # at once (unknown id, store down) still becomes a proper JSON error.
        first = await anext(lines, None)
        response = web.StreamResponse(status=200, headers={hdrs.CONTENT_TYPE: NDJSON})
        response.enable_chunked_encoding()
        await response.prepare(request)
        request[_STREAMING] = True
        buffer = bytearray()
        if first is not None:
            buffer += orjson.dumps(first, option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE)
            async for line in lines:
                buffer += orjson.dumps(line, option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE)
                if len(buffer) >= OUTCOMES_FLUSH_BYTES:
                    await response.write(bytes(buffer))
                    buffer.clear()
        if buffer:
            await response.write(bytes(buffer))
        await response.write_eof()
        return response
    finally:
        aclose = getattr(lines, "aclose", None)
        if aclose is not None:
            await aclose()


async def _report(request: web.Request) -> web.Response:
    campaign_id = _campaign_id(request)
    control = request.app[_CONTROL]
    info = await control.get_campaign(campaign_id)
    if info is None:
        raise NotFound(f"no campaign with id {campaign_id!r}")
    report = await request.app[_REPORTS].report(info, partial(control.outcomes, campaign_id, live=True))
    return _json(
        {
            "id": info.id,
            "state": info.state,
            "done": info.done,
            "total": info.total,
            "built_at": report.built_at,
            "html": report.html,
            "summary": report.summary,
        }
    )


_CAMPAIGN_ACTIONS: Final[Mapping[str, Callable[[DaemonControl, str], Awaitable[CampaignInfo]]]] = {
    "pause": lambda control, campaign_id: control.pause(campaign_id),
    "resume": lambda control, campaign_id: control.resume(campaign_id),
    "cancel": lambda control, campaign_id: control.cancel(campaign_id),
}
"""``POST /v1/campaigns/{campaign_id}/<action>``: the control call behind each action."""


async def _campaign_action(action: str, request: web.Request) -> web.Response:
    info = await _CAMPAIGN_ACTIONS[action](request.app[_CONTROL], _campaign_id(request))
    return _json(info.as_json())


# -- dead letters and the overview ---------------------------------------------------------------
async def _dead_letters(request: web.Request) -> web.Response:
    return _json(await request.app[_CONTROL].dead_letters())


async def _overview(request: web.Request) -> web.Response:
    return _json((await request.app[_CONTROL].overview()).as_json())


# -- templates -----------------------------------------------------------------------------------
async def _templates(request: web.Request) -> web.Response:
    return _json({"templates": await request.app[_CONTROL].templates()})


async def _put_template(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not TEMPLATE_NAME_RE.fullmatch(name):
        return _error(
            400, f"template name {name!r}: use 1–64 of A–Z a–z 0–9 . _ -, starting with a letter or digit"
        )
    if request.content_type != "application/json":
        return _error(415, "send the template as JSON (Content-Type: application/json)")
    raw = await _within(request.app[_READ_TIMEOUT], request.read())
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _error(400, f"the template is not valid JSON: {exc}")
    template = validate_template(body)
    await request.app[_CONTROL].register_template(name, template)
    return web.Response(status=204)


def validate_template(body: Any) -> dict[str, Any]:
    """Check the shape of a template given as JSON; returns it, or raises ``CampaignError``.

    Keys: ``from`` (required: an address string or ``{"email", "name"}``), ``subject``
    (required), ``text`` and/or ``html`` (at least one), ``headers`` (object of strings). Values
    are Jinja2 templates, so only what holds for every rendering is checked here; the daemon
    compiles them.
    """
    if not isinstance(body, dict):
        raise CampaignError("a template must be a JSON object")
    unknown = sorted(set(body) - TEMPLATE_KEYS)
    if unknown:
        raise CampaignError(f"unknown template keys {unknown}; known: {sorted(TEMPLATE_KEYS)}")
    subject = body.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        raise CampaignError("'subject' is required: a non-empty string")
    if "\n" in subject or "\r" in subject:
        raise CampaignError("'subject' must be one line")
    for key in ("text", "html"):
        if key in body and not isinstance(body[key], str):
            raise CampaignError(f"'{key}' must be a string")
    if not any(isinstance(body.get(k), str) and body[k].strip() for k in ("text", "html")):
        raise CampaignError("a template needs a 'text' or an 'html' body (or both)")
    if body.get("from") is None:
        # Every email needs a sender: a template without one could never send anything.
        raise CampaignError(
            '"from" is required: the sender address, e.g. '
            '{"email": "news@example.com", "name": "Example News"}'
        )
    _check_from(body["from"])
    unsubscribe = body.get("unsubscribe", {})
    if not isinstance(unsubscribe, dict) or not all(isinstance(v, str) for v in unsubscribe.values()):
        raise CampaignError(""""unsubscribe" must be an object like {"url": "https://mail.example.com"}""")
    headers = body.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise CampaignError("'headers' must be an object of strings")
    for key, value in headers.items():
        if key.strip().lower() in RESERVED_HEADERS:
            raise CampaignError(f"header {key!r} is reserved by bulksend")
        problem = check_header(key, value)
        if problem is not None:
            raise CampaignError(problem)
    return body


def _check_from(value: Any) -> None:
    if isinstance(value, dict):
        if set(value) - {"email", "name"} or not isinstance(value.get("email"), str):
            raise CampaignError('\'from\' must be an address or {"email": …, "name": …}')
        if "name" in value and not isinstance(value["name"], str):
            raise CampaignError("'from.name' must be a string")
        address = value["email"]
    elif isinstance(value, str):
        address = value.rsplit("<", 1)[-1].rstrip(">").strip() if "<" in value else value
    else:
        raise CampaignError('\'from\' must be an address or {"email": …, "name": …}')
    if "{{" in address or "{%" in address:
        return  # rendered per recipient: checked when sending
    problem = check_address(address)
    if problem is not None:
        raise CampaignError(f"'from': {problem}")
