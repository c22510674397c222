"""Turn one recipient into a ready-to-POST ``CreateEmailRequest`` body, or a :class:`Rejection`.

:class:`Renderer` compiles every template of a campaign once (sandboxed Jinja2, ``StrictUndefined``,
autoescaping for the HTML body only) and precomputes everything that is the same for every
recipient: the JSON of the sender, ``project_id`` and ``send_before``, the campaign attachments'
JSON fragment (which may be close to 2 MB and is never re-encoded), headers without variables, and
templates without variables (rendered once). Templates made only of text and ``{{ name }}`` are
rendered per recipient by joining text and values, without a Jinja context; the others by Jinja.
:meth:`Renderer.render` runs once per recipient and never raises: every problem becomes a
:class:`Rejection` with a reason a person can act on.
"""

from __future__ import annotations

import base64
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
from jinja2 import Template, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import escape

from bulksend.campaign import validate
from bulksend.campaign.load import (
    CORRELATION_HEADER,
    Campaign,
    UnsubscribeSettings,
    guess_attachment_type,
    new_template_environment,
)
from bulksend.campaign.templating import check_output, end_render, start_render
from bulksend.deliverability.tokens import UnsubscribeSigner
from bulksend.errors import CampaignError, ConfigError
from bulksend.tem.models import Attachment, format_rfc3339

__all__ = ["Rejection", "RenderPacer", "RenderedEmail", "Renderer"]

