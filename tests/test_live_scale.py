"""Several `baywheels serve` instances on one database, behind a round-robin TCP balancer: every task handed
out once and none lost, also through a rolling restart (SIGTERM: long polls answered, statements in flight
delivered) and through the loss of an instance (SIGKILL: the survivor and the lease rescue finish the work).
Each test checks the outcome in SQL afterwards (fleet.py)."""

import asyncio
import re
import signal
from pathlib import Path

import asyncpg
import httpx

from conftest import LiveServer
from fleet import Fleet, assert_completed_once, assert_each_answered_once, instances, ready_tasks
from helpers import ADMIN, until


async def metric(server: LiveServer, name: str) -> float:
    async with httpx.AsyncClient(headers=ADMIN, base_url=server.url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return 0.0 if match is None else float(match[1])


async def test_three_instances_hand_out_every_task_once(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with instances(database_url, 3, {"LOG_LEVEL": "warning"}, tmp_path) as (servers, balancer):
        fleet = Fleet(balancer.port, size=256, wait_seconds=1)
        fleet.start()
        task_ids: list[int] = []
        async with httpx.AsyncClient(headers=ADMIN, base_url=balancer.base_url, timeout=30) as client:
            # Tasks arrive while the fleet asks: long polls on all three instances are woken by NOTIFY.
            for chunk in range(20):
                task_ids += await ready_tasks(client, chunk * 100, 100)

        async def all_answered() -> bool:
            return len(fleet.assigned) >= len(task_ids)

        try:
            await until(all_answered, within=60)
        finally:
            await fleet.stop()
        served = [await metric(server, 'baywheels_dispatch_total{outcome="assigned"}') for server in servers]
    await assert_each_answered_once(pool, fleet, task_ids)
    assert sum(served) == len(task_ids) == 2000
    assert all(count > 0 for count in served), served  # the balancer spread the fleet over all three


async def test_rolling_restart_loses_nothing(database_url: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    # Long polls outlast the grace: unless SIGTERM answers them, uvicorn would cut them at its deadline.
    env = {"SHUTDOWN_GRACE_SECONDS": "4", "LOG_LEVEL": "info"}
    async with instances(database_url, 2, env, tmp_path) as (servers, balancer):
        restarted = servers[0]
        fleet = Fleet(balancer.port, size=64, wait_seconds=10)
        fleet.start()
        task_ids: list[int] = []
        async with httpx.AsyncClient(headers=ADMIN, base_url=servers[1].url, timeout=30) as client:

            async def feed(first: int, chunks: int) -> None:
                for chunk in range(first, first + chunks):
                    task_ids.extend(await ready_tasks(client, chunk * 20, 20))

            async def all_answered() -> bool:
                return len(fleet.assigned) >= len(task_ids)

            async def sleepers_on_restarted() -> bool:
                return await metric(restarted, "baywheels_dispatch_waiters") > 0

            try:
                await feed(0, 20)
                await until(all_answered, within=30)
                await until(sleepers_on_restarted)  # long polls are waiting there: SIGTERM must answer them
                # Tasks keep coming while the instance stops, so statements are in flight when it does.
                feeding = asyncio.create_task(feed(20, 40))
                process = restarted.process
                assert process is not None
                process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(process.wait, 15) == 0
                restarted.process = None
                await asyncio.to_thread(restarted.start)
                balancer.ports = [restarted.port, servers[1].port]
                await feeding
                await until(all_answered, within=30)
            finally:
                await fleet.stop()
    await assert_each_answered_once(pool, fleet, task_ids)
    assert len(task_ids) == 1200
    log = (tmp_path / "instance0.log").read_text()
    drained = [int(n) for n in re.findall(r'"long_polls_answered": ?(\d+)', log)]
    assert drained, "no shutdown_draining line"
    assert drained[0] > 0, "SIGTERM answered no waiting long poll"
    assert "timeout graceful shutdown exceeded" not in log


async def test_killed_instance_work_finished_by_survivor_and_lease_rescue(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    env = {"REAPER_INTERVAL_SECONDS": "0.2", "LOG_LEVEL": "warning"}
    async with instances(database_url, 2, env, tmp_path) as (servers, balancer):
        killed, survivor = servers
        fleet = Fleet(balancer.port, size=64, wait_seconds=1, lease_seconds=2, complete=True)
        fleet.start()
        task_ids: list[int] = []
        async with httpx.AsyncClient(headers=ADMIN, base_url=survivor.url, timeout=30) as client:

            async def all_completed() -> bool:
                return len(fleet.completed) >= len(task_ids)

            try:
                for chunk in range(10):
                    task_ids += await ready_tasks(client, chunk * 40, 40)
                    if chunk == 4:
                        # Mid-flight: answers it was writing are lost, tasks it assigned stay leased.
                        process = killed.process
                        assert process is not None
                        process.send_signal(signal.SIGKILL)
                        await asyncio.to_thread(process.wait, 15)
                        killed.process = None
                        balancer.ports = [survivor.port]
                await until(all_completed, within=60)
            finally:
                await fleet.stop()
    await assert_completed_once(pool, fleet, task_ids)
    assert len(task_ids) == 400
