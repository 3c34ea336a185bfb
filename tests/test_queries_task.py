"""Task lifecycle at the query level, against real PostgreSQL: rescue of expired leases, heartbeats, backoff
arithmetic, refused changes answered in one statement, the schema's state constraints, and racing transitions
over separate connections.

Time is controlled, never waited for: the state changes take the clock (``now=``), so a test says when a
call happens; lease rescue reads the database's clock, so a lease "runs out" when the test moves
lease_expires_at into the past."""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from uuid import UUID

import asyncpg
import pytest
from asyncpg.pool import PoolConnectionProxy

from baywheels import queries
from baywheels.models import Task
from helpers import expire_leases, until

MAX_ATTEMPTS = 5


async def make_tasks(pool: asyncpg.Pool, n: int) -> list[Task]:
    """n ready tasks, approved from n suggestions for distinct station pairs."""
    ids = await pool.fetch(
        "INSERT INTO suggestions (from_station_id, to_station_id, qty, reason) "
        "SELECT 2 * i + 1, 2 * i + 2, 3, 'test' FROM generate_series(1, $1) AS i RETURNING id",
        n,
    )
    return await queries.task_approve_many(pool, [row["id"] for row in ids])


async def events(pool: asyncpg.Pool, task_id: int) -> list[tuple[str, str | None, str | None]]:
    return [(e.event, e.worker_id, e.detail) for e in await queries.task_event_list(pool, task_id)]


async def dispatch(
    pool: asyncpg.Pool, worker_id: str, lease_seconds: int = 60, now: datetime | None = None
) -> Task:
    task = await queries.task_dispatch(pool, worker_id, lease_seconds, None, now)
    assert task is not None
    return task


def changed(result: queries.TaskChange | None) -> Task:
    """The task a state change changed."""
    assert result is not None
    assert result.changed, result.task
    return result.task


def refused(result: queries.TaskChange | None) -> Task:
    """The task as it is, returned by a state change that did not apply."""
    assert result is not None
    assert not result.changed, result.task
    return result.task


async def test_expired_lease_goes_back_to_ready_for_another_worker(pool: asyncpg.Pool) -> None:
    (task,) = await make_tasks(pool, 1)
    first = await dispatch(pool, "w1")
    assert first.lease_id is not None

    await expire_leases(pool, task.id)
    rescued = await queries.task_rescue_expired(pool, MAX_ATTEMPTS, 1000)

    assert [(t.id, t.status, t.attempts, t.worker_id, t.lease_id) for t in rescued] == [
        (task.id, "ready", 1, None, None)
    ]
    second = await dispatch(pool, "w2")
    assert (second.id, second.worker_id, second.attempts) == (task.id, "w2", 1)
    assert second.lease_id not in (None, first.lease_id)
    # The first worker's late completion changes nothing: its lease is gone, and the task says who holds it.
    late = refused(await queries.task_complete(pool, task.id, "w1", first.lease_id))
    assert (late.status, late.worker_id, late.lease_id) == ("assigned", "w2", second.lease_id)
    assert refused(await queries.task_complete(pool, task.id, "w1", None)) == late
    done = changed(await queries.task_complete(pool, task.id, "w2", second.lease_id))
    assert done.status == "completed"
    assert await events(pool, task.id) == [
        ("approved", None, None),
        ("assigned", "w1", None),
        ("lease_expired", "w1", "ready"),
        ("assigned", "w2", None),
        ("completed", "w2", None),
    ]
    assert await pool.fetchval("SELECT count(*) FROM tasks") == 1


async def test_rescue_leaves_unexpired_leases_alone(pool: asyncpg.Pool) -> None:
    await make_tasks(pool, 2)
    held = await dispatch(pool, "w1")
    expiring = await dispatch(pool, "w2")
    await expire_leases(pool, expiring.id)

    rescued = await queries.task_rescue_expired(pool, MAX_ATTEMPTS, 1000)

    assert [t.id for t in rescued] == [expiring.id]
    still = await queries.task_get(pool, held.id)
    assert still is not None
    assert (still.status, still.worker_id, still.attempts) == ("assigned", "w1", 0)
    assert await queries.task_rescue_expired(pool, MAX_ATTEMPTS, 1000) == []


