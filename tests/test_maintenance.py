"""The maintenance loop's jobs: the clock they are given (so tests set the time instead of moving rows), the
grace after an outage for leases that ran out while the database was unreachable (a query-level window, its
length capped by LEASE_GRACE_MAX_SECONDS, and a real outage behind a TCP proxy, after which a holder's retried
complete lands), and the leader's jobs running on their own intervals."""

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from baywheels import queries, settings
from baywheels.maintenance import Job, LeaseRescue, Maintenance, Outage, default_jobs
from baywheels.models import Task
from helpers import json_of, make_task, serving, until
from proxy import Proxy

MAX_ATTEMPTS = 5


async def assigned(pool: asyncpg.Pool, n: int, lease_seconds: int = 60) -> list[Task]:
    """n tasks dispatched to workers w0.. with the given lease."""
    await pool.execute(
        "INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason) "
        "SELECT g, g, g + 1000, 1, 'test' FROM generate_series(1, $1::integer) g",
        n,
    )
    tasks = []
    for i in range(n):
        task = await queries.task_dispatch(pool, f"w{i}", lease_seconds, None)
        assert task is not None
        tasks.append(task)
    return tasks


def expiry(task: Task) -> datetime:
    assert task.lease_expires_at is not None
    return task.lease_expires_at


async def test_rescue_runs_on_the_clock_it_is_given(pool: asyncpg.Pool) -> None:
    early, late = await assigned(pool, 2, lease_seconds=60)
    extended = await queries.task_heartbeat(pool, late.id, late.worker_id or "", None, 600)
    assert extended is not None
    assert extended.changed
    late = extended.task
    assert await queries.task_rescue_expired(pool, MAX_ATTEMPTS, 1000) == []

    # Two minutes on: the 60 s lease has run out, the 600 s one has not; the task is ready from that time.
    later = expiry(early) + timedelta(minutes=1)
    rescued = await queries.task_rescue_expired(pool, MAX_ATTEMPTS, 1000, now=later)
    assert [(t.id, t.status, t.available_at) for t in rescued] == [(early.id, "ready", later)]
    again = await queries.task_rescue_expired(pool, MAX_ATTEMPTS, 1000, now=expiry(late))
    assert [t.id for t in again] == [late.id]


async def test_rescue_spares_leases_that_ran_out_in_the_window(pool: asyncpg.Pool) -> None:
    tasks = await assigned(pool, 3, lease_seconds=60)
    # Leases running out 10 s apart: before, inside and after the outage's window.
    for i, task in enumerate(tasks):
        await pool.execute(
            "UPDATE tasks SET lease_expires_at = $2 WHERE id = $1",
            task.id,
            expiry(tasks[0]) + timedelta(seconds=10 * i),
        )
    before, inside, after = tasks
    base = expiry(tasks[0])
    window = (base + timedelta(seconds=5), base + timedelta(seconds=15))
    everything_over = base + timedelta(minutes=1)

    rescued = await queries.task_rescue_expired(pool, MAX_ATTEMPTS, 1000, now=everything_over, spared=window)
    assert sorted(t.id for t in rescued) == sorted([before.id, after.id])
    # The grace over, the loop passes no window: the spared lease is rescued too.
    rescued = await queries.task_rescue_expired(pool, MAX_ATTEMPTS, 1000, now=everything_over)
    assert [t.id for t in rescued] == [inside.id]


async def test_due_announcements_run_on_the_clock_they_are_given(pool: asyncpg.Pool) -> None:
    given = datetime(2030, 1, 1, tzinfo=UTC)
    assert await queries.task_notify_due(pool, given - timedelta(seconds=1), now=given) == given
    database_clock = await queries.task_notify_due(pool, given)
    assert database_clock < given