_UNDEFINED_RE: Final = re.compile(r"^'([^']+)' is undefined$")
_ATTACHMENT_CACHE_ENTRIES: Final = 64
_ATTACHMENT_CACHE_BYTES: Final = 32 * 1024 * 1024
UNSUBSCRIBE_HEADER: Final = "List-Unsubscribe"
ONE_CLICK_HEADER: Final = "List-Unsubscribe-Post"
ONE_CLICK_VALUE: Final = "List-Unsubscribe=One-Click"
_ONE_CLICK_JSON: Final = orjson.dumps({"key": ONE_CLICK_HEADER, "value": ONE_CLICK_VALUE}) + b","


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """A ready-to-POST request body for exactly one recipient."""

    body: bytes
    """orjson-encoded CreateEmailRequest (``to`` = that one recipient, ``project_id`` filled)."""
    subject: str
    """The rendered subject (reconciliation searches TEM by it)."""
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why this recipient cannot be sent to; the rest of the campaign goes on."""

    reason: str


class RenderPacer:
    """Tells a loop that renders on the event loop when to let other tasks run.

    One render stops at ``[render] max_render_s``, but a batch of slow ones in a row would hold
    the loop for the whole batch: signals, health checks and sends in flight wait. A loop asks
    :meth:`due` after each render and yields (``await anyio.lowlevel.checkpoint()``) when it says
    so; a batch of fast renders never yields.
    """

    __slots__ = ("_slice_s", "_until")

    def __init__(self, slice_s: float = 0.02) -> None:
        self._slice_s = slice_s
        self._until = time.monotonic() + slice_s

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._until:
            return False
        self._until = now + self._slice_s
        return True


class _Part:
    """One template: a constant (no variables: rendered once), or a compiled template.

    A compiled template made only of text and ``{{ name }}`` outputs, which is what most campaign
    templates are, is also kept as text and ``names``: :meth:`render` then joins the text
    with each value converted exactly as the compiled template converts it (``str``, or ``escape``
    where the environment autoescapes), without building a Jinja context. Anything else, and any
    value the join cannot take as it is (a missing name, a conversion that raises), goes through
    the compiled template, which gives the same output and raises the same exceptions as ever.
    """

    __slots__ = ("constant", "context_globals", "convert", "head", "names", "pairs", "template", "what")

    def __init__(self, env: SandboxedEnvironment, source: str, what: str, campaign_id: str) -> None:
        self.what = what
        self.template: Template | None = None
        self.constant: str | None = None
        self.names: tuple[str, ...] | None = None
        self.head = ""
        self.pairs: tuple[tuple[str, str], ...] = ()
        self.convert: Callable[[Any], str] = escape if env.autoescape is True else str
        self.context_globals: dict[str, Any] = {}
        try:
            template = env.from_string(source)
            ast = env.parse(source)
            names = meta.find_undeclared_variables(ast)
        except Exception as exc:  # the campaign loader compiled it already; this is a safety net
            raise CampaignError(f"the {what} template does not compile: {exc}") from None
        # `random` would be frozen by rendering once, so such templates stay per-recipient.
        if names <= {"campaign"} and "random" not in source:
            try:
                self.constant = template.render(campaign=campaign_id)
            except Exception as exc:
                raise CampaignError(
                    f"the {what} template fails for every recipient: {type(exc).__name__}: {exc}; fix it"
                ) from None
            return
        self.template = template
        # A plain dict of the template's globals: the Context copies their keys on every render,
        # and iterating the ChainMap Jinja keeps them in is almost half the cost of a Context.
        self.context_globals = dict(template.globals)
        # The join converts values as the compiled template does only without a finalize hook
        # that changes them (the campaign environments' hook only measures containers, and the
        # values a plain template prints are the recipient's own, bounded by the input limits)
        # and with autoescaping fixed for the whole environment (both hold for campaign
        # environments; anything else stays with Jinja).
        if env.finalize in (None, check_output) and isinstance(env.autoescape, bool):
            simple = _text_and_names(ast)
            if simple is not None:
                literals, self.names = simple
                # The text before the first name, then each name with the text that follows it.
                self.head = literals[0]
                self.pairs = tuple(zip(self.names, literals[1:], strict=True))

    def render(self, parent: dict[str, Any]) -> str:
        """Render with ``parent`` = the environment globals merged with the recipient's variables.

        A failure raises what the compiled template raises (UndefinedError, SecurityError, …).
        """
        if self.constant is not None:
            return self.constant
        if self.names is not None:
            convert = self.convert
            out = [self.head]
            append = out.append
            try:
                for name, text in self.pairs:
                    append(convert(parent[name]))
                    append(text)
            except Exception:
                pass  # the compiled template renders it all the same, or fails and says why
            else:
                return "".join(out)
        return self.render_compiled(parent)

    def render_compiled(self, parent: dict[str, Any]) -> str:
        """Render through the compiled template (what Template.render does, minus two costs).

        The two costs, which dominate a small template: merging the globals into a fresh dict
        (done once per recipient by the caller, shared by every template since they only read
        it) and rewriting the traceback of a failure (a failure here is a routine per-row
        rejection, not something to debug).
        """
        if self.constant is not None:
            return self.constant
        t = self.template
        assert t is not None
        env = t.environment
        # What Template.new_context(parent, shared=True) builds, with the globals' keys taken
        # from a plain dict (the same keys) instead of the ChainMap.
        ctx = env.context_class(env, parent, t.name, t.blocks, globals=self.context_globals)
        return env.concat(t.root_render_func(ctx))


# Names the compiler treats specially at the top level of a template (``self`` is the template
# reference); a template using one of them is always rendered by Jinja.
_SPECIAL_NAMES: Final = frozenset({"self", "super", "loop", "caller", "varargs", "kwargs"})


def _text_and_names(ast: nodes.Template) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """``(literals, names)`` if the template is only text and ``{{ name }}`` outputs, else None.

    ``literals`` has one more item than ``names``: the text before, between and after them. The
    text is the parsed template data, as the compiled template writes it (the lexer has already
    applied whitespace control and newline normalisation).
    """
    literals = [""]
    names: list[str] = []
    for node in ast.body:
        if type(node) is not nodes.Output:
            return None
        for child in node.nodes:
            if type(child) is nodes.TemplateData:
                literals[-1] += child.data
            elif type(child) is nodes.Name and child.ctx == "load" and child.name not in _SPECIAL_NAMES:
                names.append(child.name)
                literals.append("")
            else:
                return None
    return tuple(literals), tuple(names)


class Renderer:
    """Renders one email per recipient for a campaign. Safe to share; ``render`` never raises."""

    def __init__(self, campaign: Campaign, *, project_id: str) -> None:
        """Compile every template once and precompute the constant parts of the request body.

        Raises :class:`CampaignError` if a template without variables fails to render or a
        constant header is refused (that would reject every recipient).
        """
        self.campaign = campaign
        self.project_id = project_id
        text_env = new_template_environment(html=False)
        html_env = new_template_environment(html=True)
        # Both environments have the same (default) globals: range, dict, lipsum, cycler, …
        self._globals: dict[str, Any] = dict(text_env.globals)
        cid = campaign.id
        self._campaign_id = cid
        self._limits = campaign.render
        # Constant parts are rendered now, within the limits: a template that exhausts them
        # without any recipient data is refused here, before anything is admitted.
        token = start_render(self._limits)
        try:
            self._subject = _Part(text_env, campaign.subject, "subject", cid)
            self._text = _Part(text_env, campaign.text, "text", cid)
            self._html = _Part(html_env, campaign.html, "html", cid)
            self._headers: list[tuple[str, _Part]] = [
                (key, _Part(text_env, source, f"header {key}", cid)) for key, source in campaign.headers
            ]
        finally:
            end_render(token)
        # Templates made only of text and names need no budget: their output is their text and
        # the recipient's values.
        self._needs_budget = any(
            p.template is not None and p.names is None
            for p in (self._subject, self._text, self._html, *(p for _, p in self._headers))
        )
        if self._subject.constant is not None:
            reason = validate.check_subject(self._subject.constant)
            if reason:
                raise CampaignError(f"the subject is refused for every recipient: {reason}")

        # Headers: constant ones are rendered and checked now; templated ones per recipient.
        for key, part in self._headers:
            if part.constant is not None:
                reason = validate.check_header(key, part.constant)
                if reason:
                    raise CampaignError(f"header {key!r} is refused for every recipient: {reason}")
        self._all_headers_constant = all(p.constant is not None for _, p in self._headers)
        # Each header object followed by a comma: the correlation header always comes last.
        self._constant_headers_json = b"".join(
            orjson.dumps({"key": k, "value": p.constant}) + b","
            for k, p in self._headers
            if p.constant is not None
        )
        self._correlation_header_start = b'{"key":' + orjson.dumps(CORRELATION_HEADER) + b',"value":'
        # One-click unsubscribe (RFC 8058): a signed link per recipient, and the POST marker.
        self._unsubscribe: tuple[UnsubscribeSigner, UnsubscribeSettings] | None = None
        if campaign.unsubscribe is not None:
            try:
                self._unsubscribe = (UnsubscribeSigner.from_env(), campaign.unsubscribe)
            except ConfigError as exc:
                raise CampaignError(str(exc)) from None

        # The body is spliced from bytes: a constant prefix, the attachments array, then the
        # per-recipient members, each string encoded on its own (the bytes orjson writes for a
        # string do not depend on where it sits, so the body is the same as encoding one dict,
        # without building it). The constant prefix and the campaign attachments are encoded once.
        prefix: dict[str, Any] = {"from": campaign.from_.to_json(), "project_id": project_id}
        if campaign.send_before is not None:
            prefix["send_before"] = format_rfc3339(campaign.send_before)
        self._prefix = orjson.dumps(prefix)[:-1]  # without the closing brace
        self._campaign_attachments = b",".join(orjson.dumps(a.to_json()) for a in campaign.attachments)
        self._n_campaign_attachments = len(campaign.attachments)

        self._attachment_root = campaign.attachments_root
        self._root_is_recipients_folder = self._attachment_root == campaign.recipients.parent.resolve()
        self._attachment_cache: OrderedDict[Path, tuple[int, int, bytes]] = OrderedDict()
        self._attachment_cache_bytes = 0
        # render() may run in worker threads; the cache is the only state it changes.
        self._attachment_lock = threading.Lock()

    def render(
        self,
        email: str,
        name: str,
        variables: Mapping[str, Any],
        *,
        correlation: str,
        attachments: Sequence[str] = (),
    ) -> RenderedEmail | Rejection:
        """Render the email for one recipient, or say why it cannot be sent.

        Template variables: every entry of ``variables`` plus ``email``, ``name`` and ``campaign``
        (the campaign id), which win over variables of the same name. ``correlation`` is sent as
        the ``X-Bulksend-Ref`` header. ``attachments`` are paths relative to the recipients file's
        folder (and must stay inside it).
        """
        token = start_render(self._limits) if self._needs_budget else None
        try:
            return self._render(email, name, variables, correlation, attachments)
        except Exception as exc:  # a last resort: render() must never stop a campaign
            return Rejection(f"the email could not be built: {type(exc).__name__}: {exc}")
        finally:
            if token is not None:
                end_render(token)

    def _render(
        self,
        email: str,
        name: str,
        variables: Mapping[str, Any],
        correlation: str,
        attachments: Sequence[str],
    ) -> RenderedEmail | Rejection:
        email = email.strip()
        reason = validate.check_address(email)
        if reason:
            return Rejection(f"invalid recipient address: {reason}")
        name = name.strip() if name else ""
        reason = validate.check_name(name)
        if reason:
            return Rejection(reason)
        reason = validate.check_header(CORRELATION_HEADER, correlation)
        if reason:
            return Rejection(f"invalid correlation reference: {reason}")

        ctx: dict[str, Any] = {
            **self._globals,
            **variables,
            "email": email,
            "name": name,
            "campaign": self._campaign_id,
        }
        unsubscribe_json = b""
        if self._unsubscribe is not None:
            link = self._unsubscribe_link(*self._unsubscribe, email)
            if isinstance(link, Rejection):
                return link
            ctx["unsubscribe_url"] = link[0]
            unsubscribe_json = link[1]

        part = self._subject
        try:
            subject = part.render(ctx)
            part = self._text
            text = part.render(ctx)
            part = self._html
            html = part.render(ctx)
            headers: list[dict[str, str]] | None = None
            if not self._all_headers_constant:
                headers = []
                for key, part in self._headers:
                    value = part.render(ctx)
                    if part.constant is None:
                        reason = validate.check_header(key, value)
                        if reason:
                            return Rejection(f"after rendering, {reason}")
                    headers.append({"key": key, "value": value})
        except UndefinedError as exc:
            message = str(exc)
            m = _UNDEFINED_RE.match(message)
            if m:
                return Rejection(
                    f"missing template variable {m.group(1)!r} in the {part.what} template; add a "
                    f"{m.group(1)!r} column/key for this recipient or use "
                    f"{{{{ {m.group(1)} | default('') }}}}"
                )
            return Rejection(f"missing template variable in the {part.what} template: {message}")
        except SecurityError as exc:
            return Rejection(f"the {part.what} template was stopped by the sandbox: {exc}")
        except Exception as exc:
            return Rejection(f"the {part.what} template failed: {type(exc).__name__}: {exc}")

        if self._subject.constant is None:
            reason = validate.check_subject(subject)
            if reason:
                return Rejection(f"the rendered subject is refused: {reason}")
        if not text and not html:
            return Rejection("both the text and the html body rendered empty for this recipient")

        attachments_json = self._campaign_attachments
        if attachments:
            if self._n_campaign_attachments + len(attachments) > validate.MAX_ATTACHMENTS:
                return Rejection(
                    f"{self._n_campaign_attachments + len(attachments)} attachments; TEM allows at most "
                    f"{validate.MAX_ATTACHMENTS} per email"
                )
            fragments = [attachments_json] if attachments_json else []
            for rel in attachments:
                loaded = self._recipient_attachment(rel)
                if isinstance(loaded, Rejection):
                    return loaded
                fragments.append(loaded)
            attachments_json = b",".join(fragments)

        dumps = orjson.dumps
        if headers is None:
            headers_json = self._constant_headers_json
        else:
            headers_json = b"".join(dumps(h) + b"," for h in headers)
        if attachments_json:
            open_attachments, close_attachments = b',"attachments":[', b"]"
        else:
            open_attachments = close_attachments = b""
        body = b"".join(
            (
                self._prefix,
                open_attachments,
                attachments_json,
                close_attachments,
                b',"to":[{"email":',
                dumps(email),
                b',"name":' + dumps(name) if name else b"",
                b'}],"subject":',
                dumps(subject),
                b',"text":',
                dumps(text),
                b',"html":',
                dumps(html),
                b',"additional_headers":[',
                headers_json,
                unsubscribe_json,
                self._correlation_header_start,
                dumps(correlation),
                b"}]}",
            )
        )
        size = len(body)
        if size > validate.MAX_EMAIL_BYTES:
            return Rejection(
                f"the email is {size:,} bytes once encoded; TEM accepts at most {validate.MAX_EMAIL_BYTES:,} "
                f"(2 MB, attachments included); shorten the content or send a link instead of an attachment"
            )
        return RenderedEmail(body=body, subject=subject, size_bytes=size)

    def _unsubscribe_link(
        self, signer: UnsubscribeSigner, settings: UnsubscribeSettings, email: str
    ) -> tuple[str, bytes] | Rejection:
        """The recipient's unsubscribe URL, and the JSON of its two headers (each followed by a comma)."""
        try:
            token = signer.token(self.project_id, email, self._campaign_id)
        except ValueError as exc:
            return Rejection(f"no unsubscribe link can be made for this recipient: {exc}")
        url = f"{settings.url}/u/{token}"
        value = f"<{url}>"
        if settings.mailto:
            value += f", <mailto:{settings.mailto}?subject=unsubscribe>"
        reason = validate.check_header(UNSUBSCRIBE_HEADER, value)
        if reason:
            return Rejection(f"the unsubscribe header is refused: {reason}")
        headers = orjson.dumps({"key": UNSUBSCRIBE_HEADER, "value": value}) + b"," + _ONE_CLICK_JSON
        return url, headers

    def _recipient_attachment(self, rel: str) -> bytes | Rejection:
        """The JSON fragment of one per-recipient attachment, loaded (and cached) from disk."""
        root = self._attachment_root
        if root is None:
            return Rejection(
                f"attachment {rel!r}: this campaign may not name files (the daemon accepts files only "
                f"from its [admin] files_root, which is not set); remove the attachments column"
            )
        try:
            path = (root / rel).resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            return Rejection(f"attachment {rel!r} cannot be opened ({exc})")
        # Recipient data may come from elsewhere than the person who wrote the campaign; keeping
        # paths inside the recipients folder stops a row from mailing out an arbitrary file.
        if not path.is_relative_to(root):
            if not self._root_is_recipients_folder:
                # A daemon's campaign: its folders are not the caller's business.
                return Rejection(
                    f"attachment {rel!r} is outside the folder the daemon allows files from "
                    f"([admin] files_root); name a file inside it"
                )
            return Rejection(
                f"attachment {rel!r} is outside the recipients file's folder ({str(root)!r}); "
                f"put the file in that folder or below it"
            )
        shown = str(path) if self._root_is_recipients_folder else rel
        try:
            return self._attachment_file(rel, path)
        except FileNotFoundError:
            return Rejection(f"attachment {rel!r} does not exist (looked for {shown!r})")
        except IsADirectoryError:
            return Rejection(f"attachment {rel!r} is a folder, not a file")
        except OSError as exc:
            return Rejection(f"attachment {rel!r} cannot be read ({exc.strerror})")

    def _attachment_file(self, rel: str, path: Path) -> bytes | Rejection:
        """The JSON fragment of the attachment file at ``path``; raises ``OSError`` when unreadable."""
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(st.st_mode):
            # A FIFO would block the read forever; a device has no end.
            return Rejection(f"attachment {rel!r} is not a regular file; name a regular file")
        with self._attachment_lock:
            cached = self._attachment_cache.get(path)
            if cached is not None and cached[0] == st.st_mtime_ns and cached[1] == st.st_size:
                self._attachment_cache.move_to_end(path)
                return cached[2]
        encoded_size = 4 * ((st.st_size + 2) // 3)
        if encoded_size > validate.MAX_EMAIL_BYTES:
            return Rejection(
                f"attachment {rel!r} is {st.st_size:,} bytes ({encoded_size:,} once base64-encoded); "
                f"a whole email must stay under {validate.MAX_EMAIL_BYTES:,} bytes"
            )
        data = path.read_bytes()
        content = base64.b64encode(data).decode("ascii")
        mime = guess_attachment_type(path.name)
        reason = validate.check_attachment(path.name, mime, content)
        if reason:
            return Rejection(f"per-recipient {reason}; send a PDF, an image, a text or an office document")
        fragment = orjson.dumps(Attachment(name=path.name, type=mime, content=content).to_json())
        self._remember(path, st.st_mtime_ns, st.st_size, fragment)
        return fragment

    def _remember(self, path: Path, mtime_ns: int, size: int, fragment: bytes) -> None:
        with self._attachment_lock:
            self._remember_locked(path, mtime_ns, size, fragment)

    def _remember_locked(self, path: Path, mtime_ns: int, size: int, fragment: bytes) -> None:
        cache = self._attachment_cache
        old = cache.pop(path, None)
        if old is not None:
            self._attachment_cache_bytes -= len(old[2])
        cache[path] = (mtime_ns, size, fragment)
        self._attachment_cache_bytes += len(fragment)
        while cache and (
            len(cache) > _ATTACHMENT_CACHE_ENTRIES or self._attachment_cache_bytes > _ATTACHMENT_CACHE_BYTES
        ):
            _, evicted = cache.popitem(last=False)
            self._attachment_cache_bytes -= len(evicted[2])
