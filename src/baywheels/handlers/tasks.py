"""Tasks: approval, the holder's calls (each one statement, answered by transitions.answer) and reads."""

from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..endpoints import Endpoints
from ..errors import NotFound
from ..metrics import TRANSITIONS
from ..models import (
    ApproveManyRequest,
    ApproveManyResult,
    ApproveRequest,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    HolderRequest,
    ReleaseRequest,
    Task,
    TaskEvent,
    TaskPage,
)
from ..requests import path_id, pool
from ..responses import MsgspecResponse
from ..state import app_state
from ..transitions import answer

endpoints = Endpoints("tasks")


@endpoints.post(
    "/task/approve",
    "Approve a suggestion into a ready task",
    Task,
    errors=(404,),
    description="Approving an already approved suggestion returns its task again.",
)
async def approve(request: Request, body: ApproveRequest) -> Response:
    db = pool(request)
    created = await queries.task_approve_many(db, [body.suggestion_id])
    if created:
        TRANSITIONS.labels("approved").inc()
        return MsgspecResponse(created[0])
    # Approved before, or by a racing request whose commit our DELETE waited for: answer with that task.
    existing = await queries.task_list_by_suggestions(db, [body.suggestion_id])
    if existing:
        return MsgspecResponse(existing[0])
    raise NotFound(f"Suggestion with id {body.suggestion_id} not found")


@endpoints.post("/tasks/approve", "Approve several suggestions in one transaction", ApproveManyResult)
async def approve_many(request: Request, body: ApproveManyRequest) -> Response:
    ids = list(dict.fromkeys(body.suggestion_ids))
    async with pool(request).acquire() as conn, conn.transaction():
        created = await queries.task_approve_many(conn, ids)
        tasks = created
        if len(created) < len(ids):
            tasks = await queries.task_list_by_suggestions(conn, ids)
    TRANSITIONS.labels("approved").inc(len(created))
    by_suggestion = {task.suggestion_id: task for task in tasks}
    result = ApproveManyResult(
        tasks=[by_suggestion[i] for i in ids if i in by_suggestion],
        not_found=[i for i in ids if i not in by_suggestion],
    )
    return MsgspecResponse(result)


@endpoints.post(
    "/task/{task_id:id}/complete",
    "Complete an assigned task",
    Task,
    errors=(409,),
    body_required=False,
    description=(
        "With `worker_id`, only the holder may complete the task, and the holder repeating the call "
        "gets the completed task again."
    ),
)
async def complete(request: Request, body: CompleteRequest) -> Response:
    task_id = path_id(request, "task_id", "Task")
    result = await queries.task_complete(pool(request), task_id, body.worker_id, body.lease_id)
    return answer("complete", task_id, result, body.worker_id, body.lease_id)


@endpoints.post("/task/{task_id:id}/heartbeat", "Extend the holder's lease", Task, errors=(409,))
async def heartbeat(request: Request, body: HeartbeatRequest) -> Response:
    task_id = path_id(request, "task_id", "Task")
    result = await queries.task_heartbeat(
        pool(request), task_id, body.worker_id, body.lease_id, body.lease_seconds
    )
    return answer("heartbeat", task_id, result, body.worker_id, body.lease_id)


@endpoints.post(
    "/task/{task_id:id}/pickup",
    "Record that the bikes are on the van",
    Task,
    errors=(409,),
    description="After pickup an expired lease makes the task `stalled` (for an operator), not `ready`.",
)
async def pickup(request: Request, body: HolderRequest) -> Response:
    task_id = path_id(request, "task_id", "Task")
    result = await queries.task_pickup(pool(request), task_id, body.worker_id, body.lease_id)
    return answer("pickup", task_id, result, body.worker_id, body.lease_id)


@endpoints.post("/task/{task_id:id}/release", "Hand a task back to ready now", Task, errors=(409,))
async def release(request: Request, body: ReleaseRequest) -> Response:
    task_id = path_id(request, "task_id", "Task")
    result = await queries.task_release(pool(request), task_id, body.worker_id, body.lease_id, body.reason)
    return answer("release", task_id, result, body.worker_id, body.lease_id)


@endpoints.post(
    "/task/{task_id:id}/fail",
    "Report a failed attempt",
    Task,
    errors=(409,),
    description=(
        "The task is ready again after an exponential backoff (`available_at`), or `failed` (the dead "
        "letter) after TASK_MAX_ATTEMPTS attempts."
    ),
)
async def fail(request: Request, body: FailRequest) -> Response:
    task_id = path_id(request, "task_id", "Task")
    settings = app_state(request).settings
    result = await queries.task_fail(
        pool(request),
        task_id,
        body.worker_id,
        body.lease_id,
        body.error,
        settings.task_retry_backoff_seconds,
        settings.task_max_attempts,
    )
    return answer("fail", task_id, result, body.worker_id, body.lease_id)


@endpoints.get("/task/{task_id:id}", "Get one task", Task)
async def get_task(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    task = await queries.task_get(pool(request), task_id)
    if task is None:
        raise NotFound(f"Task with id {task_id} not found")
    return MsgspecResponse(task)


@endpoints.get("/task/{task_id:id}/events", "A task's history, oldest first", list[TaskEvent])
async def task_events(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    db = pool(request)
    events = await queries.task_event_list(db, task_id)
    if not events and await queries.task_get(db, task_id) is None:
        raise NotFound(f"Task with id {task_id} not found")
    return MsgspecResponse(events)


@endpoints.get("/tasks", "List tasks, filtered by status and worker", list[Task])
async def list_tasks(request: Request, query: TaskPage) -> Response:
    tasks = await queries.task_list(pool(request), query.status, query.worker_id, query.after_id, query.limit)
    return MsgspecResponse(tasks)
