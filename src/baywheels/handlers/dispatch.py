import asyncio
import re
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from ..errors import BadRequest, NotFound
from ..metrics import DISPATCHES
from ..models import IDEMPOTENCY_KEY, DispatchRequest
from ..requests import body
from ..responses import MsgspecResponse
from ..state import app_state

T = TypeVar("T")

_SANE_KEY = re.compile(IDEMPOTENCY_KEY)

# What a client that went away gets logged with (nginx's "client closed request"); nobody receives it.
CLIENT_CLOSED = 499


class ClientGone(Exception):
    pass


async def dispatch_next(request: Request) -> Response:
    req = await body(request, DispatchRequest)
    key = request.headers.get("idempotency-key")
    if key is not None and not _SANE_KEY.match(key):
        raise BadRequest("Idempotency-Key must be 1 to 128 printable ASCII characters without spaces")
    state = app_state(request)
    lease_seconds = req.lease_seconds or state.settings.task_lease_seconds
    waiting = state.dispatcher.next(req.worker_id, lease_seconds, req.wait_seconds, key)
    try:
        task = await (_unless_disconnected(request, waiting) if req.wait_seconds > 0 else waiting)
    except ClientGone:
        DISPATCHES.labels("abandoned").inc()
        return Response(status_code=CLIENT_CLOSED)
    if task is None:
        DISPATCHES.labels("empty").inc()
        raise NotFound("No available tasks with status 'ready'")
    DISPATCHES.labels("assigned").inc()
    return MsgspecResponse(task)


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
