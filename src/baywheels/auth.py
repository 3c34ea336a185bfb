"""Who is calling, and whether they may: API keys the service issues, OIDC tokens for people, ADMIN_API_KEY;
roles per endpoint (declared beside each handler, enforced in ``Endpoint._serve``), rate limits, and a worker
key's binding to its worker_id.

An API key reads ``bw_<key id>_<secret><checksum>``: the prefix lets secret scanners find a leaked key, the
key id (12 base62 characters) is its public name and primary key, the secret is 32 base62 characters (190
random bits) and the checksum the CRC32 of the rest (6 base62 characters), so a mistyped key is refused
without a lookup, as GitHub's tokens are. Only the SHA-256 digest is stored and compared (in constant time).

Checking a key costs a digest and a dict lookup: each process caches what it verified for
AUTH_CACHE_SECONDS, renewed in the background in its last quarter, so in the steady state no request waits
for the database; a revoked or expired key is refused by every instance within that time (expiry at once: it
is in the cache)."""

import asyncio
import hashlib
import hmac
import secrets
import string
import time
import zlib
from collections import Counter
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from starlette.requests import Request
from starlette.types import Scope

from . import queries
from .errors import BadRequest, Forbidden, TooManyRequests, Unauthorized
from .models import ROLES, ApiKey, Role
from .oidc import InvalidToken, Oidc
from .ratelimit import RateLimiter
from .requests import header
from .settings import Settings

if TYPE_CHECKING:
    from .endpoints import Endpoint

log = structlog.get_logger(__name__)

PREFIX = "bw_"
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_KEY_ID_LENGTH = 12
_SECRET_LENGTH = 32
_CHECKSUM_LENGTH = 6
_KEY_LENGTH = len(PREFIX) + _KEY_ID_LENGTH + 1 + _SECRET_LENGTH + _CHECKSUM_LENGTH
_BASE62_SET = frozenset(_BASE62)
# Most entries in a process's cache of verified tokens; beyond it the cache starts afresh.
_CACHE_MAX = 100_000

ADMIN_ACTOR = "env:ADMIN_API_KEY"
# The cache key of a console session's API key (beside the digests of tokens).
_SESSION_KEY = b"session-key:"


# The key format --------------------------------------------------------------------------------------------


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LENGTH)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    token: str  # shown once, never stored
    digest: bytes


def new_key() -> NewKey:
    key_id = "".join(secrets.choice(_BASE62) for _ in range(_KEY_ID_LENGTH))
    secret = "".join(secrets.choice(_BASE62) for _ in range(_SECRET_LENGTH))
    body = f"{PREFIX}{key_id}_{secret}"
    token = body + _checksum(body)
    return NewKey(key_id, token, digest(token))


def key_id_of(token: str) -> str | None:
    """The key id of a well-formed key whose checksum matches; None for anything else."""
    if (
        len(token) != _KEY_LENGTH
        or not token.startswith(PREFIX)
        or token[len(PREFIX) + _KEY_ID_LENGTH] != "_"
    ):
        return None
    body, checksum = token[:-_CHECKSUM_LENGTH], token[-_CHECKSUM_LENGTH:]
    key_id = token[len(PREFIX) : len(PREFIX) + _KEY_ID_LENGTH]
    secret = body[len(PREFIX) + _KEY_ID_LENGTH + 1 :]
    if not _BASE62_SET.issuperset(key_id + secret + checksum):
        return None
    return key_id if hmac.compare_digest(checksum, _checksum(body)) else None


# Who is calling --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request: ``actor`` is what task events and keys record (a key id, ``oidc:<subject>``,
    ``env:ADMIN_API_KEY``, ``anonymous`` with AUTH=off); ``role`` None for a person's token without a role we
    know; ``worker_id`` the one a worker key belongs to."""

    actor: str
    role: Role | None
    worker_id: str | None = None
    expires_at: float | None = None  # Unix time


ANONYMOUS = Principal(actor="anonymous", role="admin")


def principal(request: Request) -> Principal:
    """The caller, as the endpoint's guard admitted it."""
    found: Principal = request.scope["auth"]
    return found


def acting_worker(request: Request, named: object) -> str:
    """The worker a holder's call or a dispatch is for: a worker key's own (naming another is refused before
    anything else), else the body's ``worker_id``, which is then required."""
    caller = principal(request)
    if caller.worker_id is not None:
        if isinstance(named, str) and named != caller.worker_id:
            raise Forbidden(f"This key belongs to worker '{caller.worker_id}': it cannot act for another")
        return caller.worker_id
    if not isinstance(named, str):
        raise BadRequest("Object missing required field `worker_id`")  # as msgspec says it
    return named


