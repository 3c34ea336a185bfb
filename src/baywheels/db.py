"""The connection pools (the primary's, a read replica's) and the migration runner."""

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, TypeVar, cast

import asyncpg
import structlog
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy
from prometheus_client import Histogram

from . import queries, sql
from .metrics import STATEMENT_SECONDS
from .settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Dispatch and friends are short index lookups: JIT compilation only adds latency to them.
SERVER_SETTINGS = {"application_name": "baywheels", "jit": "off"}


# asyncpg checks its protocol's state before it writes a statement, and refuses with one of these when the
# connection cannot take one: the statement never left this process.
_REFUSED_UNSENT = ("cannot switch to state", "cannot perform operation")


def dsn(settings: Settings) -> str:
    """The DSN everything connects to; the CLI fills it in for the embedded server before the app exists."""
    if settings.database_url is None:
        raise ValueError("settings.database_url is unset (the CLI fills it for the embedded server)")
    return settings.database_url


def session_dsn(settings: Settings) -> str:
    """The DSN of the connections that need a session of their own (LISTEN, advisory locks): straight to
    PostgreSQL when DATABASE_URL is a transaction pooler."""
    return settings.direct_database_url or dsn(settings)


def pool_server_settings(settings: Settings) -> dict[str, str]:
    """PgBouncer refuses a start-up parameter it does not know (``jit``): behind it, the database's own
    setting applies (``ALTER DATABASE ... SET jit = off``, docs/operations.md)."""
    if settings.behind_pooler:
        return {"application_name": SERVER_SETTINGS["application_name"]}
    return SERVER_SETTINGS


class DatabaseUnreachable(asyncpg.ClientCannotConnectError):
    """No connection could be opened: refused, unreachable, or the host's name did not resolve. The OS says so
    with many OSError kinds (ConnectionRefusedError, socket.gaierror, a plain OSError for EHOSTUNREACH or for
    asyncio's "Multiple exceptions" when every address of a name fails); any OSError while connecting means
    this, and only then, so errors.py can answer 503 for it without answering 503 for every OSError."""


def _statement_observers() -> dict[str, Histogram]:
    """The latency histogram's child of each named query, by its text: queries.py passes the very string
    objects sql.py read, so a lookup hashes nothing new."""
    return {query.text: STATEMENT_SECONDS.labels(name) for name, query in sql.queries().items()}


_OBSERVERS = _statement_observers()
_OTHER = STATEMENT_SECONDS.labels("other")  # BEGIN and COMMIT, type introspection, migrations


_NAMES = {query.text: name for name, query in sql.queries().items()}


def query_name(text: str) -> str:
    """The name of the query in sql/queries with this text, else "other"."""
    return _NAMES.get(text, "other")


class TimedConnection(asyncpg.Connection):
    """Every statement timed into baywheels_db_statement_duration_seconds under its query's name: a
    perf_counter pair and one observe each, nothing more (this is every dispatch's path)."""

    __slots__ = ()

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        started = perf_counter()
        try:
            return await super().execute(query, *args, **kwargs)
        finally:
            _OBSERVERS.get(query, _OTHER).observe(perf_counter() - started)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        started = perf_counter()
        try:
            return await super().fetch(query, *args, **kwargs)
        finally:
            _OBSERVERS.get(query, _OTHER).observe(perf_counter() - started)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        started = perf_counter()
        try:
            return await super().fetchrow(query, *args, **kwargs)
        finally:
            _OBSERVERS.get(query, _OTHER).observe(perf_counter() - started)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        started = perf_counter()
        try:
            return await super().fetchval(query, *args, **kwargs)
        finally:
            _OBSERVERS.get(query, _OTHER).observe(perf_counter() - started)


def connection_class(settings: Settings) -> type[asyncpg.Connection]:
    """Timed statements; traced too when OTEL_EXPORTER_OTLP_ENDPOINT is set (tracing.py, imported then)."""
    if settings.tracing_on:
        from . import tracing  # OpenTelemetry is imported only when tracing is on

        return tracing.TracedConnection
    return TimedConnection


