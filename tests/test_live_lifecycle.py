"""Long-polling and rescue against real `baywheels serve` processes over real HTTP: idle waiters cost the
database nothing, a waiter whose client hangs up takes no task, the wake-up latency (printed, not
asserted), two instances on one database hand out every task exactly once while only one of them runs
the reaper, the other taking over when it stops, and a lease that runs out on the clock (nothing moves
lease_expires_at) hands the task to another worker."""

import asyncio
import json
import math
import re
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import msgspec

from conftest import LiveServer
from helpers import ADMIN, json_of, until

REAPER_LOCK = "hashtext('baywheels.reaper')"


def dbname(database_url: str) -> str:
    return urlsplit(database_url).path.lstrip("/")


async def ingest(client: httpx.AsyncClient, url: str, n: int) -> list[int]:
    items = [
        {"from_station_id": 2 * i + 1, "to_station_id": 2 * i + 2, "qty": 1, "reason": "t"} for i in range(n)
    ]
    response = await client.post(f"{url}/suggestions", json=items)
    assert response.status_code == 201, response.text
    ids: list[int] = response.json()["ids"]
    return ids


async def approve(client: httpx.AsyncClient, url: str, suggestion_ids: list[int]) -> list[dict[str, Any]]:
    response = await client.post(f"{url}/tasks/approve", json={"suggestion_ids": suggestion_ids})
    assert response.status_code == 200, response.text
    tasks: list[dict[str, Any]] = response.json()["tasks"]
    assert len(tasks) == len(suggestion_ids)
    return tasks


async def metric(client: httpx.AsyncClient, url: str, line: str) -> float:
    text = (await client.get(f"{url}/metrics")).text
    match = re.search(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)
    return 0.0 if match is None else float(match[1])


async def until_waiting(client: httpx.AsyncClient, url: str, n: int) -> None:
    """Until n long-polls sleep in that process's dispatcher."""

    async def waiting() -> bool:
        return await metric(client, url, "baywheels_dispatch_waiters") == n

    await until(waiting, within=15)


async def start(*servers: LiveServer) -> None:
    await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))


async def stop(*servers: LiveServer) -> None:
    await asyncio.gather(*(asyncio.to_thread(server.stop) for server in servers))


