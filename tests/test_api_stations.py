"""The station registry over the API, in-process against a real PostgreSQL: GET /stations (radius and fill
filters against known Bay Area coordinates, paging, bad parameters), one station with its work, its history
by day in the system's time zone; suggestions that must name real stations (or GBFS ids); stale flags on
tasks; and the service's own import from GBFS_URL over HTTP (readiness, conditional GETs, ttl, refresh)."""

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import msgspec
import pytest

from baywheels import gbfs, queries, settings
from baywheels.app import create_app
from gbfs_server import GbfsServer, Validator
from helpers import (
    TASK_KEYS,
    approve,
    dispatch,
    get_task,
    in_process,
    ingest,
    item,
    json_of,
    make_task,
    suggest,
    until,
)

FIXTURE = Path(__file__).parent / "gbfs" / "v2.3"
POWELL_LAT, POWELL_LON = 37.786375, -122.404904
# Registry ids of the fixture's stations (their legacy_ids), with bikes / capacity.
EMBARCADERO = 15  # 0 / 31, 31 docks, 2.05 km from Powell
POWELL = 27  # 20 / 35, 15 docks
CALTRAIN = 30  # 2 / 19, 17 docks, 1.38 km
MARKET_10TH = 58  # 30 / 35, 5 docks, 1.54 km
LAKE_MERRITT = 163  # 13 / 27, 12.3 km
BERKELEY = 245  # 11 / 23, 15.2 km
STATION_KEYS = {
    "id",
    "gbfs_station_id",
    "short_name",
    "legacy_id",
    "name",
    "lat",
    "lon",
    "capacity",
    "num_bikes_available",
    "num_docks_available",
    "is_renting",
    "is_returning",
    "last_reported",
    "active",
}


async def import_files(
    pool: asyncpg.Pool, files: dict[str, bytes], source: str = "test"
) -> gbfs.ImportResult:
    async with pool.acquire() as conn:
        return await gbfs.store(conn, gbfs.parse(files), source)


def fixture_files(**bikes: int) -> dict[str, bytes]:
    """The fixture's files, with the bikes available at some stations (by legacy id) changed."""
    files = gbfs.read_folder(FIXTURE)
    if bikes:
        info = json.loads(files["station_information"])["data"]["stations"]
        legacy = {s["station_id"]: s["legacy_id"] for s in info}
        status = json.loads(files["station_status"])
        for entry in status["data"]["stations"]:
            entry["num_bikes_available"] = bikes.get(
                f"s{legacy[entry['station_id']]}", entry["num_bikes_available"]
            )
        files["station_status"] = json.dumps(status).encode()
    return files


@pytest.fixture
async def imported(pool: asyncpg.Pool) -> None:
    await import_files(pool, fixture_files())


async def ids(client: httpx.AsyncClient, query: str) -> list[int]:
    return [s["id"] for s in json_of(await client.get(f"/stations?{query}"), 200)]


# GET /stations ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("imported")
async def test_radius_filter_is_great_circle(client: httpx.AsyncClient) -> None:
    near = f"lat={POWELL_LAT}&lon={POWELL_LON}"
    assert await ids(client, f"{near}&radius_km=1") == [POWELL]
    assert await ids(client, f"{near}&radius_km=1.45") == [POWELL, CALTRAIN]
    assert await ids(client, f"{near}&radius_km=3") == [EMBARCADERO, POWELL, CALTRAIN, MARKET_10TH]
    assert await ids(client, f"{near}&radius_km=13") == [
        EMBARCADERO,
        POWELL,
        CALTRAIN,
        MARKET_10TH,
        LAKE_MERRITT,
    ]
    assert len(await ids(client, f"{near}&radius_km=20")) == 6
    # Across the bay from Oakland.
    assert await ids(client, "lat=37.79732&lon=-122.26532&radius_km=9") == [LAKE_MERRITT, BERKELEY]


