"""Request helpers shared by the handlers: the pool, body and query decoding, path ids."""

from typing import Any, TypeVar

import asyncpg
import msgspec
from starlette.convertors import Convertor
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


class IdConvertor(Convertor[str]):
    """The digits of a path id, left as text. Starlette's ``int`` convertor calls int() while routing, which
    raises beyond Python's 4,300-digit limit (a 500); ``path_id`` makes any such id a 404 instead."""

    regex = "[0-9]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


_INT64_DIGITS = len(str(INT64_MAX))
_SHOWN_DIGITS = 40


def path_id(request: Request, name: str, kind: str) -> int:
    """A path id (`{name:id}`); beyond bigint it names nothing, so 404 rather than a database error."""
    digits: str = request.path_params[name].lstrip("0") or "0"
    if len(digits) <= _INT64_DIGITS and 1 <= (value := int(digits)) <= INT64_MAX:
        return value
    shown = digits if len(digits) <= _SHOWN_DIGITS else f"{digits[:20]}... ({len(digits)} digits)"
    raise NotFound(f"{kind} with id {shown} not found")
