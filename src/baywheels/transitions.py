"""What a state change's one result means for the caller: the task (200), no such task (404), or a refusal
(409) that names why. Every state-change statement returns the task with whether it changed it, or no row,
so this is decided from that result alone, without reading the task again."""

from typing import Literal
from uuid import UUID

from starlette.responses import Response

from .errors import Conflict, NotFound
from .metrics import TRANSITIONS
from .models import Task
from .queries import TaskChange
from .responses import MsgspecResponse

Action = Literal["complete", "heartbeat", "pickup", "release", "fail", "cancel", "retry"]

# How a refusal names the action ("Cannot extend the lease of task 7: ...").
_VERB: dict[Action, str] = {"heartbeat": "extend the lease of", "pickup": "pick up"}


def decide(
    action: Action,
    task_id: int,
    result: TaskChange | None,
    worker_id: str | None = None,
    lease_id: UUID | None = None,
    bound: str | None = None,
) -> TaskChange:
    """The result, if the caller gets the task; else raises NotFound or a Conflict that says why. The
    holder's repeats of a change that already went through (complete, pickup) get the task as it is. A
    caller bound to a worker (its key's) gets 404 for a task that is not that worker's, exactly as for one
    that does not exist, so ids cannot be probed."""
    # A change made by a bound caller was to its own task (its worker_id was in the statement's WHERE), even
    # where the change cleared it (release, fail).
    if result is None or (bound is not None and not result.changed and result.task.worker_id != bound):
        raise NotFound(f"Task with id {task_id} not found")
    task = result.task
    if result.changed or _repeat(action, task, worker_id, lease_id):
        return result
    raise Conflict(
        f"Cannot {_VERB.get(action, action)} task {task_id}{_why(action, task, worker_id, lease_id)}"
    )


def _is_holder(task: Task, worker_id: str | None, lease_id: UUID | None) -> bool:
    return worker_id is not None and task.worker_id == worker_id and lease_id in (None, task.lease_id)


def _repeat(action: Action, task: Task, worker_id: str | None, lease_id: UUID | None) -> bool:
    if action == "complete":
        return task.status == "completed" and _is_holder(task, worker_id, lease_id)
    if action == "pickup":
        return (
            task.status == "assigned"
            and task.picked_up_at is not None
            and _is_holder(task, worker_id, lease_id)
        )
    return False


def _why(action: Action, task: Task, worker_id: str | None, lease_id: UUID | None) -> str:
    if action == "cancel":
        return f": it is already '{task.status}'"
    if action == "retry":
        return f": it is '{task.status}', not failed, canceled or stalled"
    if task.status != "assigned":
        return f": it is '{task.status}', not 'assigned'"
    if worker_id is not None and task.worker_id != worker_id:
        return ": it is held by another worker"
    if lease_id is not None and task.lease_id != lease_id:
        return f": lease {lease_id} has expired and the task was dispatched again"
    return " in its current state"


# The event counted when a call changes a task (a heartbeat is not a transition).
_EVENT: dict[Action, str | None] = {
    "complete": "completed",
    "heartbeat": None,
    "pickup": "picked_up",
    "release": "released",
    "fail": "attempt_failed",
    "cancel": "canceled",
    "retry": "retried",
}


def answer(
    action: Action,
    task_id: int,
    result: TaskChange | None,
    worker_id: str | None = None,
    lease_id: UUID | None = None,
    bound: str | None = None,
) -> Response:
    """The response to a state change: ``decide``, counting the transition when this call made it."""
    done = decide(action, task_id, result, worker_id, lease_id, bound)
    event = _EVENT[action]
    if action == "fail" and done.task.status == "failed":
        event = "failed"  # the dead letter
    if done.changed and event is not None:
        TRANSITIONS.labels(event).inc()
    return MsgspecResponse(done.task)
