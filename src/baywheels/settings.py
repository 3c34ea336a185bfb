"""Configuration: environment variables (and an optional ``.env`` file), read once into a typed object."""

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import limits
import msgspec
from msgspec import Meta
from starlette.config import Config


class SettingsError(Exception):
    """An invalid setting; the message names the variable."""


Seconds = Annotated[float, Meta(gt=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]
PoolSize = Annotated[int, Meta(ge=0, le=1000)]
DatabaseUrl = Annotated[str, Meta(pattern="^postgres(ql)?://", description="postgresql://user:pass@host/db")]
# `limits` notation: "100/second", "20/second;600/minute".
RateLimit = Annotated[str, Meta(min_length=1, max_length=200)]
# Never echoed in an error, a log line or anywhere else.
SECRETS = frozenset(
    {"database_url", "direct_database_url", "read_database_url", "admin_api_key", "oidc_client_secret"}
)


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Each field is read from the upper-case environment variable of the same name."""

    # Unset: `serve` starts an embedded PostgreSQL under DATA_DIR.
    database_url: DatabaseUrl | None = None
    host: str = "127.0.0.1"
    port: Port = 8000
    data_dir: str = ".data"
    pool_min_size: PoolSize = 2
    pool_max_size: Annotated[int, Meta(ge=1, le=1000)] = 20
    # How long a request waits for a free connection before it answers 503.
    pool_acquire_timeout: Seconds = 5.0
    db_command_timeout: Seconds = 30.0
    db_connect_timeout: Seconds = 5.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Unset: readable lines (`console`) when stderr is a terminal, one JSON object per line otherwise.
    log_format: Literal["json", "console"] | None = None
    access_log: bool = True
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 10 * 1024 * 1024
    # Most header lines in one request; more get 431.
    max_header_count: Annotated[int, Meta(ge=8, le=10_000)] = 100
    # Most bytes in a request's head (request line and headers); more get 431.
    max_header_bytes: Annotated[int, Meta(ge=1024, le=16 * 1024 * 1024)] = 32 * 1024
    # Seconds from a connection's start (or a request's first byte) to the end of its headers; then 408.
    request_header_timeout: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    # Seconds from the end of the headers to the end of the body; then 408.
    request_body_timeout: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    # Open connections per process; a request on one more gets 503 (and fewer if open files are short).
    max_connections: Annotated[int, Meta(ge=1, le=1_000_000)] = 4096
    # Seconds a client is told to wait (Retry-After) when the database is unavailable.
    retry_after: Annotated[int, Meta(ge=1, le=3600)] = 2
    # Lease of a dispatched task unless the request asks for its own.
    task_lease_seconds: Annotated[int, Meta(ge=1, le=86400)] = 1800
    # First retry delay after a failed attempt; doubles per attempt, capped at an hour. 0 retries at once.
    task_retry_backoff_seconds: Annotated[float, Meta(ge=0, le=3600)] = 30.0
    # Attempts (failures and expired leases) before a task is dead-lettered as 'failed'.
    task_max_attempts: Annotated[int, Meta(ge=1, le=1000)] = 5
    # How often the maintenance loop (one instance at a time) rescues expired leases and wakes waiters for
    # due tasks. The name is the reaper's, which that loop replaced.
    reaper_interval_seconds: Annotated[float, Meta(ge=0.01, le=60)] = 1.0
    # After an outage, leases that ran out during it are rescued only after a grace as long as the outage,
    # at most this long, so holders' retried completes land. 0: rescued at once.
    lease_grace_max_seconds: Annotated[float, Meta(ge=0, le=86400)] = 300.0
    # Seconds a pending suggestion may go without being posted again before the maintenance loop expires it
    # (recorded as outcome `expired`). Unset: suggestions never expire.
    suggestion_ttl: Annotated[float, Meta(gt=0, le=10 * 365 * 86400)] | None = None
    # Seconds between heartbeat comments (`: ping`) on an idle GET /events stream, so proxies keep it open.
    events_heartbeat_seconds: Annotated[float, Meta(gt=0, le=3600)] = 15.0
    # Dispatch statements in flight at once per process; requests beyond them are coalesced into one
    # statement of up to DISPATCH_BATCH_MAX workers.
    dispatch_concurrency: Annotated[int, Meta(ge=1, le=64)] = 4
    dispatch_batch_max: Annotated[int, Meta(ge=1, le=1000)] = 128
    # Location-aware dispatch: tasks whose pickup station is farther than this from the van are not offered to
    # it (unset: no limit).
    dispatch_max_km: Annotated[float, Meta(gt=0, le=20_000)] | None = None
    # A station that is the pickup or drop-off of an assigned task is not handed to another van meanwhile.
    one_van_per_station: bool = True
    # POST /dispatch/next served by the HTTP protocol itself rather than through the ASGI app (direct.py): the
    # same answers, with less work per request. Off (false) only to compare, or to rule it out.
    direct_dispatch: bool = True
    # Aging: +1 effective priority per this many minutes a task is ready (0: off), at most PRIORITY_AGING_MAX.
    priority_aging_minutes: Annotated[float, Meta(ge=0, le=525_600)] = 30.0
    priority_aging_max: Annotated[int, Meta(ge=0, le=1000)] = 5
    # uvicorn worker processes of `serve`. Each has its own pool (POOL_MAX_SIZE), dispatcher and LISTEN
    # connection, and a maintenance loop (only one leads); /metrics adds up all of them.
    workers: Annotated[int, Meta(ge=1, le=64)] = 1

    # Deployment: several instances, PgBouncer, graceful shutdown (docs/operations.md).
    # A session-level connection (straight to PostgreSQL) for the LISTEN connection and the maintenance loop's
    # advisory lock, which do not work through a transaction pooler. Setting it says DATABASE_URL is such a
    # pooler (PgBouncer, pool_mode = transaction): the pool then prepares no named statements.
    direct_database_url: DatabaseUrl | None = None
    # Seconds from SIGTERM to exit: waiting long-polls are answered at once, requests in flight get this long
    # less a reserve for closing the pool (a quarter of it, 1 to 5 s).
    shutdown_grace_seconds: Annotated[int, Meta(ge=2, le=3600)] = 20
    # Finished tasks (completed, canceled, failed) and their events are deleted this many days after they
    # finished, by the maintenance loop in batches. Unset: kept forever.
    retention_days: Annotated[float, Meta(gt=0, le=36500)] | None = None
    # Reads of lists and history (GET /tasks, /suggestions, /task/{id}/events) go to this hot standby; the
    # rest, and every read that must see the caller's own write, stays on DATABASE_URL. Unset: one pool.
    read_database_url: DatabaseUrl | None = None
    # Who may call what (README, "Who may do what"). Off only explicitly: local experiments, the benchmark.
    auth: Literal["on", "off"] = "on"
    # Accepted as an admin's credential whenever set (compose, a Kubernetes secret).
    admin_api_key: Annotated[str, Meta(min_length=32, max_length=1024, pattern="^[\x21-\x7e]+$")] | None = (
        None
    )
    # Seconds a verified key stays cached in a process: revocation and expiry reach every instance within it
    # plus one lookup (the README promises 5 s).
    auth_cache_seconds: Annotated[float, Meta(ge=0, le=4)] = 4.0
    # OIDC for people: tokens from this issuer (its discovery document names the JWKS), for this audience,
    # their role in this claim (a dotted path such as realm_access.roles reaches into an object).
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    # A JWKS file instead of the issuer's (air-gapped sites); OIDC_ISSUER still names the expected `iss`.
    oidc_jwks_file: str | None = None
    oidc_role_claim: Annotated[str, Meta(min_length=1, max_length=200)] = "roles"
    # The console's SSO sign-in (authorization code with PKCE) as this client of OIDC_ISSUER; its secret for
    # a confidential client (a public client has none). The redirect URI to register:
    # <console URL>/ui/sso/callback.
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    # Requests per key by role, and per client IP for requests without a valid token (401s included). The
    # defaults are far above a worker's long-poll and heartbeat rhythm and the ML engine's batches.
    rate_limit_worker: RateLimit = "50/second"
    rate_limit_ml: RateLimit = "20/second"
    rate_limit_operator: RateLimit = "50/second"
    rate_limit_viewer: RateLimit = "50/second"
    rate_limit_metrics: RateLimit = "5/second"
    rate_limit_admin: RateLimit = "100/second"
    rate_limit_anonymous: RateLimit = "20/second"
    # fixed-window (cheapest: a counter per key and window; a burst may reach twice the rate across a window's
    # edge), sliding-window-counter (smoother, about twice the cost) or moving-window (exact, a timestamp per
    # request: the costliest with many keys).
    rate_limit_strategy: Literal["fixed-window", "sliding-window-counter", "moving-window"] = "fixed-window"
    # memory:// (each process counts alone) or redis://host:port/db (instances share one budget).
    rate_limit_storage: Annotated[str, Meta(pattern="^(memory://|rediss?://)")] = "memory://"
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's setting): comma-separated IPs
    # or networks, "*" for any.
    forwarded_allow_ips: str = "127.0.0.1"
    # Waiting (long-poll) dispatches a worker key may have at once in one process; more get 429.
    max_long_polls_per_key: Annotated[int, Meta(ge=1, le=1000)] = 2
    # GET /metrics without a key (a Prometheus inside a trusted network).
    metrics_public: bool = False
    # Origins a browser may call from (comma-separated), for a dashboard served elsewhere. Empty: none.
    cors_origins: str = ""
    # Stations (README, "Stations"): a GBFS feed's gbfs.json, imported at start-up (readiness waits for it)
    # and kept current by the maintenance loop's leader, honouring each file's ttl with conditional GETs.
    gbfs_url: Annotated[str, Meta(pattern="^https?://")] | None = None
    # The feed is read again no sooner than this after the last read, whatever its ttl says (a ttl of 0).
    gbfs_refresh_min_seconds: Annotated[float, Meta(ge=0.1, le=86400)] = 15.0
    # Each HTTP request to the feed gives up after this long (the import is refused, tried again later).
    gbfs_timeout_seconds: Annotated[float, Meta(gt=0, le=300)] = 10.0
    # OpenTelemetry: set, requests and their SQL statements are traced to this OTLP/HTTP collector (the other
    # OTEL_* variables are read by the OpenTelemetry SDK). Unset: tracing is off and costs nothing.
    otel_exporter_otlp_endpoint: str | None = None
    # The console (/ui): how long a signed-in session lasts (never past its key's or token's expiry).
    console_session_seconds: Annotated[int, Meta(ge=60, le=30 * 86400)] = 8 * 3600
    # Map tiles behind the console's map, an XYZ template such as https://tile.example/{z}/{x}/{y}.png. Unset:
    # a plain background (offline).
    map_tile_url: Annotated[str, Meta(pattern="^https?://.*\\{z\\}.*\\{x\\}.*\\{y\\}")] | None = None
    # TLS terminated by the service itself; both or neither.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    def __post_init__(self) -> None:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("POOL_MIN_SIZE must not exceed POOL_MAX_SIZE")
        if self.dispatch_concurrency >= self.pool_max_size:
            raise ValueError(
                "DISPATCH_CONCURRENCY must be below POOL_MAX_SIZE, leaving connections for the rest"
            )
        for role in ("worker", "ml", "operator", "viewer", "metrics", "admin", "anonymous"):
            value = getattr(self, f"rate_limit_{role}")
            try:
                limits.parse_many(value)
            except ValueError:
                raise ValueError(
                    f"RATE_LIMIT_{role.upper()}={value!r} is not a rate such as 100/second or "
                    "20/second;600/minute"
                ) from None
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE go together")
        if self.oidc_jwks_file is not None and self.oidc_issuer is None:
            raise ValueError("OIDC_JWKS_FILE needs OIDC_ISSUER, the issuer its tokens must name")
        if self.oidc_client_id is not None and self.oidc_issuer is None:
            raise ValueError("OIDC_CLIENT_ID needs OIDC_ISSUER, the provider the console signs in through")
        if self.oidc_issuer is not None and self.oidc_audience is None:
            raise ValueError("OIDC_ISSUER needs OIDC_AUDIENCE, the audience its tokens must name")

    @property
    def auth_on(self) -> bool:
        return self.auth == "on"

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def behind_pooler(self) -> bool:
        """DATABASE_URL is a transaction pooler: see ``direct_database_url``."""
        return self.direct_database_url is not None

    @property
    def tracing_on(self) -> bool:
        return self.otel_exporter_otlp_endpoint is not None

    @property
    def shutdown_cleanup_seconds(self) -> int:
        """The part of SHUTDOWN_GRACE_SECONDS kept for the lifespan's end (statements, then the pool)."""
        return max(1, min(5, self.shutdown_grace_seconds // 4))

    @property
    def safe_database_url(self) -> str:
        """The DSN with any password replaced, for logs."""
        return "embedded" if self.database_url is None else _masked(self.database_url)

    @property
    def safe_read_database_url(self) -> str | None:
        return None if self.read_database_url is None else _masked(self.read_database_url)


def _masked(dsn: str) -> str:
    masked = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    # libpq and asyncpg also take the password as a query parameter.
    return re.sub(r"([?&]password=)[^&]*", r"\1***", masked)


def load(environ: Mapping[str, str] | None = None, env_file: str | Path = ".env") -> Settings:
    """Environment variables win over the ``.env`` file; unknown variables are ignored."""
    environ = os.environ if environ is None else environ
    file_values = Config(env_file).file_values if Path(env_file).is_file() else {}
    raw: dict[str, object] = {}
    for field in Settings.__struct_fields__:
        value = environ.get(field.upper(), file_values.get(field.upper()))
        if value is not None and value != "":
            raw[field] = value
    return _settings(raw)


def override(settings: Settings, **values: object) -> Settings:
    """``settings`` with the given fields replaced (the CLI's options), validated like the environment."""
    given = {name: value for name, value in values.items() if value is not None}
    return _settings({**msgspec.structs.asdict(settings), **given}) if given else settings


def _settings(raw: dict[str, object]) -> Settings:
    try:
        # strict=False parses "8000" as an int and "true"/"false" as a bool.
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = re.search(r" - at `\$\.(\w+)`$", message)
        if match:
            name = match[1].upper()
            message = message[: match.start()]
            if name in ("DATABASE_URL", "DIRECT_DATABASE_URL", "READ_DATABASE_URL"):  # may carry a password
                raise SettingsError(f"invalid {name}: not a postgresql:// or postgres:// URL") from None
            if name == "DATABASE_URL":  # may carry a password: never echoed
                raise SettingsError("invalid DATABASE_URL: not a postgresql:// or postgres:// URL") from None
            if match[1] in SECRETS:
                raise SettingsError(f"invalid {name}: {message}") from None
            raise SettingsError(f"invalid {name}={raw.get(match[1])!r}: {message}") from None
        raise SettingsError(f"invalid settings: {message}") from None
