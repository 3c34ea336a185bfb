"""GET and POST /suggestions, in-process against a real PostgreSQL: listing and paging, the ingest rules per
station pair (update in place, skip while a task is open, last item wins), and validation."""

import random
from typing import Any

import asyncpg
import httpx
import pytest

from helpers import (
    INGEST_KEYS,
    SUGGESTION_KEYS,
    complete,
    dispatch,
    ingest,
    item,
    json_of,
    make_task,
    suggest,
    suggestions,
)


async def test_ingest_creates_suggestions_listed_oldest_first(client: httpx.AsyncClient) -> None:
    result = await ingest(client, [item(3, 4, qty=5, reason="dock full", priority=2), item(1, 2)])
    assert set(result) == INGEST_KEYS
    assert result["created"] == 2
    assert (result["updated"], result["duplicates"]) == (0, 0)
    first, second = result["ids"]
    assert first < second

    listed = json_of(await client.get("/suggestions"), 200)
    assert [set(s) for s in listed] == [SUGGESTION_KEYS, SUGGESTION_KEYS]
    assert [
        (s["id"], s["from_station_id"], s["to_station_id"], s["qty"], s["reason"], s["priority"])
        for s in listed
    ] == [(first, 3, 4, 5, "dock full", 2), (second, 1, 2, 3, "rebalance", 0)]


async def test_empty_list(client: httpx.AsyncClient) -> None:
    assert json_of(await client.get("/suggestions"), 200) == []


async def test_list_pages_with_limit_and_after_id(client: httpx.AsyncClient) -> None:
    ids = (await ingest(client, [item(n, n + 100) for n in range(1, 6)]))["ids"]

    def page_ids(response: httpx.Response) -> list[int]:
        return [s["id"] for s in json_of(response, 200)]

    assert page_ids(await client.get("/suggestions?limit=2")) == ids[:2]
    assert page_ids(await client.get(f"/suggestions?limit=2&after_id={ids[1]}")) == ids[2:4]
    assert page_ids(await client.get(f"/suggestions?limit=2&after_id={ids[3]}")) == ids[4:]
    assert page_ids(await client.get(f"/suggestions?after_id={ids[4]}")) == []


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("limit=0", "Expected `int` >= 1 - at `$.limit`"),
        ("limit=1001", "Expected `int` <= 1000 - at `$.limit`"),
        ("limit=ten", "Expected `int`, got `str` - at `$.limit`"),
        ("after_id=-1", "Expected `int` >= 0 - at `$.after_id`"),
        ("after_id=x", "Expected `int`, got `str` - at `$.after_id`"),
        ("after_id=99999999999999999999", "Expected `int` <= 9223372036854775807 - at `$.after_id`"),
        ("offset=10", "Object contains unknown field `offset`"),
    ],
)
async def test_bad_list_parameters_are_named(client: httpx.AsyncClient, query: str, detail: str) -> None:
    assert json_of(await client.get(f"/suggestions?{query}"), 400) == {"detail": detail}


async def test_pending_suggestion_is_updated_in_place(client: httpx.AsyncClient) -> None:
    suggestion_id = await suggest(client, 1, 2, qty=3, reason="morning", priority=0)
    (before,) = json_of(await client.get("/suggestions"), 200)

    result = await ingest(client, [item(1, 2, qty=9, reason="evening rush", priority=4)])
    assert result == {"created": 0, "updated": 1, "duplicates": 0, "ids": [suggestion_id]}
    (after,) = json_of(await client.get("/suggestions"), 200)
    assert after == {**before, "qty": 9, "reason": "evening rush", "priority": 4}


async def test_last_item_for_a_pair_wins_within_a_batch(client: httpx.AsyncClient) -> None:
    result = await ingest(client, [item(1, 2, qty=1), item(5, 6), item(1, 2, qty=2), item(1, 2, qty=7)])
    assert (result["created"], result["updated"], result["duplicates"]) == (2, 0, 2)
    ids = result["ids"]
    assert ids[:3] == [None, ids[1], None]
    assert ids[3] is not None
    listed = json_of(await client.get("/suggestions"), 200)
    assert {(s["id"], s["from_station_id"], s["qty"]) for s in listed} == {(ids[1], 5, 3), (ids[3], 1, 7)}


