"""Before sending (`bulksend send` and `serve`): the sender's domain at TEM, the monthly quota,
and TEM's blocklists synced into the suppression list; `suppress push` the other way round."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from bulksend.cli.main import main
from bulksend.daemon.config import load_daemon_config
from bulksend.daemon.service import Daemon
from bulksend.deliverability.blocklists import PushRefused, push_hard_bounces, sync_blocklists
from bulksend.deliverability.preflight import DomainRefused, check_domain
from bulksend.errors import CampaignError
from bulksend.pipeline.suppress import default_suppression_path
from bulksend.sandbox import Sandbox, SandboxConfig, sandbox_in_thread
from bulksend.store import open_store
from bulksend.store.memory import MemoryStore
from bulksend.suppression import SuppressionEntry, SuppressionReason, SuppressionSource
from bulksend.tem.client import TemClient
from tests.conftest import PROJECT, SECRET, read_jsonl, settings_for
from tests.test_cli import env_for
from tests.test_daemon import WELCOME, running, write_config
from tests.test_send_preflight import people, write_campaign
from tests.waiting import wait_until

NOW = datetime(2026, 1, 5, tzinfo=UTC)


def send_with(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    path: Path,
    *args: str,
    **sandbox: Any,
) -> tuple[int, int, str]:
    """`bulksend send PATH ARGS` against a fresh sandbox with these settings: (exit code, emails
    the sandbox got, stderr on one line)."""
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT, **sandbox)) as sb:
        env_for(monkeypatch, sb.url)
        code = main(["send", str(path), "--no-progress", *args])
        emails = sb.stats().emails_total
    return code, emails, " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"domain_status": "revoked"},
            "the sending domain example.com is revoked at TEM, so TEM would refuse every email. To fix it, "
            "the domain was deleted from TEM: add it again",
        ),
        (
            {"domain_status": "unchecked", "failing_records": ("spf", "dkim")},
            "the sending domain example.com is unchecked at TEM, so TEM would refuse every email. Failing "
            "DNS checks: SPF not_found (no SPF record found at example.com;",
        ),
        (
            {"domain_reputation": 42},
            "example.com: reputation score 42/100 (bad): under 50, TEM locks the domain",
        ),
        (
            {"allowed_from_domains": ("other.example",)},
            "example.com, the sender's domain, is not a domain of TEM project",
        ),
    ],
)
def test_a_domain_that_must_not_send_stops_the_campaign_before_any_email(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    settings: dict[str, Any],
    expected: str,
) -> None:
    """Unchecked, revoked, unknown or badly scored: exit 1, nothing sent, the reason and the fix shown."""
    path = write_campaign(tmp_path, people(3))
    code, emails, err = send_with(monkeypatch, capsys, path, **settings)
    assert (code, emails) == (1, 0)
    assert f"error: {expected}" in err, err


def test_force_sends_from_a_low_reputation_domain_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--force sends despite a score under 50; a score under 70 and a missing DMARC record only warn."""
    path = write_campaign(tmp_path, people(3))
    code, emails, err = send_with(monkeypatch, capsys, path, "--force", domain_reputation=42)
    assert (code, emails) == (0, 3)
    assert "warning: example.com: reputation score 42/100 (bad), under 50: sending anyway (--force)" in err
    again = write_campaign(tmp_path / "again", people(2))
    code, emails, err = send_with(
        monkeypatch, capsys, again, domain_reputation=65, failing_records=("dmarc",)
    )
    assert (code, emails) == (0, 2)
    assert "warning: example.com: failing DNS checks: DMARC not_found" in err
    assert "Gmail and Yahoo require SPF, DKIM and DMARC" in err
    assert "warning: example.com: reputation score 65/100 (average), under 70" in err


