"""Rendered emails written as ``.eml`` files, for a person to open in a mail client before sending.

Each file is built from the request body the renderer made for TEM (so it shows exactly what would
be sent): From, To, Subject, the campaign's headers (and ``X-Bulksend-Ref``), the text and HTML
bodies as alternatives, and the attachments. Files are named from the row number only, never from
recipient data, and are written only inside the chosen folder (no symbolic link is followed).
"""

from __future__ import annotations

import base64
import os
import re
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any, Final

import orjson

from bulksend.campaign.render import RenderedEmail
from bulksend.errors import CampaignError
from bulksend.private import FILE_MODE, make_private_dirs

__all__ = ["PreviewWriter", "email_message", "preview_name"]

_PREVIEW_NAME: Final = re.compile(r"row-\d{6,}\.eml")


def preview_name(row: int) -> str:
    """The file name of the preview of the recipient at ``row`` (``row-000002.eml``)."""
    return f"row-{row:06d}.eml"


def _address(value: dict[str, Any]) -> HeaderAddress:
    return HeaderAddress(display_name=str(value.get("name") or ""), addr_spec=str(value["email"]))


def email_message(email: RenderedEmail) -> EmailMessage:
    """The MIME message of a rendered email (the renderer has already refused header injection)."""
    body = orjson.loads(email.body)
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(body["from"])
    msg["To"] = [_address(to) for to in body["to"]]
    msg["Subject"] = body["subject"]
    for header in body.get("additional_headers") or ():
        msg[header["key"]] = header["value"]
    text, html = body.get("text") or "", body.get("html") or ""
    if text:
        msg.set_content(text)
        if html:
            msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(html, subtype="html")
    for attachment in body.get("attachments") or ():
        maintype, _, subtype = str(attachment["type"]).partition("/")
        msg.add_attachment(
            base64.b64decode(attachment["content"]),
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=attachment["name"],
        )
    return msg


class PreviewWriter:
    """Writes up to ``limit`` previews into ``folder``; earlier previews there are removed first."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self.written: list[Path] = []
        make_private_dirs(folder)
        if folder.is_symlink() or not folder.is_dir():
            raise CampaignError(
                f"the preview folder {str(folder)!r} is not a folder; choose another --preview-dir"
            )
        # Left over from an earlier preview, they would be taken for this one's.
        for entry in os.scandir(folder):
            if _PREVIEW_NAME.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)

    @property
    def full(self) -> bool:
        return len(self.written) >= self.limit

    def add(self, row: int, email: RenderedEmail) -> None:
        """Write the preview of the email rendered for ``row`` (ignored once ``limit`` are written)."""
        if self.full:
            return
        path = self.folder / preview_name(row)
        data = email_message(email).as_bytes()
        # O_NOFOLLOW and O_EXCL: a link planted under the name cannot send the write elsewhere.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        with open(fd, "wb") as fh:
            fh.write(data)
        self.written.append(path)
