"""The SDK's fleet calls against a real ``baywheels serve`` over real HTTP: a van that reports where it is
(and what it carries) on dispatch, heartbeats and pickup gets the nearest task and is seen there; an off-shift
van is told apart from one with nothing to do; an operator dismisses suggestions with a reason and the ML
engine reads what became of each from the outcomes feed, a page at a time, resuming from a saved cursor; an
operator registers workers and reads them and the station registry."""

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from baywheels import gbfs
from baywheels.client import (
    MLEngine,
    OffShift,
    Operator,
    Position,
    SuggestionIn,
    SuggestionOutcome,
    Task,
    Worker,
)
from baywheels.client import sync as blocking
from conftest import LiveServer
from helpers import ADMIN_KEY, until

FEED = Path(__file__).parent / "gbfs" / "v2.3"
# Stations of the fixture feed (their ids are the feed's legacy ids): three in San Francisco, Lake Merritt in
# Oakland and Downtown Berkeley.
POWELL, CALTRAIN, TENTH, EMBARCADERO, LAKE_MERRITT, BERKELEY = 27, 30, 58, 15, 163, 245
AT_POWELL = Position(lat=37.7864, lon=-122.4049, accuracy_m=12.0, load=0)
AT_LAKE_MERRITT = Position(lat=37.7973, lon=-122.2653, accuracy_m=8.0, load=0)


