"""The dispatcher in-process, on a real PostgreSQL, when a dispatch statement fails."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest

from baywheels import queries, settings
from baywheels.dispatcher import Dispatcher
from baywheels.models import Task


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
