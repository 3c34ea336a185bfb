"""Suggestions from the ML engine: ingest a batch, list the pending ones."""

from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..endpoints import Endpoints
from ..models import IngestResult, Suggestion, SuggestionBatch, SuggestionPage
from ..requests import pool, read_pool
from ..responses import MsgspecResponse

endpoints = Endpoints("suggestions")


@endpoints.get(
    "/suggestions",
    "List pending suggestions, oldest first",
    list[Suggestion],
    roles=("ml", "viewer", "operator", "admin"),
)
async def list_suggestions(request: Request, query: SuggestionPage) -> Response:
    return MsgspecResponse(await queries.suggestion_list(read_pool(request), query.after_id, query.limit))


@endpoints.post(
    "/suggestions",
    "Ingest a batch of suggestions from the ML engine",
    IngestResult,
    status=201,
    roles=("ml", "operator", "admin"),
    description=(
        "Per station pair: a pending suggestion is updated in place, a pair with an open task is skipped "
        "(null id, counted as a duplicate), and within the batch the last item for a pair wins."
    ),
)
async def ingest(request: Request, body: SuggestionBatch) -> Response:
    async with pool(request).acquire() as conn, conn.transaction():
        await queries.suggestion_lock_for_ingest(conn)
        rows = await queries.suggestion_upsert_batch(conn, body)
    ids: list[int | None] = [None] * len(body)
    created = 0
    for row in rows:
        ids[row["ord"] - 1] = row["id"]
        created += row["inserted"]
    result = IngestResult(
        created=created, updated=len(rows) - created, duplicates=len(body) - len(rows), ids=ids
    )
    return MsgspecResponse(result, status_code=201)
