"""The worker's side: POST /dispatch/next (what, in which order, 404 when nothing is ready) and
POST /task/{id}/complete (who may complete, and what a repeat gets)."""

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from helpers import (
    assert_task,
    complete,
    dispatch,
    events,
    get_task,
    ingest,
    item,
    json_of,
    make_task,
)

NO_TASK = {"detail": "No available tasks with status 'ready'"}


async def test_dispatch_assigns_the_task_to_the_worker(client: httpx.AsyncClient) -> None:
    task = await make_task(client, 1, 2, qty=4, reason="rush hour")

    assigned = await dispatch(client, "van-7")
    assert_task(
        assigned,
        id=task["id"],
        suggestion_id=task["suggestion_id"],
        qty=4,
        reason="rush hour",
        status="assigned",
        worker_id="van-7",
        created_at=task["created_at"],
        completed_at=None,
    )
    assert datetime.fromisoformat(assigned["assigned_at"]) >= datetime.fromisoformat(task["created_at"])
    assert await get_task(client, task["id"]) == assigned
    assert await events(client, task["id"]) == [("approved", None), ("assigned", "van-7")]


async def test_dispatch_with_nothing_ready_is_404(client: httpx.AsyncClient) -> None:
    assert json_of(await client.post("/dispatch/next", json={"worker_id": "w1"}), 404) == NO_TASK
    await make_task(client, 1, 2)
    await dispatch(client, "w1")
    assert json_of(await client.post("/dispatch/next", json={"worker_id": "w2"}), 404) == NO_TASK


async def test_dispatch_order_is_priority_then_oldest_then_lowest_id(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    # (priority, minutes ago it was approved): the approval time is set in the database, so that a task
    # with a higher id can be the older one and two tasks can share a time, neither of which a quick
    # sequence of requests can arrange.
    layout = {
        "a": (0, 30),
        "b": (5, 10),
        "c": (5, 20),  # older than b, though approved after it
        "d": (5, 20),  # the same time as c: the lower id (c) goes first
        "e": (-3, 60),  # the oldest, but the lowest priority
        "f": (0, 30),
        "g": (9, 1),  # the newest, but the highest priority
    }
    batch = [item(n, n + 1000, priority=p) for n, (p, _) in enumerate(layout.values(), 1)]
    ids = (await ingest(client, batch))["ids"]
    name_of: dict[int, str] = {}
    now = datetime.now(UTC)
    for name, suggestion_id in zip(layout, ids, strict=True):
        task = json_of(await client.post("/task/approve", json={"suggestion_id": suggestion_id}), 200)
        name_of[task["id"]] = name
        ago = timedelta(minutes=layout[name][1])
        await pool.execute("UPDATE tasks SET created_at = $2 WHERE id = $1", task["id"], now - ago)

    order = [name_of[(await dispatch(client, f"w{i}"))["id"]] for i in range(len(layout))]
    assert order == ["g", "c", "d", "b", "a", "f", "e"]
    assert json_of(await client.post("/dispatch/next", json={"worker_id": "late"}), 404) == NO_TASK


async def test_worker_id_of_64_characters_is_accepted(client: httpx.AsyncClient) -> None:
    await make_task(client, 1, 2)
    assert (await dispatch(client, "w" * 64))["worker_id"] == "w" * 64


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "Object missing required field `worker_id`"),
        ({"worker_id": ""}, "Expected `str` of length >= 1 - at `$.worker_id`"),
        ({"worker_id": "w" * 65}, "Expected `str` of length <= 64 - at `$.worker_id`"),
        ({"worker_id": 7}, "Expected `str`, got `int` - at `$.worker_id`"),
        ({"worker_id": None}, "Expected `str`, got `null` - at `$.worker_id`"),
        ({"worker_id": "w1", "zone": "sf"}, "Object contains unknown field `zone`"),
        (["w1"], "Expected `object`, got `array`"),
    ],
)
async def test_bad_dispatch_request_is_400(client: httpx.AsyncClient, body: Any, detail: str) -> None:
    await make_task(client, 1, 2)
    assert json_of(await client.post("/dispatch/next", json=body), 400) == {"detail": detail}
    # Nothing was assigned.
    assert [t["status"] for t in json_of(await client.get("/tasks"), 200)] == ["ready"]


