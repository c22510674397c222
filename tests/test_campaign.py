"""Tests of the campaign model and its validation (bulksend.campaign.load)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bulksend.campaign.load import (
    Campaign,
    OutputSettings,
    SendingSettings,
    TrackingSettings,
    campaign_from_dict,
    guess_attachment_type,
    load_campaign,
)
from bulksend.errors import CampaignError
from bulksend.tem.models import Address, Attachment

BASE = """\
[campaign]
id = "welcome-2026"
from = { email = "news@example.com", name = "Example News" }
subject = "Hello {{ first_name }}"
text = "Hi {{ first_name }}"
html = "<p>Hi {{ first_name }}</p>"
recipients = "recipients.csv"
"""


def make(tmp_path: Path, toml: str = BASE, **files: str | bytes) -> Path:
    """Write a campaign file plus its side files (recipients.csv by default) and return its path."""
    files.setdefault("recipients.csv", "email,first_name\na@example.com,Ann\n")
    for name, content in files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    path = tmp_path / "campaign.toml"
    path.write_text(toml, encoding="utf-8")
    return path


def error_of(path: Path, **kwargs: object) -> CampaignError:
    with pytest.raises(CampaignError) as info:
        load_campaign(path, **kwargs)  # type: ignore[arg-type]
    return info.value


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


# --- A good campaign ----------------------------------------------------------------------------


def test_full_campaign_loads_with_paths_resolved_and_settings_typed(tmp_path: Path) -> None:
    """Every key of the documented example is read, paths resolve against the campaign folder."""
    toml = (
        (
            BASE.replace('text = "Hi {{ first_name }}"', 'text_file = "tpl/welcome.txt.j2"')
            .replace('html = "<p>Hi {{ first_name }}</p>"', 'html_file = "tpl/welcome.html.j2"')
            .replace('"recipients.csv"', '"data/recipients.csv"')
        )
        + """\
headers = { "List-Unsubscribe" = "<https://example.com/u/{{ id }}>" }
attachments = ["brochure.pdf", { path = "files/notes.txt", name = "Read me.txt" }]
send_before = 2026-12-31T00:00:00Z

[sending]
rate_per_s = 50.5
concurrency = 8
max_attempts = 3
max_retry_s = 60
timeout_s = 10

[tracking]
poll_interval_s = 2
give_up_after_s = 3600
page_size = 500
settle_s = 12

[output]
outcomes = "out/welcome.csv"

