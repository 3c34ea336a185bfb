"""Long-poll: what idle waiting workers cost (database transactions/s, the service's memory), and the
wake-up latency from an approval to the answer of a waiting worker."""

import asyncio
import itertools
import re
import time

import msgspec

from ..client import Connection
from ..context import Context, DispatchCheck, check_dispatch
from ..database import database_name
from ..fmt import mb, ms
from ..procs import Service, memory_bytes
from ..stats import Latency, latency
from .ingest_approve import batch, ingest_batches


class Longpoll(msgspec.Struct, kw_only=True):
    pollers: int
    idle_window_s: float
    transactions_per_s_without: float  # no worker waiting
    transactions_per_s_with: float  # ``pollers`` waiting
    rss_without: int
    rss_with: int
    wakeups: int
    wakeup_latency_us: Latency  # approve sent -> the waiting worker answered
    approve_latency_us: Latency
    errors: int
    invariant: DispatchCheck


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


async def run(ctx: Context) -> Longpoll:
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
    return Longpoll(
        pollers=cfg.pollers,
        idle_window_s=cfg.idle_window,
        transactions_per_s_without=base_rate,
        transactions_per_s_with=idle_rate,
        rss_without=base_rss,
        rss_with=idle_rss,
        wakeups=cfg.wakeups,
        wakeup_latency_us=wake_us,
        approve_latency_us=approve_us,
        errors=errors,
        invariant=invariant,
    )
