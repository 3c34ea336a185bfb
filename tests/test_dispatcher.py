"""The dispatcher in-process, on a real PostgreSQL, when a dispatch statement fails."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest

from baywheels import queries, settings
from baywheels.dispatcher import Dispatcher
from baywheels.models import Position, Task


@pytest.fixture
async def dispatcher(pool: asyncpg.Pool, service_settings: settings.Settings) -> AsyncIterator[Dispatcher]:
    # One statement at a time, so the requests that come during it queue behind it.
    one_at_a_time = msgspec.structs.replace(service_settings, dispatch_concurrency=1)
    dispatcher = Dispatcher(pool, one_at_a_time)
    try:
        yield dispatcher
    finally:
        await dispatcher.stop()


async def test_requests_queued_behind_a_failed_statement_are_still_served(
    pool: asyncpg.Pool, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    await pool.execute(
        "INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason) "
        "SELECT g, g, g + 100, 1, 'test' FROM generate_series(1, 2) g"
    )
    started, fail = asyncio.Event(), asyncio.Event()
    dispatch = queries.task_dispatch

    async def first_one_fails(*args: Any, **kwargs: Any) -> Task | None:
        if not started.is_set():
            started.set()
            await fail.wait()
            raise OSError("connection reset by peer")
        return await dispatch(*args, **kwargs)

    monkeypatch.setattr(queries, "task_dispatch", first_one_fails)
    first = asyncio.create_task(dispatcher.next("first", 60, 0, None))
    await started.wait()
    queued = [asyncio.create_task(dispatcher.next(f"queued-{i}", 60, 0, None)) for i in range(2)]
    await asyncio.sleep(0)  # let both reach the queue behind the running statement
    fail.set()

    with pytest.raises(OSError, match="connection reset"):
        await first
    async with asyncio.timeout(10):
        served = await asyncio.gather(*queued)
    assert sorted(str(task.worker_id) for task in served if task is not None) == ["queued-0", "queued-1"]
    assert len({task.id for task in served if task is not None}) == 2


# Stations 1..5 (San Francisco, Berkeley, San José, Oakland, Palo Alto).
PLACES = {
    1: (37.7865, -122.4045),
    2: (37.8716, -122.2727),
    3: (37.3352, -121.8811),
    4: (37.8044, -122.2712),
    5: (37.4419, -122.1430),
}


def at(station: int) -> Position:
    return Position(lat=PLACES[station][0], lon=PLACES[station][1])


@pytest.fixture
async def stations(pool: asyncpg.Pool) -> asyncpg.Pool:
    """The stations, a ready task picking up at each (dropping off at a station of its own)."""
    await pool.executemany(
        "INSERT INTO stations (id, gbfs_station_id, name, lat, lon) VALUES ($1, $2, $3, $4, $5)",
        [(i, f"gbfs-{i}", f"station {i}", lat, lon) for i, (lat, lon) in PLACES.items()],
    )
    await pool.execute(
        "INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason) "
        "SELECT g, g, g + 100, 1, 'test' FROM generate_series(1, $1::integer) g",
        len(PLACES),
    )
    return pool


def first_statement_waits(monkeypatch: pytest.MonkeyPatch, name: str) -> tuple[asyncio.Event, asyncio.Event]:
    """The first call of ``queries.<name>`` says it started, then waits to be let go."""
    started, go = asyncio.Event(), asyncio.Event()
    statement = getattr(queries, name)

    async def first_waits(*args: Any, **kwargs: Any) -> Any:
        if not started.is_set():
            started.set()
            await go.wait()
        return await statement(*args, **kwargs)

    monkeypatch.setattr(queries, name, first_waits)
    return started, go


def batches_of(monkeypatch: pytest.MonkeyPatch, name: str) -> list[list[str]]:
    """The workers of each call of ``queries.<name>``, as they come."""
    calls: list[list[str]] = []
    statement = getattr(queries, name)

    async def counted(conn: Any, workers: list[str], *args: Any, **kwargs: Any) -> Any:
        calls.append(list(workers))
        return await statement(conn, workers, *args, **kwargs)

    monkeypatch.setattr(queries, name, counted)
    return calls


async def test_vans_queued_behind_a_busy_statement_go_together_each_to_its_nearest(
    stations: asyncpg.Pool, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, go = first_statement_waits(monkeypatch, "task_dispatch_near")
    together = batches_of(monkeypatch, "task_dispatch_near_many")
    alone = asyncio.create_task(dispatcher.next("san-jose", 60, 0, None, near=at(3)))
    await started.wait()
    queued = [
        asyncio.create_task(dispatcher.next(worker, 60, 0, None, near=at(station)))
        for worker, station in [("sf", 1), ("berkeley", 2)]
    ]
    await asyncio.sleep(0)  # let both reach the queue behind the running statement
    go.set()
    async with asyncio.timeout(10):
        served = [await alone, *await asyncio.gather(*queued)]
    # The lone van ran its own statement; the two behind it, one statement for both.
    assert together == [["sf", "berkeley"]]
    assert [(t.worker_id, t.from_station_id) for t in served if t is not None] == [
        ("san-jose", 3),
        ("sf", 1),
        ("berkeley", 2),
    ]


async def test_a_mixed_queue_goes_in_one_batch_of_each_kind(
    stations: asyncpg.Pool, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, go = first_statement_waits(monkeypatch, "task_dispatch")
    plain = batches_of(monkeypatch, "task_dispatch_many")
    vans = batches_of(monkeypatch, "task_dispatch_near_many")
    first = asyncio.create_task(dispatcher.next("first", 60, 0, None))
    await started.wait()
    queued = [
        asyncio.create_task(dispatcher.next(worker, 60, 0, None, near=near))
        for worker, near in [("p1", None), ("v1", at(1)), ("p2", None), ("v2", at(2))]
    ]
    await asyncio.sleep(0)
    go.set()
    async with asyncio.timeout(10):
        served = [await first, *await asyncio.gather(*queued)]
    assert (plain, vans) == ([["p1", "p2"]], [["v1", "v2"]])
    # Without positions, the oldest (1, then 2 and 3); the vans, the nearest of those left: Oakland for the
    # van in San Francisco, Palo Alto for the one in Berkeley (Oakland taken).
    assert [(t.worker_id, t.from_station_id) for t in served if t is not None] == [
        ("first", 1),
        ("p1", 2),
        ("v1", 4),
        ("p2", 3),
        ("v2", 5),
    ]
