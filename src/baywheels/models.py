"""Request and response bodies. The docstring of each Struct becomes its description in the OpenAPI schema."""

from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

Id = Annotated[int, Meta(ge=1, le=INT64_MAX, description="Database id.")]
StationId = Annotated[int, Meta(ge=1, le=INT32_MAX, description="Station id.")]
Qty = Annotated[int, Meta(ge=1, le=INT32_MAX, description="Number of bikes to move.")]
Priority = Annotated[
    int, Meta(ge=-INT32_MAX, le=INT32_MAX, description="Higher is dispatched first; 0 by default.")
]
# PostgreSQL text cannot hold NUL: refused here, naming the field, rather than failing the statement (for a
# coalesced dispatch, that would fail every worker in it).
NO_NUL = "^[^\x00]*$"
Reason = Annotated[str, Meta(max_length=2000, pattern=NO_NUL, description="Why the move is suggested.")]
WorkerId = Annotated[
    str, Meta(min_length=1, max_length=64, pattern=NO_NUL, description="The field worker's id.")
]
Limit = Annotated[int, Meta(ge=1, le=1000, description="Page size.")]
TaskStatus = Literal["ready", "assigned", "completed", "failed", "canceled", "stalled"]
LeaseSeconds = Annotated[int, Meta(ge=1, le=86400, description="Lease length in seconds.")]
Note = Annotated[str, Meta(max_length=2000, pattern=NO_NUL)]
# Printable ASCII without spaces: safe to compare, store and log. Checked by the dispatch handler and
# documented by the OpenAPI document.
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,128}$"
NotBefore = Annotated[
    datetime,
    Meta(
        tz=True,
        description=(
            "Not dispatched before this time (RFC 3339, with an offset). In UTC it must lie after "
            "0001-01-01T00:00:00Z and before 9999-12-31T23:59:59.999999Z."
        ),
    ),
]


class Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Message(Model, frozen=True, kw_only=True):
    """Service banner."""

    message: str


class Error(Model, frozen=True, kw_only=True):
    """Every error response."""

    detail: str


AUTH_OFF_WARNING = "Authentication is off (AUTH=off): anyone who can reach the service may do anything"


class Health(Model, frozen=True, kw_only=True, omit_defaults=True):
    """Liveness or readiness; `warning` when the service runs with authentication off."""

    status: str
    warning: str | None = None


class SuggestionIn(Model, frozen=True, kw_only=True):
    """One rebalancing suggestion posted by the ML engine; `from_station_id` and `to_station_id` differ."""

    from_station_id: StationId
    to_station_id: Annotated[StationId, Meta(description="Station id; must differ from from_station_id.")]
    qty: Qty
    reason: Reason
    priority: Priority = 0
    not_before: NotBefore | None = None

    def __post_init__(self) -> None:
        if self.from_station_id == self.to_station_id:
            raise ValueError("from_station_id and to_station_id must differ")
        if self.not_before is not None and not _storable(self.not_before):
            raise ValueError("not_before is out of range once converted to UTC")


def _storable(moment: datetime) -> bool:
    """Whether asyncpg can store this instant as itself. It converts to UTC first: 9999-12-31T23:59:59-14:00
    is in the year 10000 there, which Python cannot represent, and it writes the very first and last instants
    Python can (0001-01-01T00:00:00Z, 9999-12-31T23:59:59.999999Z) as PostgreSQL's -infinity and infinity,
    which read back without a time zone. Refused in validation, naming the field, rather than failing the
    whole batch's statement in the database."""
    try:
        utc = moment.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        return False
    return datetime.min < utc < datetime.max


SuggestionBatch = Annotated[list[SuggestionIn], Meta(min_length=1, max_length=10_000)]


class Suggestion(Model, frozen=True, kw_only=True):
    """A pending suggestion, waiting for an operator's approval."""

    id: int
    from_station_id: int
    to_station_id: int
    qty: int
    reason: str
    priority: int
    not_before: datetime | None
    created_at: datetime


class IngestResult(Model, frozen=True, kw_only=True):
    """Outcome of a batch: `ids` is aligned with the input (null for an item that was skipped)."""

    created: int
    updated: int
    duplicates: int
    ids: list[int | None]


class ApproveRequest(Model, frozen=True, kw_only=True):
    """Approve one suggestion into a task."""

    suggestion_id: Id


class ApproveManyRequest(Model, frozen=True, kw_only=True):
    """Approve several suggestions in one transaction."""

    suggestion_ids: Annotated[list[Id], Meta(min_length=1, max_length=1000)]


