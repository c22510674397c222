"""A run's flow control over time: the ``<outcomes stem>.timeline.jsonl`` file beside the outcomes.

The outcomes say when each email was submitted and became final, but not what the run's limiter
did. While ``bulksend send`` runs, :func:`record_timeline` samples its counters every second:
emails submitted and final, the limiter's rate, the rate measured, 429 answers and the circuit
breaker's trips (cumulative counts, so a thinned series stays exact). Memory and file stay
bounded: past ``max_samples`` samples in a run, every other one is dropped and the interval
doubles; the file keeps earlier runs (a resumed campaign), thinned the same way.

The file is JSON lines: a ``{"run": {...}}`` line (campaign, sender, recipients file and its
SHA-256, start, end) followed by that run's samples, for each run. It is rewritten whole,
atomically, every ``flush_s`` seconds and when the run ends.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson

from bulksend.sinks.outcomes import write_file_atomically

if TYPE_CHECKING:
    from bulksend.pipeline.limiter import RateLimiter
    from bulksend.pipeline.stats import RunStats

__all__ = [
    "MAX_FILE_SAMPLES",
    "RunInfo",
    "Sample",
    "file_sha256",
    "read_timeline",
    "record_timeline",
    "thin",
    "write_timeline",
]


@dataclass(frozen=True, slots=True)
class Sample:
    """The run's counters at one moment (Unix time ``t``); counts are cumulative."""

    t: float
    run: int
    """Which run of the campaign (0 for the first): a chart breaks its lines between runs."""
    submitted: int
    final: int
    failed: int
    throttled: int
    """429 answers so far (this run)."""
    trips: int
    """Times the circuit breaker opened so far (this run)."""
    limit_per_s: float
    """The limiter's rate."""
    measured_per_s: float | None
    in_flight: int
    circuit: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run of a campaign: what ran and when (Unix times)."""

    campaign: str
    sender: str
    recipients: str
    """The recipients file's absolute path."""
    recipients_sha256: str | None
    started: float
    ended: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file (read in chunks by hashlib)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def thin(samples: list[Sample], limit: int) -> list[Sample]:
    """Every other sample until at most ``limit`` are left (the last one always kept)."""
    while len(samples) > limit > 1:
        samples = samples[-1::-2][::-1]
    return samples


def _sample_of(value: Mapping[str, Any], run: int) -> Sample | None:
    try:
        measured = value.get("measured_per_s")
        return Sample(
            t=float(value["t"]),
            run=run,
            submitted=int(value["submitted"]),
            final=int(value["final"]),
            failed=int(value.get("failed", 0)),
            throttled=int(value.get("throttled", 0)),
            trips=int(value.get("trips", 0)),
            limit_per_s=float(value.get("limit_per_s", 0.0)),
            measured_per_s=None if measured is None else float(measured),
            in_flight=int(value.get("in_flight", 0)),
            circuit=str(value.get("circuit", "")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _run_of(value: Mapping[str, Any]) -> RunInfo | None:
    try:
        ended = value.get("ended")
        sha = value.get("recipients_sha256")
        return RunInfo(
            campaign=str(value["campaign"]),
            sender=str(value.get("sender", "")),
            recipients=str(value.get("recipients", "")),
            recipients_sha256=None if sha is None else str(sha),
            started=float(value["started"]),
            ended=None if ended is None else float(ended),
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_timeline(path: Path) -> tuple[list[RunInfo], list[Sample]]:
    """The runs and samples of a timeline file (none when it does not exist); lines that cannot
    be read are passed over (the file is a record to draw, never a reason to fail)."""
    runs: list[RunInfo] = []
    samples: list[Sample] = []
    try:
        lines = path.read_bytes().splitlines()  # bounded: MAX_FILE_SAMPLES lines of ~120 bytes
    except FileNotFoundError:
        return runs, samples
    for line in lines:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(value, dict):
            continue
        if isinstance(value.get("run"), dict):
            run = _run_of(value["run"])
            if run is not None:
                runs.append(run)
        elif runs:
            sample = _sample_of(value, len(runs) - 1)
            if sample is not None:
                samples.append(sample)
    return runs, samples


def write_timeline(path: Path, runs: list[RunInfo], samples: Iterable[Sample]) -> None:
    """Write ``runs`` and their ``samples`` to ``path`` atomically (``0600``)."""
    by_run: dict[int, list[bytes]] = {}
    for s in samples:
        body = s.to_json()
        del body["run"]
        by_run.setdefault(s.run, []).append(orjson.dumps(body))
    out = bytearray()
    for i, run in enumerate(runs):
        out += orjson.dumps({"run": run.to_json()}) + b"\n"
        for line in by_run.get(i, ()):
            out += line + b"\n"
    write_file_atomically(path, [bytes(out)])


def _take(stats: RunStats, limiter: RateLimiter, run: int) -> Sample:
    from bulksend.pipeline.flow import flow_stats

    flow = flow_stats(limiter)
    measured = flow.measured_rate_per_s if flow is not None else None
    return Sample(
        t=round(time.time(), 3),
        run=run,
        submitted=stats.submitted,
        final=stats.final,
        failed=stats.final_by_status.get("failed", 0),
        throttled=stats.throttled,
        trips=flow.circuit_opened if flow is not None else 0,
        limit_per_s=round(limiter.rate_per_s, 2),
        measured_per_s=None if measured is None or math.isnan(measured) else round(measured, 2),
        in_flight=stats.in_flight,
        circuit=flow.circuit.name.lower().replace("_", "-") if flow is not None else "",
    )


MAX_RUN_SAMPLES: Final = 1800
"""Samples one run keeps (half an hour at one a second, then one every 2 s, 4 s…)."""
MAX_FILE_SAMPLES: Final = 3600
"""Samples the file keeps over all runs (about 400 KB)."""


def _with_sha256(run: RunInfo) -> RunInfo:
    if run.recipients_sha256 is not None or not Path(run.recipients).is_file():
        return run
    return replace(run, recipients_sha256=file_sha256(Path(run.recipients)))


async def record_timeline(
    path: Path,
    stats: RunStats,
    limiter: RateLimiter,
    run: RunInfo,
    *,
    interval_s: float = 1.0,
    flush_s: float = 30.0,
    max_samples: int = MAX_RUN_SAMPLES,
) -> None:
    """Sample ``stats`` and ``limiter`` into ``path`` until cancelled (see the module docstring).

    A run that made no API call (an already finished campaign) leaves the file as it was.
    """
    runs, earlier = await anyio.to_thread.run_sync(read_timeline, path)
    run = await anyio.to_thread.run_sync(_with_sha256, run)
    index = len(runs)
    samples: list[Sample] = []
    step = interval_s
    last_flush = time.monotonic()

    async def flush() -> None:
        if stats.calls() == 0:
            return
        ended = replace(run, ended=time.time())
        kept = thin(earlier, max(1, MAX_FILE_SAMPLES - len(samples)))
        await anyio.to_thread.run_sync(write_timeline, path, [*runs, ended], [*kept, *samples])

    try:
        while True:
            samples.append(_take(stats, limiter, index))
            if len(samples) > max_samples:
                samples = thin(samples, max_samples // 2)
                step *= 2
            if time.monotonic() - last_flush >= flush_s:
                last_flush = time.monotonic()
                await flush()
            await anyio.sleep(step)
    finally:
        with anyio.CancelScope(shield=True):
            samples.append(_take(stats, limiter, index))
            await flush()
