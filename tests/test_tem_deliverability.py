"""The client's deliverability endpoints (blocklists, domains, verification, consumption) against
the sandbox, which implements them as the TEM spec describes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest

from bulksend.errors import InvalidArgumentsError, NotFoundError, QuotaExceededError
from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.tem.client import TemClient
from bulksend.tem.deliverability import (
    BlocklistType,
    DomainStatus,
    RecordStatus,
    ReputationStatus,
)
from bulksend.tem.models import Address, CreateEmailRequest, EmailStatus
from bulksend.testing import FakeClock
from tests.conftest import PROJECT, SECRET, settings_for

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.fixture
async def clocked() -> AsyncIterator[tuple[Sandbox, FakeClock]]:
    """A sandbox on a clock the test moves by hand."""
    clock = FakeClock(T0)
    config = SandboxConfig(secret_key=SECRET, project_id=PROJECT, seed=1)
    async with Sandbox(config, host="127.0.0.1", port=0, clock=clock) as sb:
        yield sb, clock


async def _send(tem: TemClient, sender: str, *rcpts: str) -> None:
    await tem.send_email(
        CreateEmailRequest(
            from_=Address(sender), to=tuple(Address(r) for r in rcpts), subject="Hello", text="Hello there"
        )
    )


async def test_a_sender_domain_is_listed_checked_with_its_reputation(sandbox: Sandbox) -> None:
    """The sandbox knows the domain a client asks for: checked, scored, with its DNS records."""
    async with TemClient(settings_for(sandbox)) as tem:
        domain = await tem.find_domain("News.Example.com")
        assert domain is not None
        assert (domain.name, domain.project_id, domain.status) == (
            "news.example.com",
            PROJECT,
            DomainStatus.CHECKED,
        )
        assert domain.reputation is not None
        assert (domain.reputation.score, domain.reputation.status) == (90, ReputationStatus.EXCELLENT)
        assert domain.records is not None
        assert domain.records["dmarc"].name == "_dmarc"
        assert await tem.get_domain(domain.id) == domain
        page = await tem.list_domains()
        assert [d.id for d in page.domains] == [domain.id]
        assert page.total_count == 1


async def test_a_scripted_bad_domain_shows_its_status_score_and_failing_records(sandbox: Sandbox) -> None:
    """domain_status, domain_reputation and failing_records script a bad domain; its sends are refused."""
    sandbox.update(domain_status="revoked", domain_reputation=None, failing_records=("spf", "dmarc"))
    async with TemClient(settings_for(sandbox)) as tem:
        domain = await tem.find_domain("example.com")
        assert domain is not None
        assert (domain.status, domain.reputation) == (DomainStatus.REVOKED, None)
        checks = await tem.get_domain_verification(domain.id)
        assert checks.domain_name == "example.com"
        assert [(kind, c.status) for kind, c in checks.failing()] == [
            ("spf", RecordStatus.NOT_FOUND),
            ("dmarc", RecordStatus.NOT_FOUND),
        ]
        assert "_dmarc.example.com" in checks.dmarc.error
        assert checks.dkim.ok
        assert checks.mx.ok
        with pytest.raises(InvalidArgumentsError, match="Invalid email from address"):
            await _send(tem, "news@example.com", "ann@example.org")


async def test_allowed_from_domains_are_the_only_domains(sandbox: Sandbox) -> None:
    """With allowed_from_domains, other domains do not exist: not listed, not found by id."""
    sandbox.update(allowed_from_domains=("good.example",))
    async with TemClient(settings_for(sandbox)) as tem:
        assert await tem.find_domain("example.com") is None
        page = await tem.list_domains(statuses=(DomainStatus.CHECKED,))
        assert [d.name for d in page.domains] == ["good.example"]
        assert (await tem.list_domains(statuses=(DomainStatus.REVOKED,))).domains == ()
        with pytest.raises(NotFoundError):
            await tem.get_domain("6170692e-7363-616c-6577-61792e636f6d")


async def test_blocklists_page_by_domain_and_block_sends(
    clocked: tuple[Sandbox, FakeClock],
) -> None:
    """Scripted entries are listed with their type and end, page by page, and block sends until then."""
    sandbox, clock = clocked
    async with TemClient(settings_for(sandbox)) as tem:
        domain = await tem.find_domain("example.com")
        assert domain is not None
        sandbox.block([f"gone{i}@example.org" for i in range(150)], type="mailbox_not_found")
        clock.advance(1.0)
        sandbox.block(["Full@example.org"], type="mailbox_full", domain="example.com", ends_in_s=3600)
        entries = [e async for e in tem.iter_blocklists(domain.id)]
        assert len(entries) == 151
        assert len({e.id for e in entries}) == 151
        full = entries[-1]
        assert (full.email, full.type, full.custom, full.domain_id) == (
            "full@example.org",
            BlocklistType.MAILBOX_FULL,
            False,
            domain.id,
        )
        assert full.ends_at == datetime.fromtimestamp(T0 + 1 + 3600, UTC)
        assert entries[0].ends_at is None
        only_full = await tem.list_blocklists(domain.id, type=BlocklistType.MAILBOX_FULL)
        assert [e.email for e in only_full.blocklists] == ["full@example.org"]
        assert only_full.total_count == 1

        await _send(tem, "news@example.com", "full@example.org", "fine@example.org")
        page = await tem.list_emails(page_size=10)
        by_rcpt = {e.mail_rcpt: e for e in page.emails}
        assert by_rcpt["full@example.org"].status is EmailStatus.FAILED
        assert [f.value for f in by_rcpt["full@example.org"].flags] == ["blocklisted"]
        assert by_rcpt["fine@example.org"].status is EmailStatus.SENT

        clock.advance(3600.0)
        assert (await tem.list_blocklists(domain.id, type=BlocklistType.MAILBOX_FULL)).blocklists == ()


async def test_custom_blocklists_need_the_scale_plan(sandbox: Sandbox) -> None:
    """POST /blocklists is refused as a quota on the Essential plan and creates custom entries on Scale."""
    async with TemClient(settings_for(sandbox)) as tem:
        domain = await tem.find_domain("example.com")
        assert domain is not None
        with pytest.raises(QuotaExceededError) as refused:
            await tem.create_blocklists(domain.id, ["a@example.org"], type=BlocklistType.MAILBOX_NOT_FOUND)
        assert refused.value.status == 403
        sandbox.update(offer="scale")
        created = await tem.create_blocklists(
            domain.id,
            ["a@example.org", "b@example.org"],
            type=BlocklistType.MAILBOX_NOT_FOUND,
            reason="bounced",
        )
        assert [(b.email, b.custom, b.reason) for b in created] == [
            ("a@example.org", True, "bounced"),
            ("b@example.org", True, "bounced"),
        ]
        custom = await tem.list_blocklists(domain.id, custom=True)
        assert {b.email for b in custom.blocklists} == {"a@example.org", "b@example.org"}
        consumption = await tem.get_project_consumption()
        assert consumption.custom_blocklists_count == 2
        with pytest.raises(NotFoundError):
            await tem.create_blocklists(
                "6170692e-7363-616c-6577-61792e636f6d", ["a@example.org"], type=BlocklistType.MAILBOX_FULL
            )


async def test_project_consumption_counts_this_months_emails(clocked: tuple[Sandbox, FakeClock]) -> None:
    """monthly_emails_count is the scripted base plus the sandbox's emails of the current month."""
    sandbox, clock = clocked
    sandbox.update(monthly_emails_base=7_000)
    async with TemClient(settings_for(sandbox)) as tem:
        await _send(tem, "news@example.com", "a@example.org", "b@example.org")
        consumption = await tem.get_project_consumption()
        assert (consumption.project_id, consumption.monthly_emails_count, consumption.domains_count) == (
            PROJECT,
            7_002,
            1,
        )
        clock.advance(31 * 24 * 3600.0)  # next month: the sandbox's emails no longer count
        assert (await tem.get_project_consumption()).monthly_emails_count == 7_000


