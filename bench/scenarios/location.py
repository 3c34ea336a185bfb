"""Location-aware dispatch beside position-less dispatch, in the same run: 100,000 ready tasks over 500
stations in the Bay Area's bounding box, at each concurrency first workers that say nothing of where they
are, then vans that each ask from a random place in the box, each run on a fresh copy of the same state,
with the exactly-once check after each.

The benchmark never completes what it dispatches. With one van per station, 500 stations would all be held
after some 250 dispatches and every later van told "nothing for you"; both runs here therefore have
ONE_VAN_PER_STATION=false: they measure the choice (the claims are still read, not written). The claim's own
cost is the dispatch ladder's, where every task has stations of its own."""

import msgspec

from ..context import Context, DispatchCheck, LoadSummary, check_dispatch, measure, pool_size
from ..fmt import cpu_text, mb, ms, num, times

STATIONS = 500
BACKLOG = 100_000
LEVELS = (16, 64, 256)
ENV = {"ONE_VAN_PER_STATION": "false"}


class LocationPoint(msgspec.Struct, kw_only=True):
    """One concurrency: the same dispatchers without, then with, a position."""

    plain: LoadSummary
    plain_invariant: DispatchCheck
    near: LoadSummary
    near_invariant: DispatchCheck
    near_over_plain: float | None


class Location(msgspec.Struct, kw_only=True):
    duration_s: float
    stations: int
    backlog: int
    one_van_per_station: bool
    points: dict[int, LocationPoint]


async def _template(ctx: Context) -> str:
    if "location" not in ctx.templates:
        name = await ctx.server.template("location")
        url = ctx.server.url(name)
        await ctx.server.execute(url, "bench_location_backlog_insert", STATIONS, BACKLOG)
        await ctx.server.execute(url, "bench_station_claims_insert")
        await ctx.server.execute(url, "bench_vacuum_analyze")
        ctx.templates["location"] = name
    return ctx.templates["location"]


async def _run(ctx: Context, mode: str, c: int, duration: float) -> tuple[LoadSummary, DispatchCheck]:
    url = await ctx.server.clone(await _template(ctx))
    async with ctx.service(url, pool_size(c), ENV) as svc:
        load, cpu, rss = await measure(ctx, svc, mode, c, duration)
    summary = LoadSummary.of(load, cpu, rss)
    label = "with a position" if mode == "dispatch_near" else "without        "
    ctx.say(
        f"  c={c:<3} {label} {num(load.result.rate()):>7} /s    {ms(load.result.latency_us)} ms   "
        f"cpu: {cpu_text(cpu)}   memory {mb(rss)}   failures {load.result.failures}"
    )
    invariant = await check_dispatch(ctx, f"location {mode} c={c}", url, load.seen, c, BACKLOG)
    await ctx.server.drop(url)
    return summary, invariant


async def run(ctx: Context) -> Location:
    """Position-less and location-aware dispatch at 16, 64 and 256 dispatchers (with --quick: at the
    ladder's top concurrency only)."""
    levels = ctx.cfg.levels[-1:] if ctx.cfg.quick else LEVELS
    duration = ctx.cfg.duration
    ctx.say(
        f"location-aware dispatch: {BACKLOG:,} ready tasks over {STATIONS} stations in the Bay Area, "
        f"{duration:g} s per run, ONE_VAN_PER_STATION=false (nothing is completed)"
    )
    points: dict[int, LocationPoint] = {}
    for c in levels:
        plain, plain_ok = await _run(ctx, "dispatch", c, duration)
        near, near_ok = await _run(ctx, "dispatch_near", c, duration)
        ratio = near.rate / plain.rate if plain.rate else None
        ctx.say(f"  c={c:<3} with a position / without {times(ratio)}")
        points[c] = LocationPoint(
            plain=plain, plain_invariant=plain_ok, near=near, near_invariant=near_ok, near_over_plain=ratio
        )
    return Location(
        duration_s=duration, stations=STATIONS, backlog=BACKLOG, one_van_per_station=False, points=points
    )
