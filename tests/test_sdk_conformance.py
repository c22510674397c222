"""The official Scaleway SDK (sync client) works unchanged against the sandbox.

The SDK is synchronous, so the sandbox is served from a background thread with its own event loop
(``sandbox_in_thread``); the clock is a fake one the test moves by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from scaleway import Client
from scaleway.tem.v1alpha1 import (
    BlocklistType,
    CreateEmailRequestAddress,
    CreateEmailRequestAttachment,
    CreateEmailRequestHeader,
    DomainLastStatusRecordStatus,
    DomainReputationStatus,
    DomainStatus,
    EmailFlag,
    EmailRcptType,
    EmailStatus,
    ListBlocklistsRequestOrderBy,
    ListEmailsRequestOrderBy,
    TemV1Alpha1API,
)
from scaleway_core.api import ScalewayException

from bulksend.sandbox import SandboxConfig, ThreadedSandbox, sandbox_in_thread
from bulksend.testing import FakeClock

# The SDK validates credentials' shapes: an SCW access key and a UUID secret key.
ACCESS_KEY = "SCWSANDBOXSANDBOX000"
SECRET_KEY = "0a0b0c0d-1111-4222-8333-444455556666"
PROJECT = "11111111-2222-4333-8444-555555555555"
T0 = 1_700_000_000.0


@dataclass
class Env:
    api: TemV1Alpha1API
    sandbox: ThreadedSandbox
    clock: FakeClock


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # requests must talk to the sandbox directly
    clock = FakeClock(T0)
    config = SandboxConfig(
        secret_key=SECRET_KEY, project_id=PROJECT, sending_after_s=10.0, final_after_s=5.0, hold_s=3600.0
    )
    with sandbox_in_thread(config, clock=clock) as sb:
        client = Client(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            default_project_id=PROJECT,
            default_region="fr-par",
            api_url=sb.url,
        )
        yield Env(TemV1Alpha1API(client), sb, clock)


def _send(api: TemV1Alpha1API, *rcpts: str, subject: str = "Hello", cc: tuple[str, ...] = ()) -> list[str]:
    response = api.create_email(
        from_=CreateEmailRequestAddress(email="news@example.com", name="News"),
        to=[CreateEmailRequestAddress(email=r) for r in rcpts],
        cc=[CreateEmailRequestAddress(email=r) for r in cc] or None,
        subject=subject,
        text="Hello there",
        html="<p>Hello there</p>",
    )
    return [e.id for e in response.emails]


def test_create_email_returns_typed_new_emails(env: Env) -> None:
    """create_email parses into one `new` Email per recipient with datetimes and a shared message_id."""
    response = env.api.create_email(
        from_=CreateEmailRequestAddress(email="news@example.com", name="News"),
        to=[CreateEmailRequestAddress(email="ann@example.org", name="Ann")],
        cc=[CreateEmailRequestAddress(email="cc@example.org")],
        subject="Invoice",
        text="See attached",
        html="<p>See attached</p>",
        attachments=[CreateEmailRequestAttachment(name="a.pdf", type_="application/pdf", content="JVBERi0=")],
        additional_headers=[CreateEmailRequestHeader(key="X-Campaign", value="spring")],
        send_before=datetime(2030, 1, 1, tzinfo=UTC),
    )
    emails = response.emails
    assert [(e.mail_rcpt, e.rcpt_type) for e in emails] == [
        ("ann@example.org", EmailRcptType.TO),
        ("cc@example.org", EmailRcptType.CC),
    ]
    assert len({e.message_id for e in emails}) == 1
    for e in emails:
        assert e.status == EmailStatus.NEW
        assert e.project_id == PROJECT
        assert e.mail_from == "news@example.com"
        assert e.subject == "Invoice"
        assert e.try_count == 0
        assert e.last_tries == []
        assert e.flags == []
        assert isinstance(e.created_at, datetime)
        assert e.created_at.tzinfo is not None
        assert abs(e.created_at.timestamp() - T0) < 1e-3
    assert env.sandbox.stats().emails_total == 2


def test_get_email_follows_the_lifecycle(env: Env) -> None:
    """get_email shows new → sending → sent with a typed EmailTry once the clock moves."""
    [email_id] = _send(env.api, "ann@example.org")
    assert env.api.get_email(email_id=email_id).status == EmailStatus.NEW
    env.clock.advance(11.0)
    assert env.api.get_email(email_id=email_id).status == EmailStatus.SENDING
    env.clock.advance(5.0)
    email = env.api.get_email(email_id=email_id)
    assert email.status == EmailStatus.SENT
    assert email.try_count == 1
    assert email.status_details == "250 2.0.0 OK"
    [attempt] = email.last_tries
    assert (attempt.rank, attempt.code) == (1, 250)
    assert isinstance(attempt.tried_at, datetime)
    assert email.updated_at is not None
    assert email.updated_at.timestamp() == pytest.approx(T0 + 15, abs=1e-3)


def test_failed_email_has_typed_flags(env: Env) -> None:
    """A hard bounce parses as `failed` with the hard_bounce and mailbox_not_found flags."""
    [email_id] = _send(env.api, "bounce@example.org")
    env.clock.advance(100.0)
    email = env.api.get_email(email_id=email_id)
    assert email.status == EmailStatus.FAILED
    assert email.flags == [EmailFlag.HARD_BOUNCE, EmailFlag.MAILBOX_NOT_FOUND]
    assert email.last_tries[0].code == 550


def test_list_emails_with_filters_sort_and_pages(env: Env) -> None:
    """list_emails honours statuses, mail_rcpt, since/until, order_by and page/page_size."""
    ids = []
    for i in range(5):
        ids += _send(env.api, f"user{i}@example.org")
        env.clock.advance(1.0)
    hold_id = _send(env.api, "hold@example.org")[0]
    env.clock.advance(100.0)

    sent = env.api.list_emails(statuses=[EmailStatus.SENT], order_by=ListEmailsRequestOrderBy.CREATED_AT_ASC)
    assert [e.id for e in sent.emails] == ids
    # The SDK copies the X-Total-Count header over the body's total_count, as a string.
    assert int(sent.total_count) == 5

    new = env.api.list_emails(statuses=[EmailStatus.NEW, EmailStatus.SENDING])
    assert [e.id for e in new.emails] == [hold_id]

    by_rcpt = env.api.list_emails(mail_rcpt="user3@example.org")
    assert [e.id for e in by_rcpt.emails] == [ids[3]]

    window = env.api.list_emails(
        since=datetime.fromtimestamp(T0 + 1, UTC),
        until=datetime.fromtimestamp(T0 + 3, UTC),
        order_by=ListEmailsRequestOrderBy.CREATED_AT_ASC,
    )
    assert [e.id for e in window.emails] == ids[1:4]

    page2 = env.api.list_emails(page=2, page_size=2, order_by=ListEmailsRequestOrderBy.MAIL_RCPT_ASC)
    assert [e.mail_rcpt for e in page2.emails] == ["user1@example.org", "user2@example.org"]
    assert int(page2.total_count) == 6

    desc = env.api.list_emails(order_by=ListEmailsRequestOrderBy.CREATED_AT_DESC, page_size=1)
    assert [e.id for e in desc.emails] == [hold_id]


def test_list_emails_all_walks_every_page(env: Env) -> None:
    """list_emails_all collects every page of a small page_size in order."""
    ids = []
    for i in range(5):
        ids += _send(env.api, f"user{i}@example.org")
        env.clock.advance(0.25)
    emails = env.api.list_emails_all(page_size=2, order_by=ListEmailsRequestOrderBy.CREATED_AT_ASC)
    assert [e.id for e in emails] == ids


def test_cancel_email_only_while_new(env: Env) -> None:
    """cancel_email returns the canceled Email while `new`; later the SDK raises with status 412."""
    [held, other] = _send(env.api, "hold@example.org", "ann@example.org")
    canceled = env.api.cancel_email(email_id=held)
    assert canceled.status == EmailStatus.CANCELED
    env.clock.advance(60.0)
    with pytest.raises(ScalewayException) as info:
        env.api.cancel_email(email_id=other)
    assert info.value.status_code == 412
    assert env.api.get_email(email_id=held).status == EmailStatus.CANCELED


def test_get_statistics_counts_by_status(env: Env) -> None:
    """get_statistics parses counts by status, filtered by time window and sender."""
    _send(env.api, "ann@example.org", "bounce@example.org", "hold@example.org")
    env.clock.advance(60.0)
    _send(env.api, "late@example.org")
    stats = env.api.get_statistics()
    assert (stats.total_count, stats.sent_count, stats.failed_count, stats.new_count) == (4, 1, 1, 2)
    assert stats.sending_count == 0
    assert stats.canceled_count == 0
    earlier = env.api.get_statistics(until=datetime.fromtimestamp(T0 + 1, UTC), mail_from="news@example.com")
    assert earlier.total_count == 3
    later = env.api.get_statistics(since=datetime.fromtimestamp(T0, UTC) + timedelta(seconds=30))
    assert later.total_count == 1


def test_sdk_sees_api_errors(env: Env) -> None:
    """Validation, unknown ids and a wrong key reach the SDK as ScalewayException with TEM's status."""
    with pytest.raises(ScalewayException) as info:
        _send(env.api, "not-an-address")
    assert info.value.status_code == 400
    with pytest.raises(ScalewayException) as info:
        env.api.get_email(email_id="6170692e-7363-616c-6577-61792e636f6d")
    assert info.value.status_code == 404
    env.sandbox.update(secret_key="99999999-1111-4222-8333-444455556666")
    with pytest.raises(ScalewayException) as info:
        env.api.list_emails()
    assert info.value.status_code == 401


