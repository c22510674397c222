"""Which files a campaign may read: regular files within size caps (CLI), confined to the
allowed folder (admin API), and bounded nesting of the campaign itself."""

from __future__ import annotations

import contextlib
import os
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksend.campaign.load import (
    MAX_ATTACHMENT_FILE_BYTES,
    MAX_CAMPAIGN_DEPTH,
    MAX_TEMPLATE_FILE_BYTES,
    FileAccess,
    campaign_from_dict,
    check_campaign_id,
    load_campaign,
)
from bulksend.cli.main import main
from bulksend.daemon.admin.control import parse_submission, spooled_name
from bulksend.errors import CampaignError
from tests.test_campaign import BASE, make

FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def submitted(**campaign: Any) -> dict[str, Any]:
    """A campaign as the admin API would hand it over (recipients already spooled)."""
    return {
        "campaign": {
            "id": "autumn",
            "from": "news@example.com",
            "subject": "Hello",
            "recipients": "recipients.csv",
            **campaign,
        }
    }


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A campaign folder holding an uploaded recipients file."""
    folder = tmp_path / "spool"
    folder.mkdir()
    (folder / "recipients.csv").write_text("email\na@example.com\n")
    return folder


@pytest.fixture
def files_root(tmp_path: Path) -> Path:
    """An allowed folder with a body and an attachment, a secret beside it and a symlink out."""
    root = tmp_path / "allowed"
    (root / "sub").mkdir(parents=True)
    (root / "body.txt").write_text("Allowed body")
    (root / "sub" / "leaflet.pdf").write_bytes(b"%PDF-1.4 leaflet")
    (tmp_path / "secret.txt").write_text("SCW_SECRET_KEY=do-not-mail")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (root / "inside-link.txt").symlink_to(root / "body.txt")
    return root


# -- the CLI: files next to the campaign file, regular and bounded -------------------------------


def test_cli_template_file_must_be_a_regular_file(tmp_path: Path) -> None:
    """A text_file naming a device (/dev/null, /dev/zero) is refused as not a regular file, unread."""
    for device in ("/dev/null", "/dev/zero"):
        toml = BASE.replace('text = "Hi {{ first_name }}"', f'text_file = "{device}"')
        with pytest.raises(CampaignError, match="is not a regular file"):
            load_campaign(make(tmp_path, toml))


def test_cli_template_file_over_one_mib_is_refused(tmp_path: Path) -> None:
    """A template file one byte over 1 MiB is refused with its size and the limit."""
    toml = BASE.replace('text = "Hi {{ first_name }}"', 'text_file = "big.txt"')
    path = make(tmp_path, toml, **{"big.txt": "x" * (MAX_TEMPLATE_FILE_BYTES + 1)})
    with pytest.raises(CampaignError, match=r"at most 1,048,576 bytes") as info:
        load_campaign(path)
    assert "1,048,577" in str(info.value)
    exact = make(tmp_path, toml, **{"big.txt": "x" * MAX_TEMPLATE_FILE_BYTES})
    assert len(load_campaign(exact).text) == MAX_TEMPLATE_FILE_BYTES


def test_cli_attachment_must_be_a_regular_file_within_the_email_limit(tmp_path: Path) -> None:
    """A device as attachment is refused (never read without end); a file whose base64 form would
    pass 2 MB is refused by its size, while one just within is loaded."""
    device = make(tmp_path, BASE + 'attachments = [{ path = "/dev/zero", name = "a.txt" }]\n')
    with pytest.raises(CampaignError, match="is not a regular file"):
        load_campaign(device)
    too_big = make(
        tmp_path, BASE + 'attachments = ["a.pdf"]\n', **{"a.pdf": b"x" * (MAX_ATTACHMENT_FILE_BYTES + 1)}
    )
    with pytest.raises(CampaignError, match="a whole email must stay under"):
        load_campaign(too_big)
    fits = make(tmp_path, BASE + 'attachments = ["a.pdf"]\n', **{"a.pdf": b"x" * MAX_ATTACHMENT_FILE_BYTES})
    assert load_campaign(fits).attachments_bytes == 4 * MAX_ATTACHMENT_FILE_BYTES // 3


def test_cli_per_recipient_attachments_stay_relative_to_the_recipients_folder(tmp_path: Path) -> None:
    """For a campaign file, per-recipient attachments resolve inside the recipients file's folder."""
    campaign = load_campaign(make(tmp_path))
    assert campaign.attachments_root == tmp_path.resolve()


