"""Dispatch inside one process: concurrent requests coalesced into few statements, and long-polling waiters
woken by PostgreSQL LISTEN/NOTIFY (through the process's one listener, listener.py, which it subscribes to).

Every ``POST /dispatch/next`` becomes a ``Waiter`` in a FIFO queue. Up to DISPATCH_CONCURRENCY statements run
at once; when all are busy, the waiters that queue up behind them go together in ONE ``task_dispatch_many``
statement, which pairs n locked tasks with n workers in arrival order and commits once for all of them. A
lone waiter takes the single-row ``task_dispatch`` path; a request that does not wait, arriving when a
statement slot is free, runs that statement in its own task, with no waiter at all. A waiter with
``wait_seconds`` that finds nothing sleeps (no query) until a notification says a task became ready, from
this instance or any other; then the oldest sleepers are tried first, one batch at a time, and only while
batches keep filling up, so one new task costs one statement, not one per sleeper.

A request with a position (a van saying where it is) takes the same way, with statements of its own kind: a
lone one runs ``task_dispatch_near``, and the vans queued together go in ONE ``task_dispatch_near_many``,
which serves them one after another in arrival order, each the best task for it, inside one function call and
one commit (the best task differs per van, so one set-based choice cannot serve them: migration 012 says
why). A batch holds requests of one kind: without a position, or with one; a keyed request runs alone.
With one van per station, a statement that lost a race for a station's claim (``queries.station_taken``) is
run again. The workers of a batch without positions that left some without a task while others got one
(tasks of the batch sharing a station, or the last ready tasks) look again at once rather than sleep; a van
of a batch that got nothing would have got nothing alone at its turn, and is answered as such.
"""

import asyncio
import contextvars
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import structlog

from . import queries
from .db import KeptConnections
from .metrics import DISPATCH_BATCH, WAITERS
from .models import Position, Task
from .settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Runs of a statement that lost a station's claim to a racing dispatch. Each run takes a fresh snapshot, in
# which that station is held, so a second run almost always succeeds; after these many, the waiters get
# nothing this time (as when no task is ready), never an error.
CLAIM_ATTEMPTS = 8


@dataclass(eq=False)
class Waiter:
    worker_id: str
    lease_seconds: int
    key: str | None
    deadline: float
    seq: int
    future: asyncio.Future[Task | None] = field(repr=False)
    actor: str | None = None
    near: Position | None = None
    abandoned: bool = False


