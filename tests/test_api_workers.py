"""Workers over the API: registration, reads (a worker's key reads its own), stats, off shift, and the
position and load a van reports with its dispatch, heartbeat and pickup."""

from typing import Any

import asyncpg
import httpx
import pytest

from helpers import bearer, json_of, make_task, make_tasks

VAN = {"name": "Van 7", "capacity": 12, "depot_station_id": 3, "on_shift": True}
WORKER_KEYS = {
    "worker_id",
    "name",
    "capacity",
    "depot_station_id",
    "on_shift",
    "lat",
    "lon",
    "position_at",
    "load",
    "current_task_id",
    "last_seen_at",
    "completed_today",
}


async def test_register_then_update_a_worker(client: httpx.AsyncClient) -> None:
    created = json_of(await client.put("/workers/van-7", json=VAN), 200)
    assert set(created) == WORKER_KEYS
    assert created == {
        "worker_id": "van-7",
        **VAN,
        "lat": None,
        "lon": None,
        "position_at": None,
        "load": None,
        "current_task_id": None,
        "last_seen_at": None,
        "completed_today": 0,
    }
    updated = json_of(await client.put("/workers/van-7", json={**VAN, "capacity": 6, "on_shift": False}), 200)
    assert (updated["capacity"], updated["on_shift"]) == (6, False)
    assert json_of(await client.get("/workers/van-7"), 200) == updated


async def test_workers_are_listed_a_page_at_a_time(client: httpx.AsyncClient) -> None:
    for n in (3, 1, 2):
        json_of(await client.put(f"/workers/van-{n}", json=VAN), 200)
    first = json_of(await client.get("/workers?limit=2"), 200)
    assert [w["worker_id"] for w in first] == ["van-1", "van-2"]
    rest = json_of(await client.get("/workers?limit=2&after=van-2"), 200)
    assert [w["worker_id"] for w in rest] == ["van-3"]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({**VAN, "capacity": -1}, "capacity"),
        ({**VAN, "on_shift": "yes"}, "on_shift"),
        ({"capacity": 3, "on_shift": True}, "name"),
        ({**VAN, "colour": "red"}, "colour"),
    ],
)
async def test_a_bad_registration_is_a_400_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], named: str
) -> None:
    detail = json_of(await client.put("/workers/van-7", json=body), 400)["detail"]
    assert named in detail


async def test_an_unregistered_worker_is_a_404(client: httpx.AsyncClient) -> None:
    assert "not registered" in json_of(await client.get("/workers/nobody"), 404)["detail"]


async def test_a_worker_key_reads_its_own_worker_only(client: httpx.AsyncClient) -> None:
    for worker_id in ("van-7", "van-8"):
        json_of(await client.put(f"/workers/{worker_id}", json=VAN), 200)
    key = json_of(await client.post("/keys", json={"role": "worker", "worker_id": "van-7"}), 201)["key"]
    headers = bearer(key)
    assert json_of(await client.get("/workers/van-7", headers=headers), 200)["worker_id"] == "van-7"
    json_of(await client.get("/workers/van-8", headers=headers), 404)
    json_of(await client.get("/workers/van-8/stats", headers=headers), 404)
    json_of(await client.get("/workers", headers=headers), 403)


async def test_an_off_shift_worker_gets_a_404_saying_so(client: httpx.AsyncClient) -> None:
    await make_tasks(client, 2)
    json_of(await client.put("/workers/van-7", json={**VAN, "on_shift": False}), 200)
    for fields in ({}, {"wait_seconds": 20}, {"lat": 37.78, "lon": -122.41}):
        detail = json_of(await client.post("/dispatch/next", json={"worker_id": "van-7", **fields}), 404)
        assert "off shift" in detail["detail"]
    json_of(await client.put("/workers/van-7", json=VAN), 200)
    json_of(await client.post("/dispatch/next", json={"worker_id": "van-7"}), 200)
    # An unregistered worker works as before.
    json_of(await client.post("/dispatch/next", json={"worker_id": "anyone"}), 200)


