"""The scenarios of a run, in the order they run. Each is an async function of the run's ``Context`` that
records its figures in ``ctx.results[name]``, adds its rows to the table and its checks to
``ctx.invariants``; ``@scenario(name)`` registers it. A new scenario is one more such function."""

import asyncio
import contextlib
import itertools
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec

from . import pgbench
from .client import Connection
from .database import Server, database_name
from .loadgen import Load, LoadGen
from .procs import CpuMeter, Service, cpu_seconds, memory_bytes, tree_cpu_seconds
from .report import Table, mb, ms, num, ratio
from .stats import latency


@dataclass(frozen=True)
class Config:
    quick: bool
    levels: tuple[int, ...]  # concurrent dispatchers
    duration: float  # seconds per measured point of the dispatch ladder
    sync_off_levels: tuple[int, ...]
    sync_off_duration: float
    backlog: int  # ready tasks in each copy for the ladder
    ingest_batches: int
    op_duration: float  # approve, complete
    op_connections: int
    complete_tasks: int
    pollers: int
    idle_window: float
    idle_settle: float  # before an idle window: PostgreSQL counts an idle backend's work up to 10 s late
    wakeups: int
    sustained_duration: float
    sustained_window: float
    sustained_connections: int
    sustained_backlog: int  # at least; sized up from the ladder's rate
    batch_size: int = 10_000


FULL = Config(
    quick=False,
    levels=(1, 16, 64, 256),
    duration=10,
    sync_off_levels=(1, 16, 64, 256),
    sync_off_duration=5,
    backlog=250_000,
    ingest_batches=20,
    op_duration=5,
    op_connections=16,
    complete_tasks=100_000,
    pollers=1000,
    idle_window=10,
    idle_settle=11,
    wakeups=200,
    sustained_duration=180,
    sustained_window=30,
    sustained_connections=64,
    sustained_backlog=1_500_000,
)
QUICK = Config(
    quick=True,
    levels=(1, 16),
    duration=1,
    sync_off_levels=(16,),
    sync_off_duration=1,
    backlog=20_000,
    ingest_batches=2,
    op_duration=1,
    op_connections=16,
    complete_tasks=10_000,
    pollers=100,
    idle_window=1,
    idle_settle=0,
    wakeups=10,
    sustained_duration=3,
    sustained_window=1,
    sustained_connections=16,
    sustained_backlog=30_000,
)


@dataclass
class Invariant:
    scenario: str
    ok: bool
    detail: str


