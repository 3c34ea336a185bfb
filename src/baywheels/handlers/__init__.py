"""The handlers, one module per resource, each declaring its endpoints beside them (see ``endpoints.py``);
gathered here for the app's routes and the OpenAPI document."""

from ..endpoints import Endpoint
from . import dispatch, events, health, keys, operators, stats, suggestions, tasks

# In the order the router tries them (it matches one route after another): the workers' calls, the most
# frequent by far, first.
ENDPOINTS: tuple[Endpoint, ...] = (
    *dispatch.endpoints,
    *tasks.endpoints,
    *suggestions.endpoints,
    *operators.endpoints,
    *keys.endpoints,
    *health.endpoints,
    *events.endpoints,
    *stats.endpoints,
)
