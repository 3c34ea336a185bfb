"""The maintenance loop: periodic jobs that must run in one instance at a time, as River's
``internal/maintenance`` does. Every instance runs the loop, but only the holder of one PostgreSQL advisory
lock (on its own connection) runs the jobs; the others poll the lock and take over when its connection goes
away. Each job is a small object with an interval and one query: lease rescue, due-task announcements
and suggestion expiry today, a station-feed refresh and retention later.

After an outage (the leader lost the database and got it back) the jobs hear how long it lasted: lease
rescue then spares, for a grace as long as the outage (capped at LEASE_GRACE_MAX_SECONDS), the leases that
ran out while the database was unreachable, so a holder whose complete got 503 and is retried still lands.
"""

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from . import db, queries
from .metrics import TRANSITIONS
from .settings import Settings

log = structlog.get_logger(__name__)

# Errors that mean "the database went away"; the loop waits and connects again. InternalClientError too: a
# statement on a connection the server has just terminated is refused with it (see db.Pool).
_DATABASE_GONE = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


@dataclass(frozen=True, slots=True)
class Outage:
    """The leader could not reach the database from ``began`` to ``ended`` (the database's clock)."""

    began: datetime
    ended: datetime

    @property
    def seconds(self) -> float:
        return (self.ended - self.began).total_seconds()


class Job:
    """A periodic job: ``run`` takes one pass on the leader's connection, every ``interval`` seconds."""

    name: str
    interval: float

    async def run(self, conn: queries.Conn) -> bool:
        """One pass; True when work was left over, to run again at once rather than after the interval."""
        raise NotImplementedError

    def resumed(self, outage: Outage) -> None:
        """The leader is back after an outage (also told to a newly elected leader that had one)."""


class LeaseRescue(Job):
    """Takes back tasks whose lease ran out: ready again, stalled after pickup, failed at max attempts."""

    name = "lease_rescue"
    batch = 1000

    def __init__(self, settings: Settings) -> None:
        self.interval = settings.reaper_interval_seconds
        self._max_attempts = settings.task_max_attempts
        self._grace_max = settings.lease_grace_max_seconds
        self._spared: tuple[datetime, datetime] | None = None
        self._spared_until = 0.0  # time.monotonic()

    def resumed(self, outage: Outage) -> None:
        grace = min(outage.seconds, self._grace_max)
        if grace <= 0:
            return
        self._spared = (outage.began, outage.ended)
        self._spared_until = time.monotonic() + grace
        log.info(
            "lease_grace",
            outage_began=outage.began.isoformat(),
            outage_ended=outage.ended.isoformat(),
            grace_seconds=round(grace, 3),
        )

    async def run(self, conn: queries.Conn) -> bool:
        if self._spared is not None and time.monotonic() >= self._spared_until:
            self._spared = None
            log.info("lease_grace_over")
        rescued = await queries.task_rescue_expired(conn, self._max_attempts, self.batch, spared=self._spared)
        for task in rescued:
            log.info("lease_expired", task_id=task.id, status=task.status, attempts=task.attempts)
        TRANSITIONS.labels("lease_expired").inc(len(rescued))
        return len(rescued) == self.batch


class DueAnnouncer(Job):
    """Wakes long-polling workers when delayed or backed-off tasks become due: no trigger fires for the mere
    passing of time."""

    name = "due_announcer"

    def __init__(self, settings: Settings) -> None:
        self.interval = settings.reaper_interval_seconds
        # The first pass wakes waiters for anything already due.
        self._since = datetime(2000, 1, 1, tzinfo=UTC)

    async def run(self, conn: queries.Conn) -> bool:
        self._since = await queries.task_notify_due(conn, self._since)
        return False


