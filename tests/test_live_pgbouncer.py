"""`baywheels serve` with DATABASE_URL through a real PgBouncer in transaction pooling mode (fewer server
connections than the service's pool), and DIRECT_DATABASE_URL for its LISTEN connection and the maintenance
loop's advisory lock: dispatch under concurrency, long polls woken by NOTIFY, lease rescue."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from bench.pgbouncer import ensure_pgbouncer, pgbouncer
from conftest import LiveServer
from fleet import Fleet, assert_each_answered_once, ready_tasks
from helpers import ADMIN, until


@pytest.fixture
async def pooled_server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    binary = await asyncio.to_thread(ensure_pgbouncer)
    if binary is None:
        pytest.skip(
            "PGBOUNCER NOT AVAILABLE: not installed, and it cannot be installed here (needs root and "
            "apt-get); the service's PgBouncer support is untested on this machine"
        )
    async with pgbouncer(binary, database_url, pool_size=4) as pooled_url:
        env = {"DIRECT_DATABASE_URL": database_url, "REAPER_INTERVAL_SECONDS": "0.2", "LOG_LEVEL": "warning"}
        server = LiveServer(pooled_url, env=env, log_path=tmp_path_factory.mktemp("log") / "serve.log")
        await asyncio.to_thread(server.start)
        try:
            yield server
        finally:
            await asyncio.to_thread(server.stop)


async def test_through_pgbouncer(pooled_server: LiveServer, pool: asyncpg.Pool) -> None:
    async with httpx.AsyncClient(headers=ADMIN, base_url=pooled_server.url, timeout=60) as client:
        # A long poll with nothing ready is answered by the NOTIFY of a task approved afterwards: it reaches
        # the LISTEN connection, which is direct (through the pooler it would be lost).
        waiting = asyncio.create_task(
            client.post("/dispatch/next", json={"worker_id": "early", "wait_seconds": 30, "lease_seconds": 1})
        )

        async def sleeping() -> bool:
            metrics = (await client.get("/metrics")).text
            return "baywheels_dispatch_waiters 1.0" in metrics

        await until(sleeping)
        (first,) = await ready_tasks(client, 0, 1)
        response = await waiting
        assert response.status_code == 200, response.text
        assert (response.json()["id"], response.json()["worker_id"]) == (first, "early")

        # Its lease (1 s) runs out unreported: the maintenance loop, leading on its direct connection,
        # puts it back.
        async def rescued() -> bool:
            return bool(await pool.fetchval("SELECT status = 'ready' FROM tasks WHERE id = $1", first))

        await until(rescued)
        events = await pool.fetch("SELECT event FROM task_events WHERE task_id = $1 ORDER BY id", first)
        assert [row["event"] for row in events] == ["approved", "assigned", "lease_expired"]

        # 64 concurrent dispatchers over 4 server connections: transactions interleave on them, so a named
        # prepared statement would be missing on the next one.
        fleet = Fleet(pooled_server.port, size=64, wait_seconds=1)
        fleet.start()
        task_ids = [first]
        try:
            for chunk in range(1, 11):
                task_ids += await ready_tasks(client, chunk * 50, 50)

            async def all_answered() -> bool:
                return len(fleet.assigned) >= len(task_ids)

            await until(all_answered, within=60)
        finally:
            await fleet.stop()
    assert fleet.statuses[503] == 0
    await assert_each_answered_once_after_rescue(pool, fleet, task_ids)


async def assert_each_answered_once_after_rescue(
    pool: asyncpg.Pool, fleet: Fleet, task_ids: list[int]
) -> None:
    """The first task was assigned twice (before and after its rescue); the rest once, as fleet.py checks."""
    await assert_each_answered_once(pool, fleet, task_ids[1:])
    row = await pool.fetchrow(
        "SELECT status, lease_id::text AS lease_id, worker_id FROM tasks WHERE id = $1", task_ids[0]
    )
    assert row is not None
    assert row["status"] == "assigned"
    assert fleet.assigned[(task_ids[0], row["lease_id"])] == row["worker_id"]
