"""Shared helpers for the in-process API tests: the shapes of the bodies, and short ways to seed suggestions
and tasks over the API (so the tests arrange state the way a user would)."""

import asyncio
import itertools
import json
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from baywheels.app import create_app
from baywheels.settings import Settings
from baywheels.state import STATE_KEY, AppState

# Every key of a task body. Tests compare bodies through these sets, so a new field changes one line.
TASK_KEYS = frozenset(
    {
        "id",
        "suggestion_id",
        "from_station_id",
        "to_station_id",
        "qty",
        "reason",
        "priority",
        "status",
        "worker_id",
        "created_at",
        "assigned_at",
        "completed_at",
        # Lifecycle: leases, fencing, retries, delayed work.
        "attempts",
        "lease_id",
        "lease_expires_at",
        "picked_up_at",
        "last_error",
        "not_before",
        "available_at",
        # Stations: why the latest station status cannot serve it.
        "stale_reason",
    }
)
SUGGESTION_KEYS = frozenset(
    {"id", "from_station_id", "to_station_id", "qty", "reason", "priority", "not_before", "created_at"}
)
EVENT_KEYS = frozenset({"event", "worker_id", "detail", "at", "actor"})
INGEST_KEYS = frozenset({"created", "updated", "duplicates", "ids"})

Json = dict[str, Any]

# The tests' admin credential (ADMIN_API_KEY): the API tests speak as an admin unless they test who may do
# what, with a budget no test's burst reaches (the rate-limit tests set their own).
ADMIN_KEY = "test-admin-key-0123456789abcdefghijklmnopqrstuvwxyz"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
AUTH_ENV = {"ADMIN_API_KEY": ADMIN_KEY, "RATE_LIMIT_ADMIN": "1000000/second"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def item(
    from_station_id: Any, to_station_id: Any, qty: Any = 3, reason: str = "rebalance", **extra: Any
) -> Json:
    """One suggestion as the ML engine posts it."""
    return {
        "from_station_id": from_station_id,
        "to_station_id": to_station_id,
        "qty": qty,
        "reason": reason,
        **extra,
    }


def json_of(response: httpx.Response, status: int) -> Any:
    """The body of a response that must have ``status``; the failure message shows what came instead."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    return response.json()


def assert_task(body: Json, **expected: Any) -> None:
    """A task body: exactly the task keys, and the given values."""
    assert set(body) == TASK_KEYS
    assert {key: body[key] for key in expected} == expected


async def ingest(client: httpx.AsyncClient, items: list[Json]) -> Json:
    result: Json = json_of(await client.post("/suggestions", json=items), 201)
    return result


_pairs = itertools.count(1)


def new_items(n: int, **fields: Any) -> list[Json]:
    """n suggestions, each for a station pair no other call has used, so none replaces another."""
    return [item(2 * p - 1, 2 * p, **fields) for p in itertools.islice(_pairs, n)]


async def suggest(client: httpx.AsyncClient, from_station_id: int, to_station_id: int, **fields: Any) -> int:
    """Ingest one suggestion and return its id."""
    result = await ingest(client, [item(from_station_id, to_station_id, **fields)])
    suggestion_id: int = result["ids"][0]
    return suggestion_id


async def suggestions(client: httpx.AsyncClient) -> list[Json]:
    """Every pending suggestion, following the pages."""
    found: list[Json] = []
    while True:
        after = found[-1]["id"] if found else 0
        page: list[Json] = json_of(await client.get(f"/suggestions?limit=1000&after_id={after}"), 200)
        found += page
        if len(page) < 1000:
            return found


async def suggest_many(client: httpx.AsyncClient, n: int, **fields: Any) -> list[int]:
    """Ingest n new suggestions in one batch and return their ids."""
    ids: list[int] = (await ingest(client, new_items(n, **fields)))["ids"]
    assert len(set(ids)) == n
    return ids


async def approve(client: httpx.AsyncClient, suggestion_id: int) -> Json:
    task: Json = json_of(await client.post("/task/approve", json={"suggestion_id": suggestion_id}), 200)
    return task


async def approve_many(client: httpx.AsyncClient, suggestion_ids: list[int]) -> list[Json]:
    """Approve the suggestions in one call; their tasks, in the same order."""
    result = json_of(await client.post("/tasks/approve", json={"suggestion_ids": suggestion_ids}), 200)
    assert result["not_found"] == []
    tasks: list[Json] = result["tasks"]
    assert [task["suggestion_id"] for task in tasks] == suggestion_ids
    return tasks


async def make_task(
    client: httpx.AsyncClient, from_station_id: int, to_station_id: int, **fields: Any
) -> Json:
    """A ready task approved from a fresh suggestion."""
    return await approve(client, await suggest(client, from_station_id, to_station_id, **fields))


async def make_tasks(client: httpx.AsyncClient, n: int, **fields: Any) -> list[Json]:
    """n tasks approved from n new suggestions, in one call each."""
    return await approve_many(client, await suggest_many(client, n, **fields))


async def dispatch(client: httpx.AsyncClient, worker_id: str, **fields: Any) -> Json:
    task: Json = json_of(await client.post("/dispatch/next", json={"worker_id": worker_id, **fields}), 200)
    return task


async def complete(client: httpx.AsyncClient, task_id: int, worker_id: str | None = None) -> httpx.Response:
    body = {} if worker_id is None else {"worker_id": worker_id}
    return await client.post(f"/task/{task_id}/complete", json=body)


async def get_task(client: httpx.AsyncClient, task_id: int) -> Json:
    task: Json = json_of(await client.get(f"/task/{task_id}"), 200)
    return task


async def events(client: httpx.AsyncClient, task_id: int) -> list[tuple[str, str | None]]:
    body = json_of(await client.get(f"/task/{task_id}/events"), 200)
    return [(event["event"], event["worker_id"]) for event in body]


async def assert_assigned_as_told(pool: asyncpg.Pool, told: list[Json]) -> None:
    """The database agrees with what each worker was told (``told``: the dispatch answers, one per task):
    each task is assigned to that worker under that lease, and each assignment was recorded once."""
    rows = await pool.fetch("SELECT id, status, worker_id, lease_id FROM tasks")
    assert {(r["id"], r["status"], r["worker_id"], str(r["lease_id"])) for r in rows} == {
        (b["id"], "assigned", b["worker_id"], b["lease_id"]) for b in told
    }
    assigned = await pool.fetch("SELECT task_id, worker_id FROM task_events WHERE event = 'assigned'")
    assert sorted((r["task_id"], r["worker_id"]) for r in assigned) == sorted(
        (b["id"], b["worker_id"]) for b in told
    )


async def metric(client: httpx.AsyncClient, sample: str, default: float | None = 0.0) -> float:
    """The value of one sample of /metrics, or ``default`` while the service has none (a labelled counter
    before its first count); with no default, the sample must be there."""
    text = (await client.get("/metrics")).text
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, flags=re.MULTILINE)
    if found is None:
        assert default is not None, f"no {sample} in /metrics"
        return default
    return float(found[1])


async def waiters(client: httpx.AsyncClient) -> float:
    """How many long-polls sleep in that process's dispatcher, having found nothing to take."""
    return await metric(client, "baywheels_dispatch_waiters", default=None)


async def until_waiting(client: httpx.AsyncClient, n: int) -> None:
    """Until n long-polls wait in that process's dispatcher."""

    async def waiting() -> bool:
        return await waiters(client) == n

    await until(waiting)


class RawConnection:
    """One keep-alive HTTP/1.1 connection of its own, as one worker's client would hold. Much lighter than an
    httpx client with hundreds of connections, whose pool would be what a test measured; cancelling a request
    and closing the connection is a client hanging up."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "RawConnection":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, path: str, body: object) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
            % (path.encode(), ADMIN_KEY.encode(), len(data), data)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines if line)
        payload = await self.reader.readexactly(int(headers["content-length"]))
        return int(status_line.split(" ", 2)[1]), json.loads(payload)

    def close(self) -> None:
        self.writer.close()


async def raw_post(port: int, path: str, body: object) -> tuple[int, Any]:
    """One POST over a connection of its own, closed afterwards (or when the request is cancelled)."""
    conn = await RawConnection.open(port)
    try:
        return await conn.post(path, body)
    finally:
        conn.close()


async def expire_leases(pool: asyncpg.Pool, *task_ids: int) -> None:
    """Moves these tasks' leases a second into the past, as if their holders had gone silent."""
    await pool.execute(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = ANY($1::bigint[])",
        task_ids,
    )


async def wait_for_lock_waiters(pool: asyncpg.Pool, count: int, within: float = 10) -> None:
    """Until ``count`` backends of this database wait on a lock: proof that racing statements overlap.

    PostgreSQL's state is polled, with a deadline that fails the test."""

    async def waiting() -> bool:
        waiters: int = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return waiters >= count

    await until(waiting, within)


@asynccontextmanager
async def in_process_with_state(
    app: Starlette, request_timeout: float = 5.0, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    """The app with its lifespan running, spoken to over ASGI, and the lifespan's state. httpx's transport
    runs no lifespan, so each request gets a copy of that state here, as uvicorn gives it. The client speaks
    as the tests' admin unless given other ``headers``."""
    async with app.router.lifespan_context(app) as lifespan_state:
        state = dict(lifespan_state or {})

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, "state": dict(state)}, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            timeout=request_timeout,
            headers=ADMIN if headers is None else headers,
        ) as client:
            yield client, state


