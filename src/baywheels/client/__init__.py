"""Clients of the service's public HTTP API, for its three callers: field workers (``Worker``), the ML engine
(``MLEngine``) and operators (``Operator``). Async (httpx); ``baywheels.client.sync`` has the same calls for
scripts. Answers are the service's own Structs (``baywheels.models``). Needs the ``client`` extra
(``pip install 'baywheels[client]'``, for httpx)."""

from ..models import Position, SuggestionIn, SuggestionOutcome, Task
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
    OffShift,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from .ml import MLEngine, Outcomes
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
    "OffShift",
    "Operator",
    "Outcomes",
    "Position",
    "Retry",
    "SuggestionIn",
    "SuggestionOutcome",
    "Task",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Worker",
]
