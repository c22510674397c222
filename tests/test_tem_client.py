"""TemClient against the sandbox (every endpoint and list filter) and a crafted server (wire details)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from bulksend import __version__
from bulksend.errors import (
    AuthenticationError,
    NotFoundError,
    PreconditionFailedError,
    TemConnectionError,
    TemPermanentError,
)
from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.secret import Secret
from bulksend.tem import (
    Address,
    CreateEmailRequest,
    EmailFlag,
    EmailStatus,
    ListEmailsPage,
    ListEmailsQuery,
    OrderBy,
    RcptType,
    TemClient,
    TemSettings,
    create_session,
)
from bulksend.testing import FakeClock
from tests.test_tem_errors import (
    Answer,
    CraftedTem,
    crafted,  # noqa: F401  (fixture)
    send_request,
)

SECRET = "s3cr3t"
PROJECT = "11111111-2222-4333-8444-555555555555"
OTHER_PROJECT = "99999999-8888-4777-8666-555555555555"
T0 = datetime(2024, 4, 1, 7, 55, 36, 758671, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def sb(clock: FakeClock) -> AsyncIterator[Sandbox]:
    """A sandbox whose lifecycle moves only with ``clock``: 10 s in ``new``, 10 s per try, holds 1 day."""
    config = SandboxConfig(
        secret_key=SECRET, project_id=PROJECT, sending_after_s=10.0, final_after_s=10.0, hold_s=86400.0
    )
    async with Sandbox(config, host="127.0.0.1", port=0, clock=clock) as sandbox:
        yield sandbox


class Calls:
    """An ``on_response`` observer recording every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, float]] = []

    def __call__(self, kind: str, status: int, elapsed_s: float) -> None:
        self.calls.append((kind, status, elapsed_s))

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
async def tem(sb: Sandbox, calls: Calls) -> AsyncIterator[TemClient]:
    settings = TemSettings(secret_key=Secret(SECRET), project_id=PROJECT, api_url=sb.url)
    async with TemClient(settings, on_response=calls) as client:
        yield client


