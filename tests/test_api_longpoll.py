"""Long-polling dispatch, with the app in-process: a waiter is answered when a task becomes ready, by any of
the ways a task can, oldest waiter first, and with 404 when its wait ends empty. Latencies are printed,
never asserted."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from baywheels import settings
from baywheels.app import create_app
from helpers import (
    approve_many,
    expire_leases,
    in_process,
    make_tasks,
    suggest_many,
    until,
    until_waiting,
    waiters,
)


@pytest.fixture
def service_settings(service_settings: settings.Settings) -> settings.Settings:
    return msgspec.structs.replace(
        service_settings, reaper_interval_seconds=0.05, task_retry_backoff_seconds=0
    )


def long_poll(client: httpx.AsyncClient, worker_id: str, wait_seconds: float) -> asyncio.Task[httpx.Response]:
    request = client.post("/dispatch/next", json={"worker_id": worker_id, "wait_seconds": wait_seconds})
    return asyncio.ensure_future(request)


async def long_poll_until_due(client: httpx.AsyncClient) -> tuple[httpx.Response, datetime]:
    """For the one task, not due yet: refused to a worker now, and the answer to a worker who waits for it,
    with the time it came."""
    assert (await client.post("/dispatch/next", json={"worker_id": "early"})).status_code == 404
    waiting = long_poll(client, "w1", 10)
    await until_waiting(client, 1)
    response = await waiting
    return response, datetime.now(UTC)


async def test_waiter_receives_a_task_approved_while_it_waits(client: httpx.AsyncClient) -> None:
    (suggestion,) = await suggest_many(client, 1)
    waiting = long_poll(client, "w1", 10)
    await until_waiting(client, 1)

    (task,) = await approve_many(client, [suggestion])
    approved_at = time.perf_counter()
    response = await waiting
    latency = time.perf_counter() - approved_at

    assert response.status_code == 200
    assert (response.json()["id"], response.json()["worker_id"], response.json()["status"]) == (
        task["id"],
        "w1",
        "assigned",
    )
    assert await waiters(client) == 0
    print(
        "\nlong-poll wake-up latency (approve response -> dispatch response, in-process): "
        f"{latency * 1000:.1f} ms"
    )


async def test_wait_that_ends_empty_is_404(client: httpx.AsyncClient) -> None:
    started = time.perf_counter()
    response = await client.post("/dispatch/next", json={"worker_id": "w1", "wait_seconds": 0.3})
    waited = time.perf_counter() - started

    assert (response.status_code, response.json()) == (
        404,
        {"detail": "No available tasks with status 'ready'"},
    )
    # A behaviour, not a speed: the request did wait rather than answer at once.
    assert waited >= 0.25
    assert await waiters(client) == 0
    print(f"\nempty long-poll of 0.3 s answered after {waited * 1000:.0f} ms")


async def test_waiters_are_served_oldest_first(client: httpx.AsyncClient) -> None:
    suggestions = await suggest_many(client, 3)
    polls = []
    for i in range(3):
        polls.append(long_poll(client, f"w{i}", 10))
        await until_waiting(client, i + 1)  # so arrival order is known

    for i, suggestion in enumerate(suggestions):
        (task,) = await approve_many(client, [suggestion])
        response = await polls[i]
        assert (response.status_code, response.json()["id"], response.json()["worker_id"]) == (
            200,
            task["id"],
            f"w{i}",
        )
        assert all(not poll.done() for poll in polls[i + 1 :])
    assert await waiters(client) == 0


async def test_one_task_wakes_one_waiter_and_the_rest_keep_waiting(client: httpx.AsyncClient) -> None:
    (suggestion, *rest) = await suggest_many(client, 20)
    polls = [long_poll(client, f"w{i}", 10) for i in range(20)]
    await until_waiting(client, 20)

    (task,) = await approve_many(client, [suggestion])
    (winner,), pending = await asyncio.wait(polls, return_when=asyncio.FIRST_COMPLETED)
    assert winner.result().json()["id"] == task["id"]
    await until_waiting(client, 19)
    assert not any(poll.done() for poll in pending)

    tasks = await approve_many(client, rest)
    answers = [(await poll).json() for poll in pending]
    assert sorted(a["id"] for a in answers) == sorted(t["id"] for t in tasks)
    assert len({a["worker_id"] for a in answers} | {winner.result().json()["worker_id"]}) == 20


Wake = Callable[[httpx.AsyncClient, asyncpg.Pool, dict[str, Any]], Awaitable[None]]


async def by_release(client: httpx.AsyncClient, pool: asyncpg.Pool, task: dict[str, Any]) -> None:
    response = await client.post(f"/task/{task['id']}/release", json={"worker_id": "holder"})
    assert response.status_code == 200


async def by_fail(client: httpx.AsyncClient, pool: asyncpg.Pool, task: dict[str, Any]) -> None:
    response = await client.post(f"/task/{task['id']}/fail", json={"worker_id": "holder", "error": "e"})
    assert response.status_code == 200  # TASK_RETRY_BACKOFF_SECONDS=0: ready at once


async def by_rescue(client: httpx.AsyncClient, pool: asyncpg.Pool, task: dict[str, Any]) -> None:
    await expire_leases(pool, task["id"])


async def by_retry(client: httpx.AsyncClient, pool: asyncpg.Pool, task: dict[str, Any]) -> None:
    assert (await client.post(f"/task/{task['id']}/cancel")).status_code == 200
    assert (await client.post(f"/task/{task['id']}/retry")).status_code == 200


@pytest.mark.parametrize("wake", [by_release, by_fail, by_rescue, by_retry])
async def test_waiter_is_woken_when_a_held_task_becomes_ready_again(
    client: httpx.AsyncClient, pool: asyncpg.Pool, wake: Wake
) -> None:
    (task,) = await make_tasks(client, 1)
    held = await client.post("/dispatch/next", json={"worker_id": "holder"})
    assert held.status_code == 200
    waiting = long_poll(client, "w1", 10)
    await until_waiting(client, 1)

    started = time.perf_counter()
    await wake(client, pool, task)
    response = await waiting
    latency = time.perf_counter() - started

    assert response.status_code == 200, response.text
    assert (response.json()["id"], response.json()["worker_id"]) == (task["id"], "w1")
    print(f"\nwoken {wake.__name__}: {latency * 1000:.1f} ms after the change")


async def test_waiter_is_woken_when_delayed_work_falls_due(client: httpx.AsyncClient) -> None:
    due = datetime.now(UTC) + timedelta(seconds=0.5)
    (task,) = await make_tasks(client, 1, not_before=due.isoformat())
    response, answered = await long_poll_until_due(client)

    assert response.status_code == 200
    assert (response.json()["id"], response.json()["worker_id"]) == (task["id"], "w1")
    assert datetime.fromisoformat(response.json()["assigned_at"]) >= due
    print(f"\ndelayed task handed out {(answered - due).total_seconds() * 1000:.0f} ms after its not_before")


async def test_waiter_is_woken_when_a_retry_backoff_ends(service_settings: settings.Settings) -> None:
    # No trigger fires when a backoff merely runs out: maintenance notices the task fell due and notifies.
    config = msgspec.structs.replace(service_settings, task_retry_backoff_seconds=0.3)
    async with in_process(create_app(config)) as client:
        (task,) = await make_tasks(client, 1)
        held = await client.post("/dispatch/next", json={"worker_id": "holder"})
        failed = await client.post(f"/task/{task['id']}/fail", json={"worker_id": "holder", "error": "e"})
        assert (held.status_code, failed.status_code, failed.json()["status"]) == (200, 200, "ready")
        due = datetime.fromisoformat(failed.json()["available_at"])
        response, answered = await long_poll_until_due(client)

        assert response.status_code == 200
        assert (response.json()["id"], response.json()["worker_id"], response.json()["attempts"]) == (
            task["id"],
            "w1",
            1,
        )
        print(
            f"\nbacked-off task handed out {(answered - due).total_seconds() * 1000:.0f} ms "
            "after its backoff ended"
        )


async def test_wake_up_is_not_lost_when_work_falls_due_before_its_transaction_commits(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    (task,) = await make_tasks(client, 1)
    assert (await client.post("/dispatch/next", json={"worker_id": "holder"})).status_code == 200
    # Long enough to outlast the wait below for the leader's check (its connection runs other jobs' statements
    # too): the answer comes the moment the task is found, not at the end of the wait.
    waiting = long_poll(client, "w1", 25)
    await until_waiting(client, 1)

    async with pool.acquire() as conn, conn.transaction():
        # A slow commit: the task is due 0.1 s into a transaction that commits later still, so the trigger
        # (not yet due at statement time) stays silent and maintenance's checks cannot see the row yet.
        due = await conn.fetchval(
            "UPDATE tasks SET status = 'ready', worker_id = NULL, assigned_at = NULL, lease_id = NULL, "
            "lease_expires_at = NULL, available_at = clock_timestamp() + interval '0.1 seconds' "
            "WHERE id = $1 RETURNING available_at",
            task["id"],
        )

        async def checked_after_due() -> bool:
            # A maintenance check for due work (its statement names the channel) started after the due time,
            # and so could not see this row. Read on another connection: within a transaction the activity
            # snapshot does not change. The leader's connection is the one holding the advisory lock.
            return bool(
                await pool.fetchval(
                    "SELECT query_start > $1 AND query LIKE '%baywheels_task_ready%' "
                    "FROM pg_stat_activity WHERE pid = (SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
                    "AND granted AND database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database()))",
                    due,
                )
            )

        await until(checked_after_due)
    committed = time.perf_counter()

    response = await waiting
    assert response.status_code == 200, response.text
    assert (response.json()["id"], response.json()["worker_id"]) == (task["id"], "w1")
    print(f"\nwoken {(time.perf_counter() - committed) * 1000:.0f} ms after a late commit of due work")