@dataclass
class Context:
    cfg: Config
    server: Server
    load: LoadGen
    workdir: Path
    postmaster: int | None  # None: the server's processes are not ours to read (remote)
    table: Table
    results: dict[str, Any] = field(default_factory=dict)
    invariants: list[Invariant] = field(default_factory=list)
    templates: dict[str, str] = field(default_factory=dict)
    workers: int = 1  # uvicorn processes of the service
    _ports: "itertools.count[int]" = field(default_factory=lambda: itertools.count(18100))

    @property
    def dispatch_concurrency(self) -> int:
        """Per service process: the same number of dispatch statements in flight in all (4, the default of one
        process), however many processes."""
        return max(1, 4 // self.workers)

    def say(self, message: str) -> None:
        print(message, flush=True)

    def check(self, scenario: str, ok: bool, detail: str) -> None:
        self.invariants.append(Invariant(scenario, ok, detail))
        if not ok:
            self.say(f"  INVARIANT FAILED ({scenario}): {detail}")

    async def template(self, kind: str, backlog: int = 0) -> str:
        if kind not in self.templates:
            self.templates[kind] = await self.server.template(kind, backlog)
        return self.templates[kind]

    @contextlib.asynccontextmanager
    async def service(self, url: str, pool: int) -> AsyncIterator[Service]:
        env = {
            "POOL_MAX_SIZE": str(pool),
            "POOL_MIN_SIZE": "2",
            "WORKERS": str(self.workers),
            "DISPATCH_CONCURRENCY": str(self.dispatch_concurrency),
        }
        svc = Service(url, _free_port(self._ports), env, self.workdir / "service.log")
        await svc.start()
        try:
            # /readyz answered: one worker is up. Each has a dispatcher LISTENing once it is.
            async with asyncio.timeout(30):
                while (await self.server.fetchrow(url, "bench_listeners"))[0] < self.workers:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # polling other processes' start-up, with a deadline
            yield svc
        finally:
            await svc.stop()

    def meter(self, service: Service | None) -> CpuMeter:
        harness = os.getpid()
        sources: dict[str, Callable[[], float]] = {"harness": lambda: cpu_seconds(harness)}
        if service is not None:
            pid = service.pid
            sources["service"] = lambda: tree_cpu_seconds(pid)
        if self.postmaster is not None:
            postmaster = self.postmaster
            sources["postgres"] = lambda: tree_cpu_seconds(postmaster)
        return CpuMeter(sources)


def _free_port(ports: "itertools.count[int]") -> int:
    import socket

    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


# The supply of ids ran out before the time did: the rate is a lower bound.
DRY = "   (ran dry: a lower bound)"

Scenario = Callable[[Context], Awaitable[None]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        return fn

    return register


def pool_size(connections: int) -> int:
    """Dispatch needs DISPATCH_CONCURRENCY connections whatever the load (the rest is coalesced); approve
    and complete use one per request in flight."""
    return min(connections, 64) + 8


def cpu_text(shares: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.0f}%" for name, value in shares.items())


# The dispatch ladder ------------------------------------------------------------------------------------


async def check_dispatch(
    ctx: Context, name: str, url: str, seen: list[tuple[int, str]], connections: int, backlog: int
) -> dict[str, Any]:
    """Each task handed out once, none lost: the 200 bodies against the database, after the service
    stopped (it lets the statements in flight finish)."""
    assigned = {row["id"]: row["worker_id"] for row in await ctx.server.fetch(url, "bench_assigned")}
    ids = [task_id for task_id, _ in seen]
    duplicates = len(ids) - len(set(ids))
    mismatched = sum(1 for task_id, worker in seen if assigned.get(task_id) != worker)
    in_flight = len(assigned) - len(set(ids))
    twice = (await ctx.server.fetchrow(url, "bench_assigned_twice"))[0]
    counts = {row["status"]: row["n"] for row in await ctx.server.fetch(url, "bench_status_counts")}
    total = sum(counts.values())
    ok = duplicates == 0 and mismatched == 0 and twice == 0 and total == backlog
    ok = ok and 0 <= in_flight <= connections
    detail = (
        f"{len(ids)} answered, {len(assigned)} assigned in the database, {in_flight} assigned but not "
        f"received (in flight at stop, at most {connections}), {duplicates} handed out twice, "
        f"{mismatched} not held by the worker answered, {twice} assigned twice per task_events, "
        f"{total} of {backlog} tasks present"
    )
    ctx.check(name, ok, detail)
    return {
        "ok": ok,
        "answered": len(ids),
        "assigned": len(assigned),
        "in_flight": in_flight,
        "detail": detail,
    }


async def db_point(ctx: Context, c: int, duration: float, sync_commit: bool) -> dict[str, Any]:
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
        f"  c={c:<3} DB ceiling   {num(result.tps):>7} tps   {ms(result.latency_us)} ms   "
        f"cpu: {cpu_text(cpu)}"
    )
    return {
        "tps": result.tps,
        "transactions": result.transactions,
        "failed": result.failed,
        "latency_us": msgspec.to_builtins(result.latency_us),
        "cpu_percent": cpu,
    }


async def measure(
    ctx: Context, svc: Service, mode: str, c: int, duration: float, *params: object
) -> tuple[Load, dict[str, float], int]:
    """One load run with the CPU split and the service's peak memory (PSS of all its processes) over it."""
    meter = ctx.meter(svc)
    peak = 0
    done = asyncio.Event()

    # The processes once (a walk of /proc), their memory every 0.5 s (smaps_rollup walks their page tables).
    pids = svc.pids()

    async def sample_memory() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, memory_bytes(pids))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.5)

    sampler = asyncio.create_task(sample_memory())
    meter.start()
    try:
        load = await ctx.load.run(svc.port, mode, c, duration, *params)
    finally:
        done.set()
        await sampler
    return load, meter.stop({"loadgen": load.cpu_seconds}), peak


def load_summary(load: Load, cpu: dict[str, float], rss: int) -> dict[str, Any]:
    return {
        "rate": load.result.rate(),
        "requests": load.result.requests,
        "statuses": load.result.statuses,
        "errors": load.result.errors,
        "failures": load.result.failures,
        "latency_us": msgspec.to_builtins(load.result.latency_us),
        "cpu_percent": cpu,
        "service_rss_peak": rss,
    }


