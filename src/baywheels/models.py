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


Latitude = Annotated[float, Meta(ge=-90, le=90, description="The van's latitude, degrees (WGS 84).")]
Longitude = Annotated[float, Meta(ge=-180, le=180, description="The van's longitude, degrees (WGS 84).")]
AccuracyM = Annotated[float, Meta(ge=0, le=1_000_000, description="How far off the position may be, metres.")]
Load = Annotated[int, Meta(ge=0, le=INT32_MAX, description="Bikes on the van now.")]


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """Where a van is, as its phone reported it: kept on the worker with the time it came."""

    lat: float
    lon: float
    accuracy_m: float | None = None
    load: int | None = None


class Located(Model, frozen=True, kw_only=True):
    """A van's optional report: `lat` and `lon` together; `accuracy_m` and `load` only with them."""

    lat: Latitude | None = None
    lon: Longitude | None = None
    accuracy_m: AccuracyM | None = None
    load: Load | None = None

    def __post_init__(self) -> None:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon go together")
        if self.lat is None and (self.accuracy_m is not None or self.load is not None):
            raise ValueError("accuracy_m and load come with a position (lat, lon)")

    def position(self) -> Position | None:
        if self.lat is None or self.lon is None:
            return None
        return Position(lat=self.lat, lon=self.lon, accuracy_m=self.accuracy_m, load=self.load)


class DispatchRequest(Located, frozen=True, kw_only=True):
    """A worker asking for its next task; with `wait_seconds`, the request waits that long for one. With a
    position (`lat`, `lon`), the task is the best one for that van: what it can carry, the highest priority
    band, then the nearest pickup station, then the oldest."""

    worker_id: HolderId = UNSET
    lease_seconds: LeaseSeconds | None = None
    wait_seconds: Annotated[float, Meta(ge=0, le=30)] = 0


class HolderRequest(Located, frozen=True, kw_only=True):
    """A call from the worker holding a task; with `lease_id`, only that lease (dispatch) is accepted."""

    worker_id: HolderId = UNSET
    lease_id: UUID | None = None


class HeartbeatRequest(Located, frozen=True, kw_only=True):
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


class WorkerIn(Model, frozen=True, kw_only=True):
    """Register a worker, or update its registration (its last position is kept)."""

    name: Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
    capacity: Annotated[int, Meta(ge=0, le=10_000, description="Bikes the van carries.")]
    depot_station_id: StationId | None = None
    on_shift: bool


class Worker(Model, frozen=True, kw_only=True):
    """A registered worker: its van, its last reported position and load, the task it holds, when it was
    last seen (its last position, or the last change to its task) and the tasks it completed today (UTC)."""

    worker_id: str
    name: str | None
    capacity: int | None
    depot_station_id: int | None
    on_shift: bool
    lat: float | None
    lon: float | None
    position_at: datetime | None
    load: int | None
    current_task_id: int | None
    last_seen_at: datetime | None
    completed_today: int


class WorkerPage(Model, frozen=True, kw_only=True):
    """Query parameters of `GET /workers`: after the worker id `after`, in worker id order."""

    limit: Limit = 100
    after: Annotated[str, Meta(max_length=64, pattern=NO_NUL)] = ""


class StatsWindow(Model, frozen=True, kw_only=True):
    """Query parameters of `GET /workers/{worker_id}/stats`."""

    hours: Annotated[int, Meta(ge=1, le=24 * 90, description="The window, ending now.")] = 24


class WorkerStats(Model, frozen=True, kw_only=True):
    """What a worker did in the last `hours`: tasks completed (and per hour), the median time from dispatch
    to completion, failed attempts (fail), and leases that ran out in its hands."""

    worker_id: str
    hours: int
    completed: int
    tasks_per_hour: float
    median_minutes_to_complete: float | None
    failures: int
    leases_expired: int
