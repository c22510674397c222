"""Shared pieces of the benchmarks: the sandbox as a child process, generated campaigns, and
measured child processes (wall time, CPU time and peak RSS of exactly that child).

This module is imported by the benchmark children too (the bare aiohttp floor, the SDK loops), so
it imports nothing heavy at module level: bulksend itself is only imported inside the functions
that the parent process calls, never in a child whose CPU time is being measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import orjson

__all__ = [
    "BENCH_ACCESS_KEY",
    "BENCH_PROJECT_ID",
    "BENCH_SECRET_KEY",
    "REPO_ROOT",
    "ChildResult",
    "CpuPlan",
    "SandboxProcess",
    "SendOptions",
    "Workbench",
    "add_run_arguments",
    "bulksend_command",
    "child_env",
    "cpu_model",
    "describe_machine",
    "machine_info",
    "plan_cpus",
    "precompile",
    "prepare",
    "read_proc_cpu_s",
    "read_proc_rss_kb",
    "render_bodies",
    "run_measured",
    "run_options",
    "run_sampled",
    "sampling",
    "sandbox_client_env",
    "stamped",
    "uses_uvloop",
    "workbench",
    "write_campaign",
    "write_raw",
    "write_recipients",
    "write_report",
]

REPO_ROOT = Path(__file__).resolve().parent.parent

# The sandbox only compares this with X-Auth-Token; it is not a credential. The official SDK
# refuses a secret key that is not a UUID and an access key that is not SCW + 17 characters.
BENCH_SECRET_KEY = "0a0b0c0d-1111-4222-8333-444455556666"
BENCH_ACCESS_KEY = "SCWBENCHMARKSANDBOX0"
BENCH_PROJECT_ID = "11111111-2222-4333-8444-555555555555"

SANDBOX_SECRET_ENV = "BULKSEND_SANDBOX_SECRET"  # read by `python -m bulksend.sandbox`
_T = TypeVar("_T")
_URL_RE = re.compile(r"http://[0-9A-Za-z.\-\[\]:]+:\d+")


# --------------------------------------------------------------------------------------------
# machine


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what ``platform`` knows elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def precompile() -> None:
    """Write bulksend's and the harness's bytecode caches, as ``pip install`` does for a real install.

    Otherwise, with ``PYTHONDONTWRITEBYTECODE`` set (common in containers and CI), every measured
    child would compile the package from source at start-up and count that as its own CPU.
    """
    import compileall

    for package in ("bulksend", "benchmarks"):
        compileall.compile_dir(REPO_ROOT / package, quiet=1)


def machine_info() -> dict[str, Any]:
    """What a benchmark result needs to be read against: CPUs, CPU model, memory, Python."""
    mem_gib: float | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                    break
    except OSError:
        pass
    versions: dict[str, str] = {}
    from importlib import metadata

    for dist in ("aiohttp", "uvloop", "anyio", "orjson", "scaleway", "requests"):
        with suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "arch": platform.machine(),
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "packages": versions,
        # Other work on the machine skews every figure: say how busy it was when the run began.
        "bulksend_revision": _revision(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def describe_machine(m: Mapping[str, Any]) -> str:
    """One line for a report: CPUs, CPU model, Python, bulksend revision, load at start."""
    return (
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {m.get('mem_gib')} GiB, Python {m['python']}, "
        f"{m['system']}; bulksend {m.get('bulksend_revision') or '?'}; "
        f"load average at start {m.get('load_avg_1m_at_start')}"
    )


def _revision() -> str | None:
    """The commit the measured bulksend is at, with "+changes" when bulksend/ differs from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        # --no-optional-locks: a read-only look that never rewrites the index.
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(REPO_ROOT), "diff", "--quiet", "HEAD", "--", "bulksend"],
            capture_output=True,
            timeout=10,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if dirty else "")


def uses_uvloop() -> bool:
    """Whether ``bulksend send`` runs on uvloop here (it does whenever uvloop imports)."""
    from bulksend.cli.runtime import uvloop_available

    return uvloop_available()


