"""The limits of the real server stack (`baywheels serve`: uvicorn, httptools, our protocol and middleware),
spoken to over raw sockets where a client must misbehave: header size and count (431), the time to send the
headers and the body (408), the connection cap (503 with Retry-After), the open-files limit, a client that
leaves in the middle of its body (499, logged once), and slow clients that no longer starve the others.

Nothing here is timed: each test waits for the server's answer (or its closing the connection) under a
generous deadline that only fails a hung test."""

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from conftest import LiveServer
from helpers import metric, until

HEAD_BYTES, HEAD_COUNT, READ_TIMEOUT = 2048, 20, 1.0
LIMITS = {
    "MAX_HEADER_BYTES": str(HEAD_BYTES),
    "MAX_HEADER_COUNT": str(HEAD_COUNT),
    "REQUEST_HEADER_TIMEOUT": str(READ_TIMEOUT),
    "REQUEST_BODY_TIMEOUT": str(READ_TIMEOUT),
    "LOG_FORMAT": "json",
    "ACCESS_LOG": "true",
}
# Longer than any answer can take on a loaded machine; reached only by a test that would hang.
PATIENCE = 30


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(database_url, env=LIMITS, log_path=tmp_path / "serve.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connect = Callable[[LiveServer], Awaitable[Streams]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Raw connections to a server, closed at the end of the test."""
    writers: list[asyncio.StreamWriter] = []

    async def open_connection(server: LiveServer) -> Streams:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writers.append(writer)
        return reader, writer

    yield open_connection
    for writer in writers:
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for writer in writers), return_exceptions=True)


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Everything the server sends until it closes: status, headers, body. The server must close."""
    async with asyncio.timeout(PATIENCE):
        raw = await reader.read(-1)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def request_head(path: str = "/healthz", *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: test", *extra, "", ""]).encode()


async def server_metric(server: LiveServer, line: str) -> float:
    """The value of one sample of the server's /metrics, 0 when it has none yet."""
    async with server.client() as client:
        return await metric(client, line)


async def until_metric(server: LiveServer, line: str, value: float) -> None:
    """Until the server has counted it."""
    async with server.client() as client:

        async def counted() -> bool:
            return await metric(client, line) >= value

        await until(counted, within=PATIENCE)


def log_lines(server: LiveServer) -> list[dict[str, object]]:
    assert server.log_path is not None
    lines = server.log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def test_too_many_headers_is_431(server: LiveServer, connect: Connect) -> None:
    reader, writer = await connect(server)
    writer.write(request_head("/healthz", *(f"X-H{i}: {i}" for i in range(HEAD_COUNT + 1))))
    status, headers, body = await answer(reader)
    assert (status, headers["content-type"], headers["connection"]) == (431, "application/json", "close")
    assert json.loads(body) == {"detail": f"More than {HEAD_COUNT} request headers"}
    # Answered in the app's place, so logged and counted like any other answer, with its request id.
    request_id = headers["x-request-id"]
    sample = 'baywheels_http_requests_total{method="GET",route="unmatched",status="431"}'
    assert await server_metric(server, sample) == 1
    [logged] = [line for line in log_lines(server) if line.get("status") == 431]
    assert (logged["event"], logged["path"], logged["request_id"]) == ("request", "/healthz", request_id)
    # At the limit, the request is served.
    reader, writer = await connect(server)
    writer.write(
        request_head("/healthz", "Connection: close", *(f"X-H{i}: {i}" for i in range(HEAD_COUNT - 2)))
    )
    assert (await answer(reader))[0] == 200


async def test_a_head_over_the_size_limit_is_431_before_it_ends(server: LiveServer, connect: Connect) -> None:
    """One header that never ends: answered once the limit is passed, so the server never holds more than
    about the limit (a 64 MiB header used to be read to its end, and accepted)."""
    reader, writer = await connect(server)
    writer.write(request_head("/healthz")[:-2] + b"X-Big: " + b"a" * (2 * HEAD_BYTES))  # no end of line
    status, _, body = await answer(reader)
    assert status == 431
    assert json.loads(body) == {"detail": f"Request headers exceed the limit of {HEAD_BYTES} bytes"}
    await until_metric(server, 'baywheels_http_limited_total{limit="header_bytes"}', 1)
    # A head under the limit, with its headers split across several writes, is served.
    reader, writer = await connect(server)
    for part in (
        b"GET /healthz HTTP/1.1\r\nHost: te",
        b"st\r\nX-Pad: " + b"p" * 1000,
        b"\r\nConnection: close\r\n\r\n",
    ):
        writer.write(part)
        await writer.drain()
    assert (await answer(reader))[0] == 200


async def test_headers_sent_too_slowly_get_408(server: LiveServer, connect: Connect) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")  # and never the blank line
    status, _, body = await answer(reader)
    assert status == 408
    assert json.loads(body) == {"detail": f"Request headers not received within {READ_TIMEOUT:g} s"}
    # A connection that never says anything is closed without an answer.
    reader, _ = await connect(server)
    async with asyncio.timeout(PATIENCE):
        assert await reader.read(-1) == b""