def test_deeply_nested_campaign_file_is_a_clear_error(tmp_path: Path) -> None:
    """A campaign file nesting arrays thousands deep is a CampaignError naming the limit, not a
    RecursionError, and its message stays short."""
    deep = BASE + "extra = " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(CampaignError) as info:
        load_campaign(make(tmp_path, deep))
    assert f"more than {MAX_CAMPAIGN_DEPTH} deep" in str(info.value)
    assert len(str(info.value)) < 400
    inline = BASE + "[sending]\nx = " + "{ a = " * 40 + "1" + " }" * 40 + "\n"
    with pytest.raises(CampaignError, match="deep"):
        load_campaign(make(tmp_path, inline))


# -- confined: only files under files_root ---------------------------------------------------------


@pytest.mark.parametrize(
    "campaign",
    [
        {"text_file": "/etc/passwd"},
        {"html_file": "../../../../etc/hosts", "text": "x"},
        {"text": "x", "attachments": ["/proc/self/environ"]},
        {"text": "x", "attachments": [{"path": "/etc/hostname", "name": "a.txt"}]},
        {"text_file": "/dev/zero"},
        {"text_file": "body.txt"},
    ],
)
def test_confined_without_files_root_names_no_file(spool: Path, campaign: dict[str, Any]) -> None:
    """Without files_root, any file a submitted campaign names is refused before it is opened."""
    with pytest.raises(CampaignError, match="may not name files") as info:
        campaign_from_dict(
            submitted(**campaign), base_dir=spool, source="campaign", files=FileAccess.confined_to(None)
        )
    assert "files_root" in str(info.value)


def test_confined_reads_files_inside_files_root_only(spool: Path, files_root: Path, tmp_path: Path) -> None:
    """Under files_root, relative paths (and symlinks that stay inside) are read; absolute paths
    outside, `..` and symlinks leading out are refused with the caller's own words, never the
    daemon's folders."""
    files = FileAccess.confined_to(files_root)

    def load(**campaign: Any) -> Any:
        return campaign_from_dict(submitted(**campaign), base_dir=spool, source="campaign", files=files)

    loaded = load(text_file="body.txt", attachments=["sub/leaflet.pdf"])
    assert loaded.text == "Allowed body"
    assert loaded.attachments[0].name == "leaflet.pdf"
    assert load(text_file="inside-link.txt").text == "Allowed body"
    assert load(text_file=str(files_root / "body.txt")).text == "Allowed body"
    assert loaded.attachments_root == files_root.resolve()
    for bad in (
        "../secret.txt",
        str(tmp_path / "secret.txt"),
        "escape.txt",
        "sub/../../secret.txt",
        "/etc/passwd",
    ):
        with pytest.raises(CampaignError, match="outside the folder the daemon allows") as info:
            load(text_file=bad)
        assert str(tmp_path) not in str(info.value).replace(bad, "")
        with pytest.raises(CampaignError, match="outside the folder the daemon allows"):
            load(text="x", attachments=[bad])


def test_confined_refuses_special_files_inside_files_root(spool: Path, files_root: Path) -> None:
    """A FIFO inside files_root is refused without blocking; a folder is refused as a folder."""
    os.mkfifo(files_root / "pipe.txt")
    files = FileAccess.confined_to(files_root)
    with pytest.raises(CampaignError, match="not a regular file"):
        campaign_from_dict(submitted(text_file="pipe.txt"), base_dir=spool, source="c", files=files)
    with pytest.raises(CampaignError, match="is a folder"):
        campaign_from_dict(submitted(text="x", attachments=["sub"]), base_dir=spool, source="c", files=files)


def test_confined_campaign_may_not_name_a_store(spool: Path) -> None:
    """A submitted campaign's [store] path is refused: the daemon keeps its own store."""
    data = {**submitted(text="x"), "store": {"path": "/tmp/elsewhere.db"}}
    with pytest.raises(CampaignError, match="keeps its own store"):
        campaign_from_dict(data, base_dir=spool, source="c", files=FileAccess.confined_to(None))


_PATH_PARTS = st.sampled_from(
    ["..", ".", "body.txt", "escape.txt", "sub", "leaflet.pdf", "", "/", "secret.txt", "~"]
)


