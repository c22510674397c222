"""Typed async client of the TEM email endpoints (send, get, list, cancel, statistics) and webhooks.

The client is a thin, fast boundary: it encodes requests, maps every failure to the bulksend error
tree exactly once, and decodes answers into the typed models. It does **not** retry and does
**not** rate-limit: the pipeline wraps calls with one shared limiter and a retry policy keyed on
``error.transient`` (and, for sends, on ``sent`` — a send that may have reached TEM must be
reconciled, never blindly retried, because the API has no idempotency key).

Failures, mapped here and nowhere else:

- non-2xx → :func:`bulksend.tem.errors.error_from_response` (typed :class:`TemApiError` subclasses);
- never connected (refused, DNS, TLS handshake, connect timeout) → :class:`TemConnectionError` /
  :class:`TemTimeoutError` with ``sent=False``;
- dropped, reset or truncated after the request was written → :class:`TemConnectionError`
  with ``sent=True`` (ambiguous);
- no complete answer within ``timeout_s`` → :class:`TemTimeoutError` with ``sent=True``;
- 2xx whose body is not the expected JSON → :class:`TemProtocolError` (transient, ``sent=True``).

One ``aiohttp.ClientSession`` per process is the rule: build it with :func:`create_session` and
pass it to every client (the client then leaves it open), or let a client own a private one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal, NamedTuple, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import aiohttp
import orjson
import structlog
from yarl import URL

from bulksend import __version__
from bulksend.errors import TemConnectionError, TemError, TemProtocolError, TemTimeoutError
from bulksend.lifecycle import OpenClose
from bulksend.tem.config import TemSettings
from bulksend.tem.deliverability import (
    Blocklist,
    BlocklistOrderBy,
    BlocklistType,
    Domain,
    DomainStatus,
    DomainVerification,
    ListBlocklistsPage,
    ListDomainsPage,
    ProjectConsumption,
)
from bulksend.tem.errors import error_from_response
from bulksend.tem.models import (
    CreateEmailRequest,
    Email,
    ListEmailsPage,
    ListEmailsQuery,
    Statistics,
    format_rfc3339,
    parse_rfc3339,
)
from bulksend.tem.webhooks import Webhook, WebhookEventRecord

__all__ = [
    "MAX_BLOCKLIST_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "USER_AGENT",
    "EndpointKind",
    "ResponseObserver",
    "SentEmail",
    "TemClient",
    "TemProtocolError",
    "create_session",
]

log = structlog.get_logger("bulksend.tem")
_T = TypeVar("_T")

USER_AGENT: Final = f"bulksend/{__version__}"
MAX_PAGE_SIZE: Final = 1000
MAX_BLOCKLIST_PAGE_SIZE: Final = 100
"""``GET /blocklists`` pages hold at most 100 entries (emails and domains: 1000)."""
_MAX_RAW = 4096

EndpointKind = Literal[
    "send", "get", "list", "cancel", "statistics", "webhook", "blocklists", "domains", "consumption"
]
ResponseObserver = Callable[[str, int, float], None]
"""``(endpoint kind, HTTP status or 0 for a transport error, elapsed seconds)``, after every request."""


class _Payload(TypedDict, total=False):
    """What :meth:`TemClient._object` passes on to :meth:`TemClient._request` besides method and path."""

    params: list[tuple[str, str]] | None
    body: bytes | None


class SentEmail(NamedTuple):
    """What a send answers for one recipient, as much as a sender records (see :meth:`TemClient.submit`)."""

    id: str
    mail_rcpt: str
    message_id: str
    created_at: datetime | None


def _orjson_str(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def create_session(
    *,
    limit: int = 0,
    limit_per_host: int = 0,
    timeout_s: float | None = 30.0,
    ttl_dns_cache_s: int = 300,
    keepalive_timeout_s: float = 30.0,
) -> aiohttp.ClientSession:
    """A ``ClientSession`` tuned for TEM, to share between every client of the process.

    ``limit``/``limit_per_host`` cap open connections (0 = no cap: concurrency is bounded by the
    caller's worker pool and limiter, not by the connector). Call it from a running event loop and
    close it (``await session.close()``) when the process is done.
    """
    connector = aiohttp.TCPConnector(
        limit=limit,
        limit_per_host=limit_per_host,
        ttl_dns_cache=ttl_dns_cache_s,
        keepalive_timeout=keepalive_timeout_s,
    )
    return aiohttp.ClientSession(
        connector=connector,
        json_serialize=_orjson_str,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        # Authentication travels per request, so a shared session can serve several keys.
        headers={"User-Agent": USER_AGENT},
        # TEM sets no cookies: a real jar would parse and filter on every request for nothing.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class TemClient(OpenClose):
    """Async client of the TEM email endpoints for one set of :class:`TemSettings`.

    Use it as ``async with TemClient(settings) as tem: ...``. With ``session=`` it shares an existing
    ``aiohttp.ClientSession`` and never closes it (``limit_per_host`` is then the session's business);
    without, it creates one on entry (connector with ``limit_per_host``) and closes it on exit.

    ``on_response(kind, status, elapsed_s)`` is called after every request (status 0 for a
    transport failure) so callers can count and adapt; ``clock`` (seconds, monotonic) measures
    ``elapsed_s``. The client never retries and never rate-limits: that is the caller's policy.
    """

    def __init__(
        self,
        settings: TemSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
        limit_per_host: int = 0,
        on_response: ResponseObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if limit_per_host < 0:
            raise ValueError(f"limit_per_host must be >= 0, got {limit_per_host}")
        self._settings = settings
        self._session = session
        self._owns_session = session is None
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._limit_per_host = limit_per_host
        self._on_response = on_response
        self._clock = clock
        self._base_url = settings.base_url
        # Parsed once: a URL string would be parsed again on every send.
        self._send_url = URL(self._base_url + "/emails")
        # Built once: the hot path must not rebuild headers, and this is the only place the
        # secret is revealed. Never log or format these dicts.
        self._headers: dict[str, str] = {
            "X-Auth-Token": settings.secret_key.reveal(),
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }
        self._json_headers: dict[str, str] = {**self._headers, "Content-Type": "application/json"}

    def __repr__(self) -> str:
        return (
            f"TemClient(base_url={self._base_url!r}, project_id={self._settings.project_id!r}, "
            f"timeout_s={self._timeout_s})"
        )

    __str__ = __repr__

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def settings(self) -> TemSettings:
        """The settings this client talks with."""
        return self._settings

    @property
    def session(self) -> aiohttp.ClientSession:
        """The underlying session (shared or owned). Raises RuntimeError before ``open()``."""
        if self._session is None:
            raise RuntimeError("TemClient is not open: use 'async with TemClient(...)' or await open()")
        return self._session

    async def open(self) -> None:
        """Create the private session if none was given (idempotent)."""
        if self._session is None or (self._owns_session and self._session.closed):
            self._session = create_session(limit_per_host=self._limit_per_host, timeout_s=self._timeout_s)
            self._owns_session = True

    async def close(self) -> None:
        """Close the session if this client created it; a shared session is left open."""
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- endpoints ---------------------------------------------------------------------------------

    async def send_email(self, request: CreateEmailRequest) -> list[Email]:
        """``POST /emails``: one :class:`Email` per recipient (to, cc, bcc).

        An empty ``request.project_id`` is filled with the settings' project id.
        """
        body = orjson.dumps(request.to_json(default_project_id=self._settings.project_id))
        return await self.send_email_raw(body)

    async def send_email_raw(self, body: bytes) -> list[Email]:
        """``POST /emails`` with an already-encoded JSON body, sent as is.

        The body must carry its own ``project_id``: nothing is filled in here.
        """
        emails = await self._post_send(body)
        return [Email.from_json(e) for e in emails]

    async def submit(self, body: bytes) -> list[SentEmail]:
        """Like :meth:`send_email_raw`, answering only what a sender records per recipient.

        The hot path of a campaign: one send per recipient, so the full :class:`Email` model
        (every timestamp, enum and flag decoded) would be built only to be thrown away.
        """
        emails = await self._post_send(body)
        out: list[SentEmail] = []
        for e in emails:
            created = e.get("created_at")
            try:
                created_at = parse_rfc3339(created) if isinstance(created, str) and created else None
            except ValueError:
                created_at = None  # the caller falls back to its own clock
            out.append(
                SentEmail(
                    id=str(e["id"]),
                    mail_rcpt=str(e.get("mail_rcpt") or ""),
                    message_id=str(e.get("message_id") or ""),
                    created_at=created_at,
                )
            )
        return out

    async def _post_send(self, body: bytes) -> list[Mapping[str, Any]]:
        data, status, _ = await self._request("send", "POST", "/emails", body=body, url=self._send_url)
        emails = data.get("emails") if isinstance(data, dict) else None
        # A send has at least one recipient, so an empty list is as wrong as a missing one.
        if (
            not isinstance(emails, list)
            or not emails
            or not all(isinstance(e, dict) and e.get("id") for e in emails)
        ):
            raise self._protocol_error("send", status, "a send answer without an 'emails' list of ids", data)
        return emails

    async def get_email(self, email_id: str) -> Email:
        """``GET /emails/{email_id}``."""
        data, status, _ = await self._request("get", "GET", _email_path(email_id))
        return self._resource_or_error("get", status, data, "an email", Email.from_json)

    async def cancel_email(self, email_id: str) -> Email:
        """``POST /emails/{email_id}/cancel``: works only while the email is ``new``.

        Later, TEM answers a 4xx (raised as a :class:`TemPermanentError` subclass): treat any 4xx
        as "not cancellable" and re-read the email.
        """
        data, status, _ = await self._request("cancel", "POST", _email_path(email_id) + "/cancel", body=b"{}")
        return self._resource_or_error("cancel", status, data, "an email", Email.from_json)

    async def list_emails(
        self,
        query: ListEmailsQuery | None = None,
        *,
        page: int = 1,
        page_size: int = 100,
    ) -> ListEmailsPage:
        """``GET /emails``: one page (``page`` from 1, ``page_size`` 1..1000).

        ``query.project_id`` None filters on the settings' project; ``""`` lists every project.
        ``total_count`` comes from the body, else from an ``X-Total-Count`` header.
        """
        data, headers = await self._list(query, page=page, page_size=page_size)
        result = ListEmailsPage.from_json(data)
        if "total_count" not in data:
            header = headers.get("X-Total-Count", "")
            if header.strip().isdigit():
                result = ListEmailsPage(total_count=int(header), emails=result.emails)
        return result

    async def list_emails_raw(
        self,
        query: ListEmailsQuery | None = None,
        *,
        page: int = 1,
        page_size: int = 100,
    ) -> list[Mapping[str, Any]]:
        """Like :meth:`list_emails` but returns the page's emails as decoded JSON objects.

        For the tracker's hot path: most emails of a page are already known, and building typed
        :class:`Email` objects (timestamps and all) for them would be wasted work.
        """
        data, _ = await self._list(query, page=page, page_size=page_size)
        # JSON objects decode to dict (orjson): an exact test, not an ABC check per email.
        return [e for e in data.get("emails") or () if isinstance(e, dict)]

    async def _list(
        self, query: ListEmailsQuery | None, *, page: int, page_size: int
    ) -> tuple[Mapping[str, Any], Mapping[str, str]]:
        if page < 1:
            raise ValueError(f"page must be >= 1, got {page}")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be in 1..{MAX_PAGE_SIZE}, got {page_size}")
        query = query or ListEmailsQuery()
        params = query.to_params()
        if query.project_id is None:
            params.insert(0, ("project_id", self._settings.project_id))
        params += [("page", str(page)), ("page_size", str(page_size))]
        data, status, headers = await self._request("list", "GET", "/emails", params=params)
        if not isinstance(data, Mapping) or not isinstance(data.get("emails", []), list):
            raise self._protocol_error(
                "list", status, "a list answer that is not an object of 'emails'", data
            )
        return data, headers

    async def iter_emails(
        self,
        query: ListEmailsQuery | None = None,
        *,
        page_size: int = MAX_PAGE_SIZE,
    ) -> AsyncIterator[Email]:
        """Every email matching ``query``, page after page; stops after the first short page.

        Offset pagination: for a stable walk over a growing set, bound the query with ``until`` and
        sort ascending (``created_at_asc``).
        """

        async def fetch(page: int) -> Sequence[Email]:
            return (await self.list_emails(query, page=page, page_size=page_size)).emails

        async for email in _walk_pages(fetch, page_size):
            yield email

    async def get_statistics(
        self,
        *,
        project_id: str | None = None,
        domain_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        mail_from: str | None = None,
    ) -> Statistics:
        """``GET /statistics``: counts by status.

        ``project_id`` None filters on the settings' project; ``""`` counts every project.
        """
        params: list[tuple[str, str]] = []
        project = self._settings.project_id if project_id is None else project_id
        if project:
            params.append(("project_id", project))
        if domain_id:
            params.append(("domain_id", domain_id))
        if since is not None:
            params.append(("since", format_rfc3339(since)))
        if until is not None:
            params.append(("until", format_rfc3339(until)))
        if mail_from:
            params.append(("mail_from", mail_from))
        data, status, _ = await self._request("statistics", "GET", "/statistics", params=params)
        if not isinstance(data, Mapping):
            raise self._protocol_error(
                "statistics", status, "a statistics answer that is not an object", data
            )
        return Statistics.from_json(data)

    # -- webhooks ----------------------------------------------------------------------------------

    async def list_webhooks(self, *, domain_id: str | None = None, page_size: int = 100) -> list[Webhook]:
        """``GET /webhooks`` of the settings' project (every page), optionally of one domain."""
        params = [("project_id", self._settings.project_id)]
        if domain_id:
            params.append(("domain_id", domain_id))
        return [
            Webhook.from_json(w)
            for w in await self._pages("/webhooks", "webhooks", params, page_size=page_size)
        ]

    async def create_webhook(
        self, *, domain_id: str, name: str, event_types: Sequence[str], sns_arn: str
    ) -> Webhook:
        """``POST /webhooks``: TEM publishes the domain's ``event_types`` to the topic ``sns_arn``."""
        body = {
            "domain_id": domain_id,
            "project_id": self._settings.project_id,
            "name": name,
            "event_types": list(event_types),
            "sns_arn": sns_arn,
        }
        data, status, _ = await self._request("webhook", "POST", "/webhooks", body=orjson.dumps(body))
        return self._resource_or_error("webhook", status, data, "a webhook", Webhook.from_json)

    async def update_webhook(
        self,
        webhook_id: str,
        *,
        name: str | None = None,
        event_types: Sequence[str] | None = None,
        sns_arn: str | None = None,
    ) -> Webhook:
        """``PATCH /webhooks/{id}``: change what is given, keep the rest."""
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if event_types is not None:
            body["event_types"] = list(event_types)
        if sns_arn is not None:
            body["sns_arn"] = sns_arn
        path = _webhook_path(webhook_id)
        data, status, _ = await self._request("webhook", "PATCH", path, body=orjson.dumps(body))
        return self._resource_or_error("webhook", status, data, "a webhook", Webhook.from_json)

    async def get_webhook(self, webhook_id: str) -> Webhook:
        """``GET /webhooks/{id}``."""
        data, status, _ = await self._request("webhook", "GET", _webhook_path(webhook_id))
        return self._resource_or_error("webhook", status, data, "a webhook", Webhook.from_json)

    async def delete_webhook(self, webhook_id: str) -> None:
        """``DELETE /webhooks/{id}`` (permanent)."""
        await self._request("webhook", "DELETE", _webhook_path(webhook_id), allow_empty=True)

    async def list_webhook_events(
        self,
        webhook_id: str,
        *,
        email_id: str | None = None,
        event_types: Sequence[str] = (),
        page: int = 1,
        page_size: int = 100,
    ) -> list[WebhookEventRecord]:
        """One page of ``GET /webhooks/{id}/events`` (newest first), optionally of one email."""
        params: list[tuple[str, str]] = [("page", str(page)), ("page_size", str(page_size))]
        if email_id:
            params.append(("email_id", email_id))
        params.extend(("event_types", t) for t in event_types)
        path = _webhook_path(webhook_id) + "/events"
        data, status, _ = await self._request("webhook", "GET", path, params=params)
        events = data.get("webhook_events") if isinstance(data, Mapping) else None
        if not isinstance(events, list):
            raise self._protocol_error("webhook", status, "an answer without a 'webhook_events' list", data)
        return [WebhookEventRecord.from_json(e) for e in events if isinstance(e, Mapping)]

    async def _pages(
        self, path: str, key: str, params: list[tuple[str, str]], *, page_size: int
    ) -> list[Mapping[str, Any]]:
        """Every item under ``key`` of a paged ``GET path``; stops after the first short page."""
        items: list[Mapping[str, Any]] = []
        page = 1
        while True:
            query = [*params, ("page", str(page)), ("page_size", str(page_size))]
            data, status, _ = await self._request("webhook", "GET", path, params=query)
            found = data.get(key) if isinstance(data, Mapping) else None
            if not isinstance(found, list):
                raise self._protocol_error("webhook", status, f"an answer without a {key!r} list", data)
            items.extend(item for item in found if isinstance(item, Mapping))
            if len(found) < page_size:
                return items
            page += 1

    # -- deliverability endpoints ------------------------------------------------------------------

    async def list_blocklists(
        self,
        domain_id: str,
        *,
        email: str | None = None,
        type: BlocklistType | None = None,
        custom: bool | None = None,
        order_by: BlocklistOrderBy | None = None,
        page: int = 1,
        page_size: int = MAX_BLOCKLIST_PAGE_SIZE,
    ) -> ListBlocklistsPage:
        """``GET /blocklists``: one page of a domain's blocked addresses (``page_size`` 1..100)."""
        params = [("domain_id", domain_id)]
        if email:
            params.append(("email", email))
        if type is not None:
            params.append(("type", type.value))
        if custom is not None:
            params.append(("custom", "true" if custom else "false"))
        if order_by is not None:
            params.append(("order_by", order_by.value))
        params += _page_params(page, page_size, MAX_BLOCKLIST_PAGE_SIZE)
        data = await self._object("blocklists", "GET", "/blocklists", params=params, listed="blocklists")
        return ListBlocklistsPage.from_json(data)

    async def iter_blocklists(
        self,
        domain_id: str,
        *,
        type: BlocklistType | None = None,
        custom: bool | None = None,
        page_size: int = MAX_BLOCKLIST_PAGE_SIZE,
    ) -> AsyncIterator[Blocklist]:
        """Every blocklist entry of a domain, oldest first, page after page."""

        async def fetch(page: int) -> Sequence[Blocklist]:
            order = BlocklistOrderBy.CREATED_AT_ASC
            return (
                await self.list_blocklists(
                    domain_id, type=type, custom=custom, order_by=order, page=page, page_size=page_size
                )
            ).blocklists

        async for entry in _walk_pages(fetch, page_size):
            yield entry

    async def create_blocklists(
        self, domain_id: str, emails: list[str], *, type: BlocklistType, reason: str = ""
    ) -> list[Blocklist]:
        """``POST /blocklists``: block ``emails`` for the domain (custom blocklists: Scale plan only).

        On the Essential plan TEM refuses with a 4xx (raised as a :class:`TemPermanentError`).
        """
        body = orjson.dumps({"domain_id": domain_id, "emails": emails, "type": type.value, "reason": reason})
        data = await self._object("blocklists", "POST", "/blocklists", body=body, listed="blocklists")
        return [Blocklist.from_json(b) for b in data.get("blocklists") or () if isinstance(b, Mapping)]

    async def list_domains(
        self,
        *,
        project_id: str | None = None,
        name: str | None = None,
        statuses: tuple[DomainStatus, ...] = (),
        page: int = 1,
        page_size: int = 100,
    ) -> ListDomainsPage:
        """``GET /domains``: one page (``page_size`` 1..1000).

        ``project_id`` None lists the settings' project; ``""`` every project of the key.
        """
        project = self._settings.project_id if project_id is None else project_id
        params = [("project_id", project)] if project else []
        if name:
            params.append(("name", name))
        params.extend(("status", s.value) for s in statuses)
        params += _page_params(page, page_size, MAX_PAGE_SIZE)
        data = await self._object("domains", "GET", "/domains", params=params, listed="domains")
        return ListDomainsPage.from_json(data)

    async def iter_domains(
        self, *, project_id: str | None = None, name: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Domain]:
        """Every domain of the project (see :meth:`list_domains`), page after page."""

        async def fetch(page: int) -> Sequence[Domain]:
            return (
                await self.list_domains(project_id=project_id, name=name, page=page, page_size=page_size)
            ).domains

        async for domain in _walk_pages(fetch, page_size):
            yield domain

    async def find_domain(self, name: str, *, project_id: str | None = None) -> Domain | None:
        """The project's domain called ``name`` (case-insensitive), or None when it has none."""
        wanted = name.lower()
        async for domain in self.iter_domains(project_id=project_id, name=name):
            if domain.name.lower() == wanted:
                return domain
        return None

    async def get_domain(self, domain_id: str) -> Domain:
        """``GET /domains/{domain_id}``: status, reputation and the records to publish."""
        data = await self._object("domains", "GET", _domain_path(domain_id))
        return Domain.from_json(data)

    async def get_domain_verification(self, domain_id: str) -> DomainVerification:
        """``GET /domains/{domain_id}/verification``: the last SPF, DKIM, MX and DMARC checks."""
        data = await self._object("domains", "GET", _domain_path(domain_id) + "/verification")
        return DomainVerification.from_json(data)

    async def get_project_consumption(self, project_id: str | None = None) -> ProjectConsumption:
        """``GET /project-consumption``: the project's use, emails sent this month included."""
        params = [("project_id", project_id or self._settings.project_id)]
        data = await self._object("consumption", "GET", "/project-consumption", params=params)
        return ProjectConsumption.from_json(data)

    async def _object(
        self,
        kind: EndpointKind,
        method: str,
        path: str,
        *,
        listed: str | None = None,
        **payload: Unpack[_Payload],
    ) -> Mapping[str, Any]:
        """One request whose answer must be a JSON object (holding a list under ``listed``)."""
        data, status, _ = await self._request(kind, method, path, **payload)
        if not isinstance(data, Mapping) or (
            listed is not None and not isinstance(data.get(listed, []), list)
        ):
            shape = f"an object of '{listed}'" if listed else "an object"
            raise self._protocol_error(kind, status, f"an answer that is not {shape}", data)
        return data

    # -- plumbing ----------------------------------------------------------------------------------

    def _resource_or_error(
        self, kind: EndpointKind, status: int, data: Any, what: str, parse: Callable[[Mapping[str, Any]], _T]
    ) -> _T:
        """``parse(data)`` when ``data`` is an object with an ``id``, else a protocol error: not ``what``."""
        if not isinstance(data, Mapping) or not data.get("id"):
            raise self._protocol_error(kind, status, f"an answer that is not {what} object", data)
        return parse(data)

    def _protocol_error(self, kind: EndpointKind, status: int, what: str, data: Any) -> TemProtocolError:
        raw = orjson.dumps(data)[:_MAX_RAW].decode("utf-8", "replace") if data is not None else ""
        err = TemProtocolError(status, f"{kind}: TEM sent {what}", type="protocol_error", raw_body=raw)
        log.warning("tem.protocol_error", kind=kind, status=status, reason=what)
        return err

    async def _request(
        self,
        kind: EndpointKind,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        url: URL | None = None,
        allow_empty: bool = False,
    ) -> tuple[Any, int, Mapping[str, str]]:
        """Send one request; return (decoded JSON, HTTP status, response headers) or raise a TemError.

        ``url``, when given, is ``path`` already joined to the base URL and parsed. With
        ``allow_empty``, an empty body (a ``204``) answers None.
        """
        session = self.session
        started = self._clock()
        status = 0
        payload = b""
        resp_headers: Mapping[str, str] = {}
        error: TemError | None = None
        cause: BaseException | None = None
        what = f"{kind} ({method} {path})"
        try:
            async with session.request(
                method,
                url if url is not None else self._base_url + path,
                params=params,
                data=body,
                headers=self._json_headers if body is not None else self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                resp_headers = resp.headers
                payload = await resp.read()
        # Order matters: several aiohttp classes inherit from both a timeout and a connection error.
        except aiohttp.ConnectionTimeoutError as exc:
            error, cause = (
                TemTimeoutError(f"{what}: could not connect within {self._timeout_s} s", sent=False),
                exc,
            )
        except TimeoutError as exc:  # asyncio's total timeout and aiohttp's socket read timeout
            error, cause = (
                TemTimeoutError(
                    f"{what}: no answer within {self._timeout_s} s; TEM may have processed the request",
                    sent=True,
                ),
                exc,
            )
        except aiohttp.ClientConnectorError as exc:
            # Never connected: the request did not leave, a retry cannot duplicate anything.
            error, cause = TemConnectionError(f"{what}: cannot connect to TEM: {exc}", sent=False), exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            # Disconnected, reset or truncated once the request was (maybe) written: ambiguous.
            error, cause = (
                TemConnectionError(
                    f"{what}: connection lost ({type(exc).__name__}: {exc}); "
                    "TEM may have processed the request",
                    sent=True,
                ),
                exc,
            )
        except aiohttp.ClientResponseError as exc:
            # Malformed HTTP answer. The aiohttp error is not chained: its request_info holds the
            # request headers (X-Auth-Token included) and shows them in its repr.
            error = TemConnectionError(
                f"{what}: invalid HTTP answer from TEM (status {exc.status})", sent=True
            )
        except aiohttp.ClientError as exc:
            error, cause = TemConnectionError(f"{what}: {type(exc).__name__}: {exc}", sent=True), exc

        if error is not None:
            status = 0
        elapsed_s = self._clock() - started
        self._notify(kind, status, elapsed_s)
        if error is not None:
            log.debug(
                "tem.request_failed",
                kind=kind,
                status=0,
                error=type(error).__name__,
                sent=getattr(error, "sent", True),
                elapsed_s=elapsed_s,
            )
            # Raised outside the except blocks so that __context__ does not keep the aiohttp error.
            raise error from cause

        if not 200 <= status < 300:
            api_error = error_from_response(status, payload, resp_headers)
            log.debug(
                "tem.request_failed",
                kind=kind,
                status=status,
                error=type(api_error).__name__,
                type=api_error.type,
                elapsed_s=elapsed_s,
            )
            raise api_error
        if allow_empty and not payload.strip():
            return None, status, resp_headers
        try:
            return orjson.loads(payload), status, resp_headers
        except orjson.JSONDecodeError:
            err = TemProtocolError(
                status,
                f"{what}: TEM answered {status} with a body that is not JSON",
                type="protocol_error",
                raw_body=payload[:_MAX_RAW].decode("utf-8", "replace"),
            )
            log.warning("tem.protocol_error", kind=kind, status=status, reason="body is not JSON")
        raise err

    def _notify(self, kind: str, status: int, elapsed_s: float) -> None:
        if self._on_response is None:
            return
        try:
            self._on_response(kind, status, elapsed_s)
        except Exception:
            # An observer feeds metrics and adaptive limits; its bug must not turn a successful send
            # into a failed one (which the pipeline would then retry: a duplicate email).
            log.exception("tem.observer_failed", kind=kind)


def _webhook_path(webhook_id: str) -> str:
    if not webhook_id:
        raise ValueError("webhook_id must not be empty")
    return "/webhooks/" + quote(webhook_id, safe="")


async def _walk_pages(fetch: Callable[[int], Awaitable[Sequence[_T]]], page_size: int) -> AsyncIterator[_T]:
    """Every item of ``fetch(1)``, ``fetch(2)``, …; stops after the first page shorter than ``page_size``."""
    page = 1
    while True:
        items = await fetch(page)
        for item in items:
            yield item
        if len(items) < page_size:
            return
        page += 1


def _page_params(page: int, page_size: int, largest: int) -> list[tuple[str, str]]:
    if page < 1:
        raise ValueError(f"page must be >= 1, got {page}")
    if not 1 <= page_size <= largest:
        raise ValueError(f"page_size must be in 1..{largest}, got {page_size}")
    return [("page", str(page)), ("page_size", str(page_size))]


def _domain_path(domain_id: str) -> str:
    if not domain_id:
        raise ValueError("domain_id must not be empty")
    return "/domains/" + quote(domain_id, safe="")


def _email_path(email_id: str) -> str:
    if not email_id:
        raise ValueError("email_id must not be empty")
    # Quote everything: an id is data, never extra path segments or a query.
    return "/emails/" + quote(email_id, safe="")