async def service_point(
    ctx: Context, c: int, duration: float, sync_commit: bool, http: bool
) -> dict[str, Any]:
    backlog = ctx.cfg.backlog
    url = await ctx.server.clone(await ctx.template("backlog", backlog), sync_commit=sync_commit)
    point: dict[str, Any] = {}
    async with ctx.service(url, pool_size(c)) as svc:
        if http:
            load, cpu, _ = await measure(ctx, svc, "healthz", c, duration)
            point["http"] = load_summary(load, cpu, 0)
            ctx.say(
                f"  c={c:<3} HTTP ceiling {num(load.result.rate()):>7} /s    "
                f"{ms(load.result.latency_us)} ms   cpu: {cpu_text(cpu)}"
            )
        load, cpu, rss = await measure(ctx, svc, "dispatch", c, duration)
    point["service"] = load_summary(load, cpu, rss)
    ctx.say(
        f"  c={c:<3} service      {num(load.result.rate()):>7} /s    {ms(load.result.latency_us)} ms   "
        f"cpu: {cpu_text(cpu)}   memory {mb(rss)}   failures {load.result.failures}"
    )
    point["invariant"] = await check_dispatch(ctx, f"dispatch c={c}", url, load.seen, c, backlog)
    await ctx.server.drop(url)
    return point


def ladder_rows(ctx: Context, points: dict[int, dict[str, Any]], http: bool) -> None:
    def cells(fn: Callable[[dict[str, Any]], str]) -> list[str]:
        return [fn(points[c]) if c in points else "-" for c in ctx.cfg.levels]

    ctx.table.add("DB ceiling: pgbench task_dispatch, tps", *cells(lambda p: num(p["db"]["tps"])))
    if http:
        ctx.table.add("HTTP ceiling: GET /healthz, req/s", *cells(lambda p: num(p["http"]["rate"])))
    ctx.table.add("service: POST /dispatch/next, /s", *cells(lambda p: num(p["service"]["rate"])))
    ctx.table.add("service / DB ceiling", *cells(lambda p: ratio(p["service"]["rate"], p["db"]["tps"])))
    best = max(p["db"]["tps"] for p in points.values())
    ctx.table.add("service / best DB ceiling of the row", *cells(lambda p: ratio(p["service"]["rate"], best)))
    if http:
        ctx.table.add(
            "service / HTTP ceiling", *cells(lambda p: ratio(p["service"]["rate"], p["http"]["rate"]))
        )

    def latency_ms(stat: str) -> Callable[[dict[str, Any]], str]:
        return lambda p: f"{p['service']['latency_us'][stat] / 1000:.1f}"

    for stat in ("p50", "p95", "p99", "max"):
        ctx.table.add(f"dispatch latency {stat}, ms", *cells(latency_ms(stat)))
    ctx.table.add(
        "pgbench latency p50 / p99, ms",
        *cells(
            lambda p: f"{p['db']['latency_us']['p50'] / 1000:.1f} / {p['db']['latency_us']['p99'] / 1000:.1f}"
        ),
    )
    ctx.table.add("errors (non-200 + socket)", *cells(lambda p: str(p["service"]["failures"])))
    ctx.table.add(
        "exactly once (in flight at stop)",
        *cells(lambda p: ("ok" if p["invariant"]["ok"] else "FAIL") + f" ({p['invariant']['in_flight']})"),
    )


async def ladder(
    ctx: Context, name: str, levels: tuple[int, ...], duration: float, sync_commit: bool
) -> None:
    points: dict[int, dict[str, Any]] = {}
    for c in levels:
        point = {"db": await db_point(ctx, c, duration, sync_commit)}
        point.update(await service_point(ctx, c, duration, sync_commit, http=sync_commit))
        points[c] = point
    ctx.results[name] = {"duration_s": duration, "points": points}
    ladder_rows(ctx, points, http=sync_commit)


@scenario("dispatch")
async def dispatch(ctx: Context) -> None:
    """DB ceiling, HTTP ceiling and the service at each concurrency, synchronous_commit on (of record)."""
    ctx.say(f"dispatch ladder, synchronous_commit=on, {ctx.cfg.duration:g} s per point")
    ctx.table.section("Dispatch, synchronous_commit=on (of record)")
    await ladder(ctx, "dispatch", ctx.cfg.levels, ctx.cfg.duration, sync_commit=True)
    points = ctx.results["dispatch"]["points"]
    top = max(points)
    ctx.table.add(
        f"service memory (PSS) under {top} dispatchers", mb(points[top]["service"]["service_rss_peak"])
    )


