"""The dispatch rules at the query level, against real PostgreSQL, with the clock passed in where time
matters: the nearest pickup within a priority band, bands before distance, what a van can carry, the reach
(DISPATCH_MAX_KM), aging, off shift, and one van per station (sequentially, within a coalesced batch, and
between two racing statements)."""

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from baywheels import queries
from baywheels.models import Position, Task
from helpers import wait_for_lock_waiters

NOON = datetime(2030, 6, 1, 12, tzinfo=UTC)
# The van, in San Francisco (Market & 5th), and stations by their distance from it.
VAN = Position(lat=37.7840, lon=-122.4075)
STATIONS = {
    # id: (lat, lon): about 0.4 km, 1.9 km, 12 km and 15 km away. Drop-offs (1000 and up) are not in the
    # registry: only the pickup's place counts.
    1: (37.7865, -122.4045),
    2: (37.7990, -122.3970),
    3: (37.8044, -122.2712),
    4: (37.8716, -122.2727),
}


@pytest.fixture
async def stations(pool: asyncpg.Pool) -> asyncpg.Pool:
    rows = [(i, f"gbfs-{i}", f"station {i}", lat, lon) for i, (lat, lon) in STATIONS.items()]
    await pool.executemany(
        "INSERT INTO stations (id, gbfs_station_id, name, lat, lon) VALUES ($1, $2, $3, $4, $5)", rows
    )
    return pool


_drop_offs = itertools.count(1000)


async def task(
    pool: asyncpg.Pool,
    from_station: int,
    *,
    to_station: int | None = None,
    priority: int = 0,
    qty: int = 3,
    age: timedelta = timedelta(0),
) -> int:
    """A ready task approved ``age`` before NOON (to a drop-off of its own unless told)."""
    to = next(_drop_offs) if to_station is None else to_station
    suggestion_id = await pool.fetchval(
        "INSERT INTO suggestions (from_station_id, to_station_id, qty, reason, priority) "
        "VALUES ($1, $2, $3, 'test', $4) RETURNING id",
        from_station,
        to,
        qty,
        priority,
    )
    (made,) = await queries.task_approve_many(pool, [suggestion_id], NOON - age)
    return made.id


async def near(
    pool: asyncpg.Pool, worker: str = "van-1", at: Position = VAN, **options: object
) -> Task | None:
    return await queries.task_dispatch_near(pool, worker, 60, None, at, NOON, **options)  # type: ignore[arg-type]


async def test_the_nearest_pickup_beats_an_older_task_within_a_band(stations: asyncpg.Pool) -> None:
    older_far = await task(stations, 3, age=timedelta(minutes=20))
    newer_near = await task(stations, 1, age=timedelta(minutes=1))
    got = await near(stations)
    assert got is not None
    assert got.id == newer_near
    assert (got.status, got.worker_id) == ("assigned", "van-1")
    got = await near(stations, "van-2")
    assert got is not None
    assert got.id == older_far


async def test_within_a_station_the_oldest_goes_first(stations: asyncpg.Pool) -> None:
    newer = await task(stations, 1, age=timedelta(minutes=1))
    older = await task(stations, 1, age=timedelta(minutes=5))
    got = await near(stations, one_van=False)
    assert got is not None
    assert got.id == older
    got = await near(stations, "van-2", one_van=False)
    assert got is not None
    assert got.id == newer


async def test_a_higher_band_beats_a_nearer_task(stations: asyncpg.Pool) -> None:
    await task(stations, 1, priority=8)
    urgent_far = await task(stations, 4, priority=9)
    got = await near(stations)
    assert got is not None
    assert got.id == urgent_far


async def test_a_van_gets_only_what_it_can_carry(stations: asyncpg.Pool) -> None:
    big_near = await task(stations, 1, qty=10)
    small_far = await task(stations, 3, qty=4)
    await queries.worker_put(stations, "van-6", "Six", 6, None, True)
    # Room for 6, 2 on board: 4 fits, 10 does not (no splitting).
    got = await near(stations, "van-6", Position(lat=VAN.lat, lon=VAN.lon, load=2))
    assert got is not None
    assert got.id == small_far
    assert await near(stations, "van-6") is None
    # An unregistered van's capacity is unknown: anything goes.
    got = await near(stations, "unregistered")
    assert got is not None
    assert got.id == big_near