[store]
path = "state/welcome.sqlite"
"""
    )
    files: dict[str, str | bytes] = {
        "tpl/welcome.txt.j2": "Hi {{ first_name }}\n",
        "tpl/welcome.html.j2": "<p>Hi {{ first_name }}</p>\n",
        "data/recipients.csv": "email,first_name,id\na@example.com,Ann,1\n",
        "brochure.pdf": b"%PDF-1.4 tiny",
        "files/notes.txt": "notes",
    }
    path = make(tmp_path, toml, **files)
    c = load_campaign(path)
    assert c.id == "welcome-2026"
    assert c.path == path.resolve()
    assert c.from_ == Address("news@example.com", "Example News")
    assert c.subject == "Hello {{ first_name }}"
    assert c.text == "Hi {{ first_name }}\n"
    assert c.html == "<p>Hi {{ first_name }}</p>\n"
    assert c.recipients == tmp_path.resolve() / "data/recipients.csv"
    assert c.headers == (("List-Unsubscribe", "<https://example.com/u/{{ id }}>"),)
    assert c.attachments == (
        Attachment("brochure.pdf", "application/pdf", base64.b64encode(b"%PDF-1.4 tiny").decode()),
        Attachment("Read me.txt", "text/plain", base64.b64encode(b"notes").decode()),
    )
    assert c.send_before == datetime(2026, 12, 31, tzinfo=UTC)
    assert c.sending == SendingSettings(50.5, 8, 3, 60, 10)
    assert c.sending.rate_given  # the file sets rate_per_s itself
    assert c.tracking == TrackingSettings(2, 3600, 500, 12)
    assert c.output == OutputSettings(tmp_path.resolve() / "out/welcome.csv")
    assert c.store_path == tmp_path.resolve() / "state/welcome.sqlite"
    assert len(c.fingerprint) == 64


def test_defaults_for_optional_tables(tmp_path: Path) -> None:
    """Without [sending]/[tracking]/[output]/[store], documented defaults apply."""
    c = load_campaign(make(tmp_path))
    assert c.sending == SendingSettings()
    assert c.tracking == TrackingSettings()
    assert c.output.outcomes == tmp_path.resolve() / "out" / "welcome-2026.jsonl"
    assert c.store_path == tmp_path.resolve() / "out" / "welcome-2026.db"
    assert c.headers == ()
    assert c.attachments == ()
    assert c.send_before is None


def test_from_as_a_string_with_display_name(tmp_path: Path) -> None:
    """from may be written as 'Name <address>'."""
    toml = BASE.replace(
        'from = { email = "news@example.com", name = "Example News" }',
        'from = "Example News <news@example.com>"',
    )
    assert load_campaign(make(tmp_path, toml)).from_ == Address("news@example.com", "Example News")


def test_fingerprint_follows_content_not_pace(tmp_path: Path) -> None:
    """The fingerprint changes with a template but not with sending settings (a resume may slow down)."""
    path = make(tmp_path)
    first = load_campaign(path).fingerprint
    assert load_campaign(path, overrides={"sending.rate_per_s": 5}).fingerprint == first
    assert load_campaign(path, overrides={"campaign.subject": "Other {{ x }}"}).fingerprint != first


def test_overrides_nested_and_dotted_are_validated(tmp_path: Path) -> None:
    """Overrides replace keys of the file and go through the same validation, named as overrides."""
    path = make(tmp_path)
    c = load_campaign(path, overrides={"sending": {"concurrency": 3}, "tracking.page_size": 10})
    assert c.sending.concurrency == 3
    assert c.tracking.page_size == 10
    err = error_of(path, overrides={"sending.rate_per_s": 0})
    assert (
        str(err)
        == f"{path}: override 'sending.rate_per_s': sending.rate_per_s must be greater than 0 (got 0)"
    )
    assert err.line is None


def test_campaign_from_dict_applies_the_same_rules(tmp_path: Path) -> None:
    """A mapping campaign (as the admin API gives) is validated like a file, paths from base_dir."""
    (tmp_path / "r.jsonl").write_text('{"email": "a@example.com"}\n')
    data = {
        "campaign": {
            "id": "api-1",
            "from": {"email": "news@example.com"},
            "subject": "Hi",
            "text": "Hello",
            "recipients": "r.jsonl",
        },
        "sending": {"rate_per_s": 10},
    }
    c = campaign_from_dict(data, base_dir=tmp_path, source="admin:api-1")
    assert isinstance(c, Campaign)
    assert c.recipients == tmp_path.resolve() / "r.jsonl"
    assert c.sending.rate_per_s == 10
    data["sending"] = {"concurency": 2}
    with pytest.raises(CampaignError) as info:
        campaign_from_dict(data, base_dir=tmp_path, source="admin:api-1")
    assert (
        str(info.value) == "admin:api-1: unknown key 'concurency' in [sending]; did you mean 'concurrency'?"
    )


def test_guess_attachment_type_is_independent_of_the_machine() -> None:
    """MIME types come from bulksend's own table; unknown extensions are octet-stream (refused)."""
    assert guess_attachment_type("a.PDF") == "application/pdf"
    assert guess_attachment_type("a.docx").endswith("wordprocessingml.document")
    assert guess_attachment_type("a.ics") == "text/calendar"
    assert guess_attachment_type("a.exe") == "application/octet-stream"


