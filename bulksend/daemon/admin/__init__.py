"""The admin side of ``bulksend serve``: an HTTP API over a small control protocol.

:mod:`bulksend.daemon.admin.control` defines what the API may ask of the daemon (:class:`DaemonControl`)
and an in-memory implementation; :mod:`bulksend.daemon.admin.api` serves it over HTTP (``serve_admin``
listens with bounds on idle and slow clients). See docs/admin-api.md for the endpoints.
"""

from __future__ import annotations

from bulksend.daemon.admin.api import (
    AdminServer,
    check_listen_address,
    create_admin_app,
    serve_admin,
    validate_template,
)
from bulksend.daemon.admin.control import (
    CampaignInfo,
    CampaignStatus,
    Conflict,
    ControlError,
    DaemonControl,
    MemoryControl,
    NotFound,
)

__all__ = [
    "AdminServer",
    "CampaignInfo",
    "CampaignStatus",
    "Conflict",
    "ControlError",
    "DaemonControl",
    "MemoryControl",
    "NotFound",
    "check_listen_address",
    "create_admin_app",
    "serve_admin",
    "validate_template",
]
