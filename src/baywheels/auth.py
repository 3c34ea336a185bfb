"""Who is calling, and whether they may: API keys the service issues, OIDC tokens for people, ADMIN_API_KEY;
roles per endpoint (declared beside each handler, enforced in ``Endpoint._serve``), rate limits, and a worker
key's binding to its worker_id.

An API key reads ``bw_<key id>_<secret><checksum>``: the prefix lets secret scanners find a leaked key, the
key id (12 base62 characters) is its public name and primary key, the secret is 32 base62 characters (190
random bits) and the checksum the CRC32 of the rest (6 base62 characters), so a mistyped key is refused
without a lookup, as GitHub's tokens are. Only the SHA-256 digest is stored and compared (in constant time).

Checking a known caller costs a dict lookup: each process caches what it verified for
AUTH_CACHE_SECONDS, renewed in the background in its last quarter (all the keys a process uses in one
statement), so in the steady state no request waits for the database; a revoked or expired key is refused by
every instance within that time (expiry at once: it is in the cache)."""

import asyncio
import hashlib
import hmac
import secrets
import string
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

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
# What the guard caches verdicts under: a bearer request's raw Authorization header (bytes), or a console
# session's key id as ("session", key_id), which no header can be.
Credential = bytes | tuple[str, str]


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
    return worker_for(principal(request), named)


def worker_for(caller: Principal, named: object) -> str:
    """``acting_worker`` for a caller already admitted."""
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
    """A cached outcome: the caller, or why the token is refused; fresh until ``until`` (time.monotonic).
    ``key_id`` and ``digest`` are set for an API key the database vouched for: the verdicts renewed in
    batches."""

    until: float
    caller: Principal | None
    refusal: str = ""
    key_id: str | None = None
    digest: bytes = b""


