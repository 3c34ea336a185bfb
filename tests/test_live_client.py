"""The SDK (``baywheels.client``) against a real ``baywheels serve`` over real HTTP: a worker's heartbeats
keep a short lease alive while it works, a dispatch whose answer is lost on the way gets the same task on its
retry, an exception fails the task with its message, cancellation gives it back, an operator's cancel stops
the work with ``LeaseLost``, a 503 is retried after its ``Retry-After``; the blocking facade and the
``baywheels worker`` command do the same through the same code."""

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from baywheels.client import LeaseLost, MLEngine, Operator, Retry, SuggestionIn, Task, Worker
from baywheels.client import sync as blocking
from conftest import LiveServer
from helpers import ADMIN_KEY, until
from proxy import Proxy

# A reaper that looks ten times a second: a lease that is not kept alive is taken back within 0.1 s.
FAST_RESCUE = {"REAPER_INTERVAL_SECONDS": "0.1", "TASK_RETRY_BACKOFF_SECONDS": "0"}


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[LiveServer]:
    live = LiveServer(database_url, env=FAST_RESCUE)
    await asyncio.to_thread(live.start)
    try:
        yield live
    finally:
        await asyncio.to_thread(live.stop)


async def make_tasks(url: str, n: int, first_station: int = 1) -> list[Task]:
    """n ready tasks, approved from fresh suggestions through the clients."""
    items = [
        SuggestionIn(
            from_station_id=first_station + 2 * i, to_station_id=first_station + 2 * i + 1, qty=2, reason="t"
        )
        for i in range(n)
    ]
    async with MLEngine(url, ADMIN_KEY) as ml, Operator(url, ADMIN_KEY) as operator:
        result = await ml.post_suggestions(items)
        ids = [i for i in result.ids if i is not None]
        return (await operator.approve_many(ids)).tasks


async def test_a_worker_completes_tasks_while_heartbeats_outlive_a_one_second_lease(
    server: LiveServer,
) -> None:
    made = await make_tasks(server.url, 3)
    async with (
        Worker(server.url, ADMIN_KEY, "van-1", lease_seconds=1) as worker,
        Operator(server.url, ADMIN_KEY) as operator,
    ):
        done = []
        for _ in made:
            async with worker.next_task(wait=5) as task:
                assert task.lease_expires_at is not None
                first_expiry = task.lease_expires_at

                async def outlived(task: Task = task, first_expiry: object = first_expiry) -> bool:
                    # Held for half a second beyond the first lease, as the service itself records it; without
                    # heartbeats the reaper (every 0.1 s) would have taken the task back.
                    now = await operator.task(task.id)
                    assert now.status == "assigned", now
                    assert now.lease_expires_at is not None
                    return now.lease_expires_at >= task.lease_expires_at + timedelta(seconds=1.5)  # type: ignore[operator]

                await until(outlived, within=10)
            done.append(task.id)
        assert sorted(done) == sorted(t.id for t in made)
        for task_id in done:
            final = await operator.task(task_id)
            assert (final.status, final.worker_id, final.attempts) == ("completed", "van-1", 0)
            assert [e.event for e in await operator.events(task_id)] == ["approved", "assigned", "completed"]


async def test_a_dispatch_whose_answer_is_lost_is_retried_with_the_same_key_and_gets_the_same_task(
    server: LiveServer,
) -> None:
    first, second = await make_tasks(server.url, 2)
    proxy = Proxy(server.url)
    await proxy.start()
    try:
        async with (
            Worker(f"http://127.0.0.1:{proxy.port}", ADMIN_KEY, "van-1") as worker,
            Operator(server.url, ADMIN_KEY) as operator,
        ):
            proxy.cut_next_response()
            got = await worker.dispatch(wait=1)
            assert got is not None
            assert got.id == first.id
            # The lost answer's task is the one the retry received, and nothing else was taken.
            assert [(t.id, t.worker_id) for t in await operator.tasks("assigned")] == [(first.id, "van-1")]
            assert (await operator.task(second.id)).status == "ready"
            assert [e.event for e in await operator.events(first.id)] == ["approved", "assigned"]
            assert not proxy._cut_next, "the proxy cut no answer: the test proved nothing"
    finally:
        await proxy.stop()


async def test_an_exception_in_the_block_fails_the_task_with_its_message(server: LiveServer) -> None:
    (made,) = await make_tasks(server.url, 1)
    async with Worker(server.url, ADMIN_KEY, "van-1") as worker, Operator(server.url, ADMIN_KEY) as operator:
        taken: list[int] = []

        async def jammed() -> None:
            async with worker.next_task(wait=5) as task:
                taken.append(task.id)
                raise RuntimeError("dock jammed at 12")

        with pytest.raises(RuntimeError, match="dock jammed at 12"):
            await jammed()
        assert taken == [made.id]
        final = await operator.task(made.id)
        # TASK_RETRY_BACKOFF_SECONDS=0: ready again at once, the attempt counted, the message kept.
        assert (final.status, final.attempts, final.last_error) == ("ready", 1, "dock jammed at 12")
        assert [(e.event, e.detail) for e in await operator.events(made.id)][-1] == (
            "attempt_failed",
            "dock jammed at 12",
        )