@dataclass(frozen=True)
class CpuPlan:
    """Which CPUs the sandbox and the measured client get (``None``: no pinning)."""

    sandbox: frozenset[int] | None
    client: frozenset[int] | None

    def describe(self) -> str:
        if self.sandbox is None or self.client is None:
            return "not pinned"
        return (
            f"sandbox on CPU {','.join(map(str, sorted(self.sandbox)))}, "
            f"client on CPU {','.join(map(str, sorted(self.client)))}"
        )


def plan_cpus(pin: bool = True) -> CpuPlan:
    """Pin the sandbox to the first allowed CPU and the client to the others, when there are 2+.

    With the server and the client on separate cores, neither steals the other's CPU and runs
    vary less; each measured client gets the same single core as every other one.
    """
    if not pin or not hasattr(os, "sched_getaffinity"):
        return CpuPlan(None, None)
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return CpuPlan(None, None)
    return CpuPlan(frozenset(allowed[:1]), frozenset(allowed[1:]))


def prepare() -> dict[str, Any]:
    """What a benchmark does first: describe the machine (:func:`machine_info`), then write the
    bytecode caches (:func:`precompile`); returns the description."""
    machine = machine_info()
    precompile()
    return machine


def _pin(pid: int, cpus: frozenset[int] | None) -> None:
    if cpus is not None and hasattr(os, "sched_setaffinity"):
        with suppress(OSError):  # the process may already be gone; pinning is best effort
            os.sched_setaffinity(pid, cpus)


