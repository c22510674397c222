"""The one place where TEM's HTTP answers become bulksend errors.

Handles every error shape TEM_API documents: typed ``{"type": …, "message": …}`` bodies, the older
``{"message": "Validation Error", "fields": {…}}`` shape, and non-JSON bodies such as the API
gateway's bare 429 (no ``Retry-After``, no ``X-RateLimit-*``).

Throttling is recognised here, in any of its three forms: a 429, a ``too_many_requests`` error
type, or the gateway's ``x-envoy-ratelimited`` header, whatever the status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from bulksend import errors

__all__ = ["error_from_response", "parse_retry_after"]

_MAX_RAW = 4096

_BY_TYPE: dict[str, type[errors.TemApiError]] = {
    "invalid_arguments": errors.InvalidArgumentsError,
    "denied_authentication": errors.AuthenticationError,
    "permissions_denied": errors.PermissionsDeniedError,
    "quotas_exceeded": errors.QuotaExceededError,
    "not_found": errors.NotFoundError,
    "transient_state": errors.TransientStateError,
    "precondition_failed": errors.PreconditionFailedError,
    "locked": errors.LockedError,
    "too_many_requests": errors.RateLimitedError,
    "out_of_stock": errors.OutOfStockError,
}

_BY_STATUS: dict[int, type[errors.TemApiError]] = {
    400: errors.InvalidArgumentsError,
    401: errors.AuthenticationError,
    403: errors.PermissionsDeniedError,
    404: errors.NotFoundError,
    409: errors.TransientStateError,
    412: errors.PreconditionFailedError,
    423: errors.LockedError,
    429: errors.RateLimitedError,
    503: errors.ServerError,
}


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        # "inf"/"nan" parse as floats; honouring them would park a worker forever.
        return None
    return max(0.0, seconds)


def _class_for(status: int, type_: str, throttled: bool = False) -> type[errors.TemApiError]:
    if throttled or (type_ == "too_many_requests" and status >= 400):
        # Throttling moves the send rate, whatever status carries it (docs/flow-control.md).
        return errors.RateLimitedError
    cls = _BY_TYPE.get(type_)
    if cls is not None:
        # Trust a typed body only when it agrees with the status family: a 5xx is never
        # "permanent" and a 4xx never "transient", whatever the body says.
        if status == 429 and cls is errors.RateLimitedError:
            return cls
        if status >= 500 and issubclass(cls, errors.ServerError):
            return cls
        if 400 <= status < 500 and status != 429 and issubclass(cls, errors.TemPermanentError):
            return cls
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return errors.ServerError
    return errors.TemPermanentError


def error_from_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> errors.TemApiError:
    """Build the typed error for a non-2xx answer. Never raises."""
    headers = headers or {}
    raw = body[:_MAX_RAW].decode("utf-8", "replace")
    data: Any = None
    if body:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
    type_ = ""
    message = ""
    details: Any = None
    if isinstance(data, Mapping):
        type_ = str(data.get("type") or "")
        message = str(data.get("message") or "")
        if "fields" in data:  # older validation shape
            details = data.get("fields")
        elif "details" in data:
            details = data.get("details")
        elif type_:
            # Typed errors without ``details`` carry their specifics at the top level
            # (not_found/locked/transient_state: resource, resource_id, current_state;
            # precondition_failed: precondition, help_message): keep them.
            details = {k: v for k, v in data.items() if k not in ("message", "type")} or None
    if not message:
        message = raw.strip()[:200] or _default_message(status)
    retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
    throttled = "x-envoy-ratelimited" in headers or "X-Envoy-RateLimited" in headers
    cls = _class_for(status, type_, throttled)
    return cls(status, message, type=type_, raw_body=raw, details=details, retry_after_s=retry_after)


def _default_message(status: int) -> str:
    if status == 429:
        return "too many requests"
    if status >= 500:
        return "server error"
    return "request refused"