# --- File-level mistakes ------------------------------------------------------------------------


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error is reported with the file, its line and column, and how to fix it."""
    path = make(tmp_path, BASE + "rate_per_s = \n")
    err = error_of(path)
    assert err.path == str(path)
    assert err.line == 8
    assert "TOML syntax error, column 14: Invalid value;" in str(err)
    assert "fix the syntax" in str(err)


def test_missing_campaign_file(tmp_path: Path) -> None:
    """A campaign path that does not exist is a CampaignError naming it."""
    err = error_of(tmp_path / "nope.toml")
    assert err.path == str(tmp_path / "nope.toml")
    assert "does not exist" in str(err)


def test_missing_template_file_points_at_its_key(tmp_path: Path) -> None:
    """A text_file that does not exist is reported at the line of text_file, with the resolved path."""
    toml = BASE.replace('text = "Hi {{ first_name }}"', 'text_file = "missing.txt"')
    path = make(tmp_path, toml)
    err = error_of(path)
    assert err.line == line_of(path, "text_file")
    assert "campaign.text_file:" in str(err)
    assert "missing.txt' does not exist; fix the path" in str(err)


def test_recipients_csv_without_email_column(tmp_path: Path) -> None:
    """A recipients CSV whose header lacks an email column stops the campaign before any send."""
    path = make(tmp_path, **{"recipients.csv": "mail,first_name\n"})
    err = error_of(path)
    assert err.path == str(tmp_path.resolve() / "recipients.csv")
    assert err.line == 1
    assert "no 'email' column" in str(err)


# --- Mistakes refused at their line -------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "needle", "message"),
    [
        (BASE.replace("recipients.csv", "nobody.csv"), "recipients =", "nobody.csv' does not exist"),
        (
            BASE.replace("recipients.csv", "people.xlsx"),
            "recipients =",
            "cannot read recipients from a .xlsx file; use a .csv/.tsv file",
        ),
        (BASE + 'attachments = ["gone.pdf"]\n', "attachments", "gone.pdf' does not exist"),
        (
            BASE + 'attachments = ["setup.exe"]\n',
            "attachments",
            "attachment 'setup.exe' has type 'application/octet-stream', which TEM refuses",
        ),
        (
            BASE.replace("subject =", "subjet ="),
            "subjet",
            "unknown key 'subjet' in [campaign]; did you mean 'subject'?",
        ),
        (
            BASE + "concurrency = 4\n",
            "concurrency",
            "unknown key 'concurrency' in [campaign]; 'concurrency' belongs in the [sending] table",
        ),
        (
            BASE + "\n[sendng]\nrate_per_s = 1\n",
            "[sendng]",
            "unknown key 'sendng' at the top level; did you mean [sending]?",
        ),
    ],
    ids=[
        "missing-recipients-file",
        "unknown-recipients-extension",
        "missing-attachment",
        "attachment-of-a-refused-type",
        "misspelt-key-suggests-the-closest",
        "key-in-the-wrong-table-says-where-it-belongs",
        "misspelt-table-suggests-the-closest",
    ],
)
def test_mistake_is_refused_at_its_line(tmp_path: Path, toml: str, needle: str, message: str) -> None:
    """A missing or refused side file, or a misspelt or misplaced key, is refused at its own line."""
    # The files some cases name are there for every case: a file no key names is never read.
    path = make(tmp_path, toml, **{"people.xlsx": b"PK", "setup.exe": b"MZ"})
    err = error_of(path)
    assert err.line == line_of(path, needle)
    assert message in str(err)


@pytest.mark.parametrize(
    ("replacement", "message"),
    [
        ('from = { email = "not-an-address" }', "campaign.from: 'not-an-address' is not an email address"),
        ('from = { name = "X" }', "campaign.from needs an 'email' string"),
        ('from = { email = "a@example.com", nam = "X" }', "unknown key 'nam' in campaign.from; did you mean"),
        ('from = ""', "campaign.from: the email address is empty"),
    ],
)
def test_bad_from(tmp_path: Path, replacement: str, message: str) -> None:
    """A sender that is not a valid address (or is malformed) is refused at the from line."""
    path = make(
        tmp_path, BASE.replace('from = { email = "news@example.com", name = "Example News" }', replacement)
    )
    err = error_of(path)
    assert err.line == line_of(path, "from =")
    assert message in str(err)


def test_missing_from(tmp_path: Path) -> None:
    """A campaign without a sender is refused with an example of the fix."""
    path = make(tmp_path, BASE.replace('from = { email = "news@example.com", name = "Example News" }\n', ""))
    err = error_of(path)
    assert "[campaign] needs 'from'" in str(err)
    assert 'from = { email = "news@example.com"' in str(err)


def test_missing_subject(tmp_path: Path) -> None:
    """A campaign without a subject is refused at its [campaign] table."""
    path = make(tmp_path, BASE.replace('subject = "Hello {{ first_name }}"\n', ""))
    err = error_of(path)
    assert err.line == 1
    assert "[campaign] needs 'subject'" in str(err)


def test_missing_body(tmp_path: Path) -> None:
    """A campaign with neither text nor html is refused."""
    toml = BASE.replace('text = "Hi {{ first_name }}"\n', "").replace(
        'html = "<p>Hi {{ first_name }}</p>"\n', ""
    )
    err = error_of(make(tmp_path, toml))
    assert "the campaign has no body; add text (or text_file) and/or html (or html_file)" in str(err)


def test_text_and_text_file_together(tmp_path: Path) -> None:
    """Giving a body both inline and as a file is ambiguous and refused."""
    path = make(tmp_path, BASE + 'text_file = "t.txt"\n', **{"t.txt": "x"})
    assert "give either text or text_file, not both" in str(error_of(path))


# --- Templates ----------------------------------------------------------------------------------


def test_template_syntax_error_in_a_template_file_points_into_that_file(tmp_path: Path) -> None:
    """A syntax error in html_file is reported with the template's own path and line."""
    toml = BASE.replace('html = "<p>Hi {{ first_name }}</p>"', 'html_file = "w.html.j2"')
    path = make(tmp_path, toml, **{"w.html.j2": "<p>\n{% if vip %}VIP\n</p>\n"})
    err = error_of(path)
    assert err.path == str(tmp_path.resolve() / "w.html.j2")
    assert err.line == 2  # where the unclosed block opens
    assert "template syntax error in the html template: Unexpected end of template" in str(err)
    assert "The innermost block that needs to be closed is 'if'; fix the template" in str(err)


