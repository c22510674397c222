"""`bulksend send` before and beside a campaign: the template-variable preflight, rejection reasons
grouped by kind, the dry run's rejects file, previews, samples, pace overrides and the
unsubscribe reminder."""

from __future__ import annotations

import csv
import email
import email.policy
import io
from collections import Counter
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from rich.console import Console

from bulksend.campaign.load import load_campaign
from bulksend.campaign.preflight import required_variables
from bulksend.campaign.recipients import BadRow, iter_recipients
from bulksend.cli.main import main
from bulksend.cli.summary import Summary, print_summary
from bulksend.sandbox import SandboxConfig, sandbox_in_thread
from bulksend.sinks.summary import reason_kind, summarize_outcomes
from bulksend.tem.client import TemClient
from bulksend.tem.models import ListEmailsQuery
from tests.conftest import PROJECT, SECRET, read_jsonl
from tests.test_cli import campaign_file, env_for

# The command-line tests' pace and tracking, with this module's own [campaign] and outcomes.
CLI_CAMPAIGN = campaign_file()
CAMPAIGN = (
    """\
[campaign]
id = "pre"
from = {{ email = "news@example.com", name = "News" }}
subject = {subject}
text = {text}
html = {html}
recipients = "{recipients}"
{extra}
"""
    + CLI_CAMPAIGN[CLI_CAMPAIGN.index("[sending]") : CLI_CAMPAIGN.index("[output]")]
    + '[output]\noutcomes = "out/pre.jsonl"\n'
)


