"""The bulksend error tree. Every error the package raises on purpose derives from ``BulksendError``.

::

    BulksendError
    ├── ConfigError              settings missing or invalid (names the variable/key to fix)
    │   ├── SettingError         one value out of its range (``key``; also a ``ValueError``)
    │   ├── DomainRefused        the sender's domain must not send now (status, reputation; the fix)
    │   └── PushRefused          TEM refused custom blocklists (the Scale plan)
    ├── CampaignError            a campaign-level mistake found before anything is sent
    │                            (file, line and fix in the message)
    ├── JobError                 a broker message is not a valid send job (``reason``, ``kind``)
    ├── BrokerError              a message broker is unreachable or refused an operation (transient)
    ├── EventVerificationError   a webhook event envelope that may not be trusted (bad signature,
    │                            certificate URL not allowed, certificate unusable)
    ├── ControlError             a daemon control request that cannot be carried out as asked
    │   ├── NotFound             no such campaign or template (the API answers 404)
    │   └── Conflict             the request clashes with the current state (409)
    ├── AccountRefusedError      TEM refused the account itself (401/403): stop sending
    ├── StoreError               the state store cannot be opened or used
    │   ├── StateLostError       the state is older than what was already sent (reconcile first)
    │   └── LeaseLostError       a fenced write lost its lease (``row_id``): drop the row
    └── TemError                 anything that went wrong talking to TEM
        ├── TemTransportError    no usable HTTP answer (transient)
        │   ├── TemConnectionError   connection refused, reset or dropped
        │   └── TemTimeoutError      no answer in time (the send may still have happened)
        └── TemApiError          TEM answered with a non-2xx status (``status``, ``type``,
            │                    ``message``, ``raw_body``, ``details``)
            ├── TemPermanentError            4xx other than 429: never retried
            │   ├── InvalidArgumentsError    400 (``invalid_arguments`` or ``Validation Error``)
            │   ├── AuthenticationError      401 ``denied_authentication``
            │   ├── PermissionsDeniedError   403 ``permissions_denied``
            │   ├── QuotaExceededError       403 ``quotas_exceeded``
            │   ├── NotFoundError            404 ``not_found``
            │   ├── TransientStateError      409 ``transient_state``
            │   ├── PreconditionFailedError  412 ``precondition_failed``
            │   └── LockedError              423 ``locked``
            └── TemTransientError            429, 5xx and bad 2xx bodies: retried with backoff
                ├── RateLimitedError         429 (``retry_after_s`` when the server said)
                ├── ServerError              5xx
                │   └── OutOfStockError      503 ``out_of_stock``
                └── TemProtocolError         2xx whose body is not the promised JSON (ambiguous)

``error.transient`` tells whether retrying may help. The HTTP → error mapping lives in exactly one
place, :func:`bulksend.tem.errors.error_from_response`. No error text ever carries the secret key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal

__all__ = [
    "AccountRefusedError",
    "AuthenticationError",
    "BrokerError",
    "BulksendError",
    "CampaignError",
    "ConfigError",
    "Conflict",
    "ControlError",
    "DomainRefused",
    "EventVerificationError",
    "InvalidArgumentsError",
    "JobError",
    "JobErrorKind",
    "LeaseLostError",
    "LockedError",
    "NotFound",
    "NotFoundError",
    "OutOfStockError",
    "PermissionsDeniedError",
    "PreconditionFailedError",
    "PushRefused",
    "QuotaExceededError",
    "RateLimitedError",
    "ServerError",
    "SettingError",
    "StateLostError",
    "StoreError",
    "TemApiError",
    "TemConnectionError",
    "TemError",
    "TemPermanentError",
    "TemProtocolError",
    "TemTimeoutError",
    "TemTransientError",
    "TemTransportError",
    "TransientStateError",
    "first_bulksend_error",
    "json_type_name",
]


class BulksendError(Exception):
    """Base of every error bulksend raises on purpose."""

    transient: bool = False


class ConfigError(BulksendError):
    """A setting is missing or invalid; the message names what to set."""


class SettingError(ConfigError, ValueError):
    """A settings value is outside what it may be: ``key`` names it, the message says what it may be.

    Also a ``ValueError``, since the same checks guard constructors (a limiter's tuning, say).
    """

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class DomainRefused(ConfigError):
    """The sender's domain cannot send now, or should not (the message says why and what to do)."""


class PushRefused(ConfigError):
    """TEM refused to create custom blocklists (the message says why and what to do)."""


class CampaignError(BulksendError):
    """A campaign-level mistake, refused before anything is sent.

    ``path`` and ``line`` locate it when known; the message says how to fix it.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        super().__init__(f"{where}{message}")


class StoreError(BulksendError):
    """The state store cannot be opened or used."""


class StateLostError(StoreError):
    """The store knows of fewer sends than its send journal: sending now could email people twice."""


class LeaseLostError(StoreError):
    """A fenced write was refused: the row's lease is no longer the caller's.

    Raised by a dispatch write given a ``lease_token`` that is not the row's current token, or
    whose lease was released or ended by a terminal transition. Nothing was written. The worker
    must drop the row (another worker owns it now, or it is finished) and must not retry the write.
    """

    def __init__(self, row_id: int, message: str) -> None:
        super().__init__(message)
        self.row_id = row_id

    def __reduce__(self) -> tuple[type[LeaseLostError], tuple[int, str]]:
        # Exception pickling only replays ``args``; carry ``row_id`` across process boundaries too.
        return (type(self), (self.row_id, str(self)))


JobErrorKind = Literal[
    "too_large", "not_json", "not_object", "version", "unknown_field", "missing_field", "invalid_field"
]


class JobError(BulksendError):
    """A message is not a valid send job.

    ``reason`` is a sentence a person can act on (it is also the exception text); ``kind`` is a
    short fixed word for metrics labels; ``field`` names the offending field (dotted, such as
    ``recipient.email``) when there is one.
    """

    def __init__(self, reason: str, *, kind: JobErrorKind, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind: JobErrorKind = kind
        self.field = field


class BrokerError(BulksendError):
    """A message broker could not be reached or refused an operation. Usually transient."""

    transient = True


class EventVerificationError(BulksendError):
    """A webhook event envelope that may not be trusted; the message says why."""


class ControlError(BulksendError):
    """A control request that cannot be carried out as asked (base of NotFound and Conflict)."""


class NotFound(ControlError):
    """No campaign (or template) with that id: the API answers 404."""


class Conflict(ControlError):
    """The request clashes with the current state (resume a finished campaign, reuse an id): 409."""


class AccountRefusedError(BulksendError):
    """TEM refused the account itself (401/403): sending anything else is pointless."""


class TemError(BulksendError):
    """Anything that went wrong talking to TEM."""


class TemTransportError(TemError):
    """No usable HTTP answer arrived. Always transient.

    ``sent`` is False only when the request certainly never left (the connection was never
    established); True means TEM may have received it, so on a send the outcome is ambiguous.
    """

    transient = True

    def __init__(self, *args: object, sent: bool = True) -> None:
        super().__init__(*args)
        self.sent = sent

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickling only replays ``args``; carry ``sent`` across process boundaries too.
        return (_rebuild_transport_error, (type(self), self.args, self.sent))


def _rebuild_transport_error(
    cls: type[TemTransportError], args: tuple[object, ...], sent: bool
) -> TemTransportError:
    return cls(*args, sent=sent)


class TemConnectionError(TemTransportError):
    """The connection was refused, reset or dropped."""


class TemTimeoutError(TemTransportError):
    """No answer in time."""


# eq and repr stay those of an exception: equal only to itself, shown with its message.
@dataclass(eq=False, repr=False)
class TemApiError(TemError):
    """TEM answered with a non-2xx status.

    Keeps ``status`` (HTTP code), ``type`` (TEM's error type, "" when absent), ``message``,
    ``details`` (parsed ``details``/``fields`` when present) and ``raw_body`` (at most 4 KiB of text).
    """

    status: int
    message: str
    _: KW_ONLY
    type: str = ""
    raw_body: str = ""
    details: Any = None
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        label = f"{self.status} {self.type}".strip() if self.type else str(self.status)
        super().__init__(f"TEM answered {label}: {self.message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_api_error, (type(self), self.__dict__))

    @property
    def fields(self) -> Mapping[str, Any]:
        """Per-argument reasons: ``{argument_name: reason}`` for both 400 shapes."""
        d = self.details
        if isinstance(d, Mapping):
            return d
        out: dict[str, Any] = {}
        if isinstance(d, list):
            for item in d:
                if isinstance(item, Mapping) and "argument_name" in item:
                    out[str(item["argument_name"])] = item.get("help_message") or item.get("reason")
        return out


def _rebuild_api_error(cls: type[TemApiError], state: dict[str, Any]) -> TemApiError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, f"TEM answered {state.get('status')}: {state.get('message')}")
    return err


class TemPermanentError(TemApiError):
    """A 4xx other than 429: the same request will fail again; never retried."""


class InvalidArgumentsError(TemPermanentError):
    """400: the request is invalid (``invalid_arguments`` or the older ``Validation Error``)."""


class AuthenticationError(TemPermanentError):
    """401: the secret key was refused."""


class PermissionsDeniedError(TemPermanentError):
    """403: the key lacks a permission (for example TransactionalEmailEmailApiCreate)."""


class QuotaExceededError(TemPermanentError):
    """403 ``quotas_exceeded``: the monthly email quota is used up."""


class NotFoundError(TemPermanentError):
    """404: no such email (or resource)."""


class TransientStateError(TemPermanentError):
    """409 ``transient_state``: the resource is changing; re-read before acting."""


class PreconditionFailedError(TemPermanentError):
    """412 ``precondition_failed`` (for example cancelling an email that is past ``new``)."""


class LockedError(TemPermanentError):
    """423 ``locked``."""


class TemTransientError(TemApiError):
    """429 or 5xx: retrying later may succeed. A 5xx on a send is ambiguous."""

    transient = True


class RateLimitedError(TemTransientError):
    """429: slow down. ``retry_after_s`` is set only when the server sent ``Retry-After``."""


class ServerError(TemTransientError):
    """5xx: TEM or its gateway failed. On a send the email may or may not have been created."""


class OutOfStockError(ServerError):
    """503 ``out_of_stock``."""


class TemProtocolError(TemTransientError):
    """TEM answered 2xx, but the body is not the JSON the endpoint promises.

    Transient (a proxy or a partial deploy may be to blame). On a send it is *ambiguous*: a 2xx
    means TEM probably created the emails, but their ids are unknown, so ``sent`` is True and the
    send must be reconciled like a timeout rather than retried.
    """

    sent: bool = True


def first_bulksend_error(exc: BaseException) -> BulksendError | None:
    """The first :class:`BulksendError` in ``exc`` or in the exception groups nested in it."""
    if isinstance(exc, BulksendError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_bulksend_error(inner)
            if found is not None:
                return found
    return None


def json_type_name(value: object) -> str:
    """The JSON type of a decoded value, as error messages name it: ``"string"``, ``"null"``…"""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