async def test_the_van_reports_where_it_is_and_what_it_carries(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    json_of(await client.put("/workers/van-7", json=VAN), 200)
    await make_task(client, 1, 2)
    at = {"lat": 37.7749, "lon": -122.4194, "accuracy_m": 8.0, "load": 0}
    task = json_of(await client.post("/dispatch/next", json={"worker_id": "van-7", **at}), 200)
    worker = json_of(await client.get("/workers/van-7"), 200)
    assert (worker["lat"], worker["lon"], worker["load"]) == (37.7749, -122.4194, 0)
    assert worker["current_task_id"] == task["id"]
    assert worker["last_seen_at"] is not None
    first_seen = worker["position_at"]

    holder = {"worker_id": "van-7", "lease_id": task["lease_id"]}
    json_of(
        await client.post(
            f"/task/{task['id']}/pickup", json={**holder, "lat": 37.78, "lon": -122.41, "load": 3}
        ),
        200,
    )
    worker = json_of(await client.get("/workers/van-7"), 200)
    assert (worker["lat"], worker["lon"], worker["load"]) == (37.78, -122.41, 3)
    assert worker["position_at"] >= first_seen
    # A heartbeat without a position leaves the last one; with one, it moves.
    json_of(await client.post(f"/task/{task['id']}/heartbeat", json=holder), 200)
    assert json_of(await client.get("/workers/van-7"), 200)["lat"] == 37.78
    json_of(
        await client.post(f"/task/{task['id']}/heartbeat", json={**holder, "lat": 37.8, "lon": -122.4}), 200
    )
    worker = json_of(await client.get("/workers/van-7"), 200)
    assert (worker["lat"], worker["lon"], worker["load"]) == (37.8, -122.4, 3)  # load kept when not given
    assert await pool.fetchval("SELECT accuracy_m FROM workers WHERE worker_id = 'van-7'") is None

    json_of(await client.post(f"/task/{task['id']}/complete", json=holder), 200)
    worker = json_of(await client.get("/workers/van-7"), 200)
    assert (worker["current_task_id"], worker["completed_today"]) == (None, 1)


async def test_an_unregistered_van_s_position_is_kept_too(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await make_task(client, 1, 2)
    json_of(await client.post("/dispatch/next", json={"worker_id": "van-x", "lat": 37.7, "lon": -122.4}), 200)
    row = await pool.fetchrow("SELECT lat, lon, registered_at FROM workers WHERE worker_id = 'van-x'")
    assert row is not None
    assert (row["lat"], row["lon"], row["registered_at"]) == (37.7, -122.4, None)
    # Not registered: not listed, and its page is a 404.
    assert json_of(await client.get("/workers"), 200) == []
    json_of(await client.get("/workers/van-x"), 404)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"lat": 37.7}, "lat and lon go together"),
        ({"lat": 91, "lon": 0}, "lat"),
        ({"lat": 0, "lon": -181}, "lon"),
        ({"load": 3}, "with a position"),
        ({"lat": 0, "lon": 0, "load": -1}, "load"),
        ({"lat": 0, "lon": 0, "accuracy_m": -5}, "accuracy_m"),
    ],
)
async def test_a_bad_position_is_a_400(client: httpx.AsyncClient, fields: dict[str, Any], named: str) -> None:
    detail = json_of(await client.post("/dispatch/next", json={"worker_id": "van-7", **fields}), 400)[
        "detail"
    ]
    assert named in detail


async def test_stats_count_what_a_worker_did(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    tasks = await make_tasks(client, 3)
    held = [json_of(await client.post("/dispatch/next", json={"worker_id": "van-7"}), 200) for _ in tasks]
    # Done in 10 and 20 minutes (the clock moved by hand), one failed attempt.
    for task, minutes in zip(held[:2], (10, 20), strict=True):
        await pool.execute(
            "UPDATE tasks SET assigned_at = now() - make_interval(mins => $2) WHERE id = $1",
            task["id"],
            minutes,
        )
        json_of(await client.post(f"/task/{task['id']}/complete", json={"worker_id": "van-7"}), 200)
    json_of(
        await client.post(f"/task/{held[2]['id']}/fail", json={"worker_id": "van-7", "error": "jammed"}), 200
    )
    stats = json_of(await client.get("/workers/van-7/stats?hours=2"), 200)
    assert stats["worker_id"] == "van-7"
    assert (stats["completed"], stats["failures"], stats["leases_expired"]) == (2, 1, 0)
    assert stats["tasks_per_hour"] == 1.0
    assert stats["median_minutes_to_complete"] == pytest.approx(15, abs=0.1)
    assert json_of(await client.get("/workers/nobody/stats"), 200)["completed"] == 0