async def test_the_reverse_direction_is_another_pair(client: httpx.AsyncClient) -> None:
    result = await ingest(client, [item(1, 2), item(2, 1)])
    assert (result["created"], result["duplicates"]) == (2, 0)


@pytest.mark.parametrize("dispatched", [False, True], ids=["ready", "assigned"])
async def test_pair_with_open_task_is_skipped(client: httpx.AsyncClient, dispatched: bool) -> None:
    task = await make_task(client, 1, 2)
    if dispatched:
        await dispatch(client, "w1")

    result = await ingest(client, [item(1, 2, qty=8), item(3, 4)])
    assert result["ids"][0] is None
    assert (result["created"], result["updated"], result["duplicates"]) == (1, 0, 1)
    assert [s["from_station_id"] for s in json_of(await client.get("/suggestions"), 200)] == [3]
    # The task is untouched by the skipped suggestion.
    assert json_of(await client.get(f"/task/{task['id']}"), 200)["qty"] == 3


async def test_pair_of_a_completed_task_may_be_suggested_again(client: httpx.AsyncClient) -> None:
    task = await make_task(client, 1, 2)
    await dispatch(client, "w1")
    json_of(await complete(client, task["id"], "w1"), 200)

    result = await ingest(client, [item(1, 2, qty=6)])
    assert (result["created"], result["updated"], result["duplicates"]) == (1, 0, 0)
    assert result["ids"][0] != task["suggestion_id"]
    assert [(s["id"], s["qty"]) for s in json_of(await client.get("/suggestions"), 200)] == [
        (result["ids"][0], 6)
    ]


