"""OpenTelemetry traces of a real `baywheels serve`, sent over OTLP/HTTP to a receiver of the test's own (a
small HTTP server that keeps each protobuf post), decoded with opentelemetry-proto: a request's span carries
its request id and has its SQL statements as children, named by their queries; the log lines written in it
carry its trace id. And with OTEL_EXPORTER_OTLP_ENDPOINT unset, nothing of OpenTelemetry is even imported."""

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from conftest import LiveServer
from helpers import make_tasks, until

REQUEST_ID = "trace-me-0001"


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: every span posted to /v1/traces, with the service.name it came under."""

    url: str
    spans: list[Span] = field(default_factory=list)
    services: set[str] = field(default_factory=set)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self, path: str, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            self.paths.append(path)
            for resource_spans in request.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.services.add(attribute.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)

    def named(self, name: str) -> list[Span]:
        with self.lock:
            return [span for span in self.spans if span.name == name]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            found.received(self.path, body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found = Receiver(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


def attributes(span: Span) -> dict[str, object]:
    values: dict[str, object] = {}
    for attribute in span.attributes:
        value = attribute.value
        values[attribute.key] = value.int_value if value.HasField("int_value") else value.string_value
    return values


async def test_a_request_span_with_its_sql_statements_and_request_id(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # the batch processor's pause between exports, in ms
        "LOG_FORMAT": "json",
        "ACCESS_LOG": "true",
    }
    server = LiveServer(database_url, env=env, log_path=tmp_path / "serve.log")
    server.start()
    try:
        async with server.client() as client:
            await make_tasks(client, 1)
            response = await client.post(
                "/dispatch/next", json={"worker_id": "van-7"}, headers={"X-Request-ID": REQUEST_ID}
            )
            assert response.status_code == 200

            async def exported() -> bool:
                return any(
                    attributes(span).get("baywheels.request_id") == REQUEST_ID
                    for span in receiver.named("POST /dispatch/next")
                )

            await until(exported)
        log = server.log_path.read_text() if server.log_path else ""
    finally:
        server.stop()

    assert set(receiver.paths) == {"/v1/traces"}
    assert receiver.services == {"baywheels"}
    [request] = [
        span
        for span in receiver.named("POST /dispatch/next")
        if attributes(span).get("baywheels.request_id") == REQUEST_ID
    ]
    assert request.kind == Span.SPAN_KIND_SERVER
    assert attributes(request)["url.path"] == "/dispatch/next"
    assert attributes(request)["http.route"] == "/dispatch/next"
    assert attributes(request)["http.response.status_code"] == 200
    children = [span for span in receiver.spans if span.parent_span_id == request.span_id]
    assert [span.name for span in children] == ["task_dispatch"]
    [statement] = children
    assert statement.trace_id == request.trace_id
    assert statement.kind == Span.SPAN_KIND_CLIENT
    assert attributes(statement) == {"db.system.name": "postgresql", "db.query.summary": "task_dispatch"}
    assert request.start_time_unix_nano <= statement.start_time_unix_nano
    assert statement.end_time_unix_nano <= request.end_time_unix_nano

    # Every request got its span, each statement of the approvals its own child span.
    approvals = receiver.named("POST /tasks/approve")
    assert len(approvals) == 1
    steps = sorted(
        (s for s in receiver.spans if s.parent_span_id == approvals[0].span_id),
        key=lambda s: s.start_time_unix_nano,
    )
    assert [s.name for s in steps] == ["BEGIN", "task_approve_many", "COMMIT"]

    # The access log's line of that request names its trace and span.
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    [access] = [
        line for line in lines if line.get("event") == "request" and line.get("request_id") == REQUEST_ID
    ]
    assert access["trace_id"] == request.trace_id.hex()
    assert access["span_id"] == request.span_id.hex()


def test_off_imports_no_opentelemetry(database_url: str) -> None:
    """Unset, the app, its pool class and its logs are built without importing OpenTelemetry at all."""
    program = (
        "import sys, msgspec\n"
        "from baywheels import app, db, logs, settings\n"
        "s = msgspec.structs.replace(settings.load({}), database_url=sys.argv[1])\n"
        "logs.configure('info', 'json', trace_ids=s.tracing_on)\n"
        "app.create_app(s)\n"
        "assert db.connection_class(s) is db.TimedConnection\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", program, database_url], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "[]"
