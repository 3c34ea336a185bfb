"""Long-polling and rescue against real `baywheels serve` processes over real HTTP: idle waiters cost the
database nothing, a waiter whose client hangs up takes no task, the wake-up latency (printed, not
asserted), two instances on one database hand out every task exactly once while only one of them leads
maintenance, the other taking over when it stops, and a lease that runs out on the clock (nothing moves
lease_expires_at) hands the task to another worker."""

import asyncio
import math
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec

from conftest import LiveServer
from helpers import (
    approve_many,
    assert_assigned_as_told,
    expire_leases,
    json_of,
    make_tasks,
    raw_post,
    suggest_many,
    until,
    until_waiting,
)


def dbname(database_url: str) -> str:
    return urlsplit(database_url).path.lstrip("/")


async def start(*servers: LiveServer) -> None:
    await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))


async def stop(*servers: LiveServer) -> None:
    await asyncio.gather(*(asyncio.to_thread(server.stop) for server in servers))


class DatabaseLoad(msgspec.Struct, frozen=True):
    xact_commit: int
    # (pid, query_start) of each service backend except the maintenance leader's: a new query changes it.
    queries: frozenset[tuple[int, Any]]
    leader_pids: tuple[int, ...]


async def database_load(server_dsn: str, name: str) -> DatabaseLoad:
    # A fresh connection to another database each time: its own transactions do not count, and it starts
    # without a cached statistics snapshot.
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        xact_commit = await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", name)
        leaders = await maintenance_lock_holders(conn, name)
        rows = await conn.fetch(
            "SELECT pid, query_start FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name = 'baywheels'",
            name,
        )
    finally:
        await conn.close()
    return DatabaseLoad(
        xact_commit=xact_commit,
        queries=frozenset((r["pid"], r["query_start"]) for r in rows if r["pid"] not in leaders),
        leader_pids=leaders,
    )


