"""Unsubscribe tokens: round trips, and every forged, tampered, truncated or expired token refused
with the same error."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend.deliverability.tokens import (
    MAX_TOKEN_CHARS,
    SECRET_ENV,
    BadToken,
    UnsubscribeSigner,
)
from bulksend.errors import ConfigError

SECRET = "a-test-secret-of-enough-length"
PROJECT = "11111111-2222-4333-8444-555555555555"
NOW = 1_700_000_000.0
SIGNER = UnsubscribeSigner(SECRET)

projects = st.uuids().map(str)
campaigns = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
addresses = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.from_regex(r"[a-z0-9._+-]{1,64}", fullmatch=True),
    st.from_regex(r"[a-z0-9-]{1,63}\.[a-z]{2,10}", fullmatch=True),
)


@settings(deadline=None)
@given(projects, addresses, campaigns, st.integers(0, 2**32 - 1))
def test_a_token_says_what_it_was_made_of(project: str, address: str, campaign: str, issued: int) -> None:
    """verify() gives back project, address, campaign and issue time; the token is URL-safe, bounded."""
    token = SIGNER.token(project, address, campaign, issued_at=issued)
    assert len(token) <= MAX_TOKEN_CHARS
    assert token.replace("-", "").replace("_", "").isalnum()
    found = SIGNER.verify(token, now=issued)
    assert (found.project_id, found.address, found.campaign_id, found.issued_at) == (
        project,
        address,
        campaign,
        issued,
    )


def test_the_longest_fields_still_fit() -> None:
    """A 64-character campaign id and a 254-character address make a token within the bound."""
    address = "a" * 64 + "@" + "b" * 184 + ".test"
    assert len(address) == 254
    token = SIGNER.token(PROJECT, address, "c" * 64, issued_at=NOW)
    assert len(token) <= MAX_TOKEN_CHARS
    assert SIGNER.verify(token, now=NOW).address == address


@settings(max_examples=300, deadline=None)
@given(addresses, st.data())
def test_any_changed_byte_is_refused(address: str, data: st.DataObject) -> None:
    """Flipping any bit of the decoded token (payload or MAC) makes it invalid."""
    token = SIGNER.token(PROJECT, address, "spring", issued_at=NOW)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= 1 << data.draw(st.integers(0, 7))
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(BadToken) as refused:
        SIGNER.verify(tampered, now=NOW)
    assert str(refused.value) == "invalid unsubscribe link"


@settings(deadline=None)
@given(addresses, st.data())
def test_truncated_or_extended_tokens_are_refused(address: str, data: st.DataObject) -> None:
    """A token cut short or with characters added is invalid."""
    token = SIGNER.token(PROJECT, address, "spring", issued_at=NOW)
    cut = data.draw(st.integers(0, len(token) - 1))
    with pytest.raises(BadToken):
        SIGNER.verify(token[:cut], now=NOW)
    with pytest.raises(BadToken):
        SIGNER.verify(token + data.draw(st.sampled_from(["A", "Ab", "-_x"])), now=NOW)


@settings(deadline=None)
@given(st.text(max_size=600))
def test_arbitrary_text_is_refused_without_any_other_error(text: str) -> None:
    """Whatever a client sends as a token, verify() raises BadToken and nothing else."""
    with pytest.raises(BadToken):
        SIGNER.verify(text, now=NOW)


@settings(deadline=None)
@given(addresses, campaigns)
def test_another_secret_cannot_forge_or_read_as_valid(address: str, campaign: str) -> None:
    """A token signed with another secret is refused, both ways."""
    other = UnsubscribeSigner("another-secret-of-enough-length")
    with pytest.raises(BadToken):
        SIGNER.verify(other.token(PROJECT, address, campaign, issued_at=NOW), now=NOW)
    with pytest.raises(BadToken):
        other.verify(SIGNER.token(PROJECT, address, campaign, issued_at=NOW), now=NOW)


@settings(deadline=None)
@given(st.floats(min_value=1.0, max_value=1e8))
def test_expired_and_future_tokens_are_refused(beyond_s: float) -> None:
    """Past max_age_s a token is refused; one issued more than 5 minutes ahead of now is too."""
    token = SIGNER.token(PROJECT, "ann@example.org", "spring", issued_at=NOW)
    day = 86_400.0
    assert SIGNER.verify(token, now=NOW + day, max_age_s=day).address == "ann@example.org"
    with pytest.raises(BadToken):
        SIGNER.verify(token, now=NOW + day + beyond_s, max_age_s=day)
    with pytest.raises(BadToken):
        SIGNER.verify(token, now=NOW - 300 - beyond_s)


def test_the_secret_comes_from_the_environment_and_must_be_long_enough() -> None:
    """from_env refuses a missing or short secret, naming the variable; the key never shows."""
    with pytest.raises(ConfigError, match=SECRET_ENV):
        UnsubscribeSigner.from_env({})
    with pytest.raises(ConfigError, match="at least 16 characters"):
        UnsubscribeSigner.from_env({SECRET_ENV: "short"})
    signer = UnsubscribeSigner.from_env({SECRET_ENV: SECRET})
    assert SECRET not in repr(signer)
    token = signer.token(PROJECT, "Ann@Example.org ", "spring", issued_at=NOW)
    assert SIGNER.verify(token, now=NOW).address == "ann@example.org"


def test_unusable_fields_are_refused_when_signing() -> None:
    """A project that is not a UUID, an empty or long campaign id, or a non-address cannot be signed."""
    for project, address, campaign in (
        ("not-a-uuid", "ann@example.org", "spring"),
        (PROJECT, "ann@example.org", ""),
        (PROJECT, "ann@example.org", "c" * 65),
        (PROJECT, "no-at-sign", "spring"),
        (PROJECT, "a" * 250 + "@b.test", "spring"),
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the field
            SIGNER.token(project, address, campaign, issued_at=NOW)
