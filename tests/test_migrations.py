"""The migration runner on a real PostgreSQL: idempotent, recorded, safe when instances start together, and
the schema's constraints hold."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from baywheels import db, sql
from conftest import with_database
from helpers import wait_for_lock_waiters


async def test_migrating_again_does_nothing(database_url: str, pool: asyncpg.Pool) -> None:
    before = await pool.fetch("SELECT * FROM schema_migrations ORDER BY version")
    assert await db.migrate(database_url) == []
    assert await pool.fetch("SELECT * FROM schema_migrations ORDER BY version") == before


async def test_one_row_per_migration_file(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(row["version"], row["name"]) for row in rows] == [(m.version, m.name) for m in sql.migrations()]


@pytest.fixture
async def empty_database(server_dsn: str) -> AsyncIterator[str]:
    """A DSN for a database with no schema at all."""
    name = f"baywheels_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield with_database(server_dsn, name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_instances_migrating_together_apply_each_migration_once(empty_database: str) -> None:
    every = [m.version for m in sql.migrations()]
    async with asyncpg.create_pool(empty_database, min_size=1, max_size=2) as pool:
        # Hold the migration lock until both runners are queued on it, so they really start together.
        async with pool.acquire() as holder:
            await holder.execute("SELECT pg_advisory_lock(hashtext('baywheels.migrate'))")
            runs = [asyncio.create_task(db.migrate(empty_database)) for _ in range(2)]
            await wait_for_lock_waiters(pool, 2)
            await holder.execute("SELECT pg_advisory_unlock(hashtext('baywheels.migrate'))")
        applied = await asyncio.gather(*runs)
        assert sorted(applied) == [[], every]
        assert [r["version"] for r in await pool.fetch("SELECT version FROM schema_migrations")] == every
        assert await pool.fetchval("SELECT to_regclass('tasks') IS NOT NULL")


async def test_a_fresh_database_gets_every_migration(empty_database: str) -> None:
    assert await db.migrate(empty_database) == [m.version for m in sql.migrations()]
    assert await db.migrate(empty_database) == []


async def test_the_database_refuses_an_unknown_status(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as raised:
        await pool.execute(
            "INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, status) "
            "VALUES (1, 1, 2, 3, 'r', 'bogus')"
        )
    assert raised.value.constraint_name == "tasks_status_valid"
    assert await pool.fetchval("SELECT count(*) FROM tasks") == 0


@pytest.mark.parametrize(
    ("values", "constraint"),
    [
        ("1, 1, 1, 3", "suggestions_stations_differ"),
        ("1, 2, 0, 3", "suggestions_qty_positive"),
        ("0, 2, 1, 3", "suggestions_from_station_positive"),
    ],
)
async def test_suggestion_constraints(pool: asyncpg.Pool, values: str, constraint: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as raised:
        await pool.execute(
            f"INSERT INTO suggestions (from_station_id, to_station_id, qty, priority, reason) "  # noqa: S608
            f"VALUES ({values}, 'r')"
        )
    assert raised.value.constraint_name == constraint


async def test_one_pending_suggestion_per_pair(pool: asyncpg.Pool) -> None:
    insert = "INSERT INTO suggestions (from_station_id, to_station_id, qty, reason) VALUES (1, 2, 3, 'r')"
    await pool.execute(insert)
    with pytest.raises(asyncpg.UniqueViolationError) as raised:
        await pool.execute(insert)
    assert raised.value.constraint_name == "suggestions_pair_key"
