"""GET /events over real HTTP: 200 streams of one process each get a change, with no query per stream (counted
by pg_stat_statements on a server of the test's own), and cost nothing once closed; Last-Event-ID resumes from
the database, then live; a worker's key sees its own tasks only, no key gets 401; idle streams get pings; at
SIGTERM every stream ends cleanly. The hub's bounded queue in-process."""

import asyncio
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from baywheels import db
from baywheels.embedded import EmbeddedPostgres
from baywheels.events import STREAM_QUEUE_MAX, Stream
from conftest import LiveServer
from helpers import ADMIN_KEY, bearer, dispatch, embedded_postgres_dir, make_task, metric, until

SUBSCRIBERS = 200


@dataclass
class Event:
    id: int
    event: str
    data: dict[str, Any]


@dataclass
class SseClient:
    """One GET /events on a connection of its own, read as a browser's EventSource would: frames separated
    by a blank line, comments (`: ...`) kept apart."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int = 0
    comments: list[str] = field(default_factory=list)
    _buffer: bytes = b""
    ended: bool = False

    @classmethod
    async def open(
        cls, port: int, headers: dict[str, str] | None = None, path: str = "/events"
    ) -> "SseClient":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        lines = "".join(
            f"{k}: {v}\r\n" for k, v in (bearer(ADMIN_KEY) if headers is None else headers).items()
        )
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{lines}\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        client.status = int(status_line.split(" ", 2)[1])
        headers_in = dict(line.lower().split(": ", 1) for line in header_lines if line)
        if "content-length" in headers_in:  # an error: the whole body at once
            client._buffer = await reader.readexactly(int(headers_in["content-length"]))
            client.ended = True
        else:
            assert headers_in["transfer-encoding"] == "chunked", headers_in
            assert headers_in["content-type"].startswith("text/event-stream"), headers_in
        return client

    async def _more(self) -> bool:
        size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
        if size == 0:
            await self.reader.readexactly(2)
            self.ended = True
            return False
        self._buffer += await self.reader.readexactly(size + 2)
        self._buffer = self._buffer[:-2]
        return True

    async def next(self) -> Event | None:
        """The next event (comments are collected on the way), or None when the stream has ended."""
        while True:
            while b"\n\n" not in self._buffer:
                if self.ended or not await self._more():
                    return None
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            fields: dict[str, str] = {}
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(": ")
                    fields[name] = value
            if fields:
                return Event(int(fields["id"]), fields["event"], json.loads(fields["data"]))

    async def until_comment(self, comment: str) -> None:
        while comment not in self.comments:
            while b"\n\n" not in self._buffer:
                assert await self._more(), "the stream ended"
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            assert block.startswith(b":"), block
            self.comments.append(block[1:].decode().strip())

    async def first(self, event: str, task_id: int) -> Event:
        while True:
            found = await self.next()
            assert found is not None, "the stream ended"
            if found.event == event and found.data["task_id"] == task_id:
                return found

    def close(self) -> None:
        self.writer.close()


async def subscribers(port: int, n: int, headers: dict[str, str] | None = None) -> list[SseClient]:
    """n open streams, each subscribed (its first comment read)."""
    clients = await asyncio.gather(*(SseClient.open(port, headers) for _ in range(n)))
    await asyncio.gather(*(client.until_comment("connected") for client in clients))
    return list(clients)


async def until_streams(server: LiveServer, n: int) -> None:
    async with server.client() as admin:

        async def open_streams() -> bool:
            return await metric(admin, "baywheels_event_streams") == n

        await until(open_streams)


# 200 streams, one process, no query each ------------------------------------------------------------------


@pytest.fixture
def counted_postgres() -> Iterator[EmbeddedPostgres]:
    """A server of this test's own with pg_stat_statements, which counts every statement as it ends."""
    with embedded_postgres_dir() as folder:
        server = EmbeddedPostgres(folder, delete_on_stop=True)
        try:
            with (server.pgdata / "postgresql.auto.conf").open("a") as conf:
                conf.write("shared_preload_libraries = 'pg_stat_statements'\n")
            server.restart()
            yield server
        finally:
            server.stop()