class SuggestionExpiry(Job):
    """SUGGESTION_TTL: pending suggestions not posted again for that long leave the list, recorded as
    expired, a small batch per pass so that no pass holds many rows."""

    name = "suggestion_expiry"
    batch = 500

    def __init__(self, settings: Settings, ttl_seconds: float) -> None:
        self.interval = max(settings.reaper_interval_seconds, 1.0)
        self._ttl = ttl_seconds

    async def run(self, conn: queries.Conn) -> bool:
        assert not isinstance(conn, asyncpg.Pool)  # one connection: the batch is one transaction
        expired = await expire_suggestions(conn, self._ttl, self.batch)
        if expired:
            log.info("suggestions_expired", count=len(expired), first_id=expired[0], last_id=expired[-1])
        return len(expired) == self.batch


async def expire_suggestions(
    conn: asyncpg.Connection | PoolConnectionProxy,
    ttl_seconds: float,
    limit: int,
    now: datetime | None = None,
) -> list[int]:
    """One batch of SUGGESTION_TTL: the ids expired, ascending."""
    async with conn.transaction():
        stale = await queries.suggestion_stale(conn, ttl_seconds, limit, now)
        if not stale:
            return []
        reason = f"not updated for {ttl_seconds:g} s"
        return await queries.suggestion_remove(conn, stale, "expired", reason, now, actor="system")


def default_jobs(settings: Settings) -> list[Job]:
    jobs: list[Job] = [LeaseRescue(settings), DueAnnouncer(settings)]
    if settings.suggestion_ttl is not None:
        jobs.append(SuggestionExpiry(settings, settings.suggestion_ttl))
    return jobs


class Maintenance:
    def __init__(self, settings: Settings, jobs: list[Job]) -> None:
        self._settings = settings
        self._dsn = db.session_dsn(settings)  # not through a transaction pooler
        self.jobs = jobs
        # When this process last heard from the database (time.monotonic()), and whether it lost it since:
        # together they date an outage.
        self._last_contact: float | None = None
        self._lost = False

    async def run(self) -> None:
        """Until cancelled: connect, win the lock (or wait for it), run the jobs; on any database error
        connect again."""
        interval = self._settings.reaper_interval_seconds
        while True:
            try:
                conn = await db.connect(
                    self._dsn, timeout=self._settings.db_connect_timeout, server_settings=db.SERVER_SETTINGS
                )
                try:
                    while not await self._try_lock(conn):  # noqa: ASYNC110 (polls the lock)
                        await asyncio.sleep(interval * 5)
                    log.info("maintenance_leading", jobs=[job.name for job in self.jobs])
                    await self._lead(conn)
                finally:
                    await conn.close()
            except _DATABASE_GONE as exc:
                self._lost = True
                log.warning("maintenance_error", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(max(interval, 1.0))
            except Exception:
                # A fault of ours in a job: logged, and the loop carries on (leadership passes on meanwhile).
                log.exception("maintenance_failed")
                await asyncio.sleep(max(interval, 1.0))

    async def _try_lock(self, conn: asyncpg.Connection) -> bool:
        locked, now = await queries.maintenance_try_lock(conn)
        contact = time.monotonic()
        if self._lost and self._last_contact is not None:
            # Measured on this process's clock (immune to the two clocks' difference), dated on the
            # database's, which lease_expires_at is on. It may start up to a pass early: a longer grace.
            outage = Outage(now - timedelta(seconds=contact - self._last_contact), now)
            for job in self.jobs:
                job.resumed(outage)
        self._lost = False
        self._last_contact = contact
        return locked

    async def _lead(self, conn: asyncpg.Connection) -> None:
        loop = asyncio.get_running_loop()
        due = dict.fromkeys(self.jobs, loop.time())
        while True:
            # Jobs with the same interval stay in step: each is next due an interval after this pass began.
            began = loop.time()
            for job in self.jobs:
                if due[job] <= began:
                    more = await job.run(conn)
                    self._last_contact = time.monotonic()
                    due[job] = began if more else began + job.interval
            await asyncio.sleep(max(0.0, min(due.values()) - loop.time()))
