"""The clients for code that is not async (scripts, notebooks): the same calls, blocking. Each object runs the
async client on an event loop in a thread of its own, so a held task's heartbeats go on while the script's
own code runs. Close it (or use ``with``) to stop that thread.

A lost lease cannot interrupt a thread: ``LeaseLost`` is raised when the block ends instead."""

from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from typing import Any, Self, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .. import models
from ..models import (
    ApproveManyResult,
    DismissResult,
    IngestResult,
    Station,
    StationDetail,
    Suggestion,
    SuggestionIn,
    SuggestionOutcome,
    Task,
    TaskEvent,
    TaskStatus,
)
from . import ml, operator, worker
from .base import DEFAULT_RETRY, BaseClient, Retry

C = TypeVar("C", bound=BaseClient)
T = TypeVar("T")


class _Blocking:
    def __init__(self, make: Callable[[], BaseClient]) -> None:
        self._stack = ExitStack()
        self._portal: BlockingPortal = self._stack.enter_context(start_blocking_portal())

        async def build() -> BaseClient:
            return make()  # on the portal's loop, where its connections will live

        self._client = self._portal.call(build)

    def _run(self, call: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        async def run() -> T:
            return await call(*args, **kwargs)

        return self._portal.call(run)

    def close(self) -> None:
        try:
            self._portal.call(self._client.aclose)
        finally:
            self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Worker(_Blocking):
    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        worker_id: str = "worker",
        *,
        lease_seconds: int | None = None,
        position: worker.PositionSource | None = None,
        retry: Retry = DEFAULT_RETRY,
        timeout: float = 10.0,
    ) -> None:
        """As the async ``Worker``; ``position`` is called on the client's thread."""
        super().__init__(
            lambda: worker.Worker(
                base_url,
                key,
                worker_id,
                lease_seconds=lease_seconds,
                position=position,
                retry=retry,
                timeout=timeout,
            )
        )
        self.worker_id = worker_id

    @property
    def _worker(self) -> worker.Worker:
        assert isinstance(self._client, worker.Worker)
        return self._client

    def next_task(
        self, wait: float = 20, *, lease_seconds: int | None = None
    ) -> AbstractContextManager[Task]:
        """As the async ``Worker.next_task``; the block's code runs in this thread, the heartbeats in the
        client's."""
        return self._portal.wrap_async_context_manager(
            self._worker.next_task(wait, lease_seconds=lease_seconds)
        )

    def dispatch(self, wait: float = 0, *, lease_seconds: int | None = None) -> Task | None:
        return self._run(self._worker.dispatch, wait, lease_seconds=lease_seconds)

    def heartbeat(self, task: Task) -> Task:
        return self._run(self._worker.heartbeat, task)

    def pickup(self, task: Task) -> Task:
        return self._run(self._worker.pickup, task)

    def complete(self, task: Task) -> Task:
        return self._run(self._worker.complete, task)

    def fail(self, task: Task, error: str) -> Task:
        return self._run(self._worker.fail, task, error)

    def release(self, task: Task, reason: str | None = None) -> Task:
        return self._run(self._worker.release, task, reason)


class MLEngine(_Blocking):
    def __init__(self, base_url: str, key: str | None = None, *, retry: Retry = DEFAULT_RETRY) -> None:
        super().__init__(lambda: ml.MLEngine(base_url, key, retry=retry))

    def post_suggestions(
        self, items: Sequence[SuggestionIn], *, batch_size: int = ml.BATCH_MAX
    ) -> IngestResult:
        return self._run(self._ml.post_suggestions, items, batch_size=batch_size)

    @property
    def _ml(self) -> ml.MLEngine:
        assert isinstance(self._client, ml.MLEngine)
        return self._client

    def outcomes_page(
        self, after: str = ml.START, limit: int = ml.OUTCOMES_PAGE_MAX
    ) -> list[SuggestionOutcome]:
        return self._run(self._ml.outcomes_page, after, limit)

    def outcomes(self, after: str = ml.START, *, limit: int = ml.OUTCOMES_PAGE_MAX) -> "Outcomes":
        """As the async ``MLEngine.outcomes`` (without ``poll``): the pages up to now, ``cursor`` kept."""
        return Outcomes(self, after, limit)