def one(to: str, subject: str = "Hello there", **kw: object) -> CreateEmailRequest:
    return CreateEmailRequest(
        from_=Address(str(kw.pop("from_", "news@example.com")), "News"),
        to=(Address(to),),
        subject=subject,
        text="Hello there, this is the text part.",
        **kw,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------
# send / get / cancel
# ---------------------------------------------------------------------------------------------


async def test_send_returns_one_email_per_recipient(tem: TemClient, sb: Sandbox, clock: FakeClock) -> None:
    """A send with to, cc and bcc gives one ``new`` Email per recipient sharing one message_id."""
    request = CreateEmailRequest(
        from_=Address("news@example.com"),
        to=(Address("ann@example.org", "Ann"),),
        cc=(Address("bob@example.org"),),
        bcc=(Address("Carl@Example.org"),),
        subject="Quarterly news",
        text="Hello there, this is the text part.",
    )
    emails = await tem.send_email(request)
    assert [(e.mail_rcpt.lower(), e.rcpt_type) for e in emails] == [
        ("ann@example.org", RcptType.TO),
        ("bob@example.org", RcptType.CC),
        ("carl@example.org", RcptType.BCC),
    ]
    assert len({e.message_id for e in emails}) == 1
    assert emails[0].message_id
    assert len({e.id for e in emails}) == 3
    assert all(e.status is EmailStatus.NEW and e.project_id == PROJECT for e in emails)
    assert all(
        e.created_at is not None and abs(e.created_at - T0) < timedelta(milliseconds=1) for e in emails
    )
    assert sb.stats().accepted_by_recipient == {
        "ann@example.org": 1,
        "bob@example.org": 1,
        "carl@example.org": 1,
    }


async def test_send_raw_posts_the_body_as_is(tem: TemClient, sb: Sandbox) -> None:
    """``send_email_raw`` sends pre-encoded bytes and parses the created emails."""
    body = orjson.dumps(one("raw@example.org").to_json(default_project_id=OTHER_PROJECT))
    emails = await tem.send_email_raw(body)
    assert [e.mail_rcpt for e in emails] == ["raw@example.org"]
    assert emails[0].project_id == OTHER_PROJECT
    assert sb.stats().accepted_by_recipient == {"raw@example.org": 1}


async def test_submit_answers_what_a_sender_records(tem: TemClient, sb: Sandbox) -> None:
    """``submit`` (the campaign hot path) answers id, recipient, message id and creation time."""
    body = orjson.dumps(one("lean@example.org").to_json(default_project_id=OTHER_PROJECT))
    sent = await tem.submit(body)
    assert [s.mail_rcpt for s in sent] == ["lean@example.org"]
    full = await tem.get_email(sent[0].id)
    assert sent[0].message_id == full.message_id
    assert sent[0].message_id
    assert sent[0].created_at == full.created_at
    assert sent[0].created_at is not None
    assert sb.stats().accepted_by_recipient == {"lean@example.org": 1}


async def test_get_follows_the_lifecycle_with_the_sandbox_clock(tem: TemClient, clock: FakeClock) -> None:
    """get_email reads new → sending → sent as the clock advances, with parsed tries and times."""
    (sent,) = await tem.send_email(one("ann@example.org"))
    assert (await tem.get_email(sent.id)).status is EmailStatus.NEW
    clock.advance(10)
    assert (await tem.get_email(sent.id)).status is EmailStatus.SENDING
    clock.advance(10)
    email = await tem.get_email(sent.id)
    assert email.status is EmailStatus.SENT
    assert email.is_final
    assert email.try_count == 1
    assert email.last_try is not None
    assert email.last_try.code == 250
    assert email.updated_at is not None
    assert email.updated_at > T0


@pytest.mark.parametrize(
    ("local", "status", "flags", "tries"),
    [
        ("bounce.ann", EmailStatus.FAILED, {EmailFlag.HARD_BOUNCE, EmailFlag.MAILBOX_NOT_FOUND}, 1),
        ("softbounce.bob", EmailStatus.SENT, {EmailFlag.SOFT_BOUNCE}, 2),
        ("blocked.carl", EmailStatus.FAILED, {EmailFlag.BLOCKLISTED}, 0),
        ("spam.dora", EmailStatus.FAILED, {EmailFlag.SPAM}, 1),
        ("full.eve", EmailStatus.FAILED, {EmailFlag.MAILBOX_FULL}, 1),
        ("frank", EmailStatus.SENT, set(), 1),
    ],
)
async def test_outcomes_by_local_part_parse_into_typed_fields(
    tem: TemClient, clock: FakeClock, local: str, status: EmailStatus, flags: set[EmailFlag], tries: int
) -> None:
    """Each sandbox outcome comes back with the right final status, flags and try count."""
    (sent,) = await tem.send_email(one(f"{local}@example.org"))
    clock.advance(3600)
    email = await tem.get_email(sent.id)
    assert email.status is status
    assert set(email.flags) == flags
    assert email.try_count == tries
    assert EmailFlag.UNKNOWN_FLAG not in email.flags


async def test_cancel_works_while_new_and_is_refused_later(tem: TemClient, clock: FakeClock) -> None:
    """Cancelling a held email gives ``canceled``; cancelling a sent one is a permanent 4xx."""
    (held,) = await tem.send_email(one("hold.ann@example.org"))
    (normal,) = await tem.send_email(one("bob@example.org"))
    clock.advance(60)
    canceled = await tem.cancel_email(held.id)
    assert canceled.id == held.id
    assert canceled.status is EmailStatus.CANCELED
    assert (await tem.get_email(held.id)).status is EmailStatus.CANCELED
    with pytest.raises(TemPermanentError) as info:
        await tem.cancel_email(normal.id)
    assert isinstance(info.value, PreconditionFailedError)
    assert 400 <= info.value.status < 500


async def test_unknown_email_is_not_found(tem: TemClient) -> None:
    """get and cancel of an unknown id raise NotFoundError with the resource in ``details``."""
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(NotFoundError) as info:
        await tem.get_email(missing)
    assert info.value.details == {"resource": "email", "resource_id": missing}
    with pytest.raises(NotFoundError):
        await tem.cancel_email(missing)
    with pytest.raises(ValueError, match="email_id"):
        await tem.get_email("")


async def test_wrong_key_is_an_authentication_error(sb: Sandbox) -> None:
    """The sandbox's 401 for a wrong X-Auth-Token surfaces as AuthenticationError."""
    settings = TemSettings(secret_key=Secret("wrong"), project_id=PROJECT, api_url=sb.url)
    async with TemClient(settings) as tem:
        with pytest.raises(AuthenticationError) as info:
            await tem.get_statistics()
    assert info.value.type == "denied_authentication"
    assert not info.value.transient


# ---------------------------------------------------------------------------------------------
# list
# ---------------------------------------------------------------------------------------------


async def _fixture_emails(tem: TemClient, clock: FakeClock) -> dict[str, str]:
    """Seven emails created one minute apart, in several final states; returns address → id."""
    ids: dict[str, str] = {}
    specs = [
        ("ann@example.org", "Hello there", "news@example.com"),
        ("bounce.bob@example.org", "Hello there", "news@example.com"),
        ("spam.carl@example.org", "Other subject", "news@example.com"),
        ("dora@example.org", "Other subject", "alerts@example.com"),
        ("hold.eve@example.org", "Hello there", "news@example.com"),
        ("full.frank@example.org", "Hello there", "alerts@example.com"),
        ("gina@example.org", "Hello there", "news@example.com"),
    ]
    for address, subject, sender in specs:
        (email,) = await tem.send_email(one(address, subject, from_=sender))
        ids[address] = email.id
        clock.advance(60)
    clock.advance(3600)
    return ids


async def test_list_filters_each_select_the_right_emails(tem: TemClient, clock: FakeClock) -> None:
    """Every list filter reaches the server (repeated keys included) and selects what it should."""
    ids = await _fixture_emails(tem, clock)

    async def rcpts(**filters: object) -> set[str]:
        page = await tem.list_emails(ListEmailsQuery(**filters), page_size=1000)  # type: ignore[arg-type]
        return {e.mail_rcpt for e in page.emails}

    assert len(await rcpts()) == 7
    assert await rcpts(statuses=(EmailStatus.FAILED,)) == {
        "bounce.bob@example.org",
        "spam.carl@example.org",
        "full.frank@example.org",
    }
    assert await rcpts(statuses=(EmailStatus.NEW,)) == {"hold.eve@example.org"}
    assert await rcpts(statuses=(EmailStatus.NEW, EmailStatus.SENT)) == {
        "ann@example.org",
        "dora@example.org",
        "hold.eve@example.org",
        "gina@example.org",
    }
    assert await rcpts(flags=(EmailFlag.SPAM, EmailFlag.MAILBOX_FULL)) == {
        "spam.carl@example.org",
        "full.frank@example.org",
    }
    assert await rcpts(mail_rcpt="dora@example.org") == {"dora@example.org"}
    assert await rcpts(mail_from="alerts@example.com") == {"dora@example.org", "full.frank@example.org"}
    assert await rcpts(subject="Other subject") == {"spam.carl@example.org", "dora@example.org"}
    assert await rcpts(search="frank") == {"full.frank@example.org"}
    gina = await tem.get_email(ids["gina@example.org"])
    assert await rcpts(message_id=gina.message_id) == {"gina@example.org"}
    # Creation times are T0 + 0, 60, …, 360 s: [T0+60 s, T0+180 s] holds the 2nd to the 4th email.
    window = await rcpts(since=T0 + timedelta(seconds=60), until=T0 + timedelta(seconds=180))
    assert window == {"bounce.bob@example.org", "spam.carl@example.org", "dora@example.org"}
    assert await rcpts(domain_id="aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee") == set(ids)  # accepted, matches all
    assert await rcpts(project_id=OTHER_PROJECT) == set()


async def test_list_order_by_and_pages(tem: TemClient, clock: FakeClock) -> None:
    """order_by sorts, page/page_size slice, and total_count counts every match."""
    ids = await _fixture_emails(tem, clock)
    created_order = list(ids.values())
    asc = await tem.list_emails(ListEmailsQuery(order_by=OrderBy.CREATED_AT_ASC), page=1, page_size=3)
    assert [e.id for e in asc.emails] == created_order[:3]
    assert asc.total_count == 7
    page3 = await tem.list_emails(ListEmailsQuery(order_by=OrderBy.CREATED_AT_ASC), page=3, page_size=3)
    assert [e.id for e in page3.emails] == created_order[6:]
    desc = await tem.list_emails(ListEmailsQuery(order_by=OrderBy.CREATED_AT_DESC), page_size=1000)
    assert [e.id for e in desc.emails] == created_order[::-1]
    by_rcpt = await tem.list_emails(ListEmailsQuery(order_by=OrderBy.MAIL_RCPT_ASC), page_size=1000)
    assert [e.mail_rcpt for e in by_rcpt.emails] == sorted(ids)


async def test_list_defaults_to_the_settings_project(tem: TemClient) -> None:
    """Without a project filter, list shows the settings' project only; ``""`` lists every project."""
    await tem.send_email(one("mine@example.org"))
    await tem.send_email(one("theirs@example.org", project_id=OTHER_PROJECT))
    mine = await tem.list_emails()
    assert [e.mail_rcpt for e in mine.emails] == ["mine@example.org"]
    everyone = await tem.list_emails(ListEmailsQuery(project_id=""))
    assert {e.mail_rcpt for e in everyone.emails} == {"mine@example.org", "theirs@example.org"}


@pytest.mark.parametrize(("count", "page_size", "requests"), [(5, 2, 3), (4, 2, 3), (3, 1000, 1), (0, 10, 1)])
async def test_iter_emails_walks_every_page_and_stops_on_a_short_one(
    tem: TemClient, calls: Calls, count: int, page_size: int, requests: int
) -> None:
    """iter_emails yields every match once and stops after the first page shorter than page_size."""
    sent = [(await tem.send_email(one(f"user{i}@example.org")))[0].id for i in range(count)]
    calls.calls.clear()
    query = ListEmailsQuery(order_by=OrderBy.CREATED_AT_ASC)
    seen = [e.id async for e in tem.iter_emails(query, page_size=page_size)]
    assert seen == sent
    assert calls.kinds() == ["list"] * requests


@pytest.mark.parametrize(("page", "page_size"), [(1, 0), (1, 1001), (0, 10)])
async def test_page_arguments_are_checked_before_any_request(
    tem: TemClient, calls: Calls, page: int, page_size: int
) -> None:
    """page < 1 or page_size outside 1..1000 raise ValueError without calling TEM."""
    with pytest.raises(ValueError, match="page"):
        await tem.list_emails(page=page, page_size=page_size)
    assert calls.calls == []


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


async def test_statistics_count_by_status_with_filters(tem: TemClient, clock: FakeClock) -> None:
    """get_statistics counts by status, for the settings' project, within since/until and mail_from."""
    await _fixture_emails(tem, clock)
    await tem.send_email(one("theirs@example.org", project_id=OTHER_PROJECT))
    stats = await tem.get_statistics()
    assert (stats.total_count, stats.sent_count, stats.failed_count, stats.new_count) == (7, 3, 3, 1)
    assert stats.sending_count == 0
    assert stats.canceled_count == 0
    everyone = await tem.get_statistics(project_id="")
    assert everyone.total_count == 8
    window = await tem.get_statistics(since=T0 + timedelta(seconds=60), until=T0 + timedelta(seconds=180))
    assert window.total_count == 3
    alerts = await tem.get_statistics(mail_from="alerts@example.com")
    assert (alerts.total_count, alerts.sent_count, alerts.failed_count) == (2, 1, 1)


# ---------------------------------------------------------------------------------------------
# observer and session handling
# ---------------------------------------------------------------------------------------------


async def test_on_response_sees_every_endpoint_with_status_and_elapsed(sb: Sandbox) -> None:
    """The observer gets (kind, HTTP status, elapsed seconds from the injected clock) after each call."""
    ticks = iter(float(i) for i in range(0, 1000, 2))  # each request takes "2 s" on this clock
    calls = Calls()
    settings = TemSettings(secret_key=Secret(SECRET), project_id=PROJECT, api_url=sb.url)
    async with TemClient(settings, on_response=calls, clock=lambda: next(ticks)) as tem:
        (email,) = await tem.send_email(one("hold.x@example.org"))
        await tem.get_email(email.id)
        await tem.list_emails()
        await tem.cancel_email(email.id)
        await tem.get_statistics()
        with pytest.raises(PreconditionFailedError):
            await tem.cancel_email(email.id)
    assert calls.calls == [
        ("send", 200, 2.0),
        ("get", 200, 2.0),
        ("list", 200, 2.0),
        ("cancel", 200, 2.0),
        ("statistics", 200, 2.0),
        ("cancel", 412, 2.0),
    ]


async def test_transport_failure_is_reported_as_status_zero(crafted: CraftedTem) -> None:  # noqa: F811
    """A dropped connection reaches the observer as status 0."""
    crafted.answers["drop"] = Answer(drop=True)
    calls = Calls()
    async with TemClient(crafted.settings(), on_response=calls) as tem:
        with pytest.raises(TemConnectionError):
            await tem.get_email("drop")
    assert [(k, s) for k, s, _ in calls.calls] == [("get", 0)]


async def test_shared_session_is_left_open_and_own_session_is_closed(sb: Sandbox) -> None:
    """A client given a session never closes it (two clients can share it); its own session is closed."""
    settings = TemSettings(secret_key=Secret(SECRET), project_id=PROJECT, api_url=sb.url)
    shared = create_session(limit_per_host=8)
    try:
        async with (
            TemClient(settings, session=shared) as first,
            TemClient(settings, session=shared) as second,
        ):
            assert first.session is shared
            assert second.session is shared
            await first.get_statistics()
            await second.get_statistics()
        assert not shared.closed
        async with TemClient(settings, session=shared) as third:
            assert (await third.get_statistics()).total_count == 0
    finally:
        await shared.close()
    own = TemClient(settings, limit_per_host=4)
    with pytest.raises(RuntimeError, match="not open"):
        _ = own.session
    async with own:
        session = own.session
        assert not session.closed
    assert session.closed


# ---------------------------------------------------------------------------------------------
# wire details (crafted server: it shows exactly what was sent)
# ---------------------------------------------------------------------------------------------


async def test_requests_carry_auth_user_agent_and_content_type(crafted: CraftedTem) -> None:  # noqa: F811
    """Every request has X-Auth-Token and User-Agent; only bodies have Content-Type: application/json."""
    crafted.answers["ok"] = Answer.json(200, {"emails": [{"id": "e1", "mail_rcpt": "ann@example.org"}]})
    crafted.answers["e1"] = Answer.json(200, {"id": "e1", "status": "sent"})
    async with TemClient(crafted.settings("the-key")) as tem:
        await tem.send_email(send_request("ok"))
        await tem.get_email("e1")
    post, get = crafted.seen
    for seen in (post, get):
        assert seen.headers["X-Auth-Token"] == "the-key"
        assert seen.headers["User-Agent"] == f"bulksend/{__version__}"
    assert post.headers["Content-Type"] == "application/json"
    assert "Content-Type" not in get.headers
    body = orjson.loads(post.body)
    assert body["project_id"] == PROJECT  # filled from the settings
    assert body["from"] == {"email": "news@example.com"}


async def test_list_parameters_repeat_their_key_and_page_size_is_always_sent(
    crafted: CraftedTem,  # noqa: F811
) -> None:
    """statuses/flags repeat on the wire; project_id, page and page_size are always present."""
    crafted.answers["list"] = Answer.json(200, {"total_count": 0, "emails": []})
    query = ListEmailsQuery(statuses=(EmailStatus.SENT, EmailStatus.FAILED), flags=(EmailFlag.SPAM,))
    async with TemClient(crafted.settings()) as tem:
        await tem.list_emails(query, page=2, page_size=50)
    assert crafted.seen[0].query == [
        ("project_id", PROJECT),
        ("statuses", "sent"),
        ("statuses", "failed"),
        ("flags", "spam"),
        ("page", "2"),
        ("page_size", "50"),
    ]


async def test_total_count_falls_back_to_the_header(crafted: CraftedTem) -> None:  # noqa: F811
    """Without total_count in the body, X-Total-Count is used; without either it is 0."""
    emails = [{"id": "a"}, {"id": "b"}]
    crafted.answers["with-header"] = Answer.json(200, {"emails": emails}, headers={"X-Total-Count": "42"})
    crafted.answers["body-wins"] = Answer.json(
        200, {"total_count": 2, "emails": emails}, headers={"X-Total-Count": "42"}
    )
    crafted.answers["neither"] = Answer.json(200, {"emails": emails})
    async with TemClient(crafted.settings()) as tem:
        pages: dict[str, ListEmailsPage] = {}
        for case in ("with-header", "body-wins", "neither"):
            pages[case] = await tem.list_emails(ListEmailsQuery(subject=case))
    assert {k: p.total_count for k, p in pages.items()} == {"with-header": 42, "body-wins": 2, "neither": 0}
    assert [e.id for e in pages["with-header"].emails] == ["a", "b"]


async def test_email_ids_are_quoted_into_one_path_segment(crafted: CraftedTem) -> None:  # noqa: F811
    """An id with ``/`` or ``?`` stays one path segment instead of reaching another endpoint."""
    crafted.answers["a/b?c"] = Answer.json(200, {"id": "a/b?c"})
    async with TemClient(crafted.settings()) as tem:
        email = await tem.get_email("a/b?c")
    assert email.id == "a/b?c"
    assert crafted.seen[0].query == []


def test_public_api_is_pinned() -> None:
    """``bulksend.tem`` exports exactly its documented names, and each one exists."""
    import bulksend.tem as tem_package

    assert {
        "TemClient",
        "TemSettings",
        "TemProtocolError",
        "create_session",
        "Email",
        "ListEmailsQuery",
    } <= set(tem_package.__all__)
    assert {"error_from_response", "TemConnectionError", "TemTimeoutError", "Statistics"} <= set(
        tem_package.__all__
    )
    assert len(tem_package.__all__) == len(set(tem_package.__all__))
    for name in tem_package.__all__:
        assert hasattr(tem_package, name), name
