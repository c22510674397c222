"""Nested rates in the daemon: two campaigns at their own rate_per_s, and jobs, under one account rate.

``bulksend serve`` (its own process) runs against the sandbox (its own process, no server limit)
with an account rate of 1,000/s. Two campaigns are submitted through the admin API, at
``rate_per_s`` 40 and 100, while a producer adds jobs to a Redis stream the daemon reads. Each
flow's emails are told apart by their sender; their creation times (the sandbox's clock) give each
one's steady rate: emails over the middle 80 % of its span. Targets: each campaign within 10 % of
its own rate, and jobs keep flowing meanwhile.

Usage::

    python -m benchmarks.flow_nested
    python -m benchmarks.flow_nested --duration-s 10 --json nested.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    BENCH_PROJECT_ID,
    SandboxProcess,
    describe_machine,
    machine_info,
    precompile,
    sandbox_client_env,
    write_recipients,
    write_report,
)
from bulksend.testing import campaign_toml, toml_document

__all__ = ["main", "scenario_nested", "steady_rate"]

ACCOUNT_RATE_PER_S = 1000.0
CAMPAIGN_RATES = (40.0, 100.0)
JOB_RATE_PER_S = 100.0
"""How fast the producer adds jobs (well inside what the account leaves)."""
TOLERANCE = 0.10
REDIS_URL = os.environ.get("BULKSEND_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TOKEN = "bench-admin-token"


def steady_rate(times: Sequence[float], trim: float = 0.1) -> float | None:
    """Emails per second over the middle of ``times`` (the first and last ``trim`` left out)."""
    ordered = sorted(times)
    if len(ordered) < 10:
        return None
    lo = int(len(ordered) * trim)
    hi = len(ordered) - 1 - lo
    span = ordered[hi] - ordered[lo]
    return (hi - lo) / span if span > 0 else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(work: Path, api_url: str, port: int, stream: str) -> Path:
    path = work / "daemon.toml"
    config = toml_document(
        {
            "api": {"api_url": api_url, "project_id": BENCH_PROJECT_ID},
            "store": {"url": "state/bulksend.db"},
            "daemon": {"data_dir": "state", "grace_s": 5},
            "sending": {"rate_per_s": ACCOUNT_RATE_PER_S, "concurrency": 64},
            "tracking": {"poll_interval_s": 1.0, "settle_s": 2},
            "admin": {"listen": f"127.0.0.1:{port}", "token": TOKEN},
            "sources": [{"kind": "redis", "url": REDIS_URL, "stream": stream, "group": "bench"}],
            "templates.welcome": {
                "from": {"email": "jobs@example.com", "name": "Jobs"},
                "subject": "Welcome {{ first_name }}",
                "text": "Hi {{ first_name }}",
            },
        }
    )
    path.write_text(config, encoding="utf-8")
    return path


def _campaign_toml(cid: str, rate: float) -> str:
    return campaign_toml(
        cid,
        campaign={
            "from": {"email": f"{cid}@example.com", "name": "Bench"},
            "text": "Hi {{ first_name }} from {{ city }}",
        },
        sending={"rate_per_s": rate, "concurrency": 32},
    )


def _admin(url: str, method: str, path: str, body: bytes | None = None, ctype: str = "") -> Any:
    req = urllib.request.Request(url + path, data=body, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    if ctype:
        req.add_header("Content-Type", ctype)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=60) as resp:
        return orjson.loads(resp.read())


def _submit(url: str, cid: str, rate: float, recipients: Path) -> None:
    boundary = uuid.uuid4().hex
    parts = [
        (f'--{boundary}\r\nContent-Disposition: form-data; name="campaign"\r\n\r\n').encode()
        + _campaign_toml(cid, rate).encode()
        + b"\r\n",
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="recipients"; filename="people.csv"\r\n'
            "Content-Type: text/csv\r\n\r\n"
        ).encode()
        + recipients.read_bytes()
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    _admin(url, "POST", "/v1/campaigns", b"".join(parts), f"multipart/form-data; boundary={boundary}")


def _produce(stream: str, n: int, rate: float, stop: threading.Event) -> int:
    """Add ``n`` jobs to the Redis stream at ``rate`` per second; returns how many were added."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    start = time.monotonic()
    added = 0
    try:
        while added < n and not stop.is_set():
            due = start + added / rate
            if due > time.monotonic():
                stop.wait(due - time.monotonic())
            job = {
                "version": 1,
                "template": "welcome",
                "idempotency_key": f"bench-{stream}-{added}",
                "recipient": {"email": f"job{added}@example.com"},
                "variables": {"first_name": "Ann"},
                "results": False,
            }
            client.xadd(stream, {"body": orjson.dumps(job)})
            added += 1
    finally:
        client.close()
    return added


