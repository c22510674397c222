"""Printing for people: every piece of data and message text reaches Rich as plain text.

Rich reads ``[...]`` in a string as markup, so a recipient's file name, a campaign id, a TEM
flag or an error naming a ``[table]`` would be swallowed or crash the command with a
``MarkupError``. Styles are applied here with :class:`rich.text.Text`, never by formatting
markup around data.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

__all__ = ["print_error", "print_text", "styled"]


def styled(*parts: str | tuple[str, str]) -> Text:
    """Plain strings and ``(text, style)`` pairs, joined, none of them read as markup."""
    return Text.assemble(*parts)


def print_error(console: Console, message: object, *, label: str = "error") -> None:
    """``error: message`` with the label in bold red and the message exactly as given."""
    console.print(styled((f"{label}:", "bold red"), " ", str(message)))


def print_text(console: Console, message: object) -> None:
    """One line of text, exactly as given."""
    console.print(Text(str(message)))