# A worker key implies its worker_id (naming another is a 403); any other caller names the worker it acts for.
HolderId = Annotated[
    WorkerId | UnsetType,
    Meta(description="The field worker's id: implied by a worker's key, required with any other credential."),
]


class DispatchRequest(Model, frozen=True, kw_only=True):
    """A worker asking for its next task; with `wait_seconds`, the request waits that long for one."""

    worker_id: HolderId = UNSET
    lease_seconds: LeaseSeconds | None = None
    wait_seconds: Annotated[float, Meta(ge=0, le=30)] = 0


class HolderRequest(Model, frozen=True, kw_only=True):
    """A call from the worker holding a task; with `lease_id`, only that lease (dispatch) is accepted."""

    worker_id: HolderId = UNSET
    lease_id: UUID | None = None


class HeartbeatRequest(Model, frozen=True, kw_only=True):
    """Extend the lease, by `lease_seconds` or by the length it was dispatched with."""

    worker_id: HolderId = UNSET
    lease_id: UUID | None = None
    lease_seconds: LeaseSeconds | None = None


class ReleaseRequest(Model, frozen=True, kw_only=True):
    """Hand a task back to `ready` now, without counting an attempt."""

    worker_id: HolderId = UNSET
    lease_id: UUID | None = None
    reason: Note | None = None


class FailRequest(Model, frozen=True, kw_only=True):
    """Report a failed attempt; the task is retried after a backoff, or dead-lettered as `failed`."""

    worker_id: HolderId = UNSET
    lease_id: UUID | None = None
    error: Annotated[str, Meta(min_length=1, max_length=2000, pattern=NO_NUL)]


class OperatorRequest(Model, frozen=True, kw_only=True):
    """Optional body of an operator's cancel or retry."""

    reason: Note | None = None


class CompleteRequest(Model, frozen=True, kw_only=True):
    """Optional body of a completion: with `worker_id` (and `lease_id`), only that holder may complete it."""

    worker_id: WorkerId | None = None
    lease_id: UUID | None = None


class Task(Model, frozen=True, kw_only=True):
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
    attempts: int
    lease_id: UUID | None
    lease_expires_at: datetime | None
    picked_up_at: datetime | None
    last_error: str | None
    not_before: datetime | None
    available_at: datetime


class ApproveManyResult(Model, frozen=True, kw_only=True):
    """Tasks for the approved suggestions (new or approved before), and the ids that match no suggestion."""

    tasks: list[Task]
    not_found: list[int]


class TaskEvent(Model, frozen=True, kw_only=True):
    """One transition in a task's history, and who made it (`actor`: a key id, `oidc:<subject>`,
    `env:ADMIN_API_KEY`, `system` for lease rescue, `anonymous` with AUTH=off; null before auth existed)."""

    event: str
    worker_id: str | None
    detail: str | None
    at: datetime
    actor: str | None


Role = Literal["worker", "ml", "operator", "viewer", "metrics", "admin"]
ROLES: tuple[Role, ...] = ("worker", "ml", "operator", "viewer", "metrics", "admin")
KeyName = Annotated[str, Meta(max_length=200, pattern=NO_NUL, description="A note for people: whose key.")]


class KeyCreate(Model, frozen=True, kw_only=True):
    """A new API key: a `worker` key needs the `worker_id` it belongs to, and no other role takes one."""

    role: Role
    worker_id: WorkerId | None = None
    name: KeyName | None = None
    expires_at: Annotated[datetime, Meta(tz=True, description="Refused from then on (RFC 3339).")] | None = (
        None
    )

    def __post_init__(self) -> None:
        if self.role == "worker" and self.worker_id is None:
            raise ValueError("a worker key needs the worker_id it belongs to")
        if self.role != "worker" and self.worker_id is not None:
            raise ValueError(f"only a worker key belongs to a worker_id, not a {self.role} key")
        if self.expires_at is not None and not _storable(self.expires_at):
            raise ValueError("expires_at is out of range once converted to UTC")


class KeyCreated(Model, frozen=True, kw_only=True):
    """The new key: `key` is shown this once and never again (only its digest is kept); `key_id` is its
    public part."""

    key_id: str
    key: str
    role: Role
    worker_id: str | None
    name: str | None
    created_at: datetime
    expires_at: datetime | None


class ApiKey(Model, frozen=True, kw_only=True):
    """An API key as listed: never the secret. Revoked keys stay listed."""

    key_id: str
    role: Role
    worker_id: str | None
    name: str | None
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None


class SuggestionPage(Model, frozen=True, kw_only=True):
    """Query parameters of `GET /suggestions`."""

    limit: Limit = 1000
    after_id: Annotated[int, Meta(ge=0, le=INT64_MAX)] = 0