def test_the_quota_warning_counts_this_months_emails_and_the_campaign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past 70 % of --monthly-quota with the campaign's recipients, a warning; under it, none."""
    path = write_campaign(tmp_path, people(20))
    code, _, err = send_with(monkeypatch, capsys, path, "--monthly-quota", "10000", monthly_emails_base=6_990)
    assert code == 0
    assert (
        "warning: quota: 6,990 emails sent this month + 20 for this campaign = 70% of the monthly "
        "quota (10,000); TEM alerts at 70%"
    ) in err
    again = write_campaign(tmp_path / "again", people(5))
    code, _, err = send_with(monkeypatch, capsys, again, monthly_emails_base=6_990)
    assert code == 0
    assert "quota" not in err


def test_tem_blocklists_are_synced_into_the_suppression_list_before_a_campaign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before sending, TEM's entries land in the suppression list with source tem, reason and end;
    the campaign skips the blocklisted recipient."""
    path = write_campaign(tmp_path, people(3))
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        sb.block(["p1@example.com"], type="mailbox_not_found")
        sb.block(["full@example.org"], type="mailbox_full", ends_in_s=86_400)
        env_for(monkeypatch, sb.url)
        assert main(["send", str(path), "--no-progress"]) == 0
    assert "suppression list: 2 addresses blocklisted by TEM" in capsys.readouterr().err
    outcomes = {line["email"]: line for line in read_jsonl(path.parent / "out" / "pre.jsonl")}
    assert outcomes["p1@example.com"]["status"] == "skipped"
    assert outcomes["p1@example.com"]["reason"].startswith("suppressed: mailbox_not_found since ")
    assert outcomes["p0@example.com"]["status"] == "sent"

    async def suppressed() -> dict[str, SuppressionEntry]:
        store = open_store(str(default_suppression_path()))  # the list sends consult
        await store.open()
        try:
            return await store.suppressed(PROJECT, ["p1@example.com", "full@example.org", "p0@example.com"])
        finally:
            await store.close()

    found = anyio.run(suppressed)
    assert sorted(found) == ["full@example.org", "p1@example.com"]
    gone, full = found["p1@example.com"], found["full@example.org"]
    assert (gone.reason, gone.source, gone.until) == (
        SuppressionReason.MAILBOX_NOT_FOUND,
        SuppressionSource.TEM,
        None,
    )
    assert (full.reason, full.source) == (SuppressionReason.MAILBOX_FULL, SuppressionSource.TEM)
    assert full.until is not None
    assert full.until > full.since


async def test_sync_takes_out_entries_tem_no_longer_lists(sandbox: Sandbox) -> None:
    """An address TEM unblocked leaves the list; entries from other sources stay."""
    store = MemoryStore()
    await store.open()
    await store.suppress(
        PROJECT,
        [
            SuppressionEntry(
                "old@example.org", SuppressionReason.MAILBOX_NOT_FOUND, SuppressionSource.TEM, NOW
            ),
            SuppressionEntry("mine@example.org", SuppressionReason.MANUAL, SuppressionSource.MANUAL, NOW),
        ],
    )
    sandbox.block(["new@example.org"], type="mailbox_not_found")
    async with TemClient(settings_for(sandbox)) as tem:
        assert await tem.find_domain("example.com") is not None
        result = await sync_blocklists(tem, store)
    assert (result.domains, result.entries, result.removed) == (1, 1, 1)
    listed = await store.suppressed(PROJECT, ["old@example.org", "mine@example.org", "new@example.org"])
    assert sorted(listed) == ["mine@example.org", "new@example.org"]


async def test_push_adds_local_hard_bounces_as_custom_blocklists_on_the_scale_plan(sandbox: Sandbox) -> None:
    """On Essential TEM refuses and the error names the Scale plan; on Scale, bounces not yet blocked go."""
    store = MemoryStore()
    await store.open()
    entries = [
        SuppressionEntry("a@example.org", SuppressionReason.HARD_BOUNCE, SuppressionSource.AUTO, NOW),
        SuppressionEntry("b@example.org", SuppressionReason.MAILBOX_NOT_FOUND, SuppressionSource.AUTO, NOW),
        SuppressionEntry("c@example.org", SuppressionReason.UNSUBSCRIBE, SuppressionSource.UNSUBSCRIBE, NOW),
    ]
    await store.suppress(PROJECT, entries)
    sandbox.block(["b@example.org"], type="mailbox_not_found")
    async with TemClient(settings_for(sandbox)) as tem:
        domain = await tem.find_domain("example.com")
        assert domain is not None
        with pytest.raises(PushRefused, match="custom blocklists need TEM's Scale plan"):
            await push_hard_bounces(tem, store)
        sandbox.update(offer="scale")
        result = await push_hard_bounces(tem, store)
        assert (result.domains, result.pushed, result.already) == (1, 1, 1)
        custom = await tem.list_blocklists(domain.id, custom=True)
        assert [(b.email, b.type.value) for b in custom.blocklists] == [
            ("a@example.org", "mailbox_not_found")
        ]
        sandbox.update(allowed_from_domains=("example.com",))
        with pytest.raises(PushRefused, match="not a domain of TEM project"):
            await push_hard_bounces(tem, store, domain="elsewhere.example")


async def test_serve_refuses_to_start_with_a_revoked_domain(tmp_path: Path, sandbox: Sandbox) -> None:
    """A template whose sender's domain is revoked stops `bulksend serve` at start, with the fix."""
    sandbox.update(domain_status="revoked")
    daemon = Daemon(load_daemon_config(write_config(tmp_path)), settings_for(sandbox))
    with pytest.raises(DomainRefused, match=r"example\.com is revoked at TEM"):
        await daemon.run()
    assert sandbox.stats().emails_total == 0


