"""``python -m bulksend.sandbox``: the same as ``bulksend sandbox``."""

from __future__ import annotations

import argparse
import sys

from .cli import configure, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bulksend.sandbox", description="Run a local TEM sandbox server."
    )
    configure(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
