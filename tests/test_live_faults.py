"""Faults between three `baywheels serve` instances (behind a round-robin balancer) and their database,
under a fleet of workers that dispatch and complete as the README tells them to (retry a 503, a dispatch
under the same Idempotency-Key): PostgreSQL restarted, with the pools going through PgBouncer; the network
between the service and PostgreSQL cut; the database turned read-only. While it lasts every answer is a 503
with Retry-After (never a 500); afterwards the same processes serve again, long polls that waited through
it are woken by the tasks that come after it, and in SQL: no task assigned twice, none completed twice, none
lost, each completed by the worker that was answered. The restarted PostgreSQL is the test's own
(embedded, in a temporary folder), never a shared one."""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from baywheels import db
from baywheels.embedded import EmbeddedPostgres
from bench.pgbouncer import ensure_pgbouncer, pgbouncer
from conftest import LiveServer
from fleet import instances
from helpers import ADMIN, until
from proxy import Balancer, Proxy

RETRY_AFTER = "1"
WORKERS = 48
TASKS = 1500
LONG_POLLS = 6
ENV = {
    "RETRY_AFTER": RETRY_AFTER,
    "DB_CONNECT_TIMEOUT": "2",
    "POOL_ACQUIRE_TIMEOUT": "2",
    "DB_COMMAND_TIMEOUT": "10",
    "POOL_MAX_SIZE": "8",
    "LOG_LEVEL": "warning",
}
READ_ONLY = "Database is read-only, retry later"


