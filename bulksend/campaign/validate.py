"""TEM's input rules, in one place: used by the renderer (to reject a row before sending) and by
the sandbox (to answer 400 like TEM does). Each check returns ``None`` when fine, or a reason a
person can act on.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = [
    "ALLOWED_ATTACHMENT_TYPES",
    "MAX_ATTACHMENTS",
    "MAX_EMAIL_BYTES",
    "MAX_RECIPIENTS",
    "MAX_SUBJECT_CHARS",
    "check_address",
    "check_attachment",
    "check_header",
    "check_name",
    "check_subject",
    "forbidden_character",
    "normalize_address",
]

MAX_RECIPIENTS = 10
"""to + cc + bcc per request."""
MAX_ATTACHMENTS = 10
MAX_EMAIL_BYTES = 2 * 1024 * 1024
"""The whole API email, base64 attachments included (not raisable)."""
MAX_SUBJECT_CHARS = 998

# From the published spec's "Technical limitations" (zip is only on the Scale plan, so not here).
ALLOWED_ATTACHMENT_TYPES: frozenset[str] = frozenset(
    {
        "application/acad-template",
        "application/acad",
        "application/autocad_dwg",
        "application/autocad_dxf",
        "application/dwf",
        "application/dxf",
        "application/ics",
        "application/pdf",
        "application/pkcs10",
        "application/pkcs7-mime",
        "application/pkcs7-signature",
        "application/vnd.dwt",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.openxmlformats-officedocument.presentationml.slideshow",
        "application/vnd.openxmlformats-officedocument.presentationml.template",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.template",
        "application/x-dwf",
        "application/x-dwg",
        "application/x-dwt",
        "application/x-dxf",
        "application/x-pdf",
        "application/x-pkcs12",
        "application/x-pkcs7-certificates",
        "application/x-pkcs7-certreqresp",
        "application/x-pkcs7-crl",
        "application/x-pkcs7-mime",
        "application/x-pkcs7-signature",
        "application/xml",
        "image/gif",
        "image/jpeg",
        "image/jpg",
        "image/png",
        "image/svg+xml",
        "image/vnd.dwg",
        "image/vnd.dxf",
        "model/vnd.dwf",
        "text/calendar",
        "text/csv",
        "text/html",
        "text/plain",
        "text/xml",
        # The digest also names webp, tiff, mpeg/wav audio and Word documents as accepted.
        "image/webp",
        "image/tiff",
        "audio/mpeg",
        "audio/wav",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.oasis.opendocument.text",
    }
)

# Pragmatic address syntax: a dot-atom local part and a domain of at least two labels. Quoted
# local parts and IP literals are legal in RFC 5321 but are refused by real senders in practice.
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
# Used with fullmatch (``$`` would also match before a final newline).
_ADDRESS = re.compile(rf"({_LOCAL})@({_LABEL}(?:\.{_LABEL})+)")


# Refused in every text that ends up in a mail header (subject, header values, display names):
# the C0 controls but TAB (RFC 5322 folding white space), DEL, the C1 controls (NEL among them)
# and the Unicode line and paragraph separators, which some clients treat as line breaks.
# Format characters (joiners, direction marks) stay allowed: emoji sequences and right-to-left
# scripts need them.
_FORBIDDEN_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CHAR_NAMES = {
    0x00: "NUL",
    0x0B: "vertical tab",
    0x0C: "form feed",
    0x1B: "ESC",
    0x7F: "DEL",
    0x85: "next line (NEL)",
    0x2028: "line separator",
    0x2029: "paragraph separator",
}


def forbidden_character(text: str) -> str | None:
    """The first character of ``text`` that may not appear in a header, described (or None)."""
    # isprintable() is one fast pass that is true for nearly every real text: no control and no
    # separator other than the ASCII space at all. Only the rest needs the search.
    if text.isprintable():
        return None
    m = _FORBIDDEN_CHAR.search(text)
    if m is None:
        return None
    code = ord(m.group())
    name = _CHAR_NAMES.get(code, "control character")
    return f"{name} U+{code:04X} at position {m.start() + 1}"


_LINE_BREAK = "line break"


def _header_text_problem(text: str) -> str | None:
    """What may not stand in a header text: ``"line break"`` (CR or LF), a forbidden character
    described by :func:`forbidden_character`, or None when ``text`` is fine."""
    if text.isprintable():
        return None
    if "\r" in text or "\n" in text:
        return _LINE_BREAK
    return forbidden_character(text)


def normalize_address(address: str) -> str:
    """The dedupe key of an address: trimmed and lower-cased."""
    return address.strip().lower()


def check_address(address: str) -> str | None:
    """Why ``address`` cannot be sent to, or None. Non-ASCII local parts are refused (they bounce)."""
    # Fast path for the common case. A full match means: only the ASCII characters of the two
    # patterns (no white space, nothing strip() removes) and exactly one '@', so every check of
    # the general path below passes and its final match is this same match; only the lengths
    # are left to check. Anything else takes the general path, which words the reason.
    m = _ADDRESS.fullmatch(address)
    if m is not None and len(address) <= 254 and m.end(1) <= 64:
        return None
    return _check_address(address)


def _check_address(address: str) -> str | None:
    """The general path of :func:`check_address`."""
    if not address or not address.strip():
        return "the email address is empty"
    if address != address.strip():
        address = address.strip()
    if len(address) > 254:
        return f"the email address is longer than 254 characters ({len(address)})"
    if "\r" in address or "\n" in address or "\t" in address or " " in address:
        return "the email address contains white space or a line break"
    if address.count("@") != 1:
        return f"{address!r} is not an email address (it needs exactly one '@')"
    local, domain = address.split("@")
    if not local.isascii():
        return f"{address!r} has non-ASCII characters before the '@', which TEM reports to bounce"
    if len(local) > 64:
        return f"{address!r} has a local part longer than 64 characters"
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return f"{address!r} has a domain that is not a valid internationalised name"
    if _ADDRESS.fullmatch(f"{local}@{domain}") is None:
        return f"{address!r} is not a valid email address"
    return None


def check_subject(subject: str) -> str | None:
    """Why ``subject`` is refused by TEM, or None."""
    if not subject:
        return "the subject is empty"
    printable = subject.isprintable()  # the common case: none of the checks below can fail
    if not printable and ("\r" in subject or "\n" in subject):
        return "the subject contains a line break"
    if len(subject) > MAX_SUBJECT_CHARS:
        return f"the subject is {len(subject)} characters long; TEM allows at most {MAX_SUBJECT_CHARS}"
    bad = None if printable else forbidden_character(subject)
    if bad is not None:
        return f"the subject contains a {bad}; remove it"
    return None


def check_name(name: str, what: str = "the recipient name") -> str | None:
    """Why a display name (a recipient's or the sender's) is refused, or None. Empty is fine."""
    bad = _header_text_problem(name)
    return None if bad is None else f"{what} contains a {bad}; remove it"


def check_header(key: str, value: str) -> str | None:
    """Why a header is refused, or None. CR/LF in either part would allow header injection.

    The name must be an RFC 5322 field name; the value may hold TAB (folding white space) but no
    other control character.
    """
    if not key or not key.strip():
        return "a header has an empty name"
    if not value or not value.strip():
        return f"header {key!r} has an empty value"
    # RFC 5322 section 3.6.8: printable US-ASCII (33..126) except the colon. isascii() and
    # isprintable() together leave 32..126; the space and the colon are then ruled out.
    if not (key.isascii() and key.isprintable()) or " " in key or ":" in key:
        return (
            f"header name {key!r} is not a valid field name: use only printable ASCII characters "
            "other than ':' (no spaces, line breaks, control or non-ASCII characters)"
        )
    bad = _header_text_problem(value)
    if bad == _LINE_BREAK:
        return f"header {key!r} has a line break in its value (header injection is refused)"
    return None if bad is None else f"header {key!r} has a {bad} in its value; remove it"


def check_attachment(name: str, mime_type: str, content_b64: str) -> str | None:
    """Why an attachment is refused by TEM, or None."""
    if not name:
        return "an attachment has no file name"
    bad = forbidden_character(name)
    if bad is not None:
        return f"attachment file name {name[:60]!r} contains a {bad}; rename it"
    if mime_type.lower() not in ALLOWED_ATTACHMENT_TYPES:
        return f"attachment {name!r} has type {mime_type!r}, which TEM refuses"
    try:
        base64.b64decode(content_b64, validate=True)
    except (binascii.Error, ValueError):
        return f"attachment {name!r} is not valid base64"
    return None
