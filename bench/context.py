"""What every scenario is given: the run's ``Context`` (its database server, load generator, the service
under test started on demand, the invariants checked so far), and the steps scenarios share: one measured
load run, and the exactly-once check of a dispatch run."""

import asyncio
import contextlib
import itertools
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import msgspec

from .config import Config
from .database import Server
from .loadgen import Load, LoadGen
from .procs import CpuMeter, Service, cpu_seconds, memory_bytes, peer_command, tree_cpu_seconds
from .stats import Latency


@dataclass
class Invariant:
    scenario: str
    ok: bool
    detail: str


@dataclass
class Context:
    cfg: Config
    server: Server
    load: LoadGen
    workdir: Path
    postmaster: int | None  # None: the server's processes are not ours to read (remote)
    results: dict[str, msgspec.Struct] = field(default_factory=dict)  # each finished scenario's, by name
    invariants: list[Invariant] = field(default_factory=list)
    templates: dict[str, str] = field(default_factory=dict)
    workers: int = 1  # uvicorn processes of the service
    _ports: "itertools.count[int]" = field(default_factory=lambda: itertools.count(18100))

    @property
    def dispatch_concurrency(self) -> int:
        """Per service process: the same number of dispatch statements in flight in all (4, the default of one
        process), however many processes."""
        return max(1, 4 // self.workers)

    def say(self, message: str) -> None:
        print(message, flush=True)

    def check(self, scenario: str, ok: bool, detail: str) -> None:
        self.invariants.append(Invariant(scenario, ok, detail))
        if not ok:
            self.say(f"  INVARIANT FAILED ({scenario}): {detail}")

    async def template(self, kind: str, backlog: int = 0) -> str:
        if kind not in self.templates:
            self.templates[kind] = await self.server.template(kind, backlog)
        return self.templates[kind]

    @contextlib.asynccontextmanager
    async def service(
        self, url: str, pool: int, env: dict[str, str] | None = None, direct_url: str | None = None
    ) -> AsyncIterator[Service]:
        """The service on ``url``; with AUTH=off unless ``env`` says otherwise: the scenarios of record
        measure the service's own work, as before authentication existed, and the `auth` scenario measures
        what authentication costs beside it. ``direct_url``: the database itself when ``url`` is a pooler
        (where the harness looks for the service's LISTEN connections)."""
        env = {
            "AUTH": "off",
            "POOL_MAX_SIZE": str(pool),
            "POOL_MIN_SIZE": "2",
            "WORKERS": str(self.workers),
            "DISPATCH_CONCURRENCY": str(self.dispatch_concurrency),
            **(env or {}),
        }
        svc = Service(url, _free_port(self._ports), env, self.workdir / "service.log")
        await svc.start()
        try:
            # /readyz answered: one worker is up. Each has a dispatcher LISTENing once it is.
            async with asyncio.timeout(30):
                while (await self.server.fetchrow(direct_url or url, "bench_listeners"))[0] < self.workers:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # polling other processes' start-up, with a deadline
            yield svc
        finally:
            await svc.stop()

    @contextlib.asynccontextmanager
    async def peer(self, url: str, pool: int, workers: int) -> AsyncIterator[Service]:
        """The minimal app (``bench/peer.py``) with ``workers`` uvicorn processes, each with a pool as large
        as the service's would be at this point."""
        port = _free_port(self._ports)
        env = {"POOL_MAX_SIZE": str(pool), "POOL_MIN_SIZE": "2"}
        peer = Service(url, port, env, self.workdir / "peer.log", peer_command(port, workers), role="peer")
        await peer.start()
        try:
            # /readyz answered: one worker is up. Each opened POOL_MIN_SIZE connections before it served.
            async with asyncio.timeout(30):
                while (await self.server.fetchrow(url, "bench_peer_connections"))[0] < 2 * workers:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # polling other processes' start-up, with a deadline
            yield peer
        finally:
            await peer.stop()

    def meter(self, service: Service | None) -> CpuMeter:
        harness = os.getpid()
        sources: dict[str, Callable[[], float]] = {"harness": lambda: cpu_seconds(harness)}
        if service is not None:
            pid = service.pid
            sources[service.role] = lambda: tree_cpu_seconds(pid)
        if self.postmaster is not None:
            postmaster = self.postmaster
            sources["postgres"] = lambda: tree_cpu_seconds(postmaster)
        return CpuMeter(sources)


def _free_port(ports: "itertools.count[int]") -> int:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def pool_size(connections: int) -> int:
    """Dispatch needs DISPATCH_CONCURRENCY connections whatever the load (the rest is coalesced); approve
    and complete use one per request in flight."""
    return min(connections, 64) + 8


# One load run ------------------------------------------------------------------------------------------


class LoadSummary(msgspec.Struct, kw_only=True):
    """One load run against the service, as the JSON keeps it."""

    rate: float  # answers 200 per second
    requests: int
    statuses: dict[str, int]
    errors: dict[str, int]
    failures: int
    latency_us: Latency
    cpu_percent: dict[str, float]
    service_rss_peak: int

    @classmethod
    def of(cls, load: Load, cpu: dict[str, float], rss: int = 0, **extra: Any) -> Self:
        """``extra``: the fields a subclass adds."""
        return cls(
            rate=load.result.rate(),
            requests=load.result.requests,
            statuses=load.result.statuses,
            errors=load.result.errors,
            failures=load.result.failures,
            latency_us=load.result.latency_us,
            cpu_percent=cpu,
            service_rss_peak=rss,
            **extra,
        )


class Operation(LoadSummary, kw_only=True):
    """A load run over a supply of ids, each used once (approve, complete)."""

    connections: int
    ran_dry: bool  # the ids ran out before the time did: the rate is a lower bound


async def measure(
    ctx: Context, svc: Service, mode: str, c: int, duration: float, *params: object
) -> tuple[Load, dict[str, float], int]:
    """One load run with the CPU split and the service's peak memory (PSS of all its processes) over it."""
    meter = ctx.meter(svc)
    peak = 0
    done = asyncio.Event()

    # The processes once (a walk of /proc), their memory every 0.5 s (smaps_rollup walks their page tables).
    pids = svc.pids()

    async def sample_memory() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, memory_bytes(pids))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.5)

    sampler = asyncio.create_task(sample_memory())
    meter.start()
    try:
        load = await ctx.load.run(svc.port, mode, c, duration, *params)
    finally:
        done.set()
        await sampler
    return load, meter.stop({"loadgen": load.cpu_seconds}), peak


