"""Hostile or unusual bytes in a body get a 400 naming the problem, never a 500: invalid UTF-8, timestamps
that leave the representable range once in UTC, integral floats where an integer is due, and the last-resort
mapping of the database's data errors (which must not leak SQL)."""

from typing import Any

import asyncpg
import httpx
import pytest

from baywheels import queries
from helpers import item, json_of, suggest, suggestions


def assert_error(response: httpx.Response, status: int, detail: str) -> None:
    assert (response.status_code, response.json()) == (status, {"detail": detail}), response.text


@pytest.mark.parametrize(
    ("path", "body", "byte"),
    [
        ("/dispatch/next", b'{"worker_id":"\xff"}', 14),
        ("/dispatch/next", b'{"\xc3\x28":"van-7"}', 2),
        ("/suggestions", b'[{"from_station_id":1,"to_station_id":2,"qty":1,"reason":"caf\xe9"}]', 61),
        ("/task/1/cancel", b'{"reason":"\xed\xa0\x80"}', 11),  # an encoded UTF-16 surrogate
    ],
    ids=["value", "key", "latin-1 in a batch", "surrogate"],
)
async def test_invalid_utf8_is_400_naming_the_byte(
    client: httpx.AsyncClient, path: str, body: bytes, byte: int
) -> None:
    response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400, f"JSON is malformed: invalid UTF-8 (byte {byte})")


@pytest.mark.parametrize(
    "not_before",
    [
        "9999-12-31T23:59:59-14:00",
        "9999-12-31T10:00:00-14:00",
        "0001-01-01T00:00:00+14:00",
        # asyncpg would store these two as -infinity and infinity, read back without a time zone.
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
    ],
)
async def test_not_before_out_of_range_in_utc_is_400(client: httpx.AsyncClient, not_before: str) -> None:
    batch = [item(1, 2), item(3, 4, not_before=not_before)]
    response = await client.post("/suggestions", json=batch)
    assert_error(response, 400, "not_before is out of range once converted to UTC - at `$[1]`")
    assert await suggestions(client) == []  # the good item was not taken either: one answer per batch


@pytest.mark.parametrize(
    ("not_before", "stored"),
    [
        ("9999-12-31T09:59:59-14:00", "9999-12-31T23:59:59Z"),
        ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
        ("0001-01-01T14:00:00.000001+14:00", "0001-01-01T00:00:00.000001Z"),
        ("9999-12-31T23:59:59.999998Z", "9999-12-31T23:59:59.999998Z"),
    ],
)
async def test_not_before_at_the_edges_of_the_range_is_kept(
    client: httpx.AsyncClient, not_before: str, stored: str
) -> None:
    await suggest(client, 1, 2, not_before=not_before)
    assert [s["not_before"] for s in await suggestions(client)] == [stored]


async def test_integral_floats_count_as_integers(client: httpx.AsyncClient) -> None:
    """JSON Schema's integer includes 8414.0; a fraction is still refused, naming the field."""
    assert_error(
        await client.post("/task/approve", json={"suggestion_id": 8414.0}),
        404,
        "Suggestion with id 8414 not found",
    )
    assert_error(
        await client.post("/task/approve", json={"suggestion_id": 8414.5}),
        400,
        "Expected `int`, got `float` - at `$.suggestion_id`",
    )
    dispatched = await client.post("/dispatch/next", json={"worker_id": "van-7", "lease_seconds": 60.0})
    assert_error(dispatched, 404, "No available tasks with status 'ready'")  # not `int | null`, got `float`
    result = json_of(await client.post("/suggestions", json=[item(1.0, 2e0, qty=3.0, priority=-1.0)]), 201)
    task = json_of(await client.post("/task/approve", json={"suggestion_id": float(result["ids"][0])}), 200)
    assert (task["from_station_id"], task["to_station_id"], task["qty"], task["priority"]) == (1, 2, 3, -1)
    # The rules after decoding still hold on this path.
    assert_error(
        await client.post("/suggestions", json=[item(7.0, 7)]),
        400,
        "from_station_id and to_station_id must differ - at `$[0]`",
    )
    assert_error(
        await client.post("/tasks/approve", json={"suggestion_ids": [1.0, 0.0]}),
        400,
        "Expected `int` >= 1 - at `$.suggestion_ids[1]`",
    )


async def _postgres_data_error(conn: asyncpg.Connection, *args: Any) -> None:
    await conn.fetchval("SELECT 'secret SQL'::int")  # 22P02, a PostgreSQL data exception


async def _encoder_data_error(conn: asyncpg.Connection, *args: Any) -> None:
    await conn.fetchval("SELECT $1::int /* secret SQL */", 2**40)  # asyncpg refuses to encode it


@pytest.mark.parametrize("failing", [_postgres_data_error, _encoder_data_error], ids=["postgres", "asyncpg"])
async def test_a_data_error_that_gets_past_validation_is_400_without_sql(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, failing: Any
) -> None:
    monkeypatch.setattr(queries, "task_get", failing)
    response = await client.get("/task/1")
    assert_error(response, 400, "A value in the request is out of range or not valid for the database")
    assert "secret" not in response.text