def bound_worker(request: Request) -> str | None:
    """The worker_id the caller is bound to (a worker key), whose tasks alone it may see."""
    return principal(request).worker_id


# The guard -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Verdict:
    """A cached outcome: the caller, or why the token is refused; fresh until ``until`` (time.monotonic)."""

    until: float
    caller: Principal | None
    refusal: str = ""


class Guard:
    """Admits a request to an endpoint: authentication (cached), the rate limit, the role."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self._settings = settings
        self._pool = pool
        self._on = settings.auth_on
        self._ttl = settings.auth_cache_seconds
        self._admin = None if settings.admin_api_key is None else digest(settings.admin_api_key)
        self._oidc = Oidc(settings) if settings.oidc_issuer else None
        self._limiter = RateLimiter(settings)
        self._shared_limits = self._limiter.shared
        self._cache: dict[bytes, _Verdict] = {}
        self._lookups: dict[bytes, asyncio.Future[_Verdict]] = {}
        self._long_polls: Counter[str] = Counter()

    async def admit(self, request: Request, endpoint: "Endpoint") -> Principal:
        scope = request.scope
        if not self._on:
            scope["auth"] = ANONYMOUS
            return ANONYMOUS
        authorization = header(scope, b"authorization")
        caller = await self._authenticate(scope, authorization)
        kind = caller.role or "anonymous"
        if self._shared_limits:
            await self._limiter.check_shared(kind, caller.actor)
        else:
            self._limiter.check(kind, caller.actor)
        assert endpoint.roles is not None
        if caller.role not in endpoint.roles:
            yours = f"a {caller.role} key" if caller.role else "a token without a known role"
            raise Forbidden(f"Needs the role {_either(endpoint.roles)}; the request carries {yours}")
        scope["auth"] = caller
        return caller

    async def _authenticate(self, scope: Scope, header: bytes | None) -> Principal:
        try:
            return await self._verify(header)
        except Unauthorized:
            # Counted per client IP, so guessing keys is slow; the 401 itself when within the limit.
            client = scope.get("client")
            ip = client[0] if isinstance(client, tuple) else "unknown"
            if self._shared_limits:
                await self._limiter.check_shared("anonymous", str(ip))
            else:
                self._limiter.check("anonymous", str(ip))
            raise

    async def _verify(self, header: bytes | None) -> Principal:
        if header is None:
            raise Unauthorized("Missing credentials: send Authorization: Bearer <API key or token>")
        scheme, _, token = header.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Authorization must be: Bearer <API key or token>")
        hashed = digest(token)
        verdict = self._cache.get(hashed)
        now = time.monotonic()
        if verdict is None or verdict.until <= now:
            verdict = await self._lookup(hashed, token)
        elif verdict.until - now < self._ttl / 4 and hashed not in self._lookups:
            # In the last quarter of its time: renewed in the background while this request goes on, so a key
            # in steady use never makes a request wait for the database (nor is trusted longer).
            self._look_up(hashed, self._judge(hashed, token))
        caller = verdict.caller
        if caller is None:
            raise Unauthorized(verdict.refusal)
        if caller.expires_at is not None and caller.expires_at <= time.time():
            raise Unauthorized("Credential expired")
        return caller

    async def _lookup(self, hashed: bytes, token: str) -> _Verdict:
        # One lookup per token at a time: requests arriving meanwhile share its outcome.
        return await asyncio.shield(
            self._lookups.get(hashed) or self._look_up(hashed, self._judge(hashed, token))
        )

    def _look_up(self, hashed: bytes, judging: Coroutine[Any, Any, _Verdict]) -> "asyncio.Future[_Verdict]":
        """Start judging a token; its verdict goes into the cache when it comes, whoever waits for it."""
        pending = self._lookups[hashed] = asyncio.ensure_future(judging)
        pending.add_done_callback(lambda done: self._looked_up(hashed, done))
        return pending

    def _looked_up(self, hashed: bytes, done: "asyncio.Future[_Verdict]") -> None:
        self._lookups.pop(hashed, None)
        # exception() retrieves it: the requests that waited (if any still do) raise it. A failed renewal
        # leaves the cached verdict to run out; the next request after it looks up itself.
        if done.cancelled() or done.exception() is not None:
            return
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[hashed] = done.result()

    async def _judge(self, hashed: bytes, token: str) -> _Verdict:
        until = time.monotonic() + self._ttl
        if self._admin is not None and hmac.compare_digest(hashed, self._admin):
            return _Verdict(until, Principal(actor=ADMIN_ACTOR, role="admin"))
        if token.startswith(PREFIX):
            key_id = key_id_of(token)
            if key_id is None:
                # No lookup, and not cached: a mistyped key costs nothing but this check.
                return _Verdict(0.0, None, "Malformed API key (its checksum does not match)")
            return await self._judge_key(key_id, hashed, until)
        if self._oidc is not None and token.count(".") == 2:
            try:
                subject, role, expires_at = await self._oidc.verify(token)
            except InvalidToken as exc:
                return _Verdict(until, None, str(exc))
            return _Verdict(until, Principal(actor=f"oidc:{subject}", role=role, expires_at=expires_at))
        return _Verdict(until, None, "Unknown credential")

    async def _judge_key(self, key_id: str, hashed: bytes | None, until: float) -> _Verdict:
        """An API key's verdict; ``hashed``, the digest of the token presented, must match the key's (None:
        a console session's key, whose token was checked at sign-in)."""
        record = await queries.api_key_authenticate(self._pool, key_id)
        if record is None or (hashed is not None and not hmac.compare_digest(bytes(record.digest), hashed)):
            return _Verdict(until, None, "Unknown API key")
        if record.revoked_at is not None:
            return _Verdict(until, None, "API key revoked")
        expires = None if record.expires_at is None else record.expires_at.timestamp()
        caller = Principal(
            actor=record.key_id, role=record.role, worker_id=record.worker_id, expires_at=expires
        )
        return _Verdict(until, caller)

    async def key_holder(self, key_id: str) -> Principal | None:
        """Who API key ``key_id`` stands for now (None: unknown, revoked or expired), for a console session
        signed in with it, through the same cache as a bearer key: revoking the key ends its sessions on every
        instance within AUTH_CACHE_SECONDS, its expiry at once. Not on the bearer path: a session is a
        cookie's, checked in the console."""
        cached = _SESSION_KEY + key_id.encode()  # never 32 bytes long, so never a token's digest
        verdict = self._cache.get(cached)
        now = time.monotonic()
        if verdict is None or verdict.until <= now:
            pending = self._lookups.get(cached) or self._look_up(
                cached, self._judge_key(key_id, None, now + self._ttl)
            )
            verdict = await asyncio.shield(pending)
        elif verdict.until - now < self._ttl / 4 and cached not in self._lookups:
            self._look_up(cached, self._judge_key(key_id, None, now + self._ttl))
        caller = verdict.caller
        if caller is None or (caller.expires_at is not None and caller.expires_at <= time.time()):
            return None
        return caller

    async def token_holder(self, scope: Scope, token: str) -> Principal:
        """Who a token stands for (the console's sign-in form), judged as a bearer request's, a refusal
        counted against the client's IP as a bearer request's: Unauthorized, or TooManyRequests."""
        return await self._authenticate(scope, b"Bearer " + token.encode("latin-1", "replace"))

    @contextmanager
    def long_poll(self, caller: Principal) -> Iterator[None]:
        """A waiting dispatch of a worker key: at most MAX_LONG_POLLS_PER_KEY at once in this process."""
        if caller.worker_id is None or not self._on:
            yield
            return
        actor = caller.actor
        if self._long_polls[actor] >= self._settings.max_long_polls_per_key:
            raise TooManyRequests(
                f"This key already has {self._settings.max_long_polls_per_key} waiting dispatches",
                {"Retry-After": "1"},
            )
        self._long_polls[actor] += 1
        try:
            yield
        finally:
            self._long_polls[actor] -= 1
            if not self._long_polls[actor]:
                del self._long_polls[actor]


def _either(roles: frozenset[Role]) -> str:
    names = [role for role in ROLES if role in roles]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


# Keys, for the CLI, the HTTP endpoints and the bootstrap ---------------------------------------------------


async def create_key(
    conn: queries.Conn,
    role: Role,
    worker_id: str | None,
    name: str | None,
    expires_at: datetime | None,
    created_by: str,
) -> tuple[NewKey, ApiKey]:
    key = new_key()
    record = await queries.api_key_create(
        conn, key.key_id, key.digest, role, worker_id, name, expires_at, created_by
    )
    return key, record
