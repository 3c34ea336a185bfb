"""When the database goes away the service answers 503 with Retry-After at once, names nothing internal,
stays alive, and serves again by itself when the database is back. A pool with no free connection is
answered the same way after POOL_ACQUIRE_TIMEOUT, rather than keeping the request waiting."""

import asyncio
from typing import Any

import asyncpg
import httpx

from conftest import LiveServer
from helpers import ADMIN, until
from proxy import Proxy

RETRY_AFTER = "7"
UNAVAILABLE = {"detail": "Database unavailable, retry later"}
NOT_READY = {"detail": "Database unavailable"}


def answer(response: httpx.Response) -> tuple[int, str | None, Any]:
    return response.status_code, response.headers.get("retry-after"), response.json()


async def ingest(client: httpx.AsyncClient, pairs: range) -> list[int]:
    items = [{"from_station_id": i, "to_station_id": i + 1000, "qty": 1, "reason": "t"} for i in pairs]
    response = await client.post("/suggestions", json=items)
    assert response.status_code == 201, response.text
    ids: list[int] = response.json()["ids"]
    return ids


async def test_database_outage_answers_503_then_recovers_by_itself(database_url: str) -> None:
    proxy = Proxy(database_url)
    await proxy.start()
    server = LiveServer(
        proxy.url(),
        env={"RETRY_AFTER": RETRY_AFTER, "DB_CONNECT_TIMEOUT": "1", "POOL_ACQUIRE_TIMEOUT": "1"},
    )
    # In a thread: the proxy runs on this event loop and must forward while the server starts.
    await asyncio.to_thread(server.start)
    try:
        async with httpx.AsyncClient(headers=ADMIN, base_url=server.url, timeout=30) as client:
            suggestions = await ingest(client, range(1, 4))
            response = await client.post("/tasks/approve", json={"suggestion_ids": suggestions[:2]})
            assert response.status_code == 200
            first, second = (t["id"] for t in response.json()["tasks"])
            response = await client.post("/dispatch/next", json={"worker_id": "w1"})
            assert (response.status_code, response.json()["id"]) == (200, first)

            await proxy.stop()
            item = {"from_station_id": 7, "to_station_id": 8, "qty": 1, "reason": "t"}
            requests: list[tuple[str, str, Any]] = [
                ("POST", "/dispatch/next", {"worker_id": "w2"}),
                ("POST", "/dispatch/next", {"worker_id": "w2", "wait_seconds": 5}),
                ("GET", "/tasks", None),
                ("GET", f"/task/{first}", None),
                ("GET", f"/task/{first}/events", None),
                ("GET", "/suggestions", None),
                ("POST", "/suggestions", [item]),
                ("POST", "/task/approve", {"suggestion_id": suggestions[2]}),
                ("POST", "/tasks/approve", {"suggestion_ids": suggestions[2:]}),
                ("POST", f"/task/{first}/complete", {"worker_id": "w1"}),
            ]
            # Twice: the first round meets the pool's cut connections, the second only refused new ones.
            for _ in range(2):
                assert answer(await client.get("/readyz")) == (503, RETRY_AFTER, NOT_READY)
                for method, path, body in requests:
                    response = await client.request(method, path, json=body)
                    assert answer(response) == (503, RETRY_AFTER, UNAVAILABLE), (method, path)
                # The process is alive and says so.
                response = await client.get("/healthz")
                assert (response.status_code, response.json()) == (200, {"status": "ok"})

            await proxy.start()

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await until(ready)
            response = await client.post("/dispatch/next", json={"worker_id": "w2"})
            assert (response.status_code, response.json()["id"]) == (200, second)
            response = await client.post(f"/task/{first}/complete", json={"worker_id": "w1"})
            assert (response.status_code, response.json()["status"]) == (200, "completed")
            # The LISTEN connection is back too: a long-poll is woken by a new task.
            waiting = asyncio.ensure_future(
                client.post("/dispatch/next", json={"worker_id": "w3", "wait_seconds": 20})
            )
            response = await client.post("/task/approve", json={"suggestion_id": suggestions[2]})
            assert response.status_code == 200
            third = response.json()["id"]
            response = await waiting
            assert (response.status_code, response.json()["id"]) == (200, third)
        assert server.process is not None
        assert server.process.poll() is None  # the same process throughout
    finally:
        await asyncio.to_thread(server.stop)
        await proxy.stop()


async def test_no_free_connection_answers_503_after_pool_acquire_timeout(
    database_url: str, pool: asyncpg.Pool
) -> None:
    size = 3
    env = {
        "POOL_MIN_SIZE": "1",
        "POOL_MAX_SIZE": str(size),
        "DISPATCH_CONCURRENCY": "1",
        "POOL_ACQUIRE_TIMEOUT": "0.5",
        "RETRY_AFTER": RETRY_AFTER,
    }
    server = LiveServer(database_url, env=env)
    await asyncio.to_thread(server.start)
    try:
        async with httpx.AsyncClient(headers=ADMIN, base_url=server.url, timeout=30) as client:
            await ingest(client, range(1, 3))
            async with pool.acquire() as conn, conn.transaction():
                # Every pool connection is taken by a request stuck behind this lock.
                await conn.execute("LOCK TABLE suggestions IN ACCESS EXCLUSIVE MODE")
                stuck = [asyncio.ensure_future(client.get("/suggestions")) for _ in range(size)]

                async def all_stuck() -> bool:
                    waiting = await pool.fetchval(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                    return bool(waiting == size)

                await until(all_stuck)
                # These need no lock, only a connection: none is free, so they are told to come back.
                assert answer(await client.get("/tasks", timeout=10)) == (503, RETRY_AFTER, UNAVAILABLE)
                response = await client.post("/dispatch/next", json={"worker_id": "w"}, timeout=10)
                assert answer(response) == (503, RETRY_AFTER, UNAVAILABLE)
                assert not any(request.done() for request in stuck)
            # The lock is gone: the stuck requests finish, and the pool serves again.
            assert [r.status_code for r in await asyncio.gather(*stuck)] == [200] * size
            assert (await client.get("/tasks")).status_code == 200
    finally:
        await asyncio.to_thread(server.stop)