async def test_tasks_beyond_the_reach_are_not_offered(stations: asyncpg.Pool) -> None:
    await task(stations, 4)  # 15 km
    assert await near(stations, max_km=14) is None
    twelve_km = await task(stations, 3)
    got = await near(stations, max_km=14)
    assert got is not None
    assert got.id == twelve_km


async def test_the_position_is_kept_with_its_time(stations: asyncpg.Pool) -> None:
    await near(stations, "van-9", Position(lat=37.8, lon=-122.4, accuracy_m=12.5, load=3))
    row = await stations.fetchrow("SELECT lat, lon, accuracy_m, load, position_at FROM workers")
    assert row is not None
    assert dict(row) == {"lat": 37.8, "lon": -122.4, "accuracy_m": 12.5, "load": 3, "position_at": NOON}


async def test_with_an_empty_registry_a_position_changes_nothing(pool: asyncpg.Pool) -> None:
    low = await task(pool, 5, priority=1)
    high = await task(pool, 6, priority=2)
    assert [(await near(pool, f"v{n}")) for n in range(2)] == [
        await queries.task_get(pool, i) for i in (high, low)
    ]


async def test_an_off_shift_worker_gets_nothing(stations: asyncpg.Pool) -> None:
    await task(stations, 1)
    await queries.worker_put(stations, "van-1", "One", 10, None, False)
    assert await near(stations) is None
    assert await queries.task_dispatch(stations, "van-1", 60, None, NOON) is None
    assert await queries.task_dispatch_many(stations, ["van-1"], [60], NOON) == {}
    assert await queries.worker_off_shift(stations, "van-1")
    await queries.worker_put(stations, "van-1", "One", 10, None, True)
    assert await queries.task_dispatch(stations, "van-1", 60, None, NOON) is not None


async def test_aging_lets_an_old_task_through(pool: asyncpg.Pool) -> None:
    """30 minutes a step, at most 5: a priority 0 task ready for 2 hours (4 steps) beats a new priority 3
    one; at 61 minutes (2 steps) it does not."""
    old = await task(pool, 1, priority=0, age=timedelta(minutes=121))
    waiting = await task(pool, 2, priority=0, age=timedelta(minutes=61))
    new = await task(pool, 3, priority=3)
    assert await queries.task_age(pool, 30, 5, NOON) == 2
    assert await queries.task_age(pool, 30, 5, NOON) == 0  # nothing more due at the same time
    aging = {row["id"]: row["aging"] for row in await pool.fetch("SELECT id, aging FROM tasks")}
    assert aging == {old: 4, waiting: 2, new: 0}
    order = [await queries.task_dispatch(pool, f"w{n}", 60, None, NOON) for n in range(3)]
    assert [t.id for t in order if t is not None] == [old, new, waiting]


async def test_aging_stops_at_its_most(pool: asyncpg.Pool) -> None:
    ancient = await task(pool, 1, priority=-100, age=timedelta(days=3))
    await queries.task_age(pool, 30, 5, NOON)
    assert await pool.fetchval("SELECT aging FROM tasks WHERE id = $1", ancient) == 5
    assert await queries.task_age(pool, 30, 5, NOON + timedelta(days=1)) == 0


async def test_a_station_with_a_van_is_not_handed_to_another(stations: asyncpg.Pool) -> None:
    first = await task(stations, 1, to_station=2)
    shares_pickup = await task(stations, 1)
    shares_drop_off_as_pickup = await task(stations, 2)
    elsewhere = await task(stations, 3)
    got = await queries.task_dispatch(stations, "van-1", 60, None, NOON)
    assert got is not None
    assert got.id == first
    # Stations 1 and 2 are van-1's until it is done: the others wait, with or without a position.
    got = await queries.task_dispatch(stations, "van-2", 60, None, NOON)
    assert got is not None
    assert got.id == elsewhere
    assert await queries.task_dispatch(stations, "van-3", 60, None, NOON) is None
    assert await near(stations, "van-3") is None
    change = await queries.task_complete(stations, first, "van-1", None, NOON)
    assert change is not None
    assert change.changed
    got = await near(stations, "van-3")
    assert got is not None
    assert got.id == shares_pickup
    # Its drop-off is not station 2: station 2's task can go now, to another van.
    got = await queries.task_dispatch(stations, "van-4", 60, None, NOON)
    assert got is not None
    assert got.id == shares_drop_off_as_pickup
    claims = await stations.fetch("SELECT station_id, task_id FROM station_claims WHERE task_id IS NOT NULL")
    assert {r["station_id"]: r["task_id"] for r in claims}[1] == shares_pickup


