"""``bulksend webhooks setup`` against the sandbox: create, then bring up to date, and the steps left."""

from __future__ import annotations

import pytest

from bulksend.cli.main import main
from bulksend.sandbox import SandboxConfig, sandbox_in_thread
from bulksend.sandbox.webhooks import domain_id_of
from bulksend.tem.webhooks import EMAIL_EVENT_TYPES
from tests.conftest import PROJECT, SECRET
from tests.test_cli import env_for

ARN = "arn:scw:sns:fr-par:project-11111111-2222-4333-8444-555555555555:tem-events"
OTHER_ARN = ARN.replace("tem-events", "tem-events-2")


def test_setup_creates_then_updates_the_webhook_and_prints_the_steps_left(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first run creates the domain's webhook with every email event type; a second run with
    another topic updates that same webhook; a third changes nothing. Each prints the subscribe
    steps for a queue (or for the daemon's HTTP endpoint)."""
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        domain = domain_id_of("example.com")
        base = ["webhooks", "setup", "--domain-id", domain]
        assert main([*base, "--sns-arn", ARN, "--queue", "tem-events"]) == 0
        first = capsys.readouterr().out
        assert "created" in first
        assert "aws sns subscribe" in first
        assert "--protocol sqs" in first
        assert "BULKSEND_EVENTS_QUEUE=tem-events" in first
        assert (
            main([*base, "--sns-arn", OTHER_ARN, "--http-endpoint", "https://bulksend.example/events/sns"])
            == 0
        )
        second = capsys.readouterr().out
        assert "updated" in second
        assert "--protocol https --notification-endpoint https://bulksend.example/events/sns" in second
        assert main([*base, "--sns-arn", OTHER_ARN]) == 0
        assert "unchanged" in capsys.readouterr().out
        for event_type in EMAIL_EVENT_TYPES:
            assert event_type.value in first


def test_setup_refused_by_tem_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key TEM refuses ends with exit code 2 and says so."""
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        monkeypatch.setenv("SCW_SECRET_KEY", "wrong-key")
        assert main(["webhooks", "setup", "--domain-id", domain_id_of("example.com"), "--sns-arn", ARN]) == 2
        assert "refused" in capsys.readouterr().err
