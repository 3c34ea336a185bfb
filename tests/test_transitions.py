"""The one pure function that answers every state change from its single result: the task, 404, or a 409
that says why, and the holder's repeats that are answered with the task as it is."""

from datetime import UTC, datetime
from typing import Any, get_args
from uuid import UUID

import msgspec
import pytest

from baywheels.errors import Conflict, NotFound
from baywheels.models import Task
from baywheels.queries import TaskChange
from baywheels.transitions import Action, decide

LEASE, OLD_LEASE = UUID(int=2), UUID(int=1)
NOW = datetime(2030, 1, 1, tzinfo=UTC)
HELD = Task(
    id=7,
    suggestion_id=1,
    from_station_id=1,
    to_station_id=2,
    qty=3,
    reason="r",
    priority=0,
    status="assigned",
    worker_id="w1",
    created_at=NOW,
    assigned_at=NOW,
    completed_at=None,
    attempts=0,
    lease_id=LEASE,
    lease_expires_at=NOW,
    picked_up_at=None,
    last_error=None,
    not_before=None,
    available_at=NOW,
    stale_reason=None,
)


def task(**fields: Any) -> Task:
    return msgspec.structs.replace(HELD, **fields)


@pytest.mark.parametrize("action", get_args(Action))
def test_no_row_is_404_and_a_change_is_the_task(action: Action) -> None:
    with pytest.raises(NotFound, match=r"^Task with id 7 not found$"):
        decide(action, 7, None, "w1", LEASE)
    result = TaskChange(task(status="ready"), changed=True)
    assert decide(action, 7, result, "w1", LEASE) is result


@pytest.mark.parametrize(
    ("action", "current", "worker_id", "lease_id"),
    [
        ("complete", task(status="completed", completed_at=NOW), "w1", LEASE),
        ("complete", task(status="completed", completed_at=NOW), "w1", None),
        ("pickup", task(picked_up_at=NOW), "w1", LEASE),
        ("pickup", task(picked_up_at=NOW), "w1", None),
    ],
)
def test_the_holder_repeating_a_change_gets_the_task(
    action: Action, current: Task, worker_id: str, lease_id: UUID | None
) -> None:
    result = TaskChange(current, changed=False)
    assert decide(action, 7, result, worker_id, lease_id) is result


@pytest.mark.parametrize(
    ("action", "current", "worker_id", "lease_id", "detail"),
    [
        (
            "complete",
            task(status="ready"),
            None,
            None,
            "Cannot complete task 7: it is 'ready', not 'assigned'",
        ),
        (
            "complete",
            task(status="completed"),
            None,
            None,
            "Cannot complete task 7: it is 'completed', not 'assigned'",
        ),
        (
            "complete",
            task(status="completed"),
            "w2",
            None,
            "Cannot complete task 7: it is 'completed', not 'assigned'",
        ),
        (
            "complete",
            task(status="completed"),
            "w1",
            OLD_LEASE,
            "Cannot complete task 7: it is 'completed', not 'assigned'",
        ),
        ("heartbeat", HELD, "w2", None, "Cannot extend the lease of task 7: it is held by another worker"),
        (
            "fail",
            HELD,
            "w1",
            OLD_LEASE,
            f"Cannot fail task 7: lease {OLD_LEASE} has expired and the task was dispatched again",
        ),
        ("pickup", task(picked_up_at=NOW), "w2", None, "Cannot pick up task 7: it is held by another worker"),
        (
            "release",
            task(status="canceled"),
            "w1",
            LEASE,
            "Cannot release task 7: it is 'canceled', not 'assigned'",
        ),
        ("complete", HELD, None, None, "Cannot complete task 7 in its current state"),
        ("cancel", task(status="completed"), None, None, "Cannot cancel task 7: it is already 'completed'"),
        (
            "retry",
            task(status="ready"),
            None,
            None,
            "Cannot retry task 7: it is 'ready', not failed, canceled or stalled",
        ),
    ],
)
def test_a_refusal_is_409_naming_why(
    action: Action, current: Task, worker_id: str | None, lease_id: UUID | None, detail: str
) -> None:
    with pytest.raises(Conflict) as refused:
        decide(action, 7, TaskChange(current, changed=False), worker_id, lease_id)
    assert refused.value.detail == detail
