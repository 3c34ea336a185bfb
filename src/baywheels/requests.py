"""Request helpers shared by the handlers: the pool, body and query decoding, path ids."""

from typing import Any, TypeVar, cast

import asyncpg
import msgspec
from starlette.requests import Request

from .errors import NotFound
from .models import INT64_MAX
from .state import app_state

T = TypeVar("T")

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def pool(request: Request) -> asyncpg.Pool:
    """The pool opened by the lifespan."""
    return app_state(request).pool


def _decoder(type_: type[T]) -> msgspec.json.Decoder[T]:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    return decoder


async def body(request: Request, type_: type[T]) -> T:
    """Decode and validate the JSON body; msgspec's error names the offending field (400)."""
    return _decoder(type_).decode(await request.body())


async def optional_body(request: Request, type_: type[T]) -> T:
    """Like ``body``, but an empty body means the type's defaults."""
    raw = await request.body()
    return _decoder(type_).decode(raw if raw.strip() else b"{}")


def query(request: Request, type_: type[T]) -> T:
    """Query parameters into a Struct; strings convert to ints, unknown parameters are refused (400)."""
    return msgspec.convert(dict(request.query_params), type_, strict=False)


def path_id(request: Request, name: str, kind: str) -> int:
    """An integer path parameter; beyond bigint it names nothing, so 404 rather than a database error."""
    value = cast(int, request.path_params[name])
    if not 1 <= value <= INT64_MAX:
        raise NotFound(f"{kind} with id {value} not found")
    return value
