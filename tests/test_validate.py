"""TEM's input rules for header text: control characters, RFC 5322 field names, display names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bulksend.campaign.load import load_campaign
from bulksend.campaign.render import Rejection, RenderedEmail, Renderer
from bulksend.campaign.validate import check_attachment, check_header, check_name, check_subject
from bulksend.errors import CampaignError

PROJECT = "11111111-2222-4333-8444-555555555555"

# NUL, VT, FF, ESC, DEL, NEL, another C1 control, LINE SEPARATOR, PARAGRAPH SEPARATOR.
FORBIDDEN = ["\x00", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\x9f", "\u2028", "\u2029"]
# What the rule refuses, written out independently of the module's own pattern.
REFUSED = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


@pytest.mark.parametrize("char", FORBIDDEN)
def test_control_characters_are_refused_in_subject_header_value_and_names(char: str) -> None:
    """Each control character is refused in a subject, a header value and a display name, by code."""
    code = f"U+{ord(char):04X}"
    for reason in (
        check_subject(f"Hello G{char}"),
        check_header("X-Tag", f"a{char}b"),
        check_name(f"Ann{char}"),
        check_name(f"News{char}", "campaign.from.name"),
    ):
        assert reason is not None
        assert code in reason
        assert "remove it" in reason


def test_tab_is_allowed_as_folding_white_space() -> None:
    """TAB is RFC 5322 white space: a subject, a header value and a name may hold one."""
    assert check_subject("Hello\tthere") is None
    assert check_header("X-Tag", "a\tb") is None
    assert check_name("Ann\tLee") is None


def test_format_characters_stay_allowed() -> None:
    """Joiners and direction marks (emoji sequences, right-to-left scripts) are not refused."""
    assert check_subject("Family \U0001f468\u200d\U0001f469\u200d\U0001f467 \u200fשלום") is None
    assert check_name("\u05e9\u05dc\u05d5\u05dd\u200e") is None


@pytest.mark.parametrize("key", ["X B", "X-Tag:", "X-\u00e9t\u00e9", "X\tTag", "X\x00", "X\x7f", " X"])
def test_header_names_must_be_rfc5322_field_names(key: str) -> None:
    """A header name with a space, colon, control or non-ASCII character is refused with the rule."""
    reason = check_header(key, "value")
    assert reason is not None
    assert "printable ASCII characters other than ':'" in reason


def test_attachment_file_name_with_control_character_is_refused() -> None:
    """An attachment whose file name holds a control character is refused (it goes in a header)."""
    reason = check_attachment("a\x00.pdf", "application/pdf", "eA==")
    assert reason is not None
    assert "U+0000" in reason
    assert check_attachment("a.pdf", "application/pdf", "eA==") is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
@example("X B")
@example("X-Tag")
@example("~!#")
def test_header_name_rule_is_exactly_printable_ascii_but_colon(key: str) -> None:
    """check_header accepts a name exactly when it is 1+ characters in 33..126 other than ':'."""
    valid = bool(key) and all(33 <= ord(c) <= 126 and c != ":" for c in key)
    assert (check_header(key, "v") is None) == valid


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
@example("Hello G\x00")
@example("a\u2028b")
def test_subject_names_and_header_values_never_keep_a_refused_character(text: str) -> None:
    """Any text holding a refused character is refused as subject, header value and name."""
    has_refused = REFUSED.search(text) is not None
    if has_refused:
        assert check_subject(text) is not None
        assert check_header("X-Tag", text) is not None
        assert check_name(text) is not None
    elif "\r" not in text and "\n" not in text:
        assert check_name(text) is None


# -- where the rules apply: rendering each row, loading a campaign ---------------------------------


def _campaign(tmp_path: Path, *, subject: str = "Hello {{ first_name }}", from_name: str = "News") -> Path:
    (tmp_path / "recipients.jsonl").write_text('{"email": "a@example.com"}\n', encoding="utf-8")
    path = tmp_path / "campaign.toml"
    path.write_text(
        "[campaign]\n"
        'id = "c1"\n'
        f'from = {{ email = "news@example.com", name = "{from_name}" }}\n'
        f'subject = "{subject}"\n'
        'text = "Hi {{ first_name }}"\n'
        'headers = { "X-Tag" = "{{ tag | default(\'t\') }}" }\n'
        'recipients = "recipients.jsonl"\n',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("name", "variables", "fragment"),
    [
        ("", {"first_name": "G\x00"}, "the rendered subject is refused: the subject contains a NUL U+0000"),
        ("", {"first_name": "G\u2028"}, "line separator U+2028"),
        ("An\x0cn", {"first_name": "G"}, "the recipient name contains a form feed U+000C"),
        ("An\x85n", {"first_name": "G"}, "the recipient name contains a next line (NEL) U+0085"),
        ("", {"first_name": "G", "tag": "a\x0bb"}, "header 'X-Tag' has a vertical tab U+000B"),
    ],
)
def test_rows_with_control_characters_are_rejected_with_a_reason(
    tmp_path: Path, name: str, variables: dict[str, str], fragment: str
) -> None:
    """A row whose subject, name or header would carry a control character is rejected, not sent."""
    renderer = Renderer(load_campaign(_campaign(tmp_path)), project_id=PROJECT)
    result = renderer.render("a@example.com", name, variables, correlation="c1/1")
    assert isinstance(result, Rejection), result
    assert fragment in result.reason
    ok = renderer.render("a@example.com", "Ann\tLee", {"first_name": "G"}, correlation="c1/1")
    assert isinstance(ok, RenderedEmail)


def test_campaign_from_name_with_control_character_is_refused(tmp_path: Path) -> None:
    """A sender name with a control character stops the campaign at load, naming the character."""
    with pytest.raises(CampaignError, match=r"campaign\.from\.name contains a vertical tab U\+000B"):
        load_campaign(_campaign(tmp_path, from_name="News\\u000b"))
