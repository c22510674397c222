"""Loading a campaign: a TOML campaign file (or an equivalent mapping) turned into a validated,
immutable :class:`~bulksend.campaign.model.Campaign`.

Every campaign-level mistake is found here, before anything is sent, and raised as
:class:`~bulksend.errors.CampaignError` naming the file, the line and the fix. Templates are
compiled up front (syntax errors point into the template's own file), campaign attachments are
loaded and base64-encoded once, and the recipients file is checked (suffix, existence, CSV header).

Files a campaign names are read only if they are regular files within a size cap. A campaign
from the admin API is *confined* (:class:`~bulksend.campaign.model.FileAccess`): its files must
resolve, symlinks followed, inside the folder the operator allows, or it names no file at all.

The model's classes are re-exported here, for callers that load a campaign and use it.
The reference of every key is ``docs/campaign-file.md``.
"""

from __future__ import annotations

import base64
import difflib
import errno
import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import orjson
from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from bulksend.campaign.model import (
    CAMPAIGN_ID_PATTERN,
    CORRELATION_HEADER,
    Campaign,
    FileAccess,
    OutputSettings,
    SendingSettings,
    TrackingSettings,
    UnsubscribeSettings,
)
from bulksend.campaign.recipients import RECIPIENT_SUFFIXES, check_recipients
from bulksend.campaign.templating import BoundedEnvironment, RenderLimits
from bulksend.campaign.validate import (
    MAX_ATTACHMENTS,
    MAX_EMAIL_BYTES,
    check_address,
    check_attachment,
    check_header,
    check_name,
    check_subject,
)
from bulksend.deliverability.tokens import UnsubscribeSigner
from bulksend.errors import CampaignError, ConfigError, SettingError
from bulksend.settings import Bound, GuardrailSettings
from bulksend.suppression import NEVER_IGNORED, SuppressionReason
from bulksend.tem.models import Address, Attachment, format_rfc3339, parse_rfc3339

__all__ = [
    "CAMPAIGN_ID_PATTERN",
    "CORRELATION_HEADER",
    "MAX_ATTACHMENT_FILE_BYTES",
    "MAX_CAMPAIGN_DEPTH",
    "MAX_TEMPLATE_FILE_BYTES",
    "Campaign",
    "FileAccess",
    "OutputSettings",
    "RenderLimits",
    "SendingSettings",
    "TrackingSettings",
    "UnsubscribeSettings",
    "campaign_from_dict",
    "check_campaign_id",
    "guess_attachment_type",
    "load_campaign",
    "new_template_environment",
    "parse_campaign_toml",
]

MAX_RENDER_LOOP_ITERATIONS: Final = 10_000_000
MAX_RENDER_S: Final = 10.0

MAX_TEMPLATE_FILE_BYTES: Final = 1024 * 1024
"""Largest ``text_file`` / ``html_file`` read."""
MAX_ATTACHMENT_FILE_BYTES: Final = MAX_EMAIL_BYTES * 3 // 4
"""Largest attachment file read: its base64 form alone fills a whole email."""
_MAX_UNSUBSCRIBE_URL: Final = 200
"""Longest ``[unsubscribe] url``: with a token and a mailto, the header stays under 998 characters."""
MAX_CAMPAIGN_DEPTH: Final = 16
"""Deepest nesting of tables and arrays in a campaign (a real one needs 4)."""

# Attachment MIME types by extension. An explicit table rather than the ``mimetypes`` module:
# that module reads the machine's /etc/mime.types, so the same campaign would be accepted on one
# machine and refused on another. Extensions not listed get application/octet-stream (refused).
_MIME_BY_SUFFIX: Final[Mapping[str, str]] = {
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".htm": "text/html",
    ".html": "text/html",
    ".ics": "text/calendar",
    ".ical": "text/calendar",
    ".xml": "application/xml",
    ".doc": "application/msword",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".xls": "application/vnd.ms-excel",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".xltx": "application/vnd.openxmlformats-officedocument.spreadsheetml.template",
    ".ods": "application/vnd.oasis.opendocument.spreadsheet",
    ".ppt": "application/vnd.ms-powerpoint",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".ppsx": "application/vnd.openxmlformats-officedocument.presentationml.slideshow",
    ".potx": "application/vnd.openxmlformats-officedocument.presentationml.template",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".p7m": "application/pkcs7-mime",
    ".p7s": "application/pkcs7-signature",
    ".p7c": "application/x-pkcs7-mime",
    ".p7b": "application/x-pkcs7-certificates",
    ".p7r": "application/x-pkcs7-certreqresp",
    ".crl": "application/x-pkcs7-crl",
    ".p10": "application/pkcs10",
    ".p12": "application/x-pkcs12",
    ".pfx": "application/x-pkcs12",
    ".dwg": "image/vnd.dwg",
    ".dxf": "image/vnd.dxf",
    ".dwf": "model/vnd.dwf",
    ".dwt": "application/vnd.dwt",
}


def guess_attachment_type(name: str) -> str:
    """The MIME type sent for an attachment file name (``application/octet-stream`` if unknown)."""
    return _MIME_BY_SUFFIX.get(Path(name).suffix.lower(), "application/octet-stream")


