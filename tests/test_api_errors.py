"""The HTTP surface around the handlers: banner and health, unknown paths and methods, path ids, the body
limit, X-Request-ID, and the last-resort 500 that leaks nothing. Every error body is exactly
``{"detail": "..."}``."""

import re
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest

from baywheels import queries, settings
from baywheels.app import create_app
from helpers import in_process, item, json_of

FRESH_ID = re.compile(r"^[0-9a-f]{32}$")


def assert_error(response: httpx.Response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": detail}


async def test_banner(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.json() == {"message": "Bay Wheels Orchestration & Dispatch Service"}
    assert (response.status_code, response.headers["content-type"]) == (200, "application/json")


async def test_health(client: httpx.AsyncClient) -> None:
    assert json_of(await client.get("/healthz"), 200) == {"status": "ok"}
    assert json_of(await client.get("/readyz"), 200) == {"status": "ready"}


@pytest.mark.parametrize(
    ("method", "path", "detail"),
    [
        ("GET", "/nowhere", "Not Found"),
        ("GET", "/task/abc", "Not Found"),
        ("GET", "/task/1.5", "Not Found"),
        ("GET", "/task/-1", "Not Found"),
        ("GET", "/task/abc/events", "Not Found"),
        ("POST", "/task/abc/complete", "Not Found"),
        ("GET", "/task/0", "Task with id 0 not found"),
        ("GET", "/task/9223372036854775808", "Task with id 9223372036854775808 not found"),
        ("GET", "/task/99999999999999999999999", "Task with id 99999999999999999999999 not found"),
        ("GET", "/task/99999999999999999999999/events", "Task with id 99999999999999999999999 not found"),
        ("POST", "/task/99999999999999999999999/complete", "Task with id 99999999999999999999999 not found"),
        # Past Python's 4,300-digit limit of int(): routing used to raise (a 500). The detail stays short.
        ("GET", f"/task/{'9' * 4301}", f"Task with id {'9' * 20}... (4301 digits) not found"),
        ("POST", f"/task/{'9' * 4301}/cancel", f"Task with id {'9' * 20}... (4301 digits) not found"),
        ("GET", f"/task/{'1' * 60_000}/events", f"Task with id {'1' * 20}... (60000 digits) not found"),
        ("GET", f"/task/{'0' * 5000}7", "Task with id 7 not found"),
    ],
    ids=lambda value: value if len(value) < 60 else f"{value[:25]}...",
)
async def test_unknown_paths_and_ids_are_404(
    client: httpx.AsyncClient, method: str, path: str, detail: str
) -> None:
    assert_error(await client.request(method, path), 404, detail)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/suggestions", "GET, HEAD, POST"),
        ("GET", "/dispatch/next", "POST"),
        ("PUT", "/task/1", "GET, HEAD"),
        ("GET", "/task/1/complete", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
async def test_wrong_method_is_405(client: httpx.AsyncClient, method: str, path: str, allow: str) -> None:
    response = await client.request(method, path)
    assert_error(response, 405, "Method Not Allowed")
    assert sorted(response.headers["allow"].split(", ")) == sorted(allow.split(", "))


async def test_fixed_paths_answer_head_and_redirect_a_trailing_slash(client: httpx.AsyncClient) -> None:
    """Routes with a fixed path are looked up by path and method (endpoints.FixedPathsFirst); what
    Starlette's router does besides still holds."""
    head = await client.head("/healthz")
    assert (head.status_code, head.content) == (200, b"")
    redirect = await client.get("/healthz/", follow_redirects=False)
    assert (redirect.status_code, redirect.headers["location"].rsplit("/", 1)[-1]) == (307, "healthz")
    assert (await client.get("/healthz/", follow_redirects=True)).json() == {"status": "ok"}


@pytest.fixture
async def small_client(service_settings: settings.Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with a 1 KiB body limit."""
    async with in_process(
        create_app(msgspec.structs.replace(service_settings, max_body_bytes=1024))
    ) as client:
        yield client


def padded(size: int) -> bytes:
    """A valid one-item batch padded with whitespace to exactly ``size`` bytes."""
    body = msgspec.json.encode([item(1, 2)])
    return body + b" " * (size - len(body))


async def test_body_at_the_limit_is_accepted(small_client: httpx.AsyncClient) -> None:
    json_of(await small_client.post("/suggestions", content=padded(1024)), 201)


async def test_body_over_the_limit_is_413(small_client: httpx.AsyncClient) -> None:
    response = await small_client.post("/suggestions", content=padded(1025))
    assert_error(response, 413, "Request body exceeds the limit of 1024 bytes")
    assert FRESH_ID.match(response.headers["x-request-id"])
    assert json_of(await small_client.get("/suggestions"), 200) == []


async def test_streamed_body_over_the_limit_is_413(small_client: httpx.AsyncClient) -> None:
    """No Content-Length to refuse up front: the limit is counted as the chunks arrive."""
    body = padded(3000)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    response = await small_client.post("/suggestions", content=chunks())
    assert_error(response, 413, "Request body exceeds the limit of 1024 bytes")
    assert json_of(await small_client.get("/suggestions"), 200) == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/suggestions"),
        ("GET", "/nowhere"),
        ("DELETE", "/suggestions"),
        ("POST", "/task/approve"),
    ],
)
async def test_every_response_echoes_a_sane_request_id(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    sane = "client-42.retry_1:a"
    response = await client.request(method, path, headers={"x-request-id": sane})
    assert response.headers["x-request-id"] == sane
    assert FRESH_ID.match((await client.request(method, path)).headers["x-request-id"])


@pytest.mark.parametrize(
    "given",
    ["r" * 129, "r" * 300, "two words", "semi;colon", "<script>", "caf\u00e9"],
    ids=["129 chars", "300 chars", "space", "semicolon", "markup", "non-ascii"],
)
async def test_an_insane_request_id_is_replaced(client: httpx.AsyncClient, given: str) -> None:
    response = await client.get("/", headers=[(b"x-request-id", given.encode())])
    assert response.status_code == 200
    assert FRESH_ID.match(response.headers["x-request-id"])


async def test_fresh_request_ids_differ(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/healthz")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


async def _explode(*args: object, **kwargs: object) -> None:
    raise RuntimeError("secret SQL: SELECT password FROM users")


@pytest.mark.parametrize(
    ("query", "method", "path", "body"),
    [
        ("task_get", "GET", "/task/1", None),
        ("suggestion_upsert_batch", "POST", "/suggestions", [item(1, 2)]),
        ("suggestion_list", "GET", "/suggestions", None),
    ],
)
async def test_unexpected_error_is_500_without_details(
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    query: str,
    method: str,
    path: str,
    body: object,
) -> None:
    monkeypatch.setattr(queries, query, _explode)
    response = await client.request(method, path, json=body, headers={"x-request-id": "trace-500"})
    assert_error(response, 500, "Internal server error")
    assert "secret" not in response.text
    assert response.headers["x-request-id"] == "trace-500"
    # The service goes on serving.
    assert json_of(await client.get("/healthz"), 200) == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path", "body", "detail"),
    [
        ("POST", "/dispatch/next", {"worker_id": "van\u00007"}, "$.worker_id"),
        ("POST", "/suggestions", [item(1, 2, reason="empty\u0000soon")], "$[0].reason"),
        ("POST", "/task/1/fail", {"worker_id": "van-7", "error": "jam\u0000med"}, "$.error"),
        ("POST", "/task/1/cancel", {"reason": "\u0000"}, "$.reason"),
        ("GET", "/tasks?worker_id=van%007", None, "$.worker_id"),
    ],
    ids=["worker_id", "reason", "error", "cancel reason", "query"],
)
async def test_nul_in_text_is_400_naming_the_field(
    client: httpx.AsyncClient, method: str, path: str, body: object, detail: str
) -> None:
    """PostgreSQL text cannot hold NUL; the request is refused before it reaches the database."""
    response = await client.request(method, path, json=body)
    assert_error(response, 400, f"Expected `str` matching regex '^[^\\x00]*$' - at `{detail}`")
