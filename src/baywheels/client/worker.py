"""A field worker: take the next task, keep its lease alive while working on it, and finish it whatever
happens to the code in between."""

import asyncio
import logging
import secrets
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx

from ..models import (
    CompleteRequest,
    DispatchRequest,
    FailRequest,
    HeartbeatRequest,
    HolderRequest,
    Position,
    ReleaseRequest,
    Task,
)
from .base import DEFAULT_RETRY, NO_RETRY, BaseClient, Retry
from .errors import ClientError, Conflict, LeaseLost, NotFound, OffShift

log = logging.getLogger("baywheels.client")

# The server waits at most this long in a long poll (DispatchRequest.wait_seconds).
MAX_WAIT = 30.0
# How much longer than the server's wait the client waits for the answer: a long poll that ends on the
# server's side must not be cut short by the client's timeout, or its task would be taken and not received.
WAIT_MARGIN = 10.0
# Most characters of an error the service keeps (FailRequest.error).
ERROR_MAX = 2000
# A worker giving a task back while it stops does not wait long for the service.
SHUTDOWN_RETRY = Retry(attempts=2, backoff=0.2, max_delay=1.0)
# What the service's 404 says of a worker registered as off shift (handlers/dispatch.py), unlike "no task".
OFF_SHIFT = "is off shift"

# Where the van is now, asked before each dispatch, heartbeat and pickup: a ``Position`` (``lat``, ``lon``,
# and optionally ``accuracy_m`` and ``load``, the bikes on board), or None when the phone has no fix.
PositionSource = Callable[[], Position | None]


class Worker(BaseClient):
    """A worker (``worker_id``, a van) of the service at ``base_url``.

    ``async with worker.next_task() as task:`` waits for a task and holds it while the block runs: its lease
    is extended in the background (a heartbeat every third of the lease), it is completed when the block
    ends, failed with the exception's message when the block raises (the exception goes on), and released
    when the block is cancelled. If the service refuses a heartbeat (an operator canceled the task, or the
    lease ran out and the task went to someone else) the block is cancelled and ``LeaseLost`` raised in its
    place. A worker may hold several tasks at once, each in its own block.

    ``position``, when given, is asked where the van is before each dispatch, heartbeat and pickup, and its
    answer sent with the call: the service keeps it as the worker's last position, and a dispatch with a
    position gets the best task for that van (the nearest pickup it can carry, ``load`` counted against its
    registered capacity). A worker registered as off shift gets ``OffShift`` (a ``NotFound``) from dispatch
    and ``next_task``, where no task ready is None (dispatch) or another long poll (``next_task``).

    The other methods are the single calls, for code that manages a task itself."""

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        worker_id: str = "worker",
        *,
        lease_seconds: int | None = None,
        position: PositionSource | None = None,
        http: httpx.AsyncClient | None = None,
        retry: Retry = DEFAULT_RETRY,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(base_url, key, http=http, retry=retry, timeout=timeout)
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.position = position

    def located(self) -> dict[str, Any]:
        """The position fields of a request (``lat``, ``lon``, ``accuracy_m``, ``load``): the source's
        answer now, or none at all (also when the source fails: a broken GPS must not cost the task)."""
        if self.position is None:
            return {}
        try:
            where = self.position()
        except Exception:
            log.warning(
                "the position source of %s failed; sent without a position", self.worker_id, exc_info=True
            )
            return {}
        if where is None:
            return {}
        return {"lat": where.lat, "lon": where.lon, "accuracy_m": where.accuracy_m, "load": where.load}

    def next_task(self, wait: float = 20, *, lease_seconds: int | None = None) -> "Claim":
        """Long-poll (``wait`` seconds per request, again and again) until a task is ready, then hold it for
        the block. ``lease_seconds`` overrides the worker's (else the service's default)."""
        if not 0 < wait <= MAX_WAIT:
            raise ValueError(f"wait must be in (0, {MAX_WAIT}] seconds")
        return Claim(self, wait, lease_seconds or self.lease_seconds)

    async def dispatch(
        self, wait: float = 0, *, lease_seconds: int | None = None, idempotency_key: str | None = None
    ) -> Task | None:
        """One request for the next task: the task, leased to this worker, or None when none was ready within
        ``wait`` seconds. It carries an ``Idempotency-Key`` (a fresh one unless given) that its retries after
        a lost answer reuse, so the answer's loss never costs a second task. ``OffShift`` when the worker is
        registered as off shift."""
        key = idempotency_key or f"{secrets.token_hex(12)}"
        body = DispatchRequest(
            worker_id=self.worker_id,
            lease_seconds=lease_seconds or self.lease_seconds,
            wait_seconds=wait,
            **self.located(),
        )
        try:
            return await self.call(
                "POST",
                "/dispatch/next",
                Task,
                body=body,
                headers={"Idempotency-Key": key},
                request_timeout=max(self.timeout, wait + WAIT_MARGIN),
            )
        except NotFound as exc:
            if OFF_SHIFT in exc.detail:
                raise OffShift(exc.status, exc.detail, exc.request_id) from None
            return None

    async def heartbeat(
        self, task: Task, *, lease_seconds: int | None = None, retry: Retry | None = None
    ) -> Task:
        """Extend the lease (by ``lease_seconds``, else by its length at dispatch)."""
        body = HeartbeatRequest(
            worker_id=self.worker_id, lease_id=task.lease_id, lease_seconds=lease_seconds, **self.located()
        )
        return await self._hold(task, "heartbeat", body, retry=retry)

    async def pickup(self, task: Task) -> Task:
        """The bikes are on the van: from now on a lost lease stalls the task for an operator."""
        body = HolderRequest(worker_id=self.worker_id, lease_id=task.lease_id, **self.located())
        return await self._hold(task, "pickup", body)

    async def complete(self, task: Task) -> Task:
        body = CompleteRequest(worker_id=self.worker_id, lease_id=task.lease_id)
        return await self._hold(task, "complete", body)

    async def fail(self, task: Task, error: str, *, retry: Retry | None = None) -> Task:
        """A failed attempt: the service retries the task later, or dead-letters it."""
        message = (error.replace("\x00", "") or "failed")[:ERROR_MAX]
        body = FailRequest(worker_id=self.worker_id, lease_id=task.lease_id, error=message)
        # Not repeated after a lost answer: a second fail would be refused (409) for the first's success.
        return await self._hold(task, "fail", body, resend=False, retry=retry)

    async def release(self, task: Task, reason: str | None = None, *, retry: Retry | None = None) -> Task:
        """Give the task back to ``ready`` at once, without counting an attempt."""
        note = None if reason is None else reason.replace("\x00", "")[:ERROR_MAX]
        body = ReleaseRequest(worker_id=self.worker_id, lease_id=task.lease_id, reason=note)
        return await self._hold(task, "release", body, resend=False, retry=retry)

    async def _hold(
        self, task: Task, action: str, body: Any, *, resend: bool = True, retry: Retry | None = None
    ) -> Task:
        """A call by the task's holder; 409 (or 404: the task is gone) means it is no longer ours."""
        try:
            return await self.call(
                "POST", f"/task/{task.id}/{action}", Task, body=body, resend=resend, retry=retry
            )
        except (Conflict, NotFound) as exc:
            raise LeaseLost(task.id, exc.status, exc.detail, exc.request_id) from None


