"""Prometheus metrics, served at ``GET /metrics``. With several worker processes (WORKERS), each writes its
values to files in PROMETHEUS_MULTIPROC_DIR, which `serve` sets before it starts them, and whichever worker
answers /metrics adds them all up."""

import os
from collections.abc import Iterator

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


def exposition() -> Response:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
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
