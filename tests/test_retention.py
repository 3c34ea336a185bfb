"""Retention (RETENTION_DAYS): finished tasks and their events are deleted once they are old enough, on the
clock the queries are given; young finished tasks and open ones, however old, are never touched; and the
running service's maintenance loop does it."""

from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest
from prometheus_client import REGISTRY

from baywheels import queries, settings
from baywheels.maintenance import Retention, default_jobs
from baywheels.models import Task
from baywheels.queries import Deleted
from helpers import complete, dispatch, json_of, make_tasks, serving, until

T0 = datetime(2030, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
KEEP = timedelta(days=7)


async def approved(pool: asyncpg.Pool, pair: int, at: datetime = T0) -> Task:
    suggestion_id = await pool.fetchval(
        "INSERT INTO suggestions (from_station_id, to_station_id, qty, reason) "
        "VALUES ($1, $1 + 1000, 1, 'test') RETURNING id",
        pair,
    )
    (task,) = await queries.task_approve_many(pool, [suggestion_id], now=at)
    return task


async def dispatched(pool: asyncpg.Pool, pair: int, at: datetime = T0) -> Task:
    """A task approved and dispatched to worker w<pair> at ``at``; no other task is ready at that moment."""
    made = await approved(pool, pair, at)
    task = await queries.task_dispatch(pool, f"w{pair}", 60, None, now=at)
    assert task is not None
    assert task.id == made.id
    return task


async def fail(pool: asyncpg.Pool, task: Task, at: datetime) -> None:
    assert task.worker_id is not None
    failed = await queries.task_fail(pool, task.id, task.worker_id, task.lease_id, "jammed", 0, 1, now=at)
    assert failed is not None
    assert failed.task.status == "failed"


async def history(pool: asyncpg.Pool) -> tuple[dict[int, str], dict[int, int]]:
    """Every task's status, and every task's number of events."""
    statuses = {r["id"]: r["status"] for r in await pool.fetch("SELECT id, status FROM tasks")}
    counted = await pool.fetch("SELECT task_id, count(*) AS n FROM task_events GROUP BY 1")
    events = {r["task_id"]: r["n"] for r in counted}
    return statuses, events


async def test_finished_tasks_older_than_the_retention_go_with_their_events(pool: asyncpg.Pool) -> None:
    # Old and finished each way a task can finish: completed, failed by its holder, failed by lease rescue at
    # max attempts, canceled.
    completed = await dispatched(pool, 1)
    assert await queries.task_complete(pool, completed.id, "w1", None, now=T0 + HOUR)
    failed = await dispatched(pool, 2)
    await fail(pool, failed, T0 + HOUR)
    dead = await dispatched(pool, 3)
    assert [t.status for t in await queries.task_rescue_expired(pool, 1, 10, now=T0 + HOUR)] == ["failed"]
    # Old and open: stalled (picked up, lease ran out), failed then retried, ready.
    stalled = await dispatched(pool, 4)
    assert await queries.task_pickup(pool, stalled.id, "w4", None, now=T0)
    assert [t.status for t in await queries.task_rescue_expired(pool, 5, 10, now=T0 + HOUR)] == ["stalled"]
    young = await dispatched(pool, 5, at=T0 + timedelta(days=9))
    assert await queries.task_complete(pool, young.id, "w5", None, now=T0 + timedelta(days=9))
    retried = await dispatched(pool, 6)
    await fail(pool, retried, T0 + HOUR)
    assert await queries.task_retry(pool, retried.id, "again", now=T0 + 2 * HOUR)
    canceled = await approved(pool, 7)
    assert await queries.task_cancel(pool, canceled.id, "closed", now=T0 + HOUR)
    ready = await approved(pool, 8)
    statuses, events = await history(pool)
    assert statuses[dead.id] == "failed"

    # Exactly at the retention's end nothing is old enough yet (strictly older is deleted).
    assert await queries.task_delete_finished(pool, KEEP, 1000, now=T0 + HOUR + KEEP) == Deleted(0, 0, None)

    now = T0 + timedelta(days=10)
    gone = [completed.id, failed.id, dead.id, canceled.id]
    kept = [stalled.id, young.id, retried.id, ready.id]
    expected_events = sum(events[i] for i in gone)
    deleted = await queries.task_delete_finished(pool, KEEP, 1000, now=now)
    assert (deleted.tasks, deleted.events) == (4, expected_events)
    after, after_events = await history(pool)
    assert after == {i: statuses[i] for i in kept}
    assert after_events == {i: events[i] for i in kept}
    assert await queries.task_delete_finished(pool, KEEP, 1000, now=now) == Deleted(0, 0, None)


async def test_a_batch_starts_where_the_last_one_ended(pool: asyncpg.Pool) -> None:
    """Within a sweep each batch passes on the last finished_at it deleted; the next starts there (rows
    before it, e.g. one skipped while an operator held it, wait for the next sweep, which starts at None)."""
    tasks = [await approved(pool, pair) for pair in range(1, 4)]
    for i, task in enumerate(tasks):
        assert await queries.task_cancel(pool, task.id, None, now=T0 + i * HOUR)
    now = T0 + timedelta(days=10)
    first = await queries.task_delete_finished(pool, KEEP, 1, now=now, after=T0 + HOUR)
    assert (first.tasks, first.last) == (1, T0 + HOUR)
    assert await pool.fetchval("SELECT array_agg(id ORDER BY id) FROM tasks") == [tasks[0].id, tasks[2].id]
    new_sweep = await queries.task_delete_finished(pool, KEEP, 1000, now=now)
    assert (new_sweep.tasks, new_sweep.last) == (2, T0 + 2 * HOUR)


async def test_the_cleaner_deletes_a_batch_per_pass_until_none_is_left(
    service_settings: settings.Settings, pool: asyncpg.Pool
) -> None:
    for pair in range(1, 6):
        task = await approved(pool, pair)
        assert await queries.task_cancel(pool, task.id, None, now=T0)
    open_task = await approved(pool, 99)
    kept = msgspec.structs.replace(service_settings, retention_days=7)
    job = Retention(kept, now=lambda: T0 + timedelta(days=8))
    job.batch = 2

    def deleted(table: str) -> float:
        return REGISTRY.get_sample_value("baywheels_retention_deleted_total", {"table": table}) or 0.0

    before = deleted("tasks"), deleted("task_events")
    async with pool.acquire() as conn:
        # Full batches ask to run again at once; the short one ends the sweep.
        assert [await job.run(conn) for _ in range(3)] == [True, True, False]
    assert job._after is None  # the next sweep starts from the oldest again
    assert await pool.fetchval("SELECT array_agg(id) FROM tasks") == [open_task.id]
    # Each canceled task had two events (approved, canceled).
    assert (deleted("tasks") - before[0], deleted("task_events") - before[1]) == (5, 10)


def test_the_cleaner_runs_only_with_a_retention(service_settings: settings.Settings) -> None:
    assert "retention" not in [job.name for job in default_jobs(service_settings)]
    kept = msgspec.structs.replace(service_settings, retention_days=30)
    assert "retention" in [job.name for job in default_jobs(kept)]


async def test_the_service_forgets_finished_tasks_after_the_retention(
    service_settings: settings.Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The maintenance loop's leader runs the cleaner: a completed task and its events are gone (404) once
    RETENTION_DAYS have passed since it finished (here about a second), an open one stays."""
    monkeypatch.setattr(Retention, "interval", 0.05)
    brief = msgspec.structs.replace(service_settings, retention_days=1 / 86400, reaper_interval_seconds=0.05)
    async with serving(brief, database_url) as (client, _):
        done, still_open = await make_tasks(client, 2)
        held = await dispatch(client, "van-1")
        assert held["id"] == done["id"]
        assert (await complete(client, done["id"], "van-1")).status_code == 200

        async def forgotten() -> bool:
            return (await client.get(f"/task/{done['id']}")).status_code == 404

        await until(forgotten)
        assert (await client.get(f"/task/{done['id']}/events")).status_code == 404
        assert json_of(await client.get(f"/task/{still_open['id']}"), 200)["status"] == "ready"
