"""Suggestions from the ML engine: ingest a batch, list the pending ones, dismiss some, and read what
became of each (the outcomes the ML engine learns from)."""

from msgspec import UNSET, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..auth import principal
from ..endpoints import Endpoints
from ..errors import BadRequest
from ..models import (
    INT64_MAX,
    DismissRequest,
    DismissResult,
    IngestResult,
    OutcomePage,
    Suggestion,
    SuggestionBatch,
    SuggestionIn,
    SuggestionOutcome,
    SuggestionPage,
)
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
        "(null id, counted as a duplicate), and within the batch the last item for a pair wins. Once the "
        "station registry holds stations, every station named must be an active one (by `id` or GBFS "
        "`station_id`), or the whole batch is refused with a 400 naming the first that is not."
    ),
)
async def ingest(request: Request, body: SuggestionBatch) -> Response:
    async with pool(request).acquire() as conn, conn.transaction():
        from_ids, to_ids = await _stations(conn, body)
        await queries.suggestion_lock_for_ingest(conn)
        rows = await queries.suggestion_upsert_batch(conn, body, from_ids, to_ids)
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


async def _stations(conn: queries.Conn, items: list[SuggestionIn]) -> tuple[list[int], list[int]]:
    """The registry ids of each item's two stations, checked against the registry in one query. With an
    empty registry any positive integer is accepted, as before there was one."""
    ids: set[int] = set()
    names: set[str] = set()
    for item in items:
        for by_id, by_name in (
            (item.from_station_id, item.from_station),
            (item.to_station_id, item.to_station),
        ):
            if by_id is not UNSET:
                ids.add(by_id)
            elif by_name is not UNSET:
                names.add(by_name)
    known = await queries.station_resolve(conn, list(ids), list(names))
    from_ids: list[int] = []
    to_ids: list[int] = []
    for index, item in enumerate(items):
        from_id = _station(known, index, "from", item.from_station_id, item.from_station)
        to_id = _station(known, index, "to", item.to_station_id, item.to_station)
        if from_id == to_id:
            raise BadRequest(f"The two stations are the same station ({from_id}) - at `$[{index}]`")
        from_ids.append(from_id)
        to_ids.append(to_id)
    return from_ids, to_ids


def _station(
    known: queries.Resolved, index: int, end: str, by_id: int | UnsetType, by_name: str | UnsetType
) -> int:
    """The registry id of one end of item ``index``, or a 400 naming the field."""
    if by_id is not UNSET:
        if known.registry and not known.by_id.get(by_id, False):
            state = "is inactive (it left the GBFS feed)" if by_id in known.by_id else "is unknown"
            raise BadRequest(f"Station id {by_id} {state} - at `$[{index}].{end}_station_id`")
        return by_id
    assert by_name is not UNSET
    found = known.by_gbfs.get(by_name)
    if found is None or not found[1]:
        state = "is unknown" if found is None else "is inactive (it left the GBFS feed)"
        raise BadRequest(f"GBFS station_id {by_name!r} {state} - at `$[{index}].{end}_station`")
    return found[0]
