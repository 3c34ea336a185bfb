"""uvicorn's httptools protocol with the limits a server on the internet needs, which uvicorn does not have:
the size of a request's head (request line and headers) and its number of headers, the time to receive the
head and the body, the open connections of a process; and the open-files limit raised at start-up.

A body too slow is answered by the app (the request middleware's 408, logged and counted like any other
answer): the protocol only marks the request's scope and wakes the app's read."""

import asyncio
import resource
import time
from typing import Any, ClassVar

import msgspec
import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from . import metrics
from .settings import Settings

log = structlog.get_logger(__name__)

# Scope keys by which the protocol tells the request middleware to answer in its place, so that the answer
# is logged, counted and carries its X-Request-ID like any other: a body that took too long (408), and a
# request refused on its head (431 headers, 503 connections), as (status, detail, headers).
BODY_TIMED_OUT = "baywheels.body_timed_out"
REFUSED = "baywheels.refused"

# A flood of slow or oversized clients logs one line per limit and second, with how many it stood for (every
# one is counted in baywheels_http_limited_total).
_LOG_INTERVAL = 1.0

# Open files kept back from the connection cap: the pool's connections, the LISTEN connection, the
# listening socket, logs and whatever the libraries open.
_FILES_HELD_BACK = 64


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_header_count: int
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    max_connections: int
    overloaded_headers: dict[str, str]

    @classmethod
    def of(cls, settings: Settings) -> "Limits":
        return cls(
            max_header_count=settings.max_header_count,
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.request_header_timeout,
            body_timeout=settings.request_body_timeout,
            max_connections=connection_cap(settings),
            overloaded_headers={"Retry-After": str(settings.retry_after), "Connection": "close"},
        )


_CLOSE = {"Connection": "close"}  # the rest of a refused request may still come: no other after it


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (each connection is a file; the soft limit is often
    1,024), and return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # an unlimited hard limit on some systems; keep what we have
            pass
    return soft


