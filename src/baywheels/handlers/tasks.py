"""Tasks: approval, the holder's calls (each one statement, answered by transitions.answer) and reads. A
worker's key acts for its own worker_id only, and sees only its own tasks: another's answers 404."""

from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..auth import acting_worker, bound_worker, principal
from ..endpoints import Endpoints
from ..errors import Forbidden, NotFound
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
    Role,
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
    roles=("operator", "admin"),
)
async def approve(request: Request, body: ApproveRequest) -> Response:
    db = pool(request)
    created = await queries.task_approve_many(db, [body.suggestion_id], actor=principal(request).actor)
    if created:
        TRANSITIONS.labels("approved").inc()
        return MsgspecResponse(created[0])
    # Approved before, or by a racing request whose commit our DELETE waited for: answer with that task.
    existing = await queries.task_list_by_suggestions(db, [body.suggestion_id])
    if existing:
        return MsgspecResponse(existing[0])
    raise NotFound(f"Suggestion with id {body.suggestion_id} not found")


@endpoints.post(
    "/tasks/approve",
    "Approve several suggestions in one transaction",
    ApproveManyResult,
    roles=("operator", "admin"),
)
async def approve_many(request: Request, body: ApproveManyRequest) -> Response:
    ids = list(dict.fromkeys(body.suggestion_ids))
    async with pool(request).acquire() as conn, conn.transaction():
        created = await queries.task_approve_many(conn, ids, actor=principal(request).actor)
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
        "With `worker_id` (a worker's key implies its own), only the holder may complete the task, and the "
        "holder repeating the call gets the completed task again."
    ),
    roles=("worker", "admin"),
)
async def complete(request: Request, body: CompleteRequest) -> Response:
    task_id = path_id(request, "task_id", "Task")
    bound = bound_worker(request)
    worker_id = body.worker_id if bound is None else acting_worker(request, body.worker_id)
    actor = principal(request).actor
    result = await queries.task_complete(pool(request), task_id, worker_id, body.lease_id, actor=actor)
    return answer("complete", task_id, result, worker_id, body.lease_id, bound)


@endpoints.post(
    "/task/{task_id:id}/heartbeat",
    "Extend the holder's lease",
    Task,
    errors=(409,),
    roles=("worker", "admin"),
)
async def heartbeat(request: Request, body: HeartbeatRequest) -> Response:
    task_id = path_id(request, "task_id", "Task")
    worker_id = acting_worker(request, body.worker_id)
    result = await queries.task_heartbeat(
        pool(request), task_id, worker_id, body.lease_id, body.lease_seconds
    )
    return answer("heartbeat", task_id, result, worker_id, body.lease_id, bound_worker(request))


@endpoints.post(
    "/task/{task_id:id}/pickup",
    "Record that the bikes are on the van",
    Task,
    errors=(409,),
    description="After pickup an expired lease makes the task `stalled` (for an operator), not `ready`.",
    roles=("worker", "admin"),
)
async def pickup(request: Request, body: HolderRequest) -> Response:
    task_id = path_id(request, "task_id", "Task")
    worker_id = acting_worker(request, body.worker_id)
    actor = principal(request).actor
    result = await queries.task_pickup(pool(request), task_id, worker_id, body.lease_id, actor=actor)
    return answer("pickup", task_id, result, worker_id, body.lease_id, bound_worker(request))


@endpoints.post(
    "/task/{task_id:id}/release",
    "Hand a task back to ready now",
    Task,
    errors=(409,),
    roles=("worker", "admin"),
)
async def release(request: Request, body: ReleaseRequest) -> Response:
    task_id = path_id(request, "task_id", "Task")
    worker_id = acting_worker(request, body.worker_id)
    actor = principal(request).actor
    result = await queries.task_release(
        pool(request), task_id, worker_id, body.lease_id, body.reason, actor=actor
    )
    return answer("release", task_id, result, worker_id, body.lease_id, bound_worker(request))


@endpoints.post(
    "/task/{task_id:id}/fail",
    "Report a failed attempt",
    Task,
    errors=(409,),
    description=(
        "The task is ready again after an exponential backoff (`available_at`), or `failed` (the dead "
        "letter) after TASK_MAX_ATTEMPTS attempts."
    ),
    roles=("worker", "admin"),
)
async def fail(request: Request, body: FailRequest) -> Response:
    task_id = path_id(request, "task_id", "Task")
    settings = app_state(request).settings
    worker_id = acting_worker(request, body.worker_id)
    result = await queries.task_fail(
        pool(request),
        task_id,
        worker_id,
        body.lease_id,
        body.error,
        settings.task_retry_backoff_seconds,
        settings.task_max_attempts,
        actor=principal(request).actor,
    )
    return answer("fail", task_id, result, worker_id, body.lease_id, bound_worker(request))


# Who may read tasks: a worker (its own only), and the people who watch or run the fleet.
READERS: tuple[Role, ...] = ("worker", "viewer", "operator", "admin")


async def _visible_task(request: Request, task_id: int) -> Task:
    """The task, if the caller may see it: a worker key sees only its own, and another's is a 404 exactly as a
    task that does not exist, so ids cannot be probed."""
    task = await queries.task_get(pool(request), task_id)
    bound = bound_worker(request)
    if task is None or (bound is not None and task.worker_id != bound):
        raise NotFound(f"Task with id {task_id} not found")
    return task


@endpoints.get("/task/{task_id:id}", "Get one task", Task, roles=READERS)
async def get_task(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    return MsgspecResponse(await _visible_task(request, task_id))


@endpoints.get("/task/{task_id:id}/events", "A task's history, oldest first", list[TaskEvent], roles=READERS)
async def task_events(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    db = pool(request)
    bound = bound_worker(request)
    if bound is not None:
        await _visible_task(request, task_id)
    events = await queries.task_event_list(db, task_id)
    if not events and bound is None and await queries.task_get(db, task_id) is None:
        raise NotFound(f"Task with id {task_id} not found")
    return MsgspecResponse(events)


@endpoints.get(
    "/tasks",
    "List tasks, filtered by status and worker",
    list[Task],
    roles=READERS,
    description="A worker's key lists its own tasks only (naming another `worker_id` is a 403).",
)
async def list_tasks(request: Request, query: TaskPage) -> Response:
    worker_id = query.worker_id
    bound = bound_worker(request)
    if bound is not None:
        if worker_id is not None and worker_id != bound:
            raise Forbidden(f"This key belongs to worker '{bound}': it lists only that worker's tasks")
        worker_id = bound
    tasks = await queries.task_list(pool(request), query.status, worker_id, query.after_id, query.limit)
    return MsgspecResponse(tasks)
