"""Query plans on real statistics. Dispatch reads the head of tasks_ready_idx, so its cost does not grow with
the history of completed tasks; a call on one task finds it by id, even on statistics taken before a burst of
assignments; lease rescue reads the lease index. A regression here (a changed ORDER BY, a dropped index, a
partial index whose predicate a point lookup implies) shows up as a scan of a whole table or index."""

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from asyncpg.pool import PoolConnectionProxy

from baywheels import sql

COMPLETED = 20_000
READY = 5


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


async def insert_completed(pool: asyncpg.Pool) -> None:
    """Tasks 1..COMPLETED, done, each by its own worker."""
    await pool.execute(
        "INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, status, worker_id, "
        "    assigned_at, completed_at) "
        "SELECT g, g, g + 1000000, 1, 'done', 'completed', 'w' || g, now(), now() "
        "FROM generate_series(1, $1::integer) g",
        COMPLETED,
    )


@pytest.fixture
async def history(pool: asyncpg.Pool) -> asyncpg.Pool:
    """Many completed tasks, each by its own worker, and a few ready ones; statistics up to date."""
    await insert_completed(pool)
    await pool.execute(
        "INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, priority) "
        "SELECT g, g, g + 1000000, 1, 'todo', g % 3 "
        "FROM generate_series($1::integer + 1, $1 + $2::integer) g",
        COMPLETED,
        READY,
    )
    await pool.execute("ANALYZE tasks")
    return pool


# The clock the service passes (None: the database's) and one a test passes.
CLOCKS = [None, datetime(2030, 1, 1, tzinfo=UTC)]


# The parameters before the clock, and after it (the actor, one van per station).
@pytest.mark.parametrize(
    ("query", "args", "after"),
    [
        ("task_dispatch", ("new-worker", 60, None), ("k1", True)),
        ("task_dispatch", ("new-worker", 60, "idempotency-key"), ("k1", True)),
        ("task_dispatch", ("new-worker", 60, None), ("k1", False)),
        ("task_dispatch_many", (["a", "b", "c"], [60, 60, 60]), (["k1", "k2", "k3"], True)),
        ("task_dispatch_many", (["a", "b", "c"], [60, 60, 60]), (["k1", "k2", "k3"], False)),
    ],
    ids=[
        "single",
        "with idempotency key",
        "single, vans may share",
        "coalesced",
        "coalesced, vans may share",
    ],
)
@pytest.mark.parametrize("clock", CLOCKS, ids=["database clock", "clock passed in"])
@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_dispatch_uses_the_ready_index(
    history: asyncpg.Pool,
    query: str,
    args: tuple[Any, ...],
    after: tuple[Any, ...],
    clock: datetime | None,
    plan_cache_mode: str,
) -> None:
    async with history.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL plan_cache_mode = {plan_cache_mode}")
        explained = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql.text(query)}", *args, clock, *after)
    plan = json.loads(explained)[0]["Plan"]
    scans = [
        node for node in nodes(plan) if node.get("Relation Name") == "tasks" and "Scan" in node["Node Type"]
    ]
    assert any(node.get("Index Name") == "tasks_ready_idx" for node in scans), json.dumps(plan, indent=1)
    assert not [node for node in scans if node["Node Type"] == "Seq Scan"], json.dumps(plan, indent=1)


async def test_dispatch_takes_the_best_ready_task_among_the_history(history: asyncpg.Pool) -> None:
    """The plan is not only cheap but right: of thousands of tasks, the highest-priority ready one."""
    row = await history.fetchrow(sql.text("task_dispatch"), "new-worker", 60, None, None, "k1", True)
    assert row is not None
    assert (row["status"], row["priority"], row["worker_id"]) == ("assigned", 2, "new-worker")
    # Ids follow g: the first ready task with g % 3 == 2.
    assert row["id"] == next(g for g in range(COMPLETED + 1, COMPLETED + READY + 1) if g % 3 == 2)


ASSIGNED = 20_000
LEASE = uuid.uuid4()


@pytest.fixture
async def morning_burst(pool: asyncpg.Pool) -> asyncpg.Pool:
    """Statistics taken on a quiet night (history only, no open task), then a burst of assignments that
    autoanalyze has not caught up with: the planner believes the partial indexes on open tasks are empty."""
    await pool.execute("ALTER TABLE tasks SET (autovacuum_enabled = off)")
    await insert_completed(pool)
    await pool.execute("ANALYZE tasks")
    await pool.execute(
        "INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, status, worker_id, "
        "    assigned_at, lease_id, lease_seconds, lease_expires_at) "
        "SELECT g, g, g + 1000000, 1, 'todo', 'assigned', 'w' || g, now(), $3, 60, now() + interval '1 min' "
        "FROM generate_series($1::integer + 1, $1 + $2::integer) g",
        COMPLETED,
        ASSIGNED,
        LEASE,
    )
    return pool


