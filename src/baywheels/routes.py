"""The route table: every endpoint, its handler and what it takes and returns. Starlette's routes and the
OpenAPI document are both built from it, so the docs cannot drift from the code."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .handlers import dispatch, health, suggestions, tasks
from .models import (
    IDEMPOTENCY_KEY,
    ApproveManyRequest,
    ApproveManyResult,
    ApproveRequest,
    CompleteRequest,
    DispatchRequest,
    FailRequest,
    Health,
    HeartbeatRequest,
    HolderRequest,
    IngestResult,
    Message,
    OperatorRequest,
    ReleaseRequest,
    Suggestion,
    SuggestionBatch,
    SuggestionPage,
    Task,
    TaskEvent,
    TaskPage,
)

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: Any = None
    body_required: bool = True
    query: type | None = None
    response: Any = None
    status: int = 200
    errors: tuple[int, ...] = ()
    description: str = ""
    headers: tuple[tuple[str, str, str], ...] = ()  # request headers it reads: (name, pattern, description)

    def route(self) -> Route:
        return Route(self.path, self.handler, methods=[self.method], name=self.handler.__name__)


ENDPOINTS = (
    Endpoint("GET", "/", health.root, "Service banner", "health", response=Message),
    Endpoint("GET", "/healthz", health.healthz, "Liveness: the process answers", "health", response=Health),
    Endpoint(
        "GET",
        "/readyz",
        health.readyz,
        "Readiness: the database answers",
        "health",
        response=Health,
        errors=(503,),
    ),
    Endpoint(
        "GET",
        "/suggestions",
        suggestions.list_suggestions,
        "List pending suggestions, oldest first",
        "suggestions",
        query=SuggestionPage,
        response=list[Suggestion],
        errors=(400,),
    ),
    Endpoint(
        "POST",
        "/suggestions",
        suggestions.ingest,
        "Ingest a batch of suggestions from the ML engine",
        "suggestions",
        body=SuggestionBatch,
        response=IngestResult,
        status=201,
        errors=(400, 413),
        description=(
            "Per station pair: a pending suggestion is updated in place, a pair with an open task is skipped "
            "(null id, counted as a duplicate), and within the batch the last item for a pair wins."
        ),
    ),
    Endpoint(
        "POST",
        "/task/approve",
        tasks.approve,
        "Approve a suggestion into a ready task",
        "tasks",
        body=ApproveRequest,
        response=Task,
        errors=(400, 404),
        description="Approving an already approved suggestion returns its task again.",
    ),
    Endpoint(
        "POST",
        "/tasks/approve",
        tasks.approve_many,
        "Approve several suggestions in one transaction",
        "tasks",
        body=ApproveManyRequest,
        response=ApproveManyResult,
        errors=(400,),
    ),
    Endpoint(
        "POST",
        "/dispatch/next",
        dispatch.dispatch_next,
        "Assign the next ready task to a worker",
        "dispatch",
        body=DispatchRequest,
        response=Task,
        errors=(400, 404),
        description=(
            "Highest priority first, then oldest, then lowest id; 404 when no task is ready. With "
            "`wait_seconds` the request waits up to that long and answers the moment a task is ready. The "
            "task is leased for `lease_seconds` (default TASK_LEASE_SECONDS): heartbeat to keep it. An "
            "`Idempotency-Key` header makes a retry by the same worker return the task it already holds."
        ),
        headers=(
            (
                "Idempotency-Key",
                IDEMPOTENCY_KEY,
                "1 to 128 printable ASCII characters, no spaces. A retry by the same worker with the same "
                "key gets the task it holds under that key, for as long as it holds it, not a second one.",
            ),
        ),
    ),
    Endpoint(
        "POST",
        "/task/{task_id:int}/complete",
        tasks.complete,
        "Complete an assigned task",
        "tasks",
        body=CompleteRequest,
        body_required=False,
        response=Task,
        errors=(400, 404, 409),
        description=(
            "With `worker_id`, only the holder may complete the task, and the holder repeating the call "
            "gets the completed task again."
        ),
    ),
    Endpoint(
        "POST",
        "/task/{task_id:int}/heartbeat",
        tasks.heartbeat,
        "Extend the holder's lease",
        "tasks",
        body=HeartbeatRequest,
        response=Task,
        errors=(400, 404, 409),
    ),
    Endpoint(
        "POST",
        "/task/{task_id:int}/pickup",
        tasks.pickup,
        "Record that the bikes are on the van",
        "tasks",
        body=HolderRequest,
        response=Task,
        errors=(400, 404, 409),
        description="After pickup an expired lease makes the task `stalled` (for an operator), not `ready`.",
    ),
    Endpoint(
        "POST",
        "/task/{task_id:int}/release",
        tasks.release,
        "Hand a task back to ready now",
        "tasks",
        body=ReleaseRequest,
        response=Task,
        errors=(400, 404, 409),
    ),
    Endpoint(
        "POST",
        "/task/{task_id:int}/fail",
        tasks.fail,
        "Report a failed attempt",
        "tasks",
        body=FailRequest,
        response=Task,
        errors=(400, 404, 409),
        description=(
            "The task is ready again after an exponential backoff (`available_at`), or `failed` (the dead "
            "letter) after TASK_MAX_ATTEMPTS attempts."
        ),
    ),
    Endpoint(
        "POST",
        "/task/{task_id:int}/cancel",
        tasks.cancel,
        "Operator: cancel an unfinished task",
        "operator",
        body=OperatorRequest,
        body_required=False,
        response=Task,
        errors=(400, 404, 409),
    ),
    Endpoint(
        "POST",
        "/task/{task_id:int}/retry",
        tasks.retry,
        "Operator: put a failed, canceled or stalled task back",
        "operator",
        body=OperatorRequest,
        body_required=False,
        response=Task,
        errors=(400, 404, 409),
    ),
    Endpoint(
        "GET", "/task/{task_id:int}", tasks.get_task, "Get one task", "tasks", response=Task, errors=(404,)
    ),
    Endpoint(
        "GET",
        "/task/{task_id:int}/events",
        tasks.task_events,
        "A task's history, oldest first",
        "tasks",
        response=list[TaskEvent],
        errors=(404,),
    ),
    Endpoint(
        "GET",
        "/tasks",
        tasks.list_tasks,
        "List tasks, filtered by status and worker",
        "tasks",
        query=TaskPage,
        response=list[Task],
        errors=(400,),
    ),
)
