"""The event hub's tail against a real PostgreSQL, one read at a time: events in id order, a gap held for a
late commit and passed once it is GAP_SECONDS old (an id whose transaction rolled back), a worker's stream
filtered, and the resumption's pages."""

import asyncpg
import pytest

from baywheels import events
from baywheels.events import EventHub, replay


async def insert_event(pool: asyncpg.Pool, event_id: int, task_id: int, worker_id: str | None = None) -> None:
    await pool.execute(
        "INSERT INTO task_events (id, task_id, event, worker_id, actor) OVERRIDING SYSTEM VALUE "
        "VALUES ($1, $2, 'assigned', $3, 'test')",
        event_id,
        task_id,
        worker_id,
    )


@pytest.fixture
async def task_id(pool: asyncpg.Pool) -> int:
    found: int = await pool.fetchval(
        "INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason) "
        "VALUES (1, 1, 2, 1, 'test') RETURNING id"
    )
    return found


def queued_ids(stream: events.Stream) -> list[int]:
    found = []
    while not stream.queue.empty():
        data = stream.queue.get_nowait()
        assert data is not None
        found.append(int(data.split(b"\n", 1)[0].removeprefix(b"id: ")))
    return found


async def test_the_tail_holds_a_gap_for_a_late_commit_then_passes_it(
    pool: asyncpg.Pool, task_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stream on a hub whose tail is driven by hand (one read per call), from event 1 on.
    await insert_event(pool, 1, task_id)
    hub = EventHub(pool)
    stream = events.Stream(None)
    hub._streams.add(stream)
    hub.last_id = 1

    await insert_event(pool, 3, task_id)  # 2 is taken by a transaction not committed yet
    assert await hub._read() is False
    assert queued_ids(stream) == []
    await insert_event(pool, 2, task_id)  # it commits: both, in order
    await hub._read()
    assert queued_ids(stream) == [2, 3]

    await insert_event(pool, 5, task_id)  # 4 never comes (rolled back)
    await hub._read()
    assert queued_ids(stream) == []
    monkeypatch.setattr(events, "GAP_SECONDS", 0.0)
    await hub._read()
    assert queued_ids(stream) == [5]
    assert hub.last_id == 5


async def test_a_workers_stream_gets_its_own_events_and_a_resumption_reads_pages(
    pool: asyncpg.Pool, task_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for event_id in range(1, 8):
        await insert_event(pool, event_id, task_id, "van-1" if event_id % 2 else "van-2")
    monkeypatch.setattr(events, "BATCH", 2)
    every = [frame async for frame in replay(pool, 1, 6, None)]
    assert [int(f.split(b"\n", 1)[0][4:]) for f in every] == [2, 3, 4, 5, 6]
    own = [frame async for frame in replay(pool, 0, None, "van-2")]
    assert [int(f.split(b"\n", 1)[0][4:]) for f in own] == [2, 4, 6]
