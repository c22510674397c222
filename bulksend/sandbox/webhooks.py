"""The sandbox's TEM webhooks: the ``/webhooks`` resource, its event log, and the events it emits.

The resource follows the spec: create (``domain_id``, ``project_id``, ``name``, ``event_types``,
``sns_arn``), list (filters, ``order_by``, pages of 1..100), get, update (``PATCH``), delete
(``204``) and ``GET /webhooks/{id}/events``. A sandbox domain's id is derived from its name
(:func:`domain_id_of`), since the sandbox has no domain resource.

Every email whose sender's domain has a webhook gets its lifecycle events scheduled when it is
created (:func:`~bulksend.sandbox.state.lifecycle_events`); the sandbox emits each when its time
comes, to every webhook of the domain that subscribed to its type, and logs it. Where it goes is
the sandbox's configuration: published to the webhook's ``sns_arn`` through an SNS API
(``webhook_sns_url``: moto, or a real Topics and Events), or POSTed as a signed SNS envelope to
``webhook_http_url``, as a topic with one HTTP subscription would (a subscription confirmation
first, then the notifications once it is confirmed).
"""

from __future__ import annotations

import heapq
import itertools
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from bulksend.tem.webhooks import WebhookEventType

from .config import UUID_RE, check_uuid
from .state import EmailStore, format_timestamp, lifecycle_events

__all__ = [
    "DEFAULT_ORGANIZATION_ID",
    "MAX_WEBHOOKS_PER_DOMAIN",
    "Emission",
    "WebhookBook",
    "domain_id_of",
]

DEFAULT_ORGANIZATION_ID: Final = "11111111-2222-4333-8444-000000000000"
MAX_WEBHOOKS_PER_DOMAIN: Final = 10
MAX_LOGGED_EVENTS: Final = 100_000
"""Most events the log keeps (the oldest are forgotten first)."""
_PAGE_SIZE_MAX = 100
_DEFAULT_PAGE_SIZE = 10
_EVENT_TYPES: Final = frozenset(t.value for t in WebhookEventType if t is not WebhookEventType.UNKNOWN_TYPE)
_EVENT_STATUSES: Final = frozenset({"unknown_status", "sending", "sent", "failed"})
_ARN = re.compile(r"^arn:[a-z-]{1,20}:sns:[a-z0-9-]{1,32}:[A-Za-z0-9_.:-]{1,100}:[A-Za-z0-9_.-]{1,256}$")
_NAME_MAX = 255

Headers = tuple[tuple[str, str], ...]
Answer = tuple[int, Any]
"""(HTTP status, JSON body or None for an empty answer)."""


def domain_id_of(domain: str) -> str:
    """The sandbox's id of a sending domain: a UUID derived from its (lower-cased) name."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, domain.strip().lower()))


def _invalid(errors: list[tuple[str, str]]) -> Answer:
    details = [{"argument_name": n, "reason": "constraint", "help_message": h} for n, h in errors]
    return 400, {"details": details, "message": "invalid argument(s)", "type": "invalid_arguments"}


def _not_found(resource_id: str) -> Answer:
    return 404, {
        "message": "resource is not found",
        "resource": "webhook",
        "resource_id": resource_id,
        "type": "not_found",
    }


@dataclass(order=True, slots=True)
class _Due:
    at: float
    seq: int
    position: int = field(compare=False)
    kind: str = field(compare=False)
    tries: int = field(compare=False)
    code: int = field(compare=False)
    text: str = field(compare=False)
    headers: Headers = field(compare=False)
    domain: str = field(compare=False)


@dataclass(slots=True)
class Emission:
    """One event to hand to one webhook's topic; ``record`` is its entry in the event log."""

    sns_arn: str
    payload: bytes
    record: dict[str, Any]