@pytest.fixture
async def server(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[LiveServer]:
    async with pool.acquire() as conn:
        await gbfs.import_source(conn, str(FEED))
    live = LiveServer(database_url, env={"REAPER_INTERVAL_SECONDS": "0.1"})
    await asyncio.to_thread(live.start)
    try:
        yield live
    finally:
        await asyncio.to_thread(live.stop)


async def approved(url: str, pairs: list[tuple[int, int]], qty: int = 2) -> list[Task]:
    items = [SuggestionIn(from_station_id=a, to_station_id=b, qty=qty, reason="test") for a, b in pairs]
    async with MLEngine(url, ADMIN_KEY) as ml, Operator(url, ADMIN_KEY) as operator:
        ids = [i for i in (await ml.post_suggestions(items)).ids if i is not None]
        return (await operator.approve_many(ids)).tasks


class Phone:
    """A van's phone: where it says the van is, changed by the test."""

    def __init__(self, where: Position | None) -> None:
        self.where = where
        self.asked = 0

    def __call__(self) -> Position | None:
        self.asked += 1
        return self.where


async def test_a_van_reports_where_it_is_and_what_it_carries_and_gets_the_nearest_task(
    server: LiveServer,
) -> None:
    await approved(server.url, [(POWELL, CALTRAIN), (LAKE_MERRITT, BERKELEY)])
    phone = Phone(AT_LAKE_MERRITT)
    async with (
        Operator(server.url, ADMIN_KEY) as operator,
        Worker(server.url, ADMIN_KEY, "van-1", lease_seconds=1, position=phone) as worker,
    ):
        await operator.register_worker("van-1", capacity=12, name="Van 1")
        async with worker.next_task(wait=5) as task:
            # In Oakland: the Oakland task, not the older one in San Francisco.
            assert (task.from_station_id, task.to_station_id) == (LAKE_MERRITT, BERKELEY)
            van = await operator.worker("van-1")
            assert (van.lat, van.lon, van.load, van.current_task_id) == (37.7973, -122.2653, 0, task.id)

            phone.where = Position(lat=37.7974, lon=-122.2654, accuracy_m=5.0, load=2)
            await worker.pickup(task)
            van = await operator.worker("van-1")
            assert (van.lat, van.lon, van.load) == (37.7974, -122.2654, 2)

            # Driving: the heartbeats (every third of the one-second lease) carry the position along.
            phone.where = Position(lat=37.8701, lon=-122.2684, load=2)

            async def seen_in_berkeley() -> bool:
                return (await operator.worker("van-1")).lat == 37.8701

            await until(seen_in_berkeley)
        assert (await operator.task(task.id)).status == "completed"
        # No fix: the calls go without a position, and the last one is kept.
        phone.where = None
        assert (await worker.dispatch()) is not None
        assert (await operator.worker("van-1")).lat == 37.8701


async def test_an_off_shift_van_is_told_apart_from_a_van_with_nothing_to_do(server: LiveServer) -> None:
    async with (
        Operator(server.url, ADMIN_KEY) as operator,
        Worker(server.url, ADMIN_KEY, "van-2", position=Phone(AT_POWELL)) as worker,
    ):
        await operator.register_worker("van-2", capacity=12)
        assert await worker.dispatch() is None  # on shift, nothing ready

        [made] = await approved(server.url, [(POWELL, CALTRAIN)])
        await operator.register_worker("van-2", capacity=12, on_shift=False)
        with pytest.raises(OffShift) as off:
            await worker.dispatch(wait=1)
        assert (off.value.status, "off shift" in off.value.detail) == (404, True)
        # next_task does not long-poll for ever for a van that will get nothing: it raises too.
        with pytest.raises(OffShift):
            async with worker.next_task(wait=1):
                pytest.fail("an off-shift van got a task")
        assert (await operator.task(made.id)).status == "ready"

        await operator.register_worker("van-2", capacity=12, on_shift=True)
        async with worker.next_task(wait=1) as task:
            assert task.id == made.id


async def test_dismissals_and_approvals_come_back_in_the_outcomes_feed_resumed_from_a_saved_cursor(
    server: LiveServer,
) -> None:
    pairs = [(POWELL, CALTRAIN), (TENTH, EMBARCADERO), (LAKE_MERRITT, BERKELEY), (CALTRAIN, TENTH)]
    items = [SuggestionIn(from_station_id=a, to_station_id=b, qty=3, reason="forecast") for a, b in pairs]
    async with MLEngine(server.url, ADMIN_KEY) as ml, Operator(server.url, ADMIN_KEY) as operator:
        ids = [i for i in (await ml.post_suggestions(items)).ids if i is not None]
        assert len(ids) == 4
        [task] = (await operator.approve_many(ids[:1])).tasks
        result = await operator.dismiss([ids[1], ids[2], ids[0], 10**12], "the van is needed in the East Bay")
        assert (result.dismissed, result.not_pending) == ([ids[1], ids[2]], [ids[0], 10**12])
        assert [s.id for s in await operator.suggestions()] == [ids[3]]

        feed = ml.outcomes(limit=2)
        pages = [page async for page in feed]
        assert [len(page) for page in pages] == [2, 1]
        seen = [(o.suggestion_id, o.outcome, o.reason) for page in pages for o in page]
        assert sorted(seen) == sorted(
            [
                (ids[0], "approved", None),
                (ids[1], "dismissed", "the van is needed in the East Bay"),
                (ids[2], "dismissed", "the van is needed in the East Bay"),
            ]
        )
        saved = feed.cursor
        assert saved == pages[-1][-1].cursor
        # Caught up: nothing more, and the cursor stays.
        assert [page async for page in ml.outcomes(saved)] == []

        async with Worker(server.url, ADMIN_KEY, "van-3") as worker, worker.next_task(wait=1) as taken:
            assert taken.id == task.id
        # A new reader from the saved cursor sees only what came after it: the task's ending.
        [[done]] = [page async for page in ml.outcomes(saved)]
        assert (done.suggestion_id, done.outcome, done.task_id, done.worker_id) == (
            ids[0],
            "completed",
            task.id,
            "van-3",
        )

        # With poll, the feed waits for the next change instead of ending.
        follower = ml.outcomes(done.cursor, poll=0.05)
        nxt: asyncio.Task[list[SuggestionOutcome]] = asyncio.ensure_future(anext(follower))
        await asyncio.sleep(0)
        assert not nxt.done()
        await operator.dismiss([ids[3]], "too few bikes to be worth a trip")
        [later] = await asyncio.wait_for(nxt, 10)
        assert (later.suggestion_id, later.outcome, follower.cursor) == (ids[3], "dismissed", later.cursor)


async def test_an_operator_reads_workers_and_the_station_registry(server: LiveServer) -> None:
    async with Operator(server.url, ADMIN_KEY) as operator:
        for name in ("van-b", "van-a"):
            await operator.register_worker(name, capacity=8, depot_station_id=POWELL)
        assert [w.worker_id for w in await operator.workers()] == ["van-a", "van-b"]
        assert [w.worker_id for w in await operator.workers(after="van-a")] == ["van-b"]
        assert [w.capacity async for w in operator.all_workers()] == [8, 8]

        everything = [s.id async for s in operator.all_stations()]
        assert sorted(everything) == sorted([POWELL, CALTRAIN, TENTH, EMBARCADERO, LAKE_MERRITT, BERKELEY])
        # Powell St is 1.38 km from Caltrain, 1.54 km from 10th St.
        near = await operator.stations(near=(37.786375, -122.404904, 1.5))
        assert {s.id for s in near} == {POWELL, CALTRAIN}
        assert [s.id for s in await operator.stations(fill_below=0.1)] == [EMBARCADERO]
        assert [s.id for s in await operator.stations(limit=2, after_id=CALTRAIN)] == [TENTH, LAKE_MERRITT]
        detail = await operator.station(LAKE_MERRITT)
        assert (detail.name, detail.suggestions, detail.open_tasks) == ("Lake Merritt BART Station", [], [])


def test_the_blocking_facade_dismisses_and_reads_the_outcomes(live_server: LiveServer) -> None:
    url = live_server.url
    with blocking.MLEngine(url, ADMIN_KEY) as ml, blocking.Operator(url, ADMIN_KEY) as operator:
        posted = ml.post_suggestions(
            [SuggestionIn(from_station_id=a, to_station_id=a + 1, qty=2, reason="t") for a in (1, 3, 5)]
        )
        ids = [i for i in posted.ids if i is not None]
        assert operator.dismiss(ids, "not today").dismissed == ids
        feed = ml.outcomes(limit=2)
        rows = [(o.suggestion_id, o.outcome) for page in feed for o in page]
        assert sorted(rows) == [(i, "dismissed") for i in ids]
        assert list(ml.outcomes(feed.cursor)) == []
        operator.register_worker("van-9", capacity=4)
        assert [w.worker_id for w in operator.workers()] == ["van-9"]
        assert operator.stations() == []  # an empty registry


# A source that fails must not stop the heartbeats: the task is still held and completed.
def broken() -> Position | None:
    raise RuntimeError("no GPS")


@pytest.mark.parametrize("source", [broken], ids=["a failing position source"])
async def test_a_failing_position_source_costs_no_task(
    server: LiveServer, source: Callable[[], Position | None]
) -> None:
    [made] = await approved(server.url, [(POWELL, CALTRAIN)])
    async with (
        Worker(server.url, ADMIN_KEY, "van-4", lease_seconds=1, position=source) as worker,
        Operator(server.url, ADMIN_KEY) as operator,
    ):
        async with worker.next_task(wait=1) as task:
            first = task.lease_expires_at
            assert first is not None

            async def extended() -> bool:
                held = await operator.task(task.id)
                return held.lease_expires_at is not None and held.lease_expires_at > first

            await until(extended)
        assert (task.id, (await operator.task(made.id)).status) == (made.id, "completed")


async def test_the_worker_command_says_where_the_van_is(server: LiveServer) -> None:
    await approved(server.url, [(POWELL, CALTRAIN), (LAKE_MERRITT, BERKELEY)])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *("baywheels", "worker", "--url", server.url, "--key", ADMIN_KEY, "--worker-id", "cli-2"),
        *("--delay", "0", "--count", "1", "--at", "37.7973,-122.2653", "--load", "0"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert f"bikes from station {LAKE_MERRITT} to {BERKELEY}" in out.decode()
    async with Operator(server.url, ADMIN_KEY) as operator:
        await operator.register_worker("cli-2", capacity=12)
        assert ((await operator.worker("cli-2")).lat, (await operator.worker("cli-2")).lon) == (
            37.7973,
            -122.2653,
        )
