"""The live feed of task changes behind ``GET /events``: one tail of task_events per process, shared by every
open stream.

While at least one stream is open, the tail reads the events after the last one it has seen: once per
wake-up, whatever the number of streams, and encodes each event once. It wakes when the listener hears a
notification (a task became ready: approvals, retries, releases) and otherwise every POLL_SECONDS, which is
what brings dispatches, completions and failures: those statements notify nobody, on purpose, so that the
dispatch statement (the benchmark of record) pays nothing for the console (docs/console.md measures what a
NOTIFY per dispatch would have cost). With no stream open, the tail stops and costs nothing.

Event ids are taken before commit, so a transaction may commit an id below one already read. The tail reads
in id order and stops at a gap until it fills or is GAP_SECONDS old (an id of a transaction that rolled back
never fills): a late commit within that time still reaches the streams, in order.

Each stream holds at most STREAM_QUEUE_MAX events not yet written to its client; one that falls further
behind is ended (its client resumes with Last-Event-ID, from the database), so a slow consumer cannot grow the
process's memory.
"""

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import structlog

from . import queries
from .metrics import EVENT_STREAMS, EVENT_TAIL_QUERIES
from .models import LiveEvent

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.25
GAP_SECONDS = 1.0
BATCH = 1000
STREAM_QUEUE_MAX = 1000

_encoder = msgspec.json.Encoder()


def frame(event: LiveEvent) -> bytes:
    """One server-sent event: its id (Last-Event-ID resumes after it), its kind, and the event as JSON."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.event.encode(), _encoder.encode(event))


class Stream:
    """One open ``GET /events``: the frames not yet written to its client, or None once it must end."""

    def __init__(self, worker_id: str | None, after: int | None = None) -> None:
        # A worker's key sees the events of its own tasks only.
        self.worker_id = worker_id
        # Events up to this id were sent already (a client resuming ahead of this process's tail).
        self.after = after or 0
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(STREAM_QUEUE_MAX + 1)
        self.ended = False

    def offer(self, event_id: int, worker_id: str | None, data: bytes) -> None:
        if (
            self.ended
            or event_id <= self.after
            or (self.worker_id is not None and worker_id != self.worker_id)
        ):
            return
        if self.queue.qsize() >= STREAM_QUEUE_MAX:
            log.warning("event_stream_overflow", queued=STREAM_QUEUE_MAX)
            self.end()
            return
        self.queue.put_nowait(data)

    def end(self) -> None:
        """The stream ends once its client has what is queued, or at once when it has fallen behind."""
        if self.ended:
            return
        self.ended = True
        if self.queue.qsize() >= STREAM_QUEUE_MAX:
            while not self.queue.empty():
                self.queue.get_nowait()
        self.queue.put_nowait(None)


class EventHub:
    """Subscribes to the listener (wake-ups) and tails task_events for the streams of this process."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._streams: set[Stream] = set()
        self._wake = asyncio.Event()
        self._tail: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._closed = False
        # The last event id read; the gap in front of it, and since when (time.monotonic()).
        self.last_id = 0
        self._gap_since: float | None = None

    # The listener's subscriber interface.
    def notified(self, payload: str) -> None:
        self._wake.set()

    def reconnected(self) -> None:
        self._wake.set()

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """The tail runs (started at the newest event, by the first stream): raises when the database cannot
        be reached to start it."""
        async with self._starting:
            if self._tail is None and not self._closed:
                EVENT_TAIL_QUERIES.inc()
                self.last_id = await queries.task_event_last_id(self._pool)
                self._gap_since = None
                # Not under the context of the request that happened to start it.
                self._tail = asyncio.create_task(self._run(), context=contextvars.Context())

    async def subscribe(self, worker_id: str | None, after: int | None = None) -> tuple[Stream, int]:
        """A new stream, and the id of the last event read before it: every later one (after ``after``, when
        given) is offered to it. Pair with ``unsubscribe``."""
        await self.start()
        stream = Stream(worker_id, after)
        if self._closed:
            stream.end()
        else:
            self._streams.add(stream)
            EVENT_STREAMS.inc()
        return stream, self.last_id

    def unsubscribe(self, stream: Stream) -> None:
        if stream in self._streams:
            self._streams.discard(stream)
            EVENT_STREAMS.dec()
        if not self._streams:
            self._wake.set()  # the tail sees nobody left and stops

    async def _run(self) -> None:
        try:
            while self._streams and not self._closed:
                self._wake.clear()
                try:
                    more = await self._read()
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                    log.warning("event_tail_failed", error=f"{type(exc).__name__}: {exc}")
                    more = False
                if more:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
        finally:
            self._tail = None

    async def _read(self) -> bool:
        """One query; offers what is in order to every stream. True when a full batch came (read on)."""
        EVENT_TAIL_QUERIES.inc()
        events = await queries.task_event_after(self._pool, self.last_id, BATCH)
        for event in events:
            if event.id != self.last_id + 1:
                now = time.monotonic()
                if self._gap_since is None:
                    self._gap_since = now
                if now - self._gap_since < GAP_SECONDS:
                    return False
            self._gap_since = None
            self.last_id = event.id
            data = frame(event)
            for stream in list(self._streams):
                stream.offer(event.id, event.worker_id, data)
        return len(events) == BATCH

    def close(self) -> int:
        """Shutting down: every stream ends (after what is queued for it) and no new one starts. Returns how
        many were open."""
        self._closed = True
        streams, self._streams = self._streams, set()
        for stream in streams:
            stream.end()
            EVENT_STREAMS.dec()
        self._wake.set()
        return len(streams)

    async def stop(self) -> None:
        self.close()
        if self._tail is not None:
            self._tail.cancel()
            await asyncio.gather(self._tail, return_exceptions=True)


async def replay(
    pool: asyncpg.Pool, after: int, up_to: int | None, worker_id: str | None
) -> AsyncIterator[bytes]:
    """The frames of the events after ``after`` up to ``up_to`` (all when None) from the database, a page at
    a time: a stream's resumption (Last-Event-ID), read once for that stream."""
    while up_to is None or after < up_to:
        EVENT_TAIL_QUERIES.inc()
        events = await queries.task_event_after(pool, after, BATCH, up_to)
        for event in events:
            if worker_id is None or event.worker_id == worker_id:
                yield frame(event)
        if len(events) < BATCH:
            return
        after = events[-1].id
