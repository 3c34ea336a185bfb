"""``POST /dispatch/next`` served straight from the HTTP protocol, beside the ASGI app (issue 11).

At one or a few concurrent workers, where a real fleet lives, a dispatch is latency: one statement and the
Python around it. Of that Python, the ASGI exchange and the layers over it (uvicorn's receive and send, with
their checks of every header, Starlette's error and exception middleware, router, Request and Response, our
request middleware) were more than the work of the request itself, and made the service slower at c=1 than
a minimal Starlette app running the same statement (docs/benchmarks.md, "Where the time goes at c=1").

So the protocol hands that one route here, with its request parsed: the same guard, the same handler code
(``handlers.dispatch.next_task``), the same error answers (``errors.EXCEPTION_HANDLERS``), the same request
id, metrics and access log, and the answer written in one piece. Whatever is out of the ordinary goes to the
ASGI app instead, untouched, as every other request does: a body too slow or too large (over 64 KiB), one that
does not decode (the app words the 400), a long poll (it watches for the client leaving), a query string, a
request the protocol refused, and every request while tracing or CORS is on (their middleware must see it). So
there is one behaviour, and the live tests see this path (they run the real server) while the in-process tests
see the app's. DIRECT_DISPATCH=false turns it off."""

import contextlib
import contextvars
import time
from collections.abc import Coroutine
from typing import Any, ClassVar, cast

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable
from uvicorn._types import Scope as UvicornScope
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from .errors import EXCEPTION_HANDLERS, error_response
from .handlers import dispatch
from .middleware import record, take_request_id
from .models import DispatchRequest
from .protocol import BODY_TIMED_OUT, REFUSED, BoundedHttpToolsProtocol
from .requests import decode_body, header
from .settings import Settings
from .state import STATE_KEY, AppState

log = structlog.get_logger("baywheels.access")

ROUTE = "/dispatch/next"
_ENDPOINT = next(endpoint for endpoint in dispatch.endpoints if endpoint.path == ROUTE)
_encode = msgspec.json.Encoder().encode


async def _rewritten(scope: UvicornScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """The app behind ``Direct.proxy``: uvicorn's proxy-headers middleware, used for its scope rewriting."""


class Direct(msgspec.Struct, frozen=True):
    """What the protocol needs to serve the route directly, from the settings; None when it must not."""

    # Bodies up to this are read here: MAX_BODY_BYTES, at most what uvicorn buffers before it pauses reading.
    body_limit: int
    access_log: bool
    # X-Forwarded-For and -Proto, believed from FORWARDED_ALLOW_IPS, as the ASGI app has them.
    proxy: ProxyHeadersMiddleware

    @classmethod
    def of(cls, settings: Settings) -> "Direct | None":
        if not settings.direct_dispatch or settings.tracing_on or settings.cors_origin_list:
            return None
        return cls(
            body_limit=min(settings.max_body_bytes, HIGH_WATER_LIMIT),
            access_log=settings.access_log,
            proxy=ProxyHeadersMiddleware(_rewritten, settings.forwarded_allow_ips),
        )


class DirectProtocol(BoundedHttpToolsProtocol):
    """The service's protocol (protocol.py), with ``POST /dispatch/next`` started as ``serve`` rather than as
    the ASGI app. uvicorn keeps what it does for every request: parsing, keep-alive, pipelining (a pipelined
    request is started here when the one before it is answered), flow control and shutdown."""

    # Set from the settings by `configure` (in each worker process) before the first connection.
    direct: ClassVar[Direct | None] = None

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        scope = cycle.scope
        direct = self.direct
        # `app is self.app`: not uvicorn's 503 app for limit_concurrency (unset by the service, but still).
        if direct is None or scope["path"] != ROUTE or scope["method"] != "POST" or app is not self.app:
            super()._start_asgi_task(cycle, app)
            return
        work: Coroutine[Any, Any, None] = serve(cycle, app, direct)
        if self.config.reset_contextvars:
            task = self.loop.create_task(work, context=contextvars.Context())
        else:
            task = self.loop.create_task(work)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)