@FEW
@given(parts=st.lists(_PATH_PARTS, min_size=1, max_size=6), absolute=st.booleans())
def test_confinement_never_reads_outside_files_root(
    spool: Path, files_root: Path, tmp_path: Path, parts: list[str], absolute: bool
) -> None:
    """Whatever path a caller composes, a confined campaign either is refused or reads a file
    that really lies under files_root (never the secret beside it)."""
    value = "/".join(parts)
    if absolute:
        value = str(files_root) + "/" + value
    problem = ""
    try:
        loaded = campaign_from_dict(
            submitted(text_file=value), base_dir=spool, source="c", files=FileAccess.confined_to(files_root)
        )
    except CampaignError as exc:
        problem = str(exc)
    if problem:
        assert "SCW_SECRET_KEY" not in problem
    else:
        # Either file under files_root may be named (sub/leaflet.pdf is one); never the secret.
        assert loaded.text in ("Allowed body", "%PDF-1.4 leaflet")


@FEW
@given(text=st.text(alphabet=string.printable + "[]{}=\"'", max_size=300), depth=st.integers(0, 3000))
def test_parse_submission_refuses_or_returns_a_bounded_mapping(text: str, depth: int) -> None:
    """Any TOML text, nested to any depth, parses to a mapping within the depth limit or is a
    CampaignError: never another exception."""
    for candidate in (text, f"a = {'[' * depth}{']' * depth}\n{text}"):
        try:
            data = parse_submission(candidate)
        except CampaignError:
            continue
        assert isinstance(data, dict)
        assert depth_of(data) <= MAX_CAMPAIGN_DEPTH


def depth_of(value: Any) -> int:
    """How deep tables and arrays nest in ``value`` (a scalar: 0)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


@FEW
@given(
    value=st.recursive(
        st.integers() | st.text(max_size=5), lambda inner: st.lists(inner, max_size=2), max_leaves=40
    )
)
def test_parse_submission_bounds_json_nesting(value: Any) -> None:
    """A JSON campaign of any shape is copied or refused with a CampaignError."""
    with contextlib.suppress(CampaignError):
        assert isinstance(parse_submission({"campaign": {"id": "x", "headers": {"h": value}}}), dict)


@FEW
@given(value=st.text(max_size=80) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,70}\s?", fullmatch=True))
def test_campaign_id_is_always_a_single_safe_file_name(value: str) -> None:
    """An id passes only if it is a plain file name of 1–64 letters, digits, '.', '_' or '-' (no
    separator, no line break even at the end, never `.` or `..`)."""
    try:
        cid = check_campaign_id(value)
    except CampaignError:
        return
    assert re.fullmatch(r"[A-Za-z0-9._-]+", cid), "only letters, digits, '.', '_' and '-'"
    assert cid not in (".", "..")
    assert 1 <= len(cid) <= 64
    assert not cid.startswith(".")


@FEW
@given(
    value=st.text(max_size=300)
    | st.sampled_from(["a\x00.csv", "x\n.csv", "é" * 100 + ".csv", "outcomes.db-wal"])
)
def test_spooled_name_is_a_bare_name_the_daemon_does_not_use(value: str) -> None:
    """Whatever file name an upload claims, it is stored under a short, printable bare name that
    is none of the daemon's own files in the campaign folder."""
    name = spooled_name(value)
    assert name
    assert "/" not in name
    assert "\\" not in name
    assert name not in (".", "..")
    assert name.lower() not in {"campaign.json", "outcomes.jsonl", "outcomes.db"}
    assert name.isprintable()
    assert len(name.encode()) <= 120


def test_cli_refuses_a_deeply_nested_campaign_with_exit_1_and_a_short_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bulksend send --dry-run` on a campaign nested 5,000 deep exits 1 with a short message
    naming the limit, no traceback."""
    path = make(tmp_path, BASE + "extra = " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["send", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: {path}: the campaign nests tables and arrays more than 16 deep; a campaign needs at "
        "most 4 levels (like [campaign] → attachments → { path = … }): flatten it\n"
    )


def test_a_path_with_a_nul_character_is_a_campaign_error(tmp_path: Path, spool: Path) -> None:
    """A NUL inside a file path is a CampaignError for the CLI and for a confined campaign alike."""
    with pytest.raises(CampaignError, match="not a usable path"):
        campaign_from_dict(submitted(text_file="body\x00.txt"), base_dir=spool, source="c")
    files = FileAccess.confined_to(tmp_path)
    with pytest.raises(CampaignError, match="not a usable path"):
        campaign_from_dict(submitted(text_file="body\x00.txt"), base_dir=spool, source="c", files=files)
