"""The ``simulate`` command: options, a wait for the service, the run, and its summary."""

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ..client.commands import add_arguments
from ..client.errors import ClientError
from .day import Config, NotFresh, run
from .world import World, write_gbfs


def _clock(value: str) -> int:
    hours, _, minutes = value.partition(":")
    minute = int(hours) * 60 + int(minutes or 0)
    if not 0 <= minute < 24 * 60:
        raise argparse.ArgumentTypeError("a time of day, HH:MM")
    return minute


def add_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "simulate",
        help="a day of a bike-share against a running service: ML engine, operator, vans",
        description=(
            "Runs an ML engine, an operator and vans against the service at --url, through its API only, "
            "on the stations of its registry (else on --stations made up in the Bay Area), and prints a "
            "summary checked against the service's own counts and outcomes feed. Needs a service with no "
            "open tasks or pending suggestions (a fresh database). --write-gbfs DIR writes the made-up "
            "stations as a GBFS feed for `baywheels stations import DIR` instead, and exits."
        ),
    )
    add_arguments(parser)
    parser.add_argument("--ml-key", help="key of the ML engine (default --key)")
    parser.add_argument("--operator-key", help="key of the operator (default --key)")
    parser.add_argument("--worker-key", help="key of the vans (default --key)")
    parser.add_argument(
        "--stations", type=int, default=60, help="stations made up when the registry has none (60)"
    )
    parser.add_argument(
        "--write-gbfs",
        type=Path,
        metavar="DIR",
        help="write the made-up stations (--stations, --seed) as a GBFS v2.3 feed into DIR and exit",
    )
    parser.add_argument("--vans", type=int, default=12, help="vans (12); hundreds run on one core")
    parser.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second (60)")
    parser.add_argument("--seed", type=int, default=1, help="the same seed, the same stations and demand (1)")
    parser.add_argument("--start", type=_clock, default=6 * 60, help="time of day to start, HH:MM (06:00)")
    parser.add_argument("--hours", type=float, default=16.0, help="simulated hours (16)")
    parser.add_argument("--van-kmh", type=float, default=30.0, help="van speed (30 km/h)")
    parser.add_argument("--fail-rate", type=float, default=0.04, help="share of tasks that fail at a station")
    parser.add_argument(
        "--phone-loss-rate", type=float, default=0.02, help="share of tasks whose van goes silent"
    )
    parser.add_argument("--wait-ready", type=float, default=60.0, help="seconds to wait for the service (60)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def simulate(args: argparse.Namespace) -> int:
    if args.write_gbfs is not None:
        write_gbfs(World.made_up(args.stations, args.seed, args.start), args.write_gbfs)
        print(
            f"Wrote {args.stations} made-up stations (seed {args.seed}) as a GBFS feed in {args.write_gbfs}"
        )
        return 0
    config = Config(
        url=args.url,
        ml_key=args.ml_key or args.key,
        operator_key=args.operator_key or args.key,
        worker_key=args.worker_key or args.key,
        stations=args.stations,
        vans=args.vans,
        speed=args.speed,
        seed=args.seed,
        start_minute=args.start,
        minutes=round(args.hours * 60),
        van_kmh=args.van_kmh,
        fail_rate=args.fail_rate,
        phone_loss_rate=args.phone_loss_rate,
    )
    if not _ready(config.url, args.wait_ready):
        print(f"baywheels simulate: no service ready at {config.url}/readyz", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(run(config))
    except NotFresh as exc:
        print(f"baywheels simulate: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"baywheels simulate: {exc}", file=sys.stderr)
        return 1
    except ExceptionGroup as group:  # from the actors' task group
        failures = group.subgroup(ClientError)
        if failures is None:
            raise
        print(f"baywheels simulate: {failures.exceptions[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(summary, indent=2) if args.json else render(summary), flush=True)
    return 1 if summary["violations"] else 0


def _ready(url: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            if httpx.get(f"{url.rstrip('/')}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


def render(s: dict[str, Any]) -> str:
    sug, tasks = s["suggestions"], s["tasks"]
    hours = s["simulated_minutes"] / 60
    median = s["median_suggestion_to_completion_minutes"]
    lines = [
        f"A simulated {hours:g} h ({s['wall_seconds']} s at {s['speed']:g}x): {s['stations']} stations "
        f"({s['stations_from']}), {s['vans']} vans, seed {s['seed']}",
        f"  suggestions  {sug['posted']} posted, {sug['created']} created: {sug['approved']} approved, "
        f"{sug['dismissed']} dismissed, {sug['expired']} expired, {sug['pending']} pending",
        f"  tasks        {tasks['created']} created: {tasks['completed']} done, "
        f"{tasks['canceled']} canceled, {tasks['failed']} failed, {tasks['ready']} still open",
        f"  bikes moved  {s['bikes_moved']}   median suggestion -> completion "
        + ("n/a" if median is None else f"{median:g} min"),
        f"  vans         {s['attempts_failed']} attempts failed, {s['phones_lost']} phones lost, "
        f"{s['leases_lost']} leases lost, {s['stalled_retried']} stalled tasks put back",
        f"  stations     {s['stations_ran_empty']} of {s['stations']} ran empty; {s['rides']} rides, "
        f"{s['rides_unmet']} riders found no bike",
        "  invariants   " + ("ok" if not s["violations"] else "VIOLATED: " + "; ".join(s["violations"])),
    ]
    return "\n".join(lines)
