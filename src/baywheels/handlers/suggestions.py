from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..models import IngestResult, SuggestionBatch, SuggestionPage
from ..requests import body, pool, query
from ..responses import MsgspecResponse


async def list_suggestions(request: Request) -> Response:
    page = query(request, SuggestionPage)
    return MsgspecResponse(await queries.suggestion_list(pool(request), page.after_id, page.limit))


async def ingest(request: Request) -> Response:
    items = await body(request, SuggestionBatch)
    async with pool(request).acquire() as conn, conn.transaction():
        await queries.suggestion_lock_for_ingest(conn)
        rows = await queries.suggestion_upsert_batch(conn, items)
    ids: list[int | None] = [None] * len(items)
    created = 0
    for row in rows:
        ids[row["ord"] - 1] = row["id"]
        created += row["inserted"]
    result = IngestResult(
        created=created, updated=len(rows) - created, duplicates=len(items) - len(rows), ids=ids
    )
    return MsgspecResponse(result, status_code=201)
