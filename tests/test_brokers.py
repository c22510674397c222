"""The broker registry: a broker's client library is imported only when a configuration names it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bulksend.brokers import BROKERS, publisher_from_config, source_from_config
from bulksend.errors import ConfigError

CLIENTS = ("nats", "aio_pika", "aiormq", "redis", "aiobotocore", "botocore")


def imported_after(code: str) -> list[str]:
    """The broker client libraries loaded by a fresh interpreter that ran ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {CLIENTS!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_daemon_imports_no_broker_client() -> None:
    """Importing the daemon (and the registry) loads none of nats, aio_pika, redis or aiobotocore."""
    assert imported_after("import bulksend.daemon.service, bulksend.cli.main, bulksend.brokers") == []


@pytest.mark.parametrize(
    ("kind", "loaded"),
    [
        ("nats", ["nats"]),
        ("rabbitmq", ["aio_pika", "aiormq"]),
        ("redis", ["redis"]),
        ("sqs", ["aiobotocore", "botocore"]),
    ],
)
def test_building_a_source_imports_only_its_broker(kind: str, loaded: list[str]) -> None:
    """A configured source and publisher of one kind load that broker's client, and no other."""
    code = (
        "from bulksend.brokers import publisher_from_config, source_from_config\n"
        f"source_from_config({{'kind': {kind!r}}}); publisher_from_config({{'kind': {kind!r}}})"
    )
    assert imported_after(code) == loaded


def test_unknown_kind_or_table_is_a_config_error() -> None:
    """An unknown kind names the known ones; a value that is not a table is refused as such."""
    assert list(BROKERS) == ["nats", "rabbitmq", "redis", "sqs", "memory"]
    with pytest.raises(
        ConfigError, match="job source: kind must be one of nats, rabbitmq, redis, sqs, memory"
    ):
        source_from_config({"kind": "kafka"})
    with pytest.raises(ConfigError, match="results: kind must be one of"):
        publisher_from_config({})
    with pytest.raises(ConfigError, match="results: expected a table of settings, got list"):
        publisher_from_config([])  # type: ignore[arg-type]
