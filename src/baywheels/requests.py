"""Request helpers shared by the handlers: the pool, body and query decoding, path ids."""

import re
from typing import Any, TypeVar

import asyncpg
import msgspec
from starlette.convertors import Convertor
from starlette.requests import Request
from starlette.types import Scope

from .errors import BadRequest, NotFound
from .models import INT64_MAX
from .state import app_state

T = TypeVar("T")

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}

# msgspec's error for a float where an integer (or an optional one) is due.
_INT_GOT_FLOAT = re.compile(r"Expected `(int|int \| null)`, got `float`")


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's raw value (``name`` in lower case), without building a Headers object."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def pool(request: Request) -> asyncpg.Pool:
    """The pool opened by the lifespan."""
    return app_state(request).pool


def read_pool(request: Request) -> asyncpg.Pool:
    """For list and history reads, which may lag the caller's own writes: the read replica's pool when
    READ_DATABASE_URL is set, else the same pool."""
    return app_state(request).read_pool


def _decoder(type_: type[T]) -> msgspec.json.Decoder[T]:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    return decoder


def _decode(raw: bytes, type_: type[T]) -> T:
    try:
        return _decoder(type_).decode(raw)
    except UnicodeDecodeError:
        # msgspec decodes each string as it meets it and lets the codec's error through.
        raise BadRequest(f"JSON is malformed: invalid UTF-8 (byte {_first_bad_byte(raw)})") from None
    except msgspec.ValidationError as exc:
        if not _INT_GOT_FLOAT.match(str(exc)):
            raise
    # JSON Schema's integer includes 8414.0, so we take it too (but not 8414.5). Only a body that failed on a
    # float takes this slower path; the typed decoder above stays the fast one.
    return msgspec.convert(_integral_floats_as_ints(msgspec.json.decode(raw)), type_)


def _first_bad_byte(raw: bytes) -> int:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return 0  # not reached: the decoder found one


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    return value


async def body(request: Request, type_: type[T]) -> T:
    """Decode and validate the JSON body; msgspec's error names the offending field (400)."""
    return decode_body(await request.body(), type_, required=True)


async def optional_body(request: Request, type_: type[T]) -> T:
    """Like ``body``, but an empty body means the type's defaults."""
    return decode_body(await request.body(), type_, required=False)


def decode_body(raw: bytes, type_: type[T], *, required: bool) -> T:
    """A body already read (``body``, ``optional_body``, and direct.py's)."""
    return _decode(raw if required or raw.strip() else b"{}", type_)


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
