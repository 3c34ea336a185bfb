"""What a call can raise: every answer the service refuses becomes an ``APIError`` carrying its status and
``detail``; a service that cannot be reached at all, ``ConnectionFailed``."""

import msgspec


class ClientError(Exception):
    """Anything a client call raises on purpose."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class ConnectionFailed(ClientError):
    """No answer from the service after every retry (refused, reset, timed out); ``__cause__`` is the last
    transport error."""


class APIError(ClientError):
    """The service answered with an error status: ``status`` and its ``detail``."""

    def __init__(self, status: int, detail: str, request_id: str | None = None) -> None:
        super().__init__(f"{status}: {detail}", request_id)
        self.status = status
        self.detail = detail


class BadRequest(APIError):
    pass


class Unauthorized(APIError):
    pass


class Forbidden(APIError):
    pass


class NotFound(APIError):
    pass


class OffShift(NotFound):
    """The worker is registered as off shift: the service dispatches nothing to it until an operator puts it
    back on shift (``PUT /workers/{id}``). Not the same as no task being ready (dispatch returns None)."""


class Conflict(APIError):
    pass


class TooManyRequests(APIError):
    pass


class Unavailable(APIError):
    pass


class LeaseLost(Conflict):
    """The task is no longer this worker's: canceled by an operator, or its lease ran out and it was handed
    out again. Whatever the worker does with it now is not recorded."""

    def __init__(self, task_id: int, status: int, detail: str, request_id: str | None = None) -> None:
        super().__init__(status, detail, request_id)
        self.task_id = task_id


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: TooManyRequests,
    503: Unavailable,
}


class _Error(msgspec.Struct):
    detail: str


def api_error(status: int, body: bytes, request_id: str | None) -> APIError:
    """The exception for an error answer; its ``detail`` is the body's, or the start of the body when it is
    not the service's ``{"detail": ...}`` (a proxy's page, say)."""
    try:
        detail = msgspec.json.decode(body, type=_Error).detail
    except msgspec.DecodeError:
        detail = body[:200].decode("utf-8", "replace") or "(no body)"
    return _BY_STATUS.get(status, APIError)(status, detail, request_id)
