"""The message brokers of the daemon, by ``kind``: each imported only once a configuration names it.

==============  ======================================  ===============================================
kind            module                                  source; results publisher
==============  ======================================  ===============================================
``nats``        :mod:`bulksend.brokers.nats`            JetStream pull consumer; subject (or stream)
``rabbitmq``    :mod:`bulksend.brokers.rabbitmq`        queue with a dead-letter exchange; queue
``redis``       :mod:`bulksend.brokers.redis_streams`   stream and consumer group; stream
``sqs``         :mod:`bulksend.brokers.sqs`             SQS queue (Scaleway Queues) with a DLQ; queue
``memory``      :mod:`bulksend.brokers.memory`          in-process queue; list, for tests
==============  ======================================  ===============================================

Each module's source and publisher classes list their configuration keys. Building through
:func:`source_from_config` and :func:`publisher_from_config` keeps the client libraries (nats-py,
aio-pika, redis, aiobotocore) out of a process that does not use them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Final, Protocol, cast

from bulksend.brokers.base import JobSource, ResultPublisher
from bulksend.errors import ConfigError

__all__ = ["BROKERS", "Broker", "broker", "publisher_from_config", "source_from_config"]

BROKERS: Final[Mapping[str, str]] = {
    "nats": "bulksend.brokers.nats",
    "rabbitmq": "bulksend.brokers.rabbitmq",
    "redis": "bulksend.brokers.redis_streams",
    "sqs": "bulksend.brokers.sqs",
    "memory": "bulksend.brokers.memory",
}
"""The module of each ``kind``."""


class Broker(Protocol):
    """What a broker module provides: builders (not openers) from a configuration table."""

    def make_source(self, cfg: Mapping[str, Any]) -> JobSource: ...

    def make_publisher(self, cfg: Mapping[str, Any]) -> ResultPublisher: ...


def broker(cfg: Any, *, where: str) -> Broker:
    """The broker module that ``cfg["kind"]`` names, imported now; ``where`` labels errors."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: expected a table of settings, got {type(cfg).__name__}")
    kind = cfg.get("kind")
    module = BROKERS.get(kind) if isinstance(kind, str) else None
    if module is None:
        raise ConfigError(f"{where}: kind must be one of {', '.join(BROKERS)}; got {kind!r}")
    return cast(Broker, importlib.import_module(module))


def source_from_config(cfg: Mapping[str, Any]) -> JobSource:
    """Build (not open) the job source described by ``cfg``; ``cfg["kind"]`` picks the broker.

    Raises :class:`ConfigError` for an unknown kind or key, or a bad value.
    """
    return broker(cfg, where="job source").make_source(cfg)


def publisher_from_config(cfg: Mapping[str, Any]) -> ResultPublisher:
    """Build (not open) the result publisher described by ``cfg``; ``cfg["kind"]`` picks the broker."""
    return broker(cfg, where="results").make_publisher(cfg)
