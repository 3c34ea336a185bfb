"""One typed function per named query in ``sql/queries``. The connection comes first, so the caller owns the
transaction; rows become Structs here and nowhere else. Task queries whose outcome depends on the time take
``now``: the service leaves it None (the database's clock), tests pass the time they need."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from . import sql
from .models import (
    ApiKey,
    Durations,
    HourCounts,
    LiveEvent,
    Percentiles,
    Position,
    Role,
    StateCounts,
    Station,
    StationDay,
    Suggestion,
    SuggestionIn,
    SuggestionOutcome,
    Task,
    TaskEvent,
    Worker,
    WorkerStats,
)

Conn = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool


def _query_text(name: str, cardinality: sql.Cardinality) -> str:
    query = sql.queries()[name]
    if query.cardinality != cardinality:
        raise ValueError(f"query {name} is :{query.cardinality}, used as :{cardinality}")
    return query.text


_TASK_FIELDS = Task.__struct_fields__


def _task(row: asyncpg.Record) -> Task:
    return Task(**{field: row[field] for field in _TASK_FIELDS})


def _task_or_none(row: asyncpg.Record | None) -> Task | None:
    return None if row is None else _task(row)


def _tasks(rows: Sequence[asyncpg.Record]) -> list[Task]:
    return [_task(row) for row in rows]


@dataclass(frozen=True, slots=True)
class TaskChange:
    """The one result of a state change on one task: the task as it now is, and whether this call changed
    it (else the call was refused, and the task says why)."""

    task: Task
    changed: bool


def _change(row: asyncpg.Record | None) -> TaskChange | None:
    return None if row is None else TaskChange(_task(row), row["changed"])


# The unique violation a dispatch raises when a station it saw free in its snapshot was claimed by a dispatch
# that committed since (station_claim_refused, migration 007): nothing of the statement stays; run it again.
STATION_TAKEN = "station_claims_one_van"


def station_taken(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.UniqueViolationError) and exc.constraint_name == STATION_TAKEN


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What authentication needs of a key (its digest included), as api_key_authenticate reads it."""

    key_id: str
    digest: bytes
    role: Role
    worker_id: str | None
    expires_at: datetime | None
    revoked_at: datetime | None


_API_KEY_FIELDS = ApiKey.__struct_fields__


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(**{field: row[field] for field in _API_KEY_FIELDS})


# api_key.sql


async def api_key_authenticate(
    conn: Conn, key_ids: Sequence[str], now: datetime | None = None
) -> list[KeyRecord]:
    return [KeyRecord(**dict(row)) for row in await conn.fetch(_API_KEY_AUTHENTICATE, key_ids, now)]


async def api_key_bootstrap_lock(conn: Conn) -> None:
    await conn.execute(_API_KEY_BOOTSTRAP_LOCK)


async def api_key_count(conn: Conn) -> int:
    count: int = await conn.fetchval(_API_KEY_COUNT)
    return count


async def api_key_create(
    conn: Conn,
    key_id: str,
    digest: bytes,
    role: Role,
    worker_id: str | None,
    name: str | None,
    expires_at: datetime | None,
    created_by: str,
    now: datetime | None = None,
) -> ApiKey:
    row = await conn.fetchrow(
        _API_KEY_CREATE, key_id, digest, role, worker_id, name, expires_at, created_by, now
    )
    assert row is not None
    return _api_key(row)


async def api_key_list(conn: Conn) -> list[ApiKey]:
    return [_api_key(row) for row in await conn.fetch(_API_KEY_LIST)]


async def api_key_revoke(
    conn: Conn, key_id: str, revoked_by: str, now: datetime | None = None
) -> ApiKey | None:
    row = await conn.fetchrow(_API_KEY_REVOKE, key_id, revoked_by, now)
    return None if row is None else _api_key(row)


# console_session.sql


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in browser's session, as a console request reads it."""

    csrf_token: str
    actor: str
    role: Role
    key_id: str | None
    expires_at: datetime


async def console_session_create(
    conn: Conn,
    digest: bytes,
    csrf_token: str,
    actor: str,
    role: Role,
    key_id: str | None,
    seconds: float,
    now: datetime | None = None,
) -> None:
    await conn.execute(_CONSOLE_SESSION_CREATE, digest, csrf_token, actor, role, key_id, seconds, now)


