"""The campaign model: what a validated campaign is, immutable once loaded.

:mod:`bulksend.campaign.load` builds these from a campaign file; the renderer, the run and the
daemon only read them. The reference of every key is ``docs/campaign-file.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

from bulksend.campaign.templating import RenderLimits
from bulksend.settings import GuardrailSettings, SendingSettings, TrackingSettings
from bulksend.suppression import SuppressionReason
from bulksend.tem.models import Address, Attachment

__all__ = [
    "CAMPAIGN_ID_PATTERN",
    "CORRELATION_HEADER",
    "Campaign",
    "FileAccess",
    "OutputSettings",
    "SendingSettings",
    "TrackingSettings",
    "UnsubscribeSettings",
]

CORRELATION_HEADER: Final = "X-Bulksend-Ref"
"""Added to every email by the renderer; reserved (a campaign may not set it)."""

CAMPAIGN_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Every campaign id: 1–64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit
(so an id is always a safe file name: no ``/``, never ``.`` or ``..``)."""


@dataclass(frozen=True)
class OutputSettings:
    """Where outcomes go (``.jsonl`` or ``.csv``)."""

    outcomes: Path


@dataclass(frozen=True)
class UnsubscribeSettings:
    """``[unsubscribe]``: every email carries RFC 8058 one-click unsubscribe headers.

    ``url`` is the public base URL of ``bulksend serve``'s ``/u/`` endpoint (no trailing slash);
    ``mailto``, when set, is offered too. The links are signed with ``BULKSEND_UNSUBSCRIBE_SECRET``.
    """

    url: str
    mailto: str | None = None


@dataclass(frozen=True)
class Campaign:
    """A validated campaign. ``subject``, ``text``, ``html`` and header values are template SOURCES
    (compiled by :class:`bulksend.campaign.render.Renderer`); attachments are loaded and base64-encoded.

    ``fingerprint`` is a sha256 over the resolved content (id, sender, templates, headers,
    attachments, recipient file content, send_before), not over the sending/tracking settings, so a
    resumed campaign can be told apart from an edited one while its pace may still be changed.
    """

    id: str
    path: Path
    from_: Address
    subject: str
    text: str
    html: str
    recipients: Path
    headers: tuple[tuple[str, str], ...]
    attachments: tuple[Attachment, ...]
    send_before: datetime | None
    sending: SendingSettings
    tracking: TrackingSettings
    output: OutputSettings
    store_path: Path
    fingerprint: str = field(repr=False)
    render: RenderLimits = field(default_factory=RenderLimits)
    legacy_fingerprint: str = field(default="", repr=False)
    """The fingerprint with the recipient file's path instead of its content, as recorded by
    earlier versions: a campaign they started still resumes from the same folder."""

    @property
    def attachments_bytes(self) -> int:
        """Size of the campaign attachments once encoded (base64), as they count toward 2 MB."""
        return sum(len(a.content) for a in self.attachments)

    suppression_ignore: frozenset[SuppressionReason] = frozenset()
    """Suppression reasons this campaign sends to all the same (``[suppression] ignore``)."""
    guardrails: GuardrailSettings = field(default_factory=GuardrailSettings)
    """When the campaign pauses itself (``[guardrails]``)."""

    attachments_root: Path | None = None
    """The folder per-recipient attachments resolve against and must stay inside (symlinks
    resolved); None: recipients may not name files at all."""

    unsubscribe: UnsubscribeSettings | None = None
    """One-click unsubscribe links (``[unsubscribe]``); None: none added."""


@dataclass(frozen=True)
class FileAccess:
    """Which files a campaign may name (``text_file``, ``html_file``, attachments, and the
    per-recipient ``attachments`` column).

    Unconfined (the CLI, the daemon's own config): paths are relative to the campaign's folder and
    per-recipient files to the recipients file's folder. Confined (the admin API): every path is
    relative to ``root`` and must resolve inside it; with no ``root``, no file may be named.
    """

    confined: bool = False
    root: Path | None = None

    @classmethod
    def confined_to(cls, root: Path | None) -> FileAccess:
        """Files only from inside ``root`` (resolved now); None: no files at all."""
        return cls(confined=True, root=Path(root).resolve() if root is not None else None)
