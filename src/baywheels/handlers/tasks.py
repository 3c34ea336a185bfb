from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..errors import Conflict, NotFound
from ..metrics import TRANSITIONS
from ..models import (
    ApproveManyRequest,
    ApproveManyResult,
    ApproveRequest,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    HolderRequest,
    OperatorRequest,
    ReleaseRequest,
    Task,
    TaskPage,
)
from ..requests import body, optional_body, path_id, pool, query
from ..responses import MsgspecResponse
from ..state import app_state


async def approve(request: Request) -> Response:
    suggestion_id = (await body(request, ApproveRequest)).suggestion_id
    db = pool(request)
    created = await queries.task_approve_many(db, [suggestion_id])
    if created:
        TRANSITIONS.labels("approved").inc()
        return MsgspecResponse(created[0])
    # Approved before, or by a racing request whose commit our DELETE waited for: answer with that task.
    existing = await queries.task_list_by_suggestions(db, [suggestion_id])
    if existing:
        return MsgspecResponse(existing[0])
    raise NotFound(f"Suggestion with id {suggestion_id} not found")


async def approve_many(request: Request) -> Response:
    ids = list(dict.fromkeys((await body(request, ApproveManyRequest)).suggestion_ids))
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


async def _refused(
    request: Request, task_id: int, action: str, worker_id: str | None, lease_id: UUID | None
) -> Conflict:
    """Why a holder's conditional UPDATE matched no row: 404 for no such task, else a 409 saying why."""
    current = await queries.task_get(pool(request), task_id)
    if current is None:
        raise NotFound(f"Task with id {task_id} not found")
    if current.status != "assigned":
        return Conflict(f"Cannot {action} task {task_id}: it is '{current.status}', not 'assigned'")
    if worker_id is not None and current.worker_id != worker_id:
        return Conflict(f"Cannot {action} task {task_id}: it is held by another worker")
    if lease_id is not None and current.lease_id != lease_id:
        return Conflict(
            f"Cannot {action} task {task_id}: lease {lease_id} has expired and the task was dispatched again"
        )
    return Conflict(f"Cannot {action} task {task_id} in its current state")


def _is_holder(task: Task, worker_id: str | None, lease_id: UUID | None) -> bool:
    return worker_id is not None and task.worker_id == worker_id and lease_id in (None, task.lease_id)


def _done(task: Task, event: str) -> Response:
    TRANSITIONS.labels(event).inc()
    return MsgspecResponse(task)


async def complete(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    req = await optional_body(request, CompleteRequest)
    task = await queries.task_complete(pool(request), task_id, req.worker_id, req.lease_id)
    if task is not None:
        return _done(task, "completed")
    current = await queries.task_get(pool(request), task_id)
    if (
        current is not None
        and current.status == "completed"
        and _is_holder(current, req.worker_id, req.lease_id)
    ):
        return MsgspecResponse(current)  # the holder retrying a completion that already went through
    raise await _refused(request, task_id, "complete", req.worker_id, req.lease_id)


async def heartbeat(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    req = await body(request, HeartbeatRequest)
    task = await queries.task_heartbeat(
        pool(request), task_id, req.worker_id, req.lease_id, req.lease_seconds
    )
    if task is not None:
        return MsgspecResponse(task)
    raise await _refused(request, task_id, "extend the lease of", req.worker_id, req.lease_id)


async def pickup(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    req = await body(request, HolderRequest)
    task = await queries.task_pickup(pool(request), task_id, req.worker_id, req.lease_id)
    if task is not None:
        return _done(task, "picked_up")
    current = await queries.task_get(pool(request), task_id)
    if (
        current is not None
        and current.status == "assigned"
        and current.picked_up_at is not None
        and _is_holder(current, req.worker_id, req.lease_id)
    ):
        return MsgspecResponse(current)  # already recorded: a retry
    raise await _refused(request, task_id, "pick up", req.worker_id, req.lease_id)


async def release(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    req = await body(request, ReleaseRequest)
    task = await queries.task_release(pool(request), task_id, req.worker_id, req.lease_id, req.reason)
    if task is not None:
        return _done(task, "released")
    raise await _refused(request, task_id, "release", req.worker_id, req.lease_id)


async def fail(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    req = await body(request, FailRequest)
    settings = app_state(request).settings
    task = await queries.task_fail(
        pool(request),
        task_id,
        req.worker_id,
        req.lease_id,
        req.error,
        settings.task_retry_backoff_seconds,
        settings.task_max_attempts,
    )
    if task is not None:
        return _done(task, "failed" if task.status == "failed" else "attempt_failed")
    raise await _refused(request, task_id, "fail", req.worker_id, req.lease_id)


async def cancel(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    req = await optional_body(request, OperatorRequest)
    task = await queries.task_cancel(pool(request), task_id, req.reason)
    if task is not None:
        return _done(task, "canceled")
    current = await queries.task_get(pool(request), task_id)
    if current is None:
        raise NotFound(f"Task with id {task_id} not found")
    raise Conflict(f"Cannot cancel task {task_id}: it is already '{current.status}'")


async def retry(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    req = await optional_body(request, OperatorRequest)
    task = await queries.task_retry(pool(request), task_id, req.reason)
    if task is not None:
        return _done(task, "retried")
    current = await queries.task_get(pool(request), task_id)
    if current is None:
        raise NotFound(f"Task with id {task_id} not found")
    raise Conflict(f"Cannot retry task {task_id}: it is '{current.status}', not failed, canceled or stalled")


async def get_task(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    task = await queries.task_get(pool(request), task_id)
    if task is None:
        raise NotFound(f"Task with id {task_id} not found")
    return MsgspecResponse(task)


async def list_tasks(request: Request) -> Response:
    page = query(request, TaskPage)
    tasks = await queries.task_list(pool(request), page.status, page.worker_id, page.after_id, page.limit)
    return MsgspecResponse(tasks)


async def task_events(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    db = pool(request)
    events = await queries.task_event_list(db, task_id)
    if not events and await queries.task_get(db, task_id) is None:
        raise NotFound(f"Task with id {task_id} not found")
    return MsgspecResponse(events)
