"""Request and response bodies. The docstring of each Struct becomes its description in the OpenAPI schema."""

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

Id = Annotated[int, Meta(ge=1, le=INT64_MAX, description="Database id.")]
StationId = Annotated[int, Meta(ge=1, le=INT32_MAX, description="Station id.")]
Qty = Annotated[int, Meta(ge=1, le=INT32_MAX, description="Number of bikes to move.")]
Priority = Annotated[
    int, Meta(ge=-INT32_MAX, le=INT32_MAX, description="Higher is dispatched first; 0 by default.")
]
Reason = Annotated[str, Meta(max_length=2000, description="Why the move is suggested.")]
WorkerId = Annotated[str, Meta(min_length=1, max_length=64, description="The field worker's id.")]
Limit = Annotated[int, Meta(ge=1, le=1000, description="Page size.")]
TaskStatus = Literal["ready", "assigned", "completed"]


class Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Message(Model, frozen=True):
    """Service banner."""

    message: str


class Error(Model, frozen=True):
    """Every error response."""

    detail: str


class Health(Model, frozen=True):
    """Liveness or readiness."""

    status: str


class SuggestionIn(Model, frozen=True):
    """One rebalancing suggestion posted by the ML engine."""

    from_station_id: StationId
    to_station_id: StationId
    qty: Qty
    reason: Reason
    priority: Priority = 0

    def __post_init__(self) -> None:
        if self.from_station_id == self.to_station_id:
            raise ValueError("from_station_id and to_station_id must differ")


SuggestionBatch = Annotated[list[SuggestionIn], Meta(min_length=1, max_length=10_000)]


class Suggestion(Model, frozen=True):
    """A pending suggestion, waiting for an operator's approval."""

    id: int
    from_station_id: int
    to_station_id: int
    qty: int
    reason: str
    priority: int
    created_at: datetime


class IngestResult(Model, frozen=True):
    """Outcome of a batch: `ids` is aligned with the input (null for an item that was skipped)."""

    created: int
    updated: int
    duplicates: int
    ids: list[int | None]


class ApproveRequest(Model, frozen=True):
    """Approve one suggestion into a task."""

    suggestion_id: Id


class ApproveManyRequest(Model, frozen=True):
    """Approve several suggestions in one transaction."""

    suggestion_ids: Annotated[list[Id], Meta(min_length=1, max_length=1000)]


class DispatchRequest(Model, frozen=True):
    """A worker asking for its next task."""

    worker_id: WorkerId


class CompleteRequest(Model, frozen=True):
    """Optional body of a completion: with `worker_id`, only that worker may complete the task."""

    worker_id: WorkerId | None = None


class Task(Model, frozen=True):
    """A rebalancing task and where it stands."""

    id: int
    suggestion_id: int
    from_station_id: int
    to_station_id: int
    qty: int
    reason: str
    priority: int
    status: TaskStatus
    worker_id: str | None
    created_at: datetime
    assigned_at: datetime | None
    completed_at: datetime | None


class ApproveManyResult(Model, frozen=True):
    """Tasks for the approved suggestions (new or approved before), and the ids that match no suggestion."""

    tasks: list[Task]
    not_found: list[int]


class TaskEvent(Model, frozen=True):
    """One transition in a task's history."""

    event: str
    worker_id: str | None
    detail: str | None
    at: datetime


class SuggestionPage(Model, frozen=True):
    """Query parameters of `GET /suggestions`."""

    limit: Limit = 1000
    after_id: Annotated[int, Meta(ge=0, le=INT64_MAX)] = 0


class TaskPage(Model, frozen=True):
    """Query parameters of `GET /tasks`."""

    status: TaskStatus | None = None
    worker_id: WorkerId | None = None
    limit: Limit = 100
    after_id: Annotated[int, Meta(ge=0, le=INT64_MAX)] = 0
