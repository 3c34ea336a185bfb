"""Vans with positions over real HTTP, against a real `baywheels serve`: one van per station holds under 64
concurrent vans that dispatch and complete (checked in SQL afterwards: no station had two vans at once), and
every task still goes exactly once to 256 concurrent dispatchers that all say where they are. In both, the
vans that queue behind the busy statements are served in batches (task_dispatch_near_many), as /metrics
shows."""

import asyncio
import itertools
import random
from typing import Any

import asyncpg
import pytest

from conftest import LiveServer
from helpers import RawConnection, assert_assigned_as_told, json_of, metric

# The Bay Area's bounding box, where the stations and the vans are.
SOUTH, NORTH, WEST, EAST = 37.2, 37.9, -122.55, -121.7


async def add_stations(pool: asyncpg.Pool, n: int, rng: random.Random) -> None:
    await pool.executemany(
        "INSERT INTO stations (id, gbfs_station_id, name, lat, lon) VALUES ($1, $2, $3, $4, $5)",
        [
            (i, f"gbfs-{i}", f"station {i}", rng.uniform(SOUTH, NORTH), rng.uniform(WEST, EAST))
            for i in range(1, n + 1)
        ],
    )


def somewhere(rng: random.Random) -> dict[str, float]:
    return {"lat": rng.uniform(SOUTH, NORTH), "lon": rng.uniform(WEST, EAST)}


async def approve_pairs(live_server: LiveServer, pairs: list[tuple[int, int]]) -> list[int]:
    async with live_server.client() as client:
        items = [
            {
                "from_station_id": a,
                "to_station_id": b,
                "qty": 1 + (a + b) % 5,
                "reason": "test",
                "priority": a % 3,
            }
            for a, b in pairs
        ]
        ids = json_of(await client.post("/suggestions", json=items), 201)["ids"]
        tasks = json_of(await client.post("/tasks/approve", json={"suggestion_ids": ids}), 200)["tasks"]
    return [task["id"] for task in tasks]


# Statements that served a batch of vans.
NEAR_MANY = 'baywheels_db_statement_duration_seconds_count{query="task_dispatch_near_many"}'


# Stations held by two different vans in one committed state of the database: tasks assigned, by their
# pickup and drop-off. (The task events cannot say it afterwards: an event's time is its transaction's start,
# and a dispatch that waited for a van's completion to commit started before it.)
SHARED_NOW = """
SELECT count(*) FROM (
    SELECT station
    FROM tasks CROSS JOIN LATERAL (VALUES (from_station_id), (to_station_id)) s (station)
    WHERE status = 'assigned'
    GROUP BY station
    HAVING count(DISTINCT worker_id) > 1
) shared
"""


@pytest.mark.parametrize("one_van", [True, False], ids=["one van per station", "control: vans may share"])
async def test_no_station_has_two_vans_at_once(
    database_url: str, pool: asyncpg.Pool, tmp_path: Any, one_van: bool
) -> None:
    """64 vans, 40 stations, 300 tasks: each van asks (with a position, or without every fourth time),
    completes what it gets and asks again, until all are done, while the database is looked at over and over
    for a station with two vans. The control run, with the rule off, shows that the look sees them."""
    rng = random.Random(7)
    await add_stations(pool, 40, rng)
    pairs = rng.sample([(a, b) for a in range(1, 41) for b in range(1, 41) if a != b], 300)
    env = {"ONE_VAN_PER_STATION": str(one_van).lower(), "RATE_LIMIT_ADMIN": "1000000/second"}
    live_server = LiveServer(database_url, env=env, log_path=tmp_path / "serve.log")
    await asyncio.to_thread(live_server.start)
    try:
        task_ids = await approve_pairs(live_server, pairs)
        conns = await asyncio.gather(*(RawConnection.open(live_server.port) for _ in range(64)))
        done: list[int] = []
        statuses: list[int] = []

        async def van(conn: RawConnection, n: int) -> None:
            own = random.Random(n)
            for ask in itertools.count():
                if len(done) == len(task_ids):
                    return
                at = somewhere(own) if ask % 4 else {}
                status, body = await conn.post("/dispatch/next", {"worker_id": f"van-{n}", **at})
                statuses.append(status)
                if status == 404:
                    await asyncio.sleep(0.005)  # the van's own pause before asking again
                    continue
                assert status == 200, body
                holder = {"worker_id": f"van-{n}", "lease_id": body["lease_id"]}
                status, completed = await conn.post(f"/task/{body['id']}/complete", holder)
                assert status == 200, completed
                done.append(body["id"])

        looks: list[int] = []

        async def watch() -> None:
            async with pool.acquire() as watcher:
                while len(done) < len(task_ids):
                    looks.append(await watcher.fetchval(SHARED_NOW))

        try:
            async with asyncio.timeout(150):
                await asyncio.gather(watch(), *(van(conn, n) for n, conn in enumerate(conns)))
        finally:
            for conn in conns:
                conn.close()
        async with live_server.client() as client:
            batches = await metric(client, NEAR_MANY)
    finally:
        assert await asyncio.to_thread(live_server.stop) == 0
    assert sorted(done) == sorted(task_ids)
    assert set(statuses) <= {200, 404}
    assigned = await pool.fetchval("SELECT count(*) FROM task_events WHERE event = 'assigned'")
    shared = sum(1 for n in looks if n)
    print(
        f"\n{len(done)} tasks by 64 vans ({statuses.count(404)} answers 404): {len(looks)} looks, "
        f"{shared} saw a station with two vans"
    )
    assert assigned == len(task_ids)  # each once: nothing released or retried
    assert len(looks) >= 20
    assert batches > 0
    if one_van:
        assert shared == 0
        assert await pool.fetchval("SELECT count(*) FROM station_claims WHERE task_id IS NOT NULL") == 0
    else:
        assert shared > 0


async def test_256_dispatchers_with_positions_get_every_task_exactly_once(
    live_server: LiveServer, pool: asyncpg.Pool
) -> None:
    rng = random.Random(11)
    tasks = 1000
    await add_stations(pool, 2 * tasks, rng)
    approved = await approve_pairs(live_server, [(2 * i - 1, 2 * i) for i in range(1, tasks + 1)])
    conns = await asyncio.gather(*(RawConnection.open(live_server.port) for _ in range(256)))

    async def dispatcher(conn: RawConnection, n: int) -> list[tuple[int, Any]]:
        """Asks, from a new place each time, until told there is nothing left."""
        own = random.Random(n)
        answers = []
        while True:
            answers.append(await conn.post("/dispatch/next", {"worker_id": f"w{n}", **somewhere(own)}))
            if answers[-1][0] != 200:
                return answers

    try:
        results = await asyncio.gather(*(dispatcher(conn, n) for n, conn in enumerate(conns)))
    finally:
        for conn in conns:
            conn.close()
    async with live_server.client() as client:
        assert await metric(client, NEAR_MANY) > 0
    received: list[dict[str, Any]] = []
    for n, answers in enumerate(results):
        *assigned, last = answers
        assert last == (404, {"detail": "No available tasks with status 'ready'"})
        assert all(status == 200 and body["worker_id"] == f"w{n}" for status, body in assigned)
        received += [body for _, body in assigned]
    ids = [body["id"] for body in received]
    assert sorted(ids) == sorted(approved)
    await assert_assigned_as_told(pool, received)
    # Each van's last position is kept.
    assert await pool.fetchval("SELECT count(*) FROM workers WHERE position_at IS NOT NULL") == 256