class Outcomes:
    """The outcomes feed's pages up to now; ``cursor`` as in the async ``Outcomes``."""

    def __init__(self, engine: MLEngine, after: str, limit: int) -> None:
        self.cursor = after
        self._engine = engine
        self._limit = limit

    def __iter__(self) -> Iterator[list[SuggestionOutcome]]:
        while page := self._engine.outcomes_page(self.cursor, self._limit):
            self.cursor = page[-1].cursor
            yield page


class Operator(_Blocking):
    def __init__(self, base_url: str, key: str | None = None, *, retry: Retry = DEFAULT_RETRY) -> None:
        super().__init__(lambda: operator.Operator(base_url, key, retry=retry))

    @property
    def _operator(self) -> operator.Operator:
        assert isinstance(self._client, operator.Operator)
        return self._client

    def approve(self, suggestion_id: int) -> Task:
        return self._run(self._operator.approve, suggestion_id)

    def approve_many(self, suggestion_ids: Sequence[int]) -> ApproveManyResult:
        return self._run(self._operator.approve_many, suggestion_ids)

    def cancel(self, task_id: int, reason: str | None = None) -> Task:
        return self._run(self._operator.cancel, task_id, reason)

    def retry(self, task_id: int, reason: str | None = None) -> Task:
        return self._run(self._operator.retry, task_id, reason)

    def task(self, task_id: int) -> Task:
        return self._run(self._operator.task, task_id)

    def events(self, task_id: int) -> list[TaskEvent]:
        return self._run(self._operator.events, task_id)

    def tasks(
        self,
        status: TaskStatus | None = None,
        worker_id: str | None = None,
        *,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[Task]:
        return self._run(self._operator.tasks, status, worker_id, limit=limit, after_id=after_id)

    def all_tasks(self, status: TaskStatus | None = None, worker_id: str | None = None) -> Iterator[Task]:
        after_id = 0
        while True:
            page = self.tasks(status, worker_id, limit=operator.PAGE_MAX, after_id=after_id)
            yield from page
            if len(page) < operator.PAGE_MAX:
                return
            after_id = page[-1].id

    def suggestions(self, *, limit: int = operator.PAGE_MAX, after_id: int = 0) -> list[Suggestion]:
        return self._run(self._operator.suggestions, limit=limit, after_id=after_id)

    def dismiss(self, suggestion_ids: Sequence[int], reason: str) -> DismissResult:
        return self._run(self._operator.dismiss, suggestion_ids, reason)

    def register_worker(
        self,
        worker_id: str,
        *,
        capacity: int,
        name: str | None = None,
        on_shift: bool = True,
        depot_station_id: int | None = None,
    ) -> models.Worker:
        return self._run(
            self._operator.register_worker,
            worker_id,
            capacity=capacity,
            name=name,
            on_shift=on_shift,
            depot_station_id=depot_station_id,
        )

    def worker(self, worker_id: str) -> models.Worker:
        return self._run(self._operator.worker, worker_id)

    def workers(self, *, limit: int = operator.PAGE_MAX, after: str = "") -> list[models.Worker]:
        return self._run(self._operator.workers, limit=limit, after=after)

    def stations(
        self,
        *,
        near: tuple[float, float, float] | None = None,
        fill_below: float | None = None,
        fill_above: float | None = None,
        active: bool | None = None,
        limit: int = operator.PAGE_MAX,
        after_id: int = 0,
    ) -> list[Station]:
        return self._run(
            self._operator.stations,
            near=near,
            fill_below=fill_below,
            fill_above=fill_above,
            active=active,
            limit=limit,
            after_id=after_id,
        )

    def station(self, station_id: int) -> StationDetail:
        return self._run(self._operator.station, station_id)
