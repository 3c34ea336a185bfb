"""History growth (issue 14, retention with flat cost): dispatch and ingest at the same concurrency over the
same backlog, once with no history and once with millions of finished tasks and their events, in the same
run (empty, history, history, empty, so a drift of the shared machine weighs on both sides); then the
cleaner (RETENTION_DAYS' query, 1,000 tasks a transaction) deleting a day of that history: rows a second."""

import time
from datetime import timedelta

import msgspec

from baywheels import queries

from ..context import Context, DispatchCheck, LoadSummary, check_dispatch, measure, pool_size
from ..database import connect, q
from ..fmt import num
from .ingest_approve import batch, ingest_batches

# The history spans this many days; the cleaner keeps all but its oldest day.
DAYS = 30
EVENTS_PER_TASK = 3  # approved, assigned, completed
CLEANER_BATCH = 1000


class Side(msgspec.Struct, kw_only=True):
    """One database (no history, or history) over its runs."""

    history_tasks: int
    dispatch_rate: float  # the mean of its runs' (of equal length)
    runs: list[LoadSummary]
    ingest_rate: float  # suggestions per second
    invariant: DispatchCheck


class Cleaner(msgspec.Struct, kw_only=True):
    retention_days: int
    tasks_deleted: int
    events_deleted: int
    seconds: float
    rows_per_s: float  # tasks and events
    tasks_per_s: float


class History(msgspec.Struct, kw_only=True):
    connections: int
    duration_s: float  # per dispatch run; two runs per side
    history_tasks: int
    history_events: int
    generate_s: float  # inserting the history, and VACUUM ANALYZE
    empty: Side
    history: Side
    dispatch_ratio: float  # history / empty
    ingest_ratio: float
    cleaner: Cleaner


class _Runs:
    def __init__(self) -> None:
        self.loads: list[LoadSummary] = []
        self.seen: list[tuple[int, str]] = []
        self.ingested = 0
        self.ingest_seconds = 0.0


async def _generate(ctx: Context, url: str, tasks: int) -> float:
    began = time.monotonic()
    conn = await connect(url)
    try:
        await conn.execute(q("bench_history_insert"), tasks, DAYS)
        async with conn.transaction():
            await conn.execute(q("bench_history_replication_role"))
            await conn.execute(q("bench_history_events_insert"))
        await conn.execute(q("bench_history_vacuum"))
    finally:
        await conn.close()
    return time.monotonic() - began


async def _round(ctx: Context, url: str, runs: _Runs, round_: int, label: str) -> None:
    """One service on ``url``: dispatch for the run's duration, then the ingest batches."""
    cfg = ctx.cfg
    c = cfg.history_connections
    async with ctx.service(url, pool_size(c)) as svc:
        load, cpu, rss = await measure(ctx, svc, "dispatch", c, cfg.history_duration)
        # Each round posts station pairs of its own: every suggestion is a new one, as in ingest_approve.
        first = 1000 + round_ * cfg.ingest_batches
        bodies = [batch(first + i, cfg.batch_size) for i in range(cfg.ingest_batches)]
        seconds, ids = await ingest_batches(svc.port, bodies)
    runs.loads.append(LoadSummary.of(load, cpu, rss))
    runs.seen += load.seen
    runs.ingested += len(ids)
    runs.ingest_seconds += sum(seconds)
    ctx.say(
        f"  {label:<10} dispatch {num(load.result.rate()):>7} /s   ingest "
        f"{num(len(ids) / sum(seconds)):>7} suggestions/s   failures {load.result.failures}"
    )