@asynccontextmanager
async def in_process(
    app: Starlette, headers: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """As ``in_process_with_state``, for a test that needs only the client."""
    async with in_process_with_state(app, headers=headers) as (client, _):
        yield client


@asynccontextmanager
async def serving(settings: Settings, database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, AppState]]:
    """As ``in_process``, on ``database_url`` and failing fast while it is unreachable (a test's proxy taken
    down), with the lifespan's state at hand."""
    fast_failing = msgspec.structs.replace(
        settings, database_url=database_url, db_connect_timeout=1.0, pool_acquire_timeout=1.0
    )
    async with in_process_with_state(create_app(fast_failing), request_timeout=60) as (client, state):
        yield client, state[STATE_KEY]


async def until(condition: Callable[[], Awaitable[bool]], within: float = 15) -> None:
    """Until ``condition`` holds: it reads state that another task, process or PostgreSQL changes, so it is
    polled, with a deadline that fails the test."""
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110 (nothing to await: the change happens elsewhere)
            await asyncio.sleep(0.005)


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A small HTTP server (a fake identity provider, another site) on a free loopback port, serving from a
    thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@contextmanager
def embedded_postgres_dir() -> Iterator[Path]:
    """A folder for an embedded PostgreSQL, outside pytest's /tmp/pytest-of-<user>: another pytest starting
    meanwhile resets that folder's mode (and prunes old runs), which locks out the server's own system user
    (embedded-postgres runs the server as one when we are root)."""
    with tempfile.TemporaryDirectory(prefix="baywheels-test-pg-") as folder:
        yield Path(folder)