@pytest.mark.usefixtures("imported")
async def test_fill_and_active_filters_and_paging(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    assert await ids(client, "fill_below=0.2") == [EMBARCADERO, CALTRAIN]
    assert await ids(client, "fill_above=0.8") == [MARKET_10TH]
    assert await ids(client, "fill_above=0.45&fill_below=0.6") == [POWELL, LAKE_MERRITT, BERKELEY]
    assert await ids(client, "fill_below=0") == [EMBARCADERO]  # bounds included
    near = f"lat={POWELL_LAT}&lon={POWELL_LON}&radius_km=1.45"
    assert await ids(client, f"{near}&fill_below=0.2") == [CALTRAIN]

    await pool.execute("UPDATE stations SET active = false WHERE id = $1", LAKE_MERRITT)
    assert await ids(client, "active=false") == [LAKE_MERRITT]
    assert LAKE_MERRITT not in await ids(client, "active=true")
    assert LAKE_MERRITT in await ids(client, "")

    assert await ids(client, "limit=2") == [EMBARCADERO, POWELL]
    assert await ids(client, f"limit=2&after_id={POWELL}") == [CALTRAIN, MARKET_10TH]
    assert await ids(client, f"after_id={BERKELEY}") == []
    (powell,) = json_of(await client.get(f"/stations?{near}&fill_above=0.5"), 200)
    assert set(powell) == STATION_KEYS
    assert (powell["short_name"], powell["num_docks_available"]) == ("SF-F27", 15)


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("lat=37.7", "lat, lon and radius_km go together: lon, radius_km missing"),
        ("lat=37.7&lon=-122.4", "lat, lon and radius_km go together: radius_km missing"),
        ("lat=91&lon=0&radius_km=1", "Expected `float` <= 90.0 - at `$.lat`"),
        ("lat=0&lon=0&radius_km=0", "Expected `float` > 0.0 - at `$.radius_km`"),
        ("lon=east&lat=0&radius_km=1", "Expected `float | null`, got `str` - at `$.lon`"),
        ("fill_below=1.5", "Expected `float` <= 1.0 - at `$.fill_below`"),
        ("fill_above=-0.1", "Expected `float` >= 0.0 - at `$.fill_above`"),
        ("active=maybe", "Expected `bool | null`, got `str` - at `$.active`"),
        ("limit=0", "Expected `int` >= 1 - at `$.limit`"),
        ("near=1", "Object contains unknown field `near`"),
    ],
)
async def test_bad_parameters_are_named(client: httpx.AsyncClient, query: str, detail: str) -> None:
    assert json_of(await client.get(f"/stations?{query}"), 400) == {"detail": detail}


@pytest.mark.usefixtures("imported")
async def test_the_radius_search_reads_the_earth_index(pool: asyncpg.Pool) -> None:
    text = queries._query_text("station_list_near", "many")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")  # six rows: a scan would win on cost alone
        plan = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) {text}", 0, 100, None, None, None, POWELL_LAT, POWELL_LON, 3000.0
        )
    assert "stations_earth_idx" in json.dumps(plan)


# One station ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("imported")
async def test_a_station_with_its_suggestions_open_and_finished_tasks(client: httpx.AsyncClient) -> None:
    pending = await suggest(client, POWELL, CALTRAIN)
    incoming = await suggest(client, MARKET_10TH, POWELL)
    await suggest(client, MARKET_10TH, CALTRAIN)  # not Powell's
    # One van per station: Powell's finished task is done before its open one is handed out.
    done = await make_task(client, POWELL, LAKE_MERRITT)
    assert (await dispatch(client, "van-2"))["id"] == done["id"]
    json_of(await client.post(f"/task/{done['id']}/complete", json={"worker_id": "van-2"}), 200)
    open_task = await make_task(client, EMBARCADERO, POWELL)
    assert (await dispatch(client, "van-1"))["id"] == open_task["id"]

    station = json_of(await client.get(f"/stations/{POWELL}"), 200)
    assert set(station) == STATION_KEYS | {"suggestions", "open_tasks", "finished_tasks"}
    assert station["name"] == "Powell St BART Station (Market St at 4th St)"
    assert [s["id"] for s in station["suggestions"]] == [pending, incoming]
    assert [t["id"] for t in station["open_tasks"]] == [open_task["id"]]
    assert set(station["open_tasks"][0]) == TASK_KEYS
    assert [(t["id"], t["status"]) for t in station["finished_tasks"]] == [(done["id"], "completed")]

    assert json_of(await client.get("/stations/999"), 404) == {"detail": "Station with id 999 not found"}
    json_of(await client.get(f"/stations/{2**40}"), 404)
    json_of(await client.get("/stations/999/history"), 404)


