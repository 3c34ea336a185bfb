from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..errors import NotFound
from ..http import body, pool
from ..metrics import DISPATCHES
from ..models import DispatchRequest
from ..responses import JSONResponse


async def dispatch_next(request: Request) -> Response:
    worker_id = (await body(request, DispatchRequest)).worker_id
    task = await queries.task_dispatch(pool(request), worker_id)
    if task is None:
        DISPATCHES.labels("empty").inc()
        raise NotFound("No available tasks with status 'ready'")
    DISPATCHES.labels("assigned").inc()
    return JSONResponse(task)
