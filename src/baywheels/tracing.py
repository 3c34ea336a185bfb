"""OpenTelemetry traces, on when OTEL_EXPORTER_OTLP_ENDPOINT is set: a span per request (with its request id)
and a child span per SQL statement (named by its query in sql/queries), sent over OTLP/HTTP. Nothing imports
this module, nor OpenTelemetry, while tracing is off: the app, the pool and the logs each ask
``settings.tracing_on`` once, at start-up.

The SDK reads the standard variables itself: OTEL_SERVICE_NAME (default here: baywheels),
OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_TRACES_SAMPLER
and OTEL_TRACES_SAMPLER_ARG, OTEL_BSP_* (the batch processor). A caller's ``traceparent`` header makes the
request's span a child of the caller's.

One dispatch statement may serve many waiting requests at once (dispatcher.py): it runs outside any request's
context, so its span (task_dispatch_many) is a trace of its own. A lone request's statement is its request's
child."""

import os
from collections.abc import MutableMapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, StatusCode
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import db
from .logs import REQUEST_ID
from .settings import Settings

_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()


def start(settings: Settings) -> None:
    """The process's tracer provider (its own, not the global one), exporting in batches in a thread."""
    global _provider, _tracer
    if _provider is not None:
        return
    attributes: dict[str, Any] = {}
    if "OTEL_SERVICE_NAME" not in os.environ and "service.name=" not in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes["service.name"] = "baywheels"
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if endpoint is None:
        assert settings.otel_exporter_otlp_endpoint is not None
        endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    provider = TracerProvider(resource=Resource.create(attributes))  # the sampler from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _provider, _tracer = provider, provider.get_tracer("baywheels")


def stop() -> None:
    """Sends what is left (the batch processor's flush), then stops its thread."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider, _tracer = None, trace.NoOpTracer()


def add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the trace and span a log line was written in, as the OTLP ids' hex."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


class _Headers(Getter[MutableMapping[str, Any]]):
    """Reads a header of an ASGI scope for the propagator (traceparent, tracestate)."""

    def get(self, carrier: MutableMapping[str, Any], key: str) -> list[str] | None:
        name = key.lower().encode()
        values = [value.decode("latin-1") for header, value in carrier["headers"] if header == name]
        return values or None

    def keys(self, carrier: MutableMapping[str, Any]) -> list[str]:
        return [header.decode("latin-1") for header, _ in carrier["headers"]]


_HEADERS = _Headers()


class Tracing:
    """ASGI middleware around RequestContext: one server span per request, named by its route's template,
    with the request id (which RequestContext sets, in this same task's context) and the status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"]}
        parent = propagate.extract(scope, getter=_HEADERS)
        with _tracer.start_as_current_span(
            method, context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            status = 500

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                span.set_attribute("baywheels.request_id", REQUEST_ID.get() or "")
                route = scope.get("route")
                if isinstance(route, Route):
                    span.update_name(f"{method} {route.path}")
                    span.set_attribute("http.route", route.path)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)


def _span_name(query: str) -> str:
    name = db.query_name(query)
    if name != "other":
        return name
    words = query.split(None, 1)  # BEGIN, COMMIT, ROLLBACK, a migration's first word
    return words[0].rstrip(";").upper() if words else "other"


def _attributes(name: str) -> dict[str, str]:
    return {"db.system.name": "postgresql", "db.query.summary": name}


class TracedConnection(db.TimedConnection):
    """TimedConnection with a client span around each statement, a child of whatever span is current."""

    __slots__ = ()

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        name = _span_name(query)
        with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=_attributes(name)):
            return await super().execute(query, *args, **kwargs)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        name = _span_name(query)
        with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=_attributes(name)):
            return await super().fetch(query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        name = _span_name(query)
        with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=_attributes(name)):
            return await super().fetchrow(query, *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        name = _span_name(query)
        with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=_attributes(name)):
            return await super().fetchval(query, *args, **kwargs)
