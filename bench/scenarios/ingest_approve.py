"""Batch ingest of 10,000-item POSTs, then approvals one by one and 100 at a time, on one service over an
empty database."""

import time

import msgspec

from ..client import Connection
from ..context import Context, LoadSummary, Operation, measure, pool_size
from ..fmt import cpu_text, ms, num
from ..stats import Latency, latency


class Ingest(msgspec.Struct, kw_only=True):
    batches: int
    batch_size: int
    rate: float  # suggestions per second
    batch_latency_us: Latency
    cpu_percent: dict[str, float]


class ManyAtOnce(LoadSummary, kw_only=True):
    """POST /tasks/approve, ``per_request`` suggestions a request."""

    connections: int
    per_request: int
    tasks_rate: float
    ran_dry: bool


class Approve(msgspec.Struct, kw_only=True):
    single: Operation
    many: ManyAtOnce


class IngestApprove(msgspec.Struct, kw_only=True):
    """Two measurements, two entries of the JSON's results ("ingest" and "approve")."""

    ingest: Ingest
    approve: Approve


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


async def run(ctx: Context) -> IngestApprove:
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
    return IngestApprove(
        ingest=Ingest(
            batches=cfg.ingest_batches,
            batch_size=cfg.batch_size,
            rate=rate,
            batch_latency_us=latency(seconds),
            cpu_percent=cpu,
        ),
        approve=Approve(
            single=Operation.of(single, cpu_single, connections=c, ran_dry=dry_single),
            many=ManyAtOnce.of(
                many,
                cpu_many,
                connections=many_c,
                per_request=100,
                tasks_rate=many.result.rate() * 100,
                ran_dry=dry_many,
            ),
        ),
    )
