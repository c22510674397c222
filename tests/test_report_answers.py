"""The SMTP-answer normaliser groups answers by kind: row-specific parts go, the meaning stays."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulksend.reporting.answers import MAX_ANSWER_CHARS, NO_ANSWER, answer_of, normalize_answer
from bulksend.reporting.outcome import parse_outcome
from tests.strategies import odd_text

answers = st.one_of(
    odd_text,
    st.text(max_size=400),
    st.lists(
        st.sampled_from([*"0123456789.:-<>@[]()' abcdefxyz", "5.1.1", "550 ", "<id>", "://"]), max_size=30
    ).map("".join),
)
local_parts = st.from_regex(r"[a-z][a-z0-9._+-]{0,20}", fullmatch=True)
domains = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,6}){1,2}", fullmatch=True)
addresses = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains)
ipv4 = st.builds(lambda *parts: ".".join(map(str, parts)), *[st.integers(0, 255)] * 4)
# Queue ids of six characters or more, with a digit (all digits too); quantities below 100,000.
ids = st.from_regex(r"[A-Z0-9]{0,6}[0-9][A-Z0-9]{5,10}", fullmatch=True)
numbers = st.integers(0, 99_999)


@given(answers)
def test_normalising_twice_changes_nothing(text: str) -> None:
    """A kind is its own kind: normalising an already normalised answer gives it back."""
    once = normalize_answer(text)
    assert normalize_answer(once) == once


@given(answers)
def test_a_kind_is_bounded_and_names_no_address(text: str) -> None:
    """Every kind fits the limit, is never empty, and holds no '@' (no address survives)."""
    kind = normalize_answer(text)
    assert 0 < len(kind) <= MAX_ANSWER_CHARS
    assert "@" not in kind


@given(
    st.sampled_from(["550", "552", "554", "421", "451"]),
    st.sampled_from(["5.1.1", "4.7.0", "5.7.1", "4.2.2"]),
    st.lists(st.tuples(addresses, ipv4, ids, numbers), min_size=2, max_size=2),
)
def test_answers_differing_only_in_row_specific_parts_are_one_kind(
    code: str, enhanced: str, fills: list[tuple[str, str, str, int]]
) -> None:
    """Two answers that differ only in the address, IP, queue id and a number are the same kind,
    and that kind keeps the reply code and the enhanced status code."""
    template = "{code} {enhanced} <{address}>: rejected from [{ip}] (id {id}); retry in {n} seconds"
    kinds = {
        normalize_answer(template.format(code=code, enhanced=enhanced, address=a, ip=i, id=q, n=n))
        for a, i, q, n in fills
    }
    assert len(kinds) == 1
    kind = kinds.pop()
    assert kind.startswith(f"{code} {enhanced} <address>: rejected from <ip>")
    assert "(id <id>)" in kind
    assert "retry in <n> seconds" in kind


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (
            "550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
            "550 5.1.1 <address>: Recipient address rejected: User unknown in virtual mailbox table",
        ),
        (
            "421 4.7.0 [TSS04] Messages from 51.159.10.2 temporarily deferred; see https://postmaster.example/x",
            "421 4.7.0 [<id>] Messages from <ip> temporarily deferred; see <url>",
        ),
        ("452 4.2.2 mailbox full on mx04.example.net", "452 4.2.2 mailbox full on <id>"),
        ("smtp; 5.2.2 mailbox full", "smtp; 5.2.2 mailbox full"),
        ("   ", NO_ANSWER),
    ],
)
def test_real_answers_normalise_to_their_kind(raw: str, kind: str) -> None:
    """Answers of the shapes mail servers give normalise to the expected kind."""
    assert normalize_answer(raw) == kind


def test_the_answer_is_the_smtp_reply_else_tems_details() -> None:
    """An outcome's answer is its SMTP code and message; without a code, TEM's explanation."""
    replied = parse_outcome({"smtp_code": 550, "smtp_message": "5.1.1 no such user", "status_details": "x"})
    assert answer_of(replied) == "550 5.1.1 no such user"
    blocked = parse_outcome({"smtp_code": None, "status_details": "recipient is blocklisted"})
    assert answer_of(blocked) == "recipient is blocklisted"
    assert answer_of(parse_outcome({})) == NO_ANSWER