class WebhookBook:
    """The webhooks, their event log and the events scheduled for emission. One event loop owns it."""

    def __init__(self, *, default_project_id: str, clock: Callable[[], float]) -> None:
        self.default_project_id = default_project_id
        self._clock = clock
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.log: deque[dict[str, Any]] = deque(maxlen=MAX_LOGGED_EVENTS)
        self._due: list[_Due] = []
        self._seq = itertools.count()
        self._watched: dict[str, int] = {}
        """Domain id → number of webhooks on it."""

    # -- the resource ------------------------------------------------------------------------------
    def create(self, body: Any) -> Answer:
        if not isinstance(body, dict):
            return _invalid([("body", "the request body must be a JSON object")])
        errors: list[tuple[str, str]] = []
        domain_id = body.get("domain_id")
        check_uuid(domain_id, "domain_id", "domain_id must be a UUID", errors)
        project_id = body.get("project_id") or self.default_project_id
        check_uuid(project_id, "project_id", "project_id must be a UUID", errors)
        for key in ("name", "event_types", "sns_arn"):
            if body.get(key) is None:
                errors.append((key, f"{key} is required"))
        self._check_fields(body, errors)
        if errors:
            return _invalid(errors)
        if self._watched.get(str(domain_id).lower(), 0) >= MAX_WEBHOOKS_PER_DOMAIN:
            return 403, {
                "details": [{"resource": "webhooks_per_domain", "quota": MAX_WEBHOOKS_PER_DOMAIN}],
                "message": "quota(s) exceeded for this resource",
                "type": "quotas_exceeded",
            }
        now = format_timestamp(self._clock())
        webhook = {
            "id": str(uuid.uuid4()),
            "domain_id": str(domain_id).lower(),
            "organization_id": DEFAULT_ORGANIZATION_ID,
            "project_id": project_id,
            "name": body["name"],
            "event_types": list(dict.fromkeys(body["event_types"])),
            "sns_arn": body["sns_arn"],
            "created_at": now,
            "updated_at": now,
        }
        self.webhooks[webhook["id"]] = webhook
        self._watched[webhook["domain_id"]] = self._watched.get(webhook["domain_id"], 0) + 1
        return 200, webhook

    @staticmethod
    def _check_fields(body: Mapping[str, Any], errors: list[tuple[str, str]]) -> None:
        """Check the fields create and update share, when they are given."""
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= _NAME_MAX):
            errors.append(("name", f"name must be a string of 1 to {_NAME_MAX} characters"))
        types = body.get("event_types")
        if types is not None and (
            not isinstance(types, list) or not types or not all(t in _EVENT_TYPES for t in types)
        ):
            known = ", ".join(sorted(_EVENT_TYPES))
            errors.append(("event_types", f"event_types must be a non-empty list of: {known}"))
        arn = body.get("sns_arn")
        if arn is not None and (not isinstance(arn, str) or _ARN.match(arn) is None):
            errors.append(("sns_arn", "sns_arn must be a topic ARN (arn:scw:sns:<region>:<project>:<topic>)"))

    def get(self, webhook_id: str) -> Answer:
        webhook = self.webhooks.get(webhook_id.lower())
        return (200, webhook) if webhook is not None else _not_found(webhook_id)

    def update(self, webhook_id: str, body: Any) -> Answer:
        webhook = self.webhooks.get(webhook_id.lower())
        if webhook is None:
            return _not_found(webhook_id)
        if not isinstance(body, dict):
            return _invalid([("body", "the request body must be a JSON object")])
        errors: list[tuple[str, str]] = []
        self._check_fields(body, errors)
        if errors:
            return _invalid(errors)
        for key in ("name", "sns_arn"):
            if body.get(key) is not None:
                webhook[key] = body[key]
        if body.get("event_types") is not None:
            webhook["event_types"] = list(dict.fromkeys(body["event_types"]))
        webhook["updated_at"] = format_timestamp(self._clock())
        return 200, webhook

    def delete(self, webhook_id: str) -> Answer:
        webhook = self.webhooks.pop(webhook_id.lower(), None)
        if webhook is None:
            return _not_found(webhook_id)
        self._watched[webhook["domain_id"]] -= 1
        return 204, None

    def find(self, query: Any) -> Answer:
        errors: list[tuple[str, str]] = []
        page, page_size, order_by = _paging(query, errors)
        filters = _uuid_filters(query, ("project_id", "organization_id", "domain_id"), errors)
        if errors:
            return _invalid(errors)
        found = [w for w in self.webhooks.values() if all(w[k] == v for k, v in filters.items())]
        return 200, {"total_count": len(found), "webhooks": _page(found, order_by, page, page_size)}

    def events(self, webhook_id: str, query: Any) -> Answer:
        if webhook_id.lower() not in self.webhooks:
            return _not_found(webhook_id)
        errors: list[tuple[str, str]] = []
        page, page_size, order_by = _paging(query, errors)
        filters = _uuid_filters(query, ("project_id", "organization_id", "domain_id", "email_id"), errors)
        types = query.getall("event_types", [])
        statuses = query.getall("statuses", [])
        if any(t not in _EVENT_TYPES for t in types):
            errors.append(("event_types", "unknown event type(s)"))
        if any(s not in _EVENT_STATUSES for s in statuses):
            errors.append(("statuses", "unknown status(es)"))
        if errors:
            return _invalid(errors)
        found = [
            e
            for e in self.log
            if e["webhook_id"] == webhook_id.lower()
            and all(e[k] == v for k, v in filters.items())
            and (not types or e["type"] in types)
            and (not statuses or e["status"] in statuses)
        ]
        return 200, {"total_count": len(found), "webhook_events": _page(found, order_by, page, page_size)}

    # -- emission ---------------------------------------------------------------------------------
    def watches(self, domain_id: str) -> bool:
        """Whether a webhook watches the sending domain of this id (see :func:`domain_id_of`), so
        its emails' events are scheduled."""
        return bool(self._watched) and self._watched.get(domain_id, 0) > 0

    def schedule(self, store: EmailStore, positions: Iterable[int], headers: Headers, domain: str) -> None:
        """Schedule the lifecycle events of the emails at ``positions`` (one send's recipients,
        from the sending domain of id ``domain``)."""
        for position in positions:
            email = store.emails[position]
            for at, kind, tries, code, text in lifecycle_events(email):
                heapq.heappush(
                    self._due, _Due(at, next(self._seq), position, kind, tries, code, text, headers, domain)
                )

    def next_due(self) -> float | None:
        """When the next scheduled event is due (sandbox clock), None when none is."""
        return self._due[0].at if self._due else None

    def take_due(self, store: EmailStore, now: float) -> list[Emission]:
        """The events due by ``now``, one per subscribed webhook, now logged as ``sending``."""
        out: list[Emission] = []
        while self._due and self._due[0].at <= now:
            due = heapq.heappop(self._due)
            email = store.emails[due.position]
            if email.canceled_at is not None and email.canceled_at <= due.at:
                continue  # a canceled email is never sent: nothing more to say about it
            for webhook in self.webhooks.values():
                if webhook["domain_id"] == due.domain and due.kind in webhook["event_types"]:
                    out.append(self._emission(webhook, store, due))
        return out

    def _emission(self, webhook: Mapping[str, Any], store: EmailStore, due: _Due) -> Emission:
        email = store.emails[due.position]
        m = email.message
        at = format_timestamp(due.at)
        email_id = store.email_id(due.position)
        payload: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "type": due.kind,
            "organization_id": DEFAULT_ORGANIZATION_ID,
            "project_id": m.project_id,
            "domain_id": due.domain,
            "domain_name": m.mail_from.rpartition("@")[2].lower(),
            "created_at": at,
            "email_from": m.mail_from,
            "email_to": email.mail_rcpt,
            "email_headers": [{"key": k, "value": v} for k, v in due.headers],
        }
        if due.kind == "email_blocklisted":
            # As documented: TEM names the recipient of a blocklisted email, not the email.
            payload |= {"email_blocklisted_at": at, "blocklist_type": "mailbox_not_found"}
        else:
            payload["email_id"] = email_id
        if due.kind == "email_queued":
            payload["email_queued_at"] = at
        elif due.kind != "email_blocklisted":
            payload |= {
                "email_sent_at": at,
                "email_try_count": due.tries,
                "email_response_code": due.code,
                "email_response_message": due.text,
            }
        data = orjson.dumps(payload)
        record = {
            "id": payload["id"],
            "webhook_id": webhook["id"],
            "organization_id": DEFAULT_ORGANIZATION_ID,
            "project_id": webhook["project_id"],
            "domain_id": due.domain,
            "type": due.kind,
            "status": "sending",
            "data": data.decode(),
            "created_at": at,
            "updated_at": at,
            "email_id": payload.get("email_id"),
        }
        self.log.append(record)
        return Emission(webhook["sns_arn"], data, record)

    def delivered(self, emission: Emission, *, ok: bool) -> None:
        """Log the outcome of an emission's delivery to its topic."""
        emission.record["status"] = "sent" if ok else "failed"
        emission.record["updated_at"] = format_timestamp(self._clock())