async def raw_post(port: int, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST over a connection of its own. Hundreds of concurrent long-polls are cheap this way (an httpx
    client's pool spends more than a second handing out 200 responses); cancelling closes the socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data = json.dumps(body).encode()
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Authorization: Bearer test-admin-key-0123456789abcdefghijklmnopqrstuvwxyz\r\n"  # helpers.ADMIN
            b"Connection: close\r\n\r\n%s" % (path.encode(), len(data), data)
        )
        response = await reader.read()  # to the end: the server closes after answering
    finally:
        writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(payload)


class DatabaseLoad(msgspec.Struct, frozen=True):
    xact_commit: int
    # (pid, query_start) of each service backend except the reaper's: a new query changes query_start.
    queries: frozenset[tuple[int, Any]]
    reaper_pids: tuple[int, ...]


async def database_load(server_dsn: str, name: str) -> DatabaseLoad:
    # A fresh connection to another database each time: its own transactions do not count, and it starts
    # without a cached statistics snapshot.
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        xact_commit = await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", name)
        reapers = await reaper_lock_holders(conn, name)
        rows = await conn.fetch(
            "SELECT pid, query_start FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name = 'baywheels'",
            name,
        )
    finally:
        await conn.close()
    return DatabaseLoad(
        xact_commit=xact_commit,
        queries=frozenset((r["pid"], r["query_start"]) for r in rows if r["pid"] not in reapers),
        reaper_pids=reapers,
    )


async def reaper_lock_holders(conn: asyncpg.Connection, name: str) -> tuple[int, ...]:
    """Backends holding the reaper's advisory lock in that database."""
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
        async with httpx.AsyncClient(headers=ADMIN, timeout=30) as client:
            suggestions = await ingest(client, server.url, waiters)
            polls = [
                asyncio.ensure_future(
                    raw_post(server.port, "/dispatch/next", {"worker_id": f"w{i}", "wait_seconds": 10})
                )
                for i in range(waiters)
            ]
            await until_waiting(client, server.url, waiters)

            before = await database_load(server_dsn, dbname(database_url))
            started = time.monotonic()
            await asyncio.sleep(idle)  # the idle period being measured, not a wait for something to happen
            after = await database_load(server_dsn, dbname(database_url))
            window = time.monotonic() - started

            commits = after.xact_commit - before.xact_commit
            # The reaper's two statements per tick, over the window plus the up-to-a-second delay with which a
            # backend reports its statistics, and some slack: far below one query per waiter.
            bound = 2 * math.ceil((window + 1.5) / interval) + 10
            print(
                f"\n{waiters} idle long-pollers, {window:.2f} s window: xact_commit {before.xact_commit} -> "
                f"{after.xact_commit} (+{commits}, bound {bound}; reaper every {interval} s)"
            )
            assert commits <= bound
            assert len(before.reaper_pids) == 1
            # Nothing but the reaper started a query: the waiters' pool connections and the listener sat idle.
            assert after.queries == before.queries
            assert not any(poll.done() for poll in polls)

            tasks = await approve(client, server.url, suggestions)
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
            await until_waiting(client, server.url, 0)
    finally:
        await stop(server)


async def test_waiter_whose_client_hangs_up_takes_no_task(
    live_server: LiveServer, pool: asyncpg.Pool
) -> None:
    async with httpx.AsyncClient(headers=ADMIN, base_url=live_server.url, timeout=30) as client:
        (suggestion,) = await ingest(client, live_server.url, 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", live_server.port)
        body = b'{"worker_id": "gone", "wait_seconds": 30}'
        writer.write(
            b"POST /dispatch/next HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer test-admin-key-0123456789abcdefghijklmnopqrstuvwxyz\r\n"  # helpers.ADMIN
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        await until_waiting(client, live_server.url, 1)

        writer.close()
        await writer.wait_closed()
        # The server notices the hang-up and forgets the waiter long before its 30 s are over.
        await until_waiting(client, live_server.url, 0)
        assert await reader.read() == b""  # nothing was ever sent back

        (task,) = await approve(client, live_server.url, [suggestion])
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
    async with httpx.AsyncClient(headers=ADMIN, base_url=live_server.url, timeout=30) as client:
        suggestions = await ingest(client, live_server.url, 5)
        for i, suggestion in enumerate(suggestions):
            waiting = asyncio.ensure_future(
                raw_post(live_server.port, "/dispatch/next", {"worker_id": f"w{i}", "wait_seconds": 10})
            )
            await until_waiting(client, live_server.url, 1)
            (task,) = await approve(client, live_server.url, [suggestion])
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
        # The first instance started leads the reaper; the second waits to take over.
        await start(servers[0])

        async def led() -> bool:
            return bool(await reaper_lock_holders(observer, name))

        await until(led)
        leader = await reaper_lock_holders(observer, name)
        await start(servers[1])
        async with httpx.AsyncClient(headers=ADMIN, timeout=30) as client:
            suggestions = await ingest(client, servers[0].url, total)
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
            await asyncio.gather(*(until_waiting(client, s.url, per_instance) for s in servers))

            lock_samples = []
            for burst in range(bursts):
                # Alternate instances: one instance's approval must wake the other's waiters too.
                chunk = suggestions[burst * burst_size : (burst + 1) * burst_size]
                await approve(client, servers[burst % 2].url, chunk)
                handed_out = (burst + 1) * burst_size
                async with asyncio.timeout(20), progress:
                    await progress.wait_for(lambda: len(received) >= handed_out)  # noqa: B023 (awaited here)
                lock_samples.append(await reaper_lock_holders(observer, name))
            done.set()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            assert all(s.process is not None and s.process.poll() is None for s in servers)
            await asyncio.gather(*(until_waiting(client, s.url, 0) for s in servers))

        by_instance = Counter(instance for instance, _ in received)
        print(
            f"\n{total} tasks in {bursts} bursts to 2 x {per_instance} long-pollers: handed out by instance "
            f"{dict(by_instance)}; reaper lock holders per burst {lock_samples}"
        )
        # Every task exactly once, and the database agrees with what each worker was told.
        bodies = [body for _, body in received]
        assert len(bodies) == total
        assert len({b["id"] for b in bodies}) == total
        rows = await pool.fetch("SELECT id, status, worker_id, lease_id FROM tasks")
        assert {(r["id"], r["status"], r["worker_id"], str(r["lease_id"])) for r in rows} == {
            (b["id"], "assigned", b["worker_id"], b["lease_id"]) for b in bodies
        }
        assignments = await pool.fetch("SELECT task_id, worker_id FROM task_events WHERE event = 'assigned'")
        assert sorted((r["task_id"], r["worker_id"]) for r in assignments) == sorted(
            (b["id"], b["worker_id"]) for b in bodies
        )
        assert set(by_instance) == {0, 1}
        # One reaper at a time, though both instances run one: the first one's, throughout.
        assert lock_samples == [leader] * bursts

        # Half the leases run out with both instances up: each of those tasks is rescued exactly once.
        ids = sorted(b["id"] for b in bodies)
        first_half, second_half = ids[: total // 2], ids[total // 2 :]
        await expire_and_wait_for_rescue(pool, first_half)
        # The leader goes away; the other instance takes the lock over and rescues the rest.
        await stop(servers[0])
        await expire_and_wait_for_rescue(pool, second_half)
        new_leader = await reaper_lock_holders(observer, name)
        assert len(new_leader) == 1
        assert new_leader != leader
        print(f"reaper lock: {leader} while both ran, then {new_leader} after the first instance stopped")

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
    await pool.execute(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = ANY($1::bigint[])",
        task_ids,
    )

    async def rescued() -> bool:
        held = await pool.fetchval(
            "SELECT count(*) FROM tasks WHERE status = 'assigned' AND id = ANY($1::bigint[])", task_ids
        )
        return bool(held == 0)

    await until(rescued, within=20)


async def test_a_lease_that_runs_out_on_the_clock_hands_the_task_to_another_worker(database_url: str) -> None:
    """Worker A takes a task with a one-second lease and goes silent. Nothing but time passes: the server's
    reaper takes the task back once the lease has run out, counting the attempt, worker B is dispatched the
    same task, A's late completion under its old lease is refused and B's goes through."""
    server = LiveServer(database_url, env={"REAPER_INTERVAL_SECONDS": "0.05"})
    await start(server)
    try:
        async with httpx.AsyncClient(headers=ADMIN, base_url=server.url, timeout=30) as client:
            (suggestion,) = await ingest(client, server.url, 1)
            (task,) = await approve(client, server.url, [suggestion])
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
            # Held by A until the reaper took it back: no other state in between.
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