# Exactly once ------------------------------------------------------------------------------------------


class DispatchCheck(msgspec.Struct, kw_only=True):
    """The exactly-once check of one dispatch run."""

    ok: bool
    answered: int
    assigned: int
    in_flight: int
    detail: str


async def check_dispatch(
    ctx: Context, name: str, url: str, seen: list[tuple[int, str]], connections: int, backlog: int
) -> DispatchCheck:
    """Each task handed out once, none lost: the 200 bodies against the database, after the service
    stopped (it lets the statements in flight finish)."""
    assigned = {row["id"]: row["worker_id"] for row in await ctx.server.fetch(url, "bench_assigned")}
    ids = [task_id for task_id, _ in seen]
    duplicates = len(ids) - len(set(ids))
    mismatched = sum(1 for task_id, worker in seen if assigned.get(task_id) != worker)
    in_flight = len(assigned) - len(set(ids))
    twice = (await ctx.server.fetchrow(url, "bench_assigned_twice"))[0]
    counts = {row["status"]: row["n"] for row in await ctx.server.fetch(url, "bench_status_counts")}
    total = sum(counts.values())
    ok = duplicates == 0 and mismatched == 0 and twice == 0 and total == backlog
    ok = ok and 0 <= in_flight <= connections
    detail = (
        f"{len(ids)} answered, {len(assigned)} assigned in the database, {in_flight} assigned but not "
        f"received (in flight at stop, at most {connections}), {duplicates} handed out twice, "
        f"{mismatched} not held by the worker answered, {twice} assigned twice per task_events, "
        f"{total} of {backlog} tasks present"
    )
    ctx.check(name, ok, detail)
    return DispatchCheck(ok=ok, answered=len(ids), assigned=len(assigned), in_flight=in_flight, detail=detail)
