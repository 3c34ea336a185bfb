"""The reaper: rescues tasks whose lease expired, and wakes long-polling workers when delayed or backed-off
tasks become due. Every instance runs one, but only the holder of a PostgreSQL advisory lock works; the
others wait to take over if its connection goes away."""

import asyncio
from datetime import UTC, datetime

import asyncpg
import structlog

from . import db, queries
from .metrics import TRANSITIONS
from .settings import Settings

log = structlog.get_logger(__name__)

BATCH = 1000


class Reaper:
    def __init__(self, settings: Settings, dsn: str) -> None:
        self._settings = settings
        self._dsn = dsn

    async def run(self) -> None:
        interval = self._settings.reaper_interval_seconds
        while True:
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=self._settings.db_connect_timeout, server_settings=db.SERVER_SETTINGS
                )
                try:
                    while not await queries.task_reaper_try_lock(conn):  # noqa: ASYNC110 (polls the lock)
                        await asyncio.sleep(interval * 5)
                    log.info("reaper_leading")
                    await self._lead(conn)
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("reaper_error", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(max(interval, 1.0))

    async def _lead(self, conn: asyncpg.Connection) -> None:
        since = datetime(2000, 1, 1, tzinfo=UTC)  # the first pass wakes waiters for anything already due
        while True:
            rescued = await queries.task_rescue_expired(conn, self._settings.task_max_attempts, BATCH)
            for task in rescued:
                log.info("lease_expired", task_id=task.id, status=task.status, attempts=task.attempts)
            TRANSITIONS.labels("lease_expired").inc(len(rescued))
            since = await queries.task_notify_due(conn, since)
            if len(rescued) < BATCH:
                await asyncio.sleep(self._settings.reaper_interval_seconds)
