"""Where the time goes, on /metrics of a real `baywheels serve` (a process of its own, so every count starts
at zero): statement latency by query name, dispatch batch sizes, the reaper's work and its last pass, and the
pool's connections read at scrape time (in use, idle, and requests waiting for one)."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from conftest import LiveServer
from helpers import dispatch, expire_leases, make_tasks, metric, until, wait_for_lock_waiters

POOL_MAX = 4


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    env = {
        "POOL_MIN_SIZE": "1",
        "POOL_MAX_SIZE": str(POOL_MAX),
        "DISPATCH_CONCURRENCY": "2",
        "POOL_ACQUIRE_TIMEOUT": "60",
        "REAPER_INTERVAL_SECONDS": "0.1",
    }
    live = LiveServer(database_url, env=env, log_path=tmp_path / "serve.log")
    live.start()
    try:
        yield live
    finally:
        live.stop()


async def test_statements_and_batches_are_counted_by_query(server: LiveServer) -> None:
    statement = 'baywheels_db_statement_duration_seconds_count{query="task_dispatch"}'
    approve = 'baywheels_db_statement_duration_seconds_count{query="task_approve_many"}'
    async with server.client() as client:
        await make_tasks(client, 4)
        for n in range(3):
            await dispatch(client, f"w{n}")
        # Each dispatch that found a free statement slot ran the single-row statement alone, outside the
        # queue: the queue's batch sizes saw none of them.
        assert await metric(client, statement) == 3
        assert await metric(client, approve) == 1
        assert await metric(client, "baywheels_dispatch_batch_size_count") == 0
        # A keyed dispatch goes through the queue, alone: a batch of one.
        keyed = await client.post(
            "/dispatch/next", json={"worker_id": "w9"}, headers={"Idempotency-Key": "k"}
        )
        assert keyed.status_code == 200
        assert await metric(client, statement) == 4
        assert await metric(client, "baywheels_dispatch_batch_size_count") == 1
        assert await metric(client, 'baywheels_dispatch_batch_size_bucket{le="1.0"}') == 1
        assert await metric(client, "baywheels_dispatch_batch_size_sum") == 1
        # Each statement's time is in the histogram.
        every = 'baywheels_db_statement_duration_seconds_bucket{le="+Inf",query="task_dispatch"}'
        assert await metric(client, every, default=None) == 4
        assert await metric(client, 'baywheels_db_statement_duration_seconds_sum{query="task_dispatch"}') > 0


async def test_a_queue_of_dispatches_goes_in_batches(server: LiveServer, pool: asyncpg.Pool) -> None:
    """Two statement slots (DISPATCH_CONCURRENCY) held by a lock: the requests behind them queue up, and go
    together in task_dispatch_many once the lock is gone."""
    many = 'baywheels_db_statement_duration_seconds_count{query="task_dispatch_many"}'
    single = 'baywheels_db_statement_duration_seconds_count{query="task_dispatch"}'
    async with server.client() as client:
        await make_tasks(client, 10)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
            answers = [
                asyncio.ensure_future(client.post("/dispatch/next", json={"worker_id": f"w{n}"}))
                for n in range(10)
            ]
            # Both statements sent and blocked (and the reaper's): the others queue behind them.
            await wait_for_lock_waiters(pool, 3)
        assert [r.status_code for r in await asyncio.gather(*answers)] == [200] * 10
        batches = await metric(client, "baywheels_dispatch_batch_size_count")
        in_batches = await metric(client, "baywheels_dispatch_batch_size_sum")
        coalesced = await metric(client, many)
        assert coalesced >= 1
        # Every worker served once: by the queue's statements, or alone (single-row statements outside it).
        assert in_batches + await metric(client, single) - (batches - coalesced) == 10


async def test_a_queue_of_vans_goes_in_batches(server: LiveServer, pool: asyncpg.Pool) -> None:
    """The same with positions: the vans behind the held slots go together in task_dispatch_near_many, and
    each is served once."""
    many = 'baywheels_db_statement_duration_seconds_count{query="task_dispatch_near_many"}'
    async with server.client() as client:
        await make_tasks(client, 10)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
            answers = [
                asyncio.ensure_future(
                    client.post(
                        "/dispatch/next", json={"worker_id": f"w{n}", "lat": 37.78, "lon": -122.4 + n / 100}
                    )
                )
                for n in range(10)
            ]
            await wait_for_lock_waiters(pool, 3)
        responses = await asyncio.gather(*answers)
        assert [r.status_code for r in responses] == [200] * 10
        assert sorted(r.json()["worker_id"] for r in responses) == sorted(f"w{n}" for n in range(10))
        assert len({r.json()["id"] for r in responses}) == 10
        assert await metric(client, many) >= 1


async def test_the_reaper_reports_its_passes_and_what_it_rescued(
    server: LiveServer, pool: asyncpg.Pool
) -> None:
    started = time.time()
    async with server.client() as client:
        tasks = await make_tasks(client, 3)
        held = [await dispatch(client, f"w{n}") for n in range(3)]
        assert {t["id"] for t in held} == {t["id"] for t in tasks}
        # The second one's bikes are on the van: its lease running out stalls it.
        body = {"worker_id": held[1]["worker_id"], "lease_id": held[1]["lease_id"]}
        assert (await client.post(f"/task/{held[1]['id']}/pickup", json=body)).status_code == 200
        await expire_leases(pool, held[0]["id"], held[1]["id"])

        async def rescued() -> bool:
            return await metric(client, "baywheels_reaper_rescued_tasks_sum") == 2

        await until(rescued)
        assert await metric(client, "baywheels_reaper_rescued_tasks_count") >= 2  # passes, most with nothing
        assert await metric(client, 'baywheels_reaper_rescued_tasks_bucket{le="0.0"}') >= 1
        assert await metric(client, 'baywheels_reaper_rescued_total{status="ready"}') == 1
        assert await metric(client, 'baywheels_reaper_rescued_total{status="stalled"}') == 1
        last_run = await metric(client, "baywheels_reaper_last_run_timestamp_seconds", default=None)
        assert started <= last_run <= time.time()
        statuses = await pool.fetch("SELECT id, status FROM tasks ORDER BY id")
        assert sorted(r["status"] for r in statuses) == ["assigned", "ready", "stalled"]


async def test_the_pool_in_use_idle_and_waiting(server: LiveServer, pool: asyncpg.Pool) -> None:
    """Every connection held by a request blocked on a lock, and two more requests waiting for one."""
    async with server.client() as client:
        task = (await make_tasks(client, 1))[0]
        assert await metric(client, "baywheels_db_pool_max_connections") == POOL_MAX
        assert await metric(client, "baywheels_db_pool_waiting", default=None) == 0
        assert await metric(client, 'baywheels_db_pool_connections{state="in_use"}', default=None) == 0
        assert await metric(client, 'baywheels_db_pool_connections{state="idle"}', default=None) >= 1
        limits = httpx.Limits(max_connections=POOL_MAX + 4)
        async with (
            httpx.AsyncClient(
                base_url=server.url, headers=client.headers, timeout=60, limits=limits
            ) as readers,
            pool.acquire() as conn,
        ):
            async with conn.transaction():
                await conn.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
                reads = [
                    asyncio.ensure_future(readers.get(f"/task/{task['id']}")) for _ in range(POOL_MAX + 2)
                ]

                async def all_waiting() -> bool:
                    return await metric(client, "baywheels_db_pool_waiting") == 2

                await until(all_waiting)
                assert await metric(client, 'baywheels_db_pool_connections{state="in_use"}') == POOL_MAX
                assert await metric(client, 'baywheels_db_pool_connections{state="idle"}') == 0
            assert [r.status_code for r in await asyncio.gather(*reads)] == [200] * (POOL_MAX + 2)
        assert await metric(client, "baywheels_db_pool_waiting") == 0
        assert await metric(client, 'baywheels_db_pool_connections{state="in_use"}') == 0
        assert await metric(client, 'baywheels_db_pool_connections{state="idle"}') == POOL_MAX


async def test_several_worker_processes_add_up_their_pools(database_url: str, tmp_path: Path) -> None:
    """With WORKERS=2 one process answers the scrape; each writes its pool's figures every few seconds."""
    env = {"WORKERS": "2", "POOL_MIN_SIZE": "1", "POOL_MAX_SIZE": str(POOL_MAX), "DISPATCH_CONCURRENCY": "2"}
    live = LiveServer(database_url, env=env, log_path=tmp_path / "serve.log")
    await asyncio.to_thread(live.start)
    try:
        async with live.client() as client:

            async def both() -> bool:
                return await metric(client, "baywheels_db_pool_max_connections") == 2 * POOL_MAX

            await until(both, within=30)
            assert await metric(client, 'baywheels_db_pool_connections{state="in_use"}', default=None) == 0
            assert await metric(client, 'baywheels_db_pool_connections{state="idle"}', default=None) >= 2
    finally:
        await asyncio.to_thread(live.stop)