def write_campaign(
    folder: Path,
    rows: list[dict[str, Any]],
    *,
    jsonl: bool = False,
    subject: str = "Hello {{ first_name }}",
    text: str = "Hi {{ first_name }}, your {{ plan }} plan.",
    html: str = "<p>Hi {{ first_name }}</p>",
    extra: str = "",
) -> Path:
    """A campaign over ``rows`` as CSV (columns of the first row) or JSONL; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    if jsonl:
        name = "people.jsonl"
        (folder / name).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    else:
        name = "people.csv"
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (folder / name).write_text(out.getvalue(), encoding="utf-8")
    path = folder / "campaign.toml"

    def q(s: str) -> str:
        return orjson.dumps(s).decode()

    path.write_text(
        CAMPAIGN.format(subject=q(subject), text=q(text), html=q(html), recipients=name, extra=extra),
        encoding="utf-8",
    )
    return path


def people(n: int, **extra: str) -> list[dict[str, Any]]:
    return [
        {"email": f"p{i}@example.com", "name": f"P {i}", "first_name": f"F{i}", "plan": "pro", **extra}
        for i in range(n)
    ]


# -- 1. template-variable preflight -------------------------------------------------------------


def test_a_variable_no_column_provides_refuses_dry_run_and_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`{{ city }}` with no city column exits 1 before anything is sent, naming the variable, the
    template and the columns; neither a dry run nor a send writes state or outcomes."""
    path = write_campaign(tmp_path, people(3), subject="Hello {{ first_name }} in {{ city }}")
    assert main(["send", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "error: template variable 'city' (subject) is not a column of people.csv; "
        "columns: email, name, first_name, plan."
    ), err
    assert "{{ city | default('') }}" in err
    assert not (tmp_path / "pre.rejected.csv").exists()
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        assert main(["send", str(path), "--no-progress"]) == 1
        assert sb.stats().emails_total == 0
    assert "template variable 'city' (subject)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_several_missing_variables_are_named_with_their_templates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every missing variable is named once, with every template that uses it."""
    path = write_campaign(
        tmp_path,
        people(2),
        subject="{{ city }}",
        text="{{ zip }} {{ city }}",
        html="<p>{{ city }}</p>",
        extra='headers = { "X-Zone" = "{{ zone }}" }',
    )
    assert main(["send", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert (
        "template variables 'city' (subject, text, html), 'zip' (text) and 'zone' (header X-Zone) "
        "are not columns of people.csv"
    ) in err.replace("\n", " ")


def test_jsonl_keys_are_taken_from_the_first_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key some of the first rows have passes (rows without it are rejected one by one); a key
    none of them has refuses the campaign, naming the keys found."""
    rows = people(3)
    rows[0]["city"] = "Paris"
    ok = write_campaign(tmp_path / "ok", rows, jsonl=True, subject="{{ city }}")
    assert main(["send", str(ok), "--dry-run"]) == 0
    capsys.readouterr()
    bad = write_campaign(tmp_path / "bad", people(3), jsonl=True, subject="{{ city }}")
    assert main(["send", str(bad), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "template variable 'city' (subject) is not a key of any row of people.jsonl; " in err
    assert "keys: email, name, first_name, plan." in err


def test_optional_provided_and_builtin_names_are_not_required(tmp_path: Path) -> None:
    """Names guarded by `default` or `is defined`, the renderer's own (email, name, campaign),
    the environment's globals and names set in the template need no column."""
    path = write_campaign(
        tmp_path,
        people(1),
        subject="{{ nick | default('friend') }} {{ email }} {{ name }} {{ campaign }}",
        text="{% if city is defined %}{{ city }}{% endif %}{% for i in range(2) %}{{ i }}{% endfor %}"
        "{% set x = 1 %}{{ x }} {{ plan }}",
        html="{{ lipsum(1) }} {{ d_var | d('') }}",
    )
    assert required_variables(load_campaign(path)) == {"plan": ("text",)}


# -- 2. reasons grouped by kind -----------------------------------------------------------------


def test_reason_kind_replaces_row_specific_parts() -> None:
    """Row numbers, the row's address and quoted addresses become placeholders; the rest stays."""
    assert reason_kind("duplicate of row 12") == "duplicate of row N"
    assert (
        reason_kind("invalid recipient address: 'x y' contains white space", email="x y")
        == "invalid recipient address: <address> contains white space"
    )
    assert (
        reason_kind("invalid recipient address: 'a@@b' is not an email address (it needs exactly one '@')")
        == "invalid recipient address: <address> is not an email address (it needs exactly one '@')"
    )
    assert reason_kind("missing template variable 'city' in the subject template") == (
        "missing template variable 'city' in the subject template"
    )
    long = "word " * 200
    assert reason_kind(long).endswith("word …")


def test_dry_run_and_send_group_reasons_by_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """202 rows missing the same variable are one line with their count and first row, in the dry
    run and in the send summary; a kind of one row shows its own reason."""
    rows = people(205)
    rows[0]["city"] = "Paris"
    rows[1]["city"] = "Lyon"
    rows[2]["email"] = "not an address"
    path = write_campaign(tmp_path, rows, jsonl=True, subject="Hello {{ city }}")
    expected = "202 rows (first row 4): missing template variable 'city' in the subject template;"
    assert main(["send", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert expected in out
    assert "row 3: invalid recipient address: the email address contains white space" in out
    assert out.count("missing template variable") == 1
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        assert main(["send", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert expected in out
    assert out.count("missing template variable") == 1


def test_terminal_table_wraps_reasons_at_word_boundaries() -> None:
    """On a narrow terminal the reasons table wraps between words: every word stays whole."""
    reason = (
        "missing template variable 'city' in the subject template; add a 'city' column/key for this recipient"
    )
    summary = summarize_outcomes(
        "t", [{"row": r, "status": "rejected", "reason": reason, "email": f"a{r}@x.com"} for r in range(2, 9)]
    )
    out = io.StringIO()
    print_summary(summary, Console(file=out, width=60, force_terminal=True, color_system=None), always=())
    text = out.getvalue()
    table = text.split("why not sent")[1]
    cells = " ".join(line.split("│")[3].strip() for line in table.splitlines() if line.count("│") == 4)
    assert cells.split() == reason.split()
    assert "sent" not in text.split("why not sent")[0]  # `always=()` leaves out sent 0 / failed 0


def test_plain_output_has_one_line_per_kind() -> None:
    """Piped, each kind is one line (never wrapped), and more than ten kinds end in one count line."""
    summary = Summary(
        "t", reasons=Counter({f"reason number {i} " + " ".join("x" * 60): 12 - i for i in range(12)})
    )
    out = io.StringIO()
    print_summary(summary, Console(file=out, width=40))
    lines = out.getvalue().splitlines()
    assert "  12 rows: reason number 0 " + "x " * 59 + "x" in lines
    assert "  … and 2 more kinds (3 rows): see the outcomes" in lines


# -- 3. the dry run's rejects file -------------------------------------------------------------

BROKEN_CSV = (
    "email;first_name;plan;\r\n"
    "ann@example.com;Ann;pro;\r\n"
    'bad-address;Bob;"multi\r\nline";\r\n'
    "\r\n"
    "cy@example.com;Cy;basic;\r\n"
    '"unclosed;Dee;x;\r\n'
    "dee@example.com;Dee;x;\r\n"
    "ann@example.com;Dup;pro;\r\n"
    "eve@;Eve;x;\r\n"
)


def test_dry_run_writes_rejected_csv_rows_as_they_were_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rejected rows are copied as written (delimiter, quoting, line endings, an unnamed column)
    with a reason column; duplicates are not rejects; the table leaves out sent/failed."""
    path = write_campaign(tmp_path, people(1))
    (tmp_path / "people.csv").write_text(BROKEN_CSV, encoding="utf-8", newline="")
    assert main(["send", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "│ sent" not in out
    assert "│ failed" not in out
    rejects = tmp_path / "out" / "pre.rejected.csv"
    assert f"rejected rows: {rejects} (3, with a reason column)" in out
    lines = rejects.read_bytes().decode("utf-8").split("\r\n")
    assert lines[0] == "email;first_name;plan;;reason"
    assert lines[1] == 'bad-address;Bob;"multi'
    assert lines[2].startswith("line\";;invalid recipient address: 'bad-address' is not an email address")
    assert lines[3].startswith('"unclosed;Dee;x;;"a quoted value opened on this line is never closed')
    assert lines[4].startswith("eve@;Eve;x;;invalid recipient address:")
    assert lines[5:] == [""]
    read = list(iter_recipients(rejects))
    assert [r.email for r in read if not isinstance(r, BadRow)] == ["bad-address", "eve@"]


def test_dry_run_rejects_jsonl_and_rejects_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A JSONL input gives JSONL rejects at --rejects PATH: each object with a reason key, a line
    that is not an object kept as text; a rejects name in another format is refused."""
    rows = people(2)
    rows[1]["email"] = "nope"
    rows[1]["reason"] = "already has one"
    path = write_campaign(tmp_path, rows, jsonl=True)
    with (tmp_path / "people.jsonl").open("ab") as fh:
        fh.write(b"[1, 2]\n")
    target = tmp_path / "fix" / "again.jsonl"
    assert main(["send", str(path), "--dry-run", "--rejects", str(target)]) == 0
    written = read_jsonl(target)
    assert written[0]["email"] == "nope"
    assert written[0]["reason"] == "already has one"
    assert written[0]["reason_2"].startswith("invalid recipient address: 'nope'")
    assert written[1] == {"reason": written[1]["reason"], "original": "[1, 2]"}
    assert written[1]["reason"].startswith("the line is a JSON array, not an object")
    capsys.readouterr()
    assert main(["send", str(path), "--dry-run", "--rejects", str(tmp_path / "r.csv")]) == 1
    assert "name the file with a .jsonl suffix" in capsys.readouterr().err


# -- 4. previews -----------------------------------------------------------------------------------


def _read_eml(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_preview_alone_writes_eml_files_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--preview 2 writes the first two emails that would be sent, with From, To, Subject, the
    campaign's headers and both bodies, needs no credentials and writes no state or outcomes."""
    rows = people(4)
    rows[0]["email"] = "broken"
    path = write_campaign(
        tmp_path, rows, extra='headers = { "List-Unsubscribe" = "<https://x.example/u/{{ plan }}>" }'
    )
    assert main(["send", str(path), "--preview", "2"]) == 0
    folder = tmp_path / "pre-preview"
    assert sorted(p.name for p in folder.iterdir()) == ["row-000003.eml", "row-000004.eml"]
    msg = _read_eml(folder / "row-000003.eml")
    assert msg["From"] == "News <news@example.com>"
    assert msg["To"] == "P 1 <p1@example.com>"
    assert msg["Subject"] == "Hello F1"
    assert msg["List-Unsubscribe"] == "<https://x.example/u/pro>"
    assert msg["X-Bulksend-Ref"] == "pre/3"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None
    assert text.get_content().splitlines() == ["Hi F1, your pro plan."]
    assert html is not None
    assert "<p>Hi F1</p>" in html.get_content()
    assert not (tmp_path / "out").exists()
    assert f"preview: 2 emails as .eml files in {folder}" in capsys.readouterr().out


def test_preview_writes_only_inside_its_folder(tmp_path: Path) -> None:
    """A link planted under a preview's name is replaced, not followed; earlier previews go away;
    names come from row numbers even for an address full of path characters."""
    rows = people(2)
    rows[0]["email"] = "a/b@example.com"
    path = write_campaign(tmp_path, rows)
    folder = tmp_path / "pv"
    folder.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep", encoding="utf-8")
    (folder / "row-000003.eml").symlink_to(outside)
    (folder / "row-000009.eml").write_text("stale", encoding="utf-8")
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["send", str(path), "--dry-run", "--preview", "5", "--preview-dir", str(folder)]) == 0
    assert outside.read_text(encoding="utf-8") == "keep"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "row-000002.eml", "row-000003.eml"]
    assert not (folder / "row-000003.eml").is_symlink()
    assert _read_eml(folder / "row-000002.eml")["To"] == "P 0 <a/b@example.com>"


# -- 5. samples --------------------------------------------------------------------------------


async def _subjects_to(url: str, address: str) -> list[str]:
    from bulksend.secret import Secret
    from bulksend.tem.config import TemSettings

    async with TemClient(TemSettings(secret_key=Secret(SECRET), project_id=PROJECT, api_url=url)) as tem:
        page = await tem.list_emails(ListEmailsQuery(mail_rcpt=address), page_size=100)
    return sorted(e.subject for e in page.emails)


def test_samples_go_to_one_address_and_the_real_run_still_sends_to_everyone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--sample 2 --to ADDRESS sends the first two valid rows, each with its own variables, to
    ADDRESS only; nothing is recorded, so the next run sends to every recipient exactly once."""
    rows = people(4)
    rows[0]["email"] = "broken"
    path = write_campaign(tmp_path, rows)
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        assert main(["send", str(path), "--sample", "2", "--to", "me@example.org", "--no-progress"]) == 0
        assert sb.stats().accepted_by_recipient == {"me@example.org": 2}
        assert not (tmp_path / "out").exists()
        out = capsys.readouterr().out
        assert "sent 2 of 2 samples of campaign pre to me@example.org (rows 3, 4)" in out
        assert anyio.run(_subjects_to, sb.url, "me@example.org") == ["[sample] Hello F1", "[sample] Hello F2"]
        assert main(["send", str(path), "--no-progress"]) == 0
        assert sb.stats().accepted_by_recipient == {
            "me@example.org": 2,
            "p1@example.com": 1,
            "p2@example.com": 1,
            "p3@example.com": 1,
        }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sample", "2"], "--sample N and --to ADDRESS go together"),
        (["--to", "me@example.org"], "--sample N and --to ADDRESS go together"),
        (["--sample", "2", "--to", "me@@example.org"], "--to: 'me@@example.org' is not an email address"),
        (["--sample", "0", "--to", "me@example.org"], "--sample must be at least 1 (got 0)"),
        (
            ["--sample", "1", "--to", "me@example.org", "--dry-run"],
            "--sample sends to --to only; run --dry-run",
        ),
        (["--rate", "0"], "--rate must be greater than 0 (got 0.0)"),
        (["--rate", "nan"], "--rate must be finite (got nan)"),
        (["--concurrency", "0"], "--concurrency must be at least 1 (got 0)"),
        (["--preview", "0"], "--preview must be at least 1 (got 0)"),
        (["--preview-dir", "x"], "--preview-dir needs --preview N"),
        (["--rejects", "x.csv"], "--rejects is where --dry-run writes the rejected rows: add --dry-run"),
    ],
)
def test_bad_options_exit_1_saying_what_to_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    """A wrong option value or combination exits 1 with one error line, before any file is read."""
    assert main(["send", str(tmp_path / "missing.toml"), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}"), err
    assert err.count("\n") == 1


def test_options_that_are_not_numbers_are_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """`--rate fast` or `--concurrency 2.5` is refused by the parser (exit 2), naming the option."""
    for extra in (["--rate", "fast"], ["--concurrency", "2.5"]):
        with pytest.raises(SystemExit) as raised:
            main(["send", "c.toml", *extra])
        assert raised.value.code == 2
        assert f"argument {extra[0]}: invalid" in capsys.readouterr().err


# -- 6. pace overrides ---------------------------------------------------------------------------


def test_rate_and_concurrency_override_the_campaign_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run starts with the rate and concurrency given on the command line, not the file's."""
    path = write_campaign(tmp_path, people(2))
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        args = ["send", str(path), "--no-progress", "--log-format", "json", "--log-level", "info"]
        assert main([*args, "--rate", "321.5", "--concurrency", "3"]) == 0
    events = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    start = next(e for e in events if e.get("event") == "campaign.start")
    assert (start["rate_per_s"], start["concurrency"]) == (321.5, 3)


# -- 7. the unsubscribe reminder ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "header", "reminded"), [(5001, False, True), (5000, False, False), (5001, True, False)]
)
def test_large_campaign_without_list_unsubscribe_gets_one_reminder_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: int, header: bool, reminded: bool
) -> None:
    """Over 5,000 recipients and no List-Unsubscribe header: one reminder line on stderr."""
    extra = 'headers = { "list-unsubscribe" = "<mailto:u@example.com>" }' if header else ""
    path = write_campaign(tmp_path, people(rows), subject="Hi", text="Hi", html="", extra=extra)
    assert main(["send", str(path), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert ("reminder: 5,001 recipients and no List-Unsubscribe header" in err) is reminded
    assert err.count("\n") == (1 if reminded else 0)


def test_send_prints_the_reminder_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real send prints the reminder on stderr before its first request (here refused: wrong key)."""
    path = write_campaign(tmp_path, people(6000), subject="Hi", text="Hi", html="")
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        monkeypatch.setenv("SCW_SECRET_KEY", "not-the-key")
        assert main(["send", str(path), "--no-progress"]) == 2
        assert sb.stats().emails_total == 0
    err = capsys.readouterr().err
    assert err.startswith("reminder: 6,000 recipients and no List-Unsubscribe header."), err
    assert "not-the-key" not in err
