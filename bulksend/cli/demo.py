"""``bulksend demo``: a 10,000-recipient campaign against the built-in sandbox, no credentials needed.

It writes a campaign folder (campaign file, templates, recipients, attachments) that shows every
sandbox outcome and every kind of bad input, starts the sandbox inside the same process, and runs
the campaign exactly as ``bulksend send`` would. The folder stays, so the campaign can be read,
edited and re-sent with ``bulksend send`` against ``bulksend sandbox``.
"""

from __future__ import annotations

import argparse
import base64
import random
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
from rich.console import Console

from bulksend.campaign.load import load_campaign
from bulksend.cli.args import configure_demo as configure
from bulksend.cli.display import print_error, print_text, styled
from bulksend.cli.send import RunOptions, run_campaign
from bulksend.errors import CampaignError
from bulksend.log import configure_logging
from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.secret import Secret
from bulksend.tem.config import TemSettings

__all__ = ["configure", "run", "write_demo_campaign"]

SANDBOX_SECRET = "demo-sandbox-key"
SANDBOX_PROJECT = "11111111-2222-4333-8444-555555555555"

CAMPAIGN_TOML = """\
# A demo campaign: every key is documented in docs/campaign-file.md.
[campaign]
id = "demo"
from = {{ email = "news@demo.example.com", name = "bulksend demo" }}
subject = "Hello {{{{ first_name }}}}, your {{{{ plan }}}} plan is ready"
text_file = "welcome.txt.j2"
html_file = "welcome.html.j2"
recipients = "recipients.jsonl"
headers = {{ "List-Unsubscribe" = "<https://demo.example.com/u/{{{{ token }}}}>" }}
attachments = ["terms.txt"]

[sending]
rate_per_s = {rate}
concurrency = 64

[tracking]
poll_interval_s = 0.5
give_up_after_s = 2     # the sandbox's `stuck…` recipients never finish: show how that ends
settle_s = 0.2

[output]
outcomes = "outcomes.jsonl"
"""

TEXT = """Hi {{ first_name }},

Your {{ plan }} plan is ready.{% if note is defined %} {{ note }}{% endif %}

-- The demo team
"""

HTML = """<p>Hi {{ first_name }},</p>
<p>Your <b>{{ plan }}</b> plan is ready.{% if note is defined %} {{ note }}{% endif %}</p>
"""

# Sandbox outcome kinds, chosen by the recipient's local part (docs/sandbox.md), and how many.
OUTCOME_KINDS = {
    "bounce": 150,
    "softbounce": 100,
    "blocked": 50,
    "spam": 50,
    "full": 50,
    "greylist": 50,
    "stuck": 5,
}


def _bad_rows() -> list[bytes]:
    """Rows that must each become a rejected/skipped outcome, never stop the campaign."""
    return [
        orjson.dumps({"email": "not-an-email", "first_name": "Bad", "plan": "pro", "token": "t1"}),
        orjson.dumps({"email": "ann@nowhere", "first_name": "Ann", "plan": "pro", "token": "t2"}),
        orjson.dumps({"email": "jürgen@example.com", "first_name": "J", "plan": "pro", "token": "t3"}),
        orjson.dumps({"email": "user1@example.com", "first_name": "Dup", "plan": "pro", "token": "t4"}),
        orjson.dumps({"email": "USER2@Example.com", "first_name": "Dup", "plan": "pro", "token": "t5"}),
        orjson.dumps({"email": "nofirstname@example.com", "plan": "pro", "token": "t6"}),
        orjson.dumps(
            {
                "email": "inject@example.com",
                "first_name": "Eve",
                "plan": "pro",
                "token": "x>\r\nBcc: everyone@example.com",
            }
        ),
        orjson.dumps(
            {
                "email": "huge@example.com",
                "first_name": "Big",
                "plan": "pro",
                "token": "t8",
                "note": "x" * (2 * 1024 * 1024 + 10),
            }
        ),
        orjson.dumps(
            {
                "email": "exe@example.com",
                "first_name": "Exe",
                "plan": "pro",
                "token": "t9",
                "attachments": "setup.exe",
            }
        ),
        b'{"email": "broken@example.com", "first_name": "Br',
        b'{"email": "latin1@example.com", "first_name": "Fran\xe7ois", "plan": "pro", "token": "t11"}',
        b'["not", "an", "object"]',
    ]