@pytest.mark.parametrize("leave", ["release", "fail", "cancel", "lease expiry"])
async def test_every_way_out_of_assigned_frees_the_stations(stations: asyncpg.Pool, leave: str) -> None:
    held = await task(stations, 1)
    waiting = await task(stations, 1)
    got = await queries.task_dispatch(stations, "van-1", 60, None, NOON)
    assert got is not None
    assert got.id == held
    assert await queries.task_dispatch(stations, "van-2", 60, None, NOON) is None
    if leave == "release":
        await queries.task_release(stations, held, "van-1", None, "flat tyre", NOON)
    elif leave == "fail":
        await queries.task_fail(stations, held, "van-1", None, "jammed", 30, 5, NOON)
    elif leave == "cancel":
        await queries.task_cancel(stations, held, None, NOON)
    else:
        await queries.task_rescue_expired(stations, 5, 100, NOON + timedelta(minutes=5))
    got = await queries.task_dispatch(stations, "van-2", 60, None, NOON)
    assert got is not None
    assert got.id in {held, waiting}


async def test_vans_may_share_a_station_when_told(stations: asyncpg.Pool) -> None:
    await task(stations, 1)
    await task(stations, 1)
    for van in ("van-1", "van-2"):
        assert await queries.task_dispatch(stations, van, 60, None, NOON, one_van=False) is not None
    assert await stations.fetchval("SELECT count(*) FROM station_claims") == 0


async def test_a_coalesced_batch_gives_a_station_to_one_of_its_workers(stations: asyncpg.Pool) -> None:
    first = await task(stations, 1, age=timedelta(minutes=3))
    await task(stations, 1, age=timedelta(minutes=2))
    third = await task(stations, 2, age=timedelta(minutes=1))
    got = await queries.task_dispatch_many(stations, ["a", "b", "c"], [60] * 3, NOON)
    # The second task shares station 1 with the first: it stays ready, and the third goes to the second
    # worker in line.
    assert {i: t.id for i, t in got.items()} == {0: first, 1: third}


async def test_a_racing_dispatch_that_saw_the_station_free_fails_whole(stations: asyncpg.Pool) -> None:
    """Two statements in flight chose tasks at one station: the second waits at the claim for the first to
    commit, then fails as station_taken, and nothing of it stays (its task is still ready)."""
    await task(stations, 1, age=timedelta(minutes=2))
    second = await task(stations, 1, age=timedelta(minutes=1))
    async with stations.acquire() as first_conn, stations.acquire() as second_conn:
        transaction = first_conn.transaction()
        await transaction.start()
        got = await queries.task_dispatch(first_conn, "van-1", 60, None, NOON)
        assert got is not None
        racing = asyncio.ensure_future(queries.task_dispatch(second_conn, "van-2", 60, None, NOON))
        await wait_for_lock_waiters(stations, 1)
        await transaction.commit()
        with pytest.raises(asyncpg.UniqueViolationError) as raised:
            await racing
    assert queries.station_taken(raised.value)
    row = await stations.fetchrow("SELECT status, worker_id FROM tasks WHERE id = $1", second)
    assert row is not None
    assert dict(row) == {"status": "ready", "worker_id": None}
    assert await stations.fetchval("SELECT count(*) FROM task_events WHERE event = 'assigned'") == 1


# Many vans in one statement (task_dispatch_near_many): each van, in arrival order, gets what it would get
# alone at its turn.