async def test_serve_syncs_blocklists_and_refuses_a_low_reputation_campaign(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """serve copies TEM's blocklists into its store at start; a submitted campaign from a domain
    scored under 50 is refused with a 400-worthy CampaignError."""
    sandbox.block(["gone@example.org"], type="mailbox_not_found")
    daemon = Daemon(load_daemon_config(write_config(tmp_path)), settings_for(sandbox))
    async with running(daemon):

        async def synced() -> bool:
            return bool(await daemon.store.suppressed(PROJECT, ["gone@example.org"]))

        await wait_until(synced, what="TEM's blocklist synced into the daemon's store")
        sandbox.update(domain_reputation=30)
        with pytest.raises(CampaignError, match="reputation score 30/100"):
            await daemon.register_template("late", {**WELCOME})
        [entry] = (await daemon.store.suppressed(PROJECT, ["gone@example.org"])).values()
        assert entry.source is SuppressionSource.TEM
        assert await daemon.templates() == ["welcome"]


def test_suppress_push_command_names_the_scale_plan_then_pushes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bulksend suppress push`: exit 1 naming the Scale plan on Essential; on Scale, the bounces go."""
    db = tmp_path / "list.db"

    async def seed() -> None:
        store = open_store(str(db))
        await store.open()
        try:
            entry = SuppressionEntry(
                "a@example.org", SuppressionReason.HARD_BOUNCE, SuppressionSource.AUTO, NOW
            )
            await store.suppress(PROJECT, [entry])
        finally:
            await store.close()

    anyio.run(seed)
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        assert main(["suppress", "push", "--store", str(db), "--domain", "example.com"]) == 1
        err = " ".join(capsys.readouterr().err.split())
        assert "error: TEM refused to create custom blocklists for example.com (TEM answered 403" in err
        assert "custom blocklists need TEM's Scale plan" in err
        sb.update(offer="scale")
        assert main(["suppress", "push", "--store", str(db)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "pushed 1 hard bounces to TEM as custom blocklists of 1 domain(s); 0 were blocklisted there already"
        in out
    )


async def test_a_domain_check_tem_does_not_answer_in_time_is_a_warning(sandbox: Sandbox) -> None:
    """A slow API must not hold a start up: past the timeout the check gives up with a warning."""
    sandbox.update(latency_ms=5_000)
    async with TemClient(settings_for(sandbox)) as tem:
        check = await check_domain(tem, "news@example.com", timeout_s=0.1)
    assert check.domain is None
    assert check.warnings == [
        "could not check the sending domain example.com: no answer from TEM within 0.1 s"
    ]
