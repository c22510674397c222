"""The error of the message brokers; everything else about them is in :mod:`bulksend.brokers`."""

from __future__ import annotations

from bulksend.errors import BulksendError

__all__ = ["BrokerError"]


class BrokerError(BulksendError):
    """A message broker could not be reached or refused an operation. Usually transient."""

    transient = True