async def connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg.connect, with connection failures named as such; the pool, the listener and the maintenance
    loop all connect through it."""
    try:
        return await asyncpg.connect(*args, **kwargs)
    except OSError as exc:
        raise DatabaseUnreachable(f"cannot connect to the database: {exc}") from exc


class ConnectionLost(asyncpg.ConnectionDoesNotExistError):
    """The server closed a pool connection while it was in use. asyncpg raises whatever the next call on it
    meets (``InternalClientError: cannot switch to state 12``, ``InterfaceError: cannot call
    Transaction.__aexit__(): the underlying connection is closed``); this names it as the connection loss it
    is, a 503. Subclasses asyncpg's own connection-loss error, so errors.py needs no entry of its own."""


class StatementNotSent(ConnectionLost):
    """ConnectionLost before the statement was written: safe to run again on another connection."""


def _lost(conn: PoolConnectionProxy | None) -> bool:
    """Whether the server closed this connection; asyncpg detaches the proxy of a connection it cleaned up."""
    if conn is None:
        return False
    # is_closed() on a detached proxy raises instead of answering: look at the connection behind it.
    raw: asyncpg.Connection | None = cast(Any, conn)._con
    return raw is None or raw.is_closed()


# What asyncpg raises from a call on a connection that the server closed under it.
_ON_LOST_CONNECTION = (asyncpg.InterfaceError, asyncpg.InternalClientError)


class _Acquire(PoolAcquireContext):
    """asyncpg's acquire context, naming an error on a connection the server closed for what it is."""

    __slots__ = ()

    async def __aexit__(self, *exc_info: object) -> None:
        exc = exc_info[1] if exc_info else None
        loss = None if exc is None else _loss(exc, self.connection)
        # asyncpg's own __aexit__, inlined: a release costs what it did, bar the check above.
        self.done = True
        conn, self.connection = self.connection, None
        assert conn is not None
        await self.pool.release(conn)
        if loss is not None:
            raise loss from cast(BaseException, exc)


def _loss(exc: object, conn: PoolConnectionProxy | None) -> ConnectionLost | None:
    """An error on a connection the server closed, named for what it is: StatementNotSent when asyncpg
    refused the statement before writing it (safe to run again), else ConnectionLost. Asked before the
    connection is released (asyncpg detaches it then)."""
    if not (isinstance(exc, _ON_LOST_CONNECTION) and _lost(conn)):
        return None
    kind = StatementNotSent if str(exc).startswith(_REFUSED_UNSENT) else ConnectionLost
    return kind(str(exc))