async def test_heartbeat_moves_the_lease_forward_and_keeps_the_task(pool: asyncpg.Pool) -> None:
    (task,) = await make_tasks(pool, 1)
    held = await dispatch(pool, "w1", lease_seconds=600)
    expires = held.lease_expires_at
    for _ in range(3):
        assert expires is not None
        # The heartbeat arrives a second before the lease runs out...
        at = expires - timedelta(seconds=1)
        beat = changed(await queries.task_heartbeat(pool, task.id, "w1", held.lease_id, None, now=at))
        # ...and pushes it a whole lease length (the dispatched 600 s) ahead.
        assert beat.lease_expires_at == at + timedelta(seconds=600)
        expires = beat.lease_expires_at
        assert await queries.task_rescue_expired(pool, MAX_ATTEMPTS, 1000) == []

    current = await queries.task_get(pool, task.id)
    assert current is not None
    assert (current.status, current.worker_id, current.lease_id, current.attempts) == (
        "assigned",
        "w1",
        held.lease_id,
        0,
    )
    # A heartbeat may also ask for a new length.
    assert expires is not None
    beat = changed(await queries.task_heartbeat(pool, task.id, "w1", held.lease_id, 30, now=expires))
    assert beat.lease_expires_at == expires + timedelta(seconds=30)


async def test_heartbeat_from_a_non_holder_or_stale_lease_changes_nothing(pool: asyncpg.Pool) -> None:
    (task,) = await make_tasks(pool, 1)
    held = await dispatch(pool, "w1")
    before = await pool.fetchval("SELECT lease_expires_at FROM tasks WHERE id = $1", task.id)

    assert refused(await queries.task_heartbeat(pool, task.id, "w2", None, None)).lease_expires_at == before
    assert refused(await queries.task_heartbeat(pool, task.id, "w1", UUID(int=1), None)).worker_id == "w1"

    assert await pool.fetchval("SELECT lease_expires_at FROM tasks WHERE id = $1", task.id) == before
    assert held.lease_id is not None


async def test_expired_lease_at_max_attempts_dead_letters_the_task(pool: asyncpg.Pool) -> None:
    (task,) = await make_tasks(pool, 1)
    for attempt in range(1, 4):
        await dispatch(pool, f"w{attempt}")
        await expire_leases(pool, task.id)
        (rescued,) = await queries.task_rescue_expired(pool, 3, 1000)
        assert rescued.attempts == attempt

    assert (rescued.status, rescued.last_error, rescued.worker_id) == ("failed", "lease expired", "w3")
    assert await queries.task_dispatch(pool, "w4", 60, None) is None
    assert [e for e in await events(pool, task.id) if e[0] in ("lease_expired", "failed")] == [
        ("lease_expired", "w1", "ready"),
        ("lease_expired", "w2", "ready"),
        ("lease_expired", "w3", "failed"),
        ("failed", "w3", "lease expired"),
    ]


async def test_expired_lease_after_pickup_stalls_the_task(pool: asyncpg.Pool) -> None:
    (task,) = await make_tasks(pool, 1)
    held = await dispatch(pool, "w1")
    picked = changed(await queries.task_pickup(pool, task.id, "w1", held.lease_id))
    assert picked.picked_up_at is not None
    # Again: nothing changes (the handler answers the holder's repeat with this task).
    assert refused(await queries.task_pickup(pool, task.id, "w1", held.lease_id)) == picked

    await expire_leases(pool, task.id)
    (rescued,) = await queries.task_rescue_expired(pool, MAX_ATTEMPTS, 1000)

    # Not re-offered: the bikes are on w1's van.
    assert (rescued.status, rescued.worker_id, rescued.attempts) == ("stalled", "w1", 1)
    assert rescued.picked_up_at == picked.picked_up_at
    assert await queries.task_dispatch(pool, "w2", 60, None) is None
    assert (await events(pool, task.id))[-1] == ("lease_expired", "w1", "stalled")