@scenario("dispatch_sync_off")
async def dispatch_sync_off(ctx: Context) -> None:
    """The same with synchronous_commit=off for the benchmark's databases: not durable, not of record."""
    ctx.say(f"dispatch ladder, synchronous_commit=off, {ctx.cfg.sync_off_duration:g} s per point")
    ctx.table.section(
        "Dispatch, synchronous_commit=off (NOT of record: commits do not wait for the WAL flush)"
    )
    await ladder(
        ctx, "dispatch_sync_off", ctx.cfg.sync_off_levels, ctx.cfg.sync_off_duration, sync_commit=False
    )


# Ingest, approve, complete -----------------------------------------------------------------------------


def batch(index: int, size: int) -> bytes:
    """``size`` suggestions, each for a station pair no other batch uses."""
    base = index * size * 2
    items = [
        {
            "from_station_id": base + 2 * i + 1,
            "to_station_id": base + 2 * i + 2,
            "qty": 1 + i % 5,
            "reason": "benchmark",
            "priority": i % 3,
        }
        for i in range(size)
    ]
    return msgspec.json.encode(items)


class _Ingested(msgspec.Struct):
    created: int
    ids: list[int | None]


async def ingest_batches(port: int, bodies: list[bytes]) -> tuple[list[float], list[int]]:
    conn = await Connection.open("127.0.0.1", port)
    seconds, ids = [], []
    try:
        for body in bodies:
            start = time.perf_counter()
            status, payload = await conn.request("POST", "/suggestions", body)
            seconds.append(time.perf_counter() - start)
            if status != 201:
                raise RuntimeError(f"ingest answered {status}: {payload[:200]!r}")
            ids += [i for i in msgspec.json.decode(payload, type=_Ingested).ids if i is not None]
    finally:
        await conn.close()
    return seconds, ids


@scenario("ingest_approve")
async def ingest_approve(ctx: Context) -> None:
    """Batch ingest of 10,000-item POSTs, then approvals one by one and 100 at a time."""
    cfg = ctx.cfg
    ctx.say(f"ingest: {cfg.ingest_batches} batches of {cfg.batch_size:,}; approve for {cfg.op_duration:g} s")
    url = await ctx.server.clone(await ctx.template("empty"))
    bodies = [batch(i, cfg.batch_size) for i in range(cfg.ingest_batches)]
    c = cfg.op_connections
    async with ctx.service(url, pool_size(c)) as svc:
        meter = ctx.meter(svc)
        meter.start()
        seconds, ids = await ingest_batches(svc.port, bodies)
        cpu = meter.stop()
        items = cfg.ingest_batches * cfg.batch_size
        rate = items / sum(seconds)
        ctx.check(
            "ingest", len(ids) == len(set(ids)) == items, f"{len(set(ids))} of {items} suggestions created"
        )
        ctx.say(
            f"  ingest   {num(rate)} suggestions/s   {ms(latency(seconds))} ms per batch   "
            f"cpu: {cpu_text(cpu)}"
        )
        first, last = min(ids), max(ids)
        middle = first + (last - first) // 4
        single, cpu_single, _ = await measure(ctx, svc, "approve", c, cfg.op_duration, first, middle)
        many_c = 4
        many, cpu_many, _ = await measure(
            ctx, svc, "approve_many", many_c, cfg.op_duration, middle + 1, last, 100
        )
    counts = {row["status"]: row["n"] for row in await ctx.server.fetch(url, "bench_status_counts")}
    tasks = counts.get("ready", 0)
    # The last request of /tasks/approve may hold fewer than 100 ids.
    answered = single.result.count(200) + min(many.result.count(200) * 100, last - middle)
    ok = (
        answered <= tasks <= answered + c + many_c * 100
        and single.result.failures == 0
        and many.result.failures == 0
    )
    ctx.check("approve", ok, f"{answered} approvals answered, {tasks} tasks in the database")
    dry_single = single.result.count(200) >= middle - first + 1
    dry_many = many.result.count(200) * 100 >= last - middle
    ctx.say(
        f"  approve  {num(single.result.rate())}/s single (c={c}), {num(many.result.rate() * 100)} tasks/s "
        f"via /tasks/approve x100 (c={many_c})   cpu: {cpu_text(cpu_single)} / {cpu_text(cpu_many)}"
        + ("   RAN DRY" if dry_single or dry_many else "")
    )
    await ctx.server.drop(url)
    ctx.results["ingest"] = {
        "batches": cfg.ingest_batches,
        "batch_size": cfg.batch_size,
        "rate": rate,
        "batch_latency_us": msgspec.to_builtins(latency(seconds)),
        "cpu_percent": cpu,
    }
    ctx.results["approve"] = {
        "single": load_summary(single, cpu_single, 0) | {"connections": c, "ran_dry": dry_single},
        "many": load_summary(many, cpu_many, 0)
        | {
            "connections": many_c,
            "per_request": 100,
            "tasks_rate": many.result.rate() * 100,
            "ran_dry": dry_many,
        },
    }
    ctx.table.section("Ingest, approve, complete")
    ctx.table.add(f"ingest, {cfg.batch_size:,}-item POST /suggestions", f"{num(rate)} suggestions/s")
    ctx.table.add(
        f"approve, POST /task/approve (c={c})",
        f"{num(single.result.rate())} /s   p99 {single.result.latency_us.p99 / 1000:.1f} ms"
        + (DRY if dry_single else ""),
    )
    ctx.table.add(
        f"approve, POST /tasks/approve x100 (c={many_c})",
        f"{num(many.result.rate() * 100)} tasks/s   p99 {many.result.latency_us.p99 / 1000:.1f} ms"
        + (DRY if dry_many else ""),
    )


