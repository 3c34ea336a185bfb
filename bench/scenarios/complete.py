"""POST /task/{id}/complete on tasks assigned beforehand, each completed once."""

from ..context import Context, Operation, measure, pool_size
from ..fmt import cpu_text, num


async def run(ctx: Context) -> Operation:
    """POST /task/{id}/complete on tasks assigned beforehand."""
    cfg = ctx.cfg
    ctx.say(f"complete: {cfg.complete_tasks:,} assigned tasks, {cfg.op_duration:g} s")
    url = await ctx.server.clone(await ctx.template("backlog", cfg.backlog))
    await ctx.server.execute(url, "bench_backlog_assign", cfg.complete_tasks)
    # As autoanalyze would have by now: with the statistics of an all-ready table the planner reads the
    # whole lease index (status = 'assigned') for each completion instead of the primary key.
    await ctx.server.execute(url, "bench_vacuum_analyze")
    c = cfg.op_connections
    async with ctx.service(url, pool_size(c)) as svc:
        load, cpu, _ = await measure(ctx, svc, "complete", c, cfg.op_duration, 1, cfg.complete_tasks)
    counts = {row["status"]: row["n"] for row in await ctx.server.fetch(url, "bench_status_counts")}
    done = counts.get("completed", 0)
    answered = load.result.count(200)
    ctx.check(
        "complete",
        answered <= done <= answered + c and load.result.failures == 0,
        f"{answered} completions answered, {done} completed in the database",
    )
    dry = answered >= cfg.complete_tasks
    ctx.say(
        f"  complete {num(load.result.rate())}/s (c={c})   cpu: {cpu_text(cpu)}"
        + ("   RAN DRY" if dry else "")
    )
    await ctx.server.drop(url)
    return Operation.of(load, cpu, connections=c, ran_dry=dry)
