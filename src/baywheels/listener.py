"""The one LISTEN connection of a process. It owns that connection and its reconnection, and hands every
notification on CHANNEL to its subscribers: the dispatcher today, the console's live updates later. Nothing
else opens a LISTEN.

While the database is away, the listener tries to connect again every few tens of milliseconds (a refused
connection costs next to nothing), so it is back within about PROBE_MAX of the database, not after a backoff
grown to seconds. Notifications sent while it was away are lost, so on its return every subscriber is told
(``reconnected``) and looks for itself: the dispatcher lets all its sleeping long-pollers look once.
"""

import asyncio
import contextvars
import time
from typing import Protocol

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from . import db
from .settings import Settings

log = structlog.get_logger(__name__)

CHANNEL = "baywheels_task_ready"

# Delays between connection attempts while the database is away: doubling from PROBE_FIRST, capped at
# PROBE_MAX, which bounds how late a returning database is noticed.
PROBE_FIRST = 0.01
PROBE_MAX = 0.05


class Subscriber(Protocol):
    def notified(self, payload: str) -> None:
        """A notification arrived on CHANNEL. Called on the event loop: must not block."""

    def reconnected(self) -> None:
        """The listener is back after losing its connection: notifications may have been missed."""


class Listener:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._dsn = db.session_dsn(settings)  # not through a transaction pooler
        self._subscribers: list[Subscriber] = []
        self._conn: asyncpg.Connection | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closing = False

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def start(self) -> None:
        """Connect and LISTEN; raises when the database cannot be reached (start-up fails, as the pool's)."""
        await self._listen()

    async def stop(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()

    async def _listen(self) -> None:
        conn = await db.connect(
            self._dsn, timeout=self._settings.db_connect_timeout, server_settings=db.SERVER_SETTINGS
        )
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_lost)
        self._conn = conn

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber.notified(str(payload))
            except Exception:
                log.exception("listener_subscriber_failed", subscriber=type(subscriber).__name__)

    def _on_lost(self, conn: asyncpg.Connection | PoolConnectionProxy) -> None:
        self._conn = None
        if not self._closing and self._reconnecting is None:
            log.warning("listener_lost")
            # Not under the context of whatever request happened to be running.
            self._reconnecting = asyncio.create_task(self._reconnect(), context=contextvars.Context())

    async def _reconnect(self) -> None:
        started = time.monotonic()
        delay = PROBE_FIRST
        attempts = 0
        try:
            while not self._closing:
                attempts += 1
                try:
                    await self._listen()
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                    # One line per outage, not one per attempt (there are twenty a second).
                    if attempts == 1:
                        log.warning("listener_reconnect_failed", error=f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, PROBE_MAX)
                else:
                    log.info(
                        "listener_reconnected",
                        attempts=attempts,
                        away_seconds=round(time.monotonic() - started, 3),
                    )
                    for subscriber in self._subscribers:
                        try:
                            subscriber.reconnected()
                        except Exception:
                            log.exception("listener_subscriber_failed", subscriber=type(subscriber).__name__)
                    return
        finally:
            self._reconnecting = None