HELD = COMPLETED + ASSIGNED // 2


@pytest.mark.parametrize(
    ("query", "args"),
    [
        ("task_complete", (HELD, f"w{HELD}", LEASE, None, "k1")),
        ("task_complete", (HELD, None, None, None, "k1")),
        ("task_heartbeat", (HELD, f"w{HELD}", LEASE, None, None)),
        ("task_pickup", (HELD, f"w{HELD}", None, None, "k1")),
        ("task_fail", (HELD, f"w{HELD}", LEASE, "jammed", 30, 5, None, "k1")),
        ("task_release", (HELD, f"w{HELD}", None, None, None, "k1")),
        ("task_cancel", (HELD, None, None, "k1")),
        ("task_retry", (HELD, None, None, "k1")),
    ],
    ids=["complete", "complete without body", "heartbeat", "pickup", "fail", "release", "cancel", "retry"],
)
@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_calls_on_one_task_find_it_by_id_on_stale_statistics(
    morning_burst: asyncpg.Pool, query: str, args: tuple[Any, ...], plan_cache_mode: str
) -> None:
    async with morning_burst.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL plan_cache_mode = {plan_cache_mode}")
        explained = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql.text(query)}", *args)
    plan = json.loads(explained)[0]["Plan"]
    scans = [
        node for node in nodes(plan) if node.get("Relation Name") == "tasks" and "Scan" in node["Node Type"]
    ]
    assert scans, json.dumps(plan, indent=1)
    for node in scans:
        # The id is a condition of the index search, not a filter applied to every entry of the index.
        assert "id = " in node.get("Index Cond", ""), json.dumps(plan, indent=1)


@pytest.mark.parametrize("grace", [False, True], ids=["plain", "during-grace"])
async def test_lease_rescue_reads_the_lease_index(morning_burst: asyncpg.Pool, grace: bool) -> None:
    await morning_burst.execute("ANALYZE tasks")
    now = datetime.now(UTC)
    spared = (now - timedelta(minutes=5), now) if grace else (None, None)
    explained = await morning_burst.fetchval(
        f"EXPLAIN (FORMAT JSON) {sql.text('task_rescue_expired')}", 5, 100, None, *spared
    )
    plan = json.loads(explained)[0]["Plan"]
    names = {node.get("Index Name") for node in nodes(plan) if node.get("Relation Name") == "tasks"}
    assert "tasks_lease_idx" in names, json.dumps(plan, indent=1)


STATIONS = 500
SPREAD = 100_000


def shown_sort(node: dict[str, Any]) -> str:
    """What a sort node sorts: its input's node types."""
    return " ".join(child["Node Type"] for child in nodes(node))


@pytest.fixture
async def bay_area(pool: asyncpg.Pool) -> asyncpg.Pool:
    """100,000 ready tasks (priorities 0..2, some aged) over 500 stations in the Bay Area's bounding box, a
    few stations held by vans; statistics up to date."""
    await pool.execute("SELECT setseed(0.13)")
    await pool.execute(
        "INSERT INTO stations (id, gbfs_station_id, name, lat, lon) "
        "SELECT g, 'gbfs-' || g, 'station ' || g, 37.2 + random() * 0.7, -122.55 + random() * 0.85 "
        "FROM generate_series(1, $1::integer) g",
        STATIONS,
    )
    await pool.execute(
        "INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, priority, aging, "
        "    created_at) "
        "SELECT g, 1 + g % $2, 1 + (g % $2 + 1 + g % ($2 - 2)) % $2, 1 + g % 8, 'todo', g % 3, g % 7 / 5, "
        "       now() - make_interval(secs => $1 - g) "
        "FROM generate_series(1, $1::integer) g",
        SPREAD,
        STATIONS,
    )
    await pool.execute(
        "INSERT INTO station_claims (station_id, task_id, worker_id) SELECT g, g, 'w' || g "
        "FROM generate_series(1, 20) g"
    )
    await pool.execute("ANALYZE")
    return pool


