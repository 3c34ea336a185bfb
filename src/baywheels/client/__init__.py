"""Clients of the service's public HTTP API, for its three callers: field workers (``Worker``), the ML engine
(``MLEngine``) and operators (``Operator``). Async (httpx); ``baywheels.client.sync`` has the same calls for
scripts. Answers are the service's own Structs (``baywheels.models``). Needs the ``client`` extra
(``pip install 'baywheels[client]'``, for httpx)."""

from ..models import SuggestionIn, Task
from .base import Retry
from .errors import (
    APIError,
    BadRequest,
    ClientError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    LeaseLost,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from .ml import MLEngine
from .operator import Operator
from .worker import Worker

__all__ = [
    "APIError",
    "BadRequest",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "LeaseLost",
    "MLEngine",
    "NotFound",
    "Operator",
    "Retry",
    "SuggestionIn",
    "Task",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Worker",
]
