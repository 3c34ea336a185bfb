"""Ingest racing other writers on one station pair, in-process against a real PostgreSQL: two batches at once,
and a batch against the approval of the pair's pending suggestion. Each race is forced into one order with
locks held from a connection of the test's own, and waiting until PostgreSQL shows every racer queued proves
that they overlap there, where the race is decided."""

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from helpers import item, json_of, suggest, wait_for_lock_waiters


async def pending_and_open_pairs(
    client: httpx.AsyncClient,
) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """The station pairs with a pending suggestion, and those with an open (ready, assigned, stalled) task."""
    pending = {
        (s["from_station_id"], s["to_station_id"]) for s in json_of(await client.get("/suggestions"), 200)
    }
    tasks = json_of(await client.get("/tasks"), 200)
    open_ = {
        (t["from_station_id"], t["to_station_id"])
        for t in tasks
        if t["status"] in ("ready", "assigned", "stalled")
    }
    return pending, open_


async def test_two_batches_racing_on_a_pair_leave_one_suggestion_with_the_later_values(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Two ML engine batches for the same new pair arrive together: the pair gets one pending suggestion, one
    batch is told it created it and the other that it updated that same suggestion, which shows the values
    of the batch that ran second."""
    first_batch = [item(1, 2, qty=4, reason="first batch", priority=1)]
    second_batch = [item(1, 2, qty=9, reason="second batch", priority=5)]
    async with pool.acquire() as blocker, blocker.transaction():
        # Every ingest takes this lock first, so both queue on it; PostgreSQL grants it in queue order.
        await blocker.execute("LOCK TABLE suggestions IN SHARE ROW EXCLUSIVE MODE")
        first = asyncio.create_task(client.post("/suggestions", json=first_batch))
        await wait_for_lock_waiters(pool, 1)
        second = asyncio.create_task(client.post("/suggestions", json=second_batch))
        await wait_for_lock_waiters(pool, 2)
    first_result = json_of(await first, 201)
    second_result = json_of(await second, 201)

    (suggestion_id,) = first_result["ids"]
    assert suggestion_id is not None
    assert first_result == {"created": 1, "updated": 0, "duplicates": 0, "ids": [suggestion_id]}
    assert second_result == {"created": 0, "updated": 1, "duplicates": 0, "ids": [suggestion_id]}
    listed = json_of(await client.get("/suggestions"), 200)
    assert [
        (s["id"], s["from_station_id"], s["to_station_id"], s["qty"], s["reason"], s["priority"])
        for s in listed
    ] == [(suggestion_id, 1, 2, 9, "second batch", 5)]
    assert json_of(await client.get("/tasks"), 200) == []


@pytest.mark.parametrize("first", ["approval", "ingest"], ids=["approval-first", "ingest-first"])
async def test_ingest_racing_an_approval_never_leaves_a_suggestion_beside_a_task(
    client: httpx.AsyncClient, pool: asyncpg.Pool, first: str
) -> None:
    """An operator approves a pair's pending suggestion while the ML engine posts a new one for the pair.
    Whichever commits first, the pair ends with its one open task and no pending suggestion: an ingest after
    the approval is skipped as a duplicate, and an approval after the ingest makes the task from the updated
    suggestion."""
    suggestion_id = await suggest(client, 1, 2, qty=3, reason="morning")

    def start(racer: str) -> asyncio.Task[httpx.Response]:
        if racer == "approval":
            request = client.post("/task/approve", json={"suggestion_id": suggestion_id})
        else:
            request = client.post("/suggestions", json=[item(1, 2, qty=8, reason="evening")])
        return asyncio.create_task(request)

    second = "ingest" if first == "approval" else "approval"
    async with pool.acquire() as blocker, blocker.transaction():
        # The blocker holds the suggestion's row. The racer started first reaches the row and waits there,
        # holding its lock on the table (an approval's DELETE takes ROW EXCLUSIVE, an ingest SHARE ROW
        # EXCLUSIVE, and the two conflict), so the other queues behind that table lock until it commits.
        await blocker.execute("SELECT 1 FROM suggestions WHERE id = $1 FOR UPDATE", suggestion_id)
        racers = {first: start(first)}
        await wait_for_lock_waiters(pool, 1)
        racers[second] = start(second)
        await wait_for_lock_waiters(pool, 2)
    task: dict[str, Any] = json_of(await racers["approval"], 200)
    ingested = json_of(await racers["ingest"], 201)

    if first == "approval":
        assert ingested == {"created": 0, "updated": 0, "duplicates": 1, "ids": [None]}
        expected_qty, expected_reason = 3, "morning"
    else:
        assert ingested == {"created": 0, "updated": 1, "duplicates": 0, "ids": [suggestion_id]}
        expected_qty, expected_reason = 8, "evening"
    assert (task["suggestion_id"], task["status"], task["qty"], task["reason"]) == (
        suggestion_id,
        "ready",
        expected_qty,
        expected_reason,
    )
    assert await pending_and_open_pairs(client) == (set(), {(1, 2)})
    tasks = json_of(await client.get("/tasks"), 200)
    assert [(t["id"], t["qty"]) for t in tasks] == [(task["id"], expected_qty)]
