"""``baywheels worker``: a command-line field worker, the smallest real user of ``Worker``."""

import argparse
import asyncio
import os
import sys

from ..models import Position
from .errors import ClientError, LeaseLost
from .worker import MAX_WAIT, Worker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every client command shares: where the service is and the key to show it."""
    parser.add_argument(
        "--url",
        default=os.environ.get("BAYWHEELS_URL", "http://127.0.0.1:8000"),
        help="the service (BAYWHEELS_URL)",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("BAYWHEELS_KEY"),
        help="API key, sent as a bearer token (BAYWHEELS_KEY)",
    )


def add_worker_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "worker", help="take tasks one after another, print each, complete it after --delay"
    )
    add_arguments(parser)
    parser.add_argument("--worker-id", required=True, help="this worker's id (a van)")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds of 'work' per task (default 2)")
    parser.add_argument(
        "--wait", type=float, default=20.0, help=f"long-poll seconds per request (<= {MAX_WAIT:g})"
    )
    parser.add_argument("--lease", type=int, help="lease seconds (default: the service's TASK_LEASE_SECONDS)")
    parser.add_argument("--count", type=int, help="stop after this many tasks (default: never)")
    parser.add_argument(
        "--at",
        type=_position,
        metavar="LAT,LON",
        help="where the van is, sent with each call: the service hands it the nearest task it can carry",
    )
    parser.add_argument("--load", type=int, help="bikes on the van (with --at)")


def _position(value: str) -> tuple[float, float]:
    lat, _, lon = value.partition(",")
    try:
        return float(lat), float(lon)
    except ValueError:
        raise argparse.ArgumentTypeError("a position, LAT,LON (37.7786,-122.3893)") from None


async def _work(args: argparse.Namespace) -> None:
    here = None if args.at is None else Position(lat=args.at[0], lon=args.at[1], load=args.load)
    async with Worker(
        args.url, args.key, args.worker_id, lease_seconds=args.lease, position=lambda: here
    ) as worker:
        done = 0
        while args.count is None or done < args.count:
            try:
                async with worker.next_task(wait=args.wait) as task:
                    route = f"from station {task.from_station_id} to {task.to_station_id}"
                    why = task.reason or "no reason given"
                    print(
                        f"task {task.id}: {task.qty} bikes {route} ({why}), attempt {task.attempts + 1}",
                        flush=True,
                    )
                    await asyncio.sleep(args.delay)
            except LeaseLost as lost:
                print(f"task {lost.task_id}: lost ({lost.detail})", flush=True)
            else:
                print(f"task {task.id}: completed", flush=True)
            done += 1


def worker(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_work(args))
    except KeyboardInterrupt:
        print("stopped (the task in hand, if any, was given back)", file=sys.stderr)
        return 130
    except ClientError as exc:
        print(f"baywheels worker: {exc}", file=sys.stderr)
        return 1
    return 0