async def test_cancelling_the_block_releases_the_task(server: LiveServer) -> None:
    (made,) = await make_tasks(server.url, 1)
    entered = asyncio.Event()

    async def work(worker: Worker) -> None:
        async with worker.next_task(wait=5):
            entered.set()
            await asyncio.Event().wait()  # until cancelled

    async with Worker(server.url, ADMIN_KEY, "van-1") as worker, Operator(server.url, ADMIN_KEY) as operator:
        job = asyncio.create_task(work(worker))
        await entered.wait()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        final = await operator.task(made.id)
        assert (final.status, final.worker_id, final.attempts) == ("ready", None, 0)
        assert [e.event for e in await operator.events(made.id)] == ["approved", "assigned", "released"]


async def test_an_operators_cancel_stops_the_work_with_lease_lost(server: LiveServer) -> None:
    (made,) = await make_tasks(server.url, 1)
    async with (
        Worker(server.url, ADMIN_KEY, "van-1", lease_seconds=1) as worker,
        Operator(server.url, ADMIN_KEY) as operator,
    ):

        async def canceled_midway() -> None:
            async with worker.next_task(wait=5) as task:
                await operator.cancel(task.id, "station closed")
                await asyncio.Event().wait()  # only the lost lease ends this

        with pytest.raises(LeaseLost) as lost:
            await canceled_midway()
        assert (lost.value.task_id, lost.value.status) == (made.id, 409)
        assert "'canceled'" in lost.value.detail
        assert (await operator.task(made.id)).status == "canceled"
        # Not completed, failed or released after the loss: the cancel is the last word.
        assert [e.event for e in await operator.events(made.id)] == ["approved", "assigned", "canceled"]


async def test_a_503_is_retried_after_its_retry_after(database_url: str) -> None:
    proxy = Proxy(database_url)
    await proxy.start()
    live = LiveServer(
        proxy.url(), env={"RETRY_AFTER": "1", "DB_CONNECT_TIMEOUT": "1", "POOL_ACQUIRE_TIMEOUT": "1"}
    )
    await asyncio.to_thread(live.start)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        # The client waits here after each 503: the first one brings the database back.
        waits.append(seconds)
        if len(waits) == 1:
            await proxy.start()
        await asyncio.sleep(seconds)

    try:
        (made,) = await make_tasks(live.url, 1)
        await proxy.stop()
        async with Operator(live.url, ADMIN_KEY, retry=Retry(attempts=10, sleep=sleep)) as operator:
            task = await operator.task(made.id)
        assert task.id == made.id
        assert waits, "no 503 was retried"
        assert 1.0 <= waits[0] <= 1.2, waits  # Retry-After: 1, spread by up to a fifth
    finally:
        await asyncio.to_thread(live.stop)
        await proxy.stop()


def test_the_blocking_facade_completes_a_task_and_fails_one(live_server: LiveServer) -> None:
    url = live_server.url
    with (
        blocking.MLEngine(url, ADMIN_KEY) as ml,
        blocking.Operator(url, ADMIN_KEY) as operator,
        blocking.Worker(url, ADMIN_KEY, "van-9") as worker,
    ):
        items = [
            SuggestionIn(from_station_id=1, to_station_id=2, qty=1, reason="t"),
            SuggestionIn(from_station_id=3, to_station_id=4, qty=1, reason="t"),
        ]
        ids = [i for i in ml.post_suggestions(items).ids if i is not None]
        first, second = operator.approve_many(ids).tasks
        with worker.next_task(wait=5) as task:
            assert worker.pickup(task).picked_up_at is not None
        assert task.id == first.id
        with pytest.raises(ValueError, match="no bikes"), worker.next_task(wait=5) as task:
            raise ValueError("no bikes")
        assert task.id == second.id
        assert operator.task(first.id).status == "completed"
        assert operator.task(second.id).last_error == "no bikes"


async def test_the_worker_command_prints_and_completes_tasks(server: LiveServer) -> None:
    made = await make_tasks(server.url, 2)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "baywheels",
        "worker",
        "--url",
        server.url,
        "--key",
        ADMIN_KEY,
        "--worker-id",
        "cli-1",
        "--delay",
        "0",
        "--count",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    for task in made:
        assert any(f"task {task.id}:" in line for line in lines), lines
    async with Operator(server.url, ADMIN_KEY) as operator:
        assert {(t.id, t.worker_id) for t in await operator.tasks("completed")} == {
            (t.id, "cli-1") for t in made
        }
