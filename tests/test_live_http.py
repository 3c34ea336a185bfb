"""HTTP behaviour that lives in the real server stack (uvicorn, httptools, the request middleware): the body
limit with and without Content-Length, request ids, malformed JSON."""

import asyncio
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from conftest import LiveServer
from helpers import ADMIN

LIMIT = 1024
TOO_LARGE = {"detail": f"Request body exceeds the limit of {LIMIT} bytes"}


@pytest.fixture
def server(database_url: str) -> Iterator[LiveServer]:
    server = LiveServer(database_url, env={"MAX_BODY_BYTES": str(LIMIT)})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def suggestions(n: int) -> bytes:
    """A valid batch: a refusal can only be about its size."""
    items = ",".join(
        f'{{"from_station_id": {i}, "to_station_id": {i + 1000}, "qty": 1, "reason": "r"}}'
        for i in range(1, n + 1)
    )
    return f"[{items}]".encode()


SMALL, LARGE = suggestions(5), suggestions(30)
JSON = {"Content-Type": "application/json"}


async def chunks(body: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_body_over_the_limit_is_refused_413(server: LiveServer) -> None:
    assert len(SMALL) < LIMIT < len(LARGE)
    async with httpx.AsyncClient(headers=ADMIN, base_url=server.url, timeout=30) as client:
        response = await client.post("/suggestions", content=LARGE, headers=JSON)
        assert (response.status_code, response.json()) == (413, TOO_LARGE)

        # Without Content-Length (chunked), the limit holds as the body arrives.
        response = await client.post("/suggestions", content=chunks(LARGE), headers=JSON)
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.request.headers
        assert (response.status_code, response.json()) == (413, TOO_LARGE)

        assert (await client.get("/suggestions")).json() == []
        # Under the limit, either way, the same batch is taken.
        response = await client.post("/suggestions", content=chunks(SMALL), headers=JSON)
        assert (response.status_code, response.json()["created"]) == (201, 5)
        response = await client.post("/suggestions", content=SMALL, headers=JSON)
        assert (response.status_code, response.json()["updated"]) == (201, 5)


async def test_content_length_over_the_limit_is_refused_before_the_body_is_sent(server: LiveServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /suggestions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        await writer.drain()
        # No byte of the body is ever sent: an answer at all shows the server did not wait for it.
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")


async def test_request_id_is_echoed_or_made_up(server: LiveServer) -> None:
    async with httpx.AsyncClient(headers=ADMIN, base_url=server.url, timeout=30) as client:
        for method, path, status in [("GET", "/healthz", 200), ("GET", "/task/1", 404)]:
            response = await client.request(method, path, headers={"X-Request-ID": "abc-123.4:5_6"})
            assert (response.status_code, response.headers["x-request-id"]) == (status, "abc-123.4:5_6")
        response = await client.post(
            "/suggestions", content=LARGE, headers={**JSON, "X-Request-ID": "too-large-1"}
        )
        assert (response.status_code, response.headers["x-request-id"]) == (413, "too-large-1")

        # None given, or one not fit for a log line: the server makes one up, new for every request.
        made_up = [
            (await client.get("/healthz", headers=headers)).headers["x-request-id"]
            for headers in ({}, {}, {"X-Request-ID": "has spaces"}, {"X-Request-ID": "x" * 129})
        ]
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in made_up)
    assert len(set(made_up)) == len(made_up)


async def test_malformed_json_is_400(server: LiveServer) -> None:
    async with httpx.AsyncClient(headers=ADMIN, base_url=server.url, timeout=30) as client:
        cases = [
            ("/suggestions", b"not json", "JSON is malformed: invalid character (byte 4)"),
            ("/suggestions", b'[{"from_station_id": 1,', "Input data was truncated"),
            ("/dispatch/next", b"{", "Input data was truncated"),
            ("/dispatch/next", b'{"worker_id": 5}', "Expected `str`, got `int` - at `$.worker_id`"),
            ("/dispatch/next", b'{"worker_id": "\xff"}', "JSON is malformed: invalid UTF-8 (byte 15)"),
            (
                "/suggestions",
                b'[{"from_station_id": 1, "to_station_id": 2, "qty": 1, "reason": "x", '
                b'"not_before": "9999-12-31T23:59:59-14:00"}]',
                "not_before is out of range once converted to UTC - at `$[0]`",
            ),
        ]
        for path, body, detail in cases:
            response = await client.post(path, content=body, headers=JSON)
            assert (response.status_code, response.json()) == (400, {"detail": detail}), body
        assert (await client.get("/suggestions")).json() == []
