"""Dispatch and approval races over real HTTP, against a real `baywheels serve` process (one uvicorn worker,
or two on one socket): many workers at once get every ready task exactly once, and racing approvals of one
suggestion make one task."""

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from conftest import LiveServer
from helpers import ADMIN

TASKS = 500
DISPATCHERS = 64
NO_TASK = {"detail": "No available tasks with status 'ready'"}
# Each worker process's dispatcher holds one connection whose last (and only) statement was its LISTEN.
LISTENERS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'"
)


class Connection:
    """One keep-alive HTTP/1.1 connection, as one worker's client would hold. Much lighter than an httpx
    client with dozens of connections, whose pool would be what the figures measured."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: LiveServer) -> "Connection":
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    async def post(self, path: str, body: object) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer test-admin-key-0123456789abcdefghijklmnopqrstuvwxyz\r\n"  # helpers.ADMIN
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines if line)
        payload = await self.reader.readexactly(int(headers["content-length"]))
        return int(status_line.split(" ", 2)[1]), json.loads(payload)

    def close(self) -> None:
        self.writer.close()


async def ingest(client: httpx.AsyncClient, n: int) -> list[int]:
    """n pending suggestions, one per distinct station pair, in one batch."""
    items = [
        {"from_station_id": 2 * i + 1, "to_station_id": 2 * i + 2, "qty": 1 + i % 5, "reason": "rebalance"}
        for i in range(n)
    ]
    response = await client.post("/suggestions", json=items)
    assert response.status_code == 201, response.text
    ids: list[int] = response.json()["ids"]
    assert len(set(ids)) == n
    return ids


async def ready_tasks(client: httpx.AsyncClient, n: int) -> list[int]:
    suggestion_ids = await ingest(client, n)
    task_ids: list[int] = []
    for start in range(0, n, 1000):
        chunk = suggestion_ids[start : start + 1000]
        response = await client.post("/tasks/approve", json={"suggestion_ids": chunk})
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["not_found"] == []
        assert [(t["suggestion_id"], t["status"]) for t in result["tasks"]] == [(s, "ready") for s in chunk]
        task_ids += [t["id"] for t in result["tasks"]]
    return task_ids


@pytest.fixture(params=[1, 2], ids=["1 worker", "2 workers"])
async def dispatch_server(
    request: pytest.FixtureRequest, database_url: str, pool: asyncpg.Pool
) -> AsyncIterator[LiveServer]:
    """`baywheels serve` with WORKERS processes, each with its own pool, dispatcher and LISTEN connection;
    stopped with SIGTERM, which it must survive with exit code 0."""
    workers: int = request.param
    server = LiveServer(database_url, env={"WORKERS": str(workers)})
    await asyncio.to_thread(server.start)
    process = server.process
    assert process is not None
    try:

        async def listening() -> int:
            return int(await pool.fetchval(LISTENERS))

        async with asyncio.timeout(30):
            while await listening() != workers:  # noqa: ASYNC110 (the workers start in other processes)
                await asyncio.sleep(0.02)
        yield server
    finally:
        await asyncio.to_thread(server.stop)
    assert process.returncode == 0


async def dispatched_total(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    match = re.search(r'^baywheels_dispatch_total\{outcome="assigned"\} (\S+)$', text, re.MULTILINE)
    return 0.0 if match is None else float(match[1])


async def test_concurrent_dispatchers_get_every_task_exactly_once(
    dispatch_server: LiveServer, pool: asyncpg.Pool
) -> None:
    live_server = dispatch_server
    async with httpx.AsyncClient(headers=ADMIN, base_url=live_server.url, timeout=30) as client:
        approved = await ready_tasks(client, TASKS)
    conns = await asyncio.gather(*(Connection.open(live_server) for _ in range(DISPATCHERS)))

    async def dispatcher(conn: Connection, worker_id: str) -> list[tuple[int, Any]]:
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
    rows = await pool.fetch("SELECT id, status, worker_id, lease_id FROM tasks")
    assert {(r["id"], r["status"], r["worker_id"], str(r["lease_id"])) for r in rows} == {
        (b["id"], "assigned", b["worker_id"], b["lease_id"]) for b in received
    }
    events = await pool.fetch("SELECT task_id, worker_id FROM task_events WHERE event = 'assigned'")
    assert sorted((e["task_id"], e["worker_id"]) for e in events) == sorted(
        (b["id"], b["worker_id"]) for b in received
    )
    # /metrics counts every worker process's dispatches, whichever process answers it.
    async with httpx.AsyncClient(headers=ADMIN, base_url=live_server.url, timeout=30) as client:
        assert await dispatched_total(client) == TASKS


async def test_racing_approvals_of_one_suggestion_make_one_task(
    live_server: LiveServer, pool: asyncpg.Pool
) -> None:
    suggestions, racers = 10, 20
    async with httpx.AsyncClient(headers=ADMIN, base_url=live_server.url, timeout=30) as client:
        suggestion_ids = await ingest(client, suggestions)
    # Connections opened beforehand, so the racing requests leave at once.
    conns = await asyncio.gather(*(Connection.open(live_server) for _ in range(racers)))
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
