"""An operator (or the console): approve or dismiss suggestions, cancel and retry tasks, read tasks,
suggestions and the overview."""

from collections.abc import AsyncIterator, Sequence

from ..models import (
    ApproveManyRequest,
    ApproveManyResult,
    ApproveRequest,
    DismissRequest,
    DismissResult,
    OperatorRequest,
    Stats,
    Suggestion,
    Task,
    TaskEvent,
    TaskStatus,
)
from .base import BaseClient

# The service's limits (ApproveManyRequest, the pages of GET /tasks and GET /suggestions).
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
        """Dismiss in batches of the service's limit, each one transaction; the results added up."""
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