# Vans parked at stations 3 (Oakland) and 4 (Berkeley).
OAKLAND = Position(lat=STATIONS[3][0], lon=STATIONS[3][1])
BERKELEY = Position(lat=STATIONS[4][0], lon=STATIONS[4][1])


async def near_many(
    conn: queries.Conn, vans: list[tuple[str, Position]], **options: object
) -> dict[str, int]:
    """The task id each van of one batch got, by worker; a van that got nothing is not there."""
    workers = [worker for worker, _ in vans]
    got = await queries.task_dispatch_near_many(
        conn,
        workers,
        [60] * len(vans),
        [at for _, at in vans],
        NOON,
        **options,  # type: ignore[arg-type]
    )
    return {workers[i]: t.id for i, t in got.items()}


async def test_a_batch_gives_each_van_the_best_task_for_it(stations: asyncpg.Pool) -> None:
    urgent_in_oakland = await task(stations, 3, priority=5)
    in_berkeley = await task(stations, 4, age=timedelta(minutes=1))
    near_sf = await task(stations, 1)
    farther_sf = await task(stations, 2, age=timedelta(minutes=9))
    got = await near_many(
        stations, [("sf-1", VAN), ("berkeley", BERKELEY), ("sf-2", VAN), ("oakland", OAKLAND)]
    )
    # The first van takes the higher band, however far; then each van the nearest task left at its turn.
    assert got == {"sf-1": urgent_in_oakland, "berkeley": in_berkeley, "sf-2": near_sf, "oakland": farther_sf}
    rows = await stations.fetch("SELECT id, status, worker_id, assigned_at FROM tasks ORDER BY id")
    assert {r["id"]: (r["status"], r["worker_id"], r["assigned_at"]) for r in rows} == {
        task_id: ("assigned", worker, NOON) for worker, task_id in got.items()
    }


async def test_a_batch_gives_what_the_same_vans_get_one_after_another(stations: asyncpg.Pool) -> None:
    """Tasks in three bands, of many sizes, at every station; vans of several capacities and loads, one off
    shift, some with a reach: the batch's answers are those of the vans asking in turn."""
    for n in range(24):
        await task(stations, 1 + n % 4, priority=n % 3, qty=1 + n % 7, age=timedelta(minutes=n * 7 % 11))
    await queries.worker_put(stations, "small", "Small", 3, None, True)
    await queries.worker_put(stations, "off", "Off", 20, None, False)
    places = [VAN, OAKLAND, BERKELEY, Position(lat=37.80, lon=-122.30, load=1)]
    vans = [(("small", "off")[n % 2] if n < 4 else f"van-{n}", places[n % 4]) for n in range(16)]
    for options in ({}, {"one_van": False}, {"max_km": 5.0}):
        async with stations.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            one_by_one = {}
            for worker, at in vans:
                one_by_one.update(await near_many(conn, [(worker, at)], **options))
            await transaction.rollback()
        assert one_by_one, options
        assert await near_many(stations, vans, **options) == one_by_one, options
        await stations.execute(
            "UPDATE tasks SET status = 'ready', worker_id = NULL, lease_id = NULL, lease_expires_at = NULL"
        )


async def test_two_vans_of_a_batch_never_share_a_station(stations: asyncpg.Pool) -> None:
    first = await task(stations, 1, to_station=2, age=timedelta(minutes=3))
    second_at_1 = await task(stations, 1, age=timedelta(minutes=2))
    at_2 = await task(stations, 2, age=timedelta(minutes=1))
    in_oakland = await task(stations, 3)
    got = await near_many(stations, [("v1", VAN), ("v2", VAN), ("v3", VAN)])
    # v1's task holds stations 1 and 2: v2 goes to Oakland, and v3 gets nothing.
    assert got == {"v1": first, "v2": in_oakland}
    claims = await stations.fetch(
        "SELECT station_id, worker_id FROM station_claims WHERE task_id IS NOT NULL"
    )
    in_oakland_drop_off = await stations.fetchval("SELECT to_station_id FROM tasks WHERE id = $1", in_oakland)
    assert sorted(tuple(r) for r in claims) == [(1, "v1"), (2, "v1"), (3, "v2"), (in_oakland_drop_off, "v2")]
    ready = await stations.fetch("SELECT id FROM tasks WHERE status = 'ready' ORDER BY id")
    assert [r["id"] for r in ready] == sorted([second_at_1, at_2])