@scenario("complete")
async def complete(ctx: Context) -> None:
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
    ctx.results["complete"] = load_summary(load, cpu, 0) | {"connections": c, "ran_dry": dry}
    ctx.table.add(
        f"complete, POST /task/{{id}}/complete (c={c})",
        f"{num(load.result.rate())} /s   p99 {load.result.latency_us.p99 / 1000:.1f} ms"
        + (DRY if dry else ""),
    )


# Long-poll ---------------------------------------------------------------------------------------------

_WAITERS = re.compile(rb"^baywheels_dispatch_waiters ([\d.e+]+)$", re.MULTILINE)


async def waiting(port: int) -> int:
    conn = await Connection.open("127.0.0.1", port)
    try:
        _, body = await conn.request("GET", "/metrics")
    finally:
        await conn.close()
    match = _WAITERS.search(body)
    return int(float(match[1])) if match else 0


class _Task(msgspec.Struct):
    id: int
    worker_id: str


@scenario("longpoll")
async def longpoll(ctx: Context) -> None:
    """Idle long-pollers' cost (database transactions/s, memory) and the wake-up latency from an approval to
    the answer of a waiting worker."""
    cfg = ctx.cfg
    ctx.say(
        f"long-poll: {cfg.pollers} waiting workers, {cfg.idle_window:g} s idle window, {cfg.wakeups} wake-ups"
    )
    url = await ctx.server.clone(await ctx.template("empty"))
    database = database_name(url)
    answers: asyncio.Queue[tuple[float, int, str]] = asyncio.Queue()
    errors = 0

    async def transactions() -> int:
        return int((await ctx.server.fetchrow(ctx.server.dsn, "bench_transactions", database))[0])

    async def idle(svc: Service) -> tuple[float, int]:
        # A backend that goes idle reports its counts when it next runs a statement or after 10 s
        # (PGSTAT_IDLE_INTERVAL): the statements that set up the window must not land in it.
        await asyncio.sleep(cfg.idle_settle)
        before = await transactions()
        await asyncio.sleep(cfg.idle_window)  # the idle window is what is measured
        return (await transactions() - before) / cfg.idle_window, memory_bytes(svc.pids())

    async def poller(conn: Connection, n: int) -> None:
        nonlocal errors
        for k in itertools.count():
            body = f'{{"worker_id":"p{n}-{k}","wait_seconds":30}}'.encode()
            status, payload = await conn.request("POST", "/dispatch/next", body)
            if status == 200:
                task = msgspec.json.decode(payload, type=_Task)
                answers.put_nowait((time.perf_counter(), task.id, task.worker_id))
            elif status != 404:
                errors += 1

    async with ctx.service(url, 16) as svc:
        _, ids = await ingest_batches(svc.port, [batch(0, cfg.wakeups)])
        base_rate, base_rss = await idle(svc)
        conns = await asyncio.gather(*(Connection.open("127.0.0.1", svc.port) for _ in range(cfg.pollers)))
        pollers = [asyncio.create_task(poller(conn, n)) for n, conn in enumerate(conns)]
        try:
            deadline = time.monotonic() + 60
            while await waiting(svc.port) < cfg.pollers:
                if time.monotonic() > deadline:
                    raise RuntimeError("the long-pollers did not all start waiting")
                await asyncio.sleep(0.05)  # polling the service's gauge, with a deadline
            idle_rate, idle_rss = await idle(svc)
            approver = await Connection.open("127.0.0.1", svc.port)
            wake: list[float] = []
            approve: list[float] = []
            got: list[tuple[int, str]] = []
            for suggestion_id in ids:
                start = time.perf_counter()
                status, _ = await approver.request(
                    "POST", "/task/approve", b'{"suggestion_id":%d}' % suggestion_id
                )
                if status != 200:
                    raise RuntimeError(f"approve answered {status}")
                approve.append(time.perf_counter() - start)
                answered, task_id, worker = await asyncio.wait_for(answers.get(), 10)
                wake.append(answered - start)
                got.append((task_id, worker))
            await approver.close()
        finally:
            for task in pollers:
                task.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
            await asyncio.gather(*(conn.close() for conn in conns))
    invariant = await check_dispatch(ctx, "long-poll", url, got, 0, cfg.wakeups)
    await ctx.server.drop(url)
    wake_us, approve_us = latency(wake), latency(approve)
    ctx.say(
        f"  idle database transactions/s: {base_rate:.1f} with no worker, {idle_rate:.1f} with {cfg.pollers} "
        f"waiting; service memory {mb(base_rss)} -> {mb(idle_rss)}; wake-up {ms(wake_us)} ms (the approval "
        f"alone {ms(approve_us)} ms); errors {errors}"
    )
    ctx.check("long-poll errors", errors == 0, f"{errors} unexpected answers to long-polls")
    ctx.results["longpoll"] = {
        "pollers": cfg.pollers,
        "idle_window_s": cfg.idle_window,
        "transactions_per_s_without": base_rate,
        "transactions_per_s_with": idle_rate,
        "rss_without": base_rss,
        "rss_with": idle_rss,
        "wakeups": cfg.wakeups,
        "wakeup_latency_us": msgspec.to_builtins(wake_us),
        "approve_latency_us": msgspec.to_builtins(approve_us),
        "errors": errors,
        "invariant": invariant,
    }
    ctx.table.section("Long-poll (wait_seconds=30)")
    ctx.table.add(
        f"idle DB transactions/s: 0 vs {cfg.pollers} waiting", f"{base_rate:.1f} vs {idle_rate:.1f}"
    )
    ctx.table.add(f"service memory (PSS): 0 vs {cfg.pollers} waiting", f"{mb(base_rss)} vs {mb(idle_rss)}")
    ctx.table.add(
        "wake-up, approve sent -> worker answered",
        f"p50 {wake_us.p50 / 1000:.1f} ms   p99 {wake_us.p99 / 1000:.1f} ms",
    )