def test_domains_parse_with_status_reputation_and_records(env: Env) -> None:
    """list_domains_all, get_domain and get_domain_last_status parse the sandbox's domains."""
    _send(env.api, "ann@example.org")  # the sender's domain is registered by its first send
    [domain] = env.api.list_domains_all(status=[DomainStatus.CHECKED])
    assert (domain.name, domain.project_id, domain.status) == ("example.com", PROJECT, DomainStatus.CHECKED)
    assert domain.reputation is not None
    assert (domain.reputation.score, domain.reputation.status) == (90, DomainReputationStatus.EXCELLENT)
    assert isinstance(domain.reputation.scored_at, datetime)
    assert domain.records is not None
    assert domain.records.dkim is not None
    assert domain.records.dkim.name == f"{PROJECT}._domainkey"
    assert env.api.get_domain(domain_id=domain.id) == domain
    assert env.api.list_domains(name="example.com").domains == [domain]

    env.sandbox.update(domain_status="unchecked", failing_records=("spf", "dkim"))
    unchecked = env.api.get_domain(domain_id=domain.id)
    assert (unchecked.status, unchecked.reputation) == (DomainStatus.UNCHECKED, None)
    checks = env.api.get_domain_last_status(domain_id=domain.id)
    assert checks.domain_name == "example.com"
    assert checks.spf_record is not None
    assert checks.spf_record.status == DomainLastStatusRecordStatus.NOT_FOUND
    assert checks.spf_record.error
    assert checks.dmarc_record is not None
    assert checks.dmarc_record.status == DomainLastStatusRecordStatus.VALID
    assert isinstance(checks.dmarc_record.last_valid_at, datetime)
    with pytest.raises(ScalewayException) as info:
        _send(env.api, "bob@example.org")
    assert info.value.status_code == 400


