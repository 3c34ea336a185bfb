"""What every client shares: one httpx connection pool, a request id per call, retries with backoff that
honour ``Retry-After``, errors as exceptions, and answers decoded into the service's own Structs."""

import asyncio
import functools
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Self, TypeVar, cast

import httpx
import msgspec

from .errors import ConnectionFailed, api_error

T = TypeVar("T")

# Statuses that mean "not now": the service is saturated or its database is away; the call did not happen.
RETRY_STATUSES = frozenset({429, 503})
# Transport errors raised before a byte of the request left: resending cannot repeat it.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True, slots=True)
class Retry:
    """How a call is tried again after 429, 503 or a transport error.

    The n-th retry waits a random time between half and all of ``backoff * 2**n`` (so a crowd of clients
    does not come back in step), and never less than ``Retry-After`` when the answer has one (plus up to a
    fifth, for the same reason); no wait is longer than ``max_delay``."""

    attempts: int = 6  # in all, the first one included
    backoff: float = 0.2
    max_delay: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, compare=False)

    def delay(self, retry: int, retry_after: float | None) -> float:
        ceiling = min(self.max_delay, self.backoff * 2**retry)
        wait = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, retry_after * random.uniform(1.0, 1.2))
        return min(wait, self.max_delay)


DEFAULT_RETRY = Retry()
NO_RETRY = Retry(attempts=1)


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def new_request_id() -> str:
    return secrets.token_hex(8)


class BaseClient:
    """One role's view of the service at ``base_url``. ``key`` is sent as ``Authorization: Bearer <key>``
    (None: no header). Pass ``http`` to share one connection pool between clients (it is then the caller's
    to close); otherwise the client opens its own and ``aclose`` (or ``async with``) closes it."""

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        retry: Retry = DEFAULT_RETRY,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_policy = retry
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json"}
        if key is not None:
            self._headers["Authorization"] = f"Bearer {key}"
        self._owns_http = http is None
        self.http = http if http is not None else httpx.AsyncClient()

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def call(
        self,
        method: str,
        path: str,
        answer: type[T],
        *,
        body: object = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        resend: bool = True,
        request_timeout: float | None = None,
        retry: Retry | None = None,
    ) -> T:
        """One call, tried again as ``retry`` says: after 429 or 503 always (the service did nothing), after
        a transport error only if ``resend`` (the call is safe to repeat) or nothing was sent."""
        retry = retry or self.retry_policy
        content = None if body is None else msgspec.json.encode(body)
        request_id = new_request_id()
        all_headers = {**self._headers, **(headers or {})}
        for attempt in range(retry.attempts):
            # One id per call, numbered per attempt, so the service's log ties a call's attempts together.
            sent_id = request_id if attempt == 0 else f"{request_id}.{attempt + 1}"
            last = attempt == retry.attempts - 1
            try:
                response = await self.http.request(
                    method,
                    self.base_url + path,
                    content=content,
                    params=params,
                    headers={**all_headers, "X-Request-ID": sent_id},
                    timeout=request_timeout or self.timeout,
                )
            except httpx.TransportError as exc:
                if last or not (resend or isinstance(exc, NOT_SENT)):
                    raise ConnectionFailed(f"{method} {path}: {exc!r}", sent_id) from exc
                await retry.sleep(retry.delay(attempt, None))
                continue
            if response.status_code < 400:
                return decode(response.content, answer)
            if response.status_code in RETRY_STATUSES and not last:
                await retry.sleep(retry.delay(attempt, retry_after(response.headers)))
                continue
            raise api_error(response.status_code, response.content, sent_id)
        raise AssertionError("unreachable")  # pragma: no cover


def decode(data: bytes, answer: type[T]) -> T:
    """The answer as the service's Struct. Fields this client does not know (from a newer service) are
    dropped first: the Structs forbid unknown fields, which is right for requests, not for answers."""
    if answer is type(None):
        return None  # type: ignore[return-value,unused-ignore]
    prune = _pruner(cast(Any, answer))
    return msgspec.convert(prune(msgspec.json.decode(data)), answer)


Pruner = Callable[[Any], Any]


@functools.cache
def _pruner(answer: Any) -> Pruner:
    return _prune_for(msgspec.inspect.type_info(answer))


def _prune_for(info: msgspec.inspect.Type) -> Pruner:
    if isinstance(info, msgspec.inspect.StructType):
        known = {f.encode_name: _prune_for(f.type) for f in info.fields}

        def prune_struct(value: Any) -> Any:
            if not isinstance(value, dict):
                return value
            return {k: known[k](v) for k, v in value.items() if k in known}

        return prune_struct
    if isinstance(info, msgspec.inspect.ListType):
        item = _prune_for(info.item_type)

        def prune_list(value: Any) -> Any:
            return [item(v) for v in value] if isinstance(value, list) else value

        return prune_list
    if isinstance(info, msgspec.inspect.UnionType):
        structs = [
            t for t in info.types if isinstance(t, msgspec.inspect.StructType | msgspec.inspect.ListType)
        ]
        if len(structs) == 1:
            return _prune_for(structs[0])
    return _identity


def _identity(value: Any) -> Any:
    return value
