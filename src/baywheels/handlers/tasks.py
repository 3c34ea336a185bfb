from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..errors import Conflict, NotFound
from ..http import body, optional_body, path_id, pool, query
from ..metrics import TRANSITIONS
from ..models import ApproveManyRequest, ApproveManyResult, ApproveRequest, CompleteRequest, TaskPage
from ..responses import JSONResponse


async def approve(request: Request) -> Response:
    suggestion_id = (await body(request, ApproveRequest)).suggestion_id
    db = pool(request)
    created = await queries.task_approve_many(db, [suggestion_id])
    if created:
        TRANSITIONS.labels("approved").inc()
        return JSONResponse(created[0])
    # Approved before, or by a racing request whose commit our DELETE waited for: answer with that task.
    existing = await queries.task_list_by_suggestions(db, [suggestion_id])
    if existing:
        return JSONResponse(existing[0])
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
    return JSONResponse(result)


async def complete(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    worker_id = (await optional_body(request, CompleteRequest)).worker_id
    db = pool(request)
    task = await queries.task_complete(db, task_id, worker_id)
    if task is not None:
        TRANSITIONS.labels("completed").inc()
        return JSONResponse(task)
    current = await queries.task_get(db, task_id)
    if current is None:
        raise NotFound(f"Task with id {task_id} not found")
    if current.status == "completed" and worker_id is not None and current.worker_id == worker_id:
        return JSONResponse(current)  # the holder retrying a completion that already went through
    if current.status == "assigned":
        raise Conflict(f"Task {task_id} is assigned to another worker")
    raise Conflict(f"Task {task_id} is '{current.status}', not 'assigned'")


async def get_task(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    task = await queries.task_get(pool(request), task_id)
    if task is None:
        raise NotFound(f"Task with id {task_id} not found")
    return JSONResponse(task)


async def list_tasks(request: Request) -> Response:
    page = query(request, TaskPage)
    tasks = await queries.task_list(pool(request), page.status, page.worker_id, page.after_id, page.limit)
    return JSONResponse(tasks)


async def task_events(request: Request) -> Response:
    task_id = path_id(request, "task_id", "Task")
    db = pool(request)
    events = await queries.task_event_list(db, task_id)
    if not events and await queries.task_get(db, task_id) is None:
        raise NotFound(f"Task with id {task_id} not found")
    return JSONResponse(events)