@dataclass
class Tally:
    """What the workers were answered."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (call, status); 0: no answer
    details_503: Counter[str] = field(default_factory=Counter)
    without_retry_after: list[str] = field(default_factory=list)
    received: dict[int, str] = field(default_factory=dict)  # task id -> the worker its dispatch answered
    completed: dict[int, str] = field(default_factory=dict)  # task id -> the worker whose complete landed

    def served(self) -> int:
        return sum(n for (call, status), n in self.statuses.items() if call == "dispatch" and status == 200)

    def unavailable(self) -> int:
        return sum(n for (_, status), n in self.statuses.items() if status == 503)

    async def post(
        self,
        client: httpx.AsyncClient,
        call: str,
        path: str,
        body: object,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response | None:
        try:
            response = await client.post(path, json=body, headers=headers)
        except httpx.TransportError:
            self.statuses[call, 0] += 1
            return None
        self.statuses[call, response.status_code] += 1
        if response.status_code == 503:
            self.details_503[response.json()["detail"]] += 1
            if response.headers.get("retry-after") != RETRY_AFTER:
                self.without_retry_after.append(f"{call}: {response.headers}")
        return response


async def work(client: httpx.AsyncClient, worker_id: str, tally: Tally, done: asyncio.Event) -> None:
    """Dispatch (a 503 or a lost answer retried under the same Idempotency-Key), then complete (retried; a 409
    after a 503 means the first one had landed)."""
    n = 0
    while not done.is_set():
        n += 1
        key = {"Idempotency-Key": f"{worker_id}-{n}"}
        response = await tally.post(client, "dispatch", "/dispatch/next", {"worker_id": worker_id}, key)
        while response is None or response.status_code == 503:
            await asyncio.sleep(0.05)  # the client's pause (shorter than Retry-After: more pressure)
            response = await tally.post(client, "dispatch", "/dispatch/next", {"worker_id": worker_id}, key)
        if response.status_code == 404:
            await asyncio.sleep(0.05)
            continue
        assert response.status_code == 200, f"dispatch: {response.status_code} {response.text}"
        task = response.json()
        assert task["id"] not in tally.received, f"task {task['id']} handed out twice"
        tally.received[task["id"]] = worker_id
        body = {"worker_id": worker_id, "lease_id": task["lease_id"]}
        unanswered = False
        while True:
            response = await tally.post(client, "complete", f"/task/{task['id']}/complete", body)
            if response is not None and (
                response.status_code == 200 or (response.status_code == 409 and unanswered)
            ):
                tally.completed[task["id"]] = worker_id
                break
            assert response is None or response.status_code == 503, (
                f"complete: {response.status_code} {response.text}"
            )
            unanswered = True
            await asyncio.sleep(0.05)


async def long_poll(client: httpx.AsyncClient, worker_id: str, tally: Tally) -> int:
    """A worker waiting for a task (asking again after a 503): the id of the task it gets."""
    body = {"worker_id": worker_id, "wait_seconds": 30}
    key = {"Idempotency-Key": f"{worker_id}-long"}
    while True:
        response = await tally.post(client, "long_poll", "/dispatch/next", body, key)
        if response is not None and response.status_code == 200:
            task_id: int = response.json()["id"]
            return task_id
        assert response is None or response.status_code in (404, 503), response.text
        await asyncio.sleep(0.05)


async def add_tasks(dsn: str, count: int, first: int) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason) "
            "SELECT g, g, g + 100000, 1, 'fault' FROM generate_series($1::integer, $2::integer) g "
            "RETURNING id",
            first,
            first + count - 1,
        )  # the insert trigger's NOTIFY wakes the instances' long polls, as after an approve
    finally:
        await conn.close()
    return [row["id"] for row in rows]


Fault = Callable[[], Awaitable[None]]


async def under_fault(
    dsn: str, balancer: Balancer, servers: list[LiveServer], begin: Fault, end: Fault
) -> Tally:
    """The fleet works through TASKS tasks; after a first part of them the fault begins, lasts until 503s have
    been answered, and ends; the fleet finishes. Then long polls wait on every instance through the fault
    again, and are answered by tasks that arrive after it. Checks every answer, then the database."""
    task_ids = await add_tasks(dsn, TASKS, 1)
    tally = Tally()
    done = asyncio.Event()
    limits = httpx.Limits(max_connections=WORKERS)
    async with httpx.AsyncClient(
        headers=ADMIN, base_url=balancer.base_url, timeout=60, limits=limits
    ) as client:
        workers = [asyncio.ensure_future(work(client, f"w{i}", tally, done)) for i in range(WORKERS)]
        try:

            async def under_way() -> bool:
                return tally.served() >= TASKS // 4

            await until(under_way, within=60)
            await begin()
            unavailable_before = tally.unavailable()

            async def refused() -> bool:
                return tally.unavailable() >= unavailable_before + WORKERS

            await until(refused, within=60)
            await end()

            async def all_completed() -> bool:
                return len(tally.completed) == TASKS

            await until(all_completed, within=120)
        finally:
            done.set()
            _, stuck = await asyncio.wait(workers, timeout=60)
            for worker in stuck:
                worker.cancel()
            await asyncio.wait(workers)
        assert not stuck, f"workers still retrying: {dict(sorted(tally.statuses.items()))}"
        for worker in workers:
            worker.result()  # a worker's own assertion

    # Long polls waiting on every instance (one connection each, round robin) through the fault once more.
    pollers = [
        httpx.AsyncClient(headers=ADMIN, base_url=balancer.base_url, timeout=120) for _ in range(LONG_POLLS)
    ]
    polls = [asyncio.ensure_future(long_poll(c, f"p{i}", tally)) for i, c in enumerate(pollers)]
    try:

        async def all_waiting() -> bool:
            counts = [await waiters(server) for server in servers]
            return sum(counts) == LONG_POLLS and all(counts)

        await until(all_waiting, within=30)
        await begin()
        await end()
        await until(ready(servers), within=60)
        late = await add_tasks(dsn, LONG_POLLS, TASKS + 1)
        async with asyncio.timeout(60):
            got = await asyncio.gather(*polls)
        assert sorted(got) == sorted(late)
    finally:
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        for poller in pollers:
            await poller.aclose()

    polled = {task: f"p{i}" for i, task in enumerate(got)}
    await check_database(dsn, tally, [*task_ids, *late], polled)
    return tally


async def waiters(server: LiveServer) -> float:
    async with httpx.AsyncClient(headers=ADMIN, base_url=server.url, timeout=10) as client:
        for line in (await client.get("/metrics")).text.splitlines():
            if line.startswith("baywheels_dispatch_waiters "):
                return float(line.split()[1])
    return 0.0


def ready(servers: list[LiveServer]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with httpx.AsyncClient(timeout=10) as client:
            answers = [await client.get(f"{server.url}/readyz") for server in servers]
        return all(answer.status_code == 200 for answer in answers)

    return check


async def check_database(dsn: str, tally: Tally, task_ids: list[int], polled: dict[int, str]) -> None:
    print(f"\nanswers: {dict(sorted(tally.statuses.items()))}; 503 details: {dict(tally.details_503)}")
    unexpected = {key: n for key, n in tally.statuses.items() if key[1] not in (0, 200, 404, 409, 503)}
    assert unexpected == {}, "never a 500 (nor anything but these)"
    assert tally.without_retry_after == []
    assert tally.statuses["complete", 409] <= tally.statuses["complete", 503] + tally.statuses["complete", 0]
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT t.id, t.status, t.worker_id,"
            " count(*) FILTER (WHERE e.event = 'assigned') AS assigned,"
            " count(*) FILTER (WHERE e.event = 'completed') AS completed"
            " FROM tasks t LEFT JOIN task_events e ON e.task_id = t.id GROUP BY t.id"
        )
    finally:
        await conn.close()
    assert sorted(row["id"] for row in rows) == sorted(task_ids)  # none lost
    assert [row["id"] for row in rows if row["assigned"] != 1] == []  # each handed out exactly once
    assert [row["id"] for row in rows if row["completed"] > 1] == []  # none completed twice
    # Every task the fleet worked is completed, by the worker its dispatch answered; each long poll's task
    # is held by the long poll answered with it.
    state = {row["id"]: (row["status"], row["worker_id"]) for row in rows}
    expected = {task: ("completed", worker) for task, worker in tally.received.items()}
    expected |= {task: ("assigned", worker) for task, worker in polled.items()}
    assert state == expected
    assert tally.completed == tally.received


@asynccontextmanager
async def fleet_of_instances(
    database_url: str, env: dict[str, str], logs: Path
) -> AsyncIterator[tuple[list[LiveServer], Balancer]]:
    async with instances(database_url, 3, {**ENV, **env}, logs) as (servers, balancer):
        yield servers, balancer
        assert all(server.process is not None and server.process.poll() is None for server in servers), (
            "an instance exited: recovery must not need a restart"
        )


async def test_postgres_restart_through_pgbouncer(own_postgres: EmbeddedPostgres, tmp_path: Path) -> None:
    binary = await asyncio.to_thread(ensure_pgbouncer)
    if binary is None:
        pytest.skip(
            "PGBOUNCER NOT AVAILABLE: not installed, and it cannot be installed here (needs root and apt-get)"
        )
    dsn = own_postgres.dsn()
    await db.migrate(dsn)
    async with (
        pgbouncer(binary, dsn, pool_size=12) as pooled,
        fleet_of_instances(pooled, {"DIRECT_DATABASE_URL": dsn}, tmp_path) as (servers, balancer),
    ):

        async def stop() -> None:
            await asyncio.to_thread(own_postgres.pg_ctl, "stop")

        async def start() -> None:
            await asyncio.to_thread(own_postgres.start)

        tally = await under_fault(dsn, balancer, servers, stop, start)
    assert tally.details_503.keys() == {"Database unavailable, retry later"}


async def test_network_cut_between_service_and_database(database_url: str, tmp_path: Path) -> None:
    proxy = Proxy(database_url)
    await proxy.start()
    try:
        async with fleet_of_instances(proxy.url(), {}, tmp_path) as (servers, balancer):
            tally = await under_fault(database_url, balancer, servers, proxy.stop, proxy.start)
    finally:
        await proxy.stop()
    assert tally.details_503.keys() == {"Database unavailable, retry later"}


async def test_read_only_database(database_url: str, tmp_path: Path) -> None:
    """As after a failover that left DATABASE_URL on a standby, or a disk-full primary put read-only: every
    new session is read-only, and the sessions open are ended (as a failover ends them)."""
    database = urlsplit(database_url).path.lstrip("/")  # the embedded server's DSN has a socket path after it

    async def read_only(on: bool) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            setting = (
                "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
            )
            # This session too starts read-only while the database is: ALTER DATABASE needs it writable.
            await conn.execute("SET default_transaction_read_only = off")
            await conn.execute(f'ALTER DATABASE "{database}" {setting}')
            if on:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        finally:
            await conn.close()

    async def begin() -> None:
        await read_only(True)

    async def end() -> None:
        await read_only(False)

    async with fleet_of_instances(database_url, {}, tmp_path) as (servers, balancer):
        tally = await under_fault(database_url, balancer, servers, begin, end)
    assert READ_ONLY in tally.details_503
