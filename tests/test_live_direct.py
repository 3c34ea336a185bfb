"""``POST /dispatch/next`` served by the protocol itself (direct.py) answers as the ASGI app does.

Two real servers side by side, one as shipped and one with DIRECT_DISPATCH=false, each on its own copy of the
same database, get the same requests over raw sockets (each request written in one piece, as wrk and most
clients do, or in parts): statuses, bodies and headers must agree, and the access log's ``via`` must show
that the first server served them directly, so that this test cannot pass by both taking the app's path."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import LiveServer, cloned_database
from helpers import ADMIN_KEY, make_tasks, metric

PATIENCE = 30
ENV = {"ACCESS_LOG": "true", "LOG_FORMAT": "json"}
NO_TASK = {"detail": "No available tasks with status 'ready'"}


@pytest.fixture
async def servers(
    database_url: str, server_dsn: str, template_db: str, tmp_path: Path
) -> AsyncIterator[tuple[LiveServer, LiveServer]]:
    """(direct, app): the service as shipped, and with DIRECT_DISPATCH=false."""
    async with cloned_database(server_dsn, template_db) as other_url:
        direct = LiveServer(database_url, env=ENV, log_path=tmp_path / "direct.log")
        app = LiveServer(other_url, env={**ENV, "DIRECT_DISPATCH": "false"}, log_path=tmp_path / "app.log")
        await asyncio.gather(asyncio.to_thread(direct.start), asyncio.to_thread(app.start))
        try:
            yield direct, app
        finally:
            await asyncio.gather(asyncio.to_thread(direct.stop), asyncio.to_thread(app.stop))


Answer = tuple[int, dict[str, str], bytes]


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    async with asyncio.timeout(PATIENCE):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines if line)
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def dispatch_request(
    body: bytes, *, path: str = "/dispatch/next", auth: str = ADMIN_KEY, extra: tuple[str, ...] = ()
) -> bytes:
    head = [
        f"POST {path} HTTP/1.1",
        "Host: test",
        "Content-Type: application/json",
        f"Authorization: Bearer {auth}",
        *extra,
        f"Content-Length: {len(body)}",
        "",
        "",
    ]
    return "\r\n".join(head).encode() + body


async def exchange(server: LiveServer, request: bytes, answers: int = 1) -> list[Answer]:
    """Writes the request (in one piece), then reads ``answers`` answers from the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        return [await read_answer(reader) for _ in range(answers)]
    finally:
        writer.close()


