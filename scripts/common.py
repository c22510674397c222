"""Shared pieces of the scripts: the generated campaign, the ``bulksend send`` child processes
and the exactly-once verdict."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import anyio
from anyio.abc import Process

from bulksend.testing import TomlTable, campaign_toml

__all__ = ["count_delivery", "drain", "start_sender", "wait_for_event", "write_campaign_files"]


def write_campaign_files(
    folder: Path,
    recipients: int,
    campaign_id: str,
    *,
    sending: TomlTable,
    tracking: TomlTable,
    broken_every: int | None = None,
) -> tuple[Path, set[str]]:
    """``recipients.csv`` (columns ``email,first_name,n``) and ``campaign.toml`` in ``folder``.

    The campaign has the ``sending`` and ``tracking`` settings given and writes its outcomes to
    ``outcomes.jsonl``. With ``broken_every``, one row in that many (from its middle) has an
    invalid address: it is rejected, never sent. Returns the campaign file and the valid addresses.
    """
    folder.mkdir(parents=True, exist_ok=True)
    valid: set[str] = set()
    with open(folder / "recipients.csv", "w", encoding="utf-8") as fh:
        fh.write("email,first_name,n\n")
        for i in range(recipients):
            if broken_every is not None and i % broken_every == broken_every // 2:
                fh.write(f"broken-{i},X,{i}\n")
                continue
            address = f"user{i}@example.com"
            valid.add(address)
            fh.write(f"{address},P{i},{i}\n")
    path = folder / "campaign.toml"
    campaign = {"text": "Hi {{ first_name }}, row {{ n }}.", "recipients": "recipients.csv"}
    path.write_text(
        campaign_toml(
            campaign_id,
            campaign=campaign,
            sending=sending,
            tracking=tracking,
            output={"outcomes": "outcomes.jsonl"},
        ),
        encoding="utf-8",
    )
    return path, valid


async def start_sender(
    campaign: Path, api_url: str, *, project: str, secret: str, extra: tuple[str, ...] = ()
) -> Process:
    """``bulksend send CAMPAIGN`` as a child process with JSON logs on stderr (``extra``: more options)."""
    env = dict(os.environ)
    env.update(SCW_SECRET_KEY=secret, SCW_DEFAULT_PROJECT_ID=project, SCW_API_URL=api_url)
    command = [sys.executable, "-m", "bulksend.cli", "send", str(campaign), "--no-progress"]
    command += ["--log-format", "json", "--log-level", "info", *extra]
    return await anyio.open_process(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_for_event(proc: Process, event: str) -> bool:
    """Read the child's JSON log until ``event`` appears (True) or the child exits (False)."""
    assert proc.stderr is not None
    buffer = b""
    async for chunk in proc.stderr:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if f'"event":"{event}"'.encode() in line:
                return True
    return False


async def drain(proc: Process) -> None:
    """Read and drop the child's log, so that a full pipe never blocks it."""
    assert proc.stderr is not None
    async for _ in proc.stderr:
        pass


def count_delivery(accepted_by_recipient: Mapping[str, int], valid: Iterable[str]) -> tuple[int, int]:
    """(duplicates, missing): recipients emailed more than once, valid ones never emailed."""
    duplicates = sum(1 for n in accepted_by_recipient.values() if n > 1)
    missing = sum(1 for address in valid if accepted_by_recipient.get(address, 0) == 0)
    return duplicates, missing
