"""API keys, for admins: issue one (its secret shown once), list them (never the secret), revoke one."""

from starlette.requests import Request
from starlette.responses import Response

from .. import auth, queries
from ..endpoints import Endpoints
from ..errors import NotFound
from ..models import ApiKey, KeyCreate, KeyCreated
from ..requests import pool
from ..responses import MsgspecResponse

endpoints = Endpoints("keys")


@endpoints.post(
    "/keys",
    "Admin: issue an API key",
    KeyCreated,
    status=201,
    roles=("admin",),
    description=(
        "The response is the only time `key` is shown: only its digest is kept. A `worker` key needs the "
        "`worker_id` it belongs to."
    ),
)
async def create_key(request: Request, body: KeyCreate) -> Response:
    created_by = auth.principal(request).actor
    key, record = await auth.create_key(
        pool(request), body.role, body.worker_id, body.name, body.expires_at, created_by
    )
    created = KeyCreated(
        key_id=record.key_id,
        key=key.token,
        role=record.role,
        worker_id=record.worker_id,
        name=record.name,
        created_at=record.created_at,
        expires_at=record.expires_at,
    )
    return MsgspecResponse(created, status_code=201)


@endpoints.get("/keys", "Admin: list API keys, revoked ones included", list[ApiKey], roles=("admin",))
async def list_keys(request: Request) -> Response:
    return MsgspecResponse(await queries.api_key_list(pool(request)))


@endpoints.delete(
    "/keys/{key_id}",
    "Admin: revoke an API key",
    None,
    status=204,
    errors=(404,),
    roles=("admin",),
    description="Refused by every instance within 5 seconds. Revoking a revoked key changes nothing.",
)
async def revoke_key(request: Request) -> Response:
    key_id: str = request.path_params["key_id"]
    revoked = await queries.api_key_revoke(pool(request), key_id, auth.principal(request).actor)
    if revoked is None:
        raise NotFound(f"API key {key_id[:40]!r} not found")
    return Response(status_code=204)
