"""The outcomes file: private, and written through a temporary file no other writer can collide with."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from bulksend.sinks.outcomes import OUTCOME_FIELDS, write_outcomes
from tests.conftest import read_jsonl


def _line(n: int, writer: str) -> dict[str, Any]:
    line: dict[str, Any] = dict.fromkeys(OUTCOME_FIELDS)
    line.update(email=f"u{n}@example.com", row=n + 2, status="sent", flags=[], reason=writer)
    return line


async def test_concurrent_writers_in_one_pid_do_not_collide(tmp_path: Path) -> None:
    """Two writers of the same outcomes file with the same PID (every container's worker is PID 1)
    both finish, and the file is one writer's complete output, never a mix or a missing file."""
    path = tmp_path / "out" / "outcomes.jsonl"
    both_open = anyio.Event()
    opened = 0

    async def lines(writer: str) -> AsyncIterator[dict[str, Any]]:
        nonlocal opened
        yield _line(0, writer)
        opened += 1
        if opened == 2:
            both_open.set()
        await both_open.wait()  # both temporary files exist at once
        for n in range(1, 50):
            yield _line(n, writer)

    counts: list[int] = []

    async def write(writer: str) -> None:
        counts.append(await write_outcomes(path, lines(writer)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, "a")
        tg.start_soon(write, "b")
    assert counts == [50, 50]
    written = read_jsonl(path)
    assert len(written) == 50
    assert len({line["reason"] for line in written}) == 1
    assert [p.name for p in path.parent.iterdir()] == ["outcomes.jsonl"]  # no temporary file left


async def test_outcomes_file_and_its_new_folder_are_private(tmp_path: Path) -> None:
    """The outcomes file (personal data) is created 0600 in a folder created 0700, even under a
    permissive umask."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "new" / "outcomes.csv"
        await write_outcomes(path, _lines())
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


async def _lines() -> AsyncIterator[dict[str, Any]]:
    yield _line(0, "a")
