"""An operator (or the console): approve or dismiss suggestions, cancel and retry tasks, register workers, and
read tasks, suggestions, workers and stations."""

from collections.abc import AsyncIterator, Sequence
from urllib.parse import quote

from .. import models
from ..models import (
    ApproveManyRequest,
    ApproveManyResult,
    ApproveRequest,
    DismissRequest,
    DismissResult,
    OperatorRequest,
    Station,
    StationDetail,
    Stats,
    Suggestion,
    Task,
    TaskEvent,
    TaskStatus,
    WorkerIn,
)
from .base import BaseClient

# The service's limits (ApproveManyRequest, DismissRequest, the pages of GET /tasks, /suggestions, /workers
# and /stations).
APPROVE_MAX = 1000
PAGE_MAX = 1000


class Operator(BaseClient):
    async def approve(self, suggestion_id: int) -> Task:
        """The suggestion's task (the same one again if it was approved before)."""
        return await self.call(
            "POST", "/task/approve", Task, body=ApproveRequest(suggestion_id=suggestion_id)
        )

    async def approve_many(self, suggestion_ids: Sequence[int]) -> ApproveManyResult:
        """Approve in batches of the service's limit, each one transaction; the results added up."""
        tasks: list[Task] = []
        not_found: list[int] = []
        ids = list(dict.fromkeys(suggestion_ids))
        for start in range(0, len(ids), APPROVE_MAX):
            body = ApproveManyRequest(suggestion_ids=ids[start : start + APPROVE_MAX])
            result = await self.call("POST", "/tasks/approve", ApproveManyResult, body=body)
            tasks += result.tasks
            not_found += result.not_found
        return ApproveManyResult(tasks=tasks, not_found=not_found)

    async def dismiss(self, suggestion_ids: Sequence[int], reason: str) -> DismissResult:
        """Dismiss pending suggestions with a reason (the ML engine reads it back from the outcomes), in
        batches of the service's limit, each one transaction; the results added up. Ids that were not pending
        (approved, dismissed or expired before, or unknown) come back in ``not_pending``."""
        dismissed: list[int] = []
        not_pending: list[int] = []
        ids = list(dict.fromkeys(suggestion_ids))
        for start in range(0, len(ids), APPROVE_MAX):
            body = DismissRequest(suggestion_ids=ids[start : start + APPROVE_MAX], reason=reason)
            # Not resent after a lost answer: the repeat would call the first one's dismissals not pending.
            result = await self.call("POST", "/suggestions/dismiss", DismissResult, body=body, resend=False)
            dismissed += result.dismissed
            not_pending += result.not_pending
        return DismissResult(dismissed=dismissed, not_pending=not_pending)

    async def stats(self) -> Stats:
        return await self.call("GET", "/stats", Stats)

    async def cancel(self, task_id: int, reason: str | None = None) -> Task:
        # Not resent after a lost answer: the repeat would be refused (409) for the first one's success.
        body = OperatorRequest(reason=reason)
        return await self.call("POST", f"/task/{task_id}/cancel", Task, body=body, resend=False)

    async def retry(self, task_id: int, reason: str | None = None) -> Task:
        body = OperatorRequest(reason=reason)
        return await self.call("POST", f"/task/{task_id}/retry", Task, body=body, resend=False)

    async def task(self, task_id: int) -> Task:
        return await self.call("GET", f"/task/{task_id}", Task)

    async def events(self, task_id: int) -> list[TaskEvent]:
        return await self.call("GET", f"/task/{task_id}/events", list[TaskEvent])

    async def tasks(
        self,
        status: TaskStatus | None = None,
        worker_id: str | None = None,
        *,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[Task]:
        """One page of tasks, by id."""
        params: dict[str, str | int] = {"limit": limit, "after_id": after_id}
        if status is not None:
            params["status"] = status
        if worker_id is not None:
            params["worker_id"] = worker_id
        return await self.call("GET", "/tasks", list[Task], params=params)

    async def all_tasks(
        self, status: TaskStatus | None = None, worker_id: str | None = None
    ) -> AsyncIterator[Task]:
        """Every task (with that status, of that worker), following the pages."""
        after_id = 0
        while True:
            page = await self.tasks(status, worker_id, limit=PAGE_MAX, after_id=after_id)
            for task in page:
                yield task
            if len(page) < PAGE_MAX:
                return
            after_id = page[-1].id

    async def suggestions(self, *, limit: int = PAGE_MAX, after_id: int = 0) -> list[Suggestion]:
        """One page of pending suggestions, oldest first."""
        params: dict[str, str | int] = {"limit": limit, "after_id": after_id}
        return await self.call("GET", "/suggestions", list[Suggestion], params=params)

    async def all_suggestions(self) -> AsyncIterator[Suggestion]:
        after_id = 0
        while True:
            page = await self.suggestions(after_id=after_id)
            for suggestion in page:
                yield suggestion
            if len(page) < PAGE_MAX:
                return
            after_id = page[-1].id

    async def register_worker(
        self,
        worker_id: str,
        *,
        capacity: int,
        name: str | None = None,
        on_shift: bool = True,
        depot_station_id: int | None = None,
    ) -> models.Worker:
        """Register a worker (a van carrying ``capacity`` bikes), or update its registration; its last
        position is kept. Off shift, it is dispatched nothing."""
        body = WorkerIn(
            name=name or worker_id, capacity=capacity, depot_station_id=depot_station_id, on_shift=on_shift
        )
        return await self.call("PUT", f"/workers/{_segment(worker_id)}", models.Worker, body=body)

    async def worker(self, worker_id: str) -> models.Worker:
        """A registered worker: its last position, load and task in hand (``NotFound`` if unregistered)."""
        return await self.call("GET", f"/workers/{_segment(worker_id)}", models.Worker)

    async def workers(self, *, limit: int = PAGE_MAX, after: str = "") -> list[models.Worker]:
        """One page of registered workers, by worker id, after the worker id ``after``."""
        params: dict[str, str | int] = {"limit": limit, "after": after}
        return await self.call("GET", "/workers", list[models.Worker], params=params)

    async def all_workers(self) -> AsyncIterator[models.Worker]:
        after = ""
        while True:
            page = await self.workers(after=after)
            for worker in page:
                yield worker
            if len(page) < PAGE_MAX:
                return
            after = page[-1].worker_id

    async def stations(
        self,
        *,
        near: tuple[float, float, float] | None = None,
        fill_below: float | None = None,
        fill_above: float | None = None,
        active: bool | None = None,
        limit: int = PAGE_MAX,
        after_id: int = 0,
    ) -> list[Station]:
        """One page of the station registry, by id: within ``near`` = (lat, lon, radius_km), with bikes /
        capacity at most ``fill_below`` or at least ``fill_above``, active or not."""
        params: dict[str, str | int] = {"limit": limit, "after_id": after_id}
        if near is not None:
            params |= {"lat": str(near[0]), "lon": str(near[1]), "radius_km": str(near[2])}
        for name, value in (("fill_below", fill_below), ("fill_above", fill_above)):
            if value is not None:
                params[name] = str(value)
        if active is not None:
            params["active"] = "true" if active else "false"
        return await self.call("GET", "/stations", list[Station], params=params)

    async def all_stations(
        self,
        *,
        near: tuple[float, float, float] | None = None,
        fill_below: float | None = None,
        fill_above: float | None = None,
        active: bool | None = None,
    ) -> AsyncIterator[Station]:
        """Every station so filtered, following the pages."""
        after_id = 0
        while True:
            page = await self.stations(
                near=near, fill_below=fill_below, fill_above=fill_above, active=active, after_id=after_id
            )
            for station in page:
                yield station
            if len(page) < PAGE_MAX:
                return
            after_id = page[-1].id

    async def station(self, station_id: int) -> StationDetail:
        """One station with its pending suggestions, open tasks and last finished tasks."""
        return await self.call("GET", f"/stations/{station_id}", StationDetail)


def _segment(worker_id: str) -> str:
    """A worker id as one path segment (ids may hold any character but NUL)."""
    return quote(worker_id, safe="")