async def console_session_delete(conn: Conn, digest: bytes) -> None:
    await conn.execute(_CONSOLE_SESSION_DELETE, digest)


async def console_session_get(
    conn: Conn, digest: bytes, now: datetime | None = None
) -> ConsoleSession | None:
    row = await conn.fetchrow(_CONSOLE_SESSION_GET, digest, now)
    return None if row is None else ConsoleSession(**dict(row))


# health.sql


async def health_ping(conn: Conn) -> None:
    await conn.fetchval(_HEALTH_PING)


# maintenance.sql


async def maintenance_try_lock(conn: Conn) -> tuple[bool, datetime]:
    """Whether this connection holds the maintenance lock (now or already), and the database's clock."""
    row = await conn.fetchrow(_MAINTENANCE_TRY_LOCK)
    assert row is not None
    return bool(row["locked"]), row["checked_at"]


# migration.sql


async def migration_applied(conn: Conn) -> list[int]:
    return [row["version"] for row in await conn.fetch(_MIGRATION_APPLIED)]


async def migration_lock(conn: Conn) -> None:
    await conn.execute(_MIGRATION_LOCK)


async def migration_record(conn: Conn, version: int, name: str) -> None:
    await conn.execute(_MIGRATION_RECORD, version, name)


async def migration_table_create(conn: Conn) -> None:
    await conn.execute(_MIGRATION_TABLE_CREATE)


async def migration_unlock(conn: Conn) -> None:
    await conn.execute(_MIGRATION_UNLOCK)


# station.sql

_STATION_FIELDS = Station.__struct_fields__


def _station(row: asyncpg.Record) -> Station:
    return Station(**{field: row[field] for field in _STATION_FIELDS})


async def station_deactivate_missing(conn: Conn, present_ids: Sequence[int]) -> list[int]:
    return [row["id"] for row in await conn.fetch(_STATION_DEACTIVATE_MISSING, present_ids)]


async def station_feed_lock(conn: Conn) -> None:
    await conn.execute(_STATION_FEED_LOCK)


async def station_get(conn: Conn, station_id: int) -> Station | None:
    row = await conn.fetchrow(_STATION_GET, station_id)
    return None if row is None else _station(row)


async def station_history(
    conn: Conn, station_id: int, days: int, now: datetime | None = None
) -> list[StationDay]:
    return [StationDay(**dict(row)) for row in await conn.fetch(_STATION_HISTORY, station_id, days, now)]


async def station_id_sequence_sync(conn: Conn) -> None:
    await conn.execute(_STATION_ID_SEQUENCE_SYNC)


@dataclass(frozen=True, slots=True)
class StationFilter:
    """GET /stations' filters: fill bounds, active, and a circle (lat, lon, metres) or None."""

    fill_below: float | None = None
    fill_above: float | None = None
    active: bool | None = None
    near: tuple[float, float, float] | None = None


async def station_list(conn: Conn, where: StationFilter, after_id: int, limit: int) -> list[Station]:
    common = (after_id, limit, where.fill_below, where.fill_above, where.active)
    if where.near is None:
        rows = await conn.fetch(_STATION_LIST, *common)
    else:
        rows = await conn.fetch(_STATION_LIST_NEAR, *common, *where.near)
    return [_station(row) for row in rows]