class Claim:
    """The context manager of ``Worker.next_task``: see there."""

    def __init__(self, worker: Worker, wait: float, lease_seconds: int | None) -> None:
        self._worker = worker
        self._wait = wait
        self._lease_seconds = lease_seconds
        self._task: Task | None = None
        self._owner: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._heartbeats: asyncio.Task[None] | None = None
        self._lost: LeaseLost | None = None
        self._interrupted = False

    @property
    def task(self) -> Task | None:
        """The task as the last answer about it showed it."""
        return self._task

    async def __aenter__(self) -> Task:
        task = None
        while task is None:
            task = await self._worker.dispatch(self._wait, lease_seconds=self._lease_seconds)
        self._task = task
        self._owner = asyncio.current_task()
        self._cancelling = self._owner.cancelling() if self._owner is not None else 0
        self._heartbeats = asyncio.create_task(self._beat(task), name=f"heartbeats of task {task.id}")
        return task

    async def _beat(self, task: Task) -> None:
        assert task.lease_expires_at is not None
        assert task.assigned_at is not None
        # A third of the lease: a heartbeat lost to the network still leaves two chances before it runs out.
        interval = max(0.05, (task.lease_expires_at - task.assigned_at).total_seconds() / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                # One try per beat (the next beat is the retry), answered within the beat.
                await self._worker.call(
                    "POST",
                    f"/task/{task.id}/heartbeat",
                    type(None),
                    body=HeartbeatRequest(
                        worker_id=self._worker.worker_id, lease_id=task.lease_id, **self._worker.located()
                    ),
                    request_timeout=interval,
                    retry=NO_RETRY,
                )
            except (Conflict, NotFound) as exc:
                self._lost = LeaseLost(task.id, exc.status, exc.detail, exc.request_id)
                if self._owner is not None and not self._owner.done():
                    self._interrupted = True
                    self._owner.cancel(f"lease of task {task.id} lost")
                return
            except ClientError as exc:
                log.warning("heartbeat of task %s failed, trying again: %s", task.id, exc)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        assert self._task is not None
        assert self._heartbeats is not None
        self._heartbeats.cancel()
        await asyncio.gather(self._heartbeats, return_exceptions=True)
        if self._lost is not None:
            if self._interrupted and self._owner is not None and self._owner.uncancel() > self._cancelling:
                return False  # cancelled from outside as well: that cancellation goes on
            raise self._lost from (None if isinstance(exc, asyncio.CancelledError) else exc)
        task = self._task
        if exc is None:
            self._task = await self._worker.complete(task)
            return False
        try:
            if isinstance(exc, Exception):
                self._task = await self._worker.fail(task, str(exc) or type(exc).__name__)
            else:  # cancelled, interrupted, exiting: the task goes back for another worker at once
                reason = f"worker stopped ({type(exc).__name__})"
                self._task = await self._worker.release(task, reason, retry=SHUTDOWN_RETRY)
        except LeaseLost:
            pass  # no longer ours anyway (its lease ran out while the block ran)
        except ClientError as error:
            # The block's own exception matters more; an unfinished task comes back when its lease runs out.
            log.warning("could not give back task %s: %s", task.id, error)
        return False