async def test_rescue_takes_at_most_the_batch_and_oldest_expiry_first(pool: asyncpg.Pool) -> None:
    await make_tasks(pool, 5)
    tasks = sorted([await dispatch(pool, f"w{i}") for i in range(5)], key=lambda t: t.id)
    # Expired 5, 4, 3, 2, 1 seconds ago for tasks 0..4.
    await pool.execute(
        "UPDATE tasks SET lease_expires_at = now() - make_interval(secs => 5 - (id - $1))", tasks[0].id
    )

    first = await queries.task_rescue_expired(pool, MAX_ATTEMPTS, 2)
    rest = await queries.task_rescue_expired(pool, MAX_ATTEMPTS, 1000)

    assert sorted(t.id for t in first) == [tasks[0].id, tasks[1].id]
    assert sorted(t.id for t in rest) == [t.id for t in tasks[2:]]


async def test_fail_backoff_doubles_from_the_base_and_is_capped_at_an_hour(pool: asyncpg.Pool) -> None:
    (task,) = await make_tasks(pool, 1)
    delays = []
    clock = task.available_at
    for attempt in range(1, 5):
        held = await dispatch(pool, "w1", now=clock)
        failed = changed(
            await queries.task_fail(pool, task.id, "w1", held.lease_id, f"flat tyre {attempt}", 30, 10, clock)
        )
        assert (failed.status, failed.attempts, failed.last_error, failed.worker_id, failed.lease_id) == (
            "ready",
            attempt,
            f"flat tyre {attempt}",
            None,
            None,
        )
        delays.append((failed.available_at - clock).total_seconds())
        # Not dispatched during the backoff...
        just_before = failed.available_at - timedelta(microseconds=1)
        assert await queries.task_dispatch(pool, "w2", 60, None, just_before) is None
        # ...and, once it is over, dispatched again.
        clock = failed.available_at

    assert delays == [30, 60, 120, 240]

    held = await dispatch(pool, "w1", now=clock)
    await pool.execute("UPDATE tasks SET attempts = 8 WHERE id = $1", task.id)  # 30 * 2^8 > 3600
    failed = changed(await queries.task_fail(pool, task.id, "w1", held.lease_id, "again", 30, 10, clock))
    assert failed.attempts == 9
    assert failed.available_at == clock + timedelta(hours=1)


async def test_fail_with_zero_backoff_is_ready_at_once_and_dead_letters_at_max(pool: asyncpg.Pool) -> None:
    (task,) = await make_tasks(pool, 1)
    for attempt in range(1, 4):
        held = await dispatch(pool, "w1")
        failed = changed(
            await queries.task_fail(pool, task.id, "w1", held.lease_id, f"error {attempt}", 0, 3)
        )
        assert failed.attempts == attempt
    assert (failed.status, failed.last_error, failed.worker_id) == ("failed", "error 3", "w1")
    assert await queries.task_dispatch(pool, "w2", 60, None) is None
    assert [e[0] for e in await events(pool, task.id)] == [
        "approved",
        *["assigned", "attempt_failed"] * 2,
        "assigned",
        "failed",
    ]

    retried = changed(await queries.task_retry(pool, task.id, "fixed the van"))
    assert (retried.status, retried.attempts, retried.worker_id) == ("ready", 0, None)
    assert (await dispatch(pool, "w2")).id == task.id


def state_changes(task_id: int) -> dict[str, Callable[[queries.Conn], Awaitable[queries.TaskChange | None]]]:
    """Every state change a call on one task makes, as worker w1 would call it."""
    return {
        "complete": partial(queries.task_complete, task_id=task_id, worker_id="w1", lease_id=None),
        "heartbeat": partial(
            queries.task_heartbeat, task_id=task_id, worker_id="w1", lease_id=None, lease_seconds=None
        ),
        "pickup": partial(queries.task_pickup, task_id=task_id, worker_id="w1", lease_id=None),
        "release": partial(queries.task_release, task_id=task_id, worker_id="w1", lease_id=None, reason=None),
        "fail": partial(
            queries.task_fail,
            task_id=task_id,
            worker_id="w1",
            lease_id=None,
            error="e",
            backoff_seconds=0,
            max_attempts=5,
        ),
        "cancel": partial(queries.task_cancel, task_id=task_id, reason=None),
        "retry": partial(queries.task_retry, task_id=task_id, reason=None),
    }


