"""uvicorn's httptools protocol with the limits a server on the internet needs, which uvicorn does not have:
the size of a request's head (request line and headers) and its number of headers, the time to receive the
head, the open connections of a process; and the open-files limit raised at start-up.

The time to receive a body is bounded by the request middleware, where the answer (408) goes through the
access log and metrics like any other; this protocol only bounds a body the app never read."""

import asyncio
import resource
from typing import Any, ClassVar

import msgspec
import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import metrics
from .settings import Settings

log = structlog.get_logger(__name__)

# Open files kept back from the connection cap: the pool's connections, the LISTEN connection, the
# listening socket, logs and whatever the libraries open.
_FILES_HELD_BACK = 64


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_header_count: int
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    max_connections: int
    retry_after: int

    @classmethod
    def of(cls, settings: Settings) -> "Limits":
        return cls(
            max_header_count=settings.max_header_count,
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.request_header_timeout,
            body_timeout=settings.request_body_timeout,
            max_connections=connection_cap(settings),
            retry_after=settings.retry_after,
        )


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


def _limit_reached(limit: str, **details: Any) -> None:
    """One line and one count each time a limit refuses or cuts a request."""
    log.warning("http_limit_reached", limit=limit, **details)
    metrics.LIMITED.labels(limit).inc()


def _json_response(status: int, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete response written by the protocol itself, where no app runs: `{"detail"}`, then close."""
    body = msgspec.json.encode({"detail": detail})
    reason = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
    head = [f"HTTP/1.1 {status} {reason[status]}", "content-type: application/json"]
    head += [f"{name}: {value}" for name, value in headers]
    head += [f"content-length: {len(body)}", "connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One instance per connection. uvicorn calls the parser callbacks (on_*) from data_received."""

    # Set from the settings by `serve` (and by each worker process) before the first connection.
    limits: ClassVar[Limits] = Limits.of(Settings())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True  # between the end of one request and the end of the next one's headers
        self._head_bytes = 0  # bytes received while reading the head (counted per read: one read of slack)
        self._header_count = 0
        self._refusal: tuple[str, int, str] | None = None  # (limit, status, detail) for a head over a limit
        self._head_timer: asyncio.TimerHandle | None = None
        self._unread_body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._unread_body_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return  # answered already (uvicorn's 400 for a malformed request)
        # httptools buffers a header until it is complete, so the raw bytes are counted: a head that never
        # ends would otherwise grow without bound.
        if self._refusal is None and self._reading_head and self._head_bytes > self.limits.max_header_bytes:
            size = self.limits.max_header_bytes
            self._refusal = ("header_bytes", 431, f"Request headers exceed the limit of {size} bytes")
        if self._refusal is not None:
            limit, status, detail = self._refusal
            _limit_reached(limit)
            self._answer(status, detail)

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        self._arm_head_timer()  # a request on a kept-alive connection; the first was armed at connect

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_header_count:
            self._refusal = ("header_count", 431, f"More than {self.limits.max_header_count} request headers")
        if self._refusal is None:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._refusal is not None:
            return  # no app runs; data_received answers once the parser returns
        if len(self.connections) <= self.limits.max_connections:
            super().on_headers_complete()
            return
        # uvicorn's limit_concurrency would answer in plain text: run our own answer in the app's place.
        _limit_reached("connections", open=len(self.connections))
        self.app = _overloaded
        try:
            super().on_headers_complete()
        finally:
            self.app = self.config.loaded_app

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._reading_head = True
        if self._refusal is not None:
            return
        if self._unread_body_timer is not None:
            # The unread body of a request already answered has ended: the connection is idle again, under
            # uvicorn's keep-alive timeout (which the body's bytes had cancelled).
            self._unread_body_timer.cancel()
            self._unread_body_timer = None
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
            return
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle  # the request just answered: a later one cannot be parsed before its body ends
        if cycle.response_complete and cycle.more_body and not self.transport.is_closing():
            # Answered before its body was read (413, or a handler that does not read it). Reading the rest
            # lets the client read the answer (closing now could reset the connection under it), but only for
            # as long as a body may take.
            self._unread_body_timer = self.loop.call_later(self.limits.body_timeout, self._unread_body_ended)

    # Deadlines

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

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
        _limit_reached("header_timeout", received_bytes=self._head_bytes)
        self._answer(408, f"Request headers not received within {self.limits.header_timeout:g} s")

    def _unread_body_ended(self) -> None:
        self._unread_body_timer = None
        if not self.transport.is_closing():
            _limit_reached("unread_body_timeout")
            self.transport.close()

    def _answer(self, status: int, detail: str) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_json_response(status, detail))
        self.transport.close()


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The answer to a request beyond MAX_CONNECTIONS, in the app's place."""
    retry_after = BoundedHttpToolsProtocol.limits.retry_after
    body = msgspec.json.encode({"detail": "Too many connections, retry later"})
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
