"""The admin side of ``bulksend serve``: an HTTP API over a small control protocol.

:mod:`bulksend.daemon.admin.control` defines what the API may ask of the daemon (:class:`DaemonControl`)
and an in-memory implementation; :mod:`bulksend.daemon.admin.api` serves it over HTTP (``serve_admin``
listens with bounds on idle and slow clients). See docs/admin-api.md for the endpoints.
"""

from __future__ import annotations

# ``X as X`` marks a re-export: the package's public names are exactly the ones imported here.
from bulksend.daemon.admin.api import AdminServer as AdminServer
from bulksend.daemon.admin.api import check_listen_address as check_listen_address
from bulksend.daemon.admin.api import create_admin_app as create_admin_app
from bulksend.daemon.admin.api import serve_admin as serve_admin
from bulksend.daemon.admin.api import validate_template as validate_template
from bulksend.daemon.admin.control import CampaignInfo as CampaignInfo
from bulksend.daemon.admin.control import CampaignStatus as CampaignStatus
from bulksend.daemon.admin.control import Conflict as Conflict
from bulksend.daemon.admin.control import ControlError as ControlError
from bulksend.daemon.admin.control import DaemonControl as DaemonControl
from bulksend.daemon.admin.control import JobStreamInfo as JobStreamInfo
from bulksend.daemon.admin.control import MemoryControl as MemoryControl
from bulksend.daemon.admin.control import NotFound as NotFound
from bulksend.daemon.admin.control import Overview as Overview
from bulksend.daemon.admin.control import Submission as Submission
