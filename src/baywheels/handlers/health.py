from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..errors import Unavailable
from ..http import pool
from ..models import Health, Message
from ..responses import JSONResponse

_BANNER = JSONResponse(Message(message="Bay Wheels Orchestration & Dispatch Service")).body


async def root(request: Request) -> Response:
    return Response(_BANNER, media_type="application/json")


async def healthz(request: Request) -> Response:
    return JSONResponse(Health(status="ok"))


async def readyz(request: Request) -> Response:
    try:
        await queries.health_ping(pool(request))
    except Exception as exc:
        retry_after = str(request.app.state.settings.retry_after)
        raise Unavailable("Database unavailable", {"Retry-After": retry_after}) from exc
    return JSONResponse(Health(status="ready"))