async def exchange_apart(server: LiveServer, request: bytes) -> Answer:
    """The head first, asking to be told to go on (Expect: 100-continue), and the body only once the
    server said so: so the server surely reads the two apart."""
    head, _, body = request.partition(b"\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head + b"\r\nExpect: 100-continue\r\n\r\n")
        async with asyncio.timeout(PATIENCE):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        return await read_answer(reader)
    finally:
        writer.close()


def comparable(answer: Answer) -> tuple[int, dict[str, str], Any]:
    status, headers, body = answer
    names: tuple[str, ...] = ("content-type", "www-authenticate", "connection")
    kept = {name: headers[name] for name in names if name in headers}
    payload = json.loads(body) if body else None
    if isinstance(payload, dict) and "id" in payload:
        # A task: its stations, leases and clocks differ from one database to the other.
        payload = (sorted(payload), payload["status"], payload["worker_id"])
    return status, kept, payload


def served_directly(server: LiveServer) -> list[int]:
    """Statuses of the dispatches the protocol answered itself, from the access log."""
    assert server.log_path is not None
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    return [
        line["status"] for line in lines if line.get("event") == "request" and line.get("via") == "direct"
    ]


async def test_the_direct_path_answers_as_the_app_does(servers: tuple[LiveServer, LiveServer]) -> None:
    direct, app = servers
    worker_keys = {}
    for server in servers:
        async with server.client() as client:
            await make_tasks(client, 3)
            response = await client.post("/keys", json={"role": "worker", "worker_id": "van-9"})
            worker_keys[server.port] = response.json()["key"]

    keyed = ("Idempotency-Key: k1",)
    cases = [
        ("a dispatch", dispatch_request(b'{"worker_id": "van-1"}')),
        ("a retry with an Idempotency-Key", dispatch_request(b'{"worker_id": "van-3"}', extra=keyed)),
        ("the same key again", dispatch_request(b'{"worker_id": "van-3"}', extra=keyed)),
        (
            "a bad Idempotency-Key",
            dispatch_request(b'{"worker_id": "van-4"}', extra=("Idempotency-Key: a b",)),
        ),
        ("nothing left", dispatch_request(b'{"worker_id": "van-5"}')),
        ("malformed JSON", dispatch_request(b'{"worker_id": ')),
        ("an unknown field", dispatch_request(b'{"worker_id": "van-5", "colour": 1}')),
        ("a wrong key", dispatch_request(b'{"worker_id": "van-5"}', auth="nope")),
        ("a query string", dispatch_request(b'{"worker_id": "van-5"}', path="/dispatch/next?x=1")),
        ("a long poll", dispatch_request(b'{"worker_id": "van-5", "wait_seconds": 0.2}')),
        ("the client closing", dispatch_request(b'{"worker_id": "van-5"}', extra=("Connection: close",))),
    ]
    apart = dispatch_request(b'{"worker_id": "van-2"}')
    for server in servers:
        # Before the rest, so that it finds a task; its body comes after its head.
        assert (await exchange_apart(server, apart))[0] == 200
    for name, request in cases:
        got = [comparable((await exchange(server, request))[0]) for server in servers]
        assert got[0] == got[1], name

    # A worker key acts for its own worker, and for no other.
    for body, status in ((b"{}", 404), (b'{"worker_id": "van-1"}', 403)):
        got = [
            comparable((await exchange(server, dispatch_request(body, auth=worker_keys[server.port])))[0])
            for server in servers
        ]
        assert got[0] == got[1]
        assert got[0][0] == status

    # The first server answered these itself; the rest (bad bodies, query string, long poll) went to its app.
    assert sorted(served_directly(direct)) == sorted([200, 200, 200, 200, 400, 404, 401, 404, 404, 403])
    assert served_directly(app) == []


async def test_pipelined_dispatches_are_answered_in_order(servers: tuple[LiveServer, LiveServer]) -> None:
    direct, _ = servers
    async with direct.client() as client:
        tasks = await make_tasks(client, 2)
    first, second, third = (dispatch_request(b'{"worker_id": "van-%d"}' % n) for n in (1, 2, 3))
    # In one write: the second and third arrive while the first is being served.
    answers = await exchange(direct, first + second + third, answers=3)
    assert [status for status, _, _ in answers] == [200, 200, 404]
    assert [json.loads(body).get("worker_id") for _, _, body in answers[:2]] == ["van-1", "van-2"]
    assert sorted(json.loads(body)["id"] for _, _, body in answers[:2]) == sorted(t["id"] for t in tasks)
    assert json.loads(answers[2][2]) == NO_TASK
    assert len({headers["x-request-id"] for _, headers, _ in answers}) == 3
    async with direct.client() as client:
        sample = 'baywheels_http_requests_total{method="POST",route="/dispatch/next",status="%d"}'
        assert await metric(client, sample % 200) == 2
        assert await metric(client, sample % 404) == 1
    assert served_directly(direct) == [200, 200, 404]


async def test_a_request_id_is_echoed_and_a_closing_client_is_closed(
    servers: tuple[LiveServer, LiveServer],
) -> None:
    direct, _ = servers
    reader, writer = await asyncio.open_connection("127.0.0.1", direct.port)
    try:
        writer.write(
            dispatch_request(b'{"worker_id": "van-1"}', extra=("X-Request-ID: trip-42", "Connection: close"))
        )
        status, headers, body = await read_answer(reader)
        assert (status, json.loads(body)) == (404, NO_TASK)
        assert (headers["x-request-id"], headers["connection"]) == ("trip-42", "close")
        async with asyncio.timeout(PATIENCE):
            assert await reader.read(-1) == b""  # and the server closed the connection
    finally:
        writer.close()
    assert served_directly(direct) == [404]