async def test_vans_of_a_batch_may_share_a_station_when_told(stations: asyncpg.Pool) -> None:
    first = await task(stations, 1, to_station=2, age=timedelta(minutes=3))
    second_at_1 = await task(stations, 1, age=timedelta(minutes=2))
    got = await near_many(stations, [("v1", VAN), ("v2", VAN)], one_van=False)
    assert got == {"v1": first, "v2": second_at_1}
    assert await stations.fetchval("SELECT count(*) FROM station_claims") == 0


async def test_a_batch_respects_each_vans_capacity(stations: asyncpg.Pool) -> None:
    big_near = await task(stations, 1, qty=10)
    small_far = await task(stations, 3, qty=4)
    await queries.worker_put(stations, "van-6", "Six", 6, None, True)
    # Room for 6, 2 on board: the nearer 10-bike move is left for the unregistered van behind it.
    loaded = Position(lat=VAN.lat, lon=VAN.lon, load=2)
    got = await near_many(stations, [("van-6", loaded), ("unregistered", VAN)])
    assert got == {"van-6": small_far, "unregistered": big_near}


async def test_an_off_shift_worker_in_a_batch_gets_nothing_while_the_others_do(
    stations: asyncpg.Pool,
) -> None:
    nearest = await task(stations, 1)
    next_nearest = await task(stations, 2)
    await queries.worker_put(stations, "off", "Off", 10, None, False)
    here = Position(lat=37.79, lon=-122.40, accuracy_m=8.0, load=1)
    got = await queries.task_dispatch_near_many(
        stations, ["on-1", "off", "on-2"], [60] * 3, [VAN, here, VAN], NOON, actors=["k1", "k2", "k3"]
    )
    assert {i: t.id for i, t in got.items()} == {0: nearest, 2: next_nearest}
    events = await stations.fetch(
        "SELECT task_id, worker_id, actor FROM task_events WHERE event = 'assigned'"
    )
    assert sorted(tuple(r) for r in events) == [(nearest, "on-1", "k1"), (next_nearest, "on-2", "k3")]
    # Its position is kept all the same, as every van's.
    row = await stations.fetchrow(
        "SELECT lat, lon, accuracy_m, load, position_at FROM workers WHERE worker_id = 'off'"
    )
    assert row is not None
    assert dict(row) == {"lat": 37.79, "lon": -122.4, "accuracy_m": 8.0, "load": 1, "position_at": NOON}
    assert await stations.fetchval("SELECT count(*) FROM workers WHERE position_at = $1", NOON) == 3


async def test_a_worker_twice_in_a_batch_keeps_its_last_position(stations: asyncpg.Pool) -> None:
    await task(stations, 1)
    await task(stations, 3)
    await near_many(stations, [("twice", VAN), ("twice", OAKLAND)], one_van=False)
    row = await stations.fetchrow("SELECT lat, lon FROM workers WHERE worker_id = 'twice'")
    assert row is not None
    assert (row["lat"], row["lon"]) == (OAKLAND.lat, OAKLAND.lon)
    assert await stations.fetchval("SELECT count(*) FROM tasks WHERE worker_id = 'twice'") == 2


async def test_a_van_asking_again_with_its_key_gets_the_task_it_holds(stations: asyncpg.Pool) -> None:
    first = await task(stations, 1)
    await task(stations, 2)
    got = await queries.task_dispatch_near(stations, "van-1", 60, "key-1", VAN, NOON)
    assert got is not None
    assert got.id == first
    again = await queries.task_dispatch_near(stations, "van-1", 60, "key-1", OAKLAND, NOON)
    assert again == got
    assert await stations.fetchval("SELECT count(*) FROM tasks WHERE status = 'assigned'") == 1
    # Its new position is kept all the same; another key is another request.
    assert await stations.fetchval("SELECT lat FROM workers WHERE worker_id = 'van-1'") == OAKLAND.lat
    other = await queries.task_dispatch_near(stations, "van-1", 60, "key-2", VAN, NOON)
    assert other is not None
    assert other.id != first
