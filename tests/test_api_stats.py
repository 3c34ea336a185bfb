"""GET /stats and the same figures on /metrics, in-process against a real PostgreSQL: an empty database, then
tasks in every state made over the API (a dead letter, a stalled task, a delayed one) and what the overview
says of them; the cache that lets /metrics read the database at most once per few seconds."""

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from baywheels import overview, settings
from helpers import complete, dispatch, json_of, make_task, metric, until

STATS_KEYS = frozenset(
    {
        "at",
        "counts",
        "ready_due",
        "oldest_ready_seconds",
        "hourly",
        "last_24h",
        "ready_to_assigned",
        "assigned_to_completed",
        "attention",
        "attention_total",
    }
)
NOTHING_MEASURED = {"p50": None, "p90": None, "count": 0}


@pytest.fixture
def service_settings(service_settings: settings.Settings) -> settings.Settings:
    # A failed attempt dead-letters the task at once.
    return msgspec.structs.replace(service_settings, task_max_attempts=1)


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = json_of(await client.get("/stats"), 200)
    assert set(body) == STATS_KEYS
    return body


async def test_an_empty_database(client: httpx.AsyncClient) -> None:
    body = await stats(client)
    assert body["counts"] == {"ready": 0, "assigned": 0, "stalled": 0, "failed": 0}
    assert (body["ready_due"], body["oldest_ready_seconds"], body["attention"], body["attention_total"]) == (
        0,
        None,
        [],
        0,
    )
    assert len(body["hourly"]) == 24
    hours = [datetime.fromisoformat(hour["hour"]) for hour in body["hourly"]]
    assert hours == [hours[0] + timedelta(hours=n) for n in range(24)]
    assert hours[-1] <= datetime.fromisoformat(body["at"]) < hours[-1] + timedelta(hours=1)
    assert all(hour["created"] == hour["dispatched"] == hour["completed"] == 0 for hour in body["hourly"])
    for measure in ("ready_to_assigned", "assigned_to_completed"):
        assert body[measure] == {"hour": NOTHING_MEASURED, "day": NOTHING_MEASURED}


async def test_the_overview_of_work_in_every_state(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    done = await make_task(client, 1, 2, priority=9)
    dead = await make_task(client, 3, 4, priority=8)
    stalled = await make_task(client, 5, 6, priority=7)
    held = await make_task(client, 7, 8, priority=6)
    waiting = await make_task(client, 9, 10)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    await make_task(client, 11, 12, not_before=later)

    assert (await dispatch(client, "van-1"))["id"] == done["id"]
    json_of(await complete(client, done["id"], "van-1"), 200)
    assert (await dispatch(client, "van-2"))["id"] == dead["id"]
    json_of(await client.post(f"/task/{dead['id']}/fail", json={"worker_id": "van-2", "error": "flat"}), 200)
    assert (await dispatch(client, "van-3"))["id"] == stalled["id"]
    json_of(await client.post(f"/task/{stalled['id']}/pickup", json={"worker_id": "van-3"}), 200)
    await pool.execute(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1", stalled["id"]
    )
    assert (await dispatch(client, "van-4"))["id"] == held["id"]

    async def rescued_by_the_loop() -> bool:
        status = await pool.fetchval("SELECT status FROM tasks WHERE id = $1", stalled["id"])
        return bool(status == "stalled")

    await until(rescued_by_the_loop)

    body = await stats(client)
    assert body["counts"] == {"ready": 2, "assigned": 1, "stalled": 1, "failed": 1}
    assert body["ready_due"] == 1  # the delayed one is not due
    assert body["oldest_ready_seconds"] is not None
    assert 0 <= body["oldest_ready_seconds"] < 60
    assert body["attention_total"] == 2
    assert [(t["id"], t["status"]) for t in body["attention"]] == [
        (stalled["id"], "stalled"),
        (dead["id"], "failed"),
    ]
    assert body["last_24h"] | {"hour": None} == {
        "hour": None,
        "created": 6,
        "dispatched": 4,
        "completed": 1,
        "failed": 1,
        "canceled": 0,
    }
    assert sum(hour["created"] for hour in body["hourly"]) == 6
    # Ready to assigned: the completed and the held task's (the failure and the rescue moved the others'
    # available_at on, past their assignment).
    waits = body["ready_to_assigned"]
    assert waits["hour"]["count"] == waits["day"]["count"] == 2
    assert 0 <= waits["hour"]["p50"] <= waits["hour"]["p90"]
    took = body["assigned_to_completed"]
    assert took["day"]["count"] == 1
    assert took["day"]["p50"] == took["day"]["p90"] >= 0

    # The same figures on /metrics.
    assert await metric(client, 'baywheels_tasks{status="stalled"}', None) == 1
    assert await metric(client, 'baywheels_tasks{status="ready"}', None) == 2
    assert await metric(client, "baywheels_ready_due", None) == 1
    assert await metric(client, "baywheels_tasks_needing_attention", None) == 2
    assert await metric(client, 'baywheels_task_events_last_24h{event="created"}', None) == 6
    assert (
        await metric(client, 'baywheels_assigned_to_completed_seconds{quantile="0.5",window="24h"}', None)
        >= 0
    )
    assert waiting["status"] == "ready"


async def test_metrics_read_the_figures_at_most_once_per_interval(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    real_read = overview.read

    async def counted(pool: asyncpg.Pool, now: datetime | None = None) -> Any:
        reads.append(1)
        return await real_read(pool, now)

    clock = [1000.0]
    monkeypatch.setattr(overview, "read", counted)
    cached = overview.Cached(clock=lambda: clock[0])
    first = await cached.get(pool)
    clock[0] += overview.METRICS_CACHE_SECONDS - 0.1
    assert await cached.get(pool) is first
    assert len(reads) == 1
    clock[0] += 0.1
    assert await cached.get(pool) is not first
    assert len(reads) == 2