@pytest.mark.parametrize(
    "path",
    [
        "/blocklists",
        "/blocklists?domain_id=not-a-uuid",
        "/blocklists?domain_id=6170692e-7363-616c-6577-61792e636f6d&page_size=101",
        "/blocklists?domain_id=6170692e-7363-616c-6577-61792e636f6d&type=spam",
        "/domains?status=fine",
        "/domains?page=0",
        "/project-consumption",
    ],
)
async def test_bad_queries_are_invalid_arguments(sandbox: Sandbox, path: str) -> None:
    """Missing or malformed parameters answer 400 invalid_arguments naming the argument."""
    url = f"{sandbox.url}/transactional-email/v1alpha1/regions/fr-par{path}"
    async with aiohttp.ClientSession() as session, session.get(url, headers={"X-Auth-Token": SECRET}) as r:
        body = await r.json()
    assert (r.status, body["type"]) == (400, "invalid_arguments")
    assert body["details"][0]["argument_name"] in (
        "domain_id",
        "page_size",
        "type",
        "status",
        "page",
        "project_id",
    )


async def test_inspection_endpoint_scripts_blocklist_entries(sandbox: Sandbox) -> None:
    """POST /_sandbox/blocklists adds entries; a bad body is refused with a hint."""
    async with aiohttp.ClientSession() as session:
        body = {"emails": ["x@example.org"], "type": "mailbox_full", "ends_in_s": 60}
        async with session.post(f"{sandbox.url}/_sandbox/blocklists", json=body) as r:
            assert (r.status, await r.json()) == (200, {"added": 1})
        async with session.post(
            f"{sandbox.url}/_sandbox/blocklists", json={"emails": ["x"], "type": "spam"}
        ) as r:
            assert r.status == 400
            assert "type must be one of" in (await r.json())["message"]
    async with TemClient(settings_for(sandbox)) as tem:
        domain = await tem.find_domain("example.com")
        assert domain is not None
        assert [b.email for b in (await tem.list_blocklists(domain.id)).blocklists] == ["x@example.org"]


