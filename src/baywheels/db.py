"""The connection pool and the migration runner."""

import asyncpg
import structlog

from . import queries, sql
from .settings import Settings

log = structlog.get_logger(__name__)

# Dispatch and friends are short index lookups: JIT compilation only adds latency to them.
SERVER_SETTINGS = {"application_name": "baywheels", "jit": "off"}


async def create_pool(settings: Settings, dsn: str) -> asyncpg.Pool:
    """Connections are opened lazily past POOL_MIN_SIZE and re-opened after the database restarts."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        command_timeout=settings.db_command_timeout,
        timeout=settings.db_connect_timeout,
        server_settings=SERVER_SETTINGS,
    )
    assert pool is not None
    return pool


async def migrate(dsn: str) -> list[int]:
    """Apply the migrations not applied yet, each in its own transaction; return the versions applied.

    An advisory lock makes instances that start together take turns; the second then finds nothing to do.
    """
    conn = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
    try:
        await queries.migration_lock(conn)
        try:
            await queries.migration_table_create(conn)
            applied = set(await queries.migration_applied(conn))
            done = []
            for migration in sql.migrations():
                if migration.version in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.text)
                    await queries.migration_record(conn, migration.version, migration.name)
                log.info("migration_applied", version=migration.version, name=migration.name)
                done.append(migration.version)
            return done
        finally:
            await queries.migration_unlock(conn)
    finally:
        await conn.close()
