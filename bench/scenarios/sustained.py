"""Sustained dispatch: minutes of dispatch over a large backlog. Does the rate hold as dead tuples pile up,
and does the ready index's work per dispatch stay flat?"""

import asyncio
import contextlib
import time
from datetime import timedelta
from typing import Any

import msgspec

from ..context import Context, DispatchCheck, LoadSummary, check_dispatch, measure, pool_size
from ..fmt import num
from .dispatch import Ladder


class Sustained(msgspec.Struct, kw_only=True):
    connections: int
    duration_s: float
    backlog: int
    window_s: float
    first_window_rate: float  # dispatches per second over the first window_s
    last_window_rate: float
    last_over_first: float
    rate_series: list[float]  # dispatches per second in each bucket
    rate_series_bucket_s: float
    ready_idx_blocks_per_dispatch_first: float
    ready_idx_blocks_per_dispatch_last: float
    samples: list[dict[str, Any]]  # bench_queue_stats over the run, ``at`` in ISO 8601
    run: LoadSummary
    invariant: DispatchCheck


async def run(ctx: Context) -> Sustained:
    """Dispatch for minutes over a large backlog: does the rate hold as dead tuples pile up?"""
    cfg = ctx.cfg
    c = cfg.sustained_connections
    # A backlog that lasts the run at the rate the ladder measured at this concurrency, if it ran.
    ladder = ctx.results.get("dispatch")
    point = ladder.points.get(c) if isinstance(ladder, Ladder) else None
    measured = point.service.rate if point is not None else 0
    backlog = max(cfg.sustained_backlog, int(measured * cfg.sustained_duration * 1.5))
    ctx.say(f"sustained: {cfg.sustained_duration:g} s of dispatch at c={c} over {backlog:,} ready tasks")
    name = await ctx.server.template(f"sustained_{int(time.time())}", backlog)
    url = ctx.server.url(name)
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    interval = cfg.sustained_window / 6

    async def sample() -> None:
        while not stop.is_set():
            samples.append(dict(await ctx.server.fetchrow(url, "bench_queue_stats")))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async with ctx.service(url, pool_size(c)) as svc:
        sampler = asyncio.create_task(sample())
        try:
            load, cpu, rss = await measure(ctx, svc, "dispatch", c, cfg.sustained_duration)
        finally:
            stop.set()
            await sampler
    samples.append(dict(await ctx.server.fetchrow(url, "bench_queue_stats")))
    window = cfg.sustained_window
    start, end, first, last, span = await ctx.server.fetchrow(url, "bench_dispatch_window", window)
    bucket = max(1.0, window / 3)
    rows = await ctx.server.fetch(url, "bench_dispatch_rate", bucket)
    # The last bucket is cut short by the end of the run.
    series = [row["dispatched"] / bucket for row in rows[:-1]]

    async def blocks_per_dispatch(lo: Any, hi: Any) -> float:
        a = min(samples, key=lambda s: abs((s["at"] - lo).total_seconds()))
        b = min(samples, key=lambda s: abs((s["at"] - hi).total_seconds()))
        n = (await ctx.server.fetchrow(url, "bench_dispatched_between", a["at"], b["at"]))[0]
        return (b["ready_idx_blocks"] - a["ready_idx_blocks"]) / n if n else 0.0

    early = await blocks_per_dispatch(start, start + timedelta(seconds=window))
    late = await blocks_per_dispatch(end - timedelta(seconds=window), end)
    invariant = await check_dispatch(ctx, "sustained", url, load.seen, c, backlog)
    keep = last / first if first else 0.0
    tail = samples[-1]
    ctx.say(
        f"  first {window:g} s {num(first / window)}/s, last {window:g} s {num(last / window)}/s "
        f"({100 * keep:.0f} %) over {span:.0f} s; ready-index blocks per dispatch {early:.1f} -> {late:.1f}; "
        f"dead tuples {tail['n_dead_tup']:,}, autovacuums {tail['autovacuum_count']}; "
        f"404s {load.result.count(404)}"
    )
    ctx.say("  dispatches/s per " + f"{bucket:g} s: " + " ".join(f"{r:.0f}" for r in series))
    await ctx.server.drop(url)
    return Sustained(
        connections=c,
        duration_s=cfg.sustained_duration,
        backlog=backlog,
        window_s=window,
        first_window_rate=first / window,
        last_window_rate=last / window,
        last_over_first=keep,
        rate_series=series,
        rate_series_bucket_s=bucket,
        ready_idx_blocks_per_dispatch_first=early,
        ready_idx_blocks_per_dispatch_last=late,
        samples=[{k: (v.isoformat() if k == "at" else v) for k, v in s.items()} for s in samples],
        run=LoadSummary.of(load, cpu, rss),
        invariant=invariant,
    )