def new_template_environment(*, html: bool) -> SandboxedEnvironment:
    """The Jinja2 environment every campaign template is compiled with.

    Sandboxed (templates cannot reach Python internals, nor modify the lists and objects they are
    given, so one template cannot change what the next one sees), ``StrictUndefined`` (a missing
    variable is an error, never an empty string) and autoescaping only for the HTML body. Trailing
    newlines of template files are kept. Renders are bounded in size, loops and time by the
    :class:`~bulksend.campaign.templating.RenderLimits` in effect (see :mod:`bulksend.campaign.templating`).
    """
    return BoundedEnvironment(
        undefined=StrictUndefined,
        autoescape=html,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=0,
    )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

_SCHEMA: Final[Mapping[str, frozenset[str]]] = {
    "campaign": frozenset(
        {
            "id",
            "from",
            "subject",
            "text",
            "text_file",
            "html",
            "html_file",
            "recipients",
            "headers",
            "attachments",
            "send_before",
        }
    ),
    "sending": frozenset({"rate_per_s", "concurrency", "max_attempts", "max_retry_s", "timeout_s"}),
    "tracking": frozenset(
        {"poll_interval_s", "give_up_after_s", "page_size", "settle_s", "fallback_after_s", "mode"}
    ),
    "output": frozenset({"outcomes"}),
    "store": frozenset({"path"}),
    "render": frozenset({"max_part_chars", "max_loop_iterations", "max_render_s"}),
    "suppression": frozenset({"ignore"}),
    "guardrails": frozenset({"window", "min_emails", "max_bad_rate"}),
    "unsubscribe": frozenset({"url", "mailto"}),
}
_FROM_KEYS: Final = frozenset({"email", "name"})
_ATTACHMENT_KEYS: Final = frozenset({"path", "name", "type"})
_ID_RE: Final = re.compile(CAMPAIGN_ID_PATTERN)
_FROM_TEXT_RE: Final = re.compile(r"^\s*(.*?)\s*<\s*([^<>]+?)\s*>\s*$")
_OFFSET_RE: Final = re.compile(r"([Zz]|[+-]\d{2}:?\d{2})$")
_TOML_POS_RE: Final = re.compile(r"\(at line (\d+), column (\d+)\)")


