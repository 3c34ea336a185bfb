"""The minimal app the service is measured against (issue 11): the dispatcher a competent user would write in
an afternoon with the same stack. Starlette, an asyncpg pool, msgspec and the service's own dispatch
statement, one per request; no middleware, metrics, request context or coalescing.

``python -m uvicorn bench.peer:app`` from the checkout, with DATABASE_URL, POOL_MIN_SIZE and POOL_MAX_SIZE in
the environment (the harness starts it: ``bench.procs.peer_command``)."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from baywheels import sql

# The service's statement, read through its loader, so that both run the same SQL.
DISPATCH = sql.text("task_dispatch")
# How the harness tells the peer's connections from others (its readiness wait counts them).
APPLICATION_NAME = "bench-peer"


class DispatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    worker_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    lease_seconds: Annotated[int, msgspec.Meta(ge=1, le=86400)] = 1800  # the service's default lease


_decode = msgspec.json.Decoder(DispatchRequest).decode
_encode = msgspec.json.Encoder().encode


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status, media_type="application/json")


async def _release_as_is(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (``RESET ALL; UNLISTEN *; ...``): nothing here changes a session,
    and the query would be a second round trip per request. The service releases the same way."""


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, asyncpg.Pool]]:
    async with asyncpg.create_pool(
        os.environ["DATABASE_URL"],
        min_size=int(os.environ.get("POOL_MIN_SIZE", "2")),
        max_size=int(os.environ.get("POOL_MAX_SIZE", "10")),
        server_settings={"application_name": APPLICATION_NAME},
        reset=_release_as_is,
    ) as pool:
        yield {"pool": pool}


async def dispatch_next(request: Request) -> Response:
    try:
        body = _decode(await request.body())
    except msgspec.DecodeError as exc:  # ValidationError included
        return _json({"detail": str(exc)}, 400)
    pool: asyncpg.Pool = request.state.pool
    # $3, the Idempotency-Key, and $4, the clock: NULL, as the service passes them for a plain request; $5,
    # the actor recorded with the assignment (the service's is the caller's key id); $6, one van per station,
    # on as the service's default.
    row = await pool.fetchrow(DISPATCH, body.worker_id, body.lease_seconds, None, None, "minimal-app", True)
    if row is None:
        return _json({"detail": "No available tasks with status 'ready'"}, 404)
    return _json(dict(row))


async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    # Answering at all means the lifespan ran: the pool opened its first connections.
    return _json({"status": "ready"})


app = Starlette(
    routes=[
        Route("/dispatch/next", dispatch_next, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
    ],
    lifespan=lifespan,
)
