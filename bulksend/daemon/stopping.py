"""A graceful stop settles the ambiguous sends before the daemon exits.

A send whose answer never came leaves its row ``sending``: TEM may or may not have the email.
At a graceful stop the reconciliations already under way are let finish, within the stop's
``grace_s`` (each one waits for its attempt's settle time, then looks the email up at TEM): the
row ends ``submitted`` (TEM has it) or ``pending`` (it does not, and the next start sends it).
Only what is still unresolved when ``grace_s`` runs out stays ``sending``, for the next start's
recovery; ``daemon.stopped`` says how many under ``left``.
"""

from __future__ import annotations

import structlog
from anyio.abc import TaskGroup

from bulksend.pipeline.reconcile import Reconciler

__all__ = ["end_reconciliations"]

log = structlog.get_logger("bulksend.daemon")


def end_reconciliations(reconciler: Reconciler, group: TaskGroup, *, graceful: bool) -> int:
    """Sending is over: let ``group``'s reconciliations finish when ``graceful`` (the group then
    ends by itself; the stop's deadline bounds it), else cancel them (they stay ``sending``).
    Returns how many were under way."""
    pending = reconciler.pending
    if graceful:
        if pending:
            log.info(
                "daemon.reconciling", rows=pending, hint="ambiguous sends are looked up at TEM before exit"
            )
    else:
        group.cancel_scope.cancel()
    return pending