def configure(settings: Settings) -> None:
    DirectProtocol.direct = Direct.of(settings)


async def serve(cycle: RequestResponseCycle, app: ASGI3Application, direct: Direct) -> None:
    scope = cast(Scope, cycle.scope)  # uvicorn's TypedDict, as Starlette's plain mapping
    body = None
    if not scope["query_string"] and REFUSED not in scope and await _whole_body(cycle, scope, direct):
        with contextlib.suppress(Exception):  # the app words the 400
            body = decode_body(bytes(cycle.body), DispatchRequest, required=_ENDPOINT.body_required)
    if body is None or body.wait_seconds > 0:
        cycle.message_event.set()  # the app's first receive() takes the body as it is, whole or not
        await cycle.run_asgi(app)
        return
    # From here on, this request is served here and nowhere else.
    started = time.perf_counter()
    request_id = take_request_id(scope)
    await direct.proxy(cycle.scope, cycle.receive, cycle.send)
    state: AppState = scope["state"][STATE_KEY]
    try:
        caller = await state.guard.admit(scope, _ENDPOINT)
        task = await dispatch.next_task(state, caller, body, header(scope, dispatch.KEY))
    except Exception as exc:
        response = await _error(scope, exc)
        status, headers, content = response.status_code, response.raw_headers, bytes(response.body)
    else:
        status, headers, content = 200, [], _encode(task)
    try:
        await _answer(cycle, status, headers, content, request_id)
    except Exception:
        # As uvicorn's run_asgi: a response that could not be written ends the connection.
        log.exception("unhandled_error", method="POST", path=ROUTE)
        cycle.transport.close()
    finally:
        record("POST", ROUTE, ROUTE, status, started, direct.access_log, via="direct")


async def _whole_body(cycle: RequestResponseCycle, scope: Scope, direct: Direct) -> bool:
    """Wait for the rest of the body, as uvicorn's receive() does; False when the app must answer instead:
    the client left, the body is over the limit, or it took too long (the protocol's deadline)."""
    while cycle.more_body:
        if cycle.disconnected or BODY_TIMED_OUT in scope or len(cycle.body) > direct.body_limit:
            return False
        if cycle.waiting_for_100_continue and not cycle.transport.is_closing():
            # As uvicorn's receive(): the client waits for this to send its body.
            cycle.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        cycle.flow.resume_reading()
        await cycle.message_event.wait()
        cycle.message_event.clear()
    return len(cycle.body) <= direct.body_limit


async def _error(scope: Scope, exc: Exception) -> Response:
    """The answer the ASGI app gives for this exception: its handler's (errors.py), else a logged 500."""
    for kind in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(kind)
        if handler is not None:
            return await handler(Request(scope), exc)
    log.exception("unhandled_error", method="POST", path=ROUTE)
    return error_response(500, "Internal server error")


_JSON = b"content-type: application/json\r\n"


async def _answer(
    cycle: RequestResponseCycle,
    status: int,
    headers: list[tuple[bytes, bytes]],
    content: bytes,
    request_id: str,
) -> None:
    """The response in one write, then what uvicorn's send does when a response ends."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return  # as uvicorn's send: nobody to answer
    head = [STATUS_LINE[status]]
    for name, value in cycle.default_headers:  # the Date header
        head += (name, b": ", value, b"\r\n")
    said_close = False
    if headers:
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
            if name == b"connection" and b"close" in value.lower():
                cycle.keep_alive = False
                said_close = True
    else:
        head += (_JSON, b"content-length: ", str(len(content)).encode(), b"\r\n")
    head += (b"x-request-id: ", request_id.encode(), b"\r\n")
    if not cycle.keep_alive and not said_close:
        head.append(b"connection: close\r\n")  # the server is shutting down, or the client asked
    head += (b"\r\n", content)
    cycle.response_started = cycle.response_complete = True
    cycle.transport.write(b"".join(head))
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