async def test_a_refused_change_returns_the_task_as_it_is_and_an_unknown_task_nothing(
    pool: asyncpg.Pool,
) -> None:
    (task,) = await make_tasks(pool, 1)
    for name, change in state_changes(task.id).items():
        if name != "cancel":  # the one change a ready task allows
            assert refused(await change(pool)) == task, name
    for name, change in state_changes(task.id + 1000).items():
        assert await change(pool) is None, name
    assert await events(pool, task.id) == [("approved", None, None)]


async def test_the_clock_passed_in_is_the_time_of_the_change_and_its_event(pool: asyncpg.Pool) -> None:
    noon = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    minutes = [timedelta(minutes=m) for m in range(91)]
    suggestion_id = await pool.fetchval(
        "INSERT INTO suggestions (from_station_id, to_station_id, qty, reason) VALUES (1, 2, 3, 't') "
        "RETURNING id"
    )
    (task,) = await queries.task_approve_many(pool, [suggestion_id], noon)
    assert (task.created_at, task.available_at) == (noon, noon)
    # Not yet due a second before noon, then taken at noon.
    assert await queries.task_dispatch(pool, "w1", 60, None, noon - timedelta(seconds=1)) is None
    held = await dispatch(pool, "w1", now=noon)
    assert (held.assigned_at, held.lease_expires_at) == (noon, noon + timedelta(seconds=60))
    picked = changed(await queries.task_pickup(pool, task.id, "w1", None, noon + minutes[5]))
    assert picked.picked_up_at == noon + minutes[5]
    changed(await queries.task_cancel(pool, task.id, None, noon + minutes[20]))
    retried = changed(await queries.task_retry(pool, task.id, None, noon + minutes[60]))
    assert retried.available_at == noon + minutes[60]
    (again,) = (await queries.task_dispatch_many(pool, ["w2"], [60], noon + minutes[60])).values()
    assert again.assigned_at == noon + minutes[60]
    released = changed(await queries.task_release(pool, task.id, "w2", None, None, noon + minutes[70]))
    assert released.available_at == noon + minutes[70]
    await dispatch(pool, "w3", now=noon + minutes[80])
    failed = changed(await queries.task_fail(pool, task.id, "w3", None, "e", 60, 5, noon + minutes[85]))
    assert failed.available_at == noon + minutes[86]  # the backoff runs from the clock passed in
    await dispatch(pool, "w3", now=noon + minutes[86])
    done = changed(await queries.task_complete(pool, task.id, "w3", None, noon + minutes[90]))
    assert done.completed_at == noon + minutes[90]
    history = [(e.event, e.at - noon) for e in await queries.task_event_list(pool, task.id)]
    assert history == [
        ("approved", minutes[0]),
        ("assigned", minutes[0]),
        ("picked_up", minutes[5]),
        ("canceled", minutes[20]),
        ("retried", minutes[60]),
        ("assigned", minutes[60]),
        ("released", minutes[70]),
        ("assigned", minutes[80]),
        ("attempt_failed", minutes[85]),
        ("assigned", minutes[86]),
        ("completed", minutes[90]),
    ]


async def test_database_rejects_an_unknown_status(pool: asyncpg.Pool) -> None:
    (task,) = await make_tasks(pool, 1)
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await pool.execute("UPDATE tasks SET status = 'lost' WHERE id = $1", task.id)
    assert caught.value.constraint_name == "tasks_status_valid"


ASSIGN = "UPDATE tasks SET status = 'assigned', assigned_at = now(), "


