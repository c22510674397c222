"""The recipients worth sending again, with their variables joined back from the recipients file.

Which rows are worth it, and how the recipients CSV is written, are ``bulksend report
--resend-file``'s (:func:`bulksend.sinks.report.worth_resending`,
:func:`~bulksend.sinks.report.write_resend_file`): canceled, unknown, failed with a temporary
flag and no permanent one. What the report adds is the rows' template variables: an outcomes
file holds none, so they are read from the campaign's recipients file alongside the outcomes.
Both are in input row order, so one forward pass over each keeps memory flat.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from bulksend.campaign.recipients import RecipientInput, iter_recipients
from bulksend.errors import CampaignError
from bulksend.reporting.outcome import Outcome

__all__ = ["RecipientVariables", "resend_row"]

_OWN: Final = frozenset({"email", "name"})


class RecipientVariables:
    """The variables of recipient rows, asked for in increasing row order, read in one pass."""

    def __init__(self, path: Path) -> None:
        self._reader: Iterator[Any] = iter_recipients(path)
        self._current: Any = None
        self._done = False

    def get(self, row: int, email: str) -> dict[str, Any]:
        """Row ``row``'s variables when it is a readable recipient with address ``email`` (else none)."""
        while not self._done and (self._current is None or self._current.row < row):
            try:
                self._current = next(self._reader)
            except StopIteration:
                self._done = True
            except (CampaignError, OSError):  # the file changed or went: no variables
                self._done = True
        rec = self._current
        if not isinstance(rec, RecipientInput) or rec.row != row or rec.email != email:
            return {}
        return {k: v for k, v in rec.vars.items() if k.lower() not in _OWN}


def resend_row(outcome: Outcome, variables: RecipientVariables | None) -> dict[str, Any]:
    """The resend file's row of ``outcome``: email, name, then its variables when known."""
    known = variables.get(outcome.row, outcome.email) if variables is not None and outcome.row else {}
    return {"email": outcome.email, "name": outcome.name, **known}
