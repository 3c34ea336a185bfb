"""The pool when the server terminates its sessions (a restart, pg_terminate_backend): a connection that has
received its FATAL error but not yet its end of stream is never used as if healthy, and an error on a
connection the server closed is a connection loss (a 503), whatever asyncpg called it."""

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest

from baywheels import db, settings
from baywheels.errors import DATABASE_UNAVAILABLE
from helpers import until


def fatal_shutdown() -> bytes:
    """The ErrorResponse a backend sends when a fast shutdown terminates it."""
    fields = b"".join(
        code + text.encode() + b"\0"
        for code, text in [
            (b"S", "FATAL"),
            (b"V", "FATAL"),
            (b"C", "57P01"),
            (b"M", "terminating connection due to administrator command"),
        ]
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


def receive_fatal_while_idle(conn: Any) -> None:
    """As the shutdown's FATAL arrives, before the end of the stream does (the next loop iteration or later):
    the only moment asyncpg cannot tell the connection is gone."""
    raw = conn._con if hasattr(conn, "_con") else conn
    raw._protocol.data_received(fatal_shutdown())


def closed(conn: object) -> bool:
    raw = conn._con  # type: ignore[attr-defined]
    return raw is None or bool(raw.is_closed())  # None: asyncpg detached it, having cleaned up


@pytest.fixture
async def pool(service_settings: settings.Settings) -> AsyncIterator[asyncpg.Pool]:
    small = msgspec.structs.replace(
        service_settings, pool_min_size=1, pool_max_size=2, dispatch_concurrency=1
    )
    pool = await db.create_pool(small)
    try:
        yield pool
    finally:
        await pool.close()


async def test_a_statement_refused_on_a_terminated_connection_runs_on_another(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        receive_fatal_while_idle(conn)
        terminated = conn._con  # type: ignore[attr-defined]
    assert not terminated.is_closed()  # it looks healthy, and goes back to the pool
    # The pool hands it out next (last in, first out); asyncpg refuses the statement before sending it.
    assert await pool.fetchval("SELECT 41 + 1") == 42
    assert terminated.is_closed()


async def test_a_transaction_on_a_terminated_connection_is_a_connection_loss(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        receive_fatal_while_idle(conn)
    with pytest.raises(db.ConnectionLost) as raised:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1")
    assert isinstance(raised.value.__cause__, asyncpg.InternalClientError)
    assert isinstance(raised.value, DATABASE_UNAVAILABLE)  # a 503
    assert await pool.fetchval("SELECT 1") == 1


async def test_a_connection_terminated_inside_a_transaction_is_a_connection_loss(
    pool: asyncpg.Pool, database_url: str
) -> None:
    observer = await asyncpg.connect(database_url)

    async def terminated_midway() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1")
            await observer.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())

            async def gone() -> bool:  # asyncpg reads the end of the stream
                return closed(conn)

            await until(gone, within=10)

    try:
        with pytest.raises(db.ConnectionLost) as raised:
            await terminated_midway()
        # asyncpg's words: "cannot call Transaction.__aexit__(): the underlying connection is closed"
        assert isinstance(raised.value.__cause__, asyncpg.InterfaceError)
        assert isinstance(raised.value, DATABASE_UNAVAILABLE)  # a 503
    finally:
        await observer.close()
    assert await pool.fetchval("SELECT 1") == 1


async def test_a_kept_connection_the_server_closed_while_idle_is_replaced(pool: asyncpg.Pool) -> None:
    """The dispatcher keeps its statements' connections (db.KeptConnections): one that received its FATAL
    while kept gives way to another, and the statement runs there, unseen by the caller."""
    kept = db.KeptConnections(pool, 1)
    first = await kept.run(lambda conn: conn.fetchval("SELECT pg_backend_pid()"))
    assert await kept.run(lambda conn: conn.fetchval("SELECT pg_backend_pid()")) == first  # kept, reused
    (idle,) = kept._idle
    receive_fatal_while_idle(idle)
    second = await kept.run(lambda conn: conn.fetchval("SELECT pg_backend_pid()"))
    assert second != first
    await kept.close()
    # Everything went back to the pool: it closes without waiting for anyone.
    await asyncio.wait_for(pool.close(), 10)


async def test_kept_connections_all_closed_by_a_restart_give_way_at_once(pool: asyncpg.Pool) -> None:
    kept = db.KeptConnections(pool, 2)
    started, go = asyncio.Event(), asyncio.Event()

    async def busy(conn: Any) -> int:
        started.set()
        await go.wait()  # both at once, so that two connections are kept
        return int(await conn.fetchval("SELECT pg_backend_pid()"))

    first = asyncio.create_task(kept.run(busy))
    await started.wait()
    started.clear()
    second = asyncio.create_task(kept.run(busy))
    await started.wait()
    go.set()
    before = {await first, await second}
    assert len(kept._idle) == 2
    for conn in kept._idle:
        receive_fatal_while_idle(conn)
    # The first kept one is refused unsent; the statement then runs on a new connection, not on the other.
    assert await kept.run(lambda conn: conn.fetchval("SELECT pg_backend_pid()")) not in before
    await kept.close()


async def test_a_kept_connection_goes_back_to_the_pool_after_an_error(pool: asyncpg.Pool) -> None:
    """So that the pool's own care applies to it (a session made read-only is replaced, for one)."""
    kept = db.KeptConnections(pool, 1)
    with pytest.raises(asyncpg.DivisionByZeroError):
        await kept.run(lambda conn: conn.fetchval("SELECT 1 / 0"))
    assert kept._idle == []
    assert await kept.run(lambda conn: conn.fetchval("SELECT 1")) == 1
    assert len(kept._idle) == 1
    await kept.close()
    await asyncio.wait_for(pool.close(), 10)


async def test_a_kept_connection_already_handed_back_is_passed_over_after_a_refusal(
    pool: asyncpg.Pool,
) -> None:
    """A restart: one kept connection refuses the statement unsent, another was closed and handed back to the
    pool by asyncpg meanwhile. Neither is an error for the caller (closing the second again was a 500)."""
    kept = db.KeptConnections(pool, 2)
    started, go = asyncio.Event(), asyncio.Event()

    async def busy(conn: Any) -> int:
        started.set()
        await go.wait()
        return int(await conn.fetchval("SELECT pg_backend_pid()"))

    first = asyncio.create_task(kept.run(busy))
    await started.wait()
    started.clear()
    second = asyncio.create_task(kept.run(busy))
    await started.wait()
    go.set()
    await asyncio.gather(first, second)
    handed_back, refusing = kept._idle  # the last is used first
    handed_back._con.terminate()  # type: ignore[attr-defined]
    assert closed(handed_back)
    receive_fatal_while_idle(refusing)
    assert await kept.run(lambda conn: conn.fetchval("SELECT 1")) == 1
    await kept.close()


async def test_only_database_and_connection_errors_are_unavailable() -> None:
    """An OSError while connecting is the database being unreachable (a 503); any other is our fault."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        refused = unused.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(db.DatabaseUnreachable) as raised:
            await db.connect(f"postgresql://postgres@127.0.0.1:{refused}/postgres", timeout=5)
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    with pytest.raises(db.DatabaseUnreachable):
        await db.connect("postgresql://postgres@no-such-host.invalid/postgres", timeout=5)
    assert isinstance(raised.value, DATABASE_UNAVAILABLE)
    assert not isinstance(FileNotFoundError(2, "settings.toml"), DATABASE_UNAVAILABLE)
    assert not isinstance(PermissionError(13, "/var/log"), DATABASE_UNAVAILABLE)
