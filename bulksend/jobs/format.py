"""Send jobs: the messages other services publish to bulksend's queues (format version 1).

A job asks for one templated email to one recipient::

    {"version": 1, "template": "welcome", "idempotency_key": "order-1234-welcome",
     "recipient": {"email": "a@example.com", "name": "Ann"},
     "variables": {"first_name": "Ann", "plan": "pro"},
     "send_before": "2026-12-31T00:00:00Z",
     "results": true}

:func:`parse_job` turns a message body into a :class:`SendJob` or raises :class:`JobError` whose
``reason`` says what to fix. The rules are in ``docs/message-format.md`` and, as JSON Schema, in
``docs/job.schema.json`` (a test keeps the schema and the parser in step). In short: UTF-8 JSON
of at most :data:`MAX_JOB_BYTES` bytes, one object; ``version`` checked first; unknown fields
refused (a typo must not silently drop a deadline); ``null`` means "not given"; no control
characters in identifiers and names; variables at most :data:`MAX_VARIABLE_DEPTH` deep and
without NUL; ``send_before`` a real RFC 3339 time with an offset, within years 1..9999 in UTC.

Whether the template exists, whether the address is deliverable and whether ``send_before`` is
already past are the daemon's checks, not the format's: they depend on its state and clock.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from bulksend.campaign.validate import check_name
from bulksend.errors import JobError, JobErrorKind, json_type_name

__all__ = [
    "JOB_VERSION",
    "MAX_JOB_BYTES",
    "MAX_KEY_CHARS",
    "MAX_TEMPLATE_CHARS",
    "MAX_VARIABLE_DEPTH",
    "JobError",
    "JobErrorKind",
    "SendJob",
    "parse_job",
]

JOB_VERSION: Final = 1
"""The job format version this bulksend reads."""

MAX_JOB_BYTES: Final = 1 << 20
"""Largest accepted message body (1 MiB, NATS's default ``max_payload``)."""

MAX_TEMPLATE_CHARS: Final = 200
MAX_KEY_CHARS: Final = 200
MAX_VARIABLE_DEPTH: Final = 32
"""Deepest nesting of ``variables`` (the object itself is level 1). orjson cannot write JSON
deeper than 254 levels, and no template needs more than a few."""

# In identifiers (template names, idempotency keys): no control character at all, TAB included,
# nor the Unicode line and paragraph separators. They end up in logs, headers and SQL text.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

_TOP_FIELDS: Final = (
    "version",
    "template",
    "idempotency_key",
    "recipient",
    "variables",
    "send_before",
    "results",
)
_RECIPIENT_FIELDS: Final = ("email", "name")

# RFC 3339 date-time (section 5.6). The same pattern is in docs/job.schema.json; ``\Z`` rather than
# ``$`` because Python's ``$`` would also accept a trailing newline.
_RFC3339: Final = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)


