"""The HTML report of 1,000,000 outcomes: time, CPU, peak RSS and the report's size.

Synthetic outcomes (a realistic mix: most sent, some failed with varied SMTP answers naming
addresses, hosts and ids, rejected, skipped, canceled and unknown rows, 50,000 recipient domains
with a long tail, times over a 35-minute send and a tracking tail of hours), their recipients
CSV and a recorded flow-control timeline are generated in a temporary folder. Then two
children are measured on their own (``os.wait4``):

- ``write_report``: what ``bulksend send`` does after a run (the outcomes read once, the
  resend file joined with the recipients file, the report written);
- ``bulksend report OUTCOMES --html PATH``: the command, which also prints the summary (it reads
  the file a second time for that).

Targets: the report under 2 MB, peak RSS under 200 MB (memory that does not grow with the rows).

Usage::

    python -m benchmarks.report_html                 # 1,000,000 rows
    python -m benchmarks.report_html --rows 100000 --json report.json
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    ChildResult,
    child_env,
    describe_machine,
    machine_info,
    precompile,
    run_measured,
    write_report,
)

__all__ = ["ReportOptions", "generate", "main", "run_report_benchmark"]

SIZE_TARGET_BYTES = 2 * 1024 * 1024
RSS_TARGET_MB = 200.0
T0 = 1_780_000_000.0

_BIG_DOMAINS = [
    ("gmail.com", 0.30),
    ("outlook.com", 0.10),
    ("hotmail.com", 0.06),
    ("yahoo.com", 0.06),
    ("orange.fr", 0.05),
    ("free.fr", 0.04),
    ("icloud.com", 0.03),
    ("gmx.de", 0.03),
    ("laposte.net", 0.02),
    ("web.de", 0.02),
]
_FAILURES = [
    (("hard_bounce", "mailbox_not_found"), 550, "5.1.1 <{email}>: Recipient address rejected: User unknown"),
    (
        ("hard_bounce", "mailbox_not_found"),
        550,
        "5.1.1 The email account that you tried to reach does not exist. "
        "https://support.google.com/mail/?p=NoSuchUser {qid} - gsmtp",
    ),
    (("mailbox_full",), 552, "5.2.2 <{email}>: Mailbox full, quota exceeded (queue id {qid})"),
    (("spam",), 554, "5.7.1 Service unavailable; client host [{ip}] blocked using zen.spamhaus.org"),
    (("soft_bounce",), 421, "4.7.0 [TSS04] Messages from {ip} temporarily deferred; see mx{n}.example.net"),
    (("blocklisted",), None, "recipient is blocklisted"),
]
_REJECTIONS = [
    "invalid recipient address: '{email}' is not a valid email address",
    "missing template variable 'city' in the subject template; add a 'city' column/key for this "
    "recipient or use {{{{ city | default('') }}}}",
    "the line has {n} values but the header has 4 columns; a value containing commas must be wrapped "
    "in double quotes",
]


@dataclass
class ReportOptions:
    """What to run; the defaults are the benchmark's."""

    rows: int = 1_000_000
    seed: int = 7
    timeout_s: float = 1800.0
    quiet: bool = False
    keep: Path | None = None
    """Copy the generated report and resend file here (to look at them)."""


def _domain(rng: random.Random) -> str:
    x = rng.random()
    for name, share in _BIG_DOMAINS:
        if x < share:
            return name
        x -= share
    # The long tail: 50,000 company domains, a few of them large.
    return f"company{min(49_999, int(rng.paretovariate(0.6)) - 1)}.example"


