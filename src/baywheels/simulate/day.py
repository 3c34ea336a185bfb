"""A day of the bike-share against a running service, through its public API only: an ML engine posting its
view of the stations and reading back what became of each suggestion (the outcomes feed), an operator
approving and dismissing by a policy, and vans, registered as workers, working the tasks and reporting where
they are as they drive. The stations are the registry's when it holds any, else made up. The simulated clock
runs ``speed`` times faster than the real one; the service's own clock (leases, backoff, suggestion expiry)
is the real one, so the vans' leases are the simulated lease in real seconds."""

import asyncio
import math
import random
import statistics
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..client import LeaseLost, MLEngine, Operator, Position, SuggestionIn, SuggestionOutcome, Task, Worker
from ..client.errors import Conflict
from ..client.ml import START
from ..models import TaskStatus
from .world import Station, World, km

VAN_CAPACITY = 12
# The ML engine looks this far ahead.
HORIZON_MINUTES = 45
# A station is short below this share of its docks and over above this one, as forecast.
SHORT, OVER = 0.25, 0.85
# The ML engine does not suggest a pair again for this long after an operator dismissed it.
QUIET_MINUTES = 60


@dataclass(frozen=True)
class Config:
    url: str
    ml_key: str | None = None
    operator_key: str | None = None
    worker_key: str | None = None
    stations: int = 60
    vans: int = 12
    speed: float = 60.0
    seed: int = 1
    start_minute: int = 6 * 60
    minutes: int = 16 * 60
    van_kmh: float = 30.0
    ml_every: int = 5  # simulated minutes between two views
    operator_every: int = 3
    lease_minutes: int = 20
    stale_minutes: int = 120  # the operator cancels a task still ready this long after its approval
    fail_rate: float = 0.04  # per task: something at the station goes wrong
    phone_loss_rate: float = 0.02  # per task: the van's phone dies in the middle of it
    phone_outage_minutes: int = 30
    min_qty: int = 2  # the operator approves moves of at least this many bikes, and dismisses smaller ones


class NotFresh(Exception):
    """The service already has open tasks or pending suggestions: the day's counts would not be its own."""


class VanTrouble(Exception):
    """Something at a station that makes a van give up on a task (the task is failed with this message)."""


class Clock:
    """Simulated minutes since midnight, ``speed`` times the real clock."""

    def __init__(self, start_minute: int, speed: float) -> None:
        self.start = start_minute
        self.speed = speed
        self._t0 = time.monotonic()

    def now(self) -> float:
        return self.start + (time.monotonic() - self._t0) * self.speed / 60

    def seconds(self, minutes: float) -> float:
        """Real seconds of that many simulated minutes."""
        return minutes * 60 / self.speed

    async def sleep(self, minutes: float) -> None:
        await asyncio.sleep(self.seconds(minutes))


# What a suggestion can become (a suggestion in none of them is pending), and what its task can end as.
FATES = ("approved", "dismissed", "expired")
ENDINGS = ("completed", "failed", "canceled")


@dataclass
class Ledger:
    """What the simulator saw the service answer: the counts the service's own must equal."""

    suggested_at: dict[int, float] = field(default_factory=dict)  # suggestion id -> first simulated minute
    posted: int = 0
    created: int = 0
    tasks: dict[int, Task] = field(default_factory=dict)  # approved here, by id
    dismissed: set[int] = field(default_factory=set)  # suggestion ids dismissed here
    completed: dict[int, float] = field(default_factory=dict)  # task id -> simulated minute
    canceled: set[int] = field(default_factory=set)
    # The outcomes feed, as the ML engine read it: each suggestion's fate, and the tasks' endings.
    fates: dict[int, str] = field(default_factory=dict)
    ended: dict[int, str] = field(default_factory=dict)  # task id -> its last ending
    strangers: set[int] = field(default_factory=set)  # outcomes of suggestions the ML engine never posted
    retried: int = 0
    attempts_failed: int = 0
    leases_lost: int = 0
    phones_lost: int = 0
    released: int = 0
    bikes_moved: int = 0