def test_template_syntax_error_inline_multiline_points_at_the_campaign_line(tmp_path: Path) -> None:
    """A syntax error in an inline multi-line text is reported at its line in the campaign file."""
    toml = BASE.replace('text = "Hi {{ first_name }}"', 'text = """\nHi {{ first_name }},\nbye {{ x }\n"""')
    path = make(tmp_path, toml)
    err = error_of(path)
    assert err.path == str(path)
    assert err.line == line_of(path, "bye {{ x }")
    assert "template syntax error in the text template (line 2 of the template)" in str(err)


def test_template_syntax_error_in_subject_and_header(tmp_path: Path) -> None:
    """Subject and header templates are compiled up front too."""
    path = make(tmp_path, BASE.replace("Hello {{ first_name }}", "Hello {{ first_name | nofilter }}"))
    err = error_of(path)
    assert err.line == line_of(path, "subject")
    assert "No filter named 'nofilter'" in str(err)
    path = make(tmp_path, BASE + 'headers = { "X-Tag" = "{% for %}" }\n')
    err = error_of(path)
    assert err.line == line_of(path, "headers")
    assert "template syntax error in the header X-Tag template" in str(err)


def test_header_rules(tmp_path: Path) -> None:
    """Reserved, malformed or empty constant headers are refused at the headers line."""
    for headers, message in [
        ('{ "X-Bulksend-Ref" = "x" }', "'X-Bulksend-Ref' is set by bulksend on every email; remove it"),
        ('{ "Bad Name:" = "x" }', "is not a valid field name"),
        ('{ "X-Empty" = " " }', "header 'X-Empty' has an empty value"),
        ('{ "X-Crlf" = "a\\r\\nBcc: evil@example.com" }', "has a line break in its value"),
    ]:
        path = make(tmp_path, BASE + f"headers = {headers}\n")
        err = error_of(path)
        assert err.line == line_of(path, "headers")
        assert message in str(err)


# --- Attachments --------------------------------------------------------------------------------


