"""TEM models: tolerant parsing of what TEM sends, exact encoding of what we send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bulksend.tem import models

# ---------------------------------------------------------------------------------------------
# RFC 3339
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-04-01T07:55:36.758671147Z", datetime(2024, 4, 1, 7, 55, 36, 758671, tzinfo=UTC)),
        ("2024-04-01T07:55:36.7Z", datetime(2024, 4, 1, 7, 55, 36, 700000, tzinfo=UTC)),
        ("2024-04-01T07:55:36Z", datetime(2024, 4, 1, 7, 55, 36, tzinfo=UTC)),
        ("2024-04-01t07:55:36z", datetime(2024, 4, 1, 7, 55, 36, tzinfo=UTC)),
        ("2024-04-01T09:55:36.123+02:00", datetime(2024, 4, 1, 7, 55, 36, 123000, tzinfo=UTC)),
        ("2024-04-01T02:25:36-0530", datetime(2024, 4, 1, 7, 55, 36, tzinfo=UTC)),
        ("2024-04-01 07:55:36", datetime(2024, 4, 1, 7, 55, 36, tzinfo=UTC)),
    ],
)
def test_parse_rfc3339_accepts_nanoseconds_offsets_and_no_fraction(text: str, expected: datetime) -> None:
    """Nanosecond fractions are truncated to µs, offsets are normalised to UTC, no offset means UTC."""
    parsed = models.parse_rfc3339(text)
    assert parsed == expected
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(0)


def test_parse_rfc3339_empty_is_none_and_garbage_raises() -> None:
    """None or "" give None; text that is not a timestamp raises ValueError."""
    assert models.parse_rfc3339(None) is None
    assert models.parse_rfc3339("") is None
    with pytest.raises(ValueError, match="RFC 3339"):
        models.parse_rfc3339("yesterday")


def test_format_rfc3339_is_utc_with_z() -> None:
    """Datetimes are sent in UTC with a Z suffix; naive ones are taken as UTC."""
    paris = timezone(timedelta(hours=2))
    assert models.format_rfc3339(datetime(2024, 4, 1, 9, 0, tzinfo=paris)) == "2024-04-01T07:00:00Z"
    assert models.format_rfc3339(datetime(2024, 4, 1, 7, 0, 0, 5)) == "2024-04-01T07:00:00.000005Z"
    value = datetime(2024, 4, 1, 7, 0, 0, 123456, tzinfo=UTC)
    assert models.parse_rfc3339(models.format_rfc3339(value)) == value


# ---------------------------------------------------------------------------------------------
# Email parsing
# ---------------------------------------------------------------------------------------------

FULL_EMAIL = {
    "id": "e1",
    "message_id": "m1",
    "project_id": "p1",
    "mail_from": "news@example.com",
    "rcpt_to": "old@example.org",
    "mail_rcpt": "ann@example.org",
    "rcpt_type": "cc",
    "subject": "Hello",
    "created_at": "2024-04-01T07:55:36.758671147Z",
    "updated_at": "2024-04-01T07:56:00Z",
    "status": "failed",
    "status_details": "550 5.1.1 mailbox not found",
    "try_count": 1,
    "last_tries": [
        {"rank": 1, "tried_at": "2024-04-01T07:55:40Z", "code": 550, "message": "mailbox not found"},
    ],
    "flags": ["hard_bounce", "mailbox_not_found"],
}


@settings(max_examples=300, deadline=None)
@given(st.datetimes(timezones=st.just(UTC)))
@example(datetime(1, 1, 1, tzinfo=UTC))
@example(datetime(999, 12, 31, 23, 59, 59, 5, tzinfo=UTC))
@example(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
def test_format_rfc3339_round_trips_every_year(value: datetime) -> None:
    """Any time of years 1..9999 formats as RFC 3339 (four-digit year) and parses back to itself."""
    text = models.format_rfc3339(value)
    assert len(text.split("-", 1)[0]) == 4, text
    assert models.parse_rfc3339(text) == value


def test_email_from_json_reads_every_field() -> None:
    """A complete Email object is parsed into typed fields (mail_rcpt preferred over rcpt_to)."""
    email = models.Email.from_json(FULL_EMAIL)
    assert email.id == "e1"
    assert email.mail_rcpt == "ann@example.org"
    assert email.rcpt_type is models.RcptType.CC
    assert email.status is models.EmailStatus.FAILED
    assert email.created_at == datetime(2024, 4, 1, 7, 55, 36, 758671, tzinfo=UTC)
    assert email.flags == (models.EmailFlag.HARD_BOUNCE, models.EmailFlag.MAILBOX_NOT_FOUND)
    assert email.last_try is not None
    assert email.last_try.code == 550
    assert email.is_final


def test_email_from_json_tolerates_missing_keys() -> None:
    """Missing keys mean empty or zero, as TEM documents; the deprecated rcpt_to is a fallback."""
    email = models.Email.from_json({"id": "e2", "rcpt_to": "bob@example.org"})
    assert email.mail_rcpt == "bob@example.org"
    assert email.status is models.EmailStatus.UNKNOWN
    assert email.rcpt_type is models.RcptType.UNKNOWN_RCPT_TYPE
    assert (email.try_count, email.last_tries, email.flags, email.created_at) == (0, (), (), None)
    assert email.last_try is None
    assert not email.is_final


def test_unknown_enum_values_map_to_unknown_and_keep_the_raw_value() -> None:
    """A status, flag or recipient type TEM adds later becomes UNKNOWN instead of crashing."""
    email = models.Email.from_json(
        {"id": "e3", "status": "quarantined", "rcpt_type": "resent_to", "flags": ["spam", "new_flag"]}
    )
    assert email.status is models.EmailStatus.UNKNOWN
    assert email.rcpt_type is models.RcptType.UNKNOWN_RCPT_TYPE
    assert email.flags == (models.EmailFlag.SPAM, models.EmailFlag.UNKNOWN_FLAG)
    assert email.raw_flags == ("spam", "new_flag")


def test_malformed_values_do_not_lose_the_email() -> None:
    """Bad timestamps, non-numeric counts, junk tries and nulls degrade to empty values."""
    email = models.Email.from_json(
        {
            "id": "e4",
            "created_at": "not a time",
            "try_count": "many",
            "last_tries": [None, "x", {"rank": "2", "code": None}],
            "flags": None,
            "subject": None,
        }
    )
    assert email.created_at is None
    assert email.try_count == 0
    assert len(email.last_tries) == 1
    assert email.last_tries[0].rank == 2
    assert email.flags == ()
    assert email.subject == ""


@pytest.mark.parametrize(
    ("status", "final"),
    [
        (models.EmailStatus.NEW, False),
        (models.EmailStatus.SENDING, False),
        (models.EmailStatus.SENT, True),
        (models.EmailStatus.FAILED, True),
        (models.EmailStatus.CANCELED, True),
        (models.EmailStatus.UNKNOWN, False),
    ],
)
def test_is_final(status: models.EmailStatus, final: bool) -> None:
    """Only sent, failed and canceled are final; new, sending and unknown may still change."""
    assert status.is_final is final
    assert models.Email(id="x", status=status).is_final is final


def test_list_page_and_statistics_parse_tolerantly() -> None:
    """List pages skip non-object entries; statistics default missing counts to zero."""
    page = models.ListEmailsPage.from_json({"total_count": "3", "emails": [FULL_EMAIL, "junk"]})
    assert page.total_count == 3
    assert [e.id for e in page.emails] == ["e1"]
    assert models.ListEmailsPage.from_json({}) == models.ListEmailsPage(total_count=0, emails=())
    stats = models.Statistics.from_json({"total_count": 5, "sent_count": 4, "failed_count": None})
    assert stats == models.Statistics(total_count=5, sent_count=4)
    answer = {"total_count": 9, "new_count": 1, "sending_count": "2", "sent_count": 3, "canceled_count": 3}
    assert models.Statistics.from_json(answer) == models.Statistics(9, 1, 2, 3, 0, 3)


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


def test_list_query_to_params_repeats_list_keys() -> None:
    """statuses and flags repeat their key, times are RFC 3339 UTC, empty filters are left out."""
    query = models.ListEmailsQuery(
        project_id="p",
        mail_rcpt="ann@example.org",
        subject="",
        since=datetime(2024, 4, 1, tzinfo=UTC),
        until=datetime(2024, 4, 2, 2, tzinfo=timezone(timedelta(hours=2))),
        statuses=(models.EmailStatus.SENT, models.EmailStatus.FAILED),
        flags=(models.EmailFlag.SPAM, models.EmailFlag.HARD_BOUNCE),
        order_by=models.OrderBy.CREATED_AT_ASC,
    )
    assert query.to_params() == [
        ("project_id", "p"),
        ("mail_rcpt", "ann@example.org"),
        ("since", "2024-04-01T00:00:00Z"),
        ("until", "2024-04-02T00:00:00Z"),
        ("statuses", "sent"),
        ("statuses", "failed"),
        ("flags", "spam"),
        ("flags", "hard_bounce"),
        ("order_by", "created_at_asc"),
    ]
    assert models.ListEmailsQuery().to_params() == []


def test_create_email_request_to_json() -> None:
    """The send body uses TEM's key names, fills an empty project id and omits empty optional lists."""
    request = models.CreateEmailRequest(
        from_=models.Address("news@example.com", "News"),
        to=(models.Address("ann@example.org"),),
        bcc=(models.Address("audit@example.org", "Audit"),),
        subject="Hi",
        text="t",
        attachments=(models.Attachment("a.txt", "text/plain", "aGk="),),
        send_before=datetime(2030, 1, 1, tzinfo=UTC),
        additional_headers=(models.Header("List-Unsubscribe", "<https://example.com/u>"),),
    )
    body = request.to_json(default_project_id="p-default")
    assert body["from"] == {"email": "news@example.com", "name": "News"}
    assert body["to"] == [{"email": "ann@example.org"}]
    assert body["bcc"] == [{"email": "audit@example.org", "name": "Audit"}]
    assert "cc" not in body
    assert body["project_id"] == "p-default"
    assert body["send_before"] == "2030-01-01T00:00:00Z"
    assert body["attachments"] == [{"name": "a.txt", "type": "text/plain", "content": "aGk="}]
    assert body["additional_headers"] == [{"key": "List-Unsubscribe", "value": "<https://example.com/u>"}]
    explicit = models.CreateEmailRequest(from_=models.Address("a@example.com"), project_id="p-own")
    assert explicit.to_json(default_project_id="p-default")["project_id"] == "p-own"
