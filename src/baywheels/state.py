"""What the lifespan opens and every request may use, as one typed object (Starlette's lifespan state)."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import asyncpg
from starlette.requests import Request

from .dispatcher import Dispatcher
from .settings import Settings

if TYPE_CHECKING:
    from .auth import Guard
    from .events import EventHub
    from .overview import Cached


@dataclass(frozen=True, slots=True)
class AppState:
    settings: Settings
    pool: asyncpg.Pool
    dispatcher: Dispatcher
    guard: "Guard"
    events: "EventHub"
    figures: "Cached"


# The lifespan yields {STATE_KEY: AppState}; the server hands each request a copy as ``scope["state"]``.
STATE_KEY = "app"


def app_state(request: Request) -> AppState:
    """The one untyped read of the lifespan's state, made typed for everyone else. From the scope, not
    ``request.state``, which would build a State object per request on the hot path."""
    return cast(AppState, request.scope["state"][STATE_KEY])
