"""The suppression list at work in a send: where it lives, the check at admission, what it learns.

**Where.** ``$BULKSEND_SUPPRESSION_URL`` (or ``suppression_url`` in the settings file) names the
list's store; else a store chosen for the run (``--store``, ``BULKSEND_STORE_URL``, the daemon's
store) keeps it, so every worker and daemon sharing that store shares the list; else each user has
one SQLite list, ``$XDG_STATE_HOME/bulksend/suppression.sqlite`` (``~/.local/state/…``). A
campaign's own state file is never the list: a second campaign, from this folder or another, must
see the first one's bounces.

**Check.** :meth:`Screen.admission` looks a whole admission batch up in one indexed query, and
turns every pending row whose address is suppressed (for a reason the campaign does not ignore)
into a ``skipped`` row whose reason says why and since when; :meth:`Screen.held` does the same for
rows an earlier run admitted (resume, claims). No API call is made for it.

**Learning.** :meth:`Screen.learn` takes the tracker's final emails: a ``hard_bounce``,
``mailbox_not_found`` or ``spam`` flag suppresses the address for good (source ``auto``).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from bulksend.errors import StoreError
from bulksend.pipeline.dispatch import utcnow
from bulksend.store import open_store
from bulksend.store.base import FinalUpdate, NewRecipient, RecipientRow, RowState, Store
from bulksend.suppression import (
    SuppressionEntry,
    SuppressionReason,
    SuppressionSource,
    SuppressionStore,
    normalize_suppressed,
)

__all__ = [
    "AUTO_REASONS",
    "SUPPRESSED",
    "Screen",
    "default_suppression_path",
    "is_suppressed",
    "open_suppression_list",
]

SUPPRESSED: Final = "suppressed: "
"""How the reason of a row skipped because of the suppression list begins."""

AUTO_REASONS: Final[Mapping[str, SuppressionReason]] = {
    "hard_bounce": SuppressionReason.HARD_BOUNCE,
    "mailbox_not_found": SuppressionReason.MAILBOX_NOT_FOUND,
    "spam": SuppressionReason.SPAM,
}
"""TEM flags that suppress the address of an email automatically, and the reason they become."""


def is_suppressed(reason: str) -> bool:
    """Whether a skipped row's reason says the suppression list skipped it."""
    return reason.startswith(SUPPRESSED)


def default_suppression_path(env: Mapping[str, str] | None = None) -> Path:
    """The user's own suppression list: ``$XDG_STATE_HOME/bulksend/suppression.sqlite``, or
    ``~/.local/state/bulksend/suppression.sqlite``."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "state")
    return Path(base) / "bulksend" / "suppression.sqlite"


async def open_suppression_list(
    store: Store,
    *,
    suppression_url: str | None,
    store_chosen: bool,
    env: Mapping[str, str] | None = None,
) -> Store:
    """The store that keeps the suppression list of a run whose state is in ``store``, open.

    ``suppression_url`` wins; else ``store`` itself when it was chosen for the run (shared by
    workers or a daemon); else the user's own list (see the module docstring). The caller closes
    what it gets unless it is ``store``.
    """
    if suppression_url is None and store_chosen:
        return store
    own = open_store(suppression_url or default_suppression_path(env))
    await own.open()
    return own


def _address(email: str) -> str | None:
    try:
        return normalize_suppressed(email)
    except StoreError:
        return None  # not an address the list can hold: it was never suppressed


@dataclass(frozen=True)
class Screen:
    """The suppression list as one campaign or job stream consults and feeds it."""

    suppression: SuppressionStore
    project_id: str
    ignore: frozenset[SuppressionReason] = frozenset()
    """Reasons this campaign sends to all the same (``[suppression] ignore``)."""

    async def _lookup(self, emails: Collection[str]) -> dict[str, SuppressionEntry]:
        addresses = {a for a in map(_address, emails) if a is not None}
        if not addresses:
            return {}
        return await self.suppression.suppressed(self.project_id, sorted(addresses), ignore=self.ignore)

    async def admission(self, rows: Sequence[NewRecipient]) -> list[NewRecipient]:
        """``rows`` with every pending one whose address is suppressed turned ``skipped``; one query."""
        found = await self._lookup([r.email for r in rows if r.state is RowState.PENDING])
        if not found:
            return list(rows)
        out: list[NewRecipient] = []
        for r in rows:
            entry = found.get(_address(r.email) or "") if r.state is RowState.PENDING else None
            out.append(r if entry is None else replace(r, state=RowState.SKIPPED, reason=entry.describe()))
        return out

    async def held(self, rows: Sequence[RecipientRow]) -> dict[int, SuppressionEntry]:
        """The entries of the stored rows whose address is suppressed, by row id; one query."""
        found = await self._lookup([r.email for r in rows])
        if not found:
            return {}
        hits = {r.id: found.get(_address(r.email) or "") for r in rows}
        return {row_id: entry for row_id, entry in hits.items() if entry is not None}

    async def learn(self, finals: Sequence[tuple[FinalUpdate, str]], origin: str) -> int:
        """Suppress the recipients of final emails that hard-bounced or complained; how many entries."""
        entries: list[SuppressionEntry] = []
        for update, email in finals:
            reasons = [AUTO_REASONS[f] for f in update.flags if f in AUTO_REASONS]
            address = _address(email) if reasons else None
            if address is None:
                continue
            since = update.final_at or utcnow()
            entries += [
                SuppressionEntry(address, r, SuppressionSource.AUTO, since, None, origin) for r in reasons
            ]
        if entries:
            await self.suppression.suppress(self.project_id, entries)
        return len(entries)
