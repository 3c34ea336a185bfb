"""The live feed of task changes as server-sent events, fed by the process's one tail of task_events
(events.py): an open stream costs no query of its own, a resumption reads its gap once."""

import asyncio
import re
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..auth import bound_worker
from ..endpoints import Endpoints
from ..errors import BadRequest
from ..events import replay
from ..models import EventsQuery, LiveEvent
from ..requests import pool
from ..state import app_state
from .tasks import READERS

endpoints = Endpoints("events")

# Up to 18 digits: any event id for centuries, and below the largest bigint without a comparison.
_EVENT_ID = re.compile("[0-9]{1,18}")

_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx would otherwise buffer the stream.
    "X-Accel-Buffering": "no",
}


@endpoints.get(
    "/events",
    "Task changes, live (server-sent events)",
    LiveEvent,
    roles=READERS,
    media_type="text/event-stream",
    headers=(
        (
            "Last-Event-ID",
            f"^{_EVENT_ID.pattern}$",
            "The `id:` of the last event received: the stream starts with the events after it.",
        ),
    ),
    description=(
        "Each task event (approved, assigned, picked_up, completed, released, attempt_failed, failed, "
        "lease_expired, canceled, retried) as it is written: `id:` the event's id, `event:` its kind, "
        "`data:` the JSON described here. Reconnecting with `Last-Event-ID` (or `?after=`) first sends "
        "the events after it, then the live ones. A comment (`: ping`) every EVENTS_HEARTBEAT_SECONDS "
        "keeps idle proxies from closing the stream. A worker's key sees its own tasks' events only. The "
        "stream ends when the instance shuts down or the client falls over 1000 events behind: reconnect "
        "with `Last-Event-ID`. With `follow=false` it sends the events after that id and ends."
    ),
)
async def stream_events(request: Request, query: EventsQuery) -> Response:
    state = app_state(request)
    worker_id = bound_worker(request)
    after = _last_event_id(request, query.after)
    if not query.follow:
        frames = replay(pool(request), after or 0, None, worker_id) if after is not None else _nothing()
        return StreamingResponse(frames, media_type="text/event-stream", headers=_HEADERS)
    # Here, so that a database out of reach is a 503; the stream subscribes once it is being sent, so that
    # its unsubscription is certain (a generator never started never runs its `finally`).
    await state.events.start()
    body = _stream(request, worker_id, after, state.settings.events_heartbeat_seconds)
    return StreamingResponse(body, media_type="text/event-stream", headers=_HEADERS)


def _last_event_id(request: Request, after: int | None) -> int | None:
    given = request.headers.get("last-event-id")
    if given is None:
        return after
    if not _EVENT_ID.fullmatch(given):
        raise BadRequest("Last-Event-ID must be an event id (the `id:` of an event received)")
    return int(given)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield


async def _stream(
    request: Request, worker_id: str | None, after: int | None, heartbeat: float
) -> AsyncIterator[bytes]:
    """What was missed (from the database, once), then the live events, with a ping when idle, until the
    stream ends (shutdown, overflow, the database lost while resuming) or the client leaves (the response is
    cancelled)."""
    events = app_state(request).events
    stream, up_to = await events.subscribe(worker_id, after)
    try:
        # Sent at once, so the client (and any proxy) sees the stream open before the first event.
        yield b": connected\n\n"
        if after is not None and after < up_to:
            async for missed in replay(pool(request), after, up_to, worker_id):
                yield missed
        while True:
            try:
                data = await asyncio.wait_for(stream.queue.get(), heartbeat)
            except TimeoutError:
                yield b": ping\n\n"
                continue
            if data is None:
                return
            yield data
    finally:
        events.unsubscribe(stream)
