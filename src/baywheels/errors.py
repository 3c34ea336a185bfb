"""Every error becomes ``{"detail": ...}`` with the right status code; nothing internal leaks."""

from collections.abc import Mapping

import asyncpg
import asyncpg.exceptions._base
import msgspec
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from .db import Pool
from .responses import MsgspecResponse
from .state import app_state

log = structlog.get_logger(__name__)


# A request whose client went away before its answer (nginx's "client closed request"): logged and counted
# with it, received by nobody.
CLIENT_CLOSED = 499


class ServiceError(Exception):
    status_code = 500

    def __init__(self, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class BadRequest(ServiceError):
    status_code = 400


class NotFound(ServiceError):
    status_code = 404


class RequestTimeout(ServiceError):
    status_code = 408


class Conflict(ServiceError):
    status_code = 409


class Unauthorized(ServiceError):
    """No credential, or one we do not accept (missing, malformed, unknown, expired, revoked)."""

    status_code = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": 'Bearer realm="baywheels"'})


class Forbidden(ServiceError):
    status_code = 403


class PayloadTooLarge(ServiceError):
    status_code = 413


class TooManyRequests(ServiceError):
    status_code = 429


class Unavailable(ServiceError):
    status_code = 503


# A unique violation that escapes a query function means two requests raced past our own checks.
_CONSTRAINT_DETAILS = {
    "tasks_suggestion_id_key": "This suggestion has already been approved",
    "suggestions_pair_key": "A suggestion for this station pair already exists",
}

# Database and connection errors, and only those, are a 503: the request may succeed when retried.
# - asyncpg.PostgresConnectionError, SQLSTATE class 08: among them db.DatabaseUnreachable (any OSError while
#   connecting: refused, unreachable, a name that does not resolve, a connect timeout), asyncpg's
#   ConnectionDoesNotExistError (the connection closed under a statement) and db.ConnectionLost (an error
#   on a connection the server had closed, e.g. during its restart).
# - CannotConnectNowError (57P03: starting up, shutting down), AdminShutdownError (57P01: terminated by a
#   shutdown or pg_terminate_backend), CrashShutdownError (57P02), TooManyConnectionsError (53300).
# - TimeoutError: no pool connection free within POOL_ACQUIRE_TIMEOUT, or a statement past
#   DB_COMMAND_TIMEOUT (a database too slow to answer).
# - ConnectionError: a socket refused or reset outside a connect (asyncpg's cancel requests).
# - InsufficientResourcesError (SQLSTATE class 53): the disk full (53100), out of memory (53200).
# Not OSError as a whole: a FileNotFoundError or PermissionError is a fault of ours, a 500.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InsufficientResourcesError,
    TimeoutError,
    ConnectionError,
)


def error_response(status_code: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    return MsgspecResponse({"detail": detail}, status_code=status_code, headers=headers)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status_code, exc.detail, exc.headers)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = exc.headers
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route with this path only; GET and POST
        # /suggestions are two routes.
        allowed = {
            method
            for route in request.app.routes
            if isinstance(route, Route) and route.matches(request.scope)[0] is Match.PARTIAL
            for method in route.methods or ()
        }
        headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
    return error_response(exc.status_code, exc.detail, headers)


async def _invalid_body(request: Request, exc: Exception) -> Response:
    return error_response(400, str(exc))


async def _unique_violation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, asyncpg.UniqueViolationError)
    detail = _CONSTRAINT_DETAILS.get(exc.constraint_name or "", "Conflicts with an existing record")
    return error_response(409, detail)


async def _nul_in_text(request: Request, exc: Exception) -> Response:
    # The request Structs refuse NUL by field; this catches any text that reaches PostgreSQL another way.
    return error_response(400, "Text must not contain the NUL character (\\u0000)")


async def _invalid_value(request: Request, exc: Exception) -> Response:
    # The last resort for a value the request Structs let through but PostgreSQL (22xxx) or asyncpg's encoder
    # refused. Their messages quote SQL or query arguments, so they go to the log only.
    log.warning("invalid_value", error=f"{type(exc).__name__}: {exc}")
    return error_response(400, "A value in the request is out of range or not valid for the database")


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database_unavailable", error=f"{type(exc).__name__}: {exc}")
    retry_after = str(app_state(request).settings.retry_after)
    return error_response(503, "Database unavailable, retry later", {"Retry-After": retry_after})


async def _read_only(request: Request, exc: Exception) -> Response:
    """A write refused by a read-only database (25006): after a failover that left DATABASE_URL on a standby,
    or a primary set read-only (a full disk, maintenance). A session stays read-only even once writes are
    possible again (the setting is taken when it starts), so the pool replaces its connections (at most once
    per Retry-After): the requests after that reach whatever DATABASE_URL leads to then."""
    log.warning("database_read_only", error=f"{type(exc).__name__}: {exc}")
    state = app_state(request)
    if isinstance(state.pool, Pool):
        await state.pool.replace_connections(at_most_every=state.settings.retry_after)
    return error_response(
        503, "Database is read-only, retry later", {"Retry-After": str(state.settings.retry_after)}
    )


EXCEPTION_HANDLERS = {
    ServiceError: _service_error,
    HTTPException: _http_exception,
    msgspec.ValidationError: _invalid_body,
    msgspec.DecodeError: _invalid_body,
    asyncpg.UniqueViolationError: _unique_violation,
    asyncpg.CharacterNotInRepertoireError: _nul_in_text,
    asyncpg.DataError: _invalid_value,  # PostgreSQL's data exceptions (SQLSTATE class 22)
    asyncpg.exceptions._base.DataError: _invalid_value,  # asyncpg's own, when encoding an argument
    **dict.fromkeys(DATABASE_UNAVAILABLE, _database_unavailable),
    asyncpg.ReadOnlySQLTransactionError: _read_only,
}