async def station_list_matching(conn: Conn) -> list[asyncpg.Record]:
    """Rows of (id, gbfs_station_id, short_name, legacy_id) of every station."""
    return await conn.fetch(_STATION_LIST_MATCHING)


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a suggestion batch names: whether the registry holds stations; the existing ones among those
    named, by id and by GBFS id, with whether each is active."""

    registry: bool
    by_id: dict[int, bool]
    by_gbfs: dict[str, tuple[int, bool]]


async def station_resolve(conn: Conn, ids: Sequence[int], gbfs_ids: Sequence[str]) -> Resolved:
    row = await conn.fetchrow(_STATION_RESOLVE, ids, gbfs_ids)
    assert row is not None
    found = list(zip(row["ids"], row["gbfs_ids"], row["active"], strict=True))
    return Resolved(
        registry=row["registry"],
        by_id={i: active for i, _, active in found},
        by_gbfs={g: (i, active) for i, g, active in found},
    )


async def station_system_get(conn: Conn) -> asyncpg.Record | None:
    """(system_id, name, timezone, source, imported_at) of the last import, None before any."""
    return await conn.fetchrow(_STATION_SYSTEM_GET)


async def station_system_set(
    conn: Conn, system_id: str | None, name: str | None, timezone: str | None, source: str
) -> None:
    await conn.execute(_STATION_SYSTEM_SET, system_id, name, timezone, source)


async def station_upsert_many(conn: Conn, ids: Sequence[int], columns: Sequence[Sequence[Any]]) -> list[int]:
    """Write stations under the ids given, ``columns`` the query's $2.. arrays (gbfs.FeedStation's fields, in
    order); the ids whose bikes or docks available changed."""
    return [row["id"] for row in await conn.fetch(_STATION_UPSERT_MANY, ids, *columns)]


# stats.sql


async def stats_attention(conn: Conn, limit: int) -> list[Task]:
    return _tasks(await conn.fetch(_STATS_ATTENTION, limit))


@dataclass(frozen=True, slots=True)
class Counts:
    at: datetime
    states: StateCounts
    ready_due: int
    oldest_ready_since: datetime | None


async def stats_counts(conn: Conn, now: datetime | None = None) -> Counts:
    row = await conn.fetchrow(_STATS_COUNTS, now)
    assert row is not None
    states = StateCounts(
        ready=row["ready"], assigned=row["assigned"], stalled=row["stalled"], failed=row["failed"]
    )
    return Counts(row["at"], states, row["ready_due"], row["oldest_ready_since"])


async def stats_hourly(conn: Conn, now: datetime | None = None) -> list[HourCounts]:
    return [HourCounts(**dict(row)) for row in await conn.fetch(_STATS_HOURLY, now)]


async def stats_latency(conn: Conn, now: datetime | None = None) -> dict[str, Durations]:
    """Durations by measure (ready_assigned, assigned_completed)."""
    found = {(row["measure"], row["span"]): row for row in await conn.fetch(_STATS_LATENCY, now)}

    def percentiles(measure: str, span: str) -> Percentiles:
        row = found.get((measure, span))
        if row is None:
            return Percentiles(p50=None, p90=None, count=0)
        p50, p90 = row["p"]
        return Percentiles(p50=p50, p90=p90, count=row["n"])

    return {
        measure: Durations(hour=percentiles(measure, "hour"), day=percentiles(measure, "day"))
        for measure in ("ready_assigned", "assigned_completed")
    }


# suggestion.sql


async def suggestion_list(conn: Conn, after_id: int, limit: int) -> list[Suggestion]:
    rows = await conn.fetch(_SUGGESTION_LIST, after_id, limit)
    return [Suggestion(**dict(row)) for row in rows]


async def suggestion_list_by_station(conn: Conn, station_id: int) -> list[Suggestion]:
    return [Suggestion(**dict(row)) for row in await conn.fetch(_SUGGESTION_LIST_BY_STATION, station_id)]


async def suggestion_lock_for_ingest(conn: Conn) -> None:
    await conn.execute(_SUGGESTION_LOCK_FOR_INGEST)


_OUTCOME_FIELDS = tuple(field for field in SuggestionOutcome.__struct_fields__ if field != "cursor")


async def suggestion_outcome_horizon(conn: Conn) -> int:
    horizon: int = await conn.fetchval(_SUGGESTION_OUTCOME_HORIZON)
    return horizon


async def suggestion_outcome_list(
    conn: Conn, after: tuple[int, int], limit: int, horizon: int
) -> list[SuggestionOutcome]:
    """Outcomes after the cursor (transaction, id), of transactions below ``horizon``; each one's ``cursor``
    is its own."""
    rows = await conn.fetch(_SUGGESTION_OUTCOME_LIST, *after, limit, horizon)
    return [
        SuggestionOutcome(
            cursor=f"{row['xact']}-{row['id']}", **{field: row[field] for field in _OUTCOME_FIELDS}
        )
        for row in rows
    ]


async def suggestion_remove(
    conn: Conn,
    suggestion_ids: Sequence[int],
    outcome: Literal["dismissed", "expired"],
    reason: str,
    now: datetime | None = None,
    *,
    actor: str,
) -> list[int]:
    """The ids removed, ascending."""
    rows = await conn.fetch(_SUGGESTION_REMOVE, suggestion_ids, outcome, reason, now, actor)
    return [row["id"] for row in rows]


async def suggestion_stale(
    conn: Conn, ttl_seconds: float, limit: int, now: datetime | None = None
) -> list[int]:
    return [row["id"] for row in await conn.fetch(_SUGGESTION_STALE, ttl_seconds, now, limit)]


async def suggestion_upsert_batch(
    conn: Conn, items: Sequence[SuggestionIn], from_ids: Sequence[int], to_ids: Sequence[int]
) -> list[asyncpg.Record]:
    """Rows of (ord, id, inserted) for the items that created or updated a suggestion; the items' stations
    are ``from_ids`` and ``to_ids`` (aligned with them), as the handler resolved them."""
    columns: tuple[list[Any], ...] = ([], [], [], [])
    for item in items:
        columns[0].append(item.qty)
        columns[1].append(item.reason)
        columns[2].append(item.priority)
        columns[3].append(item.not_before)
    return await conn.fetch(_SUGGESTION_UPSERT_BATCH, from_ids, to_ids, *columns)


# task.sql


async def task_age(
    conn: Conn, minutes: float, most: int, now: datetime | None = None, limit: int = 1000
) -> int:
    """Raise the aging of ready tasks due for it (one step per ``minutes`` ready, at most ``most``), up to
    ``limit`` tasks; how many were raised."""
    raised: int = await conn.fetchval(_TASK_AGE, minutes, most, now, limit)
    return raised


async def task_approve_many(
    conn: Conn, suggestion_ids: Sequence[int], now: datetime | None = None, *, actor: str | None = None
) -> list[Task]:
    return _tasks(await conn.fetch(_TASK_APPROVE_MANY, suggestion_ids, now, actor))


async def task_cancel(
    conn: Conn, task_id: int, reason: str | None, now: datetime | None = None, *, actor: str | None = None
) -> TaskChange | None:
    return _change(await conn.fetchrow(_TASK_CANCEL, task_id, reason, now, actor))


async def task_complete(
    conn: Conn,
    task_id: int,
    worker_id: str | None,
    lease_id: UUID | None,
    now: datetime | None = None,
    *,
    actor: str | None = None,
) -> TaskChange | None:
    return _change(await conn.fetchrow(_TASK_COMPLETE, task_id, worker_id, lease_id, now, actor))


@dataclass(frozen=True, slots=True)
class Deleted:
    """One batch of retention: rows deleted, and the last finished_at among them (None when none was)."""

    tasks: int
    events: int
    last: datetime | None


async def task_delete_finished(
    conn: Conn, older_than: timedelta, limit: int, now: datetime | None = None, after: datetime | None = None
) -> Deleted:
    """Delete up to ``limit`` tasks that finished more than ``older_than`` before ``now``, from ``after`` on
    (the previous batch's ``last``), with their events."""
    row = await conn.fetchrow(_TASK_DELETE_FINISHED, older_than, limit, now, after)
    assert row is not None
    return Deleted(row["tasks"], row["events"], row["last"])


async def task_dispatch(
    conn: Conn,
    worker_id: str,
    lease_seconds: int,
    key: str | None,
    now: datetime | None = None,
    *,
    actor: str | None = None,
    one_van: bool = True,
) -> Task | None:
    row = await conn.fetchrow(_TASK_DISPATCH, worker_id, lease_seconds, key, now, actor, one_van)
    return _task_or_none(row)


async def task_dispatch_key_lock(conn: Conn, worker_id: str, key: str) -> None:
    await conn.execute(_TASK_DISPATCH_KEY_LOCK, worker_id, key)


async def task_dispatch_many(
    conn: Conn,
    worker_ids: Sequence[str],
    lease_seconds: Sequence[int],
    now: datetime | None = None,
    *,
    actors: Sequence[str | None] | None = None,
    one_van: bool = True,
) -> dict[int, Task]:
    """Tasks by the 0-based index of the worker they went to; ``actors`` aligned with the workers."""
    actors = [None] * len(worker_ids) if actors is None else actors
    rows = await conn.fetch(_TASK_DISPATCH_MANY, worker_ids, lease_seconds, now, actors, one_van)
    return {row["ord"] - 1: _task(row) for row in rows}


async def task_dispatch_near(
    conn: Conn,
    worker_id: str,
    lease_seconds: int,
    key: str | None,
    at: Position,
    now: datetime | None = None,
    *,
    actor: str | None = None,
    max_km: float | None = None,
    one_van: bool = True,
) -> Task | None:
    """The best task for a van at ``at`` (kept as its last position), within ``max_km`` when set."""
    row = await conn.fetchrow(
        _TASK_DISPATCH_NEAR,
        worker_id,
        lease_seconds,
        key,
        now,
        actor,
        at.lat,
        at.lon,
        at.accuracy_m,
        at.load,
        max_km,
        one_van,
    )
    return _task_or_none(row)


async def task_dispatch_near_many(
    conn: Conn,
    worker_ids: Sequence[str],
    lease_seconds: Sequence[int],
    at: Sequence[Position],
    now: datetime | None = None,
    *,
    keys: Sequence[str | None] | None = None,
    actors: Sequence[str | None] | None = None,
    max_km: float | None = None,
    one_van: bool = True,
) -> dict[int, Task]:
    """For each van at ``at`` (aligned with the workers, each kept as its last position), the best task for
    it, by the 0-based index of the van; ``keys`` and ``actors`` aligned with the workers."""
    nones: list[None] = [None] * len(worker_ids)
    rows = await conn.fetch(
        _TASK_DISPATCH_NEAR_MANY,
        worker_ids,
        lease_seconds,
        nones if keys is None else keys,
        [p.lat for p in at],
        [p.lon for p in at],
        [p.accuracy_m for p in at],
        [p.load for p in at],
        nones if actors is None else actors,
        max_km,
        now,
        one_van,
    )
    return {row["ord"] - 1: _task(row) for row in rows}


async def task_event_list(conn: Conn, task_id: int) -> list[TaskEvent]:
    return [TaskEvent(**dict(row)) for row in await conn.fetch(_TASK_EVENT_LIST, task_id)]


async def task_event_after(
    conn: Conn, after_id: int, limit: int, up_to: int | None = None
) -> list[LiveEvent]:
    return [LiveEvent(**dict(row)) for row in await conn.fetch(_TASK_EVENT_AFTER, after_id, limit, up_to)]


async def task_event_last_id(conn: Conn) -> int:
    last: int = await conn.fetchval(_TASK_EVENT_LAST_ID)
    return last


async def task_fail(
    conn: Conn,
    task_id: int,
    worker_id: str,
    lease_id: UUID | None,
    error: str,
    backoff_seconds: float,
    max_attempts: int,
    now: datetime | None = None,
    *,
    actor: str | None = None,
) -> TaskChange | None:
    row = await conn.fetchrow(
        _TASK_FAIL, task_id, worker_id, lease_id, error, backoff_seconds, max_attempts, now, actor
    )
    return _change(row)


async def task_get(conn: Conn, task_id: int) -> Task | None:
    return _task_or_none(await conn.fetchrow(_TASK_GET, task_id))


async def task_heartbeat(
    conn: Conn,
    task_id: int,
    worker_id: str,
    lease_id: UUID | None,
    lease_seconds: int | None,
    now: datetime | None = None,
) -> TaskChange | None:
    return _change(await conn.fetchrow(_TASK_HEARTBEAT, task_id, worker_id, lease_id, lease_seconds, now))


async def task_list(
    conn: Conn, status: str | None, worker_id: str | None, after_id: int, limit: int, *, stale: bool = False
) -> list[Task]:
    """With ``stale``, only the open tasks flagged stale (task_list_stale)."""
    return _tasks(
        await conn.fetch(_TASK_LIST_STALE if stale else _TASK_LIST, status, worker_id, after_id, limit)
    )


async def task_list_by_station_finished(conn: Conn, station_id: int, limit: int) -> list[Task]:
    return _tasks(await conn.fetch(_TASK_LIST_BY_STATION_FINISHED, station_id, limit))


async def task_list_by_station_open(conn: Conn, station_id: int) -> list[Task]:
    return _tasks(await conn.fetch(_TASK_LIST_BY_STATION_OPEN, station_id))


async def task_list_by_suggestions(conn: Conn, suggestion_ids: Sequence[int]) -> list[Task]:
    return _tasks(await conn.fetch(_TASK_LIST_BY_SUGGESTIONS, suggestion_ids))


async def task_notify_due(conn: Conn, since: datetime, now: datetime | None = None) -> datetime:
    """Notify waiters if tasks became due after ``since``; returns the clock (``now`` when given, else the
    database's) for the next call."""
    row = await conn.fetchrow(_TASK_NOTIFY_DUE, since, now)
    assert row is not None
    checked_at: datetime = row["checked_at"]
    return checked_at


async def task_pickup(
    conn: Conn,
    task_id: int,
    worker_id: str,
    lease_id: UUID | None,
    now: datetime | None = None,
    *,
    actor: str | None = None,
) -> TaskChange | None:
    return _change(await conn.fetchrow(_TASK_PICKUP, task_id, worker_id, lease_id, now, actor))


async def task_release(
    conn: Conn,
    task_id: int,
    worker_id: str,
    lease_id: UUID | None,
    reason: str | None,
    now: datetime | None = None,
    *,
    actor: str | None = None,
) -> TaskChange | None:
    return _change(await conn.fetchrow(_TASK_RELEASE, task_id, worker_id, lease_id, reason, now, actor))


async def task_rescue_expired(
    conn: Conn,
    max_attempts: int,
    limit: int,
    now: datetime | None = None,
    spared: tuple[datetime, datetime] | None = None,
) -> list[Task]:
    """Rescue leases that ran out by ``now`` (the database's clock when None), except those that ran out
    within ``spared`` (after, up to and including)."""
    spared_after, spared_until = spared or (None, None)
    rows = await conn.fetch(_TASK_RESCUE_EXPIRED, max_attempts, limit, now, spared_after, spared_until)
    return _tasks(rows)


async def task_retry(
    conn: Conn, task_id: int, reason: str | None, now: datetime | None = None, *, actor: str | None = None
) -> TaskChange | None:
    return _change(await conn.fetchrow(_TASK_RETRY, task_id, reason, now, actor))


async def task_stale_refresh(conn: Conn, station_ids: Sequence[int]) -> int:
    """Re-flag the open tasks at these stations; how many flags changed."""
    flagged: int = await conn.fetchval(_TASK_STALE_REFRESH, station_ids)
    return flagged


# ui.sql


@dataclass(frozen=True, slots=True)
class MapStation:
    id: int
    name: str
    short_name: str | None
    lat: float
    lon: float
    capacity: int | None
    num_bikes_available: int | None


@dataclass(frozen=True, slots=True)
class MapArrow:
    """A pending suggestion (kind 'suggestion') or an open task (kind: its status) between two stations."""

    kind: str
    id: int
    from_station_id: int
    to_station_id: int
    qty: int
    priority: int


@dataclass(frozen=True, slots=True)
class WorkerSeen:
    worker_id: str
    current_task_id: int | None
    lease_expires_at: datetime | None
    last_seen: datetime | None
    completed_today: int
    failures_today: int


async def ui_map_arrows(conn: Conn, limit: int) -> list[MapArrow]:
    return [MapArrow(**dict(row)) for row in await conn.fetch(_UI_MAP_ARROWS, limit)]


async def ui_map_stations(conn: Conn) -> list[MapStation]:
    return [MapStation(**dict(row)) for row in await conn.fetch(_UI_MAP_STATIONS)]


async def ui_station_tasks(conn: Conn, station_id: int, limit: int) -> list[Task]:
    return _tasks(await conn.fetch(_UI_STATION_TASKS, station_id, limit))


async def ui_suggestion_list(
    conn: Conn, station_id: int | None, min_priority: int | None, limit: int
) -> list[Suggestion]:
    rows = await conn.fetch(_UI_SUGGESTION_LIST, station_id, min_priority, limit)
    return [Suggestion(**dict(row)) for row in rows]


async def ui_task_list(
    conn: Conn,
    status: str | None,
    worker_id: str | None,
    station_id: int | None,
    since: datetime,
    until: datetime | None,
    limit: int,
) -> list[Task]:
    return _tasks(await conn.fetch(_UI_TASK_LIST, status, worker_id, station_id, since, until, limit))


async def ui_worker_list(conn: Conn, day_start: datetime) -> list[WorkerSeen]:
    return [WorkerSeen(**dict(row)) for row in await conn.fetch(_UI_WORKER_LIST, day_start)]


# worker.sql

_WORKER_FIELDS = Worker.__struct_fields__


def _worker(row: asyncpg.Record) -> Worker:
    return Worker(**{field: row[field] for field in _WORKER_FIELDS})


async def worker_get(conn: Conn, worker_id: str, now: datetime | None = None) -> Worker | None:
    row = await conn.fetchrow(_WORKER_GET, worker_id, now)
    return None if row is None else _worker(row)


async def worker_list(conn: Conn, after: str, limit: int, now: datetime | None = None) -> list[Worker]:
    return [_worker(row) for row in await conn.fetch(_WORKER_LIST, after, limit, now)]


async def worker_locate(conn: Conn, worker_id: str, at: Position, now: datetime | None = None) -> None:
    await conn.execute(_WORKER_LOCATE, worker_id, at.lat, at.lon, at.accuracy_m, at.load, now)


async def worker_off_shift(conn: Conn, worker_id: str) -> bool:
    off: bool = await conn.fetchval(_WORKER_OFF_SHIFT, worker_id)
    return off


async def worker_put(
    conn: Conn,
    worker_id: str,
    name: str,
    capacity: int,
    depot_station_id: int | None,
    on_shift: bool,
    now: datetime | None = None,
) -> bool:
    """Register or update; whether the worker was registered just now (its row is new)."""
    created: bool = await conn.fetchval(
        _WORKER_PUT, worker_id, name, capacity, depot_station_id, on_shift, now
    )
    return created


async def worker_stats(conn: Conn, worker_id: str, hours: int, now: datetime | None = None) -> WorkerStats:
    row = await conn.fetchrow(_WORKER_STATS, worker_id, hours, now)
    assert row is not None
    return WorkerStats(
        worker_id=worker_id,
        hours=hours,
        completed=row["completed"],
        tasks_per_hour=row["completed"] / hours,
        median_minutes_to_complete=row["median_minutes_to_complete"],
        failures=row["failures"],
        leases_expired=row["leases_expired"],
    )


# Bound at import, so a renamed or missing query fails at start-up rather than on the first request.
_API_KEY_AUTHENTICATE = _query_text("api_key_authenticate", "many")
_API_KEY_BOOTSTRAP_LOCK = _query_text("api_key_bootstrap_lock", "exec")
_API_KEY_COUNT = _query_text("api_key_count", "one")
_API_KEY_CREATE = _query_text("api_key_create", "one")
_API_KEY_LIST = _query_text("api_key_list", "many")
_API_KEY_REVOKE = _query_text("api_key_revoke", "one")
_CONSOLE_SESSION_CREATE = _query_text("console_session_create", "exec")
_CONSOLE_SESSION_DELETE = _query_text("console_session_delete", "exec")
_CONSOLE_SESSION_GET = _query_text("console_session_get", "one")
_HEALTH_PING = _query_text("health_ping", "one")
_MAINTENANCE_TRY_LOCK = _query_text("maintenance_try_lock", "one")
_MIGRATION_APPLIED = _query_text("migration_applied", "many")
_MIGRATION_LOCK = _query_text("migration_lock", "exec")
_MIGRATION_RECORD = _query_text("migration_record", "exec")
_MIGRATION_TABLE_CREATE = _query_text("migration_table_create", "exec")
_MIGRATION_UNLOCK = _query_text("migration_unlock", "exec")
_STATION_DEACTIVATE_MISSING = _query_text("station_deactivate_missing", "many")
_STATION_FEED_LOCK = _query_text("station_feed_lock", "exec")
_STATION_GET = _query_text("station_get", "one")
_STATION_HISTORY = _query_text("station_history", "many")
_STATION_ID_SEQUENCE_SYNC = _query_text("station_id_sequence_sync", "exec")
_STATION_LIST = _query_text("station_list", "many")
_STATION_LIST_MATCHING = _query_text("station_list_matching", "many")
_STATION_LIST_NEAR = _query_text("station_list_near", "many")
_STATION_RESOLVE = _query_text("station_resolve", "one")
_STATION_SYSTEM_GET = _query_text("station_system_get", "one")
_STATION_SYSTEM_SET = _query_text("station_system_set", "exec")
_STATION_UPSERT_MANY = _query_text("station_upsert_many", "many")
_STATS_ATTENTION = _query_text("stats_attention", "many")
_STATS_COUNTS = _query_text("stats_counts", "one")
_STATS_HOURLY = _query_text("stats_hourly", "many")
_STATS_LATENCY = _query_text("stats_latency", "many")
_SUGGESTION_LIST = _query_text("suggestion_list", "many")
_SUGGESTION_LIST_BY_STATION = _query_text("suggestion_list_by_station", "many")
_SUGGESTION_LOCK_FOR_INGEST = _query_text("suggestion_lock_for_ingest", "exec")
_SUGGESTION_OUTCOME_HORIZON = _query_text("suggestion_outcome_horizon", "one")
_SUGGESTION_OUTCOME_LIST = _query_text("suggestion_outcome_list", "many")
_SUGGESTION_REMOVE = _query_text("suggestion_remove", "many")
_SUGGESTION_STALE = _query_text("suggestion_stale", "many")
_SUGGESTION_UPSERT_BATCH = _query_text("suggestion_upsert_batch", "many")
_TASK_AGE = _query_text("task_age", "one")
_TASK_APPROVE_MANY = _query_text("task_approve_many", "many")
_TASK_CANCEL = _query_text("task_cancel", "one")
_TASK_COMPLETE = _query_text("task_complete", "one")
_TASK_DELETE_FINISHED = _query_text("task_delete_finished", "one")
_TASK_DISPATCH = _query_text("task_dispatch", "one")
_TASK_DISPATCH_KEY_LOCK = _query_text("task_dispatch_key_lock", "exec")
_TASK_DISPATCH_MANY = _query_text("task_dispatch_many", "many")
_TASK_DISPATCH_NEAR = _query_text("task_dispatch_near", "one")
_TASK_DISPATCH_NEAR_MANY = _query_text("task_dispatch_near_many", "many")
_TASK_EVENT_LIST = _query_text("task_event_list", "many")
_TASK_EVENT_AFTER = _query_text("task_event_after", "many")
_TASK_EVENT_LAST_ID = _query_text("task_event_last_id", "one")
_TASK_FAIL = _query_text("task_fail", "one")
_TASK_GET = _query_text("task_get", "one")
_TASK_HEARTBEAT = _query_text("task_heartbeat", "one")
_TASK_LIST = _query_text("task_list", "many")
_TASK_LIST_BY_STATION_FINISHED = _query_text("task_list_by_station_finished", "many")
_TASK_LIST_BY_STATION_OPEN = _query_text("task_list_by_station_open", "many")
_TASK_LIST_BY_SUGGESTIONS = _query_text("task_list_by_suggestions", "many")
_TASK_LIST_STALE = _query_text("task_list_stale", "many")
_TASK_NOTIFY_DUE = _query_text("task_notify_due", "one")
_TASK_PICKUP = _query_text("task_pickup", "one")
_TASK_RELEASE = _query_text("task_release", "one")
_TASK_RESCUE_EXPIRED = _query_text("task_rescue_expired", "many")
_TASK_RETRY = _query_text("task_retry", "one")
_TASK_STALE_REFRESH = _query_text("task_stale_refresh", "one")
_UI_MAP_ARROWS = _query_text("ui_map_arrows", "many")
_UI_MAP_STATIONS = _query_text("ui_map_stations", "many")
_UI_STATION_TASKS = _query_text("ui_station_tasks", "many")
_UI_SUGGESTION_LIST = _query_text("ui_suggestion_list", "many")
_UI_TASK_LIST = _query_text("ui_task_list", "many")
_UI_WORKER_LIST = _query_text("ui_worker_list", "many")
_WORKER_GET = _query_text("worker_get", "one")
_WORKER_LIST = _query_text("worker_list", "many")
_WORKER_LOCATE = _query_text("worker_locate", "exec")
_WORKER_OFF_SHIFT = _query_text("worker_off_shift", "one")
_WORKER_PUT = _query_text("worker_put", "one")
_WORKER_STATS = _query_text("worker_stats", "one")
