"""Suggestions from the ML engine: ingest a batch, list the pending ones, dismiss some, and read what
became of each (the outcomes the ML engine learns from)."""

from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..auth import principal
from ..endpoints import Endpoints
from ..models import (
    INT64_MAX,
    DismissRequest,
    DismissResult,
    IngestResult,
    OutcomePage,
    Suggestion,
    SuggestionBatch,
    SuggestionOutcome,
    SuggestionPage,
)
from ..requests import pool
from ..responses import MsgspecResponse

endpoints = Endpoints("suggestions")


@endpoints.get(
    "/suggestions",
    "List pending suggestions, oldest first",
    list[Suggestion],
    roles=("ml", "viewer", "operator", "admin"),
)
async def list_suggestions(request: Request, query: SuggestionPage) -> Response:
    return MsgspecResponse(await queries.suggestion_list(pool(request), query.after_id, query.limit))


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


@endpoints.post(
    "/suggestions/dismiss",
    "Operator: dismiss pending suggestions, with a reason",
    DismissResult,
    roles=("operator", "admin"),
    description=(
        "One transaction. Each dismissal is recorded with the reason and who made it, and read back by the "
        "ML engine from `GET /suggestions/outcomes`. Ids that are not pending (approved, dismissed or "
        "expired before, or unknown) are listed in `not_pending`. The pair may be suggested again."
    ),
)
async def dismiss(request: Request, body: DismissRequest) -> Response:
    ids = list(dict.fromkeys(body.suggestion_ids))
    dismissed = set(
        await queries.suggestion_remove(
            pool(request), ids, "dismissed", body.reason, actor=principal(request).actor
        )
    )
    result = DismissResult(
        dismissed=[i for i in ids if i in dismissed], not_pending=[i for i in ids if i not in dismissed]
    )
    return MsgspecResponse(result)


@endpoints.get(
    "/suggestions/outcomes",
    "What became of each suggestion, in order, after a cursor",
    list[SuggestionOutcome],
    roles=("ml", "operator", "viewer", "admin"),
    description=(
        "One row each time a suggestion's fate changes: approved, dismissed or expired, then its task's "
        "ending (completed, failed, canceled). Pass the last row's `cursor` as `after` to read on: each "
        "change is listed once, in the order it committed; an empty page means nothing new yet."
    ),
)
async def list_outcomes(request: Request, query: OutcomePage) -> Response:
    xact, _, outcome_id = query.after.partition("-")
    after = (min(int(xact), INT64_MAX), min(int(outcome_id), INT64_MAX))
    db = pool(request)
    horizon = await queries.suggestion_outcome_horizon(db)
    return MsgspecResponse(await queries.suggestion_outcome_list(db, after, query.limit, horizon))