def read_proc_rss_kb(pid: int) -> tuple[int, int] | None:
    """(current RSS, peak RSS) of a live process in KiB, from /proc (Linux), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    rss = re.search(r"^VmRSS:\s+(\d+)", text, re.M)
    hwm = re.search(r"^VmHWM:\s+(\d+)", text, re.M)
    if rss is None or hwm is None:
        return None
    return int(rss.group(1)), int(hwm.group(1))


def read_proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process so far, from /proc (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a benchmark child: this repo importable, loopback never proxied."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # requests (the SDK) and aiohttp honour proxy variables: the sandbox must be reached directly.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    env.setdefault("PYTHONHASHSEED", "0")
    if extra:
        env.update(extra)
    return env


def sandbox_client_env(api_url: str, work: Path) -> dict[str, str]:
    """The environment of a client of the benchmark sandbox: its URL, key, project and region.

    Every ``SCW_*`` setting bulksend reads is pinned, and ``SCW_CONFIG_PATH`` points at a file that
    does not exist, so a developer's own Scaleway profile or region never leaks into a run; the
    per-user state (the suppression list) is the run's own.
    """
    return child_env(
        {
            "SCW_SECRET_KEY": BENCH_SECRET_KEY,
            "SCW_DEFAULT_PROJECT_ID": BENCH_PROJECT_ID,
            "SCW_DEFAULT_REGION": "fr-par",
            "SCW_API_URL": api_url,
            "SCW_CONFIG_PATH": str(work / "no-scw-config.yaml"),
            # The run's own suppression list: the sandbox's bounces are nobody's real addresses,
            # and one run must not skip the recipients another one bounced.
            "XDG_STATE_HOME": str(work / "state"),
        }
    )


# --------------------------------------------------------------------------------------------
# the sandbox as its own process


class SandboxProcess:
    """``python -m bulksend.sandbox --port 0 …`` in a child process, stopped on exit.

    The key is handed over in the environment (not argv, which ``ps`` shows). Use as a context
    manager: whatever happens in the body, the process is stopped (SIGINT, then SIGKILL).
    """

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        sending_after_s: float = 0.0,
        final_after_s: float = 0.2,
        rate_limit_per_s: float | None = None,
        rate_burst: float | None = None,
        fault_5xx_before: float = 0.0,
        fault_5xx_after: float = 0.0,
        fault_drop: float = 0.0,
        seed: int | None = None,
        cpus: frozenset[int] | None = None,
        secret_key: str = BENCH_SECRET_KEY,
        project_id: str = BENCH_PROJECT_ID,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.args = [
            "--port",
            "0",
            "--project-id",
            project_id,
            "--sending-after-s",
            f"{sending_after_s:g}",
            "--final-after-s",
            f"{final_after_s:g}",
            "--latency-ms",
            f"{latency_ms:g}",
        ]
        if rate_limit_per_s is not None:
            self.args += ["--rate-limit", f"{rate_limit_per_s:g}"]
        if rate_burst is not None:
            self.args += ["--rate-burst", f"{rate_burst:g}"]
        for flag, p in (
            ("--fault-5xx-before", fault_5xx_before),
            ("--fault-5xx-after", fault_5xx_after),
            ("--fault-drop", fault_drop),
        ):
            if p:
                self.args += [flag, f"{p:g}"]
        if seed is not None:
            self.args += ["--seed", str(seed)]
        self._secret_key = secret_key
        self._cpus = cpus
        self._start_timeout_s = start_timeout_s
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def command(self) -> list[str]:
        """The command line, as run (the key is not in it)."""
        return [sys.executable, "-m", "bulksend.sandbox", *self.args]

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the sandbox is not running"
        return self.proc.pid

    def start(self) -> None:
        """Start the process and wait (bounded) for the URL it prints."""
        self._tmp = tempfile.TemporaryDirectory(prefix="bulksend-bench-sandbox-")
        out_path = Path(self._tmp.name) / "stdout"
        err_path = Path(self._tmp.name) / "stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=child_env({SANDBOX_SECRET_ENV: self._secret_key}),
                cwd=REPO_ROOT,
                start_new_session=True,  # a Ctrl-C at the terminal reaches us, and we stop it
            )
        _pin(self.proc.pid, self._cpus)
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            m = _URL_RE.search(out_path.read_text(errors="replace"))
            if m is not None:
                self.url = m.group(0)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = err_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"the sandbox did not start ({' '.join(self.command)}): {tail}")
            time.sleep(0.02)  # polling a file for the startup line, bounded by the deadline

    def stop(self) -> None:
        """Stop the process (SIGINT, then SIGKILL after 10 s) and remove its temp files."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = orjson.dumps(body) if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.url + path, method=method, data=data)
        # The inspection endpoints are on loopback: never send them through a proxy.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=30) as resp:
            return orjson.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        """``GET /_sandbox/stats`` without the per-recipient map (which is large and unused here)."""
        data: dict[str, Any] = self._call("GET", "/_sandbox/stats")
        data.pop("accepted_by_recipient", None)
        return data

    def reset(self) -> None:
        """``POST /_sandbox/reset``: forget every email and counter."""
        self._call("POST", "/_sandbox/reset")

    def full_stats(self) -> dict[str, Any]:
        """``GET /_sandbox/stats`` with the per-recipient map (duplicates are read from it)."""
        data: dict[str, Any] = self._call("GET", "/_sandbox/stats")
        return data

    def outage(self, seconds: float, status: int = 503) -> None:
        """``POST /_sandbox/outage``: every TEM request answers a bare ``status`` for ``seconds``."""
        self._call("POST", "/_sandbox/outage", {"seconds": seconds, "status": status})

    def cpu_s(self) -> float:
        """CPU seconds the sandbox process has used so far (to tell when it is the bottleneck)."""
        return (read_proc_cpu_s(self.pid) if self.proc is not None else None) or 0.0

    def rss_kb(self) -> tuple[int, int] | None:
        """(current, peak) RSS of the sandbox process in KiB."""
        return read_proc_rss_kb(self.pid) if self.proc is not None else None


# --------------------------------------------------------------------------------------------
# generated campaigns

_FIRST_NAMES = ("Ann", "Bob", "Chloé", "Dimitri", "Eve", "Farid", "Gül", "Hana", "Ivo", "Jun")
_CITIES = ("Paris", "Lyon", "Marseille", "Lille", "Nantes", "Bordeaux", "Toulouse", "Nice")


