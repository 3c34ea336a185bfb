"""The overview's queries (GET /stats, /metrics) on a year of history: 1,000,000 finished tasks and their
3,000,000 events, a little open work. Each reads an index (no sequential scan of tasks or task_events), and
the pages it touches stay a small fraction of the tables', so its cost follows the open work and the last day,
not the history. The plans and their times are printed (`pytest -s`); the time is not asserted (a shared
machine), the buffers are."""

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from baywheels import overview, sql

FINISHED = 1_000_000
# Per query: indexes it must read, and the most shared buffers (8 kB pages) it may touch. The tables hold
# about 40,000 (tasks) and 25,000 (task_events) pages: a scan of either would touch them all. The ready count
# may read tasks_ready_idx or tasks_available_idx (both hold the ready tasks only). The latency query reads
# the last day's completions (2,740 here) from the completion index: its cost follows the day's volume.
EXPECTED: dict[str, tuple[set[str], int]] = {
    "stats_counts": ({"tasks_lease_idx", "tasks_attention_idx"}, 400),
    "stats_hourly": ({"task_events_at_brin"}, 1500),
    "stats_latency": ({"tasks_completed_idx", "tasks_lease_idx"}, 1500),
    "stats_attention": ({"tasks_attention_idx"}, 100),
}


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


@pytest.fixture
async def year(pool: asyncpg.Pool) -> asyncpg.Pool:
    """A task every 31.5 s for a year, each approved, assigned a minute later and finished ten minutes after
    (1 in 100 failed, 1 in 100 canceled), the events appended in time order; then 100 ready, 50 assigned
    and 5 stalled tasks of the last hour. Statistics and the visibility map up to date, as autovacuum keeps
    them."""
    async with pool.acquire() as conn:
        # Triggers off while loading (the outcome feed is not what is measured here).
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            """
            INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, status, worker_id,
                               created_at, available_at, assigned_at, completed_at, attempts, last_error)
            SELECT g, g % 500 + 1, g % 500 + 501, 1, 'history',
                   CASE g % 100 WHEN 0 THEN 'failed' WHEN 1 THEN 'canceled' ELSE 'completed' END,
                   'van-' || g % 40,
                   t, t, t + interval '1 minute',
                   CASE WHEN g % 100 > 1 THEN t + interval '11 minutes' END,
                   1, CASE WHEN g % 100 = 0 THEN 'flat' END
            FROM generate_series(1, $1::integer) g,
                 LATERAL (SELECT now() - interval '365 days' * ($1 - g)::double precision / $1
                          - interval '15 minutes' AS t) c
            """,
            FINISHED,
        )
        await conn.execute(
            """
            INSERT INTO task_events (task_id, event, worker_id, at, actor)
            SELECT id, e.event, CASE WHEN e.event <> 'approved' THEN worker_id END, e.at, 'k1'
            FROM tasks,
                 LATERAL (VALUES ('approved', created_at),
                                 ('assigned', assigned_at),
                                 (status, assigned_at + interval '10 minutes')) e (event, at)
            ORDER BY e.at
            """
        )
        await conn.execute(
            """
            INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, status, worker_id,
                               created_at, available_at, assigned_at, lease_id, lease_seconds,
                               lease_expires_at, picked_up_at)
            SELECT $1 + g, 1000 + g, 2000 + g, 1, 'open',
                   CASE WHEN g <= 100 THEN 'ready' WHEN g <= 150 THEN 'assigned' ELSE 'stalled' END,
                   CASE WHEN g > 100 THEN 'van-' || g END,
                   now() - interval '30 minutes', now() - interval '30 minutes',
                   CASE WHEN g > 100 THEN now() - interval '20 minutes' END,
                   CASE WHEN g > 100 AND g <= 150 THEN gen_random_uuid() END,
                   CASE WHEN g > 100 AND g <= 150 THEN 1800 END,
                   CASE WHEN g > 100 AND g <= 150 THEN now() + interval '10 minutes' END,
                   CASE WHEN g > 150 THEN now() - interval '15 minutes' END
            FROM generate_series(1, 155) g
            """,
            FINISHED,
        )
        await conn.execute(
            "INSERT INTO task_events (task_id, event, worker_id, at, actor) "
            "SELECT id, 'approved', NULL, created_at, 'k1' FROM tasks WHERE id > $1 ORDER BY id",
            FINISHED,
        )
    await pool.execute("VACUUM ANALYZE tasks")
    await pool.execute("VACUUM ANALYZE task_events")
    return pool


async def test_the_overview_reads_indexes_on_a_year_of_history(year: asyncpg.Pool) -> None:
    assert await year.fetchval(
        "SELECT count(*) FROM tasks WHERE status IN ('completed', 'failed', 'canceled')"
    ) == (FINISHED)
    failures = []
    now = datetime.now(UTC)
    for name, (indexes, max_buffers) in EXPECTED.items():
        args: tuple[Any, ...] = (overview.ATTENTION_LIMIT,) if name == "stats_attention" else (None,)
        async with year.acquire() as conn:
            explained = await conn.fetchval(
                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql.text(name)}", *args
            )
        result = json.loads(explained)[0]
        plan = result["Plan"]
        used: set[str] = {node["Index Name"] for node in nodes(plan) if "Index Name" in node}
        scanned = {
            node["Relation Name"]
            for node in nodes(plan)
            if node["Node Type"] == "Seq Scan" and "Relation Name" in node
        }
        buffers = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
        print(f"\n{name}: {result['Execution Time']:.1f} ms, {buffers} buffers, indexes {sorted(used)}")
        print(json.dumps(plan, indent=1)[:3000])
        if not indexes <= used or scanned & {"tasks", "task_events"} or buffers > max_buffers:
            failures.append((name, sorted(used), sorted(scanned), buffers))
    assert failures == [], failures
    # And the figures are right: the last day's history (a task every 31.5 s) and the open work.
    started = time.perf_counter()
    stats = await overview.read(year, now)
    print(f"\noverview.read: {(time.perf_counter() - started) * 1000:.1f} ms")
    assert (stats.counts.ready, stats.counts.assigned, stats.counts.stalled) == (100, 50, 5)
    assert stats.counts.failed == FINISHED // 100
    assert 2600 < stats.last_24h.created < 2900
    assert stats.assigned_to_completed.day.p50 == pytest.approx(600)
    assert stats.ready_to_assigned.day.p90 == pytest.approx(60)
    assert [task.status for task in stats.attention[:6]] == ["stalled"] * 5 + ["failed"]
