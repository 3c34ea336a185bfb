"""What authentication costs: dispatch at one concurrency (64 in the run of record) with AUTH=off, then with
auth on (each request with one of many worker keys, whose worker_id it takes from the key), on fresh copies
of the same backlog, with the exactly-once check after each. The ratio on/off is the figure (target: at
least 95 %)."""

import msgspec

from baywheels import auth

from ..context import Context, DispatchCheck, LoadSummary, check_dispatch, measure, pool_size
from ..fmt import cpu_text, ms, num

# Worker keys the load generator takes turns with: at ~10,000 dispatches a second each sees ~40 a second,
# inside the default RATE_LIMIT_WORKER (50/s), so the limit is checked on every request and never bites.
KEYS = 256


class AuthCost(msgspec.Struct, kw_only=True):
    connections: int
    keys: int
    off: LoadSummary
    on: LoadSummary
    on_over_off: float
    invariants: list[DispatchCheck]


async def run(ctx: Context) -> AuthCost:
    cfg = ctx.cfg
    c = cfg.auth_connections
    ctx.say(f"auth: dispatch at c={c}, AUTH=off then on ({KEYS} worker keys), {cfg.duration:g} s each")
    keys = [auth.new_key() for _ in range(KEYS)]
    keys_file = ctx.workdir / "worker-keys.txt"
    keys_file.write_text("".join(f"{key.token}\n" for key in keys))
    summaries: dict[str, LoadSummary] = {}
    checks = []
    for mode, env in (("off", {"AUTH": "off"}), ("on", {"AUTH": "on"})):
        url = await ctx.server.clone(await ctx.template("backlog", cfg.backlog))
        if mode == "on":
            await ctx.server.execute(
                url,
                "bench_api_key_insert",
                [key.key_id for key in keys],
                [key.digest for key in keys],
                [f"bench-{key.key_id}" for key in keys],
            )
        async with ctx.service(url, pool_size(c), env) as svc:
            if mode == "on":
                load, cpu, rss = await measure(ctx, svc, "dispatch_auth", c, cfg.duration, keys_file)
            else:
                load, cpu, rss = await measure(ctx, svc, "dispatch", c, cfg.duration)
        summaries[mode] = LoadSummary.of(load, cpu, rss)
        ctx.say(
            f"  auth {mode:<3} {num(load.result.rate()):>7} /s    {ms(load.result.latency_us)} ms   "
            f"cpu: {cpu_text(cpu)}   failures {load.result.failures}"
        )
        checks.append(await check_dispatch(ctx, f"auth {mode} c={c}", url, load.seen, c, cfg.backlog))
        await ctx.server.drop(url)
    off, on = summaries["off"], summaries["on"]
    ratio = on.rate / off.rate if off.rate else 0.0
    ctx.say(f"  auth on / off: {100 * ratio:.1f} %")
    return AuthCost(connections=c, keys=KEYS, off=off, on=on, on_over_off=ratio, invariants=checks)
