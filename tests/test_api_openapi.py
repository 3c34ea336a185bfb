"""/openapi.json describes every route the handlers declare, with the body types they decode and the errors
they can give, and the docs pages render from local files only."""

import re
import typing
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from baywheels import settings
from baywheels.app import create_app
from baywheels.endpoints import Endpoints
from baywheels.handlers import ENDPOINTS, console
from baywheels.models import Task
from helpers import TASK_KEYS, json_of

PATH_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")
# Served, but not part of the API the document describes: the docs, and the console's HTML pages for people
# (their routes declare their roles in handlers/console.py).
UNDOCUMENTED = {"/openapi.json", "/docs", "/docs/init.js", "/redoc", "/static/docs"} | {
    getattr(route, "path", "") for route in console.routes()
}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = json_of(response, 200)
    return document


def test_is_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["title"] == "Bay Wheels Orchestration & Dispatch Service"


def test_every_route_with_its_methods(spec: dict[str, Any]) -> None:
    expected: dict[str, set[str]] = {}
    for endpoint in ENDPOINTS:
        expected.setdefault(PATH_PARAM.sub(r"{\1}", endpoint.path), set()).add(endpoint.method.lower())
    assert {path: set(operations) for path, operations in spec["paths"].items()} == expected
    assert "/task/{task_id}/complete" in spec["paths"]  # the path parameter's converter is not shown


def test_operations_are_complete(spec: dict[str, Any]) -> None:
    operation_ids = []
    for endpoint in ENDPOINTS:
        operation = spec["paths"][PATH_PARAM.sub(r"{\1}", endpoint.path)][endpoint.method.lower()]
        operation_ids.append(operation["operationId"])
        assert operation["summary"] == endpoint.summary
        assert str(endpoint.status) in operation["responses"]
        for status in endpoint.errors:
            assert str(status) in operation["responses"], (endpoint.path, status)
            error = operation["responses"][str(status)]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/Error"}
        if endpoint.body is not None:
            assert operation["requestBody"]["required"] is endpoint.body_required
            assert operation["requestBody"]["content"]["application/json"]["schema"]
        else:
            assert "requestBody" not in operation
        path_params = [p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"]
        assert path_params == PATH_PARAM.findall(endpoint.path)
    assert len(set(operation_ids)) == len(operation_ids)


def test_every_route_is_documented(spec: dict[str, Any], service_settings: settings.Settings) -> None:
    """A route added to the app directly, bypassing the handlers' declarations, fails here."""
    served: set[tuple[str, str]] = set()
    for route in create_app(service_settings).routes:
        if isinstance(route, Mount) or getattr(route, "path", None) in UNDOCUMENTED:
            assert isinstance(route, Mount | Route)
            assert route.path in UNDOCUMENTED
            continue
        assert isinstance(route, Route), route
        path = PATH_PARAM.sub(r"{\1}", route.path)
        served |= {(path, method.lower()) for method in route.methods or () if method != "HEAD"}
    documented = {(path, method) for path, operations in spec["paths"].items() for method in operations}
    assert served == documented


def component(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A schema with its top-level $ref resolved."""
    if "$ref" in schema:
        resolved: dict[str, Any] = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return resolved
    return schema


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.operation_id)
def test_every_handler_decodes_the_body_type_the_document_names(spec: dict[str, Any], endpoint: Any) -> None:
    """Read from the handler's own signature, not from the declaration that builds the document."""
    hints = typing.get_type_hints(endpoint.handler, include_extras=True)
    operation = spec["paths"][PATH_PARAM.sub(r"{\1}", endpoint.path)][endpoint.method.lower()]
    if "body" not in hints:
        assert "requestBody" not in operation
    else:
        (expected,), components = msgspec.json.schema_components(
            [hints["body"]], ref_template="#/components/schemas/{name}"
        )
        named = operation["requestBody"]["content"]["application/json"]["schema"]
        assert named == expected
        for name, schema in components.items():
            assert spec["components"]["schemas"][name] == schema
        assert component(spec, named)  # a schema, not an empty placeholder
    query = [p["name"] for p in operation.get("parameters", ()) if p["in"] == "query"]
    assert query == list(getattr(hints.get("query"), "__struct_fields__", ()))


def test_common_errors_follow_from_what_an_endpoint_takes(spec: dict[str, Any]) -> None:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            parameters = {p["in"] for p in operation.get("parameters", ())}
            has_body = "requestBody" in operation
            assert ("400" in statuses) is (has_body or "query" in parameters or "header" in parameters), path
            assert ("413" in statuses) is has_body, (method, path)
            assert ("408" in statuses) is has_body, (method, path)
            assert ("404" in statuses) is (
                "path" in parameters or path in ("/task/approve", "/dispatch/next")
            )
            # Only the banner, the liveness probe and the metrics answer without the database.
            assert ("503" in statuses) is (path not in ("/", "/healthz", "/metrics")), (method, path)
            # Every operation that needs a credential says so, and what refusing one looks like.
            secured = operation["security"] == [{"bearer": []}]
            assert secured is (path not in ("/", "/healthz", "/readyz")), (method, path)
            assert {"401", "403", "429"} <= statuses if secured else not {"401", "403", "429"} & statuses


def test_a_handler_takes_only_what_can_be_decoded() -> None:
    endpoints = Endpoints("test")

    async def handler(request: Request, task: Task) -> Response:
        raise AssertionError

    with pytest.raises(TypeError, match=r"must take \(request\[, body\]\[, query\]\)"):
        endpoints.post("/x", "X", Task)(handler)


def test_every_ref_names_a_component(spec: dict[str, Any]) -> None:
    components = spec["components"]["schemas"]
    found = set(refs(spec))
    assert found
    assert found <= {f"#/components/schemas/{name}" for name in components}


def test_schemas_match_the_bodies(spec: dict[str, Any]) -> None:
    components = spec["components"]["schemas"]
    assert set(components["Task"]["properties"]) == TASK_KEYS
    assert components["Error"]["required"] == ["detail"]
    ingest = spec["paths"]["/suggestions"]["post"]
    assert ingest["requestBody"]["content"]["application/json"]["schema"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/SuggestionIn"},
        "minItems": 1,
        "maxItems": 10000,
    }
    assert ingest["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/IngestResult"
    }
    status = {p["name"]: p for p in spec["paths"]["/tasks"]["get"]["parameters"]}["status"]
    assert "bogus" not in str(status["schema"])
    assert "ready" in str(status["schema"])
    dispatch = spec["paths"]["/dispatch/next"]["post"]
    assert [(p["name"], p["in"], p["required"]) for p in dispatch["parameters"]] == [
        ("Idempotency-Key", "header", False)
    ]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_local_assets(client: httpx.AsyncClient, page: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "//" not in re.sub(r"<!doctype html>", "", html, flags=re.IGNORECASE)  # no CDN or other host
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(asset.startswith("/static/docs/") and asset.endswith(".js") for asset in assets)
    for asset in assets:
        loaded = await client.get(asset)
        assert loaded.status_code == 200, asset
        if asset.startswith("/static/docs/"):
            assert len(loaded.content) > 10_000, asset  # the real bundle, not a stub
    if page == "/docs":
        assert any(asset.endswith(".css") for asset in assets)


async def test_swagger_ui_reads_our_document(client: httpx.AsyncClient) -> None:
    assert '"/openapi.json"' in (await client.get("/docs/init.js")).text
    assert 'spec-url="/openapi.json"' in (await client.get("/redoc")).text
