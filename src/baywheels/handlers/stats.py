"""The overview the console shows: open work, throughput, waits, and what needs a person."""

from starlette.requests import Request
from starlette.responses import Response

from .. import overview
from ..endpoints import Endpoints
from ..models import Stats
from ..requests import pool
from ..responses import MsgspecResponse

endpoints = Endpoints("stats")


@endpoints.get(
    "/stats",
    "The overview: tasks by state, the ready queue, throughput per hour, waits, tasks needing a person",
    Stats,
    roles=("viewer", "operator", "admin"),
    description=(
        "From one snapshot. `counts` are exact for the open states and the dead letters (`failed`); "
        "finished tasks are counted per hour over the last 24 hours (`hourly`, the current hour last, and "
        "`last_24h`). Durations in seconds: ready to assigned (a task's latest assignment) and assigned to "
        "completed, p50 and p90 over the last hour and day. `attention`: the first 20 tasks that need a "
        "person, stalled first, newest first. The same figures are on /metrics."
    ),
)
async def get_stats(request: Request) -> Response:
    return MsgspecResponse(await overview.read(pool(request)))
