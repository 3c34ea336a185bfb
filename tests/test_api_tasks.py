"""Approval (one and many, repeated, racing), reading tasks, their history and the task list."""

import asyncio
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from baywheels import queries
from helpers import (
    EVENT_KEYS,
    approve,
    assert_task,
    complete,
    dispatch,
    events,
    get_task,
    ingest,
    item,
    json_of,
    make_task,
    suggest,
    wait_for_lock_waiters,
)


async def test_approve_turns_a_suggestion_into_a_ready_task(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    suggestion_id = await suggest(client, 4, 9, qty=6, reason="dock 9 empty", priority=3)
    kept = await suggest(client, 5, 9)

    task = await approve(client, suggestion_id)
    assert_task(
        task,
        suggestion_id=suggestion_id,
        from_station_id=4,
        to_station_id=9,
        qty=6,
        reason="dock 9 empty",
        priority=3,
        status="ready",
        worker_id=None,
        assigned_at=None,
        completed_at=None,
    )
    assert datetime.fromisoformat(task["created_at"]).tzinfo is not None
    assert [s["id"] for s in json_of(await client.get("/suggestions"), 200)] == [kept]
    assert await get_task(client, task["id"]) == task
    events = await pool.fetch("SELECT event, worker_id FROM task_events WHERE task_id = $1", task["id"])
    assert [tuple(event) for event in events] == [("approved", None)]


async def test_approve_unknown_suggestion_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/task/approve", json={"suggestion_id": 999})
    assert json_of(response, 404) == {"detail": "Suggestion with id 999 not found"}


async def test_approving_again_returns_the_same_task(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    suggestion_id = await suggest(client, 1, 2)
    first = await approve(client, suggestion_id)
    assert await approve(client, suggestion_id) == first
    # Still true once the task has moved on.
    await dispatch(client, "w1")
    assert (await approve(client, suggestion_id))["status"] == "assigned"
    assert await pool.fetchval("SELECT count(*) FROM tasks") == 1
    assert await events(client, first["id"]) == [("approved", None), ("assigned", "w1")]


async def test_racing_approvals_on_separate_connections_make_one_task(
    database_url: str, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    suggestion_id = await suggest(client, 1, 2)
    racers = [await asyncpg.connect(database_url) for _ in range(6)]
    blocker = await asyncpg.connect(database_url)
    try:
        # The blocker holds the suggestion's row, so every approval is inside its DELETE when it lets go.
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM suggestions WHERE id = $1 FOR UPDATE", suggestion_id)
            approvals = [asyncio.create_task(queries.task_approve_many(c, [suggestion_id])) for c in racers]
            await wait_for_lock_waiters(pool, len(racers))
        created = await asyncio.gather(*approvals)
    finally:
        for conn in [blocker, *racers]:
            await conn.close()

    assert sorted(len(tasks) for tasks in created) == [0, 0, 0, 0, 0, 1]
    assert await pool.fetchval("SELECT count(*) FROM tasks") == 1
    assert await pool.fetchval("SELECT count(*) FROM task_events") == 1
    assert await pool.fetchval("SELECT count(*) FROM suggestions") == 0


async def test_racing_approval_requests_all_get_the_one_task(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    suggestion_id = await suggest(client, 1, 2)
    async with pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("SELECT 1 FROM suggestions WHERE id = $1 FOR UPDATE", suggestion_id)
        # Each request takes its own connection from the app's pool; waiting until all eight are blocked in
        # PostgreSQL proves they overlap there, which is where the race is decided.
        requests = [
            asyncio.create_task(client.post("/task/approve", json={"suggestion_id": suggestion_id}))
            for _ in range(8)
        ]
        await wait_for_lock_waiters(pool, len(requests))
    responses = await asyncio.gather(*requests)

    bodies = [json_of(response, 200) for response in responses]
    assert len({body["id"] for body in bodies}) == 1
    assert all(body == bodies[0] for body in bodies)
    assert await pool.fetchval("SELECT count(*) FROM tasks") == 1
    assert await events(client, bodies[0]["id"]) == [("approved", None)]


async def test_approve_many(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    a, b, c = (await ingest(client, [item(1, 2), item(3, 4), item(5, 6)]))["ids"]
    earlier = await approve(client, b)

    response = await client.post("/tasks/approve", json={"suggestion_ids": [c, 999, b, a, c, 998]})
    result = json_of(response, 200)
    assert set(result) == {"tasks", "not_found"}
    assert [t["suggestion_id"] for t in result["tasks"]] == [c, b, a]
    for task in result["tasks"]:
        assert_task(task, status="ready")
    assert result["tasks"][1] == earlier
    assert result["not_found"] == [999, 998]
    assert json_of(await client.get("/suggestions"), 200) == []
    assert await pool.fetchval("SELECT count(*) FROM tasks") == 3


async def test_approve_many_with_nothing_found(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks/approve", json={"suggestion_ids": [7, 8]})
    assert json_of(response, 200) == {"tasks": [], "not_found": [7, 8]}


@pytest.mark.parametrize(
    ("path", "body", "detail"),
    [
        ("/task/approve", {}, "Object missing required field `suggestion_id`"),
        ("/task/approve", {"suggestion_id": 0}, "Expected `int` >= 1 - at `$.suggestion_id`"),
        ("/task/approve", {"suggestion_id": "1"}, "Expected `int`, got `str` - at `$.suggestion_id`"),
        (
            "/task/approve",
            {"suggestion_id": 2**63},
            "Expected `int` <= 9223372036854775807 - at `$.suggestion_id`",
        ),
        ("/task/approve", {"suggestion_id": 1, "force": True}, "Object contains unknown field `force`"),
        ("/task/approve", [1], "Expected `object`, got `array`"),
        ("/tasks/approve", {"suggestion_ids": []}, "Expected `array` of length >= 1 - at `$.suggestion_ids`"),
        (
            "/tasks/approve",
            {"suggestion_ids": list(range(1, 1002))},
            "Expected `array` of length <= 1000 - at `$.suggestion_ids`",
        ),
        ("/tasks/approve", {"suggestion_ids": [1, -2]}, "Expected `int` >= 1 - at `$.suggestion_ids[1]`"),
        ("/tasks/approve", {"suggestion_ids": 1}, "Expected `array`, got `int` - at `$.suggestion_ids`"),
    ],
)
async def test_bad_approval_is_400(client: httpx.AsyncClient, path: str, body: Any, detail: str) -> None:
    assert json_of(await client.post(path, json=body), 400) == {"detail": detail}


async def test_get_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    assert json_of(await client.get("/task/999"), 404) == {"detail": "Task with id 999 not found"}
    assert json_of(await client.get("/task/999/events"), 404) == {"detail": "Task with id 999 not found"}


async def test_events_are_the_history_oldest_first(client: httpx.AsyncClient) -> None:
    task = await make_task(client, 1, 2)
    await dispatch(client, "w1")
    json_of(await complete(client, task["id"], "w1"), 200)

    history = json_of(await client.get(f"/task/{task['id']}/events"), 200)
    assert all(set(event) == EVENT_KEYS for event in history)
    assert [(e["event"], e["worker_id"]) for e in history] == [
        ("approved", None),
        ("assigned", "w1"),
        ("completed", "w1"),
    ]
    times = [datetime.fromisoformat(e["at"]) for e in history]
    assert times == sorted(times)
    done = await get_task(client, task["id"])
    assert times[-1] == datetime.fromisoformat(done["completed_at"])


async def test_list_tasks_filters_and_pages(client: httpx.AsyncClient) -> None:
    t1, t2, t3, t4 = [await make_task(client, n, n + 100) for n in range(1, 5)]
    assert (await dispatch(client, "w1"))["id"] == t1["id"]
    assert (await dispatch(client, "w2"))["id"] == t2["id"]
    assert (await dispatch(client, "w1"))["id"] == t3["id"]
    json_of(await complete(client, t3["id"], "w1"), 200)

    async def ids(query: str) -> list[int]:
        return [t["id"] for t in json_of(await client.get(f"/tasks{query}"), 200)]

    assert await ids("") == [t1["id"], t2["id"], t3["id"], t4["id"]]
    assert await ids("?status=ready") == [t4["id"]]
    assert await ids("?status=assigned") == [t1["id"], t2["id"]]
    assert await ids("?status=completed") == [t3["id"]]
    assert await ids("?worker_id=w1") == [t1["id"], t3["id"]]
    assert await ids("?status=assigned&worker_id=w1") == [t1["id"]]
    assert await ids("?worker_id=nobody") == []
    assert await ids("?limit=2") == [t1["id"], t2["id"]]
    assert await ids(f"?limit=2&after_id={t2['id']}") == [t3["id"], t4["id"]]
    assert await ids(f"?after_id={t4['id']}") == []
    for task in json_of(await client.get("/tasks"), 200):
        assert_task(task)


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("status=bogus", "Invalid enum value 'bogus' - at `$.status`"),
        ("worker_id=", "Expected `str` of length >= 1 - at `$.worker_id`"),
        ("worker_id=" + "w" * 65, "Expected `str` of length <= 64 - at `$.worker_id`"),
        ("limit=0", "Expected `int` >= 1 - at `$.limit`"),
        ("limit=1001", "Expected `int` <= 1000 - at `$.limit`"),
        ("after_id=x", "Expected `int`, got `str` - at `$.after_id`"),
        ("sort=id", "Object contains unknown field `sort`"),
    ],
)
async def test_bad_task_list_parameters_are_named(client: httpx.AsyncClient, query: str, detail: str) -> None:
    assert json_of(await client.get(f"/tasks?{query}"), 400) == {"detail": detail}
