"""The old home of :class:`~bulksend.errors.BrokerError`; the brokers live in :mod:`bulksend.brokers`."""

from __future__ import annotations

from bulksend.errors import BrokerError

__all__ = ["BrokerError"]
