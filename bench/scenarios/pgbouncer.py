"""What PgBouncer costs dispatch: the service at one concurrency (64 in the run of record) straight to
PostgreSQL, then with DATABASE_URL through PgBouncer in transaction mode (DIRECT_DATABASE_URL for its LISTEN
and maintenance connections, so the pool prepares no named statements: asyncpg's statement_cache_size=0),
on fresh copies of the same backlog, with the exactly-once check after each. The ratio through / direct is
the figure docs/operations.md quotes. Skipped, saying so, where PgBouncer cannot be installed."""

import asyncio

import msgspec

from ..context import Context, DispatchCheck, LoadSummary, check_dispatch, measure, pool_size
from ..fmt import cpu_text, ms, num
from ..pgbouncer import ensure_pgbouncer, pgbouncer


class PgBouncerCost(msgspec.Struct, kw_only=True, omit_defaults=True):
    connections: int
    skipped: str | None = None  # why nothing was measured
    direct: LoadSummary | None = None
    pgbouncer: LoadSummary | None = None
    pgbouncer_over_direct: float | None = None
    server_connections: int | None = None  # PgBouncer's default_pool_size
    invariants: list[DispatchCheck] = []


async def run(ctx: Context) -> PgBouncerCost:
    cfg = ctx.cfg
    c = cfg.auth_connections
    binary = await asyncio.to_thread(ensure_pgbouncer)
    if binary is None:
        reason = "PgBouncer is not installed and cannot be installed here (needs root and apt-get)"
        ctx.say(f"pgbouncer: SKIPPED, {reason}")
        return PgBouncerCost(connections=c, skipped=reason)
    # As many server connections as each service process may open: PgBouncer itself never makes one wait.
    servers = pool_size(c)
    ctx.say(f"pgbouncer: dispatch at c={c}, direct then through PgBouncer, {cfg.duration:g} s each")
    summaries: dict[str, LoadSummary] = {}
    checks = []
    for mode in ("direct", "pgbouncer"):
        url = await ctx.server.clone(await ctx.template("backlog", cfg.backlog))
        if mode == "direct":
            async with ctx.service(url, pool_size(c)) as svc:
                load, cpu, rss = await measure(ctx, svc, "dispatch", c, cfg.duration)
        else:
            async with (
                pgbouncer(binary, url, pool_size=servers) as pooled,
                ctx.service(pooled, pool_size(c), {"DIRECT_DATABASE_URL": url}, direct_url=url) as svc,
            ):
                load, cpu, rss = await measure(ctx, svc, "dispatch", c, cfg.duration)
        summaries[mode] = LoadSummary.of(load, cpu, rss)
        ctx.say(
            f"  {mode:<9} {num(load.result.rate()):>7} /s    {ms(load.result.latency_us)} ms   "
            f"cpu: {cpu_text(cpu)}   failures {load.result.failures}"
        )
        checks.append(await check_dispatch(ctx, f"pgbouncer {mode} c={c}", url, load.seen, c, cfg.backlog))
        await ctx.server.drop(url)
    direct, pooled_run = summaries["direct"], summaries["pgbouncer"]
    ratio = pooled_run.rate / direct.rate if direct.rate else 0.0
    ctx.say(f"  through PgBouncer / direct: {100 * ratio:.1f} %")
    return PgBouncerCost(
        connections=c,
        direct=direct,
        pgbouncer=pooled_run,
        pgbouncer_over_direct=ratio,
        server_connections=servers,
        invariants=checks,
    )
