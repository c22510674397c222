"""Shared pieces of the scripts: the generated campaign, the ``bulksend send`` child processes,
the exactly-once verdict, and the command line around a run."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import anyio
import orjson
from anyio.abc import Process

from bulksend.testing import TomlTable, campaign_toml

__all__ = [
    "count_delivery",
    "drain",
    "print_verdict",
    "run_in_scratch_folder",
    "script_parser",
    "start_sender",
    "wait_for_event",
    "write_campaign_files",
]

_T = TypeVar("_T")


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


def script_parser(doc: str | None, *, recipients: int, rate: float) -> argparse.ArgumentParser:
    """A script's parser: ``doc`` as its help, ``--recipients`` and ``--rate`` with these defaults.

    Each option's destination is named after the run's parameter it sets (``--rate``:
    ``rate_per_s``), so the parsed options can be passed to the run as they are.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=recipients)
    parser.add_argument(
        "--rate", dest="rate_per_s", type=float, default=rate, help=f"campaign rate_per_s (default {rate:g})"
    )
    return parser


def run_in_scratch_folder(prefix: str, run: Callable[[Path], Awaitable[_T]]) -> _T:
    """``run(folder)`` in an event loop, on a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        return anyio.run(run, Path(tmp))


def print_verdict(result: Mapping[str, object], ok: bool) -> int:
    """Print a run's figures as indented JSON; the exit code: 0 when ``ok``, 1 otherwise."""
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0 if ok else 1