def _line(i: int, rng: random.Random) -> tuple[dict[str, Any], tuple[str, str, str, str]]:
    row = i + 2  # line 1 of the recipients CSV is its header
    email = f"user{i}@{_domain(rng)}"
    name = f"Person {i}"
    submitted = T0 + i / 480 + rng.random()
    out: dict[str, Any] = {
        "email": email,
        "name": name,
        "row": row,
        "status": "sent",
        "email_id": f"{i:08x}-0000-4000-8000-000000000000",
        "message_id": f"{i:08x}-1111-4000-8000-000000000000",
        "flags": [],
        "status_details": "250 2.0.0 OK",
        "smtp_code": 250,
        "smtp_message": "2.0.0 OK",
        "try_count": 1,
        "submitted_at": None,
        "final_at": None,
        "attempts": 2 if rng.random() < 0.01 else 1,
        "reason": None,
    }
    took = rng.lognormvariate(0.7, 0.8)
    x = rng.random()
    if x < 0.03:
        flags, code, text = _FAILURES[rng.randrange(len(_FAILURES))]
        message = text.format(
            email=email, qid=f"{rng.getrandbits(40):010X}", ip=_ip(rng), n=rng.randrange(1, 40)
        )
        out.update(status="failed", flags=list(flags), smtp_code=code, smtp_message=message if code else None)
        out["status_details"] = f"{code} {message}" if code else message
        if "soft_bounce" in flags or "mailbox_full" in flags:
            out["try_count"] = rng.randrange(2, 9)
            took = rng.uniform(600, 259_200)
        elif flags == ("blocklisted",):
            out["try_count"], took = 0, 0.05
    elif x < 0.04:
        reason = _REJECTIONS[rng.randrange(len(_REJECTIONS))].format(email=email, n=rng.randrange(5, 9))
        out.update(status="rejected", reason=reason, email_id=None, message_id=None, status_details=None)
        out.update(smtp_code=None, smtp_message=None, try_count=0, attempts=0)
        return out, (email, name, f"P{i}", "pro")
    elif x < 0.045:
        out.update(status="skipped", reason=f"duplicate of row {rng.randrange(2, row + 1)}", email_id=None)
        out.update(
            message_id=None, status_details=None, smtp_code=None, smtp_message=None, try_count=0, attempts=0
        )
        return out, (email, name, f"P{i}", "pro")
    elif x < 0.05:
        out.update(status="unknown", status_details=None, smtp_code=None, smtp_message=None, try_count=0)
        out["reason"] = "still not final at TEM 259200 s after submission (tracking.give_up_after_s)"
        out["submitted_at"] = _iso(submitted)
        return out, (email, name, f"P{i}", "team")
    elif x < 0.052:
        out.update(status="canceled", reason="canceled with its campaign before it was sent", email_id=None)
        out.update(
            message_id=None, status_details=None, smtp_code=None, smtp_message=None, try_count=0, attempts=0
        )
        return out, (email, name, f"P{i}", "free")
    elif x < 0.06:
        out.update(flags=["soft_bounce"], try_count=2)
        took += rng.uniform(300, 3600)
    out["submitted_at"] = _iso(submitted)
    out["final_at"] = _iso(submitted + took)
    return out, (email, name, f"P{i}", "pro")