def test_blocklists_list_all_pages_and_bulk_create(env: Env) -> None:
    """list_blocklists_all walks pages of typed entries; bulk_create_blocklists needs the Scale plan."""
    _send(env.api, "ann@example.org")
    [domain] = env.api.list_domains_all()
    env.sandbox.block([f"gone{i}@example.org" for i in range(5)], type="mailbox_not_found")
    env.clock.advance(1.0)
    env.sandbox.block(["full@example.org"], type="mailbox_full", ends_in_s=600)
    entries = env.api.list_blocklists_all(
        domain_id=domain.id, page_size=2, order_by=ListBlocklistsRequestOrderBy.CREATED_AT_ASC
    )
    assert [e.email for e in entries] == [*(f"gone{i}@example.org" for i in range(5)), "full@example.org"]
    full = entries[-1]
    assert (full.type_, full.custom, full.domain_id) == (BlocklistType.MAILBOX_FULL, False, domain.id)
    assert full.ends_at == datetime.fromtimestamp(T0 + 601, UTC)
    only = env.api.list_blocklists(domain_id=domain.id, type_=BlocklistType.MAILBOX_FULL)
    assert [e.email for e in only.blocklists] == ["full@example.org"]

    with pytest.raises(ScalewayException) as info:
        env.api.bulk_create_blocklists(
            domain_id=domain.id, emails=["x@example.org"], type_=BlocklistType.MAILBOX_FULL
        )
    assert info.value.status_code == 403
    env.sandbox.update(offer="scale")
    created = env.api.bulk_create_blocklists(
        domain_id=domain.id, emails=["x@example.org"], type_=BlocklistType.MAILBOX_NOT_FOUND, reason="bounced"
    )
    assert [(b.email, b.custom, b.reason) for b in created.blocklists] == [("x@example.org", True, "bounced")]
    assert [e.email for e in env.api.list_blocklists_all(domain_id=domain.id, custom=True)] == [
        "x@example.org"
    ]


def test_project_consumption_parses(env: Env) -> None:
    """get_project_consumption reports the project's domains and emails of the month as integers."""
    env.sandbox.update(monthly_emails_base=100)
    _send(env.api, "ann@example.org", "bob@example.org")
    consumption = env.api.get_project_consumption()
    assert (consumption.project_id, consumption.monthly_emails_count, consumption.domains_count) == (
        PROJECT,
        102,
        1,
    )
    assert consumption.custom_blocklists_count == 0