class Pool(asyncpg.Pool):
    """asyncpg's pool with two changes. Every acquire, also the one inside ``pool.fetch()`` and the like,
    gives up after POOL_ACQUIRE_TIMEOUT with a TimeoutError (a 503) instead of waiting as long as the pool
    stays busy. And a connection the server has just terminated is not handed out as if it were healthy:

    When PostgreSQL shuts down (a restart, ``pg_terminate_backend``, ``idle_session_timeout``) it sends each
    session a FATAL error, then closes the socket. On an idle connection, in the pool or between two
    statements, asyncpg reads that error as a protocol error and waits for a ReadyForQuery that never comes;
    until it has read the end of the stream, a loop iteration or more later, the connection looks open.
    asyncpg's own reset query on release would catch some of these (it fails, so the connection is dropped),
    but we release without it (``_keep_session``) and an idle one in the pool is handed out regardless. The
    next statement on it is refused locally (``cannot switch to state 12; another operation (2) is in
    progress``), before anything is written, and asyncpg aborts the connection. The pool's one-statement
    shortcuts below then run the statement once more on another connection; in a transaction of the caller's
    the refusal surfaces as ConnectionLost, a 503, since only the caller can start it again.

    The shortcuts are asyncpg's own (acquire, one call, release) plus that retry: no extra work per call."""

    __slots__ = ("_acquire_timeout", "_replaced_at")

    def __init__(self, dsn: str, *, acquire_timeout: float, **kwargs: Any) -> None:
        super().__init__(dsn, **kwargs)
        self._acquire_timeout = acquire_timeout
        self._replaced_at = -math.inf

    async def replace_connections(self, at_most_every: float) -> None:
        """Every open connection is closed and opened anew on its next use (asyncpg's expire_connections), at
        most once per ``at_most_every`` seconds: a session that must not be reused (read-only, on a standby)
        is replaced, without a new connection per request while the database stays that way."""
        now = time.monotonic()
        if now - self._replaced_at >= at_most_every:
            self._replaced_at = now
            await self.expire_connections()

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        if timeout is None:
            # A connection free now is had without waiting, so it needs no deadline: asyncio's timeout is a
            # timer and a dozen calls per acquire, a tenth of a dispatch's Python at one worker (issue 11).
            # Connecting one that the pool has not opened yet is bounded by DB_CONNECT_TIMEOUT all the same.
            queue: asyncio.Queue[object] | None = self._queue  # type: ignore[attr-defined]
            timeout = None if queue is not None and queue.qsize() else self._acquire_timeout
        return _Acquire(self, timeout)

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
        try:
            async with self.acquire() as conn:
                return await conn.execute(query, *args, **kwargs)
        except StatementNotSent:
            async with self.acquire() as conn:
                return await conn.execute(query, *args, **kwargs)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        try:
            async with self.acquire() as conn:
                return await conn.fetch(query, *args, **kwargs)
        except StatementNotSent:
            async with self.acquire() as conn:
                return await conn.fetch(query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        try:
            async with self.acquire() as conn:
                return await conn.fetchrow(query, *args, **kwargs)
        except StatementNotSent:
            async with self.acquire() as conn:
                return await conn.fetchrow(query, *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        try:
            async with self.acquire() as conn:
                return await conn.fetchval(query, *args, **kwargs)
        except StatementNotSent:
            async with self.acquire() as conn:
                return await conn.fetchval(query, *args, **kwargs)


class KeptConnections:
    """Pool connections kept between statements by one user, up to ``size`` of them: the dispatcher's
    statement slots. A statement on a kept connection costs no acquire and no release, and asyncpg's release
    is a task of its own (``asyncio.shield``) and a timer for its reset: at one worker they were a fifth of a
    dispatch's Python (issue 11, docs/benchmarks.md).

    A kept connection goes back to the pool after any error, so the pool's own care applies to it: one the
    server closed is dropped, one of an expired generation (``replace_connections``) is replaced. And as the
    pool's shortcuts do, a statement refused unsent on a kept connection that the server had closed while it
    sat idle runs once more on another."""

    def __init__(self, pool: asyncpg.Pool, size: int) -> None:
        self._pool = pool
        self._size = size
        self._idle: list[PoolConnectionProxy] = []
        self._closed = False

    async def run(self, statement: Callable[[PoolConnectionProxy], Awaitable[T]]) -> T:
        try:
            return await self._run(statement)
        except StatementNotSent:
            # The server closed a kept connection while it sat idle, and asyncpg has not read the end of its
            # stream yet. A restart closes them all: the others are closed here too (the pool opens new ones
            # on their next use), and the statement runs on a connection from the pool.
            idle, self._idle = self._idle, []
            for conn in idle:
                if _lost(conn):
                    # Already closed: the pool drops it (asyncpg may even have handed it back already).
                    await self._pool.release(conn)
                else:
                    conn.terminate()
            return await self._run(statement)

    async def _run(self, statement: Callable[[PoolConnectionProxy], Awaitable[T]]) -> T:
        while self._idle:
            conn = self._idle.pop()
            if not _lost(conn):
                break
            # Closed while kept (asyncpg has read the end of its stream, and may have handed it back).
            await self._pool.release(conn)
        else:
            conn = await self._pool.acquire()
        try:
            result = await statement(conn)
        except BaseException as exc:
            loss = _loss(exc, conn)
            await self._pool.release(conn)
            if loss is not None:
                raise loss from exc
            raise
        if len(self._idle) < self._size and not self._closed:
            self._idle.append(conn)
        else:
            await self._pool.release(conn)
        return result

    async def close(self) -> None:
        """Every kept connection back to the pool (before it closes: it waits for them), and those of
        statements still running once they end."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._pool.release(conn)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection without asyncpg's reset query (``RESET ALL; UNLISTEN *; ...``), a second round
    trip for every statement. Pool connections never change session state: LISTEN and session advisory locks
    live on their own connections (listener, maintenance, migrate). asyncpg still rolls back an open
    transaction before calling this. Without the query, a connection the server has just terminated can go
    back to the pool looking open: Pool above deals with that."""


# What a read replica answers when it is down or unreachable (DatabaseUnreachable, a connect timeout
# included), restarting, or cancelled a read that conflicted with the recovery it replays (40001): the read
# is run on the primary instead. Not the TimeoutError of a busy pool or a slow statement: moving such a read
# to the primary would only add its wait to the primary's.
REPLICA_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    ConnectionError,
)


class ReplicaPool(Pool):
    """The pool of READ_DATABASE_URL, for list and history reads (the handlers' ``read_pool``). When the
    replica cannot answer (REPLICA_UNAVAILABLE) the read goes to the primary's pool, and so does every read
    for the next RETRY_AFTER seconds, so a replica that is down costs one failed attempt per period, not one
    per read. The reads are paged index scans the primary served before there was a replica; an operator's
    console stays up through a replica's restart or re-seeding, and what it reads then is fresher, never
    staler."""

    __slots__ = ("_down_until", "_pause", "_primary")

    def __init__(self, dsn: str, *, primary: asyncpg.Pool, pause: float, **kwargs: Any) -> None:
        super().__init__(dsn, **kwargs)
        self._primary = primary
        self._pause = pause
        self._down_until = 0.0

    async def _read(self, method: str, query: str, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() < self._down_until:
            return await getattr(self._primary, method)(query, *args, **kwargs)
        try:
            return await getattr(super(), method)(query, *args, **kwargs)
        except REPLICA_UNAVAILABLE as exc:
            log.warning(
                "read_replica_unavailable",
                error=f"{type(exc).__name__}: {exc}",
                primary_for_seconds=self._pause,
            )
            self._down_until = time.monotonic() + self._pause
            return await getattr(self._primary, method)(query, *args, **kwargs)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._read("fetch", query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._read("fetchrow", query, *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._read("fetchval", query, *args, **kwargs)


async def create_read_pool(settings: Settings, primary: asyncpg.Pool) -> asyncpg.Pool:
    """The pool of READ_DATABASE_URL, or the primary's when it is unset. It opens no connection before the
    first read (a replica that is down at start-up must not stop the service). It goes through a pooler when
    DATABASE_URL does (DIRECT_DATABASE_URL set), with the same limits as the primary's pool."""
    if settings.read_database_url is None:
        return primary
    pool = _pool(
        settings, settings.read_database_url, 0, ReplicaPool, primary=primary, pause=settings.retry_after
    )
    await pool
    return pool


async def create_pool(settings: Settings) -> asyncpg.Pool:
    """Connections are opened lazily past POOL_MIN_SIZE and re-opened after the database restarts."""
    pool = _pool(settings, dsn(settings), settings.pool_min_size, Pool)
    await pool
    return pool


def _pool(settings: Settings, dsn: str, min_size: int, kind: type[Pool], **extra: Any) -> Pool:
    # What asyncpg.create_pool does, with our class; the defaults it would pass are spelled out.
    return kind(
        dsn,
        **extra,
        acquire_timeout=settings.pool_acquire_timeout,
        min_size=min_size,
        max_size=settings.pool_max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=connection_class(settings),
        record_class=asyncpg.Record,
        command_timeout=settings.db_command_timeout,
        timeout=settings.db_connect_timeout,
        server_settings=pool_server_settings(settings),
        # Behind a transaction pooler consecutive transactions may run on different server connections,
        # where a named prepared statement would not exist: asyncpg then uses only the unnamed statement,
        # parsed and executed in one exchange (it flushes, never syncs, between the two).
        statement_cache_size=0 if settings.behind_pooler else 100,
        connect=connect,
        reset=_keep_session,
    )


async def migrate(dsn: str) -> list[int]:
    """Apply the migrations not applied yet, each in its own transaction; return the versions applied.

    An advisory lock makes instances that start together take turns; the second then finds nothing to do.
    """
    conn = await connect(dsn, server_settings=SERVER_SETTINGS)
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
