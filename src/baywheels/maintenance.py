"""The maintenance loop: periodic jobs that must run in one instance at a time, as River's
``internal/maintenance`` does. Every instance runs the loop, but only the holder of one PostgreSQL advisory
lock (on its own connection) runs the jobs; the others poll the lock and take over when its connection goes
away. Each job is a small object with an interval and one query: lease rescue, due-task announcements,
suggestion expiry, the station feed's refresh (GBFS_URL), priority aging and retention (RETENTION_DAYS).

After an outage (the leader lost the database and got it back) the jobs hear how long it lasted: lease
rescue then spares, for a grace as long as the outage (capped at LEASE_GRACE_MAX_SECONDS), the leases that
ran out while the database was unreachable, so a holder whose complete got 503 and is retried still lands.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from . import db, gbfs, queries
from .metrics import REAPER_LAST_RUN, REAPER_OUTCOMES, REAPER_RESCUED, RETENTION_DELETED, TRANSITIONS
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

    def stop(self) -> None:
        """The loop is stopping: cancel anything the job runs beside it."""


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
            REAPER_OUTCOMES.labels(task.status).inc()
        TRANSITIONS.labels("lease_expired").inc(len(rescued))
        REAPER_RESCUED.observe(len(rescued))
        REAPER_LAST_RUN.set(time.time())
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


class FeedRefresh(Job):
    """Keeps the station registry current from GBFS_URL: imports at once when its instance becomes the
    leader, then whenever a file's ttl has run out (at least GBFS_REFRESH_MIN_SECONDS apart) and a conditional
    GET finds a change. The HTTP reads run beside the loop, so a slow feed never delays lease rescue; the
    import itself runs on the leader's connection, in one transaction. A refused feed is logged and tried
    again at the next read, the registry left as it was."""

    name = "gbfs_refresh"

    def __init__(self, settings: Settings) -> None:
        assert settings.gbfs_url is not None
        self.interval = settings.reaper_interval_seconds  # how often the loop looks in on a read in flight
        self._url = settings.gbfs_url
        self._reader = gbfs.FeedReader(settings.gbfs_url, settings.gbfs_timeout_seconds)
        self._min_seconds = settings.gbfs_refresh_min_seconds
        self._reading: asyncio.Task[tuple[dict[str, bytes], bool]] | None = None
        self._next_read = 0.0  # time.monotonic()
        # Read but not imported yet (refused, or the database went away meanwhile): import at the next read
        # even if the server then says 304.
        self._pending = False

    async def run(self, conn: queries.Conn) -> bool:
        if self._reading is None:
            if time.monotonic() >= self._next_read:
                self._reading = asyncio.create_task(self._reader.read())
            return False
        if not self._reading.done():
            return False
        reading, self._reading = self._reading, None
        self._next_read = time.monotonic() + self._min_seconds
        try:
            files, changed = reading.result()
            self._pending = self._pending or changed
            if self._pending:
                assert isinstance(conn, asyncpg.Connection)
                result = await gbfs.store(conn, gbfs.parse(files), self._url)
                self._pending = False
                log.info("gbfs_imported", url=self._url, **gbfs.log_fields(result))
        except gbfs.FeedError as exc:
            log.warning("gbfs_refused", url=self._url, error=str(exc))
            return False
        self._next_read = time.monotonic() + max(self._min_seconds, self._reader.next_due())
        return False

    def stop(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None


class PriorityAging(Job):
    """Raises the effective priority of tasks that have waited (PRIORITY_AGING_MINUTES per step, at most
    PRIORITY_AGING_MAX). Stored on the task, so dispatch keeps reading one index in order."""

    name = "priority_aging"
    batch = 1000

    def __init__(self, settings: Settings) -> None:
        self.interval = settings.reaper_interval_seconds
        self._minutes = settings.priority_aging_minutes
        self._most = settings.priority_aging_max

    async def run(self, conn: queries.Conn) -> bool:
        raised = await queries.task_age(conn, self._minutes, self._most, limit=self.batch)
        return raised == self.batch


class Retention(Job):
    """Deletes finished tasks and their events RETENTION_DAYS after they finished, a batch per transaction,
    so no lock is held for long and history's size never reaches dispatch. While batches come back full it
    runs again at once (the other jobs still take their turns between batches); one log line per sweep."""

    name = "retention"
    interval = 60.0
    batch = 1000

    def __init__(self, settings: Settings, now: Callable[[], datetime | None] = lambda: None) -> None:
        assert settings.retention_days is not None
        self._keep = timedelta(days=settings.retention_days)
        # The database's clock (None) unless a test sets one.
        self._now = now
        self._swept = [0, 0]
        # Where the sweep under way has got to (None: a new sweep starts from the oldest).
        self._after: datetime | None = None

    async def run(self, conn: queries.Conn) -> bool:
        deleted = await queries.task_delete_finished(conn, self._keep, self.batch, self._now(), self._after)
        RETENTION_DELETED.labels("tasks").inc(deleted.tasks)
        RETENTION_DELETED.labels("task_events").inc(deleted.events)
        self._swept[0] += deleted.tasks
        self._swept[1] += deleted.events
        more = deleted.tasks == self.batch
        self._after = deleted.last if more else None
        if not more and self._swept[0]:
            log.info("retention_deleted", tasks=self._swept[0], task_events=self._swept[1])
            self._swept = [0, 0]
        return more


def default_jobs(settings: Settings) -> list[Job]:
    jobs: list[Job] = [LeaseRescue(settings), DueAnnouncer(settings)]
    if settings.suggestion_ttl is not None:
        jobs.append(SuggestionExpiry(settings, settings.suggestion_ttl))
    if settings.gbfs_url is not None:
        jobs.append(FeedRefresh(settings))
    if settings.priority_aging_minutes > 0 and settings.priority_aging_max > 0:
        jobs.append(PriorityAging(settings))
    if settings.retention_days is not None:
        jobs.append(Retention(settings))
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
        try:
            await self._run()
        finally:
            for job in self.jobs:
                job.stop()

    async def _run(self) -> None:
        interval = self._settings.reaper_interval_seconds
        while True:
            try:
                conn = await db.connect(
                    self._dsn,
                    timeout=self._settings.db_connect_timeout,
                    server_settings=db.SERVER_SETTINGS,
                    # Its statements timed, not traced: a pass every second would be a trace every second.
                    connection_class=db.TimedConnection,
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