class Dispatcher:
    """Subscribes to the listener (``notified``, ``reconnected``); owns no connection of its own."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._queue: deque[Waiter] = deque()  # to try in the next statement, oldest first
        self._sleeping: list[Waiter] = []  # found nothing; waiting for a notification
        self._inflight = 0
        self._notifications = 0
        self._seq = itertools.count()
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self._draining = False
        # The inline statements' connections, kept between them (as many as may run at once).
        self._kept = KeptConnections(pool, settings.dispatch_concurrency)

    # Lifecycle

    def drain(self) -> int:
        """The instance is shutting down (SIGTERM): sleeping long-polls are answered now, as if their wait had
        ended (404: the client asks again, through the balancer, another instance), and none sleeps from now
        on. Statements in flight and queued requests still run and get their answers. Returns how many
        sleepers were answered."""
        self._draining = True
        sleepers, self._sleeping = self._sleeping, []
        self._sleepers_changed()
        for waiter in sleepers:
            if not waiter.future.done():
                waiter.future.set_result(None)
        return len(sleepers)

    async def stop(self, within: float | None = None) -> None:
        self._closing = True
        for waiter in [*self._queue, *self._sleeping]:
            if not waiter.future.done():
                waiter.future.set_result(None)
        self._queue.clear()
        self._sleeping.clear()
        self._sleepers_changed()
        # Statements in flight finish, so a task they assign is not left without its answer being logged.
        if self._background:
            limit = self._settings.db_command_timeout if within is None else within
            await asyncio.wait(list(self._background), timeout=limit)
        await self._kept.close()

    # Requests

    async def next(
        self,
        worker_id: str,
        lease_seconds: int,
        wait_seconds: float,
        key: str | None,
        actor: str | None = None,
        near: Position | None = None,
    ) -> Task | None:
        """The task assigned to this worker, or None when none was ready within ``wait_seconds``. ``actor``
        is recorded with the assignment; ``near``, the van's position, makes it the best task for the van."""
        if (
            wait_seconds <= 0
            and key is None
            and not self._closing
            and not self._queue
            and self._inflight < self._settings.dispatch_concurrency
        ):
            return await self._dispatch_inline(worker_id, lease_seconds, actor, near)
        loop = asyncio.get_running_loop()
        waiter = Waiter(
            worker_id,
            lease_seconds,
            key,
            loop.time() + wait_seconds,
            next(self._seq),
            loop.create_future(),
            actor,
            near,
        )
        self._queue.append(waiter)
        self._pump()
        timer = loop.call_at(waiter.deadline, self._expire, waiter) if wait_seconds > 0 else None
        try:
            return await waiter.future
        except asyncio.CancelledError:
            # The client went away. If a statement is serving this waiter now, _run gives its task back.
            waiter.abandoned = True
            self._forget(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, waiter: Waiter) -> None:
        # Only a sleeping waiter ends here; one in a statement gets that statement's answer.
        if waiter in self._sleeping:
            self._sleeping.remove(waiter)
            self._sleepers_changed()
            waiter.future.set_result(None)

    def _forget(self, waiter: Waiter) -> None:
        if waiter in self._sleeping:
            self._sleeping.remove(waiter)
            self._sleepers_changed()
        elif waiter in self._queue:
            self._queue.remove(waiter)

    def _sleepers_changed(self) -> None:
        # A gauge set rather than read on demand: with several worker processes each writes its own value.
        WAITERS.set(len(self._sleeping))

    # The listener's subscriber

    def notified(self, payload: str) -> None:
        """A task became ready somewhere: the oldest sleepers look, one batch at a time."""
        self._notifications += 1
        self._wake(self._settings.dispatch_batch_max)

    def reconnected(self) -> None:
        """Notifications sent while the listener was away are lost: every sleeper looks once."""
        self._notifications += 1
        self._wake(len(self._sleeping))

    def _wake(self, count: int) -> None:
        """Move the ``count`` oldest sleepers to the front of the queue, in arrival order."""
        if not self._sleeping:
            return
        self._sleeping.sort(key=lambda w: w.seq)
        woken, self._sleeping = self._sleeping[:count], self._sleeping[count:]
        self._sleepers_changed()
        self._queue.extendleft(reversed(woken))
        self._pump()

    # Statements

    def _pump(self) -> None:
        while self._queue and self._inflight < self._settings.dispatch_concurrency and not self._closing:
            batch = self._take()
            self._inflight += 1
            self._spawn(self._run(batch))

    def _take(self) -> list[Waiter]:
        """The oldest waiter and, unless it has an Idempotency-Key (task_dispatch honours it alone), the
        queued waiters of its kind (with a position, or without), oldest first: those of the other kind keep
        their places, so a mixed queue still makes full batches."""
        head = self._queue.popleft()
        if head.key is not None:
            return [head]
        batch, skipped = [head], []
        near = head.near is not None
        while self._queue and len(batch) < self._settings.dispatch_batch_max:
            waiter = self._queue.popleft()
            if waiter.key is None and (waiter.near is not None) == near:
                batch.append(waiter)
            else:
                skipped.append(waiter)
        self._queue.extendleft(reversed(skipped))
        return batch

    async def _dispatch_inline(
        self, worker_id: str, lease_seconds: int, actor: str | None, near: Position | None
    ) -> Task | None:
        """A statement slot is free and nobody queues for one, so there is nothing to coalesce with: the
        request's own task runs the single-row statement, as _run would, without a waiter, a future and a
        task of its own (at low concurrency, where a real fleet lives, those cost more than they save).
        Only for a request that does not wait: a long poll can be cancelled when its client leaves, and a
        statement cancelled under it could leave its task assigned to nobody until the lease ran out."""
        self._inflight += 1
        try:
            task = await self._claiming(
                lambda: self._kept.run(
                    lambda conn: self._one(conn, worker_id, lease_seconds, None, actor, near)
                )
            )
        except BaseException:
            self._inflight -= 1
            # As in _run: a task it had locked is free again, unannounced, and whoever queued behind it
            # must not wait for another request to come and pump.
            self._notifications += 1
            self._wake(self._settings.dispatch_batch_max)
            self._pump()
            raise
        self._inflight -= 1
        if task is not None:
            self._wake(self._settings.dispatch_batch_max)  # as in _run: more may be ready for the sleepers
        self._pump()
        return task

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # A statement serves many requests: it must not log under the request id of the one that started it.
        task = asyncio.create_task(coro, context=contextvars.Context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run(self, batch: list[Waiter]) -> None:
        seen = self._notifications
        try:
            results = await self._dispatch(batch)
        except Exception as exc:
            self._inflight -= 1
            for waiter in batch:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
            # Tasks this statement had locked are free again, unannounced; and the requests queued behind it
            # must not wait for another request to come and pump.
            self._notifications += 1
            self._wake(self._settings.dispatch_batch_max)
            self._pump()
            return
        self._inflight -= 1
        now = asyncio.get_running_loop().time()
        again: list[Waiter] = []
        # Tasks of a batch that share a station go one per statement: those left out are still ready. Not so
        # for vans: each was given the best task left for it at its turn.
        split = 0 < len(results) < len(batch) and batch[0].near is None
        for index, waiter in enumerate(batch):
            task = results.get(index)
            if waiter.abandoned or waiter.future.done():
                if task is not None:
                    self._spawn(self._give_back(task, waiter.actor))
            elif task is not None:
                waiter.future.set_result(task)
            elif split and not self._draining:
                again.append(waiter)
            elif waiter.deadline <= now or self._draining:
                waiter.future.set_result(None)
            elif self._notifications != seen:
                again.append(waiter)  # a task became ready while we looked: look again
            else:
                self._sleeping.append(waiter)
        self._sleepers_changed()
        self._queue.extendleft(reversed(again))
        if len(results) == len(batch):
            # Every worker got a task, so more may be ready: try the next sleepers.
            self._wake(self._settings.dispatch_batch_max)
        self._pump()

    async def _dispatch(self, batch: list[Waiter]) -> dict[int, Task]:
        DISPATCH_BATCH.observe(len(batch))
        if len(batch) > 1 and batch[0].near is not None:
            near = await self._claiming(
                lambda: queries.task_dispatch_near_many(
                    self._pool,
                    [w.worker_id for w in batch],
                    [w.lease_seconds for w in batch],
                    [w.near for w in batch if w.near is not None],
                    actors=[w.actor for w in batch],
                    max_km=self._settings.dispatch_max_km,
                    one_van=self._settings.one_van_per_station,
                )
            )
            return near or {}
        if len(batch) > 1:
            many = await self._claiming(
                lambda: queries.task_dispatch_many(
                    self._pool,
                    [w.worker_id for w in batch],
                    [w.lease_seconds for w in batch],
                    actors=[w.actor for w in batch],
                    one_van=self._settings.one_van_per_station,
                )
            )
            return many or {}
        waiter = batch[0]
        if waiter.key is None:
            task = await self._claiming(
                lambda: self._one(
                    self._pool, waiter.worker_id, waiter.lease_seconds, None, waiter.actor, waiter.near
                )
            )
        else:
            task = await self._claiming(lambda: self._keyed(waiter, waiter.key or ""))
        return {} if task is None else {0: task}

    async def _keyed(self, waiter: Waiter, key: str) -> Task | None:
        # A racing retry with the same Idempotency-Key waits for this one, then gets the same task.
        async with self._pool.acquire() as conn, conn.transaction():
            await queries.task_dispatch_key_lock(conn, waiter.worker_id, key)
            return await self._one(
                conn, waiter.worker_id, waiter.lease_seconds, key, waiter.actor, waiter.near
            )

    def _one(
        self,
        conn: queries.Conn,
        worker_id: str,
        lease_seconds: int,
        key: str | None,
        actor: str | None,
        near: Position | None,
    ) -> Awaitable[Task | None]:
        """The one-worker statement: by position when the van gave one, else in dispatch order."""
        one_van = self._settings.one_van_per_station
        if near is None:
            return queries.task_dispatch(conn, worker_id, lease_seconds, key, actor=actor, one_van=one_van)
        return queries.task_dispatch_near(
            conn,
            worker_id,
            lease_seconds,
            key,
            near,
            actor=actor,
            max_km=self._settings.dispatch_max_km,
            one_van=one_van,
        )

    @staticmethod
    async def _claiming(statement: Callable[[], Awaitable[T]]) -> T | None:
        """Run a dispatch statement again while it loses a station's claim to a racing dispatch (or a
        deadlock)."""
        for _ in range(CLAIM_ATTEMPTS):
            try:
                return await statement()
            except asyncpg.UniqueViolationError as exc:
                if not queries.station_taken(exc):
                    raise
            except asyncpg.DeadlockDetectedError:
                # Claims are taken in station order; should a dispatch still meet another transaction in a
                # cycle of waits, PostgreSQL breaks it by failing one, and a dispatch failed so runs again.
                pass
        log.warning("dispatch_claim_attempts_exhausted", attempts=CLAIM_ATTEMPTS)
        return None

    async def _give_back(self, task: Task, actor: str | None) -> None:
        """The waiter left while its statement ran: hand the task straight back (in its caller's name)."""
        assert task.worker_id is not None
        try:
            await queries.task_release(
                self._pool, task.id, task.worker_id, task.lease_id, "client disconnected", actor=actor
            )
        except Exception:
            # The lease still runs out, and the maintenance loop hands the task out again.
            log.exception("task_give_back_failed", task_id=task.id, worker_id=task.worker_id)
        else:
            log.info("task_given_back", task_id=task.id, worker_id=task.worker_id)