def connection_cap(settings: Settings) -> int:
    """MAX_CONNECTIONS, or fewer when the open-files limit would be reached first: a 503 is an answer, a
    failed accept() is none."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return settings.max_connections
    return max(1, min(settings.max_connections, soft - settings.pool_max_size - _FILES_HELD_BACK))


_last_logged: dict[str, float] = {}
_unlogged: dict[str, int] = {}


def limit_reached(limit: str, **details: Any) -> None:
    """A count each time a limit refuses or cuts a request, and a log line at most once a second per limit."""
    metrics.LIMITED.labels(limit).inc()
    now = time.monotonic()
    if now - _last_logged.get(limit, -_LOG_INTERVAL) < _LOG_INTERVAL:
        _unlogged[limit] = _unlogged.get(limit, 0) + 1
        return
    _last_logged[limit] = now
    log.warning("http_limit_reached", limit=limit, also_since_last_line=_unlogged.pop(limit, 0), **details)


def _json_response(status: int, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete response written by the protocol itself, where no app runs: `{"detail"}`, then close."""
    body = msgspec.json.encode({"detail": detail})
    reason = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
    head = [f"HTTP/1.1 {status} {reason[status]}", "content-type: application/json"]
    head += [f"{name}: {value}" for name, value in headers]
    head += [f"content-length: {len(body)}", "connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One instance per connection. uvicorn calls the parser callbacks (on_*) from data_received.

    The deadlines are armed lazily, only when a read leaves a head or a body unfinished: a request that
    arrives whole in one read (nearly all of them) costs no timer, and the hot path no more Python calls than
    it must. So the time of a head is counted from its first unfinished read, and that of a body from the
    first read that leaves it unfinished (about when the app starts)."""

    # Set from the settings by `serve` (and by each worker process) before the first connection.
    limits: ClassVar[Limits] = Limits.of(Settings())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # bytes read since the last head ended, outside any body (one read of slack)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_cycle: RequestResponseCycle | None = None  # the request whose body the timer bounds

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is closed after the head's time too (uvicorn arms nothing).
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is None or not cycle.more_body:
            self._head_bytes += len(data)  # not a body's bytes: a head's (on_headers_complete resets)
        super().data_received(data)
        if self.transport.is_closing():
            return  # answered already (uvicorn's 400 for a malformed request)
        cycle = self.cycle
        if cycle is None or not cycle.more_body:
            if self._body_timer is not None:
                self._body_ended()
            if self._head_bytes:
                # In the middle of a head. httptools buffers a header until it is complete, so the raw bytes
                # are counted: a head that never ends would otherwise grow without bound.
                if self._head_bytes > self.limits.max_header_bytes:
                    limit_reached("header_bytes")
                    self._answer(
                        431, f"Request headers exceed the limit of {self.limits.max_header_bytes} bytes"
                    )
                elif self._head_timer is None:
                    self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)
        elif self._body_cycle is not cycle:
            # In the middle of a body (read by the app, or by nobody after an early answer).
            if self._body_timer is not None:
                self._body_timer.cancel()
            self._body_cycle = cycle
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        limits = self.limits
        # uvicorn's on_header keeps every header; their number is bounded by the bytes of a head.
        if len(self.headers) > limits.max_header_count:
            limit_reached("header_count")
            refusal = (431, f"More than {limits.max_header_count} request headers", _CLOSE)
        elif self._head_bytes > limits.max_header_bytes and _head_size(self) > limits.max_header_bytes:
            # A whole head over the limit in one read (a big read may also hold a body: hence the count).
            limit_reached("header_bytes")
            refusal = (431, f"Request headers exceed the limit of {limits.max_header_bytes} bytes", _CLOSE)
        elif len(self.connections) > limits.max_connections:
            # uvicorn's limit_concurrency would answer in plain text, in its own words.
            limit_reached("connections", open=len(self.connections))
            refusal = (503, "Too many connections, retry later", limits.overloaded_headers)
        else:
            refusal = None
        if refusal is not None:
            self.scope[REFUSED] = refusal  # type: ignore[literal-required]
        self._head_bytes = 0
        super().on_headers_complete()

    # Deadlines

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # The previous request of this connection is still being answered: close after it.
            self.cycle.keep_alive = False
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: no answer, as nginx and Go do
            return
        limit_reached("header_timeout", received_bytes=self._head_bytes)
        self._answer(408, f"Request headers not received within {self.limits.header_timeout:g} s")

    def _body_timed_out(self) -> None:
        cycle, self._body_timer = self._body_cycle, None
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        if cycle.response_complete:
            # Answered before its body was read (413, or a handler that does not read it). The rest was read
            # so that the client could read the answer (closing at once may reset the connection under
            # it), but only for as long as a body may take.
            limit_reached("unread_body_timeout")
            self.transport.close()
            return
        # The app is (or will be) waiting for the body: the request middleware answers 408 on its next read.
        cycle.scope[BODY_TIMED_OUT] = True  # type: ignore[literal-required]
        cycle.message_event.set()

    def _body_ended(self) -> None:
        assert self._body_timer is not None
        self._body_timer.cancel()
        cycle, self._body_timer, self._body_cycle = self._body_cycle, None, None
        if cycle is not None and cycle.response_complete and not self._head_bytes and not self.pipeline:
            # The unread body of a request already answered has ended: the connection is idle again, under
            # uvicorn's keep-alive timeout (which the body's bytes had cancelled).
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _answer(self, status: int, detail: str) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_json_response(status, detail))
        self.transport.close()


def _head_size(protocol: HttpToolsProtocol) -> int:
    """The bytes of a parsed head's target and headers (close to what came on the wire)."""
    return len(protocol.url) + sum(len(name) + len(value) + 4 for name, value in protocol.headers)


def configure(settings: Settings) -> None:
    """Before serving: the open-files limit raised, and the protocol's limits from the settings."""
    soft = raise_open_files_limit()
    BoundedHttpToolsProtocol.limits = Limits.of(settings)
    log.info(
        "http_limits",
        open_files=soft,
        max_connections=BoundedHttpToolsProtocol.limits.max_connections,
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.request_header_timeout,
        body_timeout=settings.request_body_timeout,
    )
