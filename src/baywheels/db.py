"""The connection pool and the migration runner."""

from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolAcquireContext

from . import queries, sql
from .settings import Settings

log = structlog.get_logger(__name__)

# Dispatch and friends are short index lookups: JIT compilation only adds latency to them.
SERVER_SETTINGS = {"application_name": "baywheels", "jit": "off"}


class Pool(asyncpg.Pool):
    """asyncpg's pool, but every acquire, also the one inside ``pool.fetch()`` and the like, gives up after
    POOL_ACQUIRE_TIMEOUT with a TimeoutError (a 503) instead of waiting as long as the pool stays busy."""

    __slots__ = ("_acquire_timeout",)

    def __init__(self, dsn: str, *, acquire_timeout: float, **kwargs: Any) -> None:
        super().__init__(dsn, **kwargs)
        self._acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        return super().acquire(timeout=self._acquire_timeout if timeout is None else timeout)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection without asyncpg's reset query (``RESET ALL; UNLISTEN *; ...``), a second round
    trip for every statement. Pool connections never change session state: LISTEN and session advisory locks
    live on their own connections (dispatcher, reaper, migrate). asyncpg still rolls back an open
    transaction before calling this."""


async def create_pool(settings: Settings, dsn: str) -> asyncpg.Pool:
    """Connections are opened lazily past POOL_MIN_SIZE and re-opened after the database restarts."""
    # What asyncpg.create_pool does, with our class; the defaults it would pass are spelled out.
    pool = Pool(
        dsn,
        acquire_timeout=settings.pool_acquire_timeout,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        command_timeout=settings.db_command_timeout,
        timeout=settings.db_connect_timeout,
        server_settings=SERVER_SETTINGS,
        reset=_keep_session,
    )
    await pool
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
