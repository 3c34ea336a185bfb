"""Workers and their vans: operators register them (name, capacity, depot, on shift); people who watch the
fleet read them; a worker's key may read its own. A worker that was never registered still dispatches, with
its capacity unknown."""

from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..auth import bound_worker
from ..endpoints import Endpoints
from ..errors import NotFound
from ..models import Role, StatsWindow, Worker, WorkerIn, WorkerPage, WorkerStats
from ..requests import pool
from ..responses import MsgspecResponse

endpoints = Endpoints("workers")


def _worker_id(request: Request) -> str:
    """The path's worker id, held to what a body's `worker_id` may be (1..64 characters, no NUL)."""
    worker_id: str = request.path_params["worker_id"]
    if not 1 <= len(worker_id) <= 64 or "\x00" in worker_id:
        raise NotFound(f"Worker {worker_id[:64]!r} not found")
    return worker_id


def _readable(request: Request, worker_id: str) -> None:
    """A worker's key reads only its own worker: another answers 404, as one that does not exist."""
    bound = bound_worker(request)
    if bound is not None and bound != worker_id:
        raise NotFound(f"Worker {worker_id!r} not found")


@endpoints.put(
    "/workers/{worker_id}",
    "Register a worker or update its registration",
    Worker,
    description=(
        "`capacity` is in bikes: a van given a position at dispatch gets only tasks whose `qty` fits in "
        "capacity - load. An off-shift worker gets no task (its dispatch answers 404 saying so). Its last "
        "position is kept."
    ),
    roles=("operator", "admin"),
)
async def put_worker(request: Request, body: WorkerIn) -> Response:
    worker_id = _worker_id(request)
    db = pool(request)
    await queries.worker_put(db, worker_id, body.name, body.capacity, body.depot_station_id, body.on_shift)
    worker = await queries.worker_get(db, worker_id)
    assert worker is not None
    return MsgspecResponse(worker)


_READERS: tuple[Role, ...] = ("worker", "viewer", "operator", "admin")


@endpoints.get(
    "/workers",
    "List registered workers",
    list[Worker],
    roles=("viewer", "operator", "admin"),
    description="In worker id order, a page at a time: the next page is `after` the last worker id.",
)
async def list_workers(request: Request, query: WorkerPage) -> Response:
    return MsgspecResponse(await queries.worker_list(pool(request), query.after, query.limit))


@endpoints.get(
    "/workers/{worker_id}",
    "Get one registered worker",
    Worker,
    roles=_READERS,
    description="A worker's key reads its own worker only.",
)
async def get_worker(request: Request) -> Response:
    worker_id = _worker_id(request)
    _readable(request, worker_id)
    worker = await queries.worker_get(pool(request), worker_id)
    if worker is None:
        raise NotFound(f"Worker {worker_id!r} not found (not registered)")
    return MsgspecResponse(worker)


@endpoints.get(
    "/workers/{worker_id}/stats",
    "What a worker did in the last hours",
    WorkerStats,
    roles=_READERS,
    description=(
        "Tasks completed in the window (`hours`, default 24) and per hour, the median minutes from "
        "dispatch to completion, failed attempts, and leases that ran out in its hands. A worker's key "
        "reads its own."
    ),
)
async def worker_stats(request: Request, query: StatsWindow) -> Response:
    worker_id = _worker_id(request)
    _readable(request, worker_id)
    return MsgspecResponse(await queries.worker_stats(pool(request), worker_id, query.hours))
