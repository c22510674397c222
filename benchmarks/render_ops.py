"""CPU per recipient of turning a recipients-file row into a ready-to-POST request body.

Three in-process measurements over a generated campaign (the one ``benchmarks.compare`` sends:
subject, text and HTML templates each using ``first_name``, ``city`` and ``code``):

- **read**: :func:`bulksend.campaign.recipients.iter_recipients` alone, every row of the file;
- **render**: :meth:`bulksend.campaign.render.Renderer.render` alone, over rows read beforehand (the
  correlation references are built beforehand too: they are the runner's, not the renderer's);
- **both**: reading and rendering each row, as ``bulksend send`` does before it stores a row.

``--templates jinja`` adds a filter and a condition to every template (``{{ first_name | title }}``,
``{% if code %}…{% endif %}``), so that each is rendered by Jinja rather than by joining text and
values: the cost of a campaign whose templates go beyond ``{{ name }}``.

Each figure is process CPU time (``time.process_time``, so other work on the machine does not
count) divided by the number of rows; each is run ``--repeat`` times and the median is reported.

Usage::

    python -m benchmarks.render_ops --rows 20000
    python -m benchmarks.render_ops --rows 20000 --format jsonl --repeat 5 --json render_ops.json
    python -m benchmarks.render_ops --rows 20000 --templates jinja
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from benchmarks.common import BENCH_PROJECT_ID, write_campaign, write_raw

__all__ = ["main", "run_render_ops"]


def _cpu_us_per_row(fn: Callable[[], int], repeat: int) -> tuple[float, list[float]]:
    """Median (and every run) of ``fn``'s process CPU time per row it reports, in µs."""
    runs: list[float] = []
    for _ in range(repeat):
        gc.collect()
        start = time.process_time()
        rows = fn()
        elapsed = time.process_time() - start
        runs.append(elapsed * 1e6 / max(rows, 1))
    return statistics.median(runs), runs


def _use_jinja_features(toml: Path) -> None:
    """Give every template of the generated campaign a filter and a condition."""
    text = toml.read_text(encoding="utf-8")
    text = text.replace("{{ first_name }}", "{{ first_name | title }}")
    text = text.replace("{{ code }}", "{% if code %}{{ code }}{% else %}none{% endif %}")
    toml.write_text(text, encoding="utf-8")


def run_render_ops(
    rows: int,
    *,
    fmt: Literal["csv", "jsonl"] = "csv",
    templates: Literal["plain", "jinja"] = "plain",
    repeat: int = 3,
) -> dict[str, Any]:
    """Measure read, render and both over ``rows`` generated recipients; returns the figures."""
    from bulksend.campaign.load import load_campaign
    from bulksend.campaign.recipients import BadRow, RecipientInput, iter_recipients
    from bulksend.campaign.render import Rejection, Renderer
    from bulksend.pipeline.run import correlation_of

    with tempfile.TemporaryDirectory(prefix="bulksend-render-ops-") as tmp:
        toml = write_campaign(Path(tmp), rows, fmt=fmt)
        if templates == "jinja":
            _use_jinja_features(toml)
        campaign = load_campaign(toml)
        renderer = Renderer(campaign, project_id=BENCH_PROJECT_ID)
        path = campaign.recipients
        cid = campaign.id

        records: list[RecipientInput] = []
        for rec in iter_recipients(path):
            if isinstance(rec, BadRow):
                raise ValueError(f"generated recipient row {rec.row} is bad: {rec.reason}")
            records.append(rec)
        prepared = [(r.email, r.name, r.vars, correlation_of(cid, r.row)) for r in records]
        # Every generated row must render: a rejection would be a much cheaper (and wrong) path.
        for email, name, variables, correlation in prepared:
            result = renderer.render(email, name, variables, correlation=correlation)
            if isinstance(result, Rejection):
                raise ValueError(f"generated recipient {email} is rejected: {result.reason}")

        def read() -> int:
            n = 0
            for _ in iter_recipients(path):
                n += 1
            return n

        def render() -> int:
            r = renderer.render
            for email, name, variables, correlation in prepared:
                r(email, name, variables, correlation=correlation)
            return len(prepared)

        def both() -> int:
            r = renderer.render
            n = 0
            for rec in iter_recipients(path):
                if isinstance(rec, BadRow):
                    continue
                r(
                    rec.email,
                    rec.name,
                    rec.vars,
                    correlation=correlation_of(cid, rec.row),
                    attachments=rec.attachments,
                )
                n += 1
            return n

        figures: dict[str, Any] = {}
        for label, fn in (("read", read), ("render", render), ("both", both)):
            median, runs = _cpu_us_per_row(fn, repeat)
            figures[label] = {"cpu_us_per_row": round(median, 2), "runs": [round(x, 2) for x in runs]}
    return {
        "rows": rows,
        "format": fmt,
        "templates": templates,
        "repeat": repeat,
        "python": sys.version.split()[0],
        **figures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints one line per measurement."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000, help="recipients to generate (default 20000)")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="recipients file format")
    parser.add_argument(
        "--templates",
        choices=("plain", "jinja"),
        default="plain",
        help="plain: {{ name }} outputs only (default); jinja: with a filter and a condition",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is shown")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run_render_ops(args.rows, fmt=args.format, templates=args.templates, repeat=args.repeat)
    print(
        f"{result['rows']} {result['format']} rows, {result['templates']} templates, "
        f"median of {result['repeat']} (process CPU µs per row)"
    )
    for label in ("read", "render", "both"):
        fig = result[label]
        runs = ", ".join(f"{x:.2f}" for x in fig["runs"])
        print(f"  {label:<7} {fig['cpu_us_per_row']:8.2f}   (runs: {runs})")
    write_raw(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
