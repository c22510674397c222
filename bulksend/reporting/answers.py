"""SMTP answers grouped by kind: what differs from one recipient to the next is replaced.

``550 5.1.1 <ann@example.com>: Recipient address rejected (queue id 4F2A9C1B)`` and the same
answer for Bob are one kind, ``550 5.1.1 <address>: Recipient address rejected (queue id <id>)``.
The leading reply code and enhanced status code (``550 5.1.1``) are what the answer means, so
they stay; addresses, URLs, IP addresses, host names and ids with digits, and numbers go
(``<n>`` for up to five digits, ``<id>`` for anything longer or mixed with letters).
"""

from __future__ import annotations

import functools
import re
from typing import Final

from bulksend.reporting.outcome import Outcome

__all__ = ["MAX_ANSWER_CHARS", "NO_ANSWER", "answer_of", "normalize_answer"]

MAX_ANSWER_CHARS: Final = 300
NO_ANSWER: Final = "(no answer from a mail server)"

_LEADING_CODE: Final = re.compile(r"^[2-5]\d\d(?:[ -][245]\.\d{1,3}\.\d{1,3})?(?=\s|$|[-:,;])")
_ENHANCED: Final = re.compile(r"(?<![\w.])[245]\.\d{1,3}\.\d{1,3}(?![\w.])")
_REPLACEMENTS: Final = (
    (re.compile(r"<?[^\s<>@\"']*@[^\s<>\"']*>?"), "<address>"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE), "<url>"),
    (re.compile(r"\[?\b\d{1,3}(?:\.\d{1,3}){3}\b\]?"), "<ip>"),
    (re.compile(r"\[?\b[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}\b\]?", re.IGNORECASE), "<ip>"),
    # Six digits or more is an id (a queue id may be all digits), fewer a quantity.
    (re.compile(r"(?<![<\w.-])\d{1,5}(?![\w.>-])"), "<n>"),
    # A word made of letters and digits (an id, a host like mx04.example.net): one kind.
    (re.compile(r"(?<![<\w])[\w.-]*\d[\w.-]*(?<=[\w])(?![\w>])"), "<id>"),
)
_SPACE: Final = re.compile(r"\s+")
_KEEP: Final = "\x00"


def _shorten(text: str) -> str:
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    cut = text[: MAX_ANSWER_CHARS - 2].rsplit(" ", 1)[0]
    return cut + " …"


@functools.lru_cache(maxsize=4096)
def normalize_answer(text: str) -> str:
    """The kind of an SMTP answer (see the module's docstring); the same kind gives itself back."""
    text = _SPACE.sub(" ", text).strip()
    if not text:
        return NO_ANSWER
    head = ""
    match = _LEADING_CODE.match(text)
    if match is not None:
        head, text = match.group(0), text[match.end() :]
    # Enhanced status codes further in (``… 5.7.1 …``) say what happened: set them aside.
    kept = _ENHANCED.findall(text)
    text = _ENHANCED.sub(_KEEP, text)
    for pattern, placeholder in _REPLACEMENTS:
        text = pattern.sub(placeholder, text)
    for code in kept:
        text = text.replace(_KEEP, code, 1)
    return _shorten(head + text)


def answer_of(outcome: Outcome) -> str:
    """The last answer TEM got for this email, as written: the SMTP reply, else TEM's details."""
    if outcome.smtp_code is not None and outcome.smtp_code > 0:
        return f"{outcome.smtp_code} {outcome.smtp_message}".strip()
    return outcome.smtp_message or outcome.status_details or NO_ANSWER