async def test_a_body_sent_too_slowly_gets_408(server: LiveServer, connect: Connect) -> None:
    reader, writer = await connect(server)
    writer.write(
        b"POST /suggestions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer test-admin-key-0123456789abcdefghijklmnopqrstuvwxyz\r\n"  # helpers.ADMIN
        b"Content-Length: 100\r\n\r\n[{"
    )
    status, headers, body = await answer(reader)
    assert (status, headers["connection"]) == (408, "close")
    assert json.loads(body) == {"detail": f"Request body not received within {READ_TIMEOUT:g} s"}
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])  # answered by the app, like any other
    sample = 'baywheels_http_requests_total{method="POST",route="/suggestions",status="408"}'
    assert await server_metric(server, sample) == 1
    assert await server_metric(server, 'baywheels_http_limited_total{limit="body_timeout"}') == 1


async def test_a_long_poll_is_not_cut_by_the_body_timeout(server: LiveServer) -> None:
    """Once the body is in, waiting for a task may take longer than REQUEST_BODY_TIMEOUT."""
    async with server.client() as client:
        response = await client.post("/dispatch/next", json={"worker_id": "van-7", "wait_seconds": 2.5})
    assert (response.status_code, response.json()) == (
        404,
        {"detail": "No available tasks with status 'ready'"},
    )


async def test_a_client_leaving_mid_body_is_499_logged_once_without_traceback(
    server: LiveServer, connect: Connect
) -> None:
    for _ in range(3):
        _, writer = await connect(server)
        writer.write(
            b"POST /suggestions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer test-admin-key-0123456789abcdefghijklmnopqrstuvwxyz\r\n"  # helpers.ADMIN
            b'Content-Length: 1000\r\n\r\n[{"from_station_id": 1'
        )
        await writer.drain()
        writer.close()
    sample = 'baywheels_http_requests_total{method="POST",route="/suggestions",status="%s"}'
    await until_metric(server, sample % 499, 3)
    assert await server_metric(server, sample % 500) == 0
    logged = log_lines(server)
    left = [line for line in logged if line["event"] == "client_disconnected"]
    assert [(line["level"], line["path"]) for line in left] == [("info", "/suggestions")] * 3
    assert not [line for line in logged if line.get("level") == "error" or "exception" in line]
    assert server.log_path is not None
    assert "Traceback" not in server.log_path.read_text()


def test_the_open_files_limit_is_raised_to_the_hard_limit(server: LiveServer) -> None:
    assert server.process is not None
    limits = Path(f"/proc/{server.process.pid}/limits")
    if not limits.exists():
        pytest.skip("needs Linux's /proc")
    soft, hard = re.findall(r"^Max open files\s+(\S+)\s+(\S+)", limits.read_text(), flags=re.MULTILINE)[0]
    assert soft == hard


async def test_slow_clients_are_cut_and_do_not_starve_a_normal_client(
    server: LiveServer, connect: Connect
) -> None:
    """Many clients sending their headers a byte at a time used to hold every file descriptor until they
    gave up. Now a normal client is served while they hang on, and each of them is cut after
    REQUEST_HEADER_TIMEOUT."""
    slow = [await connect(server) for _ in range(50)]
    for _, writer in slow:
        writer.write(b"POST /dispatch/next HTTP/1.1\r\nHo")
    async with server.client() as client:
        response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    answers = await asyncio.gather(*(answer(reader) for reader, _ in slow))
    assert {status for status, _, _ in answers} == {408}
    await until_metric(server, 'baywheels_http_limited_total{limit="header_timeout"}', 50)
    # Every one is counted, but a flood is not logged line by line: at most one line a second, each saying
    # how many it stands for.
    logged = [line for line in log_lines(server) if line.get("limit") == "header_timeout"]
    assert 1 <= len(logged) < 50
    assert len(logged) + sum(int(str(line["also_since_last_line"])) for line in logged) <= 50


@pytest.fixture
def capped_server(database_url: str) -> Iterator[LiveServer]:
    """Four connections per process, and all the time in the world to send the headers."""
    server = LiveServer(database_url, env={"MAX_CONNECTIONS": "4", "RETRY_AFTER": "7"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_beyond_max_connections_a_request_gets_503_json(
    capped_server: LiveServer, connect: Connect
) -> None:
    holding = [await connect(capped_server) for _ in range(4)]
    for _, writer in holding:
        writer.write(b"GET /healthz HTTP/1.1\r\nHo")  # headers never finished: the connection stays open
        await writer.drain()
    # The server may not have accepted all four yet: until it has, a request is served (200).
    async with asyncio.timeout(PATIENCE):
        while True:
            reader, writer = await connect(capped_server)
            writer.write(request_head("/healthz", "Connection: close"))
            status, headers, body = await answer(reader)
            if status == 503:
                break
            assert status == 200
    assert (headers["content-type"], headers["retry-after"]) == ("application/json", "7")
    assert json.loads(body) == {"detail": "Too many connections, retry later"}
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])  # answered by the app, like any other
    # Once they leave, others are served again.
    for _, writer in holding:
        writer.close()
    async with (
        asyncio.timeout(PATIENCE),
        capped_server.client() as client,
    ):
        while (response := await client.get("/healthz", headers={"Connection": "close"})).status_code != 200:
            assert response.status_code == 503
            await asyncio.sleep(0.02)