def load_campaign(path: Path | str, *, overrides: Mapping[str, Any] | None = None) -> Campaign:
    """Read, validate and resolve a TOML campaign file.

    ``overrides`` replace keys of the file, either nested (``{"sending": {"rate_per_s": 10}}``) or
    dotted (``{"sending.rate_per_s": 10}``); they are validated like the file, and relative paths
    in them are resolved against the campaign file's folder too. Raises :class:`CampaignError`.
    """
    p = Path(path)
    label = str(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise CampaignError("the campaign file does not exist; check the path", path=label) from None
    except OSError as exc:
        raise CampaignError(f"the campaign file cannot be read ({exc.strerror})", path=label) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CampaignError(
            "the campaign file is not valid UTF-8; save it as UTF-8", path=label, line=line
        ) from None
    data = parse_campaign_toml(text, label)
    overridden: set[tuple[str, ...]] = set()
    if overrides:
        data = _apply_overrides(data, overrides, overridden)
    builder = _Builder(
        data,
        base_dir=p.resolve().parent,
        source=label,
        path=p.resolve(),
        locator=_KeyLocator(text),
        overridden=overridden,
    )
    return builder.build()


def campaign_from_dict(
    data: Mapping[str, Any], *, base_dir: Path, source: str, files: FileAccess | None = None
) -> Campaign:
    """Validate a campaign given as a mapping (same shape and rules as the TOML file).

    Relative paths resolve against ``base_dir`` (with ``files`` confined: the recipients and
    outputs only; the files the campaign names follow ``files``); ``source`` names the campaign
    in error messages (there are no line numbers). The campaign's ``path`` is ``base_dir``.
    Raises :class:`CampaignError`.
    """
    if not isinstance(data, Mapping):
        raise CampaignError("a campaign must be an object with a 'campaign' table", path=source)
    _check_depth(data, source)
    base = Path(base_dir).resolve()
    builder = _Builder(
        data,
        base_dir=base,
        source=source,
        path=base,
        locator=None,
        overridden=set(),
        files=files or FileAccess(),
    )
    return builder.build()


def parse_campaign_toml(text: str, source: str) -> dict[str, Any]:
    """Parse campaign TOML, refusing syntax errors and nesting deeper than
    :data:`MAX_CAMPAIGN_DEPTH` with a :class:`CampaignError` naming ``source``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _TOML_POS_RE.search(message)
        toml_line = int(m.group(1)) if m else None
        detail = _TOML_POS_RE.sub("", message).strip()
        col = f", column {m.group(2)}" if m else ""
        raise CampaignError(
            f"TOML syntax error{col}: {detail}; fix the syntax (strings need quotes, tables are "
            f"written [name], each key = value on its own line)",
            path=source,
            line=toml_line,
        ) from None
    except RecursionError:
        # tomllib recurses once per nested array or inline table: a hostile file exhausts the
        # stack long before it exhausts memory.
        _too_deep(source)
    _check_depth(data, source)
    return data


def check_campaign_id(value: object, source: str = "campaign") -> str:
    """``value`` if it is a usable campaign id (:data:`CAMPAIGN_ID_PATTERN`), else a CampaignError."""
    if not isinstance(value, str) or not value:
        raise CampaignError("the campaign needs a [campaign] table with an `id` string", path=source)
    if not _ID_RE.fullmatch(value):
        raise CampaignError(
            f"campaign.id {value[:80]!r} is not usable; use 1–64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit",
            path=source,
        )
    return value


def _check_depth(data: Mapping[str, Any], source: str) -> None:
    # Iterative on purpose: a recursive walk is what a deep document is built to break.
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_CAMPAIGN_DEPTH:
            _too_deep(source)
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, Mapping | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, Mapping | list))


def _too_deep(source: str) -> NoReturn:
    raise CampaignError(
        f"the campaign nests tables and arrays more than {MAX_CAMPAIGN_DEPTH} deep; a campaign needs "
        f"at most 4 levels (like [campaign] → attachments → {{ path = … }}): flatten it",
        path=source,
    )


def _apply_overrides(
    data: dict[str, Any], overrides: Mapping[str, Any], overridden: set[tuple[str, ...]]
) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``data``, remembering which key paths came from them."""
    out: dict[str, Any] = _deep_copy(data)

    def put(keypath: tuple[str, ...], value: Any) -> None:
        if isinstance(value, Mapping) and not (
            keypath == ("campaign", "from") or keypath == ("campaign", "headers")
        ):
            for k, v in value.items():
                put((*keypath, *str(k).split(".")), v)
            return
        node = out
        for part in keypath[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[keypath[-1]] = dict(value) if isinstance(value, Mapping) else value
        overridden.add(keypath)

    for key, value in overrides.items():
        put(tuple(str(key).split(".")), value)
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


class _KeyLocator:
    """Find the line where a key is written in a TOML text (tomllib keeps no positions).

    A light scan: table headers and ``key =`` lines, skipping multi-line strings and arrays. A key
    written inside an inline table or array is found at its parent key's line.
    """

    _KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
    _DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
    _TABLE_RE = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?")
    _ASSIGN_RE = re.compile(rf"^\s*({_DOTTED})\s*=\s*(.*)$")
    _PART_RE = re.compile(_KEY)

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        self.values: dict[tuple[str, ...], str] = {}
        table: tuple[str, ...] = ()
        in_string: str | None = None
        depth = 0
        for lineno, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            if depth > 0:
                depth += _bracket_balance(line)
                continue
            m = self._TABLE_RE.match(line)
            if m and not self._ASSIGN_RE.match(line):
                table = self._parts(m.group(1))
                self.lines.setdefault(table, lineno)
                continue
            m = self._ASSIGN_RE.match(line)
            if not m:
                continue
            keypath = table + self._parts(m.group(1))
            self.lines.setdefault(keypath, lineno)
            self.values.setdefault(keypath, m.group(2))
            rest = m.group(2)
            for quote in ('"""', "'''"):
                if rest.startswith(quote) and rest.count(quote) % 2 == 1:
                    in_string = quote
            if in_string is None and rest.startswith("["):
                depth = _bracket_balance(rest)

    def _parts(self, dotted: str) -> tuple[str, ...]:
        parts = []
        for m in self._PART_RE.finditer(dotted):
            part = m.group(0)
            if part[0] in "\"'":
                part = part[1:-1]
            parts.append(part)
        return tuple(parts)

    def line(self, keypath: tuple[str, ...]) -> int | None:
        """The line of ``keypath``, else of its closest written parent, else None."""
        for n in range(len(keypath), 0, -1):
            found = self.lines.get(keypath[:n])
            if found is not None:
                return found
        return None

    def value_starts_on_next_line(self, keypath: tuple[str, ...]) -> bool:
        """True for ``key = \"\"\"`` + newline, where TOML trims that first newline."""
        rest = self.values.get(keypath, "").strip()
        return rest in ('"""', "'''")


def _bracket_balance(text: str) -> int:
    # Good enough for arrays of paths and numbers; brackets inside strings are rare in this file.
    return text.count("[") - text.count("]")


@dataclass(slots=True)
class _Builder:
    """Builds one campaign from its mapping; ``fail`` locates each mistake in the file."""

    data: Mapping[str, Any]
    _: KW_ONLY
    base_dir: Path
    source: str
    path: Path
    locator: _KeyLocator | None
    overridden: set[tuple[str, ...]]
    files: FileAccess = field(default_factory=FileAccess)

    # -- errors ---------------------------------------------------------------------------------

    def fail(self, message: str, *keypath: str) -> NoReturn:
        """Raise a CampaignError located at ``keypath`` (its line in the file, when known)."""
        for n in range(len(keypath), 0, -1):
            if keypath[:n] in self.overridden:
                dotted = ".".join(keypath[:n])
                raise CampaignError(f"override {dotted!r}: {message}", path=self.source)
        line = self.locator.line(keypath) if self.locator is not None and keypath else None
        raise CampaignError(message, path=self.source, line=line)

    def _unknown_key(self, key: str, known: frozenset[str], where: str, *keypath: str) -> NoReturn:
        hint = ""
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        if close:
            hint = f"; did you mean {close[0]!r}?"
        else:
            homes = [s for s, keys in _SCHEMA.items() if key in keys]
            if homes:
                hint = f"; {key!r} belongs in the [{homes[0]}] table"
            else:
                hint = f"; known keys: {', '.join(sorted(known))}"
        self.fail(f"unknown key {key!r} in {where}{hint}", *keypath, key)

    # -- typed getters --------------------------------------------------------------------------

    def table(self, name: str) -> Mapping[str, Any]:
        value = self.data.get(name, {})
        if not isinstance(value, Mapping):
            self.fail(f"{name!r} must be a table, written [{name}] on its own line", name)
        for key in value:
            if key not in _SCHEMA[name]:
                self._unknown_key(key, _SCHEMA[name], f"[{name}]", name)
        return value

    def string(self, section: Mapping[str, Any], *keypath: str, required: bool = False) -> str | None:
        value = section.get(keypath[-1])
        if value is None:
            if required:
                self.fail(f'[{keypath[0]}] needs {keypath[-1]!r}; add {keypath[-1]} = "…"', keypath[0])
            return None
        if not isinstance(value, str):
            self.fail(f"{'.'.join(keypath)} must be a string (in quotes)", *keypath)
        return value

    def number(
        self,
        section: Mapping[str, Any],
        section_name: str,
        key: str,
        default: float,
        *,
        integer: bool = False,
        minimum: float,
        exclusive: bool = False,
        maximum: float | None = None,
    ) -> float:
        value: float = section.get(key, default)
        self.check(
            section_name, key, value, Bound(minimum, exclusive=exclusive, integer=integer, maximum=maximum)
        )
        return value

    def check(self, section_name: str, key: str, value: object, bound: Bound) -> None:
        problem = bound.problem(value)
        if problem is not None:
            self.fail(f"{section_name}.{key} {problem}", section_name, key)

    def numbers(
        self,
        section: Mapping[str, Any],
        settings: type[SendingSettings | TrackingSettings | GuardrailSettings],
    ) -> dict[str, Any]:
        """The values of ``section`` checked against the settings' own bounds, here so that a
        wrong one is told with its file and line; keys left out take the settings' defaults."""
        values = {key: section[key] for key in settings.BOUNDS if key in section}
        for key, value in values.items():
            self.check(settings.SECTION, key, value, settings.BOUNDS[key])
        return values

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    # -- build ----------------------------------------------------------------------------------

    def build(self) -> Campaign:
        for name in self.data:
            if name not in _SCHEMA:
                known = frozenset(_SCHEMA)
                close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
                homes = [s for s, keys in _SCHEMA.items() if name in keys]
                if isinstance(self.data[name], Mapping) and close:
                    hint = f"; did you mean [{close[0]}]?"
                elif homes:
                    hint = f"; {name!r} belongs in the [{homes[0]}] table"
                else:
                    hint = f"; the tables are {', '.join(f'[{s}]' for s in _SCHEMA)}"
                self.fail(f"unknown key {name!r} at the top level{hint}", name)
        if "campaign" not in self.data:
            self.fail("the [campaign] table is missing; start the file with [campaign] and its keys")
        c = self.table("campaign")

        campaign_id = self.string(c, "campaign", "id", required=True)
        assert campaign_id is not None
        if not _ID_RE.fullmatch(campaign_id):
            self.fail(
                f"campaign.id {campaign_id!r} is not usable; use 1–64 letters, digits, '.', '_' or "
                f"'-', starting with a letter or digit",
                "campaign",
                "id",
            )

        from_ = self.sender(c)
        subject = self.string(c, "campaign", "subject", required=True)
        assert subject is not None
        if not subject.strip():
            self.fail("campaign.subject is empty; write the subject line", "campaign", "subject")
        self.compile(subject, "subject", ("campaign", "subject"), html=False)
        if not _has_template_syntax(subject):
            reason = check_subject(subject)
            if reason:
                self.fail(f"campaign.subject: {reason}", "campaign", "subject")

        text = self.body(c, "text", html=False)
        html = self.body(c, "html", html=True)
        if not text.strip() and not html.strip():
            self.fail(
                "the campaign has no body; add text (or text_file) and/or html (or html_file)",
                "campaign",
            )

        recipients = self.recipients(c)
        headers = self.headers(c)
        unsubscribe = self.unsubscribe(headers)
        attachments = self.attachments(c)
        send_before = self.send_before(c)
        sending = self.sending()
        tracking = self.tracking()
        output = self.output(campaign_id)
        store_path = self.store(output)
        render = self.render()
        suppression_ignore = self.suppression_ignore()
        guardrails = self.guardrails()

        parts = (campaign_id, from_, subject, text, html, headers, attachments, recipients, send_before)
        fingerprint = _fingerprint(*parts)
        # What versions before the content fingerprint recorded: campaigns they started resume.
        legacy_fingerprint = _fingerprint(*parts, by_path=True)
        return Campaign(
            id=campaign_id,
            path=self.path,
            from_=from_,
            subject=subject,
            text=text,
            html=html,
            recipients=recipients,
            headers=headers,
            attachments=attachments,
            send_before=send_before,
            sending=sending,
            tracking=tracking,
            output=output,
            store_path=store_path,
            fingerprint=fingerprint,
            legacy_fingerprint=legacy_fingerprint,
            render=render,
            suppression_ignore=suppression_ignore,
            guardrails=guardrails,
            attachments_root=self.files.root if self.files.confined else recipients.parent.resolve(),
            unsubscribe=unsubscribe,
        )

    def sender(self, c: Mapping[str, Any]) -> Address:
        value = c.get("from")
        fix = 'write from = { email = "news@example.com", name = "Example News" }'
        if value is None:
            self.fail(f"[campaign] needs 'from' (the sender); {fix}", "campaign")
        if isinstance(value, str):
            m = _FROM_TEXT_RE.match(value)
            email, name = (m.group(2), m.group(1).strip('"').strip()) if m else (value.strip(), "")
        elif isinstance(value, Mapping):
            for key in value:
                if key not in _FROM_KEYS:
                    self._unknown_key(key, _FROM_KEYS, "campaign.from", "campaign", "from")
            email, name = value.get("email"), value.get("name", "")
            if not isinstance(email, str):
                self.fail(f"campaign.from needs an 'email' string; {fix}", "campaign", "from")
            if not isinstance(name, str):
                self.fail("campaign.from.name must be a string", "campaign", "from", "name")
        else:
            self.fail(f"campaign.from must be a table or a string; {fix}", "campaign", "from")
        reason = check_address(email)
        if reason:
            self.fail(
                f"campaign.from: {reason}; use the address of a domain verified in TEM",
                "campaign",
                "from",
            )
        reason = check_name(name, "campaign.from.name")
        if reason:
            self.fail(reason, "campaign", "from", "name")
        return Address(email=email.strip(), name=name or None)

    def body(self, c: Mapping[str, Any], kind: str, *, html: bool) -> str:
        inline = self.string(c, "campaign", kind)
        file_value = self.string(c, "campaign", f"{kind}_file")
        if inline is not None and file_value is not None:
            self.fail(f"give either {kind} or {kind}_file, not both; remove one", "campaign", f"{kind}_file")
        if file_value is not None:
            keypath = ("campaign", f"{kind}_file")
            file_path, shown = self.locate(file_value, f"campaign.{kind}_file", kind, *keypath)
            where = "relative to the campaign file's folder"
            if self.files.confined:
                where = "relative to the folder the daemon allows files from"
            try:
                raw = _read_regular_file(file_path, MAX_TEMPLATE_FILE_BYTES, nofollow=self.files.confined)
                source = raw.decode("utf-8-sig")
            except _Missing:
                self.fail(f"campaign.{kind}_file: {shown!r} does not exist; fix the path ({where})", *keypath)
            except _TooBig as exc:
                self.fail(
                    f"campaign.{kind}_file: {shown!r} is {exc.size_text} bytes; a template may be at most "
                    f"{MAX_TEMPLATE_FILE_BYTES:,} bytes",
                    *keypath,
                )
            except _Unreadable as exc:
                self.fail(f"campaign.{kind}_file: {shown!r} {exc}", *keypath)
            except UnicodeDecodeError:
                self.fail(f"campaign.{kind}_file: {shown!r} is not valid UTF-8; save it as UTF-8", *keypath)
            self.compile(source, kind, keypath, html=html, file=file_path, file_label=shown)
            return source
        source = inline or ""
        self.compile(source, kind, ("campaign", kind), html=html)
        return source

    def locate(self, value: str, what: str, inline_hint: str, *keypath: str) -> tuple[Path, str]:
        """The path of a file the campaign names, and how to show it in messages.

        Confined, the file must resolve (symlinks followed) inside the allowed folder, and is shown
        as the caller wrote it, so no message reveals where the daemon keeps its files.
        """
        if not self.files.confined:
            path = self.resolve(value)
            return path, str(path)
        root = self.files.root
        if root is None:
            hint = f'give it inline ({inline_hint} = "…")' if inline_hint else "leave it out"
            self.fail(
                f"{what} {value[:200]!r}: a campaign submitted to the daemon may not name files, as the "
                f"daemon has no [admin] files_root; {hint}, or ask the operator to set files_root",
                *keypath,
            )
        try:
            # An absolute value replaces the root here; the containment check below catches it.
            path = (root / value).resolve()
        except (OSError, RuntimeError, ValueError):
            self.fail(f"{what} {value[:200]!r} is not a usable path; name a file inside files_root", *keypath)
        if not path.is_relative_to(root):
            self.fail(
                f"{what} {value[:200]!r} is outside the folder the daemon allows files from ([admin] "
                f"files_root); name a file inside it, by a path relative to it",
                *keypath,
            )
        return path, value[:200]

    def compile(
        self,
        source: str,
        what: str,
        keypath: tuple[str, ...],
        *,
        html: bool,
        file: Path | None = None,
        file_label: str | None = None,
    ) -> None:
        """Compile a template now so a syntax error stops the campaign before any send."""
        try:
            new_template_environment(html=html).from_string(source)
        except TemplateSyntaxError as exc:
            detail = (exc.message or "invalid syntax").rstrip(".")
            fix = "fix the template ({{ variable }}, {% if %}…{% endif %}, {% for %}…{% endfor %})"
            if file is not None:
                raise CampaignError(
                    f"template syntax error in the {what} template: {detail}; {fix}",
                    path=file_label or str(file),
                    line=exc.lineno,
                ) from None
            for n in range(len(keypath), 0, -1):
                if keypath[:n] in self.overridden:
                    self.fail(f"template syntax error in the {what} template: {detail}", *keypath)
            line = None
            if self.locator is not None:
                base = self.locator.line(keypath)
                if base is not None:
                    line = base + (exc.lineno or 1) - 1
                    if self.locator.value_starts_on_next_line(keypath):
                        line += 1
            raise CampaignError(
                f"template syntax error in the {what} template (line {exc.lineno} of the template): "
                f"{detail}; {fix}",
                path=self.source,
                line=line,
            ) from None

    def recipients(self, c: Mapping[str, Any]) -> Path:
        value = self.string(c, "campaign", "recipients", required=True)
        assert value is not None
        path = self.resolve(value)
        if path.suffix.lower() not in RECIPIENT_SUFFIXES:
            self.fail(
                f"campaign.recipients: cannot read recipients from a {path.suffix or 'suffix-less'} "
                f"file; use a .csv/.tsv file with an 'email' column or a .jsonl file",
                "campaign",
                "recipients",
            )
        if not path.is_file():
            self.fail(
                f"campaign.recipients: {str(path)!r} does not exist; fix the path (relative to the "
                f"campaign file's folder)",
                "campaign",
                "recipients",
            )
        # The CSV header is checked now: a missing 'email' column is a campaign-level mistake.
        check_recipients(path)
        return path

    def headers(self, c: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        value = c.get("headers", {})
        if not isinstance(value, Mapping):
            self.fail(
                'campaign.headers must be a table, like headers = { "List-Unsubscribe" = "<…>" }',
                "campaign",
                "headers",
            )
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for key, template in value.items():
            if not isinstance(template, str):
                self.fail(f"header {key!r} must have a string value", "campaign", "headers", key)
            reason = check_header(key, "x")
            if reason:
                self.fail(f"campaign.headers: {reason}", "campaign", "headers", key)
            if key.lower() == CORRELATION_HEADER.lower():
                self.fail(
                    f"header {CORRELATION_HEADER!r} is set by bulksend on every email; remove it",
                    "campaign",
                    "headers",
                    key,
                )
            if key.lower() in seen:
                self.fail(f"header {key!r} is given twice; keep one", "campaign", "headers", key)
            seen.add(key.lower())
            self.compile(template, f"header {key}", ("campaign", "headers", key), html=False)
            if not _has_template_syntax(template):
                reason = check_header(key, template)
                if reason:
                    self.fail(f"campaign.headers: {reason}", "campaign", "headers", key)
            out.append((key, template))
        return tuple(out)

    def attachments(self, c: Mapping[str, Any]) -> tuple[Attachment, ...]:
        value = c.get("attachments", [])
        if not isinstance(value, list):
            self.fail('campaign.attachments must be a list, like ["brochure.pdf"]', "campaign", "attachments")
        if len(value) > MAX_ATTACHMENTS:
            self.fail(
                f"campaign.attachments lists {len(value)} files; TEM allows at most {MAX_ATTACHMENTS}",
                "campaign",
                "attachments",
            )
        out: list[Attachment] = []
        total = 0
        for item in value:
            name: Any = None
            mime: Any = None
            file_value: Any
            if isinstance(item, str):
                file_value = item
            elif isinstance(item, Mapping):
                for key in item:
                    if key not in _ATTACHMENT_KEYS:
                        self._unknown_key(key, _ATTACHMENT_KEYS, "an attachment", "campaign", "attachments")
                file_value = item.get("path")
                name = item.get("name")
                mime = item.get("type")
                if (
                    not isinstance(file_value, str)
                    or not isinstance(name, str | None)
                    or not isinstance(mime, str | None)
                ):
                    self.fail(
                        "an attachment table needs a string path (and optional string name and type), like "
                        '{ path = "a.pdf", name = "Brochure.pdf" }',
                        "campaign",
                        "attachments",
                    )
            else:
                self.fail(
                    "campaign.attachments items must be file paths (strings)", "campaign", "attachments"
                )
            attachment = self.load_attachment(file_value, name, mime)
            total += len(attachment.content)
            if total > MAX_EMAIL_BYTES:
                self.fail(
                    f"the campaign attachments take {total:,} bytes once base64-encoded; a whole email "
                    f"must stay under {MAX_EMAIL_BYTES:,} bytes; send a link instead",
                    "campaign",
                    "attachments",
                )
            out.append(attachment)
        return tuple(out)

    def load_attachment(self, file_value: str, name: str | None, mime: str | None) -> Attachment:
        keypath = ("campaign", "attachments")
        path, shown = self.locate(file_value, "attachment", "", *keypath)
        name = name or path.name
        mime = mime or guess_attachment_type(name)
        try:
            # The cap is checked before reading: a huge file is not loaded just to say it is too big.
            data = _read_regular_file(path, MAX_ATTACHMENT_FILE_BYTES, nofollow=self.files.confined)
        except _Missing:
            where = (
                "the folder the daemon allows files from"
                if self.files.confined
                else "the campaign file's folder"
            )
            self.fail(f"attachment {shown!r} does not exist; fix the path (relative to {where})", *keypath)
        except _TooBig as exc:
            encoded = f" ({4 * ((exc.size + 2) // 3):,} once base64-encoded)" if exc.exact else ""
            self.fail(
                f"attachment {shown!r} is {exc.size_text} bytes{encoded}; a whole email must stay under "
                f"{MAX_EMAIL_BYTES:,} bytes; send a link instead",
                *keypath,
            )
        except _Unreadable as exc:
            self.fail(f"attachment {shown!r} {exc}", *keypath)
        content = base64.b64encode(data).decode("ascii")
        reason = check_attachment(name, mime, content)
        if reason:
            self.fail(
                f"campaign.attachments: {reason}; convert it to an accepted type (PDF, image, text, "
                f"office document, …)",
                *keypath,
            )
        return Attachment(name=name, type=mime, content=content)

    def unsubscribe(self, headers: tuple[tuple[str, str], ...]) -> UnsubscribeSettings | None:
        """``[unsubscribe]``: checked, and refused without the secret that signs its links."""
        if "unsubscribe" not in self.data:
            return None
        u = self.table("unsubscribe")
        url = (self.string(u, "unsubscribe", "url", required=True) or "").strip().rstrip("/")
        parts = urlsplit(url)
        local = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if (
            not (parts.scheme == "https" or (parts.scheme == "http" and local))
            or not parts.hostname
            or parts.query
            or parts.fragment
            or len(url) > _MAX_UNSUBSCRIBE_URL
        ):
            self.fail(
                f"unsubscribe.url must be the https:// base URL (at most {_MAX_UNSUBSCRIBE_URL} characters, "
                'no query) where bulksend serve answers /u/, like url = "https://mail.example.com"; '
                f"got {url[:80]!r}",
                "unsubscribe",
                "url",
            )
        mailto = self.string(u, "unsubscribe", "mailto")
        if mailto is not None:
            mailto = mailto.strip()
            reason = check_address(mailto)
            if reason:
                self.fail(f"unsubscribe.mailto: {reason}", "unsubscribe", "mailto")
        for key, _ in headers:
            if key.lower() in ("list-unsubscribe", "list-unsubscribe-post"):
                self.fail(
                    f"header {key!r} is written by [unsubscribe]; remove it from campaign.headers",
                    "campaign",
                    "headers",
                    key,
                )
        try:
            UnsubscribeSigner.from_env()
        except ConfigError as exc:
            self.fail(str(exc), "unsubscribe")
        return UnsubscribeSettings(url=url, mailto=mailto)

    def send_before(self, c: Mapping[str, Any]) -> datetime | None:
        value = c.get("send_before")
        fix = 'write it as an RFC 3339 time with an offset, like send_before = "2026-12-31T00:00:00Z"'
        if value is None:
            return None
        if isinstance(value, datetime):
            if value.tzinfo is None:
                self.fail(f"campaign.send_before has no time zone; {fix}", "campaign", "send_before")
            try:
                return parse_rfc3339(value)
            except ValueError as exc:
                self.fail(
                    f"campaign.send_before is not a usable time ({exc}); {fix}", "campaign", "send_before"
                )
        if isinstance(value, date | time):
            self.fail(f"campaign.send_before must be a date and time; {fix}", "campaign", "send_before")
        if not isinstance(value, str):
            self.fail(f"campaign.send_before is not a time; {fix}", "campaign", "send_before")
        text = value.strip()
        try:
            parsed = parse_rfc3339(text)
        except ValueError as exc:
            self.fail(
                f"campaign.send_before {value!r} is not a time ({exc}); {fix}", "campaign", "send_before"
            )
        if parsed is None:
            self.fail(f"campaign.send_before {value!r} is not a time; {fix}", "campaign", "send_before")
        if not _OFFSET_RE.search(text):
            self.fail(f"campaign.send_before {value!r} has no time zone; {fix}", "campaign", "send_before")
        return parsed

    def sending(self) -> SendingSettings:
        s = self.table("sending")
        return SendingSettings(**self.numbers(s, SendingSettings), rate_given="rate_per_s" in s)

    def tracking(self) -> TrackingSettings:
        t = self.table("tracking")
        mode = self.string(t, "tracking", "mode") or TrackingSettings.mode
        if mode not in TrackingSettings.MODES:
            self.fail(f"tracking.mode must be 'polling' or 'events' (got {mode!r})", "tracking", "mode")
        return TrackingSettings(**self.numbers(t, TrackingSettings), mode=mode)

    def guardrails(self) -> GuardrailSettings:
        try:
            return GuardrailSettings(**self.numbers(self.table("guardrails"), GuardrailSettings))
        except SettingError as exc:  # a rule between two keys, past each key's own bounds
            self.fail(str(exc), "guardrails", exc.key)

    def suppression_ignore(self) -> frozenset[SuppressionReason]:
        """The reasons of ``[suppression] ignore``: suppressed addresses this campaign still sends to."""
        value = self.table("suppression").get("ignore", [])
        known = ", ".join(r.value for r in SuppressionReason if r not in NEVER_IGNORED)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(
                f'suppression.ignore must be a list of reasons, like ["mailbox_full"]; known: {known}',
                "suppression",
                "ignore",
            )
        reasons: set[SuppressionReason] = set()
        for v in value:
            if v not in SuppressionReason.__members__.values():
                self.fail(
                    f"suppression.ignore: {v!r} is not a reason; known: {known}", "suppression", "ignore"
                )
            reason = SuppressionReason(v)
            if reason in NEVER_IGNORED:
                self.fail(
                    f"suppression.ignore cannot hold {v!r}: a person who unsubscribed is never sent to "
                    "again by any campaign; remove it from the list",
                    "suppression",
                    "ignore",
                )
            reasons.add(reason)
        return frozenset(reasons)

    def render(self) -> RenderLimits:
        # Ceilings as well as floors: campaigns also come through the admin API, and limits
        # raised without end would let one template hold the daemon. A part longer than a whole
        # email could never be sent anyway.
        r = self.table("render")
        d = RenderLimits()
        return RenderLimits(
            max_part_chars=int(
                self.number(
                    r,
                    "render",
                    "max_part_chars",
                    d.max_part_chars,
                    integer=True,
                    minimum=1,
                    maximum=MAX_EMAIL_BYTES,
                )
            ),
            max_loop_iterations=int(
                self.number(
                    r,
                    "render",
                    "max_loop_iterations",
                    d.max_loop_iterations,
                    integer=True,
                    minimum=0,
                    maximum=MAX_RENDER_LOOP_ITERATIONS,
                )
            ),
            max_render_s=self.number(
                r,
                "render",
                "max_render_s",
                d.max_render_s,
                minimum=0,
                exclusive=True,
                maximum=MAX_RENDER_S,
            ),
        )

    def output(self, campaign_id: str) -> OutputSettings:
        o = self.table("output")
        value = self.string(o, "output", "outcomes")
        path = self.resolve(value) if value is not None else self.base_dir / "out" / f"{campaign_id}.jsonl"
        if path.suffix.lower() not in (".jsonl", ".csv"):
            self.fail(f"output.outcomes must end in .jsonl or .csv (got {path.name!r})", "output", "outcomes")
        return OutputSettings(outcomes=path)

    def store(self, output: OutputSettings) -> Path:
        s = self.table("store")
        value = self.string(s, "store", "path")
        if value is None:
            return output.outcomes.with_suffix(".db")
        if self.files.confined:
            self.fail("store.path: the daemon keeps its own store; remove [store]", "store", "path")
        path = self.resolve(value)
        if path == output.outcomes:
            self.fail("store.path is the outcomes file; give the store its own file", "store", "path")
        return path


def _has_template_syntax(source: str) -> bool:
    return "{{" in source or "{%" in source or "{#" in source


def _fingerprint(
    campaign_id: str,
    from_: Address,
    subject: str,
    text: str,
    html: str,
    headers: tuple[tuple[str, str], ...],
    attachments: tuple[Attachment, ...],
    recipients: Path,
    send_before: datetime | None,
    *,
    by_path: bool = False,
) -> str:
    doc = {
        "id": campaign_id,
        "from": from_.to_json(),
        "subject": subject,
        "text": text,
        "html": html,
        "headers": [list(h) for h in headers],
        "attachments": [
            [a.name, a.type, hashlib.sha256(a.content.encode("ascii")).hexdigest()] for a in attachments
        ],
        # By content, not by path: the same campaign copied to another folder (or mounted at another
        # path on another worker) is the same campaign; an edited recipient file is not.
        "recipients": str(recipients) if by_path else _file_sha256(recipients),
        "send_before": format_rfc3339(send_before) if send_before is not None else None,
    }
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _file_sha256(path: Path) -> str:
    """The sha256 of a file's content, read in 1 MiB chunks (recipient files may be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _Unreadable(Exception):
    """A named file that cannot be used; the message completes "<file> …" and is safe to show."""


class _Missing(_Unreadable):
    """The file does not exist (the caller's message says where it was looked for)."""


class _TooBig(_Unreadable):
    def __init__(self, size: int, *, exact: bool) -> None:
        super().__init__("is too large")
        self.size = size
        self.exact = exact

    @property
    def size_text(self) -> str:
        return f"{self.size:,}" if self.exact else f"more than {self.size:,}"


def _read_regular_file(path: Path, limit: int, *, nofollow: bool) -> bytes:
    """The content of a regular file of at most ``limit`` bytes, or :class:`_Unreadable`.

    Devices, pipes and sockets are refused from the opened descriptor's own ``fstat`` (no race
    with the path), opening never blocks (``O_NONBLOCK``: a FIFO would wait for a writer), and
    at most ``limit + 1`` bytes are read whatever the size claims (a file that grew, ``/proc``).
    ``nofollow`` refuses a last component that became a symlink after the path was resolved.
    """
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    )
    if nofollow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        # Checked before opening too: opening some devices acts on them (a watchdog, a tape).
        _check_regular(os.stat(path).st_mode)
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _Missing("does not exist") from None
    except IsADirectoryError:
        raise _Unreadable("is a folder, not a file") from None
    except ValueError:
        raise _Unreadable("is not a usable path (it holds a NUL character)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unreadable("is a symbolic link that changed while it was being read") from None
        raise _Unreadable(f"cannot be read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        _check_regular(st.st_mode)  # again on what was opened: the path may have changed since
        if st.st_size > limit:
            raise _TooBig(st.st_size, exact=True)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise _Unreadable(f"cannot be read ({exc.strerror})") from None
    if len(data) > limit:
        raise _TooBig(limit, exact=False)
    return data


def _check_regular(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise _Unreadable("is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise _Unreadable("is not a regular file (a device, pipe or socket); name a regular file")
