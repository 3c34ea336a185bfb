"""The handlers, one module per resource, each declaring its endpoints beside them (see ``endpoints.py``);
gathered here for the app's routes and the OpenAPI document."""

from ..endpoints import Endpoint
from . import dispatch, health, keys, operators, suggestions, tasks

ENDPOINTS: tuple[Endpoint, ...] = (
    *health.endpoints,
    *suggestions.endpoints,
    *tasks.endpoints,
    *dispatch.endpoints,
    *operators.endpoints,
    *keys.endpoints,
)
