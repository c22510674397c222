"""Chaos run: a campaign against a faulty sandbox, the sender killed with SIGKILL again and again.

The sandbox runs in this process (so its per-recipient counts survive every kill); the sender is
``bulksend send`` in a child process, killed at random moments after it has started sending and
restarted each time, then left to finish. The verdict: every valid recipient got exactly one email
(0 duplicates, 0 missing) and the outcomes file has exactly one line per input row.

    python -m scripts.chaos --recipients 20000 --kills 50      # the long run
"""

from __future__ import annotations

import random
import signal
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio
import orjson
from anyio.abc import Process

from bulksend.sandbox import Sandbox, SandboxConfig
from scripts import common
from scripts.common import count_delivery, drain, wait_for_event, write_campaign_files

SECRET = "chaos-sandbox-secret"
PROJECT = "11111111-2222-4333-8444-555555555555"

# Under their former names too: suites that drive senders themselves import them from here.
_drain = drain
_wait_for_event = wait_for_event


@dataclass
class ChaosResult:
    recipients: int
    valid: int
    kills: int
    runs: int
    duplicates: int
    missing: int
    outcome_lines: int
    outcome_rows_unique: int
    final_exit_code: int
    statuses: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.duplicates == 0
            and self.missing == 0
            and self.outcome_lines == self.recipients
            and self.outcome_rows_unique == self.recipients
            and self.final_exit_code == 0
        )


def write_campaign(
    folder: Path, recipients: int, *, rate_per_s: float, concurrency: int
) -> tuple[Path, set[str]]:
    """A CSV campaign with a few invalid rows; returns the campaign file and the valid addresses."""
    return write_campaign_files(
        folder,
        recipients,
        "chaos",
        sending={"rate_per_s": rate_per_s, "concurrency": concurrency, "timeout_s": 2, "max_attempts": 10},
        tracking={"poll_interval_s": 0.2, "settle_s": 0.3},
        broken_every=500,
    )


async def start_sender(
    campaign: Path, api_url: str, *, project: str = PROJECT, secret: str = SECRET, extra: tuple[str, ...] = ()
) -> Process:
    """``bulksend send CAMPAIGN`` as a child process, by default on this script's sandbox account."""
    return await common.start_sender(campaign, api_url, project=project, secret=secret, extra=extra)


async def run_chaos(
    folder: Path,
    *,
    recipients: int = 3000,
    kills: int = 5,
    seed: int = 1,
    latency_ms: float = 20,
    fault_5xx_before_p: float = 0.03,
    fault_5xx_after_p: float = 0.02,
    fault_drop_p: float = 0.01,
    rate_per_s: float = 5000,
    concurrency: int = 64,
    max_kill_delay_s: float = 1.0,
    timeout_s: float = 600,
) -> ChaosResult:
    """Run the chaos scenario; raises TimeoutError if it does not finish within ``timeout_s``."""
    rng = random.Random(seed)
    campaign, valid = write_campaign(folder, recipients, rate_per_s=rate_per_s, concurrency=concurrency)
    config = SandboxConfig(
        secret_key=SECRET,
        project_id=PROJECT,
        sending_after_s=0.0,
        final_after_s=0.1,
        latency_ms=latency_ms,
        latency_jitter_ms=latency_ms / 4,
        fault_5xx_before_p=fault_5xx_before_p,
        fault_5xx_after_p=fault_5xx_after_p,
        fault_drop_p=fault_drop_p,
        seed=seed,
    )
    runs = 0
    done_kills = 0
    with anyio.fail_after(timeout_s):
        async with Sandbox(config, host="127.0.0.1", port=0) as sandbox:
            while done_kills < kills:
                proc = await start_sender(campaign, sandbox.url)
                runs += 1
                started = await wait_for_event(proc, "campaign.start")
                if not started:  # finished (or failed) before it could be killed
                    await proc.wait()
                    break
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drain, proc)
                    # The chaos itself: a random moment while it is sending.
                    await anyio.sleep(rng.uniform(0.05, max_kill_delay_s))
                    if proc.returncode is None:
                        proc.send_signal(signal.SIGKILL)
                        done_kills += 1
                    await proc.wait()
            # Last run: no kill, it must finish.
            proc = await start_sender(campaign, sandbox.url)
            runs += 1
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain, proc)
                final_code = await proc.wait()
            stats = sandbox.stats()
    duplicates, missing = count_delivery(stats.accepted_by_recipient, valid)
    lines = [orjson.loads(line) for line in (folder / "outcomes.jsonl").read_bytes().splitlines() if line]
    statuses: dict[str, int] = {}
    for line in lines:
        statuses[line["status"]] = statuses.get(line["status"], 0) + 1
    return ChaosResult(
        recipients=recipients,
        valid=len(valid),
        kills=done_kills,
        runs=runs,
        duplicates=duplicates,
        missing=missing,
        outcome_lines=len(lines),
        outcome_rows_unique=len({line["row"] for line in lines}),
        final_exit_code=final_code,
        statuses=statuses,
        faults=dict(stats.faults),
    )


def main() -> int:
    parser = common.script_parser(__doc__, recipients=20_000, rate=1000)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-kill-delay-s", type=float, default=0.6)
    run = partial(run_chaos, **vars(parser.parse_args()), timeout_s=3600)
    result = common.run_in_scratch_folder("bulksend-chaos-", run)
    return common.print_verdict({**result.__dict__, "ok": result.ok}, result.ok)


if __name__ == "__main__":
    sys.exit(main())