class Van:
    """Where a van is (on a straight line between two stations, at the simulated time) and what it carries:
    its phone's answer to the SDK's position source."""

    def __init__(self, clock: Clock, at: Station) -> None:
        self.clock = clock
        self.origin = self.goal = at
        self.leaves = self.arrives = 0.0
        self.load = 0

    def drive(self, goal: Station, minutes: float) -> None:
        self.origin = self.at()
        self.goal = goal
        self.leaves = self.clock.now()
        self.arrives = self.leaves + minutes

    def at(self) -> Station:
        """The station it is at or last left."""
        return self.goal if self.clock.now() >= self.arrives else self.origin

    def position(self) -> Position:
        now = self.clock.now()
        share = 1.0 if now >= self.arrives else max(0.0, (now - self.leaves) / (self.arrives - self.leaves))
        a, b = self.origin, self.goal
        return Position(
            lat=round(a.lat + share * (b.lat - a.lat), 6),
            lon=round(a.lon + share * (b.lon - a.lon), 6),
            accuracy_m=10.0,
            load=self.load,
        )


class Day:
    def __init__(self, config: Config, http: httpx.AsyncClient, van_pools: list[httpx.AsyncClient]) -> None:
        self.config = config
        self.world = World.made_up(config.stations, config.seed, config.start_minute)
        self.registry = False  # the world is the registry's stations
        self.clock = Clock(config.start_minute, config.speed)
        self.ledger = Ledger()
        self.van_pools = van_pools
        self.ml = MLEngine(config.url, config.ml_key, http=http)
        self.operator = Operator(config.url, config.operator_key, http=http)
        self.end = config.start_minute + config.minutes
        # The lease in real seconds, and never under 10: heartbeats seconds apart leave room for a service
        # on a busy machine (or hundreds of vans on one core) to answer each before the lease runs out.
        self.lease_seconds = max(10, math.ceil(self.clock.seconds(config.lease_minutes)))
        self.baseline = 0  # tasks up to this id were there before the day began
        self.outcomes = self.ml.outcomes(START)  # read on from where the feed stood when the day began
        # What the ML engine learned from the feed: station pairs an operator dismissed, and until when (a
        # simulated minute) it does not suggest them again.
        self.quiet: dict[tuple[object, object], float] = {}

    async def check_fresh(self) -> None:
        """Refuse a service with open tasks or pending suggestions; remember where its task ids stand."""
        tasks = [t async for t in self.operator.all_tasks()]
        open_tasks = [t for t in tasks if t.status in ("ready", "assigned", "stalled")]
        if open_tasks or await self.operator.suggestions(limit=1):
            raise NotFresh(
                f"the service has {len(open_tasks)} open tasks or pending suggestions: simulate a day on a "
                "fresh database (make demo does)"
            )
        self.baseline = max((t.id for t in tasks), default=0)
        async for _ in self.outcomes:  # to the end of what happened before the day
            pass

    async def load_world(self) -> None:
        """The registry's active stations when it holds any (suggestions must name those), else the made-up
        ones."""
        stations = [s async for s in self.operator.all_stations(active=True)]
        if stations:
            self.world = World.from_registry(stations, self.config.seed, self.config.start_minute)
            self.registry = True

    def van_id(self, number: int) -> str:
        return f"van-{number:03d}"

    async def shift(self, on: bool) -> None:
        """Register the vans (their capacity, so dispatch gives each only what fits), on shift or off."""
        for start in range(0, self.config.vans, 50):
            numbers = range(start + 1, min(self.config.vans, start + 50) + 1)
            await asyncio.gather(
                *(
                    self.operator.register_worker(
                        self.van_id(n), capacity=VAN_CAPACITY, name=f"Van {n}", on_shift=on
                    )
                    for n in numbers
                )
            )

    # The world's clock: riders move every simulated minute.
    async def riders(self) -> None:
        while self.clock.now() < self.end:
            self.world.advance_to(math.floor(self.clock.now()))
            await self.clock.sleep(1)
        self.world.advance_to(self.end)

    # The ML engine: the forecast's short stations paired with the nearest ones over, as one batch.
    def view(self) -> list[SuggestionIn]:
        forecast = self.world.forecast(HORIZON_MINUTES)
        stations = self.world.stations
        surplus = {s.id: forecast[s.id] - s.capacity / 2 for s in stations}
        items: list[SuggestionIn] = []
        short = sorted(
            (s for s in stations if forecast[s.id] < SHORT * s.capacity),
            key=lambda s: forecast[s.id] / s.capacity,
        )
        for station in short:
            donors = [d for d in stations if d.city == station.city and surplus[d.id] >= 2 and d.bikes >= 2]
            if not donors:
                continue
            donor = min(donors, key=lambda d: km(d, station))
            qty = min(
                VAN_CAPACITY, math.ceil(-surplus[station.id]), math.floor(surplus[donor.id]), donor.bikes
            )
            if qty < 1:
                continue
            surplus[donor.id] -= qty
            surplus[station.id] += qty
            when = "empty" if forecast[station.id] <= 0 else "low"
            expected = f"{forecast[station.id]:.0f} of {station.capacity}"
            items.append(
                SuggestionIn(
                    from_station_id=donor.id,
                    to_station_id=station.id,
                    qty=qty,
                    reason=f"{station.id} predicted {when} in {HORIZON_MINUTES} min ({expected})",
                    priority=round(100 * (1 - forecast[station.id] / station.capacity)),
                )
            )
        for station in (s for s in stations if forecast[s.id] > OVER * s.capacity):
            takers = [t for t in stations if t.city == station.city and surplus[t.id] <= -2]
            if not takers or surplus[station.id] < 1:
                continue
            taker = min(takers, key=lambda t: km(t, station))
            qty = min(
                VAN_CAPACITY, math.floor(surplus[station.id]), math.ceil(-surplus[taker.id]), station.bikes
            )
            if qty < 1:
                continue
            surplus[station.id] -= qty
            surplus[taker.id] += qty
            items.append(
                SuggestionIn(
                    from_station_id=station.id,
                    to_station_id=taker.id,
                    qty=qty,
                    reason=f"{station.id} predicted full in {HORIZON_MINUTES} min",
                    priority=round(100 * (forecast[station.id] / station.capacity - 1)),
                )
            )
        now = self.clock.now()
        return [i for i in items if self.quiet.get((i.from_station_id, i.to_station_id), now) <= now]

    async def ml_engine(self) -> None:
        while self.clock.now() < self.end:
            await self.read_outcomes()  # first: what was dismissed is not suggested again at once
            items = self.view()
            if items:
                result = await self.ml.post_suggestions(items)
                now = self.clock.now()
                self.ledger.posted += len(items)
                self.ledger.created += result.created
                for suggestion_id in result.ids:
                    if suggestion_id is not None:
                        self.ledger.suggested_at.setdefault(suggestion_id, now)
            await self.clock.sleep(self.config.ml_every)

    async def read_outcomes(self) -> None:
        """What became of the suggestions since the last read (a real engine would learn from it)."""
        async for page in self.outcomes:
            for outcome in page:
                self.record(outcome)

    def record(self, outcome: SuggestionOutcome) -> None:
        ledger = self.ledger
        if outcome.suggestion_id not in ledger.suggested_at:
            ledger.strangers.add(outcome.suggestion_id)
        if outcome.outcome in FATES:
            ledger.fates[outcome.suggestion_id] = outcome.outcome
        if outcome.outcome == "dismissed":
            pair = (outcome.from_station_id, outcome.to_station_id)
            self.quiet[pair] = self.clock.now() + QUIET_MINUTES
        elif outcome.task_id is not None:
            ledger.ended[outcome.task_id] = outcome.outcome

    # The operator: approves the biggest, most urgent moves while the vans can keep up, dismisses the ones too
    # small to be worth a trip, puts stalled tasks back, cancels the ones nobody took in time.
    async def operator_loop(self) -> None:
        approved_at: dict[int, float] = {}
        while self.clock.now() < self.end:
            await self.operator_pass(approved_at)
            await self.clock.sleep(self.config.operator_every)

    async def operator_pass(self, approved_at: dict[int, float], approve: bool = True) -> None:
        ready = [t async for t in self.operator.all_tasks("ready") if t.id > self.baseline]
        now = self.clock.now()
        for task in ready:
            if now - approved_at.get(task.id, now) > self.config.stale_minutes:
                await self.cancel(task.id, "not taken in time: no longer needed")
        for task in [t async for t in self.operator.all_tasks("stalled") if t.id > self.baseline]:
            # The van's phone died after pickup; the driver phoned in and put the bikes back.
            try:
                await self.operator.retry(task.id, "van's phone died after pickup; bikes returned")
                self.ledger.retried += 1
            except Conflict:
                pass
        if not approve:
            return
        budget = 2 * self.config.vans - len(ready)
        pending = [s async for s in self.operator.all_suggestions()]
        small = [s.id for s in pending if s.qty < self.config.min_qty]
        if small:
            reason = f"fewer than {self.config.min_qty} bikes: not worth a van's trip"
            dismissal = await self.operator.dismiss(small, reason)
            self.ledger.dismissed.update(dismissal.dismissed)
        chosen = sorted(
            (s for s in pending if s.qty >= self.config.min_qty), key=lambda s: (-s.priority, -s.qty)
        )
        chosen = chosen[: max(0, budget)]
        if chosen:
            result = await self.operator.approve_many([s.id for s in chosen])
            for task in result.tasks:
                if task.id not in self.ledger.tasks:
                    self.ledger.tasks[task.id] = task
                    approved_at[task.id] = now

    async def cancel(self, task_id: int, reason: str) -> None:
        try:
            await self.operator.cancel(task_id, reason)
            self.ledger.canceled.add(task_id)
        except Conflict:
            pass  # taken or finished meanwhile

    # The vans.
    async def van(self, number: int) -> None:
        rng = random.Random(f"{self.config.seed}-van-{number}")
        van = Van(self.clock, self.world.stations[rng.randrange(len(self.world.stations))])
        worker = Worker(
            self.config.url,
            self.config.worker_key,
            self.van_id(number),
            lease_seconds=self.lease_seconds,
            # Where the van is, sent with each dispatch, heartbeat and pickup: the service gives it the
            # nearest task it can carry, and the console shows it on its way.
            position=van.position,
            http=self.van_pools[number % len(self.van_pools)],
        )
        wait = min(20.0, max(1.0, self.clock.seconds(10)))
        while True:
            if rng.random() < self.config.phone_loss_rate:
                await self.lose_phone(worker, rng, van, wait)
                continue
            task: Task | None = None
            try:
                async with worker.next_task(wait=wait) as task:
                    start = self.world.station(task.from_station_id)
                    await self.drive(van, start)
                    if rng.random() < self.config.fail_rate:
                        raise VanTrouble(f"dock jammed at station {start.id}")
                    van.load = self.world.take(start.id, min(task.qty, VAN_CAPACITY))
                    if van.load == 0:
                        raise VanTrouble(f"station {start.id} has no bikes")
                    await worker.pickup(task)
                    goal = self.world.station(task.to_station_id)
                    await self.drive(van, goal)
                    self.world.dock(goal.id, van.load)
                    self.ledger.bikes_moved += van.load
                    van.load = 0
                self.ledger.completed[task.id] = self.clock.now()
            except VanTrouble:
                self.ledger.attempts_failed += 1
            except LeaseLost:
                self.ledger.leases_lost += 1
            except asyncio.CancelledError:
                if task is not None and task.id not in self.ledger.completed:
                    self.ledger.released += 1
                raise
            finally:
                if van.load:  # the bikes go back where they came from
                    self.world.dock(van.at().id, van.load)
                    van.load = 0

    async def lose_phone(self, worker: Worker, rng: random.Random, van: Van, wait: float) -> None:
        """A task whose van goes silent partway: no more heartbeats or calls, so its lease runs out (and the
        service hands it out again, or stalls it if the bikes were picked up)."""
        task = await worker.dispatch(wait)
        if task is None:
            return
        self.ledger.phones_lost += 1
        start = self.world.station(task.from_station_id)
        await self.drive(van, start)
        if rng.random() < 0.5:
            try:
                await worker.pickup(task)
            except LeaseLost:  # canceled meanwhile, or the lease already ran out: the phone dies anyway
                self.ledger.leases_lost += 1
            carrying = self.world.take(start.id, min(task.qty, VAN_CAPACITY))
            # The phone dies here; the driver brings the bikes back to the station at once.
            self.world.dock(start.id, carrying)
        await self.clock.sleep(self.config.phone_outage_minutes)

    async def drive(self, van: Van, goal: Station) -> None:
        minutes = 5 + 60 * km(van.at(), goal) / self.config.van_kmh  # 5 minutes to park and load
        van.drive(goal, minutes)
        await self.clock.sleep(minutes)

    async def leases_held(self) -> bool:
        return bool([t async for t in self.operator.all_tasks("assigned") if t.id > self.baseline])

    async def settle(self) -> None:
        """After the day: the vans are gone, so every lease still held is a lost phone's; wait for the service
        to take those back, then have the operator put stalled tasks back one last time."""
        async with asyncio.timeout(self.lease_seconds + 30):
            while await self.leases_held():  # noqa: ASYNC110 (the service's reaper acts on its own clock)
                await asyncio.sleep(0.2)
        await self.operator_pass({}, approve=False)

    async def summary(self, seconds: float) -> dict[str, Any]:
        """The day in numbers, and the invariants checked against what the service itself reports: every
        suggestion the ML engine was given an id for is, by the outcomes feed, approved, dismissed or expired,
        or else still pending; every task is finished or open (ready), none held; the service's counts
        (its tasks, its pending list, its outcomes feed) equal the simulator's."""
        ledger = self.ledger
        tasks = [t async for t in self.operator.all_tasks() if t.id > self.baseline]
        # The pending list first, then the feed: a suggestion that expires in between is in both, and its
        # fate wins; read the other way round, it could be in neither.
        pending = {s.id async for s in self.operator.all_suggestions()}
        await self.read_outcomes()
        statuses = Counter(t.status for t in tasks)
        seen = set(ledger.suggested_at)
        fate = {i: ledger.fates.get(i, "pending" if i in pending else "lost") for i in seen}
        fates = Counter(fate.values())
        violations = []
        if lost := sorted(i for i, f in fate.items() if f == "lost"):
            violations.append(
                f"{len(lost)} suggestions neither approved, dismissed, expired nor pending, e.g. {lost[:5]}"
            )
        if unknown := (pending | set(ledger.fates) | ledger.strangers) - seen:
            violations.append(
                f"{len(unknown)} suggestions the ML engine never posted, e.g. {sorted(unknown)[:5]}"
            )
        if stranded := [t.id for t in tasks if t.status not in ("completed", "failed", "canceled", "ready")]:
            violations.append(f"{len(stranded)} tasks neither finished nor open (ready), e.g. {stranded[:5]}")
        by_status = {status: {t.id for t in tasks if t.status == status} for status in STATUSES}
        ended = {ending: {t for t, e in ledger.ended.items() if e == ending} for ending in ENDINGS}
        approved = {i for i, f in fate.items() if f == "approved"}
        dismissed = {i for i, f in fate.items() if f == "dismissed"}
        if len(seen) != ledger.created:
            violations.append(f"suggestions created: the service gave {len(seen)} ids, {ledger.created} new")
        for name, service, ours in (
            ("suggestions approved (the feed; the tasks)", approved, {t.suggestion_id for t in tasks}),
            (
                "suggestions approved (the feed; the operator)",
                approved,
                {t.suggestion_id for t in ledger.tasks.values()},
            ),
            ("suggestions dismissed (the feed; the operator)", dismissed, ledger.dismissed),
            ("tasks created", {t.id for t in tasks}, set(ledger.tasks)),
            ("tasks completed (the tasks; the vans)", by_status["completed"], set(ledger.completed)),
            ("tasks completed (the feed; the vans)", ended["completed"], set(ledger.completed)),
            ("tasks canceled (the tasks; the operator)", by_status["canceled"], ledger.canceled),
            ("tasks canceled (the feed; the operator)", ended["canceled"], ledger.canceled),
            ("tasks failed (the feed; the tasks)", ended["failed"], by_status["failed"]),
        ):
            if service != ours:
                differ = sorted(service ^ ours)[:5]
                violations.append(
                    f"{name}: the service counts {len(service)}, the simulator {len(ours)}; e.g. {differ}"
                )
        waits = [
            done - ledger.suggested_at[ledger.tasks[task_id].suggestion_id]
            for task_id, done in ledger.completed.items()
            if task_id in ledger.tasks and ledger.tasks[task_id].suggestion_id in ledger.suggested_at
        ]
        return {
            "seed": self.config.seed,
            "stations": len(self.world.stations),
            "stations_from": "registry" if self.registry else "made up",
            "vans": self.config.vans,
            "speed": self.config.speed,
            "simulated_minutes": self.config.minutes,
            "wall_seconds": round(seconds, 1),
            "suggestions": {
                "posted": ledger.posted,
                "created": ledger.created,
                **{f: fates.get(f, 0) for f in (*FATES, "pending")},
            },
            "tasks": {
                "created": len(tasks),
                **{status: statuses.get(status, 0) for status in STATUSES},
            },
            "bikes_moved": ledger.bikes_moved,
            "attempts_failed": ledger.attempts_failed,
            "leases_lost": ledger.leases_lost,
            "phones_lost": ledger.phones_lost,
            "stalled_retried": ledger.retried,
            "released_at_end": ledger.released,
            "median_suggestion_to_completion_minutes": round(statistics.median(waits), 1) if waits else None,
            "stations_ran_empty": len(self.world.ran_empty),
            "rides": self.world.rides,
            "rides_unmet": self.world.unmet,
            "violations": violations,
        }


