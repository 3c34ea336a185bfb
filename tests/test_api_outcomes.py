"""Dismissing suggestions, the outcomes feed the ML engine reads (every change of a suggestion's fate once,
in commit order, after a cursor), and suggestions expiring after SUGGESTION_TTL: in-process against a real
PostgreSQL, a transaction held open while a later one commits, and the expiry job on a clock it is given."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from baywheels import queries, settings
from baywheels.maintenance import SuggestionExpiry, default_jobs, expire_suggestions
from helpers import (
    approve,
    complete,
    dispatch,
    json_of,
    make_task,
    suggest,
    suggest_many,
    suggestions,
)

OUTCOME_KEYS = frozenset(
    {
        "cursor",
        "suggestion_id",
        "outcome",
        "at",
        "reason",
        "actor",
        "from_station_id",
        "to_station_id",
        "qty",
        "priority",
        "suggested_at",
        "task_id",
        "task_status",
        "approved_at",
        "assigned_at",
        "picked_up_at",
        "completed_at",
        "attempts",
        "worker_id",
    }
)


async def outcomes(client: httpx.AsyncClient, after: str = "0-0", limit: int = 1000) -> list[dict[str, Any]]:
    page: list[dict[str, Any]] = json_of(
        await client.get("/suggestions/outcomes", params={"after": after, "limit": limit}), 200
    )
    return page


async def dismiss(client: httpx.AsyncClient, ids: list[int], reason: str = "no van free") -> dict[str, Any]:
    result: dict[str, Any] = json_of(
        await client.post("/suggestions/dismiss", json={"suggestion_ids": ids, "reason": reason}), 200
    )
    return result


async def test_dismiss_takes_pending_suggestions_off_the_list_and_says_which_were_not(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    a, b, c = await suggest_many(client, 3)
    task = await approve(client, c)
    result = await dismiss(client, [b, a, c, 999_999, b], reason="station closed for works")
    assert result == {"dismissed": [b, a], "not_pending": [c, 999_999]}
    assert await suggestions(client) == []
    # Dismissed twice: nothing changes, and it says so.
    assert await dismiss(client, [a]) == {"dismissed": [], "not_pending": [a]}
    # An approved suggestion's task is untouched; a dismissed one cannot be approved.
    assert (await pool.fetchval("SELECT status FROM tasks WHERE id = $1", task["id"])) == "ready"
    json_of(await client.post("/task/approve", json={"suggestion_id": a}), 404)

    rows = await outcomes(client)
    assert all(set(row) == OUTCOME_KEYS for row in rows)
    assert [(r["suggestion_id"], r["outcome"], r["reason"], r["actor"]) for r in rows] == [
        (c, "approved", None, "env:ADMIN_API_KEY"),
        (a, "dismissed", "station closed for works", "env:ADMIN_API_KEY"),
        (b, "dismissed", "station closed for works", "env:ADMIN_API_KEY"),
    ]
    assert rows[1]["task_id"] is None
    assert rows[1]["task_status"] is None
    assert rows[0]["task_id"] == task["id"]
    assert rows[0]["task_status"] == "ready"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"suggestion_ids": [], "reason": "x"}, "Expected `array` of length >= 1 - at `$.suggestion_ids`"),
        ({"suggestion_ids": [1], "reason": ""}, "Expected `str` of length >= 1 - at `$.reason`"),
        ({"suggestion_ids": [1], "reason": " \n\t"}, "Expected `str` matching regex"),
        ({"suggestion_ids": [1]}, "Object missing required field `reason`"),
        ({"suggestion_ids": [0], "reason": "x"}, "Expected `int` >= 1 - at `$.suggestion_ids[0]`"),
        ({"suggestion_ids": list(range(1, 1002)), "reason": "x"}, "length <= 1000 - at `$.suggestion_ids`"),
        ({"suggestion_ids": [1], "reason": "x" * 2001}, "length <= 2000 - at `$.reason`"),
    ],
    ids=["no ids", "empty reason", "blank reason", "no reason", "bad id", "too many", "reason too long"],
)
async def test_bad_dismissals_are_refused_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], detail: str
) -> None:
    suggestion_id = await suggest(client, 1, 2)
    assert detail in json_of(await client.post("/suggestions/dismiss", json=body), 400)["detail"]
    assert [s["id"] for s in await suggestions(client)] == [suggestion_id]


async def test_a_dismissal_racing_an_approval_loses_or_wins_whole(client: httpx.AsyncClient) -> None:
    ids = await suggest_many(client, 50)
    approving = client.post("/tasks/approve", json={"suggestion_ids": ids})
    dismissing = client.post("/suggestions/dismiss", json={"suggestion_ids": ids, "reason": "race"})
    approved, dismissed = await asyncio.gather(approving, dismissing)
    tasks = json_of(approved, 200)["tasks"]
    result = json_of(dismissed, 200)
    # Each suggestion went one way only, and the feed says which.
    assert sorted([t["suggestion_id"] for t in tasks] + result["dismissed"]) == ids
    fates = {row["suggestion_id"]: row["outcome"] for row in await outcomes(client)}
    assert fates == {i: "approved" for i in ids if i not in result["dismissed"]} | dict.fromkeys(
        result["dismissed"], "dismissed"
    )


async def test_the_feed_follows_a_task_to_its_end_with_timings(client: httpx.AsyncClient) -> None:
    task = await make_task(client, 5, 6, priority=3)
    first = await outcomes(client)
    assert [(r["outcome"], r["task_status"]) for r in first] == [("approved", "ready")]
    cursor = first[-1]["cursor"]
    # Nothing new: an empty page, and the cursor stays.
    assert await outcomes(client, cursor) == []

    await dispatch(client, "van-1")
    json_of(await complete(client, task["id"], "van-1"), 200)
    done = await outcomes(client, cursor)
    assert [(r["outcome"], r["task_id"], r["task_status"], r["worker_id"]) for r in done] == [
        ("completed", task["id"], "completed", "van-1")
    ]
    row = done[0]
    assert (row["from_station_id"], row["to_station_id"], row["priority"]) == (5, 6, 3)
    assert row["suggested_at"] == first[0]["suggested_at"] is not None
    assert row["suggested_at"] <= row["approved_at"] <= row["assigned_at"] <= row["completed_at"] == row["at"]
    # Read again from the start, the approval row shows the task as it is now.
    assert [r["task_status"] for r in await outcomes(client)] == ["completed", "completed"]


async def test_failed_and_canceled_tasks_end_in_the_feed(client: httpx.AsyncClient) -> None:
    canceled = await make_task(client, 1, 2)
    json_of(await client.post(f"/task/{canceled['id']}/cancel", json={"reason": "duplicate"}), 200)
    failed = await make_task(client, 3, 4)
    await dispatch(client, "van-2")
    for _ in range(5):  # TASK_MAX_ATTEMPTS, no backoff between (the test sets it to 0 below)
        task = json_of(await client.get(f"/task/{failed['id']}"), 200)
        if task["status"] == "failed":
            break
        if task["status"] == "ready":
            await dispatch(client, "van-2")
        json_of(
            await client.post(f"/task/{failed['id']}/fail", json={"worker_id": "van-2", "error": "flat"}), 200
        )
    endings = [
        (r["task_id"], r["outcome"], r["reason"])
        for r in await outcomes(client)
        if r["outcome"] != "approved"
    ]
    assert endings == [(canceled["id"], "canceled", "duplicate"), (failed["id"], "failed", "flat")]


@pytest.fixture
def service_settings(service_settings: settings.Settings) -> settings.Settings:
    return msgspec.structs.replace(service_settings, task_retry_backoff_seconds=0)


async def test_pages_follow_the_cursor(client: httpx.AsyncClient) -> None:
    ids = await suggest_many(client, 7)
    await dismiss(client, ids[:3])
    await dismiss(client, ids[3:])
    seen: list[int] = []
    cursor = "0-0"
    while page := await outcomes(client, cursor, limit=2):
        assert len(page) <= 2
        seen += [r["suggestion_id"] for r in page]
        cursor = page[-1]["cursor"]
    assert seen == ids


async def test_a_late_commit_is_not_skipped_by_a_cursor_handed_out_meanwhile(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """A transaction that took the lower id commits after one with a higher id: a reader that read in id order
    would pass the lower one by. The feed holds everything back until the older transaction ends."""
    early, late = await suggest_many(client, 2)
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await queries.suggestion_remove(conn, [early], "dismissed", "slow", actor="test")
        await dismiss(client, [late])  # commits first, with a higher id
        assert await outcomes(client) == []
        await transaction.commit()
    assert [r["suggestion_id"] for r in await outcomes(client)] == [early, late]


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("after=12", "Expected `str` matching regex"),
        ("after=-1-2", "Expected `str` matching regex"),
        ("after=1-2-3", "Expected `str` matching regex"),
        ("limit=0", "Expected `int` >= 1 - at `$.limit`"),
        ("limit=1001", "Expected `int` <= 1000 - at `$.limit`"),
    ],
)
async def test_bad_cursors_are_refused(client: httpx.AsyncClient, query: str, detail: str) -> None:
    assert detail in json_of(await client.get(f"/suggestions/outcomes?{query}"), 400)["detail"]


async def test_the_largest_cursor_is_the_end(client: httpx.AsyncClient) -> None:
    await dismiss(client, await suggest_many(client, 1))
    assert await outcomes(client, "9999999999999999999-9999999999999999999") == []


def test_expiry_runs_only_with_a_ttl(service_settings: settings.Settings) -> None:
    assert not any(isinstance(job, SuggestionExpiry) for job in default_jobs(service_settings))
    with_ttl = msgspec.structs.replace(service_settings, suggestion_ttl=3600.0)
    assert any(isinstance(job, SuggestionExpiry) for job in default_jobs(with_ttl))
    assert settings.load({"SUGGESTION_TTL": "86400"}).suggestion_ttl == 86400
    with pytest.raises(settings.SettingsError, match="SUGGESTION_TTL"):
        settings.load({"SUGGESTION_TTL": "0"})


async def test_suggestions_not_updated_within_the_ttl_expire_in_batches(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    stale = await suggest_many(client, 5)
    fresh = await suggest_many(client, 2)
    now = datetime.now(UTC)
    await pool.execute(
        "UPDATE suggestions SET updated_at = $2 WHERE id = ANY($1::bigint[])", stale, now - timedelta(hours=2)
    )
    # Re-posting a stale one renews it.
    renewed = stale.pop()
    await pool.execute("UPDATE suggestions SET updated_at = $2 WHERE id = $1", renewed, now)

    async with pool.acquire() as conn:
        assert await expire_suggestions(conn, 3600, 3, now) == stale[:3]
        assert await expire_suggestions(conn, 3600, 3, now) == stale[3:]
        assert await expire_suggestions(conn, 3600, 3, now) == []
    assert sorted(s["id"] for s in await suggestions(client)) == sorted([*fresh, renewed])
    rows = await outcomes(client)
    assert [(r["suggestion_id"], r["outcome"], r["actor"], r["reason"]) for r in rows] == [
        (i, "expired", "system", "not updated for 3600 s") for i in stale
    ]


async def test_the_expiry_job_takes_a_batch_and_asks_to_run_again_when_full(
    service_settings: settings.Settings, pool: asyncpg.Pool
) -> None:
    await pool.execute(
        "INSERT INTO suggestions (from_station_id, to_station_id, qty, reason, updated_at) "
        "SELECT g, g + 100000, 1, 'old', now() - interval '1 day' FROM generate_series(1, $1::integer) g",
        SuggestionExpiry.batch + 1,
    )
    job = SuggestionExpiry(service_settings, 3600)
    async with pool.acquire() as conn:
        assert await job.run(conn) is True
        assert await job.run(conn) is False
    assert await pool.fetchval("SELECT count(*) FROM suggestions") == 0
    assert await pool.fetchval("SELECT count(*) FROM suggestion_outcomes WHERE outcome = 'expired'") == (
        SuggestionExpiry.batch + 1
    )


async def test_a_lease_rescue_that_dead_letters_a_task_ends_it_in_the_feed(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    task = await make_task(client, 1, 2)
    await dispatch(client, "van-3")
    later = datetime.now(UTC) + timedelta(days=1)
    rescued = await queries.task_rescue_expired(pool, 1, 10, later)
    assert [(t.id, t.status) for t in rescued] == [(task["id"], "failed")]
    rows = [r for r in await outcomes(client) if r["outcome"] != "approved"]
    assert [(r["task_id"], r["outcome"], r["reason"], r["actor"], r["task_status"]) for r in rows] == [
        (task["id"], "failed", "lease expired", "system", "failed")
    ]