@pytest.mark.parametrize(
    "statement",
    [
        ASSIGN + "worker_id = 'w1', lease_id = NULL, lease_expires_at = now() WHERE id = $1",
        ASSIGN + "worker_id = 'w1', lease_id = gen_random_uuid(), lease_expires_at = NULL WHERE id = $1",
        ASSIGN + "worker_id = NULL, lease_id = gen_random_uuid(), lease_expires_at = now() WHERE id = $1",
    ],
    ids=["no lease_id", "no lease_expires_at", "no worker_id"],
)
async def test_database_rejects_an_assigned_task_without_a_lease(pool: asyncpg.Pool, statement: str) -> None:
    (task,) = await make_tasks(pool, 1)
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await pool.execute(statement, task.id)
    assert caught.value.constraint_name == "tasks_assigned_has_lease"


async def lock_waiters(conn: queries.Conn, n: int) -> None:
    """Until n backends of this database wait on a lock."""

    async def waiting() -> bool:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        return bool(count >= n)

    await until(waiting)


async def test_cancel_racing_complete_has_exactly_one_winner(pool: asyncpg.Pool) -> None:
    rounds = 40
    tasks = await make_tasks(pool, rounds)
    held = {}
    for i in range(rounds):
        task = await dispatch(pool, f"w{i}")
        held[task.id] = task
    wins = {"canceled": 0, "completed": 0}

    async with (
        pool.acquire() as locker,
        pool.acquire() as observer,
        pool.acquire() as canceler,
        pool.acquire() as completer,
    ):
        for n, task in enumerate(tasks):
            lease = held[task.id]
            cancel = partial(queries.task_cancel, canceler, task.id, "operator")
            complete = partial(queries.task_complete, completer, task.id, lease.worker_id, lease.lease_id)
            # Both statements queue on the row lock held by a third transaction, so they truly overlap; the
            # one queued first gets the row, and the other must re-check its WHERE against the new version.
            async with locker.transaction():
                await locker.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", task.id)
                first, second = (cancel, complete) if n % 2 == 0 else (complete, cancel)
                first_call = asyncio.ensure_future(first())
                await lock_waiters(observer, 1)
                second_call = asyncio.ensure_future(second())
                await lock_waiters(observer, 2)
            results = await asyncio.gather(first_call, second_call)
            canceled, completed = results if n % 2 == 0 else results[::-1]

            assert canceled is not None
            assert completed is not None
            assert canceled.changed != completed.changed
            winner = "canceled" if canceled.changed else "completed"
            wins[winner] += 1
            # The loser's one statement returns the task as the winner left it, not as its snapshot saw it.
            assert canceled.task.status == completed.task.status == winner
            current = await queries.task_get(pool, task.id)
            assert current is not None
            assert current.status == winner
            assert [e[0] for e in await events(pool, task.id)] == ["approved", "assigned", winner]

    print(f"\ncancel vs complete, {rounds} overlapping rounds: {wins}")
    assert wins == {"canceled": rounds // 2, "completed": rounds // 2}


async def test_racing_retry_with_the_same_idempotency_key_gets_the_same_task(pool: asyncpg.Pool) -> None:
    (task,) = await make_tasks(pool, 1)

    async def keyed_dispatch(conn: PoolConnectionProxy) -> Task | None:
        # As the dispatcher runs a keyed request: the key's lock, then the dispatch, in one transaction.
        async with conn.transaction():
            await queries.task_dispatch_key_lock(conn, "w1", "k")
            return await queries.task_dispatch(conn, "w1", 60, "k")

    async with pool.acquire() as first, pool.acquire() as retry, pool.acquire() as observer:
        async with first.transaction():
            await queries.task_dispatch_key_lock(first, "w1", "k")
            taken = await queries.task_dispatch(first, "w1", 60, "k")
            # The retry arrives while the first has taken the only task but not yet committed.
            retried = asyncio.ensure_future(keyed_dispatch(retry))
            await lock_waiters(observer, 1)
        again = await retried

    assert taken is not None
    assert again is not None
    assert (again.id, again.lease_id) == (task.id, taken.lease_id)
    assert [e for e in await events(pool, task.id) if e[0] == "assigned"] == [("assigned", "w1", None)]
    # Another key is another request: it finds no second task.
    async with pool.acquire() as conn:
        assert await keyed_dispatch(conn) is not None
        async with conn.transaction():
            await queries.task_dispatch_key_lock(conn, "w1", "other")
            assert await queries.task_dispatch(conn, "w1", 60, "other") is None