async def test_the_grace_lasts_as_long_as_the_outage_capped(
    service_settings: settings.Settings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("baywheels.maintenance.time.monotonic", lambda: clock[0])
    capped = msgspec.structs.replace(service_settings, lease_grace_max_seconds=60)
    began = datetime(2030, 1, 1, tzinfo=UTC)
    short, long = LeaseRescue(capped), LeaseRescue(capped)
    short.resumed(Outage(began, began + timedelta(seconds=5)))
    long.resumed(Outage(began, began + timedelta(hours=1)))
    assert (short._spared, short._spared_until) == ((began, began + timedelta(seconds=5)), 1005.0)
    assert (long._spared, long._spared_until) == ((began, began + timedelta(hours=1)), 1060.0)

    clock[0] = 1005.0
    async with pool.acquire() as conn:
        await short.run(conn)
        await long.run(conn)
    assert (short._spared, long._spared is not None) == (None, True)

    none = LeaseRescue(msgspec.structs.replace(service_settings, lease_grace_max_seconds=0))
    none.resumed(Outage(began, began + timedelta(seconds=5)))
    assert none._spared is None


async def test_a_lease_that_ran_out_during_an_outage_can_still_be_completed_after_it(
    service_settings: settings.Settings, database_url: str, pool: asyncpg.Pool
) -> None:
    """A worker's complete got 503 through an outage longer than its lease. After the database returns, the
    maintenance loop rescues a lease that runs out then, but spares this one for as long as the outage
    lasted, so the worker's retried complete lands (it got 409 before: the task was handed out again)."""
    fast = msgspec.structs.replace(service_settings, reaper_interval_seconds=0.05, lease_grace_max_seconds=60)
    proxy = Proxy(database_url)
    await proxy.start()
    try:
        async with serving(fast, proxy.url()) as (client, _):
            first = await make_task(client, 1, 2)
            second = await make_task(client, 3, 4)
            held = json_of(
                await client.post("/dispatch/next", json={"worker_id": "van-1", "lease_seconds": 1}), 200
            )
            assert held["id"] == first["id"]

            await proxy.stop()

            async def lease_long_gone() -> bool:
                # Read on the database directly, not through the proxy: an outage 2 s longer than the lease.
                return bool(
                    await pool.fetchval(
                        "SELECT lease_expires_at < now() - interval '2 seconds' FROM tasks WHERE id = $1",
                        held["id"],
                    )
                )

            await until(lease_long_gone)
            complete = {"worker_id": "van-1", "lease_id": held["lease_id"]}
            response = await client.post(f"/task/{held['id']}/complete", json=complete)
            assert (response.status_code, response.headers.get("retry-after")) == (503, "2")
            await proxy.start()

            # A lease that runs out after the outage gets no grace: its rescue shows the loop is back at work.
            other = json_of(
                await client.post("/dispatch/next", json={"worker_id": "van-2", "lease_seconds": 1}), 200
            )
            assert other["id"] == second["id"]

            async def other_rescued() -> bool:
                status = await pool.fetchval("SELECT status FROM tasks WHERE id = $1", other["id"])
                return bool(status == "ready")

            await until(other_rescued)
            response = await client.post(f"/task/{held['id']}/complete", json=complete)
            assert json_of(response, 200)["status"] == "completed"
    finally:
        await proxy.stop()


class Counting(Job):
    def __init__(self, name: str, interval: float, leftover: int = 0, enough: int = 0) -> None:
        self.name, self.interval, self.leftover, self.enough = name, interval, leftover, enough
        self.runs = 0
        self.started, self.done = asyncio.Event(), asyncio.Event()

    async def run(self, conn: queries.Conn) -> bool:
        self.runs += 1
        self.started.set()
        if self.runs >= self.enough:
            self.done.set()
        self.leftover -= 1
        return self.leftover >= 0


async def test_one_leader_runs_each_job_on_its_own_interval(service_settings: settings.Settings) -> None:
    fast = msgspec.structs.replace(service_settings, reaper_interval_seconds=0.01)
    often, hourly = Counting("often", 0.01, enough=20), Counting("hourly", 3600)
    backlog = Counting("backlog", 3600, leftover=3)
    follower_job = Counting("follower", 0.01)
    running = [asyncio.create_task(Maintenance(fast, [often, hourly, backlog]).run())]
    try:
        async with asyncio.timeout(15):
            await often.started.wait()
            running.append(asyncio.create_task(Maintenance(fast, [follower_job]).run()))
            await often.done.wait()
        # The hourly job ran once; the backlog ran again at once until done; the follower ran nothing.
        assert (hourly.runs, backlog.runs, follower_job.runs) == (1, 4, 0)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def test_priority_aging_runs_as_a_job_unless_turned_off(pool: asyncpg.Pool) -> None:
    """PRIORITY_AGING_MINUTES=0 (or a maximum of 0) leaves the job out; otherwise one pass raises a task that
    has waited (here: approved two hours ago, 30 minutes a step)."""
    names = [job.name for job in default_jobs(settings.load({}))]
    assert "priority_aging" in names
    assert "priority_aging" not in [
        j.name for j in default_jobs(settings.load({"PRIORITY_AGING_MINUTES": "0"}))
    ]
    assert "priority_aging" not in [j.name for j in default_jobs(settings.load({"PRIORITY_AGING_MAX": "0"}))]
    await pool.execute(
        "INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, created_at) "
        "VALUES (1, 1, 2, 1, 'old', now() - interval '2 hours'), (2, 3, 4, 1, 'new', now())"
    )
    [job] = [job for job in default_jobs(settings.load({})) if job.name == "priority_aging"]
    assert await job.run(pool) is False  # nothing left over
    rows = await pool.fetch("SELECT reason, aging FROM tasks ORDER BY id")
    assert [(r["reason"], r["aging"]) for r in rows] == [("old", 4), ("new", 0)]
