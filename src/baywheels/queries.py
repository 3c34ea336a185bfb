"""One typed function per named query in ``sql/queries``. The connection comes first, so the caller owns the
transaction; rows become Structs here and nowhere else."""

from collections.abc import Sequence
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from . import sql
from .models import Suggestion, SuggestionIn, Task, TaskEvent

Conn = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool


def _q(name: str, cardinality: sql.Cardinality) -> str:
    query = sql.queries()[name]
    if query.cardinality != cardinality:
        raise ValueError(f"query {name} is :{query.cardinality}, used as :{cardinality}")
    return query.text


_TASK_FIELDS = Task.__struct_fields__


def _task(row: asyncpg.Record) -> Task:
    return Task(**{field: row[field] for field in _TASK_FIELDS})


def _tasks(rows: Sequence[asyncpg.Record]) -> list[Task]:
    return [_task(row) for row in rows]


# health.sql


async def health_ping(conn: Conn) -> None:
    await conn.fetchval(_HEALTH_PING)


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


# suggestion.sql


async def suggestion_list(conn: Conn, after_id: int, limit: int) -> list[Suggestion]:
    rows = await conn.fetch(_SUGGESTION_LIST, after_id, limit)
    return [Suggestion(**dict(row)) for row in rows]


async def suggestion_lock_for_ingest(conn: Conn) -> None:
    await conn.execute(_SUGGESTION_LOCK_FOR_INGEST)


async def suggestion_upsert_batch(conn: Conn, items: Sequence[SuggestionIn]) -> list[asyncpg.Record]:
    """Rows of (ord, id, inserted) for the items that created or updated a suggestion."""
    columns: tuple[list[Any], ...] = ([], [], [], [], [])
    for item in items:
        columns[0].append(item.from_station_id)
        columns[1].append(item.to_station_id)
        columns[2].append(item.qty)
        columns[3].append(item.reason)
        columns[4].append(item.priority)
    return await conn.fetch(_SUGGESTION_UPSERT_BATCH, *columns)


# task.sql


async def task_approve_many(conn: Conn, suggestion_ids: Sequence[int]) -> list[Task]:
    return _tasks(await conn.fetch(_TASK_APPROVE_MANY, suggestion_ids))


async def task_complete(conn: Conn, task_id: int, worker_id: str | None) -> Task | None:
    row = await conn.fetchrow(_TASK_COMPLETE, task_id, worker_id)
    return None if row is None else _task(row)


async def task_dispatch(conn: Conn, worker_id: str) -> Task | None:
    row = await conn.fetchrow(_TASK_DISPATCH, worker_id)
    return None if row is None else _task(row)


async def task_event_list(conn: Conn, task_id: int) -> list[TaskEvent]:
    return [TaskEvent(**dict(row)) for row in await conn.fetch(_TASK_EVENT_LIST, task_id)]


async def task_get(conn: Conn, task_id: int) -> Task | None:
    row = await conn.fetchrow(_TASK_GET, task_id)
    return None if row is None else _task(row)


async def task_list(
    conn: Conn, status: str | None, worker_id: str | None, after_id: int, limit: int
) -> list[Task]:
    return _tasks(await conn.fetch(_TASK_LIST, status, worker_id, after_id, limit))


async def task_list_by_suggestions(conn: Conn, suggestion_ids: Sequence[int]) -> list[Task]:
    return _tasks(await conn.fetch(_TASK_LIST_BY_SUGGESTIONS, suggestion_ids))


# Bound at import, so a renamed or missing query fails at start-up rather than on the first request.
_HEALTH_PING = _q("health_ping", "one")
_MIGRATION_APPLIED = _q("migration_applied", "many")
_MIGRATION_LOCK = _q("migration_lock", "exec")
_MIGRATION_RECORD = _q("migration_record", "exec")
_MIGRATION_TABLE_CREATE = _q("migration_table_create", "exec")
_MIGRATION_UNLOCK = _q("migration_unlock", "exec")
_SUGGESTION_LIST = _q("suggestion_list", "many")
_SUGGESTION_LOCK_FOR_INGEST = _q("suggestion_lock_for_ingest", "exec")
_SUGGESTION_UPSERT_BATCH = _q("suggestion_upsert_batch", "many")
_TASK_APPROVE_MANY = _q("task_approve_many", "many")
_TASK_COMPLETE = _q("task_complete", "one")
_TASK_DISPATCH = _q("task_dispatch", "one")
_TASK_EVENT_LIST = _q("task_event_list", "many")
_TASK_GET = _q("task_get", "one")
_TASK_LIST = _q("task_list", "many")
_TASK_LIST_BY_SUGGESTIONS = _q("task_list_by_suggestions", "many")