def write_recipients(
    path: Path, n: int, *, fmt: Literal["csv", "jsonl"] = "csv", prefix: str = "user"
) -> None:
    """Write ``n`` distinct recipients with three template variables, streaming (flat memory)."""
    chunk: list[str] = []
    with open(path, "w", encoding="utf-8", newline="") as f:
        if fmt == "csv":
            f.write("email,name,first_name,city,code\n")
        for i in range(n):
            first = _FIRST_NAMES[i % len(_FIRST_NAMES)]
            city = _CITIES[i % len(_CITIES)]
            email = f"{prefix}{i}@example.org"
            if fmt == "csv":
                chunk.append(f"{email},{first} Example {i},{first},{city},C{i:08d}\n")
            else:
                rec = {"email": email, "name": f"{first} Example {i}", "first_name": first, "city": city}
                rec["code"] = f"C{i:08d}"
                chunk.append(orjson.dumps(rec).decode() + "\n")
            if len(chunk) >= 10_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))


def write_campaign(
    folder: Path,
    n: int,
    *,
    fmt: Literal["csv", "jsonl"] = "csv",
    campaign_id: str = "bench",
    rate_per_s: float = 100_000,
    concurrency: int = 64,
    poll_interval_s: float = 1.0,
    give_up_after_s: float = 3600,
    settle_s: float | None = None,
) -> Path:
    """A campaign folder (TOML, recipients, ``out/``) for ``n`` recipients; returns the TOML path.

    The message uses three per-recipient variables (``first_name``, ``city``, ``code``) in the
    subject and both bodies, so every email is rendered, not copied.
    """
    folder.mkdir(parents=True, exist_ok=True)
    recipients = folder / f"recipients.{fmt}"
    write_recipients(recipients, n, fmt=fmt)
    (folder / "out").mkdir(exist_ok=True)
    toml = folder / "campaign.toml"
    toml.write_text(
        f"""[campaign]
id = "{campaign_id}"
from = {{ email = "news@example.com", name = "Example News" }}
subject = "Hello {{{{ first_name }}}}, news from {{{{ city }}}}"
text = \"\"\"Hi {{{{ first_name }}}},

Here is what happened in {{{{ city }}}} this week. Your member code is {{{{ code }}}}.

See you soon,
Example News
\"\"\"
html = \"\"\"<html><body><p>Hi {{{{ first_name }}}},</p>
<p>Here is what happened in <b>{{{{ city }}}}</b> this week. Your member code is {{{{ code }}}}.</p>
<p>See you soon,<br>Example News</p></body></html>
\"\"\"
recipients = "{recipients.name}"

[sending]
rate_per_s = {rate_per_s:g}
concurrency = {concurrency}

[tracking]
poll_interval_s = {poll_interval_s:g}
give_up_after_s = {give_up_after_s:g}
{"" if settle_s is None else f"settle_s = {settle_s:g}"}

[output]
outcomes = "out/{campaign_id}.jsonl"
""",
        encoding="utf-8",
    )
    return toml


def render_bodies(campaign_path: Path, out_path: Path, *, project_id: str = BENCH_PROJECT_ID) -> int:
    """Render every recipient of the campaign exactly as bulksend does; one JSON body per line.

    These are the request bodies the floor and the SDK loops send, so every client POSTs the
    same bytes. Returns the number of bodies written.
    """
    from bulksend.campaign.load import load_campaign
    from bulksend.campaign.recipients import BadRow, iter_recipients
    from bulksend.campaign.render import Rejection, Renderer
    from bulksend.pipeline.run import correlation_of

    campaign = load_campaign(campaign_path)
    renderer = Renderer(campaign, project_id=project_id)
    n = 0
    with open(out_path, "wb") as f:
        for rec in iter_recipients(campaign.recipients):
            if isinstance(rec, BadRow):
                raise ValueError(f"generated recipient row {rec.row} is bad: {rec.reason}")
            rendered = renderer.render(
                rec.email, rec.name, rec.vars, correlation=correlation_of(campaign.id, rec.row)
            )
            if isinstance(rendered, Rejection):
                raise ValueError(f"generated recipient {rec.email} is rejected: {rendered.reason}")
            # orjson never writes a raw newline inside a JSON document, so lines frame bodies.
            f.write(rendered.body + b"\n")
            n += 1
    return n


