"""Guardrails: a bounce storm pauses a campaign well before TEM's alert line, until resumed."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bulksend.cli.main import main
from bulksend.pipeline.guard import BounceGuard
from bulksend.sandbox import Sandbox, SandboxConfig, sandbox_in_thread
from bulksend.settings import GuardrailSettings
from bulksend.store import CampaignState, SqliteStore
from tests.conftest import PROJECT, SECRET, CampaignWriter, read_jsonl, run_once
from tests.test_cli import env_for

ROWS = 5_000
STORM_FROM = 1_000


def storm(n: int) -> str:
    """Row ``n``'s address: from row 1,000 on, one in five bounces."""
    return f"bounce{n}@example.com" if n >= STORM_FROM and n % 5 == 0 else f"user{n}@example.com"


async def test_bounce_storm_pauses_the_campaign_before_6_percent_failed(
    sandbox: Sandbox, write_campaign: CampaignWriter
) -> None:
    """20 % of recipients bounce from row 1,000 on: the campaign pauses itself, says why in its
    summary, its state and a log line, with fewer than 6 % of its emails failed; a rerun only tracks, and
    --resume-paused sends again."""
    campaign = write_campaign(
        [{"email": storm(n)} for n in range(1, ROWS + 1)], rate_per_s=1000, concurrency=16
    )
    with capture_logs() as logs:
        result = await run_once(campaign, sandbox)
    assert not result.complete
    [paused] = [e for e in logs if e["event"] == "campaign.paused_by_guardrail"]
    assert paused["campaign"] == campaign.id
    assert "over guardrails.max_bad_rate (5.0%; TEM alerts at 7 %)" in paused["reason"]
    async with SqliteStore(campaign.store_path) as store:
        record = await store.get_campaign(campaign.id)
        counts = await store.counts(campaign.id)
    assert record is not None
    assert record.state is CampaignState.PAUSED
    assert "hard bounces or spam complaints" in record.state_reason
    assert result.paused
    assert f"campaign paused: {record.state_reason}." in result.notes
    outcomes = read_jsonl(campaign.output.outcomes)
    emailed = [o for o in outcomes if o["status"] in ("sent", "failed")]
    failed = [o for o in emailed if o["status"] == "failed"]
    assert len(failed) < 0.06 * len(emailed)
    assert len(emailed) < ROWS
    assert counts["pending"] > 0
    # The bounces went on the list: admitted again, they would be skipped.
    sent_before = sum(sandbox.stats().accepted_by_recipient.values())
    again = await run_once(campaign, sandbox)
    assert sum(sandbox.stats().accepted_by_recipient.values()) == sent_before
    assert again.paused
    assert f"campaign paused: {record.state_reason}." in again.notes
    await run_once(campaign, sandbox, resume_paused=True)
    assert sum(sandbox.stats().accepted_by_recipient.values()) > sent_before


def test_guard_counts_a_rolling_window() -> None:
    """The guard judges the last `window` emails once `min_emails` are in, trips once, and
    forgets old bounces as new emails come in."""
    guard = BounceGuard(GuardrailSettings(window=20, min_emails=10, max_bad_rate=0.1))
    assert guard.observe([("hard_bounce",)] * 2) is None  # 2 of 2, but fewer than min_emails
    assert guard.observe([()] * 7) is None  # 2 of 9
    reason = guard.observe([("spam", "hard_bounce")])  # 3 of 10: one email, counted once
    assert reason is not None
    assert reason.startswith("3 of the last 10 final emails (30.0%)")
    assert guard.observe([("hard_bounce",)]) is None  # tripped already
    guard.observe([("soft_bounce",)] * 20)
    assert (guard.bad, guard.seen, guard.rate) == (0, 20, 0.0)
    guard.reset()
    assert (guard.seen, guard.tripped) == (0, None)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"window": 5}, "window"),
        ({"max_bad_rate": 0}, "max_bad_rate"),
        ({"window": 20, "min_emails": 30}, "min_emails"),
    ],
)
def test_guardrail_settings_are_checked(values: dict[str, float], key: str) -> None:
    """Out-of-range guardrail settings are refused, naming the key."""
    with pytest.raises(ValueError, match=f"guardrails.{key}") as caught:
        GuardrailSettings(**values)  # type: ignore[arg-type]
    assert getattr(caught.value, "key", None) == key


def test_send_says_how_to_resume_a_paused_campaign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bulksend send` of a campaign that pauses itself exits 3 and says why and how to go on; run
    again it sends nothing, and with --resume-paused it sends the rest."""
    rows = "email\n" + "".join(f"{'bounce' if n % 2 else 'user'}{n}@example.com\n" for n in range(400))
    (tmp_path / "people.csv").write_text(rows, encoding="utf-8")
    path = tmp_path / "campaign.toml"
    path.write_text(
        """[campaign]
id = "storm"
from = { email = "news@example.com" }
subject = "Hello"
text = "Hi"
recipients = "people.csv"
[sending]
rate_per_s = 200
concurrency = 4
[tracking]
poll_interval_s = 0.05
settle_s = 0.05
[guardrails]
window = 20
min_emails = 10
""",
        encoding="utf-8",
    )
    with sandbox_in_thread(SandboxConfig(secret_key=SECRET, project_id=PROJECT)) as sb:
        env_for(monkeypatch, sb.url)
        assert main(["send", str(path), "--no-progress"]) == 3
        out = " ".join(capsys.readouterr().out.split())
        sent = sum(sb.stats().accepted_by_recipient.values())
        assert "campaign paused: " in out
        assert f"send the rest with: bulksend send {path} --resume-paused" in out
        assert main(["send", str(path), "--no-progress"]) == 3
        assert sum(sb.stats().accepted_by_recipient.values()) == sent
        main(["send", str(path), "--no-progress", "--resume-paused"])
        assert sum(sb.stats().accepted_by_recipient.values()) > sent
