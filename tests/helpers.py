"""Shared helpers for the in-process API tests: the shapes of the bodies, and short ways to seed suggestions
and tasks over the API (so the tests arrange state the way a user would)."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
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


async def approve(client: httpx.AsyncClient, suggestion_id: int) -> Json:
    task: Json = json_of(await client.post("/task/approve", json={"suggestion_id": suggestion_id}), 200)
    return task


async def make_task(
    client: httpx.AsyncClient, from_station_id: int, to_station_id: int, **fields: Any
) -> Json:
    """A ready task approved from a fresh suggestion."""
    return await approve(client, await suggest(client, from_station_id, to_station_id, **fields))


async def dispatch(client: httpx.AsyncClient, worker_id: str) -> Json:
    task: Json = json_of(await client.post("/dispatch/next", json={"worker_id": worker_id}), 200)
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


async def wait_for_lock_waiters(pool: asyncpg.Pool, count: int, within: float = 10) -> None:
    """Until ``count`` backends of this database wait on a lock: proof that racing statements overlap.

    PostgreSQL's state is polled, with a deadline that fails the test."""
    async with asyncio.timeout(within):
        while True:
            waiting = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.005)


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