async def statements(conn: asyncpg.Connection) -> int:
    """Statements run in this database so far (this one included)."""
    calls: int = await conn.fetchval(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return calls


async def test_200_streams_each_get_a_change_with_no_query_per_stream(
    counted_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    dsn = counted_postgres.dsn()
    await db.migrate(dsn)
    conn = await asyncpg.connect(dsn)
    server = LiveServer(dsn, log_path=tmp_path / "serve.log")
    server.start()
    try:
        await conn.execute("CREATE EXTENSION pg_stat_statements")
        clients = await subscribers(server.port, SUBSCRIBERS)
        await until_streams(server, SUBSCRIBERS)
        async with server.client() as admin:
            before = await statements(conn)
            queries_before = await metric(admin, "baywheels_event_queries_total")
            task = await make_task(admin, 1, 2)
            async with asyncio.timeout(15):
                received = await asyncio.gather(*(client.first("approved", task["id"]) for client in clients))
            spent = await statements(conn) - before
            tail_queries = await metric(admin, "baywheels_event_queries_total") - queries_before
        assert {(e.event, e.data["task_id"], e.data["status"]) for e in received} == {
            ("approved", task["id"], "ready")
        }
        assert len({e.id for e in received}) == 1
        # The change itself (about 4 statements), the maintenance loop and the shared tail (a few a second):
        # a query per stream would be 200 more.
        assert spent < SUBSCRIBERS / 2, spent
        assert tail_queries < SUBSCRIBERS / 4, tail_queries

        # Closed streams cost nothing: unsubscribed at once, and the tail stops with the last.
        for client in clients[: SUBSCRIBERS // 2]:
            client.close()
        await until_streams(server, SUBSCRIBERS // 2)
        for client in clients[SUBSCRIBERS // 2 :]:
            client.close()
        await until_streams(server, 0)
        async with server.client() as admin:
            idle_before = await metric(admin, "baywheels_event_queries_total")
            await make_task(admin, 3, 4)  # a notification the stopped tail does not act on
            await dispatch(admin, "van-1")
            assert await metric(admin, "baywheels_event_queries_total") - idle_before <= 1
    finally:
        server.stop()
        await conn.close()


# Resuming, authorization, pings, shutdown ---------------------------------------------------------------


@pytest.fixture
def events_server(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(
        database_url, env={"EVENTS_HEARTBEAT_SECONDS": "0.2"}, log_path=tmp_path / "serve.log"
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_last_event_id_resumes_from_the_database_then_live(
    events_server: LiveServer, pool: asyncpg.Pool
) -> None:
    async with events_server.client() as admin:
        tasks = [await make_task(admin, n, n + 1) for n in (1, 3, 5)]
        ids = [
            await pool.fetchval("SELECT id FROM task_events WHERE task_id = $1", task["id"]) for task in tasks
        ]
        client = await SseClient.open(events_server.port, {**bearer(ADMIN_KEY), "Last-Event-ID": str(ids[0])})
        missed = [await client.next() for _ in range(2)]
        assert [(e.id, e.event, e.data["task_id"]) for e in missed if e] == [
            (ids[1], "approved", tasks[1]["id"]),
            (ids[2], "approved", tasks[2]["id"]),
        ]
        assigned = await dispatch(admin, "van-7")
        live = await client.first("assigned", assigned["id"])
        assert live.id > ids[2]
        assert live.data == {
            "id": live.id,
            "task_id": assigned["id"],
            "event": "assigned",
            "status": "assigned",
            "worker_id": "van-7",
            "detail": None,
            "actor": "env:ADMIN_API_KEY",
            "at": live.data["at"],
        }
        # Idle: pings.
        await client.until_comment("ping")
        client.close()

        # follow=false: what came after the id, then the end.
        response = await admin.get(f"/events?follow=false&after={ids[1]}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert [line for line in response.text.split("\n") if line.startswith("id: ")] == [
            f"id: {ids[2]}",
            f"id: {live.id}",
        ]
        bad = await SseClient.open(events_server.port, {**bearer(ADMIN_KEY), "Last-Event-ID": "x1"})
        assert bad.status == 400
        assert json.loads(bad._buffer)["detail"].startswith("Last-Event-ID must be an event id")
        bad.close()


async def test_who_may_listen(events_server: LiveServer) -> None:
    refused = await SseClient.open(events_server.port, {})
    refused.close()
    assert refused.status == 401
    async with events_server.client() as admin:
        key = (await admin.post("/keys", json={"role": "worker", "worker_id": "van-1"})).json()["key"]
        ml = (await admin.post("/keys", json={"role": "ml"})).json()["key"]
        forbidden = await SseClient.open(events_server.port, bearer(ml))
        forbidden.close()
        assert forbidden.status == 403
        mine = await SseClient.open(events_server.port, bearer(key))
        await mine.until_comment("connected")
        await make_task(admin, 1, 2)
        await make_task(admin, 3, 4)
        other = await dispatch(admin, "van-2")
        own = await dispatch(admin, "van-1")
        first = await mine.next()
        # Neither approval (no worker yet) nor van-2's assignment: van-1's own first.
        assert first is not None
        assert (first.event, first.data["task_id"]) == ("assigned", own["id"])
        assert other["id"] != own["id"]
        mine.close()


async def test_streams_end_cleanly_at_shutdown(events_server: LiveServer) -> None:
    clients = await subscribers(events_server.port, 5)
    await until_streams(events_server, 5)
    assert events_server.stop(signal.SIGTERM) == 0
    for client in clients:
        async with asyncio.timeout(5):
            while await client.next() is not None:
                pass
        # The stream ended with HTTP's last chunk, not a cut connection.
        assert client.ended
        client.close()


# The bounded queue ------------------------------------------------------------------------------------------


def test_a_stream_that_falls_behind_is_ended_not_grown() -> None:
    stream = Stream(None)
    for event_id in range(1, STREAM_QUEUE_MAX + 1):
        stream.offer(event_id, None, b"x")
    assert stream.queue.qsize() == STREAM_QUEUE_MAX
    assert not stream.ended
    stream.offer(STREAM_QUEUE_MAX + 1, None, b"x")
    assert stream.ended
    # What is queued is dropped; the client hears the end at once and resumes from its Last-Event-ID.
    assert stream.queue.qsize() == 1
    assert stream.queue.get_nowait() is None
    stream.offer(STREAM_QUEUE_MAX + 2, None, b"x")
    assert stream.queue.empty()


def test_a_stream_skips_what_its_client_had_and_other_workers_events() -> None:
    stream = Stream("van-1", after=10)
    for event_id, worker in [(9, "van-1"), (10, "van-1"), (11, "van-2"), (12, "van-1"), (13, None)]:
        stream.offer(event_id, worker, str(event_id).encode())
    assert stream.queue.qsize() == 1
    assert stream.queue.get_nowait() == b"12"