async def _created_times(api_url: str, work: Path, senders: Sequence[str]) -> dict[str, list[float]]:
    """Creation times (the sandbox's clock) of every email, by sender, through TEM's list call."""
    from bulksend.secret import Secret
    from bulksend.tem.client import TemClient
    from bulksend.tem.config import TemSettings
    from bulksend.tem.models import ListEmailsQuery

    env = sandbox_client_env(api_url, work)
    settings = TemSettings(
        secret_key=Secret(env["SCW_SECRET_KEY"]), project_id=BENCH_PROJECT_ID, api_url=api_url
    )
    out: dict[str, list[float]] = {}
    async with TemClient(settings) as tem:
        for sender in senders:
            times: list[float] = []
            page = 1
            while True:
                result = await tem.list_emails(ListEmailsQuery(mail_from=sender), page=page, page_size=1000)
                times += [e.created_at.timestamp() for e in result.emails if e.created_at is not None]
                if len(result.emails) < 1000:
                    break
                page += 1
            out[sender] = times
    return out


def scenario_nested(duration_s: float = 20.0, *, quiet: bool = True) -> dict[str, Any]:
    """Run scenario 4 once; returns the figures and a PASS/FAIL per target."""
    precompile()
    work = Path(tempfile.mkdtemp(prefix="bulksend-bench-nested-"))
    stream = f"bulksend:bench:{uuid.uuid4().hex[:8]}"
    daemon: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    try:
        with SandboxProcess(final_after_s=0.2) as sandbox:
            port = _free_port()
            admin_url = f"http://127.0.0.1:{port}"
            config = _config(work, sandbox.url, port, stream)
            env = sandbox_client_env(sandbox.url, work)
            with open(work / "daemon.log", "wb") as log_file:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "bulksend.cli", "serve", "--config", str(config)],
                    env=env,
                    cwd=work,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + 60
            while True:
                try:
                    _admin(admin_url, "GET", "/healthz")
                    break
                except OSError:
                    if daemon.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            "the daemon did not start: " + (work / "daemon.log").read_text()[-2000:]
                        ) from None
                    time.sleep(0.1)  # polling the admin API for start-up, bounded by the deadline
            counts = {f"c{rate:g}": round(rate * duration_s) for rate in CAMPAIGN_RATES}
            jobs_n = round(JOB_RATE_PER_S * duration_s * 1.5)
            producer_result: list[int] = []
            producer = threading.Thread(
                target=lambda: producer_result.append(_produce(stream, jobs_n, JOB_RATE_PER_S, stop)),
                daemon=True,
            )
            producer.start()
            for (cid, n), rate in zip(counts.items(), CAMPAIGN_RATES, strict=True):
                path = work / f"{cid}.csv"
                write_recipients(path, n, prefix=cid)
                _submit(admin_url, cid, rate, path)
            if not quiet:
                print(f"submitted {counts} and jobs at {JOB_RATE_PER_S:g}/s to {admin_url}", flush=True)
            deadline = time.monotonic() + 10 * duration_s + 120
            while True:
                done = all(
                    _admin(admin_url, "GET", f"/v1/campaigns/{cid}")["state"] == "finished" for cid in counts
                )
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.5)  # polling campaign states, bounded by the deadline
            stop.set()
            producer.join(timeout=30)
            senders = [f"{cid}@example.com" for cid in counts] + ["jobs@example.com"]
            times = asyncio.run(_created_times(sandbox.url, work, senders))
            stats = sandbox.stats()
    finally:
        stop.set()
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
        _drop_stream(stream)

    campaigns: list[dict[str, Any]] = []
    for (cid, n), rate in zip(counts.items(), CAMPAIGN_RATES, strict=True):
        created = times[f"{cid}@example.com"]
        steady = steady_rate(created)
        campaigns.append(
            {
                "campaign": cid,
                "rate_per_s": rate,
                "emails": n,
                "created": len(created),
                "steady_rate_per_s": steady,
                "pass": steady is not None and abs(steady - rate) <= TOLERANCE * rate and len(created) == n,
            }
        )
    # Jobs while the campaigns ran: the window from the first campaign email to the last one.
    window = [t for c in counts for t in times[f"{c}@example.com"]]
    jobs = times["jobs@example.com"]
    in_window = [t for t in jobs if window and min(window) <= t <= max(window)]
    window_s = (max(window) - min(window)) if window else 0.0
    jobs_rate = len(in_window) / window_s if window_s > 0 else None
    return {
        "machine": machine_info(),
        "account_rate_per_s": ACCOUNT_RATE_PER_S,
        "duration_s": duration_s,
        "campaigns": campaigns,
        "jobs_produced": producer_result[0] if producer_result else 0,
        "jobs_sent": len(jobs),
        "jobs_rate_during_campaigns_per_s": jobs_rate,
        "jobs_offered_rate_per_s": JOB_RATE_PER_S,
        "requests": stats["requests"],
        "rate_limited": stats["rate_limited"],
        "pass": all(c["pass"] for c in campaigns) and bool(jobs_rate and jobs_rate > 0.5 * JOB_RATE_PER_S),
    }


