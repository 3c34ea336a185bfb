"""Endpoints, declared by each resource's module beside their handlers (``handlers/*.py``); Starlette's routes
and the OpenAPI document are both built from them, so the docs cannot drift from the code.

A handler's signature says what it takes: a parameter named ``body`` is the JSON body and one named ``query``
the query string, each decoded to the parameter's type before the handler runs. So the type the document
names is, by construction, the type the handler gets. The errors that every endpoint of a kind can give
follow from what it takes (``errors``); each declares only its own.

Each declares who may call it: ``roles`` (the roles whose keys or tokens may), or ``public=True``. One of them
is required, so an endpoint cannot be added without a rule; ``_serve`` enforces it (auth.Guard) before the
body is read, and the role matrix test is generated from these declarations."""

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar, Unpack

from starlette._utils import get_route_path
from starlette.convertors import register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import Receive, Scope, Send

from . import requests
from .models import Role
from .state import app_state

Handler = Callable[..., Awaitable[Response]]
H = TypeVar("H", bound=Handler)
# (name, pattern, description) of a request header the handler reads.
Header = tuple[str, str, str]

PATH_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")
_DECODED = ("body", "query")

# `{task_id:id}`: digits of any length, turned into a database id (or a 404) by requests.path_id.
register_url_convertor("id", requests.IdConvertor())


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    tag: str
    summary: str
    response: Any
    body: Any = None
    body_required: bool = True
    query: Any = None
    status: int = 200
    own_errors: tuple[int, ...] = ()
    database: bool = True
    description: str = ""
    headers: tuple[Header, ...] = ()
    # Who may call it; None: anyone, without a token.
    roles: frozenset[Role] | None = None
    # A boolean setting that, when true, makes the endpoint public (METRICS_PUBLIC).
    public_setting: str | None = None
    media_type: str = "application/json"

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    @property
    def path_params(self) -> list[str]:
        return PATH_PARAM.findall(self.path)

    @property
    def errors(self) -> tuple[int, ...]:
        """Every error status it can answer with: the common ones, derived, and its own."""
        common = {
            400: self.body is not None or self.query is not None,
            404: bool(self.path_params),
            408: self.body is not None,
            413: self.body is not None,
            503: self.database,
            401: self.roles is not None,
            403: self.roles is not None,
            429: self.roles is not None,
        }
        return tuple(sorted({status for status, applies in common.items() if applies} | set(self.own_errors)))

    def route(self) -> Route:
        return Route(self.path, self._serve(), methods=[self.method], name=self.operation_id)

    def _serve(self) -> Callable[[Request], Awaitable[Response]]:
        """The route's endpoint: who may call it checked (before the body is read), then the handler, with
        its body and query decoded. Built once per kind of handler, so that a request pays for no more than
        its handler takes."""
        handler, body_type, query_type = self.handler, self.body, self.query
        decode = requests.body if self.body_required else requests.optional_body
        serve: Callable[[Request], Awaitable[Response]]
        if body_type is not None and query_type is not None:

            async def serve(request: Request) -> Response:
                decoded = await decode(request, body_type)
                return await handler(request, body=decoded, query=requests.query(request, query_type))

        elif body_type is not None:

            async def serve(request: Request) -> Response:
                return await handler(request, await decode(request, body_type))

        elif query_type is not None:

            async def serve(request: Request) -> Response:
                return await handler(request, query=requests.query(request, query_type))

        else:
            serve = handler
        if self.roles is None:
            return serve
        endpoint, public_setting, admitted = self, self.public_setting, serve

        async def guarded(request: Request) -> Response:
            state = app_state(request)
            if public_setting is None or not getattr(state.settings, public_setting):
                await state.guard.admit(request.scope, endpoint)
            return await admitted(request)

        return guarded


class Options(TypedDict, total=False):
    status: int
    errors: tuple[int, ...]
    body_required: bool
    database: bool
    description: str
    headers: tuple[Header, ...]
    roles: tuple[Role, ...]
    public: bool
    public_setting: str
    media_type: str


class Endpoints:
    """The endpoints of one resource module, in the order it declares them."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._endpoints: list[Endpoint] = []

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._endpoints)

    def get(self, path: str, summary: str, response: Any, **options: Unpack[Options]) -> Callable[[H], H]:
        return self._declare("GET", path, summary, response, options)

    def post(self, path: str, summary: str, response: Any, **options: Unpack[Options]) -> Callable[[H], H]:
        return self._declare("POST", path, summary, response, options)

    def delete(self, path: str, summary: str, response: Any, **options: Unpack[Options]) -> Callable[[H], H]:
        return self._declare("DELETE", path, summary, response, options)

    def put(self, path: str, summary: str, response: Any, **options: Unpack[Options]) -> Callable[[H], H]:
        return self._declare("PUT", path, summary, response, options)

    def _declare(
        self, method: str, path: str, summary: str, response: Any, options: Options
    ) -> Callable[[H], H]:
        def declare(handler: H) -> H:
            decoded = decoded_types(handler)
            public = options.get("public", False)
            roles = options.get("roles")
            if public == (roles is not None):
                raise TypeError(
                    f"{handler.__qualname__}: declare who may call it, roles=(...) or public=True"
                )
            self._endpoints.append(
                Endpoint(
                    method,
                    path,
                    handler,
                    self.tag,
                    summary,
                    response,
                    body=decoded.get("body"),
                    body_required=options.get("body_required", True),
                    query=decoded.get("query"),
                    status=options.get("status", 200),
                    own_errors=options.get("errors", ()),
                    database=options.get("database", True),
                    description=options.get("description", ""),
                    headers=options.get("headers", ()),
                    roles=None if roles is None else frozenset(roles),
                    public_setting=options.get("public_setting"),
                    media_type=options.get("media_type", "application/json"),
                )
            )
            return handler

        return declare


def decoded_types(handler: Handler) -> dict[str, Any]:
    """What the handler takes besides the request: {"body": type, "query": type}, from its annotations."""
    names = list(inspect.signature(handler).parameters)
    if names[:1] != ["request"] or not set(names[1:]) <= set(_DECODED):
        raise TypeError(f"{handler.__qualname__} must take (request[, body][, query]), not {names}")
    hints = typing.get_type_hints(handler, include_extras=True)
    return {name: hints[name] for name in names[1:]}


class FixedPathsFirst(Router):
    """Starlette's router, but a route with a fixed path (``/dispatch/next``, ``/healthz``) is found by one
    dictionary lookup. Starlette tries each route's pattern in turn, about a microsecond each: with 17
    routes ahead of it, that was a third of the cost of ``GET /healthz``. Anything else (a path with an id,
    a 405, a 404) goes Starlette's way."""

    def __init__(self, routes: list[BaseRoute], **options: Any) -> None:
        super().__init__(routes, **options)
        self.fixed = {
            (method, route.path): route
            for route in routes
            if isinstance(route, Route) and not route.param_convertors
            for method in route.methods or ()
        }

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self.fixed.get((scope["method"], get_route_path(scope)))
            if route is not None:
                scope.setdefault("router", self)
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = scope.get("path_params", {})
                await route.handle(scope, receive, send)
                return
        await super().app(scope, receive, send)