def write_demo_campaign(
    folder: Path, *, recipients: int = 10_000, rate_per_s: float = 20_000, seed: int = 7
) -> Path:
    """Write the demo campaign into ``folder`` (replacing an earlier one); returns the campaign file."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "welcome.txt.j2").write_text(TEXT, encoding="utf-8")
    (folder / "welcome.html.j2").write_text(HTML, encoding="utf-8")
    (folder / "terms.txt").write_text("Demo terms and conditions.\n", encoding="utf-8")
    (folder / "setup.exe").write_bytes(b"MZ" + bytes(62))
    campaign = folder / "campaign.toml"
    campaign.write_text(CAMPAIGN_TOML.format(rate=rate_per_s), encoding="utf-8")

    rng = random.Random(seed)
    bad = _bad_rows()
    # The mix of outcome kinds keeps its proportions (at least one of each) for any size.
    special: list[str] = [
        f"{kind}{i}@example.com"
        for kind, n in OUTCOME_KINDS.items()
        for i in range(max(1, n * recipients // 10_000))
    ]
    normal = recipients - len(special) - len(bad)
    addresses = [f"user{i}@example.com" for i in range(normal)] + special
    rng.shuffle(addresses)
    plans = ["free", "pro", "team"]
    lines: list[bytes] = []
    for i, address in enumerate(addresses):
        lines.append(
            orjson.dumps(
                {
                    "email": address,
                    "name": f"Person {i}",
                    "first_name": f"Person{i}",
                    "plan": plans[i % 3],
                    "token": base64.urlsafe_b64encode(i.to_bytes(4, "big")).decode().rstrip("="),
                }
            )
        )
    # Bad rows spread through the file, not bunched at the end.
    for j, row in enumerate(bad):
        lines.insert((j + 1) * len(lines) // (len(bad) + 1), row)
    (folder / "recipients.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return campaign


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    console = Console(stderr=True, soft_wrap=True)
    if args.recipients < 100:
        print_error(console, "--recipients must be at least 100")
        return 1
    path = write_demo_campaign(args.dir, recipients=args.recipients, rate_per_s=args.rate)
    console.print(
        styled("demo campaign written to ", (str(path), "bold"), "; sending through the built-in sandbox…")
    )
    try:
        campaign = load_campaign(path)
    except CampaignError as exc:
        print_error(console, exc)
        return 1
    settings = TemSettings(secret_key=Secret(SANDBOX_SECRET), project_id=SANDBOX_PROJECT)

    @asynccontextmanager
    async def serve() -> AsyncIterator[str]:
        config = SandboxConfig(
            secret_key=SANDBOX_SECRET,
            project_id=SANDBOX_PROJECT,
            sending_after_s=0.05,
            final_after_s=0.2,
            soft_bounce_retry_s=0.3,
            seed=1,
        )
        async with Sandbox(config, host="127.0.0.1", port=0) as sandbox:
            yield sandbox.url

    # Its own suppression list: the sandbox's bounces are no one's real addresses, and a second
    # demo should show them again.
    options = RunOptions(
        progress=not args.no_progress,
        progress_json=args.log_format == "json",
        suppression_url=str(path.parent / "suppression.sqlite"),
        monthly_quota=None,  # the sandbox has no monthly quota to warn about
    )
    code = run_campaign(campaign, settings, serve=serve, console=console, options=options)
    print_text(console, f"summarise the outcomes again with: bulksend report {campaign.output.outcomes}")
    return code