def _drop_stream(stream: str) -> None:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        client.delete(stream)
        client.close()
    except Exception as exc:  # cleanup of a benchmark's stream: report, never fail the run
        print(f"note: could not delete the Redis stream {stream}: {exc}", file=sys.stderr)


def format_report(result: dict[str, Any]) -> str:
    """The figures and the PASS/FAIL lines, as printed."""
    lines = [describe_machine(result["machine"]), f"account rate {result['account_rate_per_s']:g}/s"]
    for c in result["campaigns"]:
        steady = c["steady_rate_per_s"]
        shown = f"{steady:.1f}/s = {steady / c['rate_per_s']:.1%}" if steady else "not measured"
        lines.append(
            f"{'PASS' if c['pass'] else 'FAIL'}: campaign at rate_per_s {c['rate_per_s']:g}: steady {shown} "
            f"of its rate ({c['created']:,}/{c['emails']:,} emails)"
        )
    jobs_rate = result["jobs_rate_during_campaigns_per_s"]
    lines.append(
        f"{'PASS' if jobs_rate and jobs_rate > 0.5 * JOB_RATE_PER_S else 'FAIL'}: jobs meanwhile "
        + (f"{jobs_rate:.1f}/s" if jobs_rate else "none")
        + f" (offered {result['jobs_offered_rate_per_s']:g}/s; {result['jobs_sent']:,} sent in all)"
    )
    lines.append(f"429s: {result['rate_limited']}; requests: {result['requests']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flow_nested", description=__doc__.splitlines()[0])
    p.add_argument("--duration-s", type=float, default=20.0, help="each campaign has rate × duration emails")
    p.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    args = p.parse_args(argv)
    result = scenario_nested(args.duration_s, quiet=False)
    write_report(format_report(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