async def test_a_full_batch_with_repeats_updates_and_open_tasks(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """10,000 items: new pairs repeated inside the batch, pairs with pending suggestions, pairs with a ready,
    an assigned or a completed task, shuffled together."""

    def pairs(base: int, n: int) -> list[tuple[int, int]]:
        return [(base + k, 100_000 + base + k) for k in range(1, n + 1)]

    pending, ready, assigned, completed, new = (
        pairs(0, 100),
        pairs(1000, 20),
        pairs(2000, 20),
        pairs(3000, 20),
        pairs(10_000, 3000),
    )
    old = await ingest(client, [item(*p, qty=1, reason="old") for p in pending])
    old_ids = dict(zip(pending, old["ids"], strict=True))
    created_at = {s["id"]: s["created_at"] for s in await suggestions(client)}
    # Tasks for the assigned pairs are the only ready ones when the workers come, and so on.
    for group, worker in ((assigned, "holder"), (completed, "finisher"), (ready, None)):
        for p in group:
            task = await make_task(client, *p)
            if worker is not None:
                assert (await dispatch(client, worker))["id"] == task["id"]
            if worker == "finisher":
                json_of(await complete(client, task["id"], worker), 200)
    tasks_before = await pool.fetch("SELECT * FROM tasks ORDER BY id")

    rng = random.Random(2)
    batch_pairs = [*pending * 2, *ready * 2, *assigned * 2, *completed, *new]
    batch_pairs += [rng.choice(new) for _ in range(10_000 - len(batch_pairs))]
    rng.shuffle(batch_pairs)
    # Each item's values come from its position, so the DB shows which item won.
    batch = [item(*p, qty=1 + i % 50, reason=f"item {i}", priority=i % 7) for i, p in enumerate(batch_pairs)]
    last: dict[tuple[int, int], int] = {p: i for i, p in enumerate(batch_pairs)}

    result = await ingest(client, batch)

    assert len(result["ids"]) == 10_000
    assert result["created"] == len(new) + len(completed)
    assert result["updated"] == len(pending)
    assert result["duplicates"] == 10_000 - len(new) - len(completed) - len(pending)
    open_pairs = {*ready, *assigned}
    for i, (p, id_) in enumerate(zip(batch_pairs, result["ids"], strict=True)):
        if p in open_pairs or last[p] != i:
            assert id_ is None, (i, p)
        else:
            assert id_ is not None, (i, p)
    winners = {p: result["ids"][i] for p, i in last.items() if p not in open_pairs}
    assert all(winners[p] == old_ids[p] for p in pending)
    assert len(set(winners.values())) == len(winners)

    listed = await suggestions(client)
    by_pair = {(s["from_station_id"], s["to_station_id"]): s for s in listed}
    assert len(listed) == len(by_pair) == len(winners)
    assert by_pair.keys() == winners.keys()
    for p, suggestion in by_pair.items():
        won: dict[str, Any] = batch[last[p]]
        assert suggestion["id"] == winners[p]
        assert (suggestion["qty"], suggestion["reason"], suggestion["priority"]) == (
            won["qty"],
            won["reason"],
            won["priority"],
        )
        if p in old_ids:
            assert suggestion["created_at"] == created_at[suggestion["id"]]
    assert await pool.fetch("SELECT * FROM tasks ORDER BY id") == tasks_before


@pytest.mark.parametrize(
    ("items", "detail"),
    [
        ([], "Expected `array` of length >= 1"),
        ([item(1, 2)] * 10_001, "Expected `array` of length <= 10000"),
        ({"from_station_id": 1}, "Expected `array`, got `object`"),
        ([item(1, 2), item(7, 7)], "from_station_id and to_station_id must differ - at `$[1]`"),
        ([item(1, 2), item(1, 3, qty=0)], "Expected `int` >= 1 - at `$[1].qty`"),
        ([item(1, 2), item(-1, 3)], "Expected `int` >= 1 - at `$[1].from_station_id`"),
        ([item(1, 2), item(1, -3)], "Expected `int` >= 1 - at `$[1].to_station_id`"),
        ([item(1, 2), item(1, 2**31)], "Expected `int` <= 2147483647 - at `$[1].to_station_id`"),
        ([item(1, 2), item(1, 3, qty="3")], "Expected `int`, got `str` - at `$[1].qty`"),
        ([item(1, 2), item(1, 3, qty=1.5)], "Expected `int`, got `float` - at `$[1].qty`"),
        ([item(1, 2), item(1, 3, priority=2**31)], "Expected `int` <= 2147483647 - at `$[1].priority`"),
        ([item(1, 2), item(1, 3, reason="x" * 2001)], "Expected `str` of length <= 2000 - at `$[1].reason`"),
        ([item(1, 2), item(1, 3, bikes=4)], "Object contains unknown field `bikes` - at `$[1]`"),
        (
            [item(1, 2), {"from_station_id": 1, "to_station_id": 3, "qty": 1}],
            "Object missing required field `reason` - at `$[1]`",
        ),
    ],
    ids=[
        "empty",
        "10001 items",
        "not an array",
        "same station",
        "qty 0",
        "negative from",
        "negative to",
        "station beyond int32",
        "qty as string",
        "qty as float",
        "priority beyond int32",
        "reason too long",
        "unknown field",
        "missing field",
    ],
)
async def test_bad_batch_is_refused_whole(client: httpx.AsyncClient, items: Any, detail: str) -> None:
    assert json_of(await client.post("/suggestions", json=items), 400) == {"detail": detail}
    # Nothing of the batch is stored, not even its valid first item.
    assert json_of(await client.get("/suggestions"), 200) == []


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b'[{"from_station_id": 1,', "Input data was truncated"),
        (b'[{"qty": 1,}]', "JSON is malformed: trailing comma in object (byte 11)"),
        (b"bikes!", "JSON is malformed: invalid character (byte 0)"),
    ],
)
async def test_malformed_json_is_400(client: httpx.AsyncClient, content: bytes, detail: str) -> None:
    response = await client.post(
        "/suggestions", content=content, headers={"content-type": "application/json"}
    )
    assert json_of(response, 400) == {"detail": detail}
