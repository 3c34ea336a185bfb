"""The station registry (filled from the GBFS feed: gbfs.py): list and filter, one station with its work,
its history."""

from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..endpoints import Endpoints
from ..errors import NotFound
from ..models import (
    Role,
    Station,
    StationDetail,
    StationHistory,
    StationHistoryQuery,
    StationPage,
)
from ..requests import path_id, pool
from ..responses import MsgspecResponse

endpoints = Endpoints("stations")

# Who may read the registry: everyone who works with the fleet. A worker (in the field, finding a station)
# may list stations, but not read a station's tasks, which belong to other workers too.
_LISTERS: tuple[Role, ...] = ("worker", "ml", "viewer", "operator", "admin")
_READERS: tuple[Role, ...] = ("ml", "viewer", "operator", "admin")
FINISHED_SHOWN = 50


@endpoints.get(
    "/stations",
    "List stations, by distance, fill and whether active",
    list[Station],
    roles=_LISTERS,
    description=(
        "`lat`, `lon` and `radius_km` together keep the stations within that great-circle distance; "
        "`fill_below` / `fill_above` (0..1, bounds included) compare bikes available with capacity, so a "
        "station without a capacity or a status is left out by either. Paged by `after_id`, in id order."
    ),
)
async def list_stations(request: Request, query: StationPage) -> Response:
    near = None
    if query.lat is not None and query.lon is not None and query.radius_km is not None:
        near = (query.lat, query.lon, query.radius_km * 1000)
    where = queries.StationFilter(query.fill_below, query.fill_above, query.active, near)
    return MsgspecResponse(await queries.station_list(pool(request), where, query.after_id, query.limit))


@endpoints.get(
    "/stations/{station_id:id}",
    "Get one station with its pending suggestions, open tasks and last finished tasks",
    StationDetail,
    roles=_READERS,
)
async def get_station(request: Request) -> Response:
    station_id = path_id(request, "station_id", "Station")
    async with pool(request).acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        station = await queries.station_get(conn, station_id) if station_id <= 2**31 - 1 else None
        if station is None:
            raise NotFound(f"Station with id {station_id} not found")
        detail = StationDetail(
            **{field: getattr(station, field) for field in Station.__struct_fields__},
            suggestions=await queries.suggestion_list_by_station(conn, station_id),
            open_tasks=await queries.task_list_by_station_open(conn, station_id),
            finished_tasks=await queries.task_list_by_station_finished(conn, station_id, FINISHED_SHOWN),
        )
    return MsgspecResponse(detail)


@endpoints.get(
    "/stations/{station_id:id}/history",
    "Bikes moved out of and into a station per day",
    StationHistory,
    roles=_READERS,
    description=(
        "Completed tasks only, per day in the system's time zone (GBFS `system_information`), UTC before "
        "any import named one; the last `days` days, days without a move left out."
    ),
)
async def station_history(request: Request, query: StationHistoryQuery) -> Response:
    station_id = path_id(request, "station_id", "Station")
    async with pool(request).acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        if station_id > 2**31 - 1 or await queries.station_get(conn, station_id) is None:
            raise NotFound(f"Station with id {station_id} not found")
        system = await queries.station_system_get(conn)
        days = await queries.station_history(conn, station_id, query.days)
    timezone = "UTC" if system is None or system["timezone"] is None else system["timezone"]
    return MsgspecResponse(StationHistory(station_id=station_id, timezone=timezone, days=days))
