"""``python -m bench`` (``make bench``, ``make bench-quick``): the benchmark of record, docs/benchmarks.md."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import runner


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="benchmark: dispatch vs pgbench and HTTP ceilings, and more (docs/benchmarks.md)",
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds per scenario, for CI")
    parser.add_argument("--only", action="append", default=[], help="run only this scenario (repeatable)")
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "asyncio"),
        default="auto",
        help="auto: wrk, installed if missing",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="uvicorn processes of the service (WORKERS); default 2"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the run's logs and work files")
    args = parser.parse_args(argv)
    return runner.main(args.quick, args.only, args.loadgen, args.out, args.keep, args.workers)


if __name__ == "__main__":
    sys.exit(main())