class TaskPage(Model, frozen=True, kw_only=True):
    """Query parameters of `GET /tasks`."""

    status: TaskStatus | None = None
    worker_id: WorkerId | None = None
    limit: Limit = 100
    after_id: Annotated[int, Meta(ge=0, le=INT64_MAX)] = 0


# The operators' console: dismissals, outcomes, the event stream, the overview ------------------------------

DismissReason = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=2000,
        # Not blank: the ML engine learns from it.
        pattern="^[^\x00]*[^\x00\\s][^\x00]*$",
        description="Why the suggestions are dismissed (not blank): the ML engine reads it back.",
    ),
]


class DismissRequest(Model, frozen=True, kw_only=True):
    """Dismiss pending suggestions, with one reason, in one transaction."""

    suggestion_ids: Annotated[list[Id], Meta(min_length=1, max_length=1000)]
    reason: DismissReason


class DismissResult(Model, frozen=True, kw_only=True):
    """The ids this call dismissed, and those that were not pending (approved, dismissed or expired before,
    or unknown), each in the order given."""

    dismissed: list[int]
    not_pending: list[int]


OutcomeKind = Literal["approved", "dismissed", "expired", "completed", "failed", "canceled"]
# `<transaction>-<id>` of the last outcome read; "0-0" (the default) is the beginning.
OUTCOME_CURSOR = r"^[0-9]{1,19}-[0-9]{1,19}$"


class OutcomePage(Model, frozen=True, kw_only=True):
    """Query parameters of `GET /suggestions/outcomes`."""

    after: Annotated[
        str,
        Meta(
            pattern=OUTCOME_CURSOR,
            description="The `cursor` of the last outcome read; the default `0-0` is the beginning.",
        ),
    ] = "0-0"
    limit: Limit = 100


class SuggestionOutcome(Model, frozen=True, kw_only=True):
    """A change in a suggestion's fate: it left the pending list (`approved`, `dismissed`, `expired`) or its
    task ended (`completed`, `failed`, `canceled`; a retried task may end again later). `at`, `reason` and
    `actor` are this change's; the `task_*` fields are the task as it is now. Keep `cursor` to read on."""

    cursor: str
    suggestion_id: int
    outcome: OutcomeKind
    at: datetime
    reason: str | None
    actor: str | None
    from_station_id: int
    to_station_id: int
    qty: int
    priority: int
    suggested_at: datetime | None
    task_id: int | None
    task_status: TaskStatus | None
    approved_at: datetime | None
    assigned_at: datetime | None
    picked_up_at: datetime | None
    completed_at: datetime | None
    attempts: int | None
    worker_id: str | None


class EventsQuery(Model, frozen=True, kw_only=True):
    """Query parameters of `GET /events`."""

    follow: Annotated[
        bool,
        Meta(description="false: send the events after `Last-Event-ID` (or `after`) and end, for polling."),
    ] = True
    after: (
        Annotated[
            int, Meta(ge=0, le=INT64_MAX, description="Resume after this event id, as `Last-Event-ID` does.")
        ]
        | None
    ) = None


class LiveEvent(Model, frozen=True, kw_only=True):
    """The `data` of one server-sent event: a task event (its `id` is the event's `id:`) and the task's
    status as it was when the stream read it."""

    id: int
    task_id: int
    event: str
    status: TaskStatus
    worker_id: str | None
    detail: str | None
    actor: str | None
    at: datetime


class StateCounts(Model, frozen=True, kw_only=True):
    """Tasks in each open state, and the dead letters (`failed`), exact."""

    ready: int
    assigned: int
    stalled: int
    failed: int


class HourCounts(Model, frozen=True, kw_only=True):
    """Task events in one hour (`hour` is its start): created (approved), dispatched, and endings."""

    hour: datetime
    created: int
    dispatched: int
    completed: int
    failed: int
    canceled: int


class Percentiles(Model, frozen=True, kw_only=True):
    """Seconds; null when `count` is 0."""

    p50: float | None
    p90: float | None
    count: int


class Durations(Model, frozen=True, kw_only=True):
    """One duration over the last hour and the last day."""

    hour: Percentiles
    day: Percentiles


class Stats(Model, frozen=True, kw_only=True):
    """The overview: open work, throughput per hour over the last 24 hours, how long tasks wait and take, and
    the tasks that need a person (stalled first, newest first; `attention_total` counts them all)."""

    at: datetime
    counts: StateCounts
    ready_due: int
    oldest_ready_seconds: float | None
    hourly: list[HourCounts]
    last_24h: HourCounts
    ready_to_assigned: Durations
    assigned_to_completed: Durations
    attention: list[Task]
    attention_total: int