def bulksend_command(campaign_path: Path, *extra: str) -> list[str]:
    """``bulksend send CAMPAIGN --no-progress --log-level warning`` with this interpreter."""
    return [
        sys.executable,
        "-m",
        "bulksend.cli",
        "send",
        str(campaign_path),
        "--no-progress",
        "--log-level",
        "warning",
        *extra,
    ]


# --------------------------------------------------------------------------------------------
# measured children


@dataclass
class ChildResult:
    """How one measured child process went. CPU and RSS are that process's own (wait4)."""

    command: list[str]
    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kb: int
    timed_out: bool
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["stdout"] = self.stdout[-4000:]
        data["stderr"] = self.stderr[-4000:]
        return data

    def check(self, what: str) -> None:
        """Raise with the child's own words if it failed or timed out."""
        if self.timed_out or self.returncode != 0:
            why = "timed out" if self.timed_out else f"exited with {self.returncode}"
            raise RuntimeError(
                f"{what} {why}\n--- stdout (tail)\n{self.stdout[-3000:]}\n--- stderr (tail)\n"
                f"{self.stderr[-3000:]}"
            )


def run_measured(
    command: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    cpus: frozenset[int] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ChildResult:
    """Run ``command`` to its end, bounded by ``timeout_s``, and measure exactly that process.

    Wall time runs from just before the fork to the reaping of the child; user/sys CPU time and
    peak RSS come from ``os.wait4`` (so they are the child's own, not the sum of our children).
    After ``timeout_s`` the child's process group is killed. ``on_start(pid)``, if given, is called
    once the child runs (e.g. to start a sampler).
    """
    with tempfile.TemporaryDirectory(prefix="bulksend-bench-child-") as tmp:
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        timed_out = threading.Event()
        reaped = threading.Event()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(
                list(command),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else child_env(),
                cwd=cwd,
                start_new_session=True,  # its own group: the watchdog kills it and anything it forked
            )
        _pin(proc.pid, cpus)

        def watchdog() -> None:
            if not reaped.is_set():
                timed_out.set()
                _kill_group(proc.pid)

        timer = threading.Timer(timeout_s, watchdog)
        timer.daemon = True
        timer.start()
        status = 0
        usage: Any = None
        try:
            if on_start is not None:
                on_start(proc.pid)
            _, status, usage = os.wait4(proc.pid, 0)
            wall_s = time.perf_counter() - started
            reaped.set()
            # wait4 reaped it: tell Popen, or it would try to reap a pid that may be reused.
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            timer.cancel()
            if not reaped.is_set():  # interrupted (e.g. Ctrl-C) before the child ended
                _kill_group(proc.pid)
                proc.wait(timeout=10)
        # Anything the child left in its group is ended too: no stray processes.
        _kill_group(proc.pid)
        return ChildResult(
            command=list(command),
            returncode=proc.returncode,
            wall_s=wall_s,
            user_s=usage.ru_utime,
            sys_s=usage.ru_stime,
            max_rss_kb=usage.ru_maxrss,  # KiB on Linux
            timed_out=timed_out.is_set(),
            stdout=out_path.read_text(errors="replace"),
            stderr=err_path.read_text(errors="replace"),
        )


def run_sampled(
    command: Sequence[str],
    sample: Callable[[int, float], bool],
    *,
    interval_s: float,
    first_after_s: float = 0.0,
    join_timeout_s: float = 30.0,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    cpus: frozenset[int] | None = None,
) -> ChildResult:
    """:func:`run_measured`, with a sampler thread watching the child while it runs.

    Once the child runs, a background thread waits ``first_after_s``, then calls
    ``sample(pid, started)`` (``started``: ``time.monotonic()`` when the child was seen running)
    every ``interval_s`` until it returns False or the child ends. The thread only reads, in the
    parent process, so the child's own measurements stay its own.
    """
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start_sampler(pid: int) -> None:
        started = time.monotonic()

        def loop() -> None:
            if stop.wait(first_after_s):
                return
            while sample(pid, started) and not stop.wait(interval_s):
                pass

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)

    try:
        return run_measured(command, timeout_s=timeout_s, env=env, cwd=cwd, cpus=cpus, on_start=start_sampler)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=join_timeout_s)