# The vans share connection pools of this many: httpx's pool looks at every one of its connections for each
# request, which at hundreds of vans in one pool costs more CPU than everything else together.
VANS_PER_POOL = 16
STATUSES: tuple[TaskStatus, ...] = ("ready", "assigned", "completed", "failed", "canceled", "stalled")


async def run(config: Config) -> dict[str, Any]:
    """Run the day and return its summary, with the invariants checked against the service's own state."""
    async with AsyncExitStack() as stack:
        pools = [
            await stack.enter_async_context(httpx.AsyncClient(limits=_limits(VANS_PER_POOL)))
            for _ in range(math.ceil(config.vans / VANS_PER_POOL))
        ]
        http = await stack.enter_async_context(httpx.AsyncClient(limits=_limits(4)))
        day = Day(config, http, pools)
        await day.check_fresh()
        await day.load_world()
        await day.shift(on=True)
        day.clock = Clock(config.start_minute, config.speed)
        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            vans = [group.create_task(day.van(i + 1), name=f"van {i + 1}") for i in range(config.vans)]
            # If one of these fails, the group cancels the rest (the vans too) and raises.
            await asyncio.gather(day.riders(), day.ml_engine(), day.operator_loop())
            for van in vans:
                van.cancel()
        await day.settle()
        await day.shift(on=False)  # the day is over: the console shows the vans off shift
        return await day.summary(time.monotonic() - started)


def _limits(clients: int) -> httpx.Limits:
    # A connection for each client's long poll and one for a heartbeat beside it.
    return httpx.Limits(max_connections=2 * clients, max_keepalive_connections=2 * clients)
