"""SQS (Scaleway Queues) job source and result publisher, against moto's server on loopback.

What only this broker does; the contract all sources keep is in test_broker_contract.py.
"""

from __future__ import annotations

import pytest

from bulksend.brokers.sqs import SqsSettings, queue_url, sqs_client
from bulksend.errors import ConfigError
from tests.moto import MOTO_ACCESS_KEY, MOTO_REGION, MOTO_SECRET_KEY


async def test_client_reaches_moto_with_settings(moto_endpoint: str) -> None:
    """sqs_client signs with the configured keys against the configured endpoint: a queue created
    through it is found again by name."""
    settings = SqsSettings(
        url=moto_endpoint, region=MOTO_REGION, access_key=MOTO_ACCESS_KEY, secret_key=MOTO_SECRET_KEY
    )
    async with sqs_client(settings) as client:
        created = (await client.create_queue(QueueName="smoke-client"))["QueueUrl"]
        assert await queue_url(client, "smoke-client") == created
        assert await queue_url(client, created) == created


def test_settings_read_credentials_from_the_named_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys come from the variables access_key_env / secret_key_env name; none set is a ConfigError
    naming them; the secret never shows in the settings' repr."""
    settings = SqsSettings.from_mapping({"kind": "sqs", "access_key_env": "Q_AK", "secret_key_env": "Q_SK"})
    monkeypatch.delenv("Q_AK", raising=False)
    monkeypatch.delenv("Q_SK", raising=False)
    with pytest.raises(ConfigError, match=r"Q_AK.*Q_SK"):
        settings.credentials()
    monkeypatch.setenv("Q_AK", "SCWAK")
    monkeypatch.setenv("Q_SK", "sk-very-secret")
    creds = settings.credentials()
    assert creds.access_key == "SCWAK"
    assert creds.secret_key.reveal() == "sk-very-secret"
    assert "sk-very-secret" not in repr(creds)
    inline = SqsSettings.from_mapping({"kind": "sqs", "secret_key": "inline-secret", "access_key": "x"})
    assert "inline-secret" not in repr(inline)
    assert inline.url == "https://sqs.mnq.fr-par.scaleway.com"
    assert inline.region == "fr-par"
    with pytest.raises(ConfigError, match="credentials"):
        SqsSettings.from_mapping({"kind": "sqs", "url": "https://ak:sk@sqs.example.com"})