@dataclass(frozen=True)
class Workbench:
    """Where a benchmark runs ``bulksend send`` against the sandbox: a scratch folder, the CPUs."""

    work: Path
    cpus: CpuPlan

    def send_sampled(
        self,
        campaign: Path,
        sandbox: SandboxProcess,
        sample: Callable[[int, float], bool],
        *,
        interval_s: float,
        timeout_s: float,
        first_after_s: float = 0.0,
        join_timeout_s: float = 30.0,
    ) -> ChildResult:
        """``bulksend send CAMPAIGN`` against ``sandbox``, from the scratch folder on the client
        CPUs, sampled while it runs (:func:`run_sampled`); raises if it fails or times out."""
        res = run_sampled(
            bulksend_command(campaign),
            sample,
            interval_s=interval_s,
            first_after_s=first_after_s,
            join_timeout_s=join_timeout_s,
            timeout_s=timeout_s,
            env=sandbox_client_env(sandbox.url, self.work),
            cwd=self.work,
            cpus=self.cpus.client,
        )
        res.check("bulksend send")
        return res


@contextmanager
def workbench(prefix: str, pin: bool = True) -> Iterator[Workbench]:
    """A :class:`Workbench`: a scratch folder named ``prefix…``, removed on the way out, and the
    CPU plan (:func:`plan_cpus`)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield Workbench(work, plan_cpus(pin))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stamped(read: Callable[[], _T], since: float) -> tuple[float, _T]:
    """``read()``, stamped halfway through the call (the value was read then), in seconds since
    the ``time.monotonic()`` value ``since``."""
    asked = time.monotonic()
    value = read()
    return (asked + time.monotonic()) / 2 - since, value


@dataclass
class SendOptions:
    """What every benchmark of ``bulksend send`` against the sandbox process is run with."""

    concurrency: int = 64
    poll_interval_s: float = 1.0
    final_after_s: float = 0.2
    """The sandbox's lifecycle: an email is final this long after its send."""
    pin: bool = True
    quiet: bool = False


def add_run_arguments(parser: argparse.ArgumentParser, clients: str = "bulksend") -> None:
    """The options every ``bulksend send`` benchmark takes: concurrency, polling, pinning, --json;
    ``clients`` names what is measured, in the help."""
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--poll-interval-s", type=float, default=1.0, help="bulksend tracking poll interval")
    parser.add_argument("--no-pin", action="store_true", help=f"do not pin the sandbox and {clients} to CPUs")
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`SendOptions` fields that :func:`add_run_arguments` parsed, as keyword arguments."""
    return {"concurrency": args.concurrency, "poll_interval_s": args.poll_interval_s, "pin": not args.no_pin}


def write_raw(raw: Any, json_path: Path | None) -> None:
    """Write a benchmark's raw numbers to ``json_path``, when given, and say where."""
    if json_path is not None:
        json_path.write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2))
        print(f"raw numbers: {json_path}")


def write_report(report: str, raw: Any, json_path: Path | None) -> None:
    """Print a benchmark's report, then :func:`write_raw`."""
    print(report)
    write_raw(raw, json_path)


def _kill_group(pgid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@contextmanager
def sampling(interval_s: float, sample: Callable[[], None]) -> Iterator[None]:
    """Call ``sample()`` every ``interval_s`` in a background thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            sample()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
