"""Prometheus metrics, served at ``GET /metrics``. With several worker processes (WORKERS), each writes its
values to files in PROMETHEUS_MULTIPROC_DIR, which `serve` sets before it starts them, and whichever worker
answers /metrics adds them all up."""

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import asyncpg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response

from .models import Stats

REQUESTS = Counter("baywheels_http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
LATENCY = Histogram(
    "baywheels_http_request_duration_seconds",
    "Time from request received to response sent.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LIMITED = Counter(
    "baywheels_http_limited_total",
    "Requests refused or connections cut by a limit (header size or count, read time, connections).",
    ["limit"],
)
DISPATCHES = Counter("baywheels_dispatch_total", "Dispatch requests by outcome.", ["outcome"])
WAITERS = Gauge(
    "baywheels_dispatch_waiters",
    "Long-polling dispatch requests waiting for a task.",
    multiprocess_mode="livesum",
)
TRANSITIONS = Counter(
    "baywheels_task_transitions_total", "Task state changes made by this process.", ["event"]
)

RETENTION_DELETED = Counter(
    "baywheels_retention_deleted_total",
    "Rows deleted by retention (RETENTION_DAYS), by table.",
    ["table"],
)

# Where the time goes in the database. A statement is timed on its connection, from sending it to its result
# (acquiring the connection is not in it: the pool's gauges show that wait).
STATEMENT_SECONDS = Histogram(
    "baywheels_db_statement_duration_seconds",
    "Time of one SQL statement, by the name of its query in sql/queries (other: not a named query).",
    ["query"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Only the statements of the dispatcher's queue: a dispatch that runs alone on a free statement slot (the
# common case at low concurrency) is not observed here, which would cost it a third more instrumentation.
# Those are the task_dispatch statements above less this histogram's single-worker ones.
DISPATCH_BATCH = Histogram(
    "baywheels_dispatch_batch_size",
    "Workers served by one statement of the dispatch queue (1: a lone or keyed waiter; more: coalesced).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
)
# The pool, read when /metrics is scraped (and, with several worker processes, every few seconds by each).
POOL_CONNECTIONS = Gauge(
    "baywheels_db_pool_connections",
    "Pool connections: in_use (handed out, or opening for a request) and idle (open, waiting in the pool).",
    ["state"],
    multiprocess_mode="livesum",
)
POOL_MAX = Gauge("baywheels_db_pool_max_connections", "POOL_MAX_SIZE.", multiprocess_mode="livesum")
POOL_WAITING = Gauge(
    "baywheels_db_pool_waiting",
    "Requests waiting for a pool connection (each gives up after POOL_ACQUIRE_TIMEOUT with a 503).",
    multiprocess_mode="livesum",
)
# The maintenance loop's lease rescue (the reaper), on the instance that leads it.
REAPER_RESCUED = Histogram(
    "baywheels_reaper_rescued_tasks",
    "Tasks whose lease had run out, taken back by one pass of the reaper (_count: its passes).",
    buckets=(0, 1, 10, 100, 1000),
)
REAPER_OUTCOMES = Counter(
    "baywheels_reaper_rescued",
    "Tasks the reaper took back, by the state each went to (ready, stalled: bikes on a van, failed).",
    ["status"],
)
REAPER_LAST_RUN = Gauge(
    "baywheels_reaper_last_run_timestamp_seconds",
    "Unix time of the reaper's last finished pass (0 where this instance does not lead it).",
    multiprocess_mode="max",
)

# How often each worker process writes its pool's gauges when several serve /metrics (multiprocess mode).
POOL_SAMPLE_SECONDS = 5.0


def sample_pool(pool: asyncpg.Pool) -> None:
    """The pool's connections and waiters, now. asyncpg tells no count of waiting acquirers: they are the
    getters of its queue of connection holders."""
    queue: Any = getattr(pool, "_queue", None)
    if queue is None:  # not yet opened, or closed
        return
    size = pool.get_max_size()
    POOL_MAX.set(size)
    POOL_CONNECTIONS.labels("in_use").set(size - queue.qsize())
    POOL_CONNECTIONS.labels("idle").set(pool.get_idle_size())
    POOL_WAITING.set(sum(not getter.done() for getter in queue._getters))


async def sample_pool_every(pool: asyncpg.Pool, seconds: float = POOL_SAMPLE_SECONDS) -> None:
    """With several worker processes, one answers a scrape: the others' pools are as they last wrote them."""
    while True:
        sample_pool(pool)
        await asyncio.sleep(seconds)


def multiprocess_mode() -> bool:
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


def exposition(pool: asyncpg.Pool | None = None) -> Response:
    if pool is not None:
        sample_pool(pool)
    if not multiprocess_mode():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


# The live event stream (events.py) -------------------------------------------------------------------------

EVENT_STREAMS = Gauge("baywheels_event_streams", "Open GET /events streams.", multiprocess_mode="livesum")
EVENT_TAIL_QUERIES = Counter(
    "baywheels_event_queries_total",
    "Queries made for GET /events: the shared tail's (one per wake-up while a stream is open, whatever their "
    "number) and each resumption's.",
)


# The business figures (overview.py), read at most once per scrape and cached a few seconds -----------------


class _Figures(Collector):
    """The overview as gauges: one read of the database serves every sample here."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        tasks = GaugeMetricFamily(
            "baywheels_tasks", "Tasks in each open state, and the dead letters (failed).", labels=["status"]
        )
        for status in ("ready", "assigned", "stalled", "failed"):
            tasks.add_metric([status], getattr(stats.counts, status))
        yield tasks
        yield GaugeMetricFamily(
            "baywheels_ready_due", "Ready tasks that may be dispatched now.", stats.ready_due
        )
        yield GaugeMetricFamily(
            "baywheels_ready_oldest_age_seconds",
            "How long the oldest dispatchable ready task has waited (0 with none).",
            stats.oldest_ready_seconds or 0.0,
        )
        yield GaugeMetricFamily(
            "baywheels_tasks_needing_attention", "Stalled and failed tasks.", stats.attention_total
        )
        day = GaugeMetricFamily(
            "baywheels_task_events_last_24h",
            "Tasks created (approved), dispatched, completed, failed and canceled over the last 24 hours.",
            labels=["event"],
        )
        for event in ("created", "dispatched", "completed", "failed", "canceled"):
            day.add_metric([event], getattr(stats.last_24h, event))
        yield day
        for name, durations, what in (
            ("baywheels_ready_to_assigned_seconds", stats.ready_to_assigned, "ready to assigned"),
            ("baywheels_assigned_to_completed_seconds", stats.assigned_to_completed, "assigned to completed"),
        ):
            family = GaugeMetricFamily(
                name,
                f"Time from {what}, by window and quantile (absent with nothing measured).",
                labels=["window", "quantile"],
            )
            for window, percentiles in (("1h", durations.hour), ("24h", durations.day)):
                for quantile, value in (("0.5", percentiles.p50), ("0.9", percentiles.p90)):
                    if value is not None:
                        family.add_metric([window, quantile], value)
            yield family


def figures_exposition(stats: Stats) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(stats))
    return generate_latest(registry)