def test_attachment_too_big_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A file over the 2 MB email limit once base64-encoded is refused from its size alone."""
    big = tmp_path / "big.pdf"
    with big.open("wb") as f:
        f.truncate(1_600_000)  # sparse: 1.6 MB → 2.13 MB in base64
    path = make(tmp_path, BASE + 'attachments = ["big.pdf"]\n')
    err = error_of(path)
    assert err.line == line_of(path, "attachments")
    assert "is 1,600,000 bytes (2,133,336 once base64-encoded); a whole email must stay under" in str(err)


def test_attachments_together_too_big(tmp_path: Path) -> None:
    """Attachments that fit one by one but not together are refused too."""
    files = {f"a{i}.pdf": b"x" * 600_000 for i in range(3)}
    path = make(tmp_path, BASE + 'attachments = ["a0.pdf", "a1.pdf", "a2.pdf"]\n', **files)
    assert "the campaign attachments take 2,400,000 bytes once base64-encoded" in str(error_of(path))


def test_too_many_attachments(tmp_path: Path) -> None:
    """More than TEM's 10 attachments is refused."""
    names = ", ".join(f'"a{i}.pdf"' for i in range(11))
    path = make(tmp_path, BASE + f"attachments = [{names}]\n")
    assert "lists 11 files; TEM allows at most 10" in str(error_of(path))


# --- send_before and numbers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"next tuesday"', "campaign.send_before 'next tuesday' is not a time"),
        ('"2026-12-31T00:00:00"', "has no time zone"),
        ("2026-12-31T00:00:00", "campaign.send_before has no time zone"),
        ("2026-12-31", "campaign.send_before must be a date and time"),
        ("5", "campaign.send_before is not a time"),
    ],
)
def test_invalid_send_before(tmp_path: Path, value: str, message: str) -> None:
    """send_before must be an RFC 3339 time with an offset; anything else is refused at its line."""
    path = make(tmp_path, BASE + f"send_before = {value}\n")
    err = error_of(path)
    assert err.line == line_of(path, "send_before")
    assert message in str(err)
    assert 'like send_before = "2026-12-31T00:00:00Z"' in str(err)


def test_send_before_string_with_offset_is_normalised_to_utc(tmp_path: Path) -> None:
    """A send_before string with an offset is accepted and kept in UTC."""
    c = load_campaign(make(tmp_path, BASE + 'send_before = "2026-12-31T02:00:00+02:00"\n'))
    assert c.send_before == datetime(2026, 12, 31, tzinfo=UTC)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[sending]\nrate_per_s = 0", "sending.rate_per_s must be greater than 0 (got 0)"),
        ("[sending]\nrate_per_s = -3.5", "sending.rate_per_s must be greater than 0 (got -3.5)"),
        ("[sending]\nconcurrency = 0", "sending.concurrency must be at least 1 (got 0)"),
        ("[sending]\nconcurrency = 2.5", "sending.concurrency must be a whole number (got 2.5)"),
        ("[sending]\ntimeout_s = true", "sending.timeout_s must be a number (got True)"),
        ("[tracking]\npage_size = 1001", "tracking.page_size must be at most 1000 (got 1001)"),
        ("[tracking]\npoll_interval_s = inf", "tracking.poll_interval_s must be finite"),
        ('[output]\noutcomes = "out.txt"', "output.outcomes must end in .jsonl or .csv"),
    ],
)
def test_bad_numbers_and_outputs(tmp_path: Path, table: str, message: str) -> None:
    """Out-of-range settings are refused at their own line with the allowed range."""
    path = make(tmp_path, BASE + "\n" + table + "\n")
    err = error_of(path)
    assert err.line == len(path.read_text().splitlines())
    assert message in str(err)


def test_bad_campaign_id(tmp_path: Path) -> None:
    """A campaign id unusable in headers and file names is refused with the allowed characters."""
    path = make(tmp_path, BASE.replace('"welcome-2026"', '"welcome 2026/x"'))
    err = error_of(path)
    assert err.line == 2
    assert "use 1–64 letters, digits, '.', '_' or '-'" in str(err)
