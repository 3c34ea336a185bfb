"""OpenAPI 3.1 built from the endpoints the handlers declare and the msgspec Structs, and the pages that
render it (Swagger UI and ReDoc, served from the drf-spectacular-sidecar package: no CDN, works offline)."""

import functools
import importlib.util
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .endpoints import PATH_PARAM, Endpoint
from .handlers import ENDPOINTS
from .models import ROLES, Error

_STATUS_TEXT = {
    400: "Invalid request: the detail names the field",
    404: "Not found",
    408: "The body did not arrive within REQUEST_BODY_TIMEOUT",
    409: "Conflicts with the task's current state",
    413: "Request body too large",
    503: "Database unavailable; retry after Retry-After seconds",
    401: "Missing, malformed, unknown, expired or revoked credentials (`WWW-Authenticate: Bearer`)",
    403: "The credential's role may not do this: the detail names the role that may",
    429: "Over the caller's rate limit (`Retry-After`, `RateLimit-Limit`, `RateLimit-Remaining`, "
    "`RateLimit-Reset`)",
}

# The roles table of the README, for the document's description.
_ROLES_TABLE = """| role | may |
| --- | --- |
| `worker` | dispatch; heartbeat, pickup, complete, release, fail **its own** tasks; read its own tasks |
| `ml` | post and list suggestions |
| `operator` | what `ml` and `viewer` may, and approve, cancel, retry |
| `viewer` | read suggestions, tasks, events, metrics |
| `metrics` | `GET /metrics` only |
| `admin` | everything: dispatch and a holder's calls for any worker (naming `worker_id`), and keys |"""

_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "An API key (`bw_...`, from `baywheels keys create` or `POST /keys`) or an OIDC access token "
            "from the organisation's identity provider."
        ),
    }
}


def assets_dir() -> Path:
    # find_spec locates the package without importing it (its __init__ imports Django, which we never need).
    spec = importlib.util.find_spec("drf_spectacular_sidecar")
    assert spec is not None
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "static" / "drf_spectacular_sidecar"


def _operation(endpoint: Endpoint, schema: dict[str, Any], query: dict[str, Any] | None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "operationId": endpoint.operation_id,
        "tags": [endpoint.tag],
    }
    description = endpoint.description
    if endpoint.roles is None:
        operation["security"] = []
    else:
        roles = [role for role in ROLES if role in endpoint.roles]
        operation["security"] = [{"bearer": []}]
        operation["x-roles"] = roles
        who = "Roles: " + ", ".join(f"`{role}`" for role in roles) + "."
        description = f"{description}\n\n{who}" if description else who
    if description:
        operation["description"] = description
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _path_schema(endpoint, name)}
        for name in endpoint.path_params
    ]
    if query is not None:
        required = set(query.get("required", ()))
        parameters += [
            {"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in query["properties"].items()
        ]
    parameters += [
        {
            "name": name,
            "in": "header",
            "required": False,
            "description": description,
            "schema": {"type": "string", "pattern": pattern},
        }
        for name, pattern, description in endpoint.headers
    ]
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": endpoint.body_required,
            "content": {"application/json": {"schema": schema["body"]}},
        }
    success: dict[str, Any] = {"description": "Success"}
    if endpoint.response is not None:
        success["content"] = {endpoint.media_type: {"schema": schema["response"]}}
    responses: dict[str, Any] = {str(endpoint.status): success}
    error_ref = {"$ref": "#/components/schemas/Error"}
    for status in endpoint.errors:
        responses[str(status)] = {
            "description": _STATUS_TEXT[status],
            "content": {"application/json": {"schema": error_ref}},
        }
    operation["responses"] = responses
    return operation


def _path_schema(endpoint: Endpoint, name: str) -> dict[str, Any]:
    if f"{{{name}:id}}" in endpoint.path:
        return {"type": "integer", "minimum": 1}
    return {"type": "string", "minLength": 1}


def build() -> dict[str, Any]:
    types: list[Any] = [Error]
    for endpoint in ENDPOINTS:
        types += [endpoint.body or Error, endpoint.response or Error]
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    # Query Structs become parameters, not schemas.
    query_types = {e.query for e in ENDPOINTS if e.query is not None}
    query_schemas = {t: msgspec.json.schema(t) for t in query_types}
    query_props = {t: s["$defs"][t.__name__] for t, s in query_schemas.items()}

    paths: dict[str, dict[str, Any]] = {}
    for index, endpoint in enumerate(ENDPOINTS):
        schema = {"body": schemas[1 + 2 * index], "response": schemas[2 + 2 * index]}
        query = query_props[endpoint.query] if endpoint.query is not None else None
        path = PATH_PARAM.sub(r"{\1}", endpoint.path)
        paths.setdefault(path, {})[endpoint.method.lower()] = _operation(endpoint, schema, query)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Bay Wheels Orchestration & Dispatch Service",
            "version": "0.1.0",
            "description": (
                "Rebalancing suggestions from the ML engine, approved by operators into tasks that field "
                'workers take and complete. Every error body is `{"detail": "..."}`.\n\n'
                "Every operation but the banner, the probes and these docs needs `Authorization: Bearer "
                "<token>` (the Authorize button): an API key or an OIDC token, whose role decides what it "
                "may do. A worker's key acts for its own `worker_id` only.\n\n" + _ROLES_TABLE
            ),
        },
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES},
    }


_SWAGGER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Bay Wheels dispatch API</title>
<link rel="stylesheet" href="/static/docs/swagger-ui-dist/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static/docs/swagger-ui-dist/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>"""

# persistAuthorization: the key given to "Authorize" survives a reload (in the page's local storage).
_SWAGGER_INIT = (
    b"window.ui = SwaggerUIBundle("
    b"""{url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, persistAuthorization: true});"""
)

# The docs pages load only our own files; the inline styles are Swagger UI's and ReDoc's, ReDoc's worker a
# blob. No framing (clickjacking), no sniffing, no referrer to other sites.
DOCS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

_REDOC_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Bay Wheels dispatch API</title></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="/static/docs/redoc/bundles/redoc.standalone.js"></script></body></html>"""


async def openapi_json(request: Request) -> Response:
    return Response(encoded(), media_type="application/json")


async def swagger_ui(request: Request) -> Response:
    return HTMLResponse(_SWAGGER_PAGE, headers=DOCS_HEADERS)


async def swagger_init(request: Request) -> Response:
    return Response(_SWAGGER_INIT, media_type="text/javascript", headers=DOCS_HEADERS)


async def redoc(request: Request) -> Response:
    return HTMLResponse(_REDOC_PAGE, headers=DOCS_HEADERS)


@functools.cache
def encoded() -> bytes:
    return msgspec.json.encode(build())