async def maintenance_lock_holders(conn: asyncpg.Connection, name: str) -> tuple[int, ...]:
    """Backends holding the maintenance loop's advisory lock in that database."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = $1)",
        name,
    )
    return tuple(r["pid"] for r in rows)


async def test_idle_long_pollers_put_no_load_on_the_database(database_url: str, server_dsn: str) -> None:
    waiters, interval, idle = 200, 0.25, 2.0
    server = LiveServer(database_url, env={"REAPER_INTERVAL_SECONDS": str(interval)})
    await start(server)
    try:
        async with server.client() as client:
            suggestions = await suggest_many(client, waiters)
            polls = [
                asyncio.ensure_future(
                    raw_post(server.port, "/dispatch/next", {"worker_id": f"w{i}", "wait_seconds": 10})
                )
                for i in range(waiters)
            ]
            await until_waiting(client, waiters)

            before = await database_load(server_dsn, dbname(database_url))
            started = time.monotonic()
            await asyncio.sleep(idle)  # the idle period being measured, not a wait for something to happen
            after = await database_load(server_dsn, dbname(database_url))
            window = time.monotonic() - started

            commits = after.xact_commit - before.xact_commit
            # Maintenance's two statements per tick, over the window plus the up-to-a-second delay with which
            # a backend reports its statistics, and some slack: far below one query per waiter.
            bound = 2 * math.ceil((window + 1.5) / interval) + 10
            print(
                f"\n{waiters} idle long-pollers, {window:.2f} s window: xact_commit {before.xact_commit} -> "
                f"{after.xact_commit} (+{commits}, bound {bound}; maintenance every {interval} s)"
            )
            assert commits <= bound
            assert len(before.leader_pids) == 1
            # Only maintenance started a query: the waiters' pool connections and the listener sat idle.
            assert after.queries == before.queries
            assert not any(poll.done() for poll in polls)

            tasks = await approve_many(client, suggestions)
            approved = time.monotonic()
            answers = await asyncio.gather(*polls)
            print(
                f"{waiters} tasks approved in one call reached {waiters} waiters "
                f"within {(time.monotonic() - approved) * 1000:.0f} ms"
            )

            assert [status for status, _ in answers] == [200] * waiters
            bodies = [body for _, body in answers]
            assert sorted(b["id"] for b in bodies) == sorted(t["id"] for t in tasks)
            assert sorted(b["worker_id"] for b in bodies) == sorted(f"w{i}" for i in range(waiters))
            await until_waiting(client, 0)
    finally:
        await stop(server)


async def test_waiter_whose_client_hangs_up_takes_no_task(
    live_server: LiveServer, pool: asyncpg.Pool
) -> None:
    async with live_server.client() as client:
        (suggestion,) = await suggest_many(client, 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", live_server.port)
        body = b'{"worker_id": "gone", "wait_seconds": 30}'
        writer.write(
            b"POST /dispatch/next HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer test-admin-key-0123456789abcdefghijklmnopqrstuvwxyz\r\n"  # helpers.ADMIN
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        await until_waiting(client, 1)

        writer.close()
        await writer.wait_closed()
        # The server notices the hang-up and forgets the waiter long before its 30 s are over.
        await until_waiting(client, 0)
        assert await reader.read() == b""  # nothing was ever sent back

        (task,) = await approve_many(client, [suggestion])
        later = await client.post("/dispatch/next", json={"worker_id": "second", "wait_seconds": 5})

    assert later.status_code == 200
    assert (later.json()["id"], later.json()["worker_id"]) == (task["id"], "second")
    events = await pool.fetch(
        "SELECT event, worker_id FROM task_events WHERE task_id = $1 ORDER BY id", task["id"]
    )
    assert [(e["event"], e["worker_id"]) for e in events] == [("approved", None), ("assigned", "second")]
    assert await pool.fetchval("SELECT count(*) FROM task_events WHERE worker_id = 'gone'") == 0


async def test_wake_up_latency_over_real_http(live_server: LiveServer) -> None:
    latencies = []
    async with live_server.client() as client:
        suggestions = await suggest_many(client, 5)
        for i, suggestion in enumerate(suggestions):
            waiting = asyncio.ensure_future(
                raw_post(live_server.port, "/dispatch/next", {"worker_id": f"w{i}", "wait_seconds": 10})
            )
            await until_waiting(client, 1)
            (task,) = await approve_many(client, [suggestion])
            approved = time.perf_counter()
            status, body = await waiting
            latencies.append((time.perf_counter() - approved) * 1000)
            assert (status, body["id"], body["worker_id"]) == (200, task["id"], f"w{i}")
    print(
        "\nwake-up latency over real HTTP (approve response -> dispatch response), ms: "
        + ", ".join(f"{ms:.1f}" for ms in latencies)
    )


async def test_two_instances_hand_out_every_task_exactly_once(
    database_url: str, server_dsn: str, pool: asyncpg.Pool
) -> None:
    per_instance, bursts, burst_size = 64, 5, 100
    total = bursts * burst_size
    env = {"REAPER_INTERVAL_SECONDS": "0.05"}
    servers = [LiveServer(database_url, env=dict(env)), LiveServer(database_url, env=dict(env))]
    name = dbname(database_url)
    observer = await asyncpg.connect(server_dsn)
    try:
        # The first instance started leads the maintenance loop; the second waits to take over.
        await start(servers[0])

        async def led() -> bool:
            return bool(await maintenance_lock_holders(observer, name))

        await until(led)
        leader = await maintenance_lock_holders(observer, name)
        await start(servers[1])
        async with servers[0].client() as first, servers[1].client() as second:
            clients = (first, second)
            suggestions = await suggest_many(first, total)
            received: list[tuple[int, dict[str, Any]]] = []
            progress = asyncio.Condition()
            done = asyncio.Event()

            async def dispatcher(instance: int, worker_id: str) -> None:
                while not done.is_set():
                    status, body = await raw_post(
                        servers[instance].port, "/dispatch/next", {"worker_id": worker_id, "wait_seconds": 2}
                    )
                    assert status in (200, 404), body
                    if status == 200:
                        async with progress:
                            received.append((instance, body))
                            progress.notify_all()

            workers = [
                asyncio.ensure_future(dispatcher(instance, f"i{instance}-w{i}"))
                for instance in range(2)
                for i in range(per_instance)
            ]
            await asyncio.gather(*(until_waiting(client, per_instance) for client in clients))

            lock_samples = []
            for burst in range(bursts):
                # Alternate instances: one instance's approval must wake the other's waiters too.
                chunk = suggestions[burst * burst_size : (burst + 1) * burst_size]
                await approve_many(clients[burst % 2], chunk)
                handed_out = (burst + 1) * burst_size
                async with asyncio.timeout(20), progress:
                    await progress.wait_for(lambda: len(received) >= handed_out)  # noqa: B023 (awaited here)
                lock_samples.append(await maintenance_lock_holders(observer, name))
            done.set()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            assert all(s.process is not None and s.process.poll() is None for s in servers)
            await asyncio.gather(*(until_waiting(client, 0) for client in clients))

        by_instance = Counter(instance for instance, _ in received)
        print(
            f"\n{total} tasks in {bursts} bursts to 2 x {per_instance} long-pollers: handed out by instance "
            f"{dict(by_instance)}; maintenance lock holders per burst {lock_samples}"
        )
        # Every task exactly once, and the database agrees with what each worker was told.
        bodies = [body for _, body in received]
        assert len(bodies) == total
        assert len({b["id"] for b in bodies}) == total
        await assert_assigned_as_told(pool, bodies)
        assert set(by_instance) == {0, 1}
        # One leader at a time, though both instances run the loop: the first one's, throughout.
        assert lock_samples == [leader] * bursts

        # Half the leases run out with both instances up: each of those tasks is rescued exactly once.
        ids = sorted(b["id"] for b in bodies)
        first_half, second_half = ids[: total // 2], ids[total // 2 :]
        await expire_and_wait_for_rescue(pool, first_half)
        # The leader goes away; the other instance takes the lock over and rescues the rest.
        await stop(servers[0])
        await expire_and_wait_for_rescue(pool, second_half)
        new_leader = await maintenance_lock_holders(observer, name)
        assert len(new_leader) == 1
        assert new_leader != leader
        print(f"maintenance lock: {leader} while both ran, then {new_leader} once the first had stopped")

        rescued = await pool.fetch(
            "SELECT t.status, t.attempts, count(e.id) AS expiries FROM tasks t "
            "LEFT JOIN task_events e ON e.task_id = t.id AND e.event = 'lease_expired' "
            "GROUP BY t.id"
        )
        assert Counter((r["status"], r["attempts"], r["expiries"]) for r in rescued) == {
            ("ready", 1, 1): total
        }
    finally:
        await observer.close()
        await stop(*servers)


async def expire_and_wait_for_rescue(pool: asyncpg.Pool, task_ids: list[int]) -> None:
    await expire_leases(pool, *task_ids)

    async def rescued() -> bool:
        held = await pool.fetchval(
            "SELECT count(*) FROM tasks WHERE status = 'assigned' AND id = ANY($1::bigint[])", task_ids
        )
        return bool(held == 0)

    await until(rescued, within=20)


async def test_a_lease_that_runs_out_on_the_clock_hands_the_task_to_another_worker(database_url: str) -> None:
    """Worker A takes a task with a one-second lease and goes silent. Nothing but time passes: the server's
    maintenance loop takes the task back once the lease has run out, counting the attempt, worker B is
    dispatched the same task, A's late completion under its old lease is refused and B's goes through."""
    server = LiveServer(database_url, env={"REAPER_INTERVAL_SECONDS": "0.05"})
    await start(server)
    try:
        async with server.client() as client:
            (task,) = await make_tasks(client, 1)
            task_id = task["id"]
            response = await client.post("/dispatch/next", json={"worker_id": "A", "lease_seconds": 1})
            first = json_of(response, 200)
            assert (first["id"], first["status"], first["worker_id"]) == (task_id, "assigned", "A")
            lease_expires_at = datetime.fromisoformat(first["lease_expires_at"])
            assert lease_expires_at - datetime.fromisoformat(first["assigned_at"]) == timedelta(seconds=1)

            statuses: list[str] = []

            async def ready_again() -> bool:
                statuses.append(json_of(await client.get(f"/task/{task_id}"), 200)["status"])
                return statuses[-1] == "ready"

            await until(ready_again, within=10)
            # Held by A until the maintenance loop took it back: no other state in between.
            assert set(statuses[:-1]) <= {"assigned"}
            rescued = json_of(await client.get(f"/task/{task_id}"), 200)
            assert (rescued["status"], rescued["attempts"], rescued["worker_id"], rescued["lease_id"]) == (
                "ready",
                1,
                None,
                None,
            )
            history = json_of(await client.get(f"/task/{task_id}/events"), 200)
            assert [(e["event"], e["worker_id"]) for e in history] == [
                ("approved", None),
                ("assigned", "A"),
                ("lease_expired", "A"),
            ]
            # Taken back only once the lease had run out (both times are the database's clock).
            assert datetime.fromisoformat(history[-1]["at"]) >= lease_expires_at

            second = json_of(await client.post("/dispatch/next", json={"worker_id": "B"}), 200)
            assert (second["id"], second["worker_id"], second["attempts"]) == (task_id, "B", 1)
            assert second["lease_id"] not in (None, first["lease_id"])

            late = await client.post(
                f"/task/{task_id}/complete", json={"worker_id": "A", "lease_id": first["lease_id"]}
            )
            assert json_of(late, 409) == {
                "detail": f"Cannot complete task {task_id}: it is held by another worker"
            }
            done = await client.post(
                f"/task/{task_id}/complete", json={"worker_id": "B", "lease_id": second["lease_id"]}
            )
            completed = json_of(done, 200)
            assert (completed["status"], completed["worker_id"], completed["attempts"]) == (
                "completed",
                "B",
                1,
            )
            history = json_of(await client.get(f"/task/{task_id}/events"), 200)
            assert [(e["event"], e["worker_id"]) for e in history] == [
                ("approved", None),
                ("assigned", "A"),
                ("lease_expired", "A"),
                ("assigned", "B"),
                ("completed", "B"),
            ]
    finally:
        await stop(server)