class Guard:
    """Admits a request to an endpoint: authentication (cached), the rate limit, the role.

    API keys are looked up in batches: a request whose key is not cached queues it for the next statement (one
    at a time per process), and the keys used since the last renewal are renewed together, when the first of
    them enters the last quarter of its time. So a process with 256 keys in steady use runs one lookup every
    few seconds, not one per key."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self._settings = settings
        self._pool = pool
        self._on = settings.auth_on
        self._ttl = settings.auth_cache_seconds
        self._admin = None if settings.admin_api_key is None else digest(settings.admin_api_key)
        self._oidc = Oidc(settings) if settings.oidc_issuer else None
        self._limiter = RateLimiter(settings)
        self._shared_limits = self._limiter.shared
        # All keyed by Credential: the raw Authorization header, or a console session's key.
        self._cache: dict[Credential, _Verdict] = {}
        self._lookups: dict[Credential, asyncio.Future[_Verdict]] = {}  # a verdict on its way
        # API keys for the next statement: key id, and the digest of the token presented.
        self._queued: dict[Credential, tuple[str, bytes]] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._used: set[Credential] = set()  # API keys used since the last renewal began
        self._long_polls: Counter[str] = Counter()

    async def admit(self, scope: Scope, endpoint: "Endpoint") -> Principal:
        """The caller of the request, if the endpoint admits it (recorded as ``scope["auth"]``); else the
        401, 403 or 429. From the scope, so that the direct path (direct.py) needs no Request object."""
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

    async def _authenticate(self, scope: Scope, credential: bytes | None) -> Principal:
        try:
            return await self._verify(credential)
        except Unauthorized:
            # Counted per client IP, so guessing keys is slow; the 401 itself when within the limit.
            client = scope.get("client")
            ip = client[0] if isinstance(client, tuple) else "unknown"
            if self._shared_limits:
                await self._limiter.check_shared("anonymous", str(ip))
            else:
                self._limiter.check("anonymous", str(ip))
            raise

    async def _verify(self, credential: bytes | None) -> Principal:
        if credential is None:
            raise Unauthorized("Missing credentials: send Authorization: Bearer <API key or token>")
        found = self._cached(credential)
        # Shielded: a request that goes away does not take the lookup others wait for with it.
        verdict = found if isinstance(found, _Verdict) else await asyncio.shield(found)
        caller = verdict.caller
        if caller is None:
            raise Unauthorized(verdict.refusal)
        if caller.expires_at is not None and caller.expires_at <= time.time():
            raise Unauthorized("Credential expired")
        return caller

    def _cached(self, credential: Credential) -> "_Verdict | asyncio.Future[_Verdict]":
        """The cached verdict on a credential (a bearer header, or a console session's key id), else the
        lookup that will give it."""
        verdict = self._cache.get(credential)
        now = time.monotonic()
        if verdict is None or verdict.until <= now:
            pending = self._lookups.get(credential)
            if pending is not None:
                return pending
            if isinstance(credential, tuple):  # a console session's key: its token was checked at sign-in
                return self._queue(credential, credential[1], b"")
            return self._look_up(credential)
        if verdict.key_id is not None:
            self._used.add(credential)
            if verdict.until - now < self._ttl / 4 and credential not in self._lookups:
                # In the last quarter of its time: renewed in the background while this request goes on, so
                # a key in steady use never makes a request wait for the database (nor is trusted longer).
                self._renew()
        return verdict

    def _look_up(self, credential: bytes) -> "asyncio.Future[_Verdict]":
        """Start judging a credential; its verdict goes into the cache when it comes, whoever waits for it."""
        scheme, _, token = credential.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            refused = asyncio.get_running_loop().create_future()
            refused.set_result(_Verdict(0.0, None, "Authorization must be: Bearer <API key or token>"))
            return refused
        hashed = digest(token)
        if token.startswith(PREFIX) and not self._is_admin(hashed):
            key_id = key_id_of(token)
            if key_id is not None:
                return self._queue(credential, key_id, hashed)
        pending = self._lookups[credential] = asyncio.ensure_future(self._judge(hashed, token))
        pending.add_done_callback(lambda done: self._judged(credential, done))
        return pending

    def _judged(self, credential: Credential, done: "asyncio.Future[_Verdict]") -> None:
        self._lookups.pop(credential, None)
        # exception() retrieves it: the requests that waited (if any still do) raise it.
        if not done.cancelled() and done.exception() is None:
            self._remember(credential, done.result())

    def _remember(self, credential: Credential, verdict: _Verdict) -> None:
        if not verdict.until:
            return  # refused at sight (malformed): nothing worth keeping
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[credential] = verdict

    def _is_admin(self, hashed: bytes) -> bool:
        return self._admin is not None and hmac.compare_digest(hashed, self._admin)

    async def _judge(self, hashed: bytes, token: str) -> _Verdict:
        """A token that is not a well-formed API key: ADMIN_API_KEY, an OIDC token, or nothing we know."""
        until = time.monotonic() + self._ttl
        if self._is_admin(hashed):
            return _Verdict(until, Principal(actor=ADMIN_ACTOR, role="admin"))
        if token.startswith(PREFIX):
            # No lookup, and not cached: a mistyped key costs nothing but this check.
            return _Verdict(0.0, None, "Malformed API key (its checksum does not match)")
        if self._oidc is not None and token.count(".") == 2:
            try:
                subject, role, expires_at = await self._oidc.verify(token)
            except InvalidToken as exc:
                return _Verdict(until, None, str(exc))
            return _Verdict(until, Principal(actor=f"oidc:{subject}", role=role, expires_at=expires_at))
        return _Verdict(until, None, "Unknown credential")

    # API keys, in batches

    def _queue(self, credential: Credential, key_id: str, hashed: bytes) -> "asyncio.Future[_Verdict]":
        pending = self._lookups[credential] = asyncio.get_running_loop().create_future()
        self._queued[credential] = (key_id, hashed)
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush())
        return pending

    def _renew(self) -> None:
        """Queue the API keys used since the last renewal; the rest run out and are looked up on next use."""
        used, self._used = self._used, set()
        for credential in used:
            verdict = self._cache.get(credential)
            if verdict is not None and verdict.key_id is not None and credential not in self._lookups:
                self._queue(credential, verdict.key_id, verdict.digest)

    async def _flush(self) -> None:
        """Look up the queued keys, one statement at a time, until none is queued."""
        try:
            while self._queued:
                batch, self._queued = self._queued, {}
                until = time.monotonic() + self._ttl
                key_ids = list({key_id for key_id, _ in batch.values()})
                try:
                    records = await queries.api_key_authenticate(self._pool, key_ids)
                except BaseException as exc:
                    # The requests waiting raise it; a renewal's verdict stays cached to run out.
                    for credential in batch:
                        self._settle(credential, None, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                found = {record.key_id: record for record in records}
                for credential, (key_id, hashed) in batch.items():
                    self._settle(credential, _key_verdict(until, hashed, found.get(key_id)), None)
        finally:
            self._flushing = None
            for credential in self._queued:  # only when cancelled (shutdown): nobody is left waiting forever
                self._settle(credential, None, asyncio.CancelledError())
            self._queued.clear()

    def _settle(self, credential: Credential, verdict: _Verdict | None, exc: BaseException | None) -> None:
        pending = self._lookups.pop(credential, None)
        if verdict is not None:
            self._remember(credential, verdict)
        if pending is None or pending.done():
            return
        if verdict is not None:
            pending.set_result(verdict)
        elif isinstance(exc, asyncio.CancelledError):
            pending.cancel()
        else:
            pending.set_exception(exc or RuntimeError("lookup failed"))
            pending.exception()  # retrieved: a renewal nobody awaits must not log "never retrieved"

    # Console sessions

    async def key_holder(self, key_id: str) -> Principal | None:
        """Who API key ``key_id`` stands for now (None: unknown, revoked or expired), for a console session
        signed in with it, through the same cache and batches as a bearer key: revoking the key ends its
        sessions on every instance within AUTH_CACHE_SECONDS, its expiry at once. Not on the bearer path: a
        session is a cookie's, checked in the console."""
        found = self._cached(("session", key_id))
        verdict = found if isinstance(found, _Verdict) else await asyncio.shield(found)
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


def _key_verdict(until: float, hashed: bytes, record: queries.KeyRecord | None) -> _Verdict:
    """``hashed``: the digest of the token presented, which must be the key's; empty for a console session's
    key, whose token was checked at sign-in."""
    if record is None or (hashed and not hmac.compare_digest(bytes(record.digest), hashed)):
        return _Verdict(until, None, "Unknown API key")
    if record.revoked_at is not None:
        return _Verdict(until, None, "API key revoked")
    expires = None if record.expires_at is None else record.expires_at.timestamp()
    caller = Principal(actor=record.key_id, role=record.role, worker_id=record.worker_id, expires_at=expires)
    return _Verdict(until, caller, key_id=record.key_id, digest=hashed)


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
