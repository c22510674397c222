"""Guardrails: a send pauses itself when its recent emails bounce or complain too often.

TEM alerts when 7 % of a project's emails are rejected within 24 hours and locks a domain whose
reputation falls under 50; a sender that notices a bad list only then has already hurt the domain.
A :class:`BounceGuard` watches the last ``window`` final emails of one campaign or job stream and
trips once more than ``max_bad_rate`` of them (with at least ``min_emails`` seen) are hard bounces
(``hard_bounce``, ``mailbox_not_found``) or spam complaints. What tripping does is the owner's
business: a campaign pauses, a job stream holds its new jobs (docs/deliverability.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Final

from bulksend.settings import GuardrailSettings

__all__ = ["BAD_FLAGS", "BounceGuard"]

BAD_FLAGS: Final = frozenset({"hard_bounce", "mailbox_not_found", "spam"})
"""The flags that make a final email count against the guardrail (once, whatever else it has)."""


class BounceGuard:
    """The rolling hard-bounce and complaint rate of one stream of final emails."""

    def __init__(self, settings: GuardrailSettings) -> None:
        self.settings = settings
        self._window: deque[bool] = deque(maxlen=settings.window)
        self._bad = 0
        self.tripped: str | None = None
        """Why the guard tripped (a sentence for people), or None while it has not."""

    @property
    def bad(self) -> int:
        """Hard bounces and complaints among the emails in the window."""
        return self._bad

    @property
    def seen(self) -> int:
        """Final emails in the window."""
        return len(self._window)

    @property
    def rate(self) -> float:
        """The share of bad emails in the window (0 when empty)."""
        return self._bad / len(self._window) if self._window else 0.0

    def observe(self, flags: Iterable[Sequence[str]]) -> str | None:
        """Count final emails (their flags); the reason if this made the guard trip, else None.

        Trips once: later emails are still counted, and :meth:`reset` arms it again.
        """
        window = self._window
        s = self.settings
        armed = self.tripped is None and s.enabled
        tripped: str | None = None
        for email_flags in flags:
            bad = not BAD_FLAGS.isdisjoint(email_flags)
            if len(window) == window.maxlen and window[0]:
                self._bad -= 1
            window.append(bad)
            self._bad += bad
            # Judged email by email, so a batch of finals trips at the email that crossed the line.
            if armed and len(window) >= s.min_emails and self._bad > s.max_bad_rate * len(window):
                tripped = self.tripped = (
                    f"{self._bad} of the last {self.seen} final emails ({self.rate:.1%}) were hard bounces "
                    f"or spam complaints, over guardrails.max_bad_rate ({s.max_bad_rate:.1%}; TEM alerts "
                    "at 7 %)"
                )
                armed = False
        return tripped

    def reset(self) -> None:
        """Forget the window and arm the guard again (sending resumed)."""
        self._window.clear()
        self._bad = 0
        self.tripped = None
