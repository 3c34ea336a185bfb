"""A fleet of field workers over real TCP for the deployment tests: each holds one keep-alive HTTP/1.1
connection (through a balancer), asks for tasks, optionally completes them, and connects again when its
connection is cut. What they were answered is kept, to be checked against the database afterwards: no task
assigned twice, none lost, every answered task held by the worker that was answered."""

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from conftest import LiveServer
from helpers import ADMIN_KEY
from proxy import Balancer

NO_ANSWER = 0  # the status recorded for a request whose connection was cut before its answer


@asynccontextmanager
async def instances(
    database_url: str, count: int, env: dict[str, str], logs: Path
) -> AsyncIterator[tuple[list[LiveServer], Balancer]]:
    """``count`` instances of `baywheels serve` on ``database_url``, started together, behind a balancer."""
    servers = [LiveServer(database_url, env=env, log_path=logs / f"instance{n}.log") for n in range(count)]
    try:
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        balancer = Balancer([server.port for server in servers])
        await balancer.start()
        try:
            yield servers, balancer
        finally:
            await balancer.stop()
    finally:
        await asyncio.gather(*(asyncio.to_thread(server.stop) for server in servers))


class Connection:
    """One keep-alive HTTP/1.1 connection, opened on first use and again after a cut."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: object) -> tuple[int, Any]:
        """The status and body, or (NO_ANSWER, None) when the connection was cut or refused first."""
        try:
            if self._streams is None:
                self._streams = await asyncio.open_connection("127.0.0.1", self._port)
            reader, writer = self._streams
            data = json.dumps(body).encode()
            writer.write(
                b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
                % (path.encode(), ADMIN_KEY.encode(), len(data), data)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode().split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines if line)
            payload = await reader.readexactly(int(headers["content-length"]))
            if headers.get("connection") == "close":
                self.close()
            return int(status_line.split(" ", 2)[1]), json.loads(payload) if payload else None
        except (OSError, asyncio.IncompleteReadError):
            self.close()
            return NO_ANSWER, None

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


@dataclass
class Fleet:
    """``size`` workers asking through ``port`` until ``stop()``; each long-polls ``wait_seconds``."""

    port: int
    size: int
    wait_seconds: float = 1.0
    lease_seconds: int | None = None
    complete: bool = False  # complete each task received (retrying until answered)
    # (task id, lease id) -> worker, for every 200 of /dispatch/next
    assigned: dict[tuple[int, str], str] = field(default_factory=dict)
    completed: dict[int, str] = field(default_factory=dict)  # task id -> worker, for every 200 of complete
    statuses: Counter[int] = field(default_factory=Counter)  # of /dispatch/next, NO_ANSWER for cuts
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(f"w{n}")) for n in range(self.size)]

    async def stop(self) -> None:
        """Each worker finishes the request it is in (a long poll ends within ``wait_seconds``)."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)

    async def _worker(self, worker_id: str) -> None:
        conn = Connection(self.port)
        body: dict[str, Any] = {"worker_id": worker_id, "wait_seconds": self.wait_seconds}
        if self.lease_seconds is not None:
            body["lease_seconds"] = self.lease_seconds
        try:
            while not self._stopping.is_set():
                status, task = await conn.post("/dispatch/next", body)
                self.statuses[status] += 1
                if status == 200:
                    assert task["worker_id"] == worker_id, task
                    self.assigned[(task["id"], task["lease_id"])] = worker_id
                    if self.complete:
                        await self._complete(conn, worker_id, task)
                elif status not in (404, NO_ANSWER, 503):
                    raise AssertionError(f"/dispatch/next answered {status} {task}")
                if status in (NO_ANSWER, 503):
                    await asyncio.sleep(0.02)  # a client's backoff before it asks again
        finally:
            conn.close()

    async def _complete(self, conn: Connection, worker_id: str, task: dict[str, Any]) -> None:
        body = {"worker_id": worker_id, "lease_id": task["lease_id"]}
        while True:
            status, answer = await conn.post(f"/task/{task['id']}/complete", body)
            if status == 200:
                self.completed[task["id"]] = worker_id
                return
            if status == 409:  # the lease ran out and the task went back (the maintenance loop's rescue)
                return
            assert status in (NO_ANSWER, 503), f"complete answered {status} {answer}"
            await asyncio.sleep(0.02)


async def ready_tasks(client: httpx.AsyncClient, first: int, count: int) -> list[int]:
    """``count`` new ready tasks, on station pairs numbered from ``first``; their ids."""
    items = [
        {"from_station_id": 2 * i + 1, "to_station_id": 2 * i + 2, "qty": 1, "reason": "rebalance"}
        for i in range(first, first + count)
    ]
    response = await client.post("/suggestions", json=items)
    assert response.status_code == 201, response.text
    response = await client.post("/tasks/approve", json={"suggestion_ids": response.json()["ids"]})
    assert response.status_code == 200, response.text
    return [task["id"] for task in response.json()["tasks"]]


async def assert_each_answered_once(pool: asyncpg.Pool, fleet: Fleet, task_ids: list[int]) -> None:
    """Without lease expiry: every task was assigned exactly once, to a request that got the answer, and
    is held by the worker answered under the lease it was answered with."""
    rows = await pool.fetch(
        "SELECT t.id, t.status, t.worker_id, t.lease_id::text AS lease_id,"
        " (SELECT count(*) FROM task_events e WHERE e.task_id = t.id AND e.event = 'assigned') AS times"
        " FROM tasks t WHERE t.id = ANY($1::bigint[])",
        task_ids,
    )
    assert len(rows) == len(task_ids)
    twice = [row["id"] for row in rows if row["times"] != 1]
    assert twice == [], f"tasks assigned other than once: {twice}"
    held = {(row["id"], row["lease_id"]): row["worker_id"] for row in rows if row["status"] == "assigned"}
    not_assigned = sorted(row["id"] for row in rows if row["status"] != "assigned")
    assert not_assigned == [], f"tasks never handed out: {not_assigned}"
    answered = {key: worker for key, worker in fleet.assigned.items() if key[0] in set(task_ids)}
    unanswered = sorted(set(held) - set(answered))
    assert unanswered == [], f"tasks assigned to a request that got no answer: {unanswered}"
    assert answered == held


async def assert_completed_once(pool: asyncpg.Pool, fleet: Fleet, task_ids: list[int]) -> None:
    """With lease expiry: every task completed exactly once, by the worker whose complete was answered; a
    task was handed out again only after its lease ran out."""
    rows = await pool.fetch(
        "SELECT t.id, t.status, t.worker_id, array_agg(e.event ORDER BY e.id) AS events"
        " FROM tasks t JOIN task_events e ON e.task_id = t.id"
        " WHERE t.id = ANY($1::bigint[]) GROUP BY t.id",
        task_ids,
    )
    assert len(rows) == len(task_ids)
    unfinished = sorted(row["id"] for row in rows if row["status"] != "completed")
    assert unfinished == [], f"tasks not completed: {unfinished}"
    assert {row["id"]: row["worker_id"] for row in rows} == fleet.completed
    for row in rows:
        events = [e for e in row["events"] if e != "approved"]
        # assigned, then (lease_expired, assigned)*, then completed once: never two holders at once.
        held = events[:-1]
        assert events[-1] == "completed", (row["id"], events)
        assert len(held) % 2 == 1, (row["id"], events)
        assert set(held[0::2]) == {"assigned"}, (row["id"], events)
        assert set(held[1::2]) <= {"lease_expired"}, (row["id"], events)
