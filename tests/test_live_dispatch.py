"""Dispatch and approval races over real HTTP, against a real `baywheels serve` process (one uvicorn worker,
or two on one socket): many workers at once get every ready task exactly once, and racing approvals of one
suggestion make one task."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from conftest import LiveServer
from helpers import RawConnection, assert_assigned_as_told, make_tasks, metric, suggest_many, until

TASKS = 500
DISPATCHERS = 64
NO_TASK = {"detail": "No available tasks with status 'ready'"}
# Each worker process's dispatcher holds one connection whose last (and only) statement was its LISTEN.
LISTENERS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'"
)


@pytest.fixture(params=[1, 2], ids=["1 worker", "2 workers"])
async def dispatch_server(
    request: pytest.FixtureRequest, database_url: str, pool: asyncpg.Pool
) -> AsyncIterator[LiveServer]:
    """`baywheels serve` with WORKERS processes, each with its own pool, dispatcher and LISTEN connection;
    stopped with SIGTERM, which it must survive with exit code 0."""
    workers: int = request.param
    server = LiveServer(database_url, env={"WORKERS": str(workers)})
    await asyncio.to_thread(server.start)
    try:

        async def listening() -> bool:
            return bool(await pool.fetchval(LISTENERS) == workers)

        await until(listening, within=30)
        yield server
    finally:
        code = await asyncio.to_thread(server.stop)
    assert code == 0


async def test_concurrent_dispatchers_get_every_task_exactly_once(
    dispatch_server: LiveServer, pool: asyncpg.Pool
) -> None:
    live_server = dispatch_server
    async with live_server.client() as client:
        tasks = await make_tasks(client, TASKS)
    assert {task["status"] for task in tasks} == {"ready"}
    approved = [task["id"] for task in tasks]
    conns = await asyncio.gather(*(RawConnection.open(live_server.port) for _ in range(DISPATCHERS)))

    async def dispatcher(conn: RawConnection, worker_id: str) -> list[tuple[int, Any]]:
        """Asks until told there is nothing left."""
        answers = []
        while True:
            answers.append(await conn.post("/dispatch/next", {"worker_id": worker_id}))
            if answers[-1][0] != 200:
                return answers

    try:
        started = time.perf_counter()
        results = await asyncio.gather(*(dispatcher(conn, f"w{n}") for n, conn in enumerate(conns)))
        elapsed = time.perf_counter() - started
        late = await conns[0].post("/dispatch/next", {"worker_id": "late"})
    finally:
        for conn in conns:
            conn.close()

    received: list[dict[str, Any]] = []
    for n, answers in enumerate(results):
        # 200s, then the one 404 that ended the loop: no worker was told "nothing" while tasks were left.
        *assigned, last = answers
        assert last == (404, NO_TASK)
        assert {status for status, _ in assigned} <= {200}
        assert all(body["status"] == "assigned" and body["worker_id"] == f"w{n}" for _, body in assigned)
        received += [body for _, body in assigned]
    assert late == (404, NO_TASK)

    ids = [body["id"] for body in received]
    print(
        f"\n{len(ids)} dispatches to {DISPATCHERS} concurrent workers over real HTTP: "
        f"{len(set(ids))} distinct tasks in {elapsed:.2f} s ({len(ids) / elapsed:.0f}/s)"
    )
    assert len(ids) == TASKS
    assert len(set(ids)) == TASKS
    assert set(ids) == set(approved)

    # The database agrees with what each worker was told, and recorded each assignment once.
    await assert_assigned_as_told(pool, received)
    # /metrics counts every worker process's dispatches, whichever process answers it.
    async with live_server.client() as client:
        assert await metric(client, 'baywheels_dispatch_total{outcome="assigned"}') == TASKS


async def test_racing_approvals_of_one_suggestion_make_one_task(
    live_server: LiveServer, pool: asyncpg.Pool
) -> None:
    suggestions, racers = 10, 20
    async with live_server.client() as client:
        suggestion_ids = await suggest_many(client, suggestions)
    # Connections opened beforehand, so the racing requests leave at once.
    conns = await asyncio.gather(*(RawConnection.open(live_server.port) for _ in range(racers)))
    try:
        for suggestion_id in suggestion_ids:
            answers = await asyncio.gather(
                *(conn.post("/task/approve", {"suggestion_id": suggestion_id}) for conn in conns)
            )
            assert [status for status, _ in answers] == [200] * racers
            # Every racer is told about the same task, whether its request made it or found it.
            assert len({body["id"] for _, body in answers}) == 1
            assert all(
                body["suggestion_id"] == suggestion_id and body["status"] == "ready" for _, body in answers
            )
    finally:
        for conn in conns:
            conn.close()

    rows = await pool.fetch("SELECT suggestion_id, count(*) AS n FROM tasks GROUP BY suggestion_id")
    assert {(r["suggestion_id"], r["n"]) for r in rows} == {(s, 1) for s in suggestion_ids}
    approvals = await pool.fetchval("SELECT count(*) FROM task_events WHERE event = 'approved'")
    assert approvals == suggestions
    assert await pool.fetchval("SELECT count(*) FROM suggestions") == 0
