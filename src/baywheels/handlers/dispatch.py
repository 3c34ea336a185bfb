import asyncio
import re
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..auth import Principal, principal, worker_for
from ..endpoints import Endpoints
from ..errors import CLIENT_CLOSED, BadRequest, NotFound
from ..metrics import DISPATCHES
from ..models import IDEMPOTENCY_KEY, DispatchRequest, Task
from ..requests import header
from ..responses import MsgspecResponse
from ..state import AppState, app_state

endpoints = Endpoints("dispatch")

T = TypeVar("T")

_SANE_KEY = re.compile(IDEMPOTENCY_KEY.encode())
KEY = b"idempotency-key"

# The counter's children, looked up once: labels() takes a lock and a dict lookup on every call.
_ASSIGNED, _EMPTY, _ABANDONED = (DISPATCHES.labels(outcome) for outcome in ("assigned", "empty", "abandoned"))


class ClientGone(Exception):
    pass


@endpoints.post(
    "/dispatch/next",
    "Assign the next ready task to a worker",
    Task,
    errors=(404,),
    description=(
        "Highest effective priority first (priority, plus one per PRIORITY_AGING_MINUTES ready, at most "
        "PRIORITY_AGING_MAX), then oldest, then lowest id; 404 when no task is ready, or when the worker is "
        "registered as off shift. With a position (`lat`, `lon`) the task is the best one for that van: only "
        "tasks it can carry (`qty` <= capacity - `load`, when its capacity is registered), the highest "
        "band first, then the nearest pickup station (within DISPATCH_MAX_KM), then the oldest; the "
        "position is kept as the worker's last. With ONE_VAN_PER_STATION, a station that is the pickup or "
        "drop-off of an assigned task is not handed to another van meanwhile. With `wait_seconds` the "
        "request waits up to that long and answers the moment a task is ready. The task is leased for "
        "`lease_seconds` (default TASK_LEASE_SECONDS): heartbeat to keep it. An `Idempotency-Key` header "
        "makes a retry by the same worker return the task it already holds."
    ),
    headers=(
        (
            "Idempotency-Key",
            IDEMPOTENCY_KEY,
            "1 to 128 printable ASCII characters, no spaces. A retry by the same worker with the same "
            "key gets the task it holds under that key, for as long as it holds it, not a second one.",
        ),
    ),
    roles=("worker", "admin"),
)
async def dispatch_next(request: Request, body: DispatchRequest) -> Response:
    state, caller, key_given = app_state(request), principal(request), header(request.scope, KEY)
    if body.wait_seconds <= 0:
        # The direct path (direct.py) serves the same request without the ASGI app, through next_task.
        return MsgspecResponse(await next_task(state, caller, body, key_given))
    worker_id, key = _asked(caller, body, key_given)
    # An off-shift worker would only sleep until its wait ran out.
    if await queries.worker_off_shift(state.pool, worker_id):
        raise NotFound(_off_shift(worker_id))
    try:
        with state.guard.long_poll(caller):
            waiting = state.dispatcher.next(
                worker_id, _lease(state, body), body.wait_seconds, key, caller.actor, body.position()
            )
            task: Task | None = await _unless_disconnected(request, waiting)
    except ClientGone:
        _ABANDONED.inc()
        return Response(status_code=CLIENT_CLOSED)
    return MsgspecResponse(await _answer(state, worker_id, task))


async def next_task(state: AppState, caller: Principal, body: DispatchRequest, key: bytes | None) -> Task:
    """``POST /dispatch/next`` without a wait, from an admitted caller and a decoded body to the task
    assigned; the 4xx it gives are raised."""
    worker_id, idempotency_key = _asked(caller, body, key)
    lease_seconds = _lease(state, body)
    task = await state.dispatcher.next(
        worker_id, lease_seconds, 0, idempotency_key, caller.actor, body.position()
    )
    return await _answer(state, worker_id, task)


def _asked(caller: Principal, body: DispatchRequest, key: bytes | None) -> tuple[str, str | None]:
    """The worker the task is for, and the request's Idempotency-Key, checked."""
    worker_id = worker_for(caller, body.worker_id)
    if key is None:
        return worker_id, None
    if not _SANE_KEY.match(key):
        raise BadRequest("Idempotency-Key must be 1 to 128 printable ASCII characters without spaces")
    return worker_id, key.decode("ascii")


def _lease(state: AppState, body: DispatchRequest) -> int:
    return body.lease_seconds or state.settings.task_lease_seconds


async def _answer(state: AppState, worker_id: str, task: Task | None) -> Task:
    if task is None:
        _EMPTY.inc()
        # Why nothing: the statement passes over an off-shift worker; its 404 says so.
        if await queries.worker_off_shift(state.pool, worker_id):
            raise NotFound(_off_shift(worker_id))
        raise NotFound("No available tasks with status 'ready'")
    _ASSIGNED.inc()
    return task


def _off_shift(worker_id: str) -> str:
    return f"Worker {worker_id!r} is off shift: no task is dispatched to it until it is back on shift"


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (a long poll must not outlive it)."""
    job = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if job.done():
        return job.result()
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    raise ClientGone


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next message the server sends is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
