"""Prometheus metrics, served at ``GET /metrics``. With several worker processes (WORKERS), each writes its
values to files in PROMETHEUS_MULTIPROC_DIR, which `serve` sets before it starts them, and whichever worker
answers /metrics adds them all up."""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.responses import Response

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