def _ip(rng: random.Random) -> str:
    return ".".join(str(rng.randrange(1, 255)) for _ in range(4))


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def generate(folder: Path, rows: int, *, seed: int = 7) -> tuple[Path, Path]:
    """Write ``rows`` synthetic outcomes, their recipients CSV and a timeline; returns the
    outcomes and recipients paths."""
    from bulksend.reporting.files import timeline_path
    from bulksend.reporting.timeline import MAX_RUN_SAMPLES, RunInfo, Sample, thin, write_timeline

    rng = random.Random(seed)
    outcomes, recipients = folder / "outcomes.jsonl", folder / "recipients.csv"
    with open(outcomes, "wb") as out, open(recipients, "w", encoding="utf-8", newline="") as people:
        writer = csv.writer(people)
        writer.writerow(["email", "name", "first_name", "plan"])
        chunk = bytearray()
        for i in range(rows):
            line, person = _line(i, rng)
            chunk += orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
            writer.writerow(person)
            if len(chunk) > 1 << 20:
                out.write(chunk)
                chunk.clear()
        out.write(chunk)
    seconds = max(2, int(rows / 480))
    samples = [
        Sample(
            t=T0 + s,
            run=0,
            submitted=min(rows, s * 480),
            final=min(rows, max(0, s - 3) * 470),
            failed=min(rows, s * 14),
            throttled=s // 40 * 25,
            trips=1 if s > seconds // 2 else 0,
            limit_per_s=520.0 - 40 * ((s // 40) % 2),
            measured_per_s=470.0 + (s * 7919) % 40,
            in_flight=64,
            circuit="closed",
        )
        for s in range(seconds)
    ]
    run = RunInfo("bench", "News <news@example.com>", str(recipients.resolve()), None, T0, T0 + seconds)
    write_timeline(timeline_path(outcomes), [run], thin(samples, MAX_RUN_SAMPLES))
    return outcomes, recipients


def _child(outcomes: Path, html: Path, recipients: Path) -> int:
    """The measured child: what ``bulksend send`` does after a run."""
    from bulksend.reporting.files import write_report as write_html
    from bulksend.reporting.html import ReportMeta

    files = write_html(outcomes, html, meta=ReportMeta(campaign_id="bench", recipients=str(recipients)))
    print(orjson.dumps({"rows": files.rows, "bytes": files.bytes, "resend_rows": files.resend_rows}).decode())
    return 0


def _figures(child: ChildResult, html: Path) -> dict[str, Any]:
    child.check("the report")
    return {
        "wall_s": round(child.wall_s, 2),
        "cpu_s": round(child.cpu_s, 2),
        "max_rss_mb": round(child.max_rss_kb / 1024, 1),
        "html_bytes": html.stat().st_size,
    }


def run_report_benchmark(opts: ReportOptions) -> dict[str, Any]:
    """Generate, measure both children, and return every figure."""
    machine = machine_info()
    precompile()
    work = Path(tempfile.mkdtemp(prefix="bulksend-bench-report-"))
    try:
        started = time.monotonic()
        outcomes, recipients = generate(work, opts.rows, seed=opts.seed)
        gen_s = time.monotonic() - started
        if not opts.quiet:
            size_mb = outcomes.stat().st_size / 1e6
            print(f"generated {opts.rows:,} outcomes ({size_mb:,.0f} MB) in {gen_s:.1f} s", flush=True)
        html = work / "outcomes.report.html"
        library = run_measured(
            [
                sys.executable,
                "-m",
                "benchmarks.report_html",
                "--child",
                str(outcomes),
                str(html),
                str(recipients),
            ],
            timeout_s=opts.timeout_s,
            env=child_env(),
        )
        written = _figures(library, html)
        written.update(orjson.loads(library.stdout.strip().splitlines()[-1]))
        resend = work / "outcomes.resend.csv"
        written["resend_bytes"] = resend.stat().st_size if resend.exists() else 0
        if opts.keep is not None:
            opts.keep.mkdir(parents=True, exist_ok=True)
            for made in (html, resend):
                if made.exists():
                    shutil.copy(made, opts.keep / made.name)
        cli_html = work / "cli.html"
        command = run_measured(
            [sys.executable, "-m", "bulksend.cli", "report", str(outcomes), "--html", str(cli_html)],
            timeout_s=opts.timeout_s,
            env=child_env(),
        )
        from_cli = _figures(command, cli_html)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    biggest = max(written["html_bytes"], from_cli["html_bytes"])
    rss = max(written["max_rss_mb"], from_cli["max_rss_mb"])
    return {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "machine": machine,
        "generate_s": round(gen_s, 1),
        "write_report": written,
        "report_command": from_cli,
        "targets": [
            {"target": "report under 2 MB", "value": biggest, "pass": biggest < SIZE_TARGET_BYTES},
            {"target": f"peak RSS under {RSS_TARGET_MB:.0f} MB", "value": rss, "pass": rss < RSS_TARGET_MB},
        ],
    }


def format_report(result: dict[str, Any]) -> str:
    """The benchmark's figures as text."""
    rows = result["write_report"]["rows"]
    lines = [
        f"HTML report of {rows:,} outcomes",
        describe_machine(result["machine"]),
        f"{'':34} {'wall':>8} {'CPU':>8} {'peak RSS':>10} {'report':>10}",
    ]
    for label, key in (
        ("write_report (end of send)", "write_report"),
        ("bulksend report --html", "report_command"),
    ):
        f = result[key]
        lines.append(
            f"{label:34} {f['wall_s']:>7.1f}s {f['cpu_s']:>7.1f}s {f['max_rss_mb']:>7.1f} MB "
            f"{f['html_bytes'] / 1024:>7.0f} KB"
        )
    w = result["write_report"]
    lines.append(
        f"per row: {w['cpu_s'] / max(1, rows) * 1e6:.1f} µs of CPU; resend file: {w['resend_rows']:,} rows, "
        f"{w['resend_bytes'] / 1e6:.1f} MB"
    )
    for t in result["targets"]:
        lines.append(f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {t['value']:,}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["--child"]:
        return _child(Path(words[1]), Path(words[2]), Path(words[3]))
    p = argparse.ArgumentParser(prog="python -m benchmarks.report_html", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout-s", type=float, default=1800.0)
    p.add_argument("--keep", type=Path, default=None, help="copy the report and the resend file here")
    p.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    args = p.parse_args(words)
    result = run_report_benchmark(
        ReportOptions(rows=args.rows, seed=args.seed, timeout_s=args.timeout_s, keep=args.keep)
    )
    write_report(format_report(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
