"""Parsing and validation of the sandbox's request inputs, with TEM's rules from
:mod:`bulksend.campaign.validate` (the rules themselves are not repeated here).

Errors are ``(argument_name, help_message)`` pairs; the argument name is the top-level field of the
request (``from``, ``to``, ``cc``, ``bcc``, ``subject``, ``text``, ``html``, ``project_id``,
``attachments``, ``send_before``, ``additional_headers``) or ``body`` for the body as a whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bulksend.campaign.validate import (
    MAX_ATTACHMENTS,
    MAX_EMAIL_BYTES,
    MAX_RECIPIENTS,
    check_address,
    check_attachment,
    check_header,
    check_name,
    check_subject,
)
from bulksend.tem.models import parse_rfc3339

from .config import UUID_RE

__all__ = ["ArgumentError", "CreateEmail", "parse_create_email", "parse_timestamp"]

ArgumentError = tuple[str, str]

# A "+" in an unencoded query string arrives as a space: "2024-01-01T00:00:00 00:00".
_SPACE_OFFSET = re.compile(r"(?<=\d) (\d{2}:?\d{2})$")


def parse_timestamp(value: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp.

    Raises ``ValueError`` (only) when it is not one, or when it lies outside years 1..9999 in UTC.
    """
    value = _SPACE_OFFSET.sub(r"+\1", value.strip())
    parsed = parse_rfc3339(value)
    if parsed is None:
        raise ValueError("empty timestamp")
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class CreateEmail:
    """A validated send: what the store needs to create the emails."""

    project_id: str
    mail_from: str
    subject: str
    send_before: float | None
    recipients: tuple[tuple[str, str], ...]  # (address, rcpt_type)


def _address_list(data: dict[str, Any], key: str, errors: list[ArgumentError]) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        errors.append((key, f"{key} must be a list of {{email, name}} objects"))
        return []
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("email"), str):
            errors.append((key, f"{key}[{i}] must be an object with an 'email' string"))
            return []
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            errors.append((key, f"{key}[{i}].name must be a string"))
            return []
        problem = check_name(name or "", f"{key}[{i}].name")
        if problem is not None:
            errors.append((key, problem))
            return []
        address: str = item["email"]
        problem = check_address(address)
        if problem is not None:
            errors.append((key, f"{key}[{i}]: {problem}"))
            return []
        out.append(address.strip())
    return out


def parse_create_email(
    body: bytes | None,
    data: Any,
    *,
    default_project_id: str,
    allowed_from_domains: tuple[str, ...] | None,
) -> tuple[CreateEmail | None, list[ArgumentError], bool]:
    """Validate a ``POST /emails`` body already decoded from JSON.

    Returns ``(request, errors, sender_refused)``; ``sender_refused`` is True when the only
    problem is a sender outside ``allowed_from_domains`` (TEM answers that one with its own
    message, "Invalid email from address").
    """
    errors: list[ArgumentError] = []
    if body is not None and len(body) > MAX_EMAIL_BYTES:
        errors.append(
            ("body", f"the email is {len(body)} bytes; TEM allows at most {MAX_EMAIL_BYTES} (2 MB)")
        )
        return None, errors, False
    if not isinstance(data, dict):
        errors.append(("body", "the request body must be a JSON object"))
        return None, errors, False

    # Sender.
    mail_from = ""
    sender = data.get("from")
    if not isinstance(sender, dict) or not isinstance(sender.get("email"), str):
        errors.append(("from", "from must be an object with an 'email' string"))
    else:
        name = sender.get("name")
        problem = check_address(sender["email"])
        if problem is not None:
            errors.append(("from", problem))
        elif name is not None and not isinstance(name, str):
            errors.append(("from", "from.name must be a string"))
        elif (problem := check_name(name or "", "from.name")) is not None:
            errors.append(("from", problem))
        else:
            mail_from = sender["email"].strip()

    # Recipients: one email each, to + cc + bcc together within the limit.
    to = _address_list(data, "to", errors)
    cc = _address_list(data, "cc", errors)
    bcc = _address_list(data, "bcc", errors)
    count = len(to) + len(cc) + len(bcc)
    if not any(name in (e[0] for e in errors) for name in ("to", "cc", "bcc")):
        if count == 0:
            errors.append(("to", "at least one recipient (to, cc or bcc) is required"))
        elif count > MAX_RECIPIENTS:
            errors.append(("to", f"{count} recipients (to + cc + bcc); TEM allows at most {MAX_RECIPIENTS}"))

    subject = data.get("subject")
    if subject is None:
        subject = ""
    if not isinstance(subject, str):
        errors.append(("subject", "subject must be a string"))
        subject = ""
    else:
        problem = check_subject(subject)
        if problem is not None:
            errors.append(("subject", problem))

    for key in ("text", "html"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            errors.append((key, f"{key} must be a string"))

    project_id = data.get("project_id")
    if project_id is None or project_id == "":
        project_id = default_project_id
    elif not isinstance(project_id, str) or not UUID_RE.match(project_id):
        errors.append(("project_id", "project_id must be a UUID"))
        project_id = default_project_id

    attachments = data.get("attachments")
    if attachments is not None:
        if not isinstance(attachments, list):
            errors.append(("attachments", "attachments must be a list of {name, type, content} objects"))
        elif len(attachments) > MAX_ATTACHMENTS:
            errors.append(
                ("attachments", f"{len(attachments)} attachments; TEM allows at most {MAX_ATTACHMENTS}")
            )
        else:
            for i, item in enumerate(attachments):
                if not isinstance(item, dict) or not all(
                    isinstance(item.get(k), str) for k in ("name", "type", "content")
                ):
                    errors.append(
                        ("attachments", f"attachments[{i}] needs 'name', 'type' and 'content' strings")
                    )
                    break
                problem = check_attachment(item["name"], item["type"], item["content"])
                if problem is not None:
                    errors.append(("attachments", problem))
                    break

    send_before: float | None = None
    raw_send_before = data.get("send_before")
    if raw_send_before is not None:
        if not isinstance(raw_send_before, str):
            errors.append(("send_before", "send_before must be an RFC 3339 timestamp"))
        else:
            try:
                send_before = parse_timestamp(raw_send_before)
            except ValueError as exc:
                errors.append(("send_before", f"send_before: {exc}"))

    headers = data.get("additional_headers")
    if headers is not None:
        if not isinstance(headers, list):
            errors.append(("additional_headers", "additional_headers must be a list of {key, value} objects"))
        else:
            for i, item in enumerate(headers):
                if not isinstance(item, dict) or not all(
                    isinstance(item.get(k), str) for k in ("key", "value")
                ):
                    errors.append(
                        ("additional_headers", f"additional_headers[{i}] needs 'key' and 'value' strings")
                    )
                    break
                problem = check_header(item["key"], item["value"])
                if problem is not None:
                    errors.append(("additional_headers", problem))
                    break

    if errors:
        return None, errors, False

    if allowed_from_domains is not None:
        domain = mail_from.rpartition("@")[2].lower()
        if domain not in {d.lower() for d in allowed_from_domains}:
            return None, [("from", f"the domain {domain!r} is not a checked domain of this project")], True

    recipients = tuple((a, "to") for a in to) + tuple((a, "cc") for a in cc) + tuple((a, "bcc") for a in bcc)
    return CreateEmail(str(project_id), mail_from, subject, send_before, recipients), [], False