# Sustained ---------------------------------------------------------------------------------------------


@scenario("sustained")
async def sustained(ctx: Context) -> None:
    """Dispatch for minutes over a large backlog: does the rate hold as dead tuples pile up?"""
    cfg = ctx.cfg
    c = cfg.sustained_connections
    measured = ctx.results.get("dispatch", {}).get("points", {}).get(c, {}).get("service", {}).get("rate", 0)
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
    ctx.results["sustained"] = {
        "connections": c,
        "duration_s": cfg.sustained_duration,
        "backlog": backlog,
        "window_s": window,
        "first_window_rate": first / window,
        "last_window_rate": last / window,
        "last_over_first": keep,
        "rate_series": series,
        "rate_series_bucket_s": bucket,
        "ready_idx_blocks_per_dispatch_first": early,
        "ready_idx_blocks_per_dispatch_last": late,
        "samples": [{k: (v.isoformat() if k == "at" else v) for k, v in s.items()} for s in samples],
        "run": load_summary(load, cpu, rss),
        "invariant": invariant,
    }
    ctx.table.section(f"Sustained dispatch, {cfg.sustained_duration:g} s at c={c}")
    ctx.table.add(
        f"first {window:g} s -> last {window:g} s, dispatches/s",
        f"{num(first / window)} -> {num(last / window)}  ({100 * keep:.0f} %)",
    )
    ctx.table.add("ready-index blocks per dispatch, first -> last", f"{early:.1f} -> {late:.1f}")
    ctx.table.add(
        "dead tuples at end, autovacuums of tasks", f"{tail['n_dead_tup']:,}, {tail['autovacuum_count']}"
    )
