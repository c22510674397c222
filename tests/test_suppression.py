"""The suppression list in sends: learned from bounces and complaints, consulted at admission.

Campaigns run as a user runs them (``bulksend send`` in-process, default settings, a sandbox on
loopback); the list is the per-user SQLite file under a temporary ``XDG_STATE_HOME``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from bulksend.cli.main import main
from bulksend.pipeline.suppress import default_suppression_path
from bulksend.sandbox import SandboxConfig, sandbox_in_thread
from bulksend.store import SqliteStore
from bulksend.suppression import SuppressionEntry, SuppressionReason, SuppressionSource
from tests.conftest import PROJECT, SECRET, read_jsonl
from tests.test_cli import env_for

PEOPLE = (
    "email,first_name\nann@example.com,Ann\nBounce1@Example.com,Bob\nspam1@example.com,Sy\n"
    "full1@example.com,Fu\n"
)


def campaign_in(folder: Path, campaign_id: str, extra: str = "") -> Path:
    """A campaign of PEOPLE in ``folder``, its outcomes and state in ``folder/out``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "people.csv").write_text(PEOPLE, encoding="utf-8")
    path = folder / "campaign.toml"
    path.write_text(
        f"""[campaign]
id = "{campaign_id}"
from = {{ email = "news@example.com" }}
subject = "Hello {{{{ first_name }}}}"
text = "Hi {{{{ first_name }}}}"
recipients = "people.csv"
[sending]
rate_per_s = 2000
concurrency = 4
[tracking]
poll_interval_s = 0.05
settle_s = 0.05
{extra}""",
        encoding="utf-8",
    )
    return path


def outcomes_of(folder: Path, campaign_id: str) -> dict[str, dict[str, object]]:
    return {str(o["email"]).lower(): o for o in read_jsonl(folder / "out" / f"{campaign_id}.jsonl")}


def test_default_list_is_per_user(tmp_path: Path) -> None:
    """The default list is under $XDG_STATE_HOME, else under ~/.local/state."""
    assert default_suppression_path({"XDG_STATE_HOME": "/x/state", "HOME": "/h"}) == Path(
        "/x/state/bulksend/suppression.sqlite"
    )
    assert default_suppression_path({"HOME": str(tmp_path)}) == (
        tmp_path / ".local" / "state" / "bulksend" / "suppression.sqlite"
    )


@pytest.mark.parametrize("state_home", ["xdg", "home"])
def test_second_campaign_sends_nothing_to_the_first_ones_bounces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_home: str
) -> None:
    """Two campaigns from two folders with default settings: the second skips the first one's
    hard bounce and complaint, says why and since when, and still sends to the others."""
    if state_home == "home":
        monkeypatch.delenv("XDG_STATE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
    first = campaign_in(tmp_path / "one", "first")
    second = campaign_in(tmp_path / "two", "second")
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        assert main(["send", str(first), "--no-progress"]) == 0
        assert main(["send", str(second), "--no-progress"]) == 0
        accepted = dict(sb.stats().accepted_by_recipient)
    today = datetime.now(UTC).date().isoformat()
    out = outcomes_of(tmp_path / "two", "second")
    assert out["bounce1@example.com"]["status"] == "skipped"
    assert out["bounce1@example.com"]["reason"] == f"suppressed: hard_bounce since {today} (campaign first)"
    assert out["spam1@example.com"]["reason"] == f"suppressed: spam since {today} (campaign first)"
    assert out["ann@example.com"]["status"] == "sent"
    # A full mailbox is not a reason to suppress for good: sent again.
    assert out["full1@example.com"]["status"] == "failed"
    assert accepted.get("Bounce1@Example.com", accepted.get("bounce1@example.com")) == 1
    assert accepted["ann@example.com"] == 2
    where = tmp_path / "home" / ".local" / "state" if state_home == "home" else None
    assert default_suppression_path().is_file()
    if where is not None:
        assert default_suppression_path() == where / "bulksend" / "suppression.sqlite"


def suppress_now(*entries: SuppressionEntry) -> None:
    """Put entries on the per-user list, as another command would have."""

    async def fill() -> None:
        async with SqliteStore(default_suppression_path()) as suppression:
            await suppression.suppress(PROJECT, entries)

    anyio.run(fill)


def test_suppressed_before_the_first_campaign_is_never_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An address on the list for a reason the campaign ignores is sent to; one for any other
    reason is not."""
    since = datetime(2026, 1, 2, tzinfo=UTC)
    suppress_now(
        SuppressionEntry("ann@example.com", SuppressionReason.MAILBOX_FULL, SuppressionSource.TEM, since),
        SuppressionEntry(
            "spam1@example.com",
            SuppressionReason.MANUAL,
            SuppressionSource.MANUAL,
            since,
            origin="file people.csv",
        ),
    )
    path = campaign_in(tmp_path, "opted", '[suppression]\nignore = ["mailbox_full"]\n')
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        assert main(["send", str(path), "--no-progress"]) == 0
        accepted = dict(sb.stats().accepted_by_recipient)
    out = outcomes_of(tmp_path, "opted")
    assert out["ann@example.com"]["status"] == "sent"
    assert out["spam1@example.com"]["reason"] == "suppressed: manual since 2026-01-02 (file people.csv)"
    assert "spam1@example.com" not in accepted


def test_a_campaign_cannot_ignore_unsubscribes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ignore = ["unsubscribe"]` is refused before anything is sent, with the line and why."""
    path = campaign_in(tmp_path, "rude", '[suppression]\nignore = ["unsubscribe"]\n')
    env_for(monkeypatch, "http://127.0.0.1:9")
    assert main(["send", str(path), "--no-progress"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "suppression.ignore cannot hold 'unsubscribe'" in err
    assert "never sent to again" in err


def test_reasons_are_the_known_ones() -> None:
    """The entry of a reason outside the list is refused; a known one given as text is taken."""
    with pytest.raises(ValueError, match="'bored' is not a valid SuppressionReason"):
        SuppressionEntry("a@example.com", "bored", SuppressionSource.MANUAL, datetime.now(UTC))  # type: ignore[arg-type]
    text = SuppressionEntry("a@example.com", "spam", "auto", datetime.now(UTC))  # type: ignore[arg-type]
    assert (text.reason, text.source) == (SuppressionReason.SPAM, SuppressionSource.AUTO)
