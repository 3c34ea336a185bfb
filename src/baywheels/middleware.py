"""One pure-ASGI layer around every request: request id, body size limit, the answer to a body too slow
(whose deadline the protocol keeps), access log, metrics, and the last-resort 500 that names nothing
internal."""

import functools
import itertools
import re
import secrets
import time

import structlog
from prometheus_client import Counter, Histogram
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .errors import CLIENT_CLOSED, PayloadTooLarge, RequestTimeout, error_response
from .logs import REQUEST_ID
from .protocol import BODY_TIMED_OUT, REFUSED, limit_reached
from .requests import header

log = structlog.get_logger("baywheels.access")

# A client's own id is echoed only when it is short and harmless to put in logs and headers.
_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")

# Our own ids: 32 hex digits, a random half per process and a counter, unique without a uuid4 (a getrandom
# system call) per request.
_PROCESS_ID = secrets.token_hex(8)
_sequence = itertools.count()


def take_request_id(scope: Scope) -> str:
    """The request's id, the client's X-Request-ID when it is sane, else one of ours; set for the log lines
    written while it is served (each request runs in its own task, with its own copy of the context)."""
    given = header(scope, b"x-request-id")
    found = (
        given.decode() if given and _SANE_REQUEST_ID.match(given) else f"{_PROCESS_ID}{next(_sequence):016x}"
    )
    REQUEST_ID.set(found)
    return found


def record(
    method: str, route: str, path: str, status: int, started: float, access_log: bool, via: str = "app"
) -> None:
    """The request's metrics, and its access log line (ACCESS_LOG); ``via`` says what served it: the ASGI
    app, or the protocol itself (direct.py)."""
    elapsed = time.perf_counter() - started
    requests, latency = _observers(method, route, status)
    requests.inc()
    latency.observe(elapsed)
    if access_log:
        log.info(
            "request",
            method=method,
            path=path,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
            via=via,
        )


@functools.lru_cache(maxsize=4096)
def _observers(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    """The metric children of one kind of request, looked up once rather than on every request."""
    return metrics.REQUESTS.labels(method, route, str(status)), metrics.LATENCY.labels(method, route)


class RequestContext:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout: float, access_log: bool) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        request_id = take_request_id(scope)
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                if BODY_TIMED_OUT in scope:  # the protocol's deadline for the body (protocol.py)
                    limit_reached("body_timeout", received_bytes=received)
                    # The rest of the body may still come: the connection cannot carry another request.
                    raise RequestTimeout(
                        f"Request body not received within {self.body_timeout:g} s",
                        {"Connection": "close"},
                    )
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge(self._too_large)
            return message

        try:
            length = header(scope, b"content-length")
            if REFUSED in scope:  # by the protocol, on its head (protocol.py)
                refused_status, detail, headers = scope[REFUSED]
                await error_response(refused_status, detail, headers)(scope, receive, send_with_id)
            elif length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                # Refused before a byte of the body is read.
                await error_response(413, self._too_large)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive_limited, send_with_id)
        except ClientDisconnect:
            # The client left in the middle of its body (Starlette's request.body()): its doing, not ours.
            status = CLIENT_CLOSED
            log.info(
                "client_disconnected", method=scope["method"], path=scope["path"], received_bytes=received
            )
        except Exception:
            log.exception("unhandled_error", method=scope["method"], path=scope["path"])
            if response_started:
                raise
            await error_response(500, "Internal server error")(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            route_path = route.path if isinstance(route, Route) else "unmatched"
            record(scope["method"], route_path, scope["path"], status, started, self.access_log)

    @property
    def _too_large(self) -> str:
        return f"Request body exceeds the limit of {self.max_body_bytes} bytes"
