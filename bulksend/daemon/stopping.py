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

__all__ = ["end_reconciliations"]

log = structlog.get_logger("bulksend.daemon")


def end_reconciliations(pending: int, *, graceful: bool) -> bool:
    """Sending is over with ``pending`` reconciliations under way: whether to let them finish
    (``graceful``; the stop's deadline bounds them) rather than cancel them (their rows stay
    ``sending`` for the next start)."""
    if graceful and pending:
        log.info("daemon.reconciling", rows=pending, hint="ambiguous sends are looked up at TEM before exit")
    return graceful