@pytest.mark.usefixtures("imported")
async def test_history_counts_bikes_per_day_in_the_systems_time_zone(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    zone = ZoneInfo("America/Los_Angeles")
    now = datetime.now(UTC)
    # 03:00 UTC yesterday is still the day before in San Francisco.
    early = (now - timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    assert early.astimezone(zone).date() != early.date()
    moves = [(POWELL, CALTRAIN, 4, early), (CALTRAIN, POWELL, 2, early), (POWELL, MARKET_10TH, 5, now)]
    for from_id, to_id, qty, at in moves:
        task = await make_task(client, from_id, to_id, qty=qty)
        await pool.execute(
            "UPDATE tasks SET status = 'completed', completed_at = $2 WHERE id = $1", task["id"], at
        )
    old = await make_task(client, POWELL, LAKE_MERRITT, qty=9)
    await pool.execute(
        "UPDATE tasks SET status = 'completed', completed_at = $2 WHERE id = $1",
        old["id"],
        now - timedelta(days=40),
    )
    await make_task(client, POWELL, BERKELEY, qty=7)  # not completed: not a move

    history = json_of(await client.get(f"/stations/{POWELL}/history"), 200)
    assert (history["station_id"], history["timezone"]) == (POWELL, "America/Los_Angeles")
    expected: dict[str, dict[str, int]] = {}
    for from_id, _, qty, at in moves:
        day = expected.setdefault(
            at.astimezone(zone).date().isoformat(),
            {"bikes_out": 0, "bikes_in": 0, "tasks_out": 0, "tasks_in": 0},
        )
        direction = "out" if from_id == POWELL else "in"
        day[f"bikes_{direction}"] += qty
        day[f"tasks_{direction}"] += 1
    assert history["days"] == [{"day": day, **counts} for day, counts in sorted(expected.items())]
    assert (
        len(json_of(await client.get(f"/stations/{POWELL}/history?days=366"), 200)["days"])
        == len(expected) + 1
    )


# Suggestions name real stations ---------------------------------------------------------------------------


async def test_with_an_empty_registry_any_station_ids_are_accepted(client: httpx.AsyncClient) -> None:
    assert (await ingest(client, [item(901, 902)]))["created"] == 1
    response = await client.post(
        "/suggestions", json=[{"from_station": "x", "to_station_id": 1, "qty": 1, "reason": "r"}]
    )
    assert json_of(response, 400) == {"detail": "GBFS station_id 'x' is unknown - at `$[0].from_station`"}


@pytest.mark.usefixtures("imported")
async def test_unknown_or_inactive_stations_refuse_the_whole_batch(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    response = await client.post("/suggestions", json=[item(POWELL, CALTRAIN), item(POWELL, 901)])
    assert json_of(response, 400) == {"detail": "Station id 901 is unknown - at `$[1].to_station_id`"}
    await pool.execute("UPDATE stations SET active = false WHERE id = $1", BERKELEY)
    response = await client.post("/suggestions", json=[item(BERKELEY, CALTRAIN)])
    assert json_of(response, 400) == {
        "detail": f"Station id {BERKELEY} is inactive (it left the GBFS feed) - at `$[0].from_station_id`"
    }
    assert await pool.fetchval("SELECT count(*) FROM suggestions") == 0


@pytest.mark.usefixtures("imported")
async def test_suggestions_may_name_stations_by_gbfs_id(client: httpx.AsyncClient) -> None:
    powell, caltrain = "a1b2c3d4-0001-4e1a-9a3b-6f0e1d2c3b01", "a1b2c3d4-0002-4e1a-9a3b-6f0e1d2c3b02"
    by_gbfs = {"from_station": powell, "to_station": caltrain, "qty": 2, "reason": "by gbfs id"}
    mixed = {"from_station_id": MARKET_10TH, "to_station": powell, "qty": 1, "reason": "mixed"}
    result = await ingest(client, [by_gbfs, mixed])
    assert result["created"] == 2
    listed = json_of(await client.get("/suggestions"), 200)
    assert [(s["from_station_id"], s["to_station_id"]) for s in listed] == [
        (POWELL, CALTRAIN),
        (MARKET_10TH, POWELL),
    ]
    # The same pair by integer id updates it in place.
    assert (await ingest(client, [item(POWELL, CALTRAIN, qty=6)]))["updated"] == 1

    for body, detail in [
        ({**by_gbfs, "to_station": "nope"}, "GBFS station_id 'nope' is unknown - at `$[0].to_station`"),
        (
            {**by_gbfs, "to_station": None, "to_station_id": POWELL},
            "The two stations are the same station (27) - at `$[0]`",
        ),
    ]:
        body = {k: v for k, v in body.items() if v is not None}
        assert json_of(await client.post("/suggestions", json=[body]), 400) == {"detail": detail}
    both = {**by_gbfs, "from_station_id": POWELL}
    detail = json_of(await client.post("/suggestions", json=[both]), 400)["detail"]
    assert detail == "name the from station by one of from_station_id and from_station - at `$[0]`"
    neither = {"to_station_id": POWELL, "qty": 1, "reason": "r"}
    detail = json_of(await client.post("/suggestions", json=[neither]), 400)["detail"]
    assert detail == "name the from station by one of from_station_id and from_station - at `$[0]`"


# Stale flags ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("imported")
async def test_stale_flags_are_set_on_approval_and_refreshed_by_status(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    empty_pickup = await make_task(client, EMBARCADERO, CALTRAIN, qty=3)
    assert empty_pickup["stale_reason"] == "pickup station 15 has 0 bikes available, the task moves 3"
    full_dropoff = await make_task(client, POWELL, MARKET_10TH, qty=6)
    assert full_dropoff["stale_reason"] == "drop-off station 58 has 5 docks available, the task moves 6"
    fine = await make_task(client, POWELL, CALTRAIN, qty=5)
    assert fine["stale_reason"] is None

    stale = json_of(await client.get("/tasks?flag=stale"), 200)
    assert [t["id"] for t in stale] == [empty_pickup["id"], full_dropoff["id"]]
    # Still offered: the oldest first, flag and all.
    offered = await dispatch(client, "van-1")
    assert (offered["id"], offered["stale_reason"]) == (empty_pickup["id"], empty_pickup["stale_reason"])

    # A status refresh: bikes arrive at the Embarcadero, Powell empties to 4.
    result = await import_files(pool, fixture_files(s15=12, s27=4))
    assert result.status_changed == 2
    assert (await get_task(client, empty_pickup["id"]))[
        "stale_reason"
    ] is None  # assigned, still re-evaluated
    assert (await get_task(client, fine["id"]))["stale_reason"] == (
        "pickup station 27 has 4 bikes available, the task moves 5"
    )
    assert (await get_task(client, full_dropoff["id"]))["stale_reason"] == (
        "pickup station 27 has 4 bikes available, the task moves 6; "
        "drop-off station 58 has 5 docks available, the task moves 6"
    )
    assert [t["id"] for t in json_of(await client.get("/tasks?flag=stale&status=ready"), 200)] == [
        full_dropoff["id"],
        fine["id"],
    ]
    # A finished task is not re-evaluated, and leaves the stale list.
    json_of(await client.post(f"/task/{fine['id']}/cancel"), 200)
    await import_files(pool, fixture_files(s15=12, s27=20))
    assert (await get_task(client, fine["id"]))["stale_reason"] is not None
    assert [t["id"] for t in json_of(await client.get("/tasks?flag=stale"), 200)] == [full_dropoff["id"]]
    assert json_of(await client.get("/tasks?flag=fresh"), 400)["detail"].endswith("at `$.flag`")


# The service's own import from GBFS_URL --------------------------------------------------------------------


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
async def test_the_reader_asks_conditionally_and_honours_ttl(validator: Validator) -> None:
    with GbfsServer(validator) as server:
        server.put_folder(FIXTURE, ttl=0)
        reader = gbfs.FeedReader(server.url)
        files, changed = await reader.read()
        assert changed
        assert set(files) == {"station_information", "station_status", "system_information"}
        assert server.count("station_status", 200) == 1
        again, changed = await reader.read()
        assert (again, changed) == (files, False)
        assert (server.count("station_status", 304), server.conditional["station_status"]) == (1, 1)
        assert server.count("gbfs", 304) == 1

        server.put_folder(FIXTURE, ttl=3600)  # changed (the ttl) and now long-lived
        _, changed = await reader.read()
        assert changed
        assert server.count("station_status", 200) == 2
        await reader.read()  # within the ttl: not asked at all
        assert server.count("station_status", 200) + server.count("station_status", 304) == 3
        assert reader.next_due() > 3000


@pytest.fixture
async def feed() -> AsyncIterator[GbfsServer]:
    with GbfsServer("etag") as server:
        server.failing = True
        yield server


@pytest.fixture
async def fed_client(
    service_settings: settings.Settings, feed: GbfsServer
) -> AsyncIterator[httpx.AsyncClient]:
    fed = msgspec.structs.replace(
        service_settings, gbfs_url=feed.url, gbfs_refresh_min_seconds=0.1, reaper_interval_seconds=0.02
    )
    async with in_process(create_app(fed)) as client:
        yield client


async def test_the_service_imports_from_gbfs_url_and_keeps_it_current(
    fed_client: httpx.AsyncClient, feed: GbfsServer, pool: asyncpg.Pool
) -> None:
    client = fed_client

    async def ready() -> bool:
        return (await client.get("/readyz")).status_code == 200

    # Not ready while the feed cannot be read.
    await until(lambda: _true(feed.count("gbfs", 503) >= 2))
    assert json_of(await client.get("/readyz"), 503) == {
        "detail": "Waiting for the first import of the station feed (GBFS_URL)"
    }
    feed.put_folder(FIXTURE, ttl=0)
    feed.failing = False
    await until(ready)
    assert len(json_of(await client.get("/stations"), 200)) == 6
    system = await pool.fetchrow("SELECT source, imported_at FROM gbfs_system")
    assert system is not None
    assert system["source"] == feed.url
    written = await pool.fetch("SELECT id, updated_at FROM stations ORDER BY id")

    # Unchanged: every later read is a 304, and nothing is written.
    await until(lambda: _true(feed.count("station_status", 304) >= 3))
    assert await pool.fetch("SELECT id, updated_at FROM stations ORDER BY id") == written
    assert await pool.fetchval("SELECT imported_at FROM gbfs_system") == system["imported_at"]

    # A status change reaches the registry and the tasks it concerns.
    task = await make_task(client, POWELL, CALTRAIN, qty=5)
    assert task["stale_reason"] is None
    feed.put("station_status", _status(POWELL_GBFS, bikes=1))

    async def flagged() -> bool:
        return (await get_task(client, task["id"]))["stale_reason"] is not None

    await until(flagged)
    powell = json_of(await client.get(f"/stations/{POWELL}"), 200)
    assert powell["num_bikes_available"] == 1
    assert [t["id"] for t in json_of(await client.get("/tasks?flag=stale"), 200)] == [task["id"]]

    # A malformed refresh is refused: the registry stays as it was, and the next read tries again.
    bad = _status(POWELL_GBFS, bikes=9)
    bad["data"]["stations"][0]["num_docks_available"] = "many"
    seen = feed.count("station_status", 200)
    feed.put("station_status", bad)
    await until(lambda: _true(feed.count("station_status", 200) > seen))
    seen_304 = feed.count("station_status", 304)
    await until(lambda: _true(feed.count("station_status", 304) > seen_304))  # the bad one was handled
    assert json_of(await client.get(f"/stations/{POWELL}"), 200)["num_bikes_available"] == 1
    feed.put("station_status", _status(POWELL_GBFS, bikes=12))

    async def cleared() -> bool:
        return (await get_task(client, task["id"]))["stale_reason"] is None

    await until(cleared)


POWELL_GBFS = "a1b2c3d4-0001-4e1a-9a3b-6f0e1d2c3b01"


def _status(gbfs_id: str, bikes: int) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((FIXTURE / "station_status.json").read_text())
    status["ttl"] = 0
    for entry in status["data"]["stations"]:
        if entry["station_id"] == gbfs_id:
            entry["num_bikes_available"] = bikes
    return status


async def _true(value: bool) -> bool:
    return value


async def test_without_gbfs_url_readiness_does_not_wait(client: httpx.AsyncClient) -> None:
    assert json_of(await client.get("/readyz"), 200)["status"] == "ready"


async def test_approve_keeps_answering_tasks_whole(client: httpx.AsyncClient) -> None:
    task = await approve(client, await suggest(client, 1, 2))
    assert set(task) == TASK_KEYS
    assert task["stale_reason"] is None


async def test_station_reads_and_the_refresh_use_their_indexes(pool: asyncpg.Pool) -> None:
    """With 50,000 tasks of which a few hundred are open and a few flagged, none of these reads the table
    whole: the flagged list reads tasks_stale_idx, a station's tasks and the refresh the open and finished
    partial indexes."""
    await pool.execute(
        """
        INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, status, completed_at,
                           stale_reason)
        SELECT g, 1 + g % 500, 1 + (g + 7) % 500, 3, 'r',
               CASE WHEN g % 100 = 0 THEN 'ready' ELSE 'completed' END,
               CASE WHEN g % 100 = 0 THEN NULL ELSE now() END,
               CASE WHEN g % 5000 = 0 THEN 'pickup station has 0 bikes available' END
        FROM generate_series(1, 50000) g
        """
    )
    await pool.execute("ANALYZE tasks")
    plans: dict[str, str] = {}
    async with pool.acquire() as conn:
        for name, args in [
            ("task_list_stale", (None, None, 0, 100)),
            ("task_list_by_station_open", (7,)),
            ("task_list_by_station_finished", (7, 50)),
            ("task_stale_refresh", ([7, 8],)),
        ]:
            text = queries._query_text(name, "many" if name != "task_stale_refresh" else "one")
            plans[name] = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {text}", *args)
        whole = await conn.fetchval("EXPLAIN (FORMAT JSON) SELECT * FROM tasks WHERE reason = 'x'")
    assert ("Seq Scan", "tasks") in _scans(json.loads(whole))  # the check below can fail
    assert "tasks_stale_idx" in plans["task_list_stale"]
    assert "tasks_open_pair_idx" in plans["task_list_by_station_open"]
    assert "tasks_finished_from_idx" in plans["task_list_by_station_finished"]
    assert "tasks_finished_to_idx" in plans["task_list_by_station_finished"]
    assert "tasks_open_pair_idx" in plans["task_stale_refresh"]
    for name, plan in plans.items():
        assert ("Seq Scan", "tasks") not in set(_scans(json.loads(plan))), name


def _scans(node: Any) -> list[tuple[str, str]]:
    """(node type, relation) of every node of an EXPLAIN (FORMAT JSON) plan."""
    if isinstance(node, list):
        return [scan for item in node for scan in _scans(item)]
    if not isinstance(node, dict):
        return []
    found = [(node["Node Type"], node.get("Relation Name", ""))] if "Node Type" in node else []
    return found + _scans(node.get("Plan")) + _scans(node.get("Plans"))
