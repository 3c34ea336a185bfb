"""Operators' actions on a task. Grouped here because they will share a role; the console's actions join
them."""

from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..auth import principal
from ..endpoints import Endpoints
from ..models import OperatorRequest, Task
from ..requests import path_id, pool
from ..transitions import answer

endpoints = Endpoints("operator")


@endpoints.post(
    "/task/{task_id:id}/cancel",
    "Operator: cancel an unfinished task",
    Task,
    errors=(409,),
    body_required=False,
    roles=("operator", "admin"),
)
async def cancel(request: Request, body: OperatorRequest) -> Response:
    task_id = path_id(request, "task_id", "Task")
    actor = principal(request).actor
    return answer(
        "cancel", task_id, await queries.task_cancel(pool(request), task_id, body.reason, actor=actor)
    )


@endpoints.post(
    "/task/{task_id:id}/retry",
    "Operator: put a failed, canceled or stalled task back",
    Task,
    errors=(409,),
    body_required=False,
    roles=("operator", "admin"),
)
async def retry(request: Request, body: OperatorRequest) -> Response:
    task_id = path_id(request, "task_id", "Task")
    actor = principal(request).actor
    return answer(
        "retry", task_id, await queries.task_retry(pool(request), task_id, body.reason, actor=actor)
    )