async def nested_plans(
    conn: asyncpg.Connection | PoolConnectionProxy, query: str, *args: Any
) -> list[dict[str, Any]]:
    """The plans, as EXPLAIN ANALYZE gives them, of the statements that ran inside ``query`` (a function's),
    which EXPLAIN itself shows as one Function Scan: auto_explain sends each to this client as a notice.
    Within the caller's transaction; the settings end with it."""
    notices: list[str] = []

    def heard(_: object, message: asyncpg.PostgresLogMessage) -> None:
        notices.append(message.message)

    conn.add_log_listener(heard)
    try:
        await conn.execute("LOAD 'auto_explain'")
        for setting, value in [
            ("log_min_duration", "0"),
            ("log_nested_statements", "on"),
            ("log_analyze", "on"),
            ("log_format", "json"),
            ("log_level", "notice"),
        ]:
            await conn.execute(f"SET LOCAL auto_explain.{setting} = {value}")
        await conn.fetch(query, *args)
        await conn.execute("SET LOCAL auto_explain.log_min_duration = -1")
    finally:
        conn.remove_log_listener(heard)
    return [json.loads(n[n.index("{") :]) for n in notices if "plan:" in n]


@pytest.mark.parametrize("max_km", [None, 5.0], ids=["no reach", "within 5 km"])
async def test_dispatch_near_reads_a_band_and_a_box_not_every_ready_task(
    bay_area: asyncpg.Pool, max_km: float | None
) -> None:
    """The van's task comes from the band's descent of tasks_ready_idx, stations nearest first from
    stations_point_idx (bounded by the box of the reach when there is one) and, per station, the band's
    head in tasks_ready_station_idx: no sort, no scan of the ready tasks. The plan that ran (the van's
    statement inside task_dispatch_near_many, by auto_explain), rolled back: the generic plan, which the
    function sets for itself whatever the session's plan_cache_mode."""
    args = ("van", 60, None, None, "k1", 37.7840, -122.4075, 10.0, 2, max_km, True)
    await bay_area.execute(
        "INSERT INTO workers (worker_id, capacity, registered_at) VALUES ('van', 8, now())"
    )
    async with bay_area.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        (plan,) = [
            p
            for p in await nested_plans(conn, sql.text("task_dispatch_near"), *args)
            if "bands" in p["Query Text"]
        ]
        taken = await conn.fetchval("SELECT count(*) FROM tasks WHERE status = 'assigned'")
        await transaction.rollback()
    plan = plan["Plan"]
    shown = json.dumps(plan, indent=1)
    every = list(nodes(plan))
    # No sort at all (the claims' two rows are put in station order: a Values Scan's), no scan of the tasks
    # but through an index; of stations, only the check that the registry is not empty reads a row.
    assert not [node for node in every if "Sort" in node["Node Type"] and "Values" not in shown_sort(node)], (
        shown
    )
    assert not [
        node for node in every if node.get("Relation Name") == "tasks" and node["Node Type"] == "Seq Scan"
    ]
    assert all(
        node["Actual Rows"] <= 1
        for node in every
        if node.get("Relation Name") == "stations" and node["Node Type"] == "Seq Scan"
    ), shown
    by_index = {
        node.get("Index Name"): node for node in every if node.get("Relation Name") in ("tasks", "stations")
    }
    earth = by_index["stations_point_idx"]
    assert "<->" in earth["Order By"], shown
    if max_km is not None:
        assert "<@" in earth["Index Cond"], shown
    probe = by_index["tasks_ready_station_idx"]
    assert "from_station_id" in probe["Index Cond"], shown
    assert "aging" in probe["Index Cond"], shown
    assert "tasks_ready_idx" in by_index, shown
    # Bounded: a handful of stations probed, not hundreds; one task taken.
    assert earth["Actual Rows"] * earth["Actual Loops"] < 50, shown
    assert taken == 1


@pytest.mark.parametrize(
    "after", [None, datetime(2000, 1, 1, tzinfo=UTC)], ids=["sweep begins", "sweep goes on"]
)
@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_the_cleaner_reads_the_head_of_the_finished_index(
    pool: asyncpg.Pool, plan_cache_mode: str, after: datetime | None
) -> None:
    """Retention deletes a batch found at the head of tasks_finished_idx, and their events by task: never a
    scan of all history, which would make each batch cost as much as the history is long."""
    await insert_completed(pool)
    await pool.execute("UPDATE tasks SET finished_at = completed_at - interval '30 days'")
    await pool.execute(
        "INSERT INTO task_events (task_id, event, at) SELECT id, e, completed_at FROM tasks, "
        "unnest(ARRAY['approved', 'assigned', 'completed']) e"
    )
    await pool.execute("ANALYZE tasks, task_events")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL plan_cache_mode = {plan_cache_mode}")
        explained = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) {sql.text('task_delete_finished')}", timedelta(days=7), 1000, None, after
        )
    plan = json.loads(explained)[0]["Plan"]
    indexes = {node["Index Name"] for node in nodes(plan) if "Index Name" in node}
    assert {"tasks_finished_idx", "task_events_task_idx"} <= indexes, json.dumps(plan, indent=1)
    assert not [node for node in nodes(plan) if node["Node Type"] == "Seq Scan"], json.dumps(plan, indent=1)
