"""The banner and the probes."""

from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..endpoints import Endpoints
from ..errors import Unavailable
from ..models import Health, Message
from ..requests import pool
from ..responses import MsgspecResponse
from ..state import app_state

endpoints = Endpoints("health")

_BANNER = MsgspecResponse(Message(message="Bay Wheels Orchestration & Dispatch Service")).body


@endpoints.get("/", "Service banner", Message, database=False)
async def root(request: Request) -> Response:
    return Response(_BANNER, media_type="application/json")


@endpoints.get("/healthz", "Liveness: the process answers", Health, database=False)
async def healthz(request: Request) -> Response:
    return MsgspecResponse(Health(status="ok"))


@endpoints.get("/readyz", "Readiness: the database answers", Health)
async def readyz(request: Request) -> Response:
    try:
        await queries.health_ping(pool(request))
    except Exception as exc:
        retry_after = str(app_state(request).settings.retry_after)
        raise Unavailable("Database unavailable", {"Retry-After": retry_after}) from exc
    return MsgspecResponse(Health(status="ready"))
