"""How throughput scales with workers: 1, 2 and 4 `bulksend send --worker` processes on one
campaign (PostgreSQL store, Redis-shared limiter), no rate cap anywhere.

    python -m benchmarks.scale_workers --recipients 10000 --workers 1 2 4

Prints emails/s per worker count (from TEM's creation times of the emails, first to last) and
the wall time including start-up and tracking to the end. Needs PostgreSQL and Redis on
localhost (BULKSEND_TEST_PG / BULKSEND_TEST_REDIS override the URLs).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

import anyio

from scripts.scale import run_scale


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=64, help="per worker")
    args = parser.parse_args()
    print(f"{'workers':>7} {'emails/s':>9} {'wall s':>7} {'dupes':>5} {'missing':>7}")
    for workers in args.workers:
        with tempfile.TemporaryDirectory(prefix="bulksend-scale-") as tmp:
            run = functools.partial(
                run_scale,
                Path(tmp),
                workers=workers,
                recipients=args.recipients,
                rate_per_s=1_000_000,
                concurrency=args.concurrency,
                kill=False,
                rate_limited=False,
                timeout_s=900,
            )
            result = anyio.run(run)
        print(
            f"{workers:>7} {result.achieved_rate_per_s:>9.0f} {result.wall_s:>7.1f} "
            f"{result.duplicates:>5} {result.missing:>7}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
