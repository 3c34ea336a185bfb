"""The clients' own behaviour: retries (``Retry-After`` on 429 and 503, what is resent after a transport
error), request ids, the key, errors and forward-compatible answers against a stub transport that records
what it was sent; batching and the operator's calls against the app in-process."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import msgspec
import pytest

from baywheels.client import (
    BadRequest,
    ConnectionFailed,
    MLEngine,
    NotFound,
    Operator,
    Retry,
    SuggestionIn,
    Task,
    TooManyRequests,
    Worker,
)
from baywheels.client.base import decode, retry_after
from helpers import make_task

URL = "http://service"
TASK = {
    "id": 7, "suggestion_id": 3, "from_station_id": 1, "to_station_id": 2, "qty": 4, "reason": "r",
    "priority": 0,
    "status": "assigned", "worker_id": "van-1", "created_at": "2026-01-01T08:00:00Z",
    "assigned_at": "2026-01-01T08:00:00Z", "completed_at": None, "attempts": 0,
    "lease_id": "5f0c1d6e-0000-4000-8000-000000000000", "lease_expires_at": "2026-01-01T08:01:00Z",
    "picked_up_at": None, "last_error": None, "not_before": None, "available_at": "2026-01-01T08:00:00Z",
}  # fmt: skip


class Stub:
    """A transport answering from a list of (status, headers, body) or exceptions, recording the requests."""

    def __init__(self, *answers: tuple[int, dict[str, str], object] | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.waits: list[float] = []

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, headers, body = answer
        return httpx.Response(status, headers=headers, content=msgspec.json.encode(body))

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def retry(self, attempts: int = 6) -> Retry:
        return Retry(attempts=attempts, sleep=self.sleep)


async def test_429_is_retried_after_retry_after_with_one_request_id_numbered_per_attempt() -> None:
    stub = Stub(
        (429, {"Retry-After": "2"}, {"detail": "slow down"}),
        (429, {"Retry-After": "2"}, {"detail": "slow down"}),
        (200, {}, []),
    )
    async with stub.client() as http:
        assert await Operator(URL, http=http, retry=stub.retry()).suggestions() == []
    assert len(stub.waits) == 2
    assert all(2.0 <= wait <= 2.4 for wait in stub.waits), stub.waits
    first, second, third = (r.headers["x-request-id"] for r in stub.requests)
    assert (second, third) == (f"{first}.2", f"{first}.3")


async def test_retries_end_in_an_error_carrying_status_and_detail() -> None:
    stub = Stub(*[(429, {"Retry-After": "1"}, {"detail": "slow down"})] * 3)
    async with stub.client() as http:
        with pytest.raises(TooManyRequests) as error:
            await Operator(URL, http=http, retry=stub.retry(attempts=3)).suggestions()
    assert (error.value.status, error.value.detail) == (429, "slow down")
    assert error.value.request_id == stub.requests[-1].headers["x-request-id"]
    assert len(stub.requests) == 3


async def test_other_errors_are_not_retried() -> None:
    stub = Stub((400, {}, {"detail": "Expected `int`"}), (404, {}, {"detail": "Task with id 9 not found"}))
    async with stub.client() as http:
        operator = Operator(URL, http=http, retry=stub.retry())
        with pytest.raises(BadRequest, match="Expected `int`"):
            await operator.approve(1)
        with pytest.raises(NotFound) as error:
            await operator.task(9)
    assert error.value.detail == "Task with id 9 not found"
    assert stub.waits == []


def test_retry_after_as_seconds_or_a_date_and_the_backoff_bounds() -> None:
    assert retry_after(httpx.Headers({"Retry-After": "3"})) == 3.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = retry_after(httpx.Headers({"Retry-After": later}))
    assert seconds is not None
    assert 25 < seconds <= 30
    assert retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    policy = Retry(backoff=0.5, max_delay=3)
    for n in range(6):
        ceiling = min(3, 0.5 * 2**n)
        assert ceiling / 2 <= policy.delay(n, None) <= ceiling
        assert policy.delay(n, 100) == 3  # a Retry-After beyond the cap waits the cap


@pytest.mark.parametrize(
    ("call", "error", "resent"),
    [
        # Safe to repeat: resent after any transport error.
        (lambda op: op.task(7), httpx.ReadError("reset"), True),
        # A repeated cancel would be refused for the first one's success: resent only if never sent.
        (lambda op: op.cancel(7), httpx.ReadError("reset"), False),
        (lambda op: op.cancel(7), httpx.ConnectError("refused"), True),
    ],
    ids=["read-after-reset", "cancel-after-reset", "cancel-after-refused"],
)
async def test_what_is_resent_after_a_transport_error(
    call: Callable[[Operator], object], error: Exception, resent: bool
) -> None:
    stub = Stub(error, (200, {}, TASK))
    async with stub.client() as http:
        operator = Operator(URL, http=http, retry=stub.retry())
        if resent:
            assert await call(operator) == decode(msgspec.json.encode(TASK), Task)  # type: ignore[misc]
        else:
            with pytest.raises(ConnectionFailed):
                await call(operator)  # type: ignore[misc]
    assert len(stub.requests) == (2 if resent else 1)


async def test_the_key_is_a_bearer_token_and_none_sends_no_header() -> None:
    stub = Stub((404, {}, {"detail": "none"}), (404, {}, {"detail": "none"}))
    async with stub.client() as http:
        assert await Worker(URL, "k-123", "van-1", http=http).dispatch() is None
        assert await Worker(URL, None, "van-1", http=http).dispatch() is None
    with_key, without = stub.requests
    assert with_key.headers["authorization"] == "Bearer k-123"
    assert "authorization" not in without.headers
    # Each dispatch has a key of its own.
    assert with_key.headers["idempotency-key"] != without.headers["idempotency-key"]


def test_fields_a_newer_service_adds_are_ignored() -> None:
    body = msgspec.json.encode([{**TASK, "station_name": "Market & 4th"}])
    (task,) = decode(body, list[Task])
    assert (task.id, task.lease_id is not None) == (7, True)


async def test_post_suggestions_splits_the_view_and_aligns_the_ids(client: httpx.AsyncClient) -> None:
    posted: list[int] = []

    async def count(request: httpx.Request) -> None:
        if request.method == "POST":
            posted.append(len(msgspec.json.decode(request.content)))

    client.event_hooks["request"].append(count)
    open_task = await make_task(client, 9, 10)
    items = [SuggestionIn(from_station_id=i, to_station_id=i + 100, qty=1, reason="t") for i in range(1, 5)]
    items.insert(2, SuggestionIn(from_station_id=9, to_station_id=10, qty=2, reason="has an open task"))
    posted.clear()
    ml = MLEngine(str(client.base_url), http=client)
    result = await ml.post_suggestions(items, batch_size=2)
    assert posted == [2, 2, 1]
    assert (result.created, result.duplicates, len(result.ids)) == (4, 1, 5)
    assert result.ids[2] is None
    assert open_task["status"] == "ready"
    pending = {
        s.id: (s.from_station_id, s.to_station_id)
        async for s in Operator(str(client.base_url), http=client).all_suggestions()
    }
    assert [pending.get(i) if i else None for i in result.ids] == [
        (1, 101), (2, 102), None, (3, 103), (4, 104)
    ]  # fmt: skip
    # By size too: each item alone in a body of at most 120 bytes.
    posted.clear()
    await ml.post_suggestions(items[:2], max_bytes=120)
    assert posted == [1, 1]


async def test_the_operators_calls(client: httpx.AsyncClient) -> None:
    url = str(client.base_url)
    ml, operator = MLEngine(url, http=client), Operator(url, http=client)
    ids = (
        await ml.post_suggestions(
            [SuggestionIn(from_station_id=i, to_station_id=i + 1, qty=1, reason="t") for i in (1, 3, 5)]
        )
    ).ids
    assert None not in ids
    one = await operator.approve(ids[0])  # type: ignore[arg-type]
    assert (await operator.approve(ids[0])).id == one.id  # type: ignore[arg-type]
    many = await operator.approve_many([ids[1], ids[2], 999_999])  # type: ignore[list-item]
    assert (len(many.tasks), many.not_found) == (2, [999_999])
    canceled = await operator.cancel(one.id, "station closed")
    assert canceled.status == "canceled"
    assert (await operator.retry(one.id)).status == "ready"
    assert [t.id for t in await operator.tasks("ready", limit=2)] == sorted(t.id for t in [one, *many.tasks])[
        :2
    ]
    assert len([t async for t in operator.all_tasks()]) == 3
    assert [e.event for e in await operator.events(one.id)] == ["approved", "canceled", "retried"]


async def test_dismissals_outcomes_and_the_overview(client: httpx.AsyncClient) -> None:
    url = str(client.base_url)
    ml, operator = MLEngine(url, http=client), Operator(url, http=client)
    items = [SuggestionIn(from_station_id=i, to_station_id=i + 1, qty=1, reason="t") for i in (1, 3, 5)]
    ids = [i for i in (await ml.post_suggestions(items)).ids if i is not None]
    await operator.approve(ids[0])
    result = await operator.dismiss([ids[1], ids[2], ids[1], 999_999], "closed")
    assert (result.dismissed, result.not_pending) == ([ids[1], ids[2]], [999_999])
    first = await ml.outcomes_page(limit=2)
    assert [(o.suggestion_id, o.outcome) for o in first] == [(ids[0], "approved"), (ids[1], "dismissed")]
    rest = await ml.outcomes_page(first[-1].cursor)
    assert [(o.suggestion_id, o.outcome, o.reason) for o in rest] == [(ids[2], "dismissed", "closed")]
    assert await ml.outcomes_page(rest[-1].cursor) == []
    stats = await operator.stats()
    assert (stats.counts.ready, stats.last_24h.created) == (1, 1)
