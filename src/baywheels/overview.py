"""The overview the console shows (GET /stats) and the business figures of /metrics, read from the queries in
sql/queries/stats.sql: each reads an index of the open work, of the tasks that need a person, or of the last
day's events, so its cost does not grow with the history."""

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

import asyncpg

from . import queries
from .models import HourCounts, Stats

ATTENTION_LIMIT = 20
# /metrics reads the figures at most once per this many seconds per process, whatever the number of scrapers.
METRICS_CACHE_SECONDS = 5.0


async def read(pool: asyncpg.Pool, now: datetime | None = None) -> Stats:
    """Every figure from one snapshot (a read-only repeatable-read transaction), so they agree."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        counts = await queries.stats_counts(conn, now)
        hourly = await queries.stats_hourly(conn, now)
        latency = await queries.stats_latency(conn, now)
        attention = await queries.stats_attention(conn, ATTENTION_LIMIT)
    oldest = None
    if counts.oldest_ready_since is not None:
        oldest = max(0.0, (counts.at - counts.oldest_ready_since).total_seconds())
    last_24h = HourCounts(
        hour=hourly[0].hour,
        created=sum(hour.created for hour in hourly),
        dispatched=sum(hour.dispatched for hour in hourly),
        completed=sum(hour.completed for hour in hourly),
        failed=sum(hour.failed for hour in hourly),
        canceled=sum(hour.canceled for hour in hourly),
    )
    return Stats(
        at=counts.at,
        counts=counts.states,
        ready_due=counts.ready_due,
        oldest_ready_seconds=oldest,
        hourly=hourly,
        last_24h=last_24h,
        ready_to_assigned=latency["ready_assigned"],
        assigned_to_completed=latency["assigned_completed"],
        attention=attention,
        attention_total=counts.states.stalled + counts.states.failed,
    )


class Cached:
    """The figures for /metrics: read at most once per METRICS_CACHE_SECONDS, concurrent scrapes sharing one
    read."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stats: Stats | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, pool: asyncpg.Pool) -> Stats:
        async with self._lock:
            if self._stats is None or self._clock() - self._read_at >= METRICS_CACHE_SECONDS:
                self._stats = await read(pool)
                self._read_at = self._clock()
            return self._stats