async def _clean(ctx: Context, url: str, tasks: int) -> Cleaner:
    """Retention keeping DAYS - 1 days: the history's oldest day goes, a batch a transaction."""
    keep = DAYS - 1
    deleted = [0, 0]
    conn = await connect(url)
    began = time.monotonic()
    try:
        # One clock for the sweep and for the check after it: with tasks finishing evenly over the days, one
        # crosses the cutoff every quarter of a second or so, and a later clock would find it left behind.
        now = await conn.fetchval(q("bench_now"))
        after = None
        while True:
            # As the maintenance loop's Retention job runs it: each batch from where the last one ended.
            batch = await queries.task_delete_finished(
                conn, timedelta(days=keep), CLEANER_BATCH, now=now, after=after
            )
            deleted[0] += batch.tasks
            deleted[1] += batch.events
            if batch.tasks < CLEANER_BATCH:
                break
            after = batch.last
        seconds = time.monotonic() - began
        left = await conn.fetchrow(q("bench_history_left"), keep, now)
        assert left is not None
        old, orphans = left["old_tasks"], left["orphan_events"]
    finally:
        await conn.close()
    day = tasks // DAYS
    ok = old == 0 and orphans == 0 and deleted[1] == EVENTS_PER_TASK * deleted[0] and deleted[0] >= day
    ctx.check(
        "history cleaner",
        ok,
        f"{deleted[0]} tasks and {deleted[1]} events deleted (a day is {day}), {old} finished tasks older "
        f"than {keep} days left, {orphans} events without their task",
    )
    rows = deleted[0] + deleted[1]
    ctx.say(
        f"  cleaner    a day of history ({deleted[0]:,} tasks, {deleted[1]:,} events) in {seconds:.1f} s: "
        f"{num(rows / seconds)} rows/s, {num(deleted[0] / seconds)} tasks/s"
    )
    return Cleaner(
        retention_days=keep,
        tasks_deleted=deleted[0],
        events_deleted=deleted[1],
        seconds=seconds,
        rows_per_s=rows / seconds if seconds else 0.0,
        tasks_per_s=deleted[0] / seconds if seconds else 0.0,
    )


async def run(ctx: Context) -> History:
    """Dispatch and ingest with and without history; then a day of it cleaned."""
    cfg = ctx.cfg
    c, n = cfg.history_connections, cfg.history_tasks
    ctx.say(
        f"history: dispatch and ingest at c={c} with 0 and {n:,} finished tasks ({EVENTS_PER_TASK} events "
        f"each) in history, {cfg.history_duration:g} s x 2 per side; then the cleaner on a day of it"
    )
    backlog_template = await ctx.template("backlog", cfg.backlog)
    empty_url = await ctx.server.clone(backlog_template)
    history_url = await ctx.server.clone(backlog_template)
    generate_s = await _generate(ctx, history_url, n)
    ctx.say(
        f"  history of {n:,} tasks and {n * EVENTS_PER_TASK:,} events made and vacuumed in {generate_s:.0f} s"
    )
    runs = {"empty": _Runs(), "history": _Runs()}
    urls = {"empty": empty_url, "history": history_url}
    for round_, label in enumerate(("empty", "history", "history", "empty")):
        await _round(ctx, urls[label], runs[label], round_, label)
    sides = {}
    for label, side_runs in runs.items():
        tasks = n if label == "history" else 0
        invariant = await check_dispatch(
            ctx, f"history: dispatch, {label}", urls[label], side_runs.seen, 2 * c, cfg.backlog + tasks
        )
        sides[label] = Side(
            history_tasks=tasks,
            dispatch_rate=sum(load.rate for load in side_runs.loads) / len(side_runs.loads),
            runs=side_runs.loads,
            ingest_rate=side_runs.ingested / side_runs.ingest_seconds if side_runs.ingest_seconds else 0.0,
            invariant=invariant,
        )
    empty, history = sides["empty"], sides["history"]
    dispatch_ratio = history.dispatch_rate / empty.dispatch_rate if empty.dispatch_rate else 0.0
    ingest_ratio = history.ingest_rate / empty.ingest_rate if empty.ingest_rate else 0.0
    ctx.say(
        f"  with history / without: dispatch {100 * dispatch_ratio:.1f} %, ingest {100 * ingest_ratio:.1f} %"
    )
    await ctx.server.drop(empty_url)
    cleaner = await _clean(ctx, history_url, n)
    await ctx.server.drop(history_url)
    return History(
        connections=c,
        duration_s=cfg.history_duration,
        history_tasks=n,
        history_events=n * EVENTS_PER_TASK,
        generate_s=generate_s,
        empty=empty,
        history=history,
        dispatch_ratio=dispatch_ratio,
        ingest_ratio=ingest_ratio,
        cleaner=cleaner,
    )
