"""The task lifecycle over HTTP (the app in-process, its maintenance loop running every 50 ms): leases and
rescue, fencing, pickup and stalled tasks, fail/backoff/dead letter, cancel and retry, idempotent dispatch,
delayed work, and the 409s that name the current state.

A lease "runs out" when the test moves lease_expires_at into the past; the test then waits, with a
deadline, for the maintenance loop's effect to show in the API."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from baywheels import settings
from helpers import dispatch, events, expire_leases, get_task, make_tasks, until

MAX_ATTEMPTS = 3


@pytest.fixture
def service_settings(service_settings: settings.Settings) -> settings.Settings:
    return msgspec.structs.replace(
        service_settings,
        reaper_interval_seconds=0.05,
        task_retry_backoff_seconds=0,
        task_max_attempts=MAX_ATTEMPTS,
    )


async def wait_for_status(client: httpx.AsyncClient, task_id: int, *statuses: str) -> dict[str, Any]:
    """The task once it reaches one of ``statuses`` (maintenance acts within a few of its 50 ms ticks)."""
    task: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal task
        task = await get_task(client, task_id)
        return task["status"] in statuses

    await until(reached)
    return task


def holder(task: dict[str, Any]) -> dict[str, Any]:
    return {"worker_id": task["worker_id"], "lease_id": task["lease_id"]}


async def test_a_silent_worker_loses_its_task_to_another(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    (task,) = await make_tasks(client, 1)
    first = await dispatch(client, "w1", lease_seconds=60)
    assert first["lease_id"] is not None
    assert datetime.fromisoformat(first["lease_expires_at"]) - datetime.fromisoformat(
        first["assigned_at"]
    ) == timedelta(seconds=60)

    await expire_leases(pool, task["id"])  # w1's phone died: no heartbeat came
    rescued = await wait_for_status(client, task["id"], "ready")
    assert (rescued["attempts"], rescued["worker_id"], rescued["lease_id"]) == (1, None, None)

    second = await dispatch(client, "w2")
    assert second["id"] == task["id"]
    late = await client.post(f"/task/{task['id']}/complete", json=holder(first))
    assert late.status_code == 409
    assert late.json() == {"detail": f"Cannot complete task {task['id']}: it is held by another worker"}
    assert (await client.post(f"/task/{task['id']}/heartbeat", json={"worker_id": "w1"})).status_code == 409
    done = await client.post(f"/task/{task['id']}/complete", json=holder(second))
    assert done.status_code == 200
    assert (done.json()["status"], done.json()["worker_id"]) == ("completed", "w2")

    assert await events(client, task["id"]) == [
        ("approved", None),
        ("assigned", "w1"),
        ("lease_expired", "w1"),
        ("assigned", "w2"),
        ("completed", "w2"),
    ]
    # Nothing lost, nothing doubled.
    tasks = (await client.get("/tasks")).json()
    assert [(t["id"], t["status"], t["worker_id"]) for t in tasks] == [(task["id"], "completed", "w2")]


async def test_heartbeats_keep_the_task_while_they_come(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    tasks = await make_tasks(client, 2)
    kept = held = await dispatch(client, "w1", lease_seconds=120)
    (canary,) = [t for t in tasks if t["id"] != kept["id"]]
    for round_ in range(3):
        # The lease is about to run out when w1's heartbeat arrives and pushes it a lease length ahead.
        await pool.execute(
            "UPDATE tasks SET lease_expires_at = now() + interval '1 second' WHERE id = $1", kept["id"]
        )
        beat = await client.post(f"/task/{kept['id']}/heartbeat", json=holder(held))
        assert beat.status_code == 200, beat.text
        assert datetime.fromisoformat(beat.json()["lease_expires_at"]) > datetime.now(UTC) + timedelta(
            seconds=100
        )
        # The canary's lease expires; once maintenance has rescued it, a pass has run since the heartbeat.
        await dispatch(client, f"canary{round_}")
        await expire_leases(pool, canary["id"])
        # (Its third expiry dead-letters it: MAX_ATTEMPTS is 3.)
        await wait_for_status(client, canary["id"], "ready", "failed")
        still = await get_task(client, kept["id"])
        assert (still["status"], still["worker_id"], still["lease_id"], still["attempts"]) == (
            "assigned",
            "w1",
            held["lease_id"],
            0,
        )
    assert [e for e in await events(client, kept["id"]) if e[0] != "approved"] == [("assigned", "w1")]


async def test_stale_lease_is_refused_even_for_the_same_worker(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    (task,) = await make_tasks(client, 1)
    old = await dispatch(client, "w1")
    await expire_leases(pool, task["id"])
    await wait_for_status(client, task["id"], "ready")
    new = await dispatch(client, "w1")
    assert new["id"] == task["id"]
    assert new["lease_id"] != old["lease_id"]

    for action, extra in [("heartbeat", {}), ("pickup", {}), ("fail", {"error": "x"}), ("release", {})]:
        stale = await client.post(f"/task/{task['id']}/{action}", json={**holder(old), **extra})
        assert stale.status_code == 409, action
        assert "has expired and the task was dispatched again" in stale.json()["detail"]
    stale = await client.post(f"/task/{task['id']}/complete", json=holder(old))
    assert stale.status_code == 409
    assert stale.json() == {
        "detail": f"Cannot complete task {task['id']}: lease {old['lease_id']} has expired and the task "
        "was dispatched again"
    }
    assert (await get_task(client, task["id"]))["status"] == "assigned"
    fresh = await client.post(f"/task/{task['id']}/complete", json=holder(new))
    assert fresh.status_code == 200
    assert fresh.json()["status"] == "completed"
    # A retry of the completion by its holder is answered with the same result.
    again = await client.post(f"/task/{task['id']}/complete", json=holder(new))
    assert (again.status_code, again.json()) == (200, fresh.json())


async def test_a_lease_expiring_after_pickup_stalls_the_task(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    tasks = await make_tasks(client, 3)
    stalled, canceled = await dispatch(client, "w1"), await dispatch(client, "w2")
    for held in [stalled, canceled]:
        picked = await client.post(f"/task/{held['id']}/pickup", json=holder(held))
        assert picked.status_code == 200
        assert picked.json()["picked_up_at"] is not None
        await expire_leases(pool, held["id"])
    await wait_for_status(client, stalled["id"], "stalled")
    await wait_for_status(client, canceled["id"], "stalled")

    # Not re-offered to anyone: the next worker gets the third task, then nothing.
    (other,) = [t for t in tasks if t["id"] not in (stalled["id"], canceled["id"])]
    assert (await dispatch(client, "w3"))["id"] == other["id"]
    assert (await client.post("/dispatch/next", json={"worker_id": "w4"})).status_code == 404

    listed = (await client.get("/tasks", params={"status": "stalled"})).json()
    assert sorted((t["id"], t["worker_id"], t["attempts"]) for t in listed) == sorted(
        [(stalled["id"], "w1", 1), (canceled["id"], "w2", 1)]
    )
    assert (await client.get("/tasks", params={"status": "stalled", "worker_id": "w2"})).json()[0]["id"] == (
        canceled["id"]
    )
    assert (await events(client, stalled["id"]))[-2:] == [("picked_up", "w1"), ("lease_expired", "w1")]

    retried = await client.post(f"/task/{stalled['id']}/retry", json={"reason": "van found"})
    assert retried.status_code == 200
    assert (retried.json()["status"], retried.json()["attempts"], retried.json()["worker_id"]) == (
        "ready",
        0,
        None,
    )
    assert (await dispatch(client, "w5"))["id"] == stalled["id"]
    cancel = await client.post(f"/task/{canceled['id']}/cancel", json={"reason": "bikes returned"})
    assert cancel.status_code == 200
    assert cancel.json()["status"] == "canceled"


async def test_fail_backs_off_then_dead_letters_and_retry_revives(client: httpx.AsyncClient) -> None:
    (task,) = await make_tasks(client, 1)
    for attempt in range(1, MAX_ATTEMPTS):
        held = await dispatch(client, "w1")  # ready again at once: TASK_RETRY_BACKOFF_SECONDS=0
        failed = await client.post(
            f"/task/{task['id']}/fail", json={**holder(held), "error": f"flat {attempt}"}
        )
        assert failed.status_code == 200
        body = failed.json()
        assert (body["status"], body["attempts"], body["last_error"], body["worker_id"]) == (
            "ready",
            attempt,
            f"flat {attempt}",
            None,
        )
    held = await dispatch(client, "w1")
    dead = await client.post(f"/task/{task['id']}/fail", json={**holder(held), "error": "van broke down"})
    assert dead.status_code == 200
    assert (dead.json()["status"], dead.json()["attempts"]) == ("failed", MAX_ATTEMPTS)
    assert (await client.post("/dispatch/next", json={"worker_id": "w2"})).status_code == 404

    dead_letters = (await client.get("/tasks", params={"status": "failed"})).json()
    assert [(t["id"], t["last_error"], t["attempts"]) for t in dead_letters] == [
        (task["id"], "van broke down", MAX_ATTEMPTS)
    ]
    assert [e[0] for e in await events(client, task["id"])] == [
        "approved",
        *["assigned", "attempt_failed"] * (MAX_ATTEMPTS - 1),
        "assigned",
        "failed",
    ]

    retried = await client.post(f"/task/{task['id']}/retry")
    assert retried.status_code == 200
    assert (retried.json()["status"], retried.json()["attempts"]) == ("ready", 0)
    assert (await client.get("/tasks", params={"status": "failed"})).json() == []
    assert (await dispatch(client, "w2"))["id"] == task["id"]


async def test_release_hands_the_task_back_without_counting_an_attempt(client: httpx.AsyncClient) -> None:
    (task,) = await make_tasks(client, 1)
    held = await dispatch(client, "w1")
    released = await client.post(f"/task/{task['id']}/release", json={**holder(held), "reason": "shift over"})
    assert released.status_code == 200
    assert (released.json()["status"], released.json()["attempts"], released.json()["worker_id"]) == (
        "ready",
        0,
        None,
    )
    assert (await dispatch(client, "w2"))["id"] == task["id"]
    listed = (await client.get(f"/task/{task['id']}/events")).json()
    assert [(e["event"], e["worker_id"], e["detail"]) for e in listed][2] == ("released", "w1", "shift over")


async def test_cancel_locks_out_the_holder(client: httpx.AsyncClient) -> None:
    (task,) = await make_tasks(client, 1)
    held = await dispatch(client, "w1")
    canceled = await client.post(f"/task/{task['id']}/cancel", json={"reason": "station closed"})
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"

    for action in ["heartbeat", "complete", "pickup"]:
        refused = await client.post(f"/task/{task['id']}/{action}", json=holder(held))
        assert refused.status_code == 409, action
        assert refused.json()["detail"].endswith("it is 'canceled', not 'assigned'")
    assert (await get_task(client, task["id"]))["status"] == "canceled"
    assert (await client.post("/dispatch/next", json={"worker_id": "w2"})).status_code == 404

    retried = await client.post(f"/task/{task['id']}/retry")
    assert (retried.status_code, retried.json()["status"]) == (200, "ready")
    assert [e[0] for e in await events(client, task["id"])] == [
        "approved",
        "assigned",
        "canceled",
        "retried",
    ]


async def test_cancel_racing_complete_over_http_has_one_winner_per_round(client: httpx.AsyncClient) -> None:
    rounds = 30
    tasks = await make_tasks(client, rounds)
    held = [await dispatch(client, f"w{i}") for i in range(rounds)]

    async def race(task: dict[str, Any]) -> tuple[int, int]:
        cancel, complete = await asyncio.gather(
            client.post(f"/task/{task['id']}/cancel"),
            client.post(f"/task/{task['id']}/complete", json=holder(task)),
        )
        return cancel.status_code, complete.status_code

    outcomes = await asyncio.gather(*(race(task) for task in held))

    wins = {"canceled": 0, "completed": 0}
    for task, (cancel, complete) in zip(held, outcomes, strict=True):
        assert sorted([cancel, complete]) == [200, 409]
        winner = "canceled" if cancel == 200 else "completed"
        wins[winner] += 1
        assert (await get_task(client, task["id"]))["status"] == winner
        assert [e[0] for e in await events(client, task["id"])] == ["approved", "assigned", winner]
    print(f"\ncancel vs complete over HTTP, {rounds} concurrent rounds: {wins}")
    assert len(tasks) == rounds


async def test_a_holders_racing_repeats_of_complete_all_get_the_completed_task(
    client: httpx.AsyncClient,
) -> None:
    """A phone retrying before its first call was answered: the repeats that lose the race read the task as
    the winner left it (completed by this holder), so every call gets 200 and one completion is recorded."""
    rounds = 10
    await make_tasks(client, rounds)
    held = [await dispatch(client, f"w{i}") for i in range(rounds)]

    async def race(task: dict[str, Any]) -> list[httpx.Response]:
        url = f"/task/{task['id']}/complete"
        return list(await asyncio.gather(*(client.post(url, json=holder(task)) for _ in range(3))))

    for task, responses in zip(held, await asyncio.gather(*(race(t) for t in held)), strict=True):
        assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
        assert {r.json()["status"] for r in responses} == {"completed"}
        assert [e[0] for e in await events(client, task["id"])] == ["approved", "assigned", "completed"]


async def test_same_idempotency_key_returns_the_same_task(client: httpx.AsyncClient) -> None:
    await make_tasks(client, 3)

    async def keyed(key: str, worker_id: str = "w1") -> httpx.Response:
        return await client.post(
            "/dispatch/next", json={"worker_id": worker_id}, headers={"Idempotency-Key": key}
        )

    first = await keyed("req-1")
    retry = await keyed("req-1")
    assert first.status_code == retry.status_code == 200
    assert (retry.json()["id"], retry.json()["lease_id"]) == (first.json()["id"], first.json()["lease_id"])

    other = await keyed("req-2")
    assert other.status_code == 200
    assert other.json()["id"] != first.json()["id"]
    # The key belongs to the worker: another worker using the same key gets a task of its own.
    stranger = await keyed("req-1", worker_id="w2")
    assert stranger.status_code == 200
    assert stranger.json()["id"] not in (first.json()["id"], other.json()["id"])

    # Racing retries with one key still take a single task.
    (extra,) = await make_tasks(client, 1)
    raced = await asyncio.gather(*(keyed("req-3") for _ in range(20)))
    assert {(r.status_code, r.json()["id"], r.json()["lease_id"]) for r in raced} == {
        (200, extra["id"], raced[0].json()["lease_id"])
    }
    assignments = [e for e in await events(client, extra["id"]) if e[0] == "assigned"]
    assert assignments == [("assigned", "w1")]

    for bad in [b"has space", b"x" * 129, "caf\u00e9".encode()]:
        refused = await client.post(
            "/dispatch/next", json={"worker_id": "w1"}, headers={b"Idempotency-Key": bad}
        )
        assert refused.status_code == 400, bad
        assert refused.json() == {
            "detail": "Idempotency-Key must be 1 to 128 printable ASCII characters without spaces"
        }


async def test_delayed_work_is_not_dispatched_before_its_time(client: httpx.AsyncClient) -> None:
    future = datetime.now(UTC) + timedelta(hours=1)
    (later,) = await make_tasks(client, 1, not_before=future.isoformat())
    assert datetime.fromisoformat(later["not_before"]) == future
    assert (await client.post("/dispatch/next", json={"worker_id": "w1"})).status_code == 404

    past = datetime.now(UTC) - timedelta(minutes=5)
    ingested = await client.post(
        "/suggestions",
        json=[
            {
                "from_station_id": 90,
                "to_station_id": 91,
                "qty": 1,
                "reason": "r",
                "not_before": past.isoformat(),
            }
        ],
    )
    approved = await client.post("/task/approve", json={"suggestion_id": ingested.json()["ids"][0]})
    now_task = approved.json()
    assert datetime.fromisoformat(now_task["not_before"]) == past
    assert (await dispatch(client, "w1"))["id"] == now_task["id"]
    assert (await client.post("/dispatch/next", json={"worker_id": "w2"})).status_code == 404
    assert (await get_task(client, later["id"]))["status"] == "ready"

    # An operator's cancel and retry does not make it due early either.
    assert (await client.post(f"/task/{later['id']}/cancel")).status_code == 200
    retried = await client.post(f"/task/{later['id']}/retry")
    assert (retried.status_code, retried.json()["status"]) == (200, "ready")
    assert datetime.fromisoformat(retried.json()["available_at"]) == future
    assert (await client.post("/dispatch/next", json={"worker_id": "w2"})).status_code == 404


async def test_lifecycle_request_fields_are_validated(client: httpx.AsyncClient) -> None:
    (task,) = await make_tasks(client, 1)
    task_id = task["id"]
    cases = [
        (
            "/dispatch/next",
            {"worker_id": "w1", "lease_seconds": 0},
            "Expected `int` >= 1 - at `$.lease_seconds`",
        ),
        (
            "/dispatch/next",
            {"worker_id": "w1", "lease_seconds": 86401},
            "Expected `int` <= 86400 - at `$.lease_seconds`",
        ),
        (
            "/dispatch/next",
            {"worker_id": "w1", "wait_seconds": 31},
            "Expected `float` <= 30.0 - at `$.wait_seconds`",
        ),
        (
            "/dispatch/next",
            {"worker_id": "w1", "wait_seconds": -1},
            "Expected `float` >= 0.0 - at `$.wait_seconds`",
        ),
        (
            f"/task/{task_id}/heartbeat",
            {"worker_id": "w1", "lease_id": "nope"},
            "Invalid UUID - at `$.lease_id`",
        ),
        (f"/task/{task_id}/heartbeat", {}, "Object missing required field `worker_id`"),
        (f"/task/{task_id}/fail", {"worker_id": "w1"}, "Object missing required field `error`"),
        (
            f"/task/{task_id}/fail",
            {"worker_id": "w1", "error": ""},
            "Expected `str` of length >= 1 - at `$.error`",
        ),
        (f"/task/{task_id}/cancel", {"bogus": 1}, "Object contains unknown field `bogus`"),
    ]
    for path, body, detail in cases:
        response = await client.post(path, json=body)
        assert (response.status_code, response.json()) == (400, {"detail": detail}), (path, body)
    # Nothing happened to the task.
    assert (await get_task(client, task_id))["status"] == "ready"
    assert [e[0] for e in await events(client, task_id)] == ["approved"]


async def test_illegal_transitions_are_409_naming_the_current_state(client: httpx.AsyncClient) -> None:
    (done,) = await make_tasks(client, 1)
    held = await dispatch(client, "w1")
    assert (await client.post(f"/task/{done['id']}/complete", json=holder(held))).status_code == 200
    (ready,) = await make_tasks(client, 1)
    r, d = ready["id"], done["id"]

    expectations = [
        ("retry", r, {}, f"Cannot retry task {r}: it is 'ready', not failed, canceled or stalled"),
        (
            "heartbeat",
            r,
            {"worker_id": "w1"},
            f"Cannot extend the lease of task {r}: it is 'ready', not 'assigned'",
        ),
        ("pickup", r, {"worker_id": "w1"}, f"Cannot pick up task {r}: it is 'ready', not 'assigned'"),
        (
            "fail",
            r,
            {"worker_id": "w1", "error": "e"},
            f"Cannot fail task {r}: it is 'ready', not 'assigned'",
        ),
        ("release", r, {"worker_id": "w1"}, f"Cannot release task {r}: it is 'ready', not 'assigned'"),
        ("complete", r, {}, f"Cannot complete task {r}: it is 'ready', not 'assigned'"),
        ("cancel", d, {}, f"Cannot cancel task {d}: it is already 'completed'"),
        ("retry", d, {}, f"Cannot retry task {d}: it is 'completed', not failed, canceled or stalled"),
        ("complete", d, {"worker_id": "w2"}, f"Cannot complete task {d}: it is 'completed', not 'assigned'"),
        (
            "fail",
            d,
            {"worker_id": "w1", "error": "e"},
            f"Cannot fail task {d}: it is 'completed', not 'assigned'",
        ),
    ]
    for action, task_id, body, detail in expectations:
        response = await client.post(f"/task/{task_id}/{action}", json=body)
        assert (response.status_code, response.json()) == (409, {"detail": detail}), (action, task_id)
    assert (await get_task(client, r))["status"] == "ready"
    assert (await get_task(client, d))["status"] == "completed"

    other = await dispatch(client, "w2")
    wrong = await client.post(f"/task/{other['id']}/heartbeat", json={"worker_id": "w3"})
    assert (wrong.status_code, wrong.json()) == (
        409,
        {"detail": f"Cannot extend the lease of task {other['id']}: it is held by another worker"},
    )
    canceled = await client.post(f"/task/{other['id']}/cancel")
    assert canceled.status_code == 200
    twice = await client.post(f"/task/{other['id']}/cancel")
    assert (twice.status_code, twice.json()) == (
        409,
        {"detail": f"Cannot cancel task {other['id']}: it is already 'canceled'"},
    )


async def test_unknown_task_is_404_everywhere(client: httpx.AsyncClient) -> None:
    detail = {"detail": "Task with id 999 not found"}
    for action, body in [
        ("heartbeat", {"worker_id": "w1"}),
        ("pickup", {"worker_id": "w1"}),
        ("release", {"worker_id": "w1"}),
        ("fail", {"worker_id": "w1", "error": "e"}),
        ("complete", {}),
        ("cancel", {}),
        ("retry", {}),
    ]:
        response = await client.post(f"/task/999/{action}", json=body)
        assert (response.status_code, response.json()) == (404, detail), action
    for path in ["/task/999", "/task/999/events"]:
        response = await client.get(path)
        assert (response.status_code, response.json()) == (404, detail), path


async def test_events_are_listed_oldest_first_with_who_and_why(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    (task,) = await make_tasks(client, 1)
    first = await dispatch(client, "w1")
    await client.post(f"/task/{task['id']}/release", json={**holder(first), "reason": "flat tyre"})
    second = await dispatch(client, "w2")
    await client.post(f"/task/{task['id']}/pickup", json=holder(second))
    await client.post(f"/task/{task['id']}/complete", json=holder(second))

    listed = (await client.get(f"/task/{task['id']}/events")).json()
    assert [(e["event"], e["worker_id"], e["detail"]) for e in listed] == [
        ("approved", None, None),
        ("assigned", "w1", None),
        ("released", "w1", "flat tyre"),
        ("assigned", "w2", None),
        ("picked_up", "w2", None),
        ("completed", "w2", None),
    ]
    times = [datetime.fromisoformat(e["at"]) for e in listed]
    assert times == sorted(times)
    # Oldest first is insertion order, not merely time order: equal timestamps keep their order.
    await pool.execute("UPDATE task_events SET at = '2030-01-01Z' WHERE task_id = $1", task["id"])
    again = (await client.get(f"/task/{task['id']}/events")).json()
    assert [e["event"] for e in again] == [e["event"] for e in listed]