@pytest.mark.parametrize(
    "send",
    [
        pytest.param({"content": b""}, id="no body"),
        pytest.param({"json": {}}, id="empty object"),
        pytest.param({"json": {"worker_id": "w1"}}, id="holder"),
    ],
)
async def test_complete(client: httpx.AsyncClient, send: dict[str, Any]) -> None:
    task = await make_task(client, 1, 2)
    assigned = await dispatch(client, "w1")

    done = json_of(await client.post(f"/task/{task['id']}/complete", **send), 200)
    assert_task(
        done,
        id=task["id"],
        status="completed",
        worker_id="w1",
        assigned_at=assigned["assigned_at"],
    )
    assert datetime.fromisoformat(done["completed_at"]) >= datetime.fromisoformat(assigned["assigned_at"])
    assert await get_task(client, task["id"]) == done
    assert await events(client, task["id"]) == [("approved", None), ("assigned", "w1"), ("completed", "w1")]
    # A completed task is never handed out again.
    assert json_of(await client.post("/dispatch/next", json={"worker_id": "w2"}), 404) == NO_TASK


async def test_holder_repeating_completion_gets_the_same_task(client: httpx.AsyncClient) -> None:
    task = await make_task(client, 1, 2)
    await dispatch(client, "w1")
    first = json_of(await complete(client, task["id"], "w1"), 200)
    assert json_of(await complete(client, task["id"], "w1"), 200) == first
    assert [e for e in await events(client, task["id"]) if e[0] == "completed"] == [("completed", "w1")]


async def test_complete_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    assert json_of(await complete(client, 999), 404) == {"detail": "Task with id 999 not found"}
    assert json_of(await complete(client, 999, "w1"), 404) == {"detail": "Task with id 999 not found"}


async def test_completing_a_ready_task_is_409(client: httpx.AsyncClient) -> None:
    task = await make_task(client, 1, 2)
    response = await complete(client, task["id"])
    assert json_of(response, 409) == {
        "detail": f"Cannot complete task {task['id']}: it is 'ready', not 'assigned'"
    }
    assert (await get_task(client, task["id"]))["status"] == "ready"


async def test_only_the_holder_may_complete(client: httpx.AsyncClient) -> None:
    task = await make_task(client, 1, 2)
    await dispatch(client, "w1")

    response = await complete(client, task["id"], "w2")
    assert json_of(response, 409) == {
        "detail": f"Cannot complete task {task['id']}: it is held by another worker"
    }
    assert (await get_task(client, task["id"]))["status"] == "assigned"

    json_of(await complete(client, task["id"], "w1"), 200)
    response = await complete(client, task["id"], "w2")
    assert json_of(response, 409) == {
        "detail": f"Cannot complete task {task['id']}: it is 'completed', not 'assigned'"
    }
    assert (await get_task(client, task["id"]))["worker_id"] == "w1"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"worker_id": ""}, "Expected `str` of length >= 1 - at `$.worker_id`"),
        ({"worker_id": 1}, "Expected `str | null`, got `int` - at `$.worker_id`"),
        ({"worker": "w1"}, "Object contains unknown field `worker`"),
    ],
)
async def test_bad_completion_is_400(client: httpx.AsyncClient, body: Any, detail: str) -> None:
    task = await make_task(client, 1, 2)
    await dispatch(client, "w1")
    assert json_of(await client.post(f"/task/{task['id']}/complete", json=body), 400) == {"detail": detail}
    assert (await get_task(client, task["id"]))["status"] == "assigned"