@dataclass(frozen=True, slots=True)
class SendJob:
    """One parsed, format-valid job.

    ``send_before`` is in UTC. ``want_result`` is None when the job did not say (the daemon's
    configuration decides).
    """

    version: int
    template: str
    idempotency_key: str
    email: str
    name: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    send_before: datetime | None = None
    want_result: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The job as a version-1 JSON object (optional fields left out when unset)."""
        recipient: dict[str, Any] = {"email": self.email}
        if self.name is not None:
            recipient["name"] = self.name
        out: dict[str, Any] = {
            "version": self.version,
            "template": self.template,
            "idempotency_key": self.idempotency_key,
            "recipient": recipient,
        }
        if self.variables:
            out["variables"] = dict(self.variables)
        if self.send_before is not None:
            out["send_before"] = self.send_before.isoformat().replace("+00:00", "Z")
        if self.want_result is not None:
            out["results"] = self.want_result
        return out


def parse_job(body: bytes) -> SendJob:
    """Parse and check one message body; raise :class:`JobError` with a precise reason if invalid."""
    if len(body) > MAX_JOB_BYTES:
        raise JobError(
            f"message is {len(body):,} bytes; a job may be at most {MAX_JOB_BYTES:,} bytes",
            kind="too_large",
        )
    if not body.strip():
        raise JobError("empty message: expected a JSON job object", kind="not_json")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise JobError(f"not JSON: {exc}", kind="not_json") from None
    if not isinstance(doc, dict):
        raise JobError(f"a job must be a JSON object, got {_json_type(doc)}", kind="not_object")

    # Version first: a job from a newer producer should say so, not trip over its new fields.
    version = _version(doc)
    _refuse_unknown(doc, _TOP_FIELDS, prefix="")

    template = _bounded_str(doc, "template", MAX_TEMPLATE_CHARS)
    key = _bounded_str(doc, "idempotency_key", MAX_KEY_CHARS)

    recipient = _required(doc, "recipient")
    if not isinstance(recipient, dict):
        raise _wrong_type("recipient", 'an object like {"email": "a@example.com"}', recipient)
    _refuse_unknown(recipient, _RECIPIENT_FIELDS, prefix="recipient.")
    email = _required(recipient, "recipient.email")
    if not isinstance(email, str):
        raise _wrong_type("recipient.email", "a string", email)
    if not email:
        raise JobError("recipient.email is empty", kind="invalid_field", field="recipient.email")
    name = recipient.get("name")
    if name is not None and not isinstance(name, str):
        raise _wrong_type("recipient.name", "a string or null", name)
    if name is not None and (problem := check_name(name, "recipient.name")) is not None:
        raise JobError(problem, kind="invalid_field", field="recipient.name")

    variables = doc.get("variables")
    if variables is None:
        variables = {}
    elif not isinstance(variables, dict):
        raise _wrong_type("variables", "an object of template variables", variables)
    _check_variables(variables)

    want_result = doc.get("results")
    if want_result is not None and not isinstance(want_result, bool):
        raise _wrong_type("results", "true, false or null", want_result)

    return SendJob(
        version=version,
        template=template,
        idempotency_key=key,
        email=email,
        name=name,
        variables=variables,
        send_before=_send_before(doc.get("send_before")),
        want_result=want_result,
    )


def _version(doc: Mapping[str, Any]) -> int:
    if "version" not in doc:
        raise JobError(
            f"missing field 'version' (this bulksend reads version {JOB_VERSION})",
            kind="missing_field",
            field="version",
        )
    version = doc["version"]
    # bool is an int in Python but not a number in JSON; 1.0 is the integer 1 in JSON Schema.
    if isinstance(version, bool) or not isinstance(version, int | float):
        raise JobError(
            f"version must be the number {JOB_VERSION}, got {_json_type(version)}",
            kind="version",
            field="version",
        )
    if version != JOB_VERSION:
        shown = int(version) if isinstance(version, float) and version.is_integer() else version
        raise JobError(
            f"unsupported version {shown} (this bulksend reads version {JOB_VERSION})",
            kind="version",
            field="version",
        )
    return JOB_VERSION


def _refuse_unknown(doc: Mapping[str, Any], allowed: tuple[str, ...], *, prefix: str) -> None:
    unknown = sorted(k for k in doc if k not in allowed)
    if not unknown:
        return
    first = unknown[0]
    close = difflib.get_close_matches(first, allowed, n=1, cutoff=0.6)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
    allowed_list = ", ".join(allowed)
    where = f"in {prefix.rstrip('.')} " if prefix else ""
    raise JobError(
        f"unknown field '{prefix}{first}'{hint}{more}; {where}version {JOB_VERSION} allows: {allowed_list}",
        kind="unknown_field",
        field=f"{prefix}{first}",
    )


def _bounded_str(doc: Mapping[str, Any], name: str, max_chars: int) -> str:
    value = _required(doc, name)
    if not isinstance(value, str):
        raise _wrong_type(name, "a string", value)
    if not 1 <= len(value) <= max_chars:
        raise JobError(
            f"{name} must be 1..{max_chars} characters (it has {len(value)})",
            kind="invalid_field",
            field=name,
        )
    m = _CONTROL.search(value)
    if m is not None:
        raise JobError(
            f"{name} contains the control character U+{ord(m.group()):04X} at position {m.start() + 1}; "
            "use printable characters only",
            kind="invalid_field",
            field=name,
        )
    return value


def _check_variables(variables: dict[str, Any]) -> None:
    """Refuse nesting deeper than MAX_VARIABLE_DEPTH and NUL characters (iteratively: no recursion)."""
    stack: list[tuple[Any, str, int]] = [(variables, "variables", 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise JobError(
                    f"{path} contains a NUL character (U+0000), which cannot be stored; remove it",
                    kind="invalid_field",
                    field="variables",
                )
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_VARIABLE_DEPTH:
            raise JobError(
                f"variables are nested more than {MAX_VARIABLE_DEPTH} levels deep (at {path[:200]}); "
                "flatten them",
                kind="invalid_field",
                field="variables",
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    raise JobError(
                        f"{path} has a key with a NUL character (U+0000), which cannot be stored; rename it",
                        kind="invalid_field",
                        field="variables",
                    )
                stack.append((item, f"{path}.{key[:40]}", depth + 1))
        else:
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))


def _send_before(value: Any) -> datetime | None:
    if value is None:
        return None
    example = "for example 2026-12-31T00:00:00Z"
    if not isinstance(value, str):
        raise _wrong_type("send_before", f"an RFC 3339 time string ({example})", value)
    if not _RFC3339.match(value):
        raise JobError(
            f"send_before {value[:60]!r} is not an RFC 3339 time with an offset ({example})",
            kind="invalid_field",
            field="send_before",
        )
    try:
        # Only the letters T and Z can occur here; fromisoformat wants them upper-case.
        parsed = datetime.fromisoformat(value.upper())
    except ValueError as exc:
        raise JobError(
            f"send_before {value!r} is not a real time: {exc}", kind="invalid_field", field="send_before"
        ) from None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        # Years 1..9999 are all a datetime holds: 9999-12-31T23:59:59-14:00 is past that in UTC.
        raise JobError(
            f"send_before {value!r} is out of range: in UTC it falls outside years 1 to 9999",
            kind="invalid_field",
            field="send_before",
        ) from None


def _required(doc: Mapping[str, Any], field: str) -> Any:
    """The value of ``field`` (a dotted path whose last part is the key in ``doc``), which must be there."""
    key = field.rpartition(".")[2]
    if key not in doc:
        raise JobError(f"missing field '{field}'", kind="missing_field", field=field)
    return doc[key]


def _wrong_type(field: str, expected: str, value: Any) -> JobError:
    """The error for ``field`` holding a JSON value of another type than ``expected``."""
    return JobError(f"{field} must be {expected}, got {_json_type(value)}", kind="invalid_field", field=field)


def _json_type(value: Any) -> str:
    """The JSON type of ``value`` as "got …" says it: ``null``, or with its article (``a string``)."""
    name = json_type_name(value)
    return name if value is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
