"""The dispatch ladder: at each concurrency, the DB ceiling (pgbench running the service's own dispatch
statement), the HTTP ceiling (GET /healthz), the service (POST /dispatch/next) and, in the ladder of record,
the minimal app (``bench/peer.py``) with 1 and with 2 uvicorn workers, each on a fresh copy of the backlog,
with the exactly-once check after every run over HTTP."""

import msgspec

from .. import pgbench
from ..context import Context, DispatchCheck, LoadSummary, check_dispatch, measure, pool_size
from ..fmt import cpu_text, mb, ms, num, times
from ..stats import Latency


class DbPoint(msgspec.Struct, kw_only=True):
    """pgbench at one concurrency."""

    tps: float
    transactions: int
    failed: int
    latency_us: Latency
    cpu_percent: dict[str, float]


# uvicorn processes of the minimal app: it is measured with each, and the better of the two is the peer.
PEER_WORKERS = (1, 2)


class PeerRun(LoadSummary, kw_only=True):
    """The minimal app at one concurrency with ``workers`` uvicorn processes (its CPU is "peer")."""

    workers: int
    invariant: DispatchCheck


class Point(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One concurrency of the ladder; no HTTP ceiling and no minimal app with synchronous_commit=off."""

    db: DbPoint
    http: LoadSummary | None = None
    service: LoadSummary
    invariant: DispatchCheck
    peer: list[PeerRun] = []  # one run per PEER_WORKERS
    peer_best_workers: int | None = None  # the run with the higher rate
    service_over_peer: float | None = None  # the service's rate / that run's

    def best_peer(self) -> PeerRun | None:
        return next((run for run in self.peer if run.workers == self.peer_best_workers), None)


class Ladder(msgspec.Struct, kw_only=True):
    duration_s: float  # per point
    points: dict[int, Point]  # by concurrency


async def db_point(ctx: Context, c: int, duration: float, sync_commit: bool) -> DbPoint:
    url = await ctx.server.clone(await ctx.template("backlog", ctx.cfg.backlog), sync_commit=sync_commit)
    meter = ctx.meter(None)
    meter.start()
    result = await pgbench.run(url, c, duration, ctx.workdir, pgbench.script())
    cpu = meter.stop({"pgbench": result.cpu_seconds})
    counts = {row["status"]: row["n"] for row in await ctx.server.fetch(url, "bench_status_counts")}
    twice = (await ctx.server.fetchrow(url, "bench_assigned_twice"))[0]
    ok = counts.get("assigned", 0) == result.transactions and result.failed == 0 and twice == 0
    ctx.check(
        f"pgbench c={c}",
        ok,
        f"{result.transactions} transactions, {counts.get('assigned', 0)} tasks assigned, {twice} twice"
        + (" (the backlog ran dry)" if counts.get("ready", 0) == 0 else ""),
    )
    await ctx.server.drop(url)
    ctx.say(
        f"  c={c:<3} DB ceiling     {num(result.tps):>7} tps   {ms(result.latency_us)} ms   "
        f"cpu: {cpu_text(cpu)}"
    )
    return DbPoint(
        tps=result.tps,
        transactions=result.transactions,
        failed=result.failed,
        latency_us=result.latency_us,
        cpu_percent=cpu,
    )


async def service_point(
    ctx: Context, c: int, duration: float, sync_commit: bool, http: bool
) -> tuple[LoadSummary | None, LoadSummary, DispatchCheck]:
    """The HTTP ceiling (if ``http``), then dispatch, on one service over one fresh copy of the backlog."""
    backlog = ctx.cfg.backlog
    url = await ctx.server.clone(await ctx.template("backlog", backlog), sync_commit=sync_commit)
    ceiling = None
    async with ctx.service(url, pool_size(c)) as svc:
        if http:
            load, cpu, _ = await measure(ctx, svc, "healthz", c, duration)
            ceiling = LoadSummary.of(load, cpu)
            ctx.say(
                f"  c={c:<3} HTTP ceiling   {num(load.result.rate()):>7} /s    "
                f"{ms(load.result.latency_us)} ms   cpu: {cpu_text(cpu)}"
            )
        load, cpu, rss = await measure(ctx, svc, "dispatch", c, duration)
    service = LoadSummary.of(load, cpu, rss)
    ctx.say(
        f"  c={c:<3} service        {num(load.result.rate()):>7} /s    {ms(load.result.latency_us)} ms   "
        f"cpu: {cpu_text(cpu)}   memory {mb(rss)}   failures {load.result.failures}"
    )
    invariant = await check_dispatch(ctx, f"dispatch c={c}", url, load.seen, c, backlog)
    await ctx.server.drop(url)
    return ceiling, service, invariant


async def peer_run(ctx: Context, c: int, duration: float, sync_commit: bool, workers: int) -> PeerRun:
    """The minimal app on its own fresh copy of the backlog, with the pool the service gets at ``c``."""
    backlog = ctx.cfg.backlog
    url = await ctx.server.clone(await ctx.template("backlog", backlog), sync_commit=sync_commit)
    async with ctx.peer(url, pool_size(c), workers) as peer:
        load, cpu, rss = await measure(ctx, peer, "dispatch", c, duration)
    ctx.say(
        f"  c={c:<3} minimal app x{workers} {num(load.result.rate()):>7} /s    "
        f"{ms(load.result.latency_us)} ms   cpu: {cpu_text(cpu)}   memory {mb(rss)}   "
        f"failures {load.result.failures}"
    )
    name = f"minimal app c={c}, {workers} worker{'s' if workers > 1 else ''}"
    invariant = await check_dispatch(ctx, name, url, load.seen, c, backlog)
    await ctx.server.drop(url)
    return PeerRun.of(load, cpu, rss, workers=workers, invariant=invariant)


async def ladder(
    ctx: Context, levels: tuple[int, ...], duration: float, sync_commit: bool, peer: bool
) -> Ladder:
    points: dict[int, Point] = {}
    for c in levels:
        db = await db_point(ctx, c, duration, sync_commit)
        http, service, invariant = await service_point(ctx, c, duration, sync_commit, http=sync_commit)
        point = Point(db=db, http=http, service=service, invariant=invariant)
        if peer:
            runs = [await peer_run(ctx, c, duration, sync_commit, workers) for workers in PEER_WORKERS]
            best = max(runs, key=lambda run: run.rate)
            over = service.rate / best.rate if best.rate else None
            point = msgspec.structs.replace(
                point, peer=runs, peer_best_workers=best.workers, service_over_peer=over
            )
            ctx.say(
                f"  c={c:<3} service / minimal app {times(over)}   (minimal app best with {best.workers} "
                f"worker{'s' if best.workers > 1 else ''}: {num(best.rate)} /s)"
            )
        points[c] = point
    return Ladder(duration_s=duration, points=points)


async def of_record(ctx: Context) -> Ladder:
    """DB ceiling, HTTP ceiling, the service and the minimal app at each concurrency, synchronous_commit on
    (of record)."""
    ctx.say(f"dispatch ladder, synchronous_commit=on, {ctx.cfg.duration:g} s per point")
    return await ladder(ctx, ctx.cfg.levels, ctx.cfg.duration, sync_commit=True, peer=True)


async def sync_off(ctx: Context) -> Ladder:
    """The same with synchronous_commit=off for the benchmark's databases: not durable, not of record."""
    ctx.say(f"dispatch ladder, synchronous_commit=off, {ctx.cfg.sync_off_duration:g} s per point")
    return await ladder(
        ctx, ctx.cfg.sync_off_levels, ctx.cfg.sync_off_duration, sync_commit=False, peer=False
    )
