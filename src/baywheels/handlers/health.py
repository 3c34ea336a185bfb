"""The banner and the probes."""

import asyncpg
import structlog
from starlette.requests import Request
from starlette.responses import Response

from .. import metrics, queries
from ..endpoints import Endpoints
from ..errors import Unavailable
from ..models import AUTH_OFF_WARNING, Health, Message
from ..requests import pool
from ..responses import MsgspecResponse
from ..state import app_state

log = structlog.get_logger(__name__)

endpoints = Endpoints("health")

_BANNER = MsgspecResponse(Message(message="Bay Wheels Orchestration & Dispatch Service")).body


@endpoints.get("/", "Service banner", Message, database=False, public=True)
async def root(request: Request) -> Response:
    return Response(_BANNER, media_type="application/json")


@endpoints.get("/healthz", "Liveness: the process answers", Health, database=False, public=True)
async def healthz(request: Request) -> Response:
    return MsgspecResponse(Health(status="ok"))


@endpoints.get(
    "/readyz",
    "Readiness: the database answers",
    Health,
    public=True,
    description="`warning` says so when authentication is off (AUTH=off).",
)
async def readyz(request: Request) -> Response:
    settings = app_state(request).settings
    try:
        await queries.health_ping(pool(request))
    except Exception as exc:
        raise Unavailable("Database unavailable", {"Retry-After": str(settings.retry_after)}) from exc
    if not settings.auth_on:
        return MsgspecResponse(Health(status="ready", warning=AUTH_OFF_WARNING))
    return MsgspecResponse(Health(status="ready"))


@endpoints.get(
    "/metrics",
    "Prometheus metrics",
    str,
    database=False,
    roles=("metrics", "viewer", "operator", "admin"),
    public_setting="metrics_public",
    media_type="text/plain",
    description=(
        "Public with METRICS_PUBLIC=true. The business figures of GET /stats are read at most once every "
        "5 seconds per process; while the database is unreachable they are left out."
    ),
)
async def get_metrics(request: Request) -> Response:
    served = metrics.exposition()
    try:
        stats = await app_state(request).figures.get(pool(request))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        log.warning("metrics_figures_unavailable", error=f"{type(exc).__name__}: {exc}")
        return served
    return Response(bytes(served.body) + metrics.figures_exposition(stats), media_type=served.media_type)
