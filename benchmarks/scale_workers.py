"""How throughput scales with workers: 1, 2 and 4 `bulksend send --worker` processes on one
campaign (PostgreSQL store, Redis-shared limiter), no rate cap anywhere.

    python -m benchmarks.scale_workers --recipients 10000 --workers 1 2 4
    python -m benchmarks.scale_workers --recipients 6000 --kills 5 --rate 200 --concurrency 32

Prints emails/s per worker count (from TEM's creation times of the emails, first to last) and
the wall time including start-up and tracking to the end. Needs PostgreSQL and Redis on
localhost (BULKSEND_TEST_PG / BULKSEND_TEST_REDIS override the URLs).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys

from scripts.common import run_in_scratch_folder
from scripts.scale import run_kills, run_scale


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=64, help="per worker")
    parser.add_argument(
        "--kills",
        type=int,
        default=0,
        help="instead: what SIGKILLs cost. 3 workers on a campaign capped at --rate, run without "
        "kills and with this many (each victim restarted), --repeat times each",
    )
    parser.add_argument("--rate", type=float, default=200, help="with --kills: the campaign's rate")
    parser.add_argument("--repeat", type=int, default=3, help="with --kills: runs of each")
    parser.add_argument("--lease-s", type=float, default=30.0, help="with --kills: the workers' lease")
    args = parser.parse_args()
    if args.kills:
        return _kills(args)
    print(f"{'workers':>7} {'emails/s':>9} {'wall s':>7} {'dupes':>5} {'missing':>7}")
    for workers in args.workers:
        run = functools.partial(
            run_scale,
            workers=workers,
            recipients=args.recipients,
            rate_per_s=1_000_000,
            concurrency=args.concurrency,
            kill=False,
            rate_limited=False,
            timeout_s=900,
        )
        result = run_in_scratch_folder("bulksend-scale-", run)
        print(
            f"{workers:>7} {result.achieved_rate_per_s:>9.0f} {result.wall_s:>7.1f} "
            f"{result.duplicates:>5} {result.missing:>7}",
            flush=True,
        )
    return 0


def _kills(args: argparse.Namespace) -> int:
    print(f"{'kills':>5} {'wall s':>7} {'emails':>7} {'dupes':>5} {'missing':>7} exit codes", flush=True)
    walls: dict[int, list[float]] = {0: [], args.kills: []}
    for _ in range(args.repeat):
        for kills in (0, args.kills):
            run = functools.partial(
                run_kills,
                workers=3,
                recipients=args.recipients,
                rate_per_s=args.rate,
                concurrency=args.concurrency,
                kills=kills,
                lease_s=args.lease_s,
            )
            result = run_in_scratch_folder("bulksend-kills-", run)
            walls[kills].append(result.wall_s)
            print(
                f"{kills:>5} {result.wall_s:>7.1f} {result.recipients - result.missing:>7} "
                f"{result.duplicates:>5} {result.missing:>7} {result.exit_codes}",
                flush=True,
            )
    base, killed = statistics.median(walls[0]), statistics.median(walls[args.kills])
    print(f"median wall: {base:.1f} s without kills, {killed:.1f} s with {args.kills}: x{killed / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
