"""PostgreSQL restarted (fast: every session terminated) several times under concurrent dispatch and complete
over real HTTP: no request ever gets 500, every 503 carries Retry-After, and no task is lost or handed out
twice. The database is an embedded server of this test's own, never a shared one."""

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest

from baywheels import db
from baywheels.embedded import EmbeddedPostgres
from conftest import LiveServer
from helpers import ADMIN, until

RETRY_AFTER = "1"
RESTARTS = 3
WORKERS = 32
TASKS = 20_000


@pytest.fixture
async def restartable(own_postgres: EmbeddedPostgres) -> str:
    """A migrated database holding TASKS ready tasks on the test's own server."""
    dsn = own_postgres.dsn()
    await db.migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason) "
            "SELECT g, g, g + 100000, 1, 'restart' FROM generate_series(1, $1::integer) g",
            TASKS,
        )
    finally:
        await conn.close()
    return dsn


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    without_retry_after: list[str] = field(default_factory=list)
    received: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    completed: dict[int, str] = field(default_factory=dict)
    # Unkeyed dispatches answered 503: each may have committed an assignment its worker never learnt of.
    unkeyed_unavailable: Counter[str] = field(default_factory=Counter)

    async def until_served(self, more: int) -> None:
        """Until the workers have had ``more`` further 200s (polled, with a deadline)."""

        def served() -> int:
            return sum(n for (_, status), n in self.statuses.items() if status == 200)

        target = served() + more

        async def reached() -> bool:
            return served() >= target

        await until(reached, within=30)

    def note(self, what: str, response: httpx.Response) -> None:
        self.statuses[what, response.status_code] += 1
        if response.status_code == 503 and response.headers.get("retry-after") != RETRY_AFTER:
            self.without_retry_after.append(f"{what}: {response.headers}")


async def work(client: httpx.AsyncClient, worker_id: str, keyed: bool, done: asyncio.Event, t: Tally) -> None:
    """A worker as the README tells it to behave: on 503 it retries (a keyed dispatch with the same key);
    a complete that got 503 and then 409 had landed the first time."""
    n = 0
    while not done.is_set():
        n += 1
        headers = {"Idempotency-Key": f"{worker_id}-{n}"} if keyed else {}
        while True:
            response = await client.post("/dispatch/next", json={"worker_id": worker_id}, headers=headers)
            t.note("dispatch", response)
            if response.status_code != 503:
                break
            if not keyed:
                t.unkeyed_unavailable[worker_id] += 1
                break
            await asyncio.sleep(0.02)  # a client's retry pace
        if response.status_code != 200:
            await asyncio.sleep(0.02)
            continue
        task = response.json()
        t.received[task["id"]].add(worker_id)
        body = {"worker_id": worker_id, "lease_id": task["lease_id"]}
        unavailable = False
        while True:
            response = await client.post(f"/task/{task['id']}/complete", json=body)
            t.note("complete", response)
            if response.status_code == 200 or (response.status_code == 409 and unavailable):
                t.completed[task["id"]] = worker_id
                break
            assert response.status_code == 503, f"complete: {response.status_code} {response.text}"
            unavailable = True
            await asyncio.sleep(0.02)


async def test_postgres_restarts_under_load_give_503_never_500(
    own_postgres: EmbeddedPostgres, restartable: str
) -> None:
    env = {
        "RETRY_AFTER": RETRY_AFTER,
        "DB_CONNECT_TIMEOUT": "2",
        "POOL_ACQUIRE_TIMEOUT": "2",
        "DB_COMMAND_TIMEOUT": "10",
        "POOL_MAX_SIZE": "16",
        "LOG_LEVEL": "error",
    }
    server = LiveServer(restartable, env=env)
    await asyncio.to_thread(server.start)
    tally = Tally()
    done = asyncio.Event()
    try:
        limits = httpx.Limits(max_connections=WORKERS)
        async with httpx.AsyncClient(headers=ADMIN, base_url=server.url, timeout=30, limits=limits) as client:
            workers = [
                asyncio.ensure_future(work(client, f"w{i}", i % 2 == 0, done, tally)) for i in range(WORKERS)
            ]
            try:
                for _ in range(RESTARTS):
                    # Under load first: requests are served before each restart.
                    await tally.until_served(200)
                    await asyncio.to_thread(own_postgres.restart)
                # And after the last one, the service serves again by itself.
                await tally.until_served(200)
            finally:
                done.set()
                async with asyncio.timeout(60):
                    await asyncio.gather(*workers)
        assert server.process is not None
        assert server.process.poll() is None  # the same process throughout
    finally:
        await asyncio.to_thread(server.stop)

    print(f"\nanswers over {RESTARTS} restarts: {dict(sorted(tally.statuses.items()))}")
    unexpected = {k: n for k, n in tally.statuses.items() if k[1] not in (200, 404, 409, 503)}
    assert unexpected == {}
    assert tally.without_retry_after == []
    assert tally.statuses["complete", 409] <= tally.statuses["complete", 503]

    # Handed out once: no task reached two workers, and each was assigned once in the database.
    assert {task: workers for task, workers in tally.received.items() if len(workers) > 1} == {}
    conn = await asyncpg.connect(restartable)
    try:
        assigned_twice = await conn.fetch(
            "SELECT task_id, count(*) FROM task_events WHERE event = 'assigned' "
            "GROUP BY task_id HAVING count(*) > 1"
        )
        rows = await conn.fetch("SELECT id, status, worker_id FROM tasks WHERE status <> 'ready'")
    finally:
        await conn.close()
    assert assigned_twice == []
    # Not lost: every task a worker received is completed by that worker; any other task that left 'ready'
    # is held by a worker whose unkeyed dispatch got a 503 (committed, answer lost: its lease brings it back),
    # at most one per such 503.
    state = {row["id"]: (row["status"], row["worker_id"]) for row in rows}
    assert {task: state.get(task) for task in tally.received} == {
        task: ("completed", next(iter(workers))) for task, workers in tally.received.items()
    }
    assert tally.completed.keys() == tally.received.keys()
    orphans = Counter(worker for task, (status, worker) in state.items() if task not in tally.received)
    assert all(orphans[worker] <= tally.unkeyed_unavailable[worker] for worker in orphans), (
        orphans,
        tally.unkeyed_unavailable,
    )
    assert {status for status, _ in state.values()} <= {"completed", "assigned"}