def _paging(query: Any, errors: list[tuple[str, str]]) -> tuple[int, int, str]:
    values = []
    for name, default in (("page", 1), ("page_size", _DEFAULT_PAGE_SIZE)):
        text = query.get(name) or str(default)
        if not text.isascii() or not text.isdigit() or len(text) > 10:
            errors.append((name, f"{name} must be a whole number"))
            text = str(default)
        values.append(int(text))
    page, page_size = values
    if page < 1:
        errors.append(("page", "page starts at 1"))
    if not 1 <= page_size <= _PAGE_SIZE_MAX:
        errors.append(("page_size", f"page_size must be within 1..{_PAGE_SIZE_MAX}"))
    order_by = query.get("order_by") or "created_at_desc"
    if order_by not in ("created_at_desc", "created_at_asc"):
        errors.append(("order_by", f"unknown order_by {order_by[:40]!r}"))
    return page, page_size, order_by


def _uuid_filters(query: Any, names: tuple[str, ...], errors: list[tuple[str, str]]) -> dict[str, str]:
    filters = {}
    for name in names:
        value = query.get(name)
        if value:
            if not UUID_RE.match(value):
                errors.append((name, f"{name} must be a UUID"))
            filters[name] = value.lower()
    return filters


def _page(items: list[dict[str, Any]], order_by: str, page: int, page_size: int) -> list[dict[str, Any]]:
    # Items are kept in creation order; ties keep it either way.
    ordered = items[::-1] if order_by == "created_at_desc" else items
    start = (page - 1) * page_size
    return ordered[start : start + page_size]
