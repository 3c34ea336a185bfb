"""Who may do what, over the app in-process: the role matrix (generated from the endpoints the handlers
declare), workers bound to their own tasks, key management, the audit of every actor, and the switches
(AUTH=off, METRICS_PUBLIC, the long-poll cap, rate limits, CORS, the docs' headers)."""

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from baywheels import auth, queries, settings
from baywheels.app import create_app
from baywheels.endpoints import Endpoint
from baywheels.handlers import ENDPOINTS
from baywheels.models import ROLES
from baywheels.state import STATE_KEY
from helpers import (
    ADMIN,
    ADMIN_KEY,
    bearer,
    in_process,
    in_process_with_state,
    item,
    json_of,
    make_task,
    until,
)

W = "van-1"
OTHER = "van-2"

Request = tuple[str, str, Any]  # method, path, JSON body (None: no body)


@dataclass(frozen=True)
class Caller:
    """A credential of the matrix: its headers, and the role it has (None: refused before any role)."""

    name: str
    headers: dict[str, str]
    role: str | None


def beside(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """Another client of the same in-process app, with only the given headers (no credential by default)."""
    return httpx.AsyncClient(transport=client._transport, base_url="http://testserver", headers=headers)


@pytest.fixture
async def anon(client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    async with beside(client) as anonymous:
        yield anonymous


async def create_key(client: httpx.AsyncClient, role: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = json_of(await client.post("/keys", json={"role": role, **fields}), 201)
    return body


async def callers(admin: httpx.AsyncClient) -> list[Caller]:
    """One key per role (the worker's is W's), and the credentials that must be refused with 401."""
    found = []
    for role in ROLES:
        fields = {"worker_id": W} if role == "worker" else {}
        found.append(Caller(role, bearer((await create_key(admin, role, **fields))["key"]), role))
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    expired = await create_key(admin, "admin", expires_at=past)
    revoked = await create_key(admin, "admin")
    assert (await admin.delete(f"/keys/{revoked['key_id']}")).status_code == 204
    return [
        *found,
        Caller("no token", {}, None),
        Caller("not bearer", {"Authorization": f"Basic {revoked['key']}"}, None),
        Caller("malformed", bearer(revoked["key"][:-1] + ("x" if revoked["key"][-1] != "x" else "y")), None),
        Caller("unknown", bearer(auth.new_key().token), None),
        Caller("expired", bearer(expired["key"]), None),
        Caller("revoked", bearer(revoked["key"]), None),
    ]


def holder_body(caller: Caller, **fields: Any) -> dict[str, Any]:
    """A holder's body: a worker's key implies W, anyone else names W."""
    return fields if caller.role == "worker" else {"worker_id": W, **fields}


_stations = iter(range(1, 1_000_000, 2))


async def held_task(admin: httpx.AsyncClient) -> int:
    """A task dispatched to W (the one made here, or one an earlier example left ready)."""
    n = next(_stations)
    await make_task(admin, n, n + 1)
    task_id: int = json_of(await admin.post("/dispatch/next", json={"worker_id": W}), 200)["id"]
    return task_id


async def fresh_suggestion(admin: httpx.AsyncClient) -> int:
    n = next(_stations)
    ids = json_of(await admin.post("/suggestions", json=[item(n, n + 1)]), 201)["ids"]
    suggestion_id: int = ids[0]
    return suggestion_id


Example = Callable[[httpx.AsyncClient, Caller], Awaitable[Request]]


async def _holder_call(admin: httpx.AsyncClient, caller: Caller, action: str, **fields: Any) -> Request:
    return "POST", f"/task/{await held_task(admin)}/{action}", holder_body(caller, **fields)


async def _dispatch(admin: httpx.AsyncClient, caller: Caller) -> Request:
    n = next(_stations)
    await make_task(admin, n, n + 1)
    return "POST", "/dispatch/next", holder_body(caller)


async def _retry(admin: httpx.AsyncClient, caller: Caller) -> Request:
    n = next(_stations)
    task = await make_task(admin, n, n + 1)
    json_of(await admin.post(f"/task/{task['id']}/cancel"), 200)
    return "POST", f"/task/{task['id']}/retry", None


async def _cancel(admin: httpx.AsyncClient, caller: Caller) -> Request:
    n = next(_stations)
    task = await make_task(admin, n, n + 1)
    return "POST", f"/task/{task['id']}/cancel", None


async def _registered(admin: httpx.AsyncClient, suffix: str) -> Request:
    """W, registered: a worker's key reads its own."""
    body = {"name": "Van one", "capacity": 12, "on_shift": True}
    assert (await admin.put(f"/workers/{W}", json=body)).status_code == 200
    return "GET", f"/workers/{W}{suffix}", None


async def _revoke(admin: httpx.AsyncClient, caller: Caller) -> Request:
    return "DELETE", f"/keys/{(await create_key(admin, 'viewer'))['key_id']}", None


def _const(request: Request) -> Example:
    async def example(admin: httpx.AsyncClient, caller: Caller) -> Request:
        return request

    return example


# A request that succeeds for a caller whose role may make it, per operation. An endpoint without one here
# fails test_every_endpoint_has_an_example, so none is added without its place in the matrix.
EXAMPLES: dict[str, Example] = {
    "root": _const(("GET", "/", None)),
    "healthz": _const(("GET", "/healthz", None)),
    "readyz": _const(("GET", "/readyz", None)),
    "get_metrics": _const(("GET", "/metrics", None)),
    "list_suggestions": _const(("GET", "/suggestions", None)),
    "dismiss": lambda admin, caller: _dismiss(admin),
    "list_outcomes": _const(("GET", "/suggestions/outcomes", None)),
    # follow=false: the stream ends once sent, so the in-process client can read it whole.
    "get_stats": _const(("GET", "/stats", None)),
    "stream_events": _const(("GET", "/events?follow=false&after=0", None)),
    "ingest": lambda admin, caller: _ingest(),
    "approve": lambda admin, caller: _approve(admin, many=False),
    "approve_many": lambda admin, caller: _approve(admin, many=True),
    "complete": lambda admin, caller: _holder_call(admin, caller, "complete"),
    "heartbeat": lambda admin, caller: _holder_call(admin, caller, "heartbeat"),
    "pickup": lambda admin, caller: _holder_call(admin, caller, "pickup"),
    "release": lambda admin, caller: _holder_call(admin, caller, "release"),
    "fail": lambda admin, caller: _holder_call(admin, caller, "fail", error="jammed"),
    "get_task": lambda admin, caller: _read(admin, ""),
    "task_events": lambda admin, caller: _read(admin, "/events"),
    "list_tasks": _const(("GET", "/tasks", None)),
    "dispatch_next": _dispatch,
    "cancel": _cancel,
    "retry": _retry,
    "create_key": _const(("POST", "/keys", {"role": "viewer", "name": "matrix"})),
    "list_keys": _const(("GET", "/keys", None)),
    "revoke_key": _revoke,
    "list_stations": _const(("GET", "/stations", None)),
    "get_station": lambda admin, caller: _station(""),
    "station_history": lambda admin, caller: _station("/history"),
    "put_worker": _const(("PUT", f"/workers/{W}", {"name": "Van one", "capacity": 12, "on_shift": True})),
    "list_workers": _const(("GET", "/workers", None)),
    "get_worker": lambda admin, caller: _registered(admin, ""),
    "worker_stats": lambda admin, caller: _registered(admin, "/stats"),
}

# The test's database, for the one thing the API cannot make: a station (the GBFS import makes them).
_DATABASE: list[str] = []


async def _station(suffix: str) -> Request:
    conn = await asyncpg.connect(_DATABASE[0])
    try:
        station_id = await conn.fetchval(
            "INSERT INTO stations (gbfs_station_id, name, lat, lon) VALUES ($1, 'matrix', 37.78, -122.4) "
            "RETURNING id",
            f"matrix-{next(_stations)}",
        )
    finally:
        await conn.close()
    return "GET", f"/stations/{station_id}{suffix}", None


async def _ingest() -> Request:
    n = next(_stations)
    return "POST", "/suggestions", [item(n, n + 1)]


async def _approve(admin: httpx.AsyncClient, many: bool) -> Request:
    suggestion_id = await fresh_suggestion(admin)
    if many:
        return "POST", "/tasks/approve", {"suggestion_ids": [suggestion_id]}
    return "POST", "/task/approve", {"suggestion_id": suggestion_id}


async def _dismiss(admin: httpx.AsyncClient) -> Request:
    return "POST", "/suggestions/dismiss", {"suggestion_ids": [await fresh_suggestion(admin)], "reason": "x"}


async def _read(admin: httpx.AsyncClient, suffix: str) -> Request:
    return "GET", f"/task/{await held_task(admin)}{suffix}", None


def test_every_endpoint_has_an_example() -> None:
    assert set(EXAMPLES) == {endpoint.operation_id for endpoint in ENDPOINTS}


def test_every_endpoint_declares_who_may_call_it() -> None:
    public = {endpoint.path for endpoint in ENDPOINTS if endpoint.roles is None}
    assert public == {"/", "/healthz", "/readyz"}
    for endpoint in ENDPOINTS:
        assert endpoint.roles is None or endpoint.roles <= set(ROLES), endpoint.path
        assert endpoint.roles is None or "admin" in endpoint.roles, endpoint.path


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.operation_id)
async def test_role_matrix(
    client: httpx.AsyncClient, anon: httpx.AsyncClient, endpoint: Endpoint, database_url: str
) -> None:
    """Every endpoint x every credential: 2xx for the roles it declares, 403 naming them for the others,
    401 with WWW-Authenticate for no, a malformed, unknown, expired or revoked token."""
    _DATABASE[:] = [database_url]
    found: dict[str, int] = {}
    expected: dict[str, int] = {}
    for caller in await callers(client):
        method, path, body = await EXAMPLES[endpoint.operation_id](client, caller)
        response = await anon.request(method, path, json=body, headers=caller.headers)
        status = response.status_code
        found[caller.name] = 200 if 200 <= status < 300 else status
        if endpoint.roles is None or caller.role in endpoint.roles:
            expected[caller.name] = 200
        elif caller.role is None:
            expected[caller.name] = 401
            if status == 401:
                assert response.headers["www-authenticate"].startswith("Bearer")
        else:
            expected[caller.name] = 403
            if status == 403:
                detail = response.json()["detail"]
                assert all(role in detail for role in endpoint.roles), detail
        if found[caller.name] != expected[caller.name]:
            found[caller.name] = f"{status} {response.text[:200]}"  # type: ignore[assignment]
    assert found == expected


# Workers are bound -----------------------------------------------------------------------------------------


@pytest.fixture
async def workers(client: httpx.AsyncClient) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """In-process clients of worker A (W) and worker B (OTHER), on the same app as ``client``."""
    a = await create_key(client, "worker", worker_id=W)
    b = await create_key(client, "worker", worker_id=OTHER)
    async with beside(client, bearer(a["key"])) as wa, beside(client, bearer(b["key"])) as wb:
        yield wa, wb


async def test_a_worker_cannot_touch_another_workers_task(
    client: httpx.AsyncClient, workers: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, b = workers
    await make_task(client, 1, 2)
    task = json_of(await b.post("/dispatch/next", json={}), 200)
    assert task["worker_id"] == OTHER  # taken from the key
    task_id = task["id"]
    lease = {"lease_id": task["lease_id"]}
    for action, body in [
        ("complete", {}),
        ("heartbeat", {}),
        ("pickup", lease),
        ("release", {}),
        ("fail", {"error": "x"}),
    ]:
        response = await a.post(f"/task/{task_id}/{action}", json=body)
        assert json_of(response, 404) == {"detail": f"Task with id {task_id} not found"}, action
    # Reading it: 404 exactly as for a task that does not exist; listing: not there.
    assert json_of(await a.get(f"/task/{task_id}"), 404) == json_of(await a.get("/task/999999"), 404) | {
        "detail": f"Task with id {task_id} not found"
    }
    json_of(await a.get(f"/task/{task_id}/events"), 404)
    assert json_of(await a.get("/tasks"), 200) == []
    assert [t["id"] for t in json_of(await b.get("/tasks"), 200)] == [task_id]
    # Naming B in the body, or in the list's filter, is refused before anything else.
    for action in ("complete", "heartbeat", "pickup", "release", "fail"):
        body = {"worker_id": OTHER, "error": "x"} if action == "fail" else {"worker_id": OTHER}
        detail = json_of(await a.post(f"/task/{task_id}/{action}", json=body), 403)["detail"]
        assert W in detail
    json_of(await a.post("/dispatch/next", json={"worker_id": OTHER}), 403)
    json_of(await a.get(f"/tasks?worker_id={OTHER}"), 403)
    # Nothing changed; B still holds it, and B's own calls work.
    assert json_of(await client.get(f"/task/{task_id}"), 200)["status"] == "assigned"
    json_of(await b.post(f"/task/{task_id}/heartbeat", json={"worker_id": OTHER}), 200)
    assert json_of(await b.get(f"/task/{task_id}"), 200)["id"] == task_id


async def test_an_operator_reads_and_cancels_and_an_admin_acts_for_the_worker(
    client: httpx.AsyncClient, workers: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    _, b = workers
    operator = bearer((await create_key(client, "operator"))["key"])
    await make_task(client, 1, 2)
    await make_task(client, 3, 4)
    first = json_of(await b.post("/dispatch/next", json={}), 200)["id"]
    second = json_of(await b.post("/dispatch/next", json={}), 200)["id"]
    assert json_of(await client.get(f"/task/{first}", headers=operator), 200)["worker_id"] == OTHER
    json_of(await client.post(f"/task/{first}/cancel", headers=operator), 200)
    # The admin completes B's task in B's name.
    done = json_of(await client.post(f"/task/{second}/complete", json={"worker_id": OTHER}), 200)
    assert (done["status"], done["worker_id"]) == ("completed", OTHER)
    # An admin acting for a worker must say which.
    assert json_of(await client.post(f"/task/{second}/heartbeat", json={}), 400) == {
        "detail": "Object missing required field `worker_id`"
    }


async def test_every_event_names_its_actor(
    client: httpx.AsyncClient, workers: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, _ = workers
    operator_key = await create_key(client, "operator")
    operator = bearer(operator_key["key"])
    worker_key_id = json_of(await client.get("/keys"), 200)[0]["key_id"]
    suggestion = await fresh_suggestion(client)
    task = json_of(
        await client.post("/task/approve", json={"suggestion_id": suggestion}, headers=operator), 200
    )
    json_of(await a.post("/dispatch/next", json={}), 200)
    json_of(await a.post(f"/task/{task['id']}/release", json={"reason": "flat tyre"}), 200)
    json_of(await client.post(f"/task/{task['id']}/cancel", headers=operator), 200)
    json_of(await client.post(f"/task/{task['id']}/retry"), 200)
    history = json_of(await client.get(f"/task/{task['id']}/events"), 200)
    assert [(e["event"], e["actor"]) for e in history] == [
        ("approved", operator_key["key_id"]),
        ("assigned", worker_key_id),
        ("released", worker_key_id),
        ("canceled", operator_key["key_id"]),
        ("retried", auth.ADMIN_ACTOR),
    ]


# Keys ------------------------------------------------------------------------------------------------------


async def test_keys_are_created_listed_and_revoked_without_their_secret(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    created = await create_key(client, "worker", worker_id=W, name="van 1's phone")
    assert set(created) == {"key_id", "key", "role", "worker_id", "name", "created_at", "expires_at"}
    assert created["key"].startswith(f"bw_{created['key_id']}_")
    assert auth.key_id_of(created["key"]) == created["key_id"]
    # Only the digest is stored.
    row = await pool.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", created["key_id"])
    assert row is not None
    assert created["key"] not in str(dict(row))
    assert bytes(row["digest"]) == auth.digest(created["key"])
    listed = json_of(await client.get("/keys"), 200)
    assert created["key"] not in str(listed)
    [entry] = listed
    assert entry["created_by"] == auth.ADMIN_ACTOR
    assert (entry["revoked_at"], entry["revoked_by"]) == (None, None)
    worker = bearer(created["key"])
    assert (await client.get("/tasks", headers=worker)).status_code == 200
    assert (await client.delete(f"/keys/{created['key_id']}")).status_code == 204
    assert (await client.delete(f"/keys/{created['key_id']}")).status_code == 204  # again: no change
    [entry] = json_of(await client.get("/keys"), 200)
    assert entry["revoked_by"] == auth.ADMIN_ACTOR
    assert entry["revoked_at"] is not None
    json_of(await client.delete("/keys/nosuchkey"), 404)


async def test_a_revoked_key_is_refused_once_the_cache_renews(
    service_settings: settings.Settings,
) -> None:
    # With no cache, the very next request sees the revocation (the cache's lifetime is the only delay).
    app = create_app(msgspec.structs.replace(service_settings, auth_cache_seconds=0))
    async with in_process(app) as admin:
        key = await create_key(admin, "viewer")
        assert (await admin.get("/tasks", headers=bearer(key["key"]))).status_code == 200
        assert (await admin.delete(f"/keys/{key['key_id']}")).status_code == 204
        response = await admin.get("/tasks", headers=bearer(key["key"]))
        assert json_of(response, 401) == {"detail": "API key revoked"}


async def test_keys_are_looked_up_and_renewed_together(
    service_settings: settings.Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many keys a process sees, a cold cache costs a statement or two for all of them, and their
    renewal one: the cost of auth must not grow with the fleet."""
    lookups: list[list[str]] = []
    real = queries.api_key_authenticate

    async def counted(conn: Any, key_ids: list[str], now: Any = None) -> Any:
        lookups.append(sorted(key_ids))
        return await real(conn, key_ids, now)

    app = create_app(service_settings)
    async with in_process_with_state(app) as (admin, lifespan):
        guard = lifespan[STATE_KEY].guard
        keys = [await create_key(admin, "viewer") for _ in range(20)]
        ids = sorted(key["key_id"] for key in keys)
        monkeypatch.setattr(queries, "api_key_authenticate", counted)

        async def read_all() -> None:
            answers = await asyncio.gather(
                *(admin.get("/suggestions", headers=bearer(k["key"])) for k in keys)
            )
            assert [answer.status_code for answer in answers] == [200] * 20

        await read_all()  # cold: looked up
        assert sorted(key_id for batch in lookups for key_id in batch) == ids
        assert len(lookups) < 5, lookups  # one statement per key would be 20
        await read_all()  # cached: no lookup
        assert len(lookups) < 5
        looked_up = len(lookups)

        # A key revoked meanwhile; then every cached verdict reaches the last quarter of its time.
        revoked = keys[0]
        assert (await admin.delete(f"/keys/{revoked['key_id']}")).status_code == 204
        for hashed, verdict in list(guard._cache.items()):
            guard._cache[hashed] = dataclasses.replace(verdict, until=time.monotonic() + 0.01)
        assert (await admin.get("/suggestions", headers=bearer(keys[1]["key"]))).status_code == 200

        async def renewed() -> bool:
            return not guard._lookups

        await until(renewed)
        assert lookups[looked_up:] == [ids]  # the keys used since the last renewal, in one statement
        response = await admin.get("/suggestions", headers=bearer(revoked["key"]))
        assert json_of(response, 401) == {"detail": "API key revoked"}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"role": "worker"}, "a worker key needs the worker_id it belongs to"),
        ({"role": "viewer", "worker_id": W}, "only a worker key belongs to a worker_id, not a viewer key"),
        ({"role": "root"}, "Invalid enum value 'root' - at `$.role`"),
    ],
)
async def test_bad_key_requests_are_400(client: httpx.AsyncClient, body: dict[str, Any], detail: str) -> None:
    assert detail in json_of(await client.post("/keys", json=body), 400)["detail"]


async def test_a_key_last_use_is_recorded(client: httpx.AsyncClient) -> None:
    key = await create_key(client, "viewer")
    assert json_of(await client.get("/keys"), 200)[0]["last_used_at"] is None
    assert (await client.get("/suggestions", headers=bearer(key["key"]))).status_code == 200
    assert json_of(await client.get("/keys"), 200)[0]["last_used_at"] is not None


# Switches --------------------------------------------------------------------------------------------------


async def test_auth_off_lets_anyone_in_and_says_so(service_settings: settings.Settings) -> None:
    app = create_app(msgspec.structs.replace(service_settings, auth="off", admin_api_key=None))
    async with in_process(app, headers={}) as client:
        ready = json_of(await client.get("/readyz"), 200)
        assert ready["status"] == "ready"
        assert "AUTH=off" in ready["warning"]
        task = await make_task(client, 1, 2)
        json_of(await client.post("/dispatch/next", json={"worker_id": W}), 200)
        history = json_of(await client.get(f"/task/{task['id']}/events"), 200)
        assert {e["actor"] for e in history} == {"anonymous"}


async def test_readyz_has_no_warning_with_auth_on(anon: httpx.AsyncClient) -> None:
    assert json_of(await anon.get("/readyz"), 200) == {"status": "ready"}


async def test_metrics_need_a_key_unless_public(service_settings: settings.Settings) -> None:
    async with in_process(create_app(service_settings)) as client, beside(client) as anonymous:
        assert (await anonymous.get("/metrics")).status_code == 401
        metrics_key = await create_key(client, "metrics")
        response = await client.get("/metrics", headers=bearer(metrics_key["key"]))
        assert response.status_code == 200
        assert "baywheels_http_requests_total" in response.text
        assert (await client.get("/tasks", headers=bearer(metrics_key["key"]))).status_code == 403
    public = msgspec.structs.replace(service_settings, metrics_public=True)
    async with in_process(create_app(public), headers={}) as client:
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/tasks")).status_code == 401


async def test_a_worker_key_holds_at_most_two_waiting_dispatches(
    client: httpx.AsyncClient, workers: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, b = workers

    async def waiters() -> float:
        text = (await client.get("/metrics")).text
        return float(re.search(r"^baywheels_dispatch_waiters (\S+)$", text, re.M)[1])  # type: ignore[index]

    waiting = [
        asyncio.ensure_future(a.post("/dispatch/next", json={"wait_seconds": 20}, timeout=30))
        for _ in range(2)
    ]
    try:
        await until(lambda: _equals(waiters(), 2))
        third = await a.post("/dispatch/next", json={"wait_seconds": 20})
        assert third.status_code == 429, third.text
        assert third.headers["retry-after"]
        assert "2 waiting dispatches" in third.json()["detail"]
        # Another key is not held back, nor is a dispatch of the same key that does not wait.
        assert (await b.post("/dispatch/next", json={})).status_code == 404
        assert (await a.post("/dispatch/next", json={})).status_code == 404
        # A task approved now goes to one of the waiting two.
        task = await make_task(client, 1, 2)
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        assert json_of(done.pop().result(), 200)["id"] == task["id"]
    finally:
        for future in waiting:
            future.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


async def _equals(value: Awaitable[float], expected: float) -> bool:
    return await value == expected


async def test_a_burst_over_the_rate_limit_gets_429_with_the_headers(
    service_settings: settings.Settings,
) -> None:
    limited = msgspec.structs.replace(
        service_settings, rate_limit_viewer="5/minute", rate_limit_anonymous="3/minute"
    )
    async with in_process(create_app(limited)) as admin:
        viewer = bearer((await create_key(admin, "viewer"))["key"])
        statuses = [(await admin.get("/tasks", headers=viewer)).status_code for _ in range(7)]
        assert statuses == [200] * 5 + [429] * 2
        refused = await admin.get("/tasks", headers=viewer)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-limit"] == "5"
        assert refused.headers["ratelimit-remaining"] == "0"
        assert int(refused.headers["ratelimit-reset"]) >= 1
        assert "detail" in refused.json()
        # The admin has its own budget; requests without a valid key share their IP's.
        assert (await admin.get("/tasks")).status_code == 200
        guesses = [
            (await admin.get("/tasks", headers=bearer(auth.new_key().token))).status_code for _ in range(5)
        ]
        assert guesses == [401] * 3 + [429] * 2


async def test_cors_preflight_for_a_configured_origin(service_settings: settings.Settings) -> None:
    origin = "https://dashboard.example"
    app = create_app(msgspec.structs.replace(service_settings, cors_origins=origin))
    async with in_process(app, headers={}) as client:
        preflight = await client.options(
            "/tasks",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        other = await client.options(
            "/tasks", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-origin" not in other.headers
        answer = await client.get("/tasks", headers={"Origin": origin, **ADMIN})
        assert answer.headers["access-control-allow-origin"] == origin


async def test_no_cors_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks", headers={"Origin": "https://dashboard.example"})
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/init.js"])
async def test_docs_pages_send_security_headers(anon: httpx.AsyncClient, path: str) -> None:
    response = await anon.get(path)
    assert response.status_code == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_the_document_has_the_bearer_scheme_and_no_secret(
    client: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    key = await create_key(client, "admin")
    spec = json_of(await anon.get("/openapi.json"), 200)
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"],
    }
    dispatch = spec["paths"]["/dispatch/next"]["post"]
    assert dispatch["security"] == [{"bearer": []}]
    assert dispatch["x-roles"] == ["worker", "admin"]
    assert "`worker`" in dispatch["description"]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert "| `metrics` |" in spec["info"]["description"]
    text = str(spec)
    assert key["key"] not in text
    assert ADMIN_KEY not in text


def test_keys_have_the_format_and_a_typo_is_caught_without_a_lookup() -> None:
    key = auth.new_key()
    token = key.token
    assert token.startswith("bw_")
    assert len(token) == 3 + 12 + 1 + 32 + 6
    assert auth.key_id_of(token) == key.key_id
    assert key.digest == auth.digest(token)
    # Any one character changed, dropped or doubled: the checksum refuses it.
    for i in range(3, len(token)):
        for typo in (
            token[:i] + ("a" if token[i] != "a" else "b") + token[i + 1 :],
            token[:i] + token[i + 1 :],
            token[:i] + token[i] + token[i:],
        ):
            assert auth.key_id_of(typo) is None, typo
    assert len({auth.new_key().token for _ in range(100)}) == 100