def test_sandbox_refuses_bad_deliverability_settings() -> None:
    """Unknown statuses, records, plans and out-of-range scores are refused with the setting named."""
    for changes, named in (
        ({"domain_status": "fine"}, "domain_status"),
        ({"domain_reputation": 101}, "domain_reputation"),
        ({"failing_records": ("spf", "a")}, "failing_records"),
        ({"offer": "gold"}, "offer"),
        ({"monthly_emails_base": -1}, "monthly_emails_base"),
        ({"domain_reputation": "90"}, "domain_reputation"),
    ):
        with pytest.raises(ValueError, match=named):
            SandboxConfig(**changes)


def test_sandbox_cli_options_script_a_bad_domain() -> None:
    """The sandbox's domain options map onto SandboxConfig; --blocklist takes TYPE:ADDRESS."""
    import argparse

    from bulksend.sandbox.cli import blocklist_from_args, config_from_args, configure

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(
        [
            "--domain-status=unchecked",
            "--domain-reputation=-1",
            "--failing-record=dkim",
            "--failing-record=mx",
            "--monthly-emails=9000",
            "--offer=scale",
            "--blocklist=mailbox_full:ann@example.org",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.domain_status, cfg.domain_reputation, cfg.failing_records) == (
        "unchecked",
        None,
        ("dkim", "mx"),
    )
    assert (cfg.monthly_emails_base, cfg.offer) == (9000, "scale")
    assert blocklist_from_args(args) == [("mailbox_full", "ann@example.org")]
    defaults = config_from_args(parser.parse_args([]))
    assert (defaults.domain_status, defaults.domain_reputation, defaults.failing_records) == (
        "checked",
        90,
        (),
    )
    with pytest.raises(ValueError, match="TYPE:ADDRESS"):
        blocklist_from_args(parser.parse_args(["--blocklist=ann@example.org"]))
