"""Rate limits per caller, with the `limits` library (RATE_LIMIT_STRATEGY, a fixed window by default): per key
(by role) and per client IP for requests without a valid token. Counters live in this process (memory://,
checked synchronously: no await) or in Redis (redis://, shared by every instance).

In this process a fixed window is counted here, in a dict (``FixedWindows``): `limits`' MemoryStorage counts
behind a lock per key and starts a thread every 10 ms to expire its counters, and in an asyncio server that
thread's share of the GIL took dispatch at 64 workers from 3,080/s without auth to 2,184/s with it
(docs/benchmarks.md). The other strategies, and Redis, are `limits`' own."""

import math
import time

import limits
import limits.aio.storage
import limits.aio.strategies
import limits.storage
import limits.strategies
import structlog

from .errors import TooManyRequests
from .settings import Settings

log = structlog.get_logger(__name__)

# Who is counted under which setting: the roles, and "anonymous" for requests without a valid token.
KINDS = ("worker", "ml", "operator", "viewer", "metrics", "admin", "anonymous")
# While Redis is unreachable requests go through (a rate limit is not worth an outage), logged this seldom.
_WARN_EVERY = 10.0


class FixedWindows:
    """limits' fixed window, counted in a dict: a caller's window starts at its first request and lasts the
    item's period; every request in it counts, refused ones too (as limits' FixedWindowRateLimiter)."""

    # Callers whose window has ended are forgotten once there are this many, at most once a second.
    PRUNE_ABOVE = 4096

    def __init__(self) -> None:
        self._windows: dict[tuple[str, int, str], tuple[float, int]] = {}  # -> (window's end, count)
        self._prune_at = 0.0

    def hit(
        self, item: limits.RateLimitItem, kind: str, index: int, identity: str
    ) -> tuple[bool, float, int]:
        """(allowed, the window's end in epoch seconds, requests remaining in it)."""
        now = time.time()
        key = (kind, index, identity)
        end, count = self._windows.get(key, (0.0, 0))
        if now >= end:
            end, count = now + item.get_expiry(), 0
        count += 1
        self._windows[key] = (end, count)
        if len(self._windows) > self.PRUNE_ABOVE and now >= self._prune_at:
            self._prune_at = now + 1
            self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
        return count <= item.amount, end, item.amount - count


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self._items = {kind: limits.parse_many(getattr(settings, f"rate_limit_{kind}")) for kind in KINDS}
        self._windows: FixedWindows | None = None
        self._memory: limits.strategies.RateLimiter | None = None
        self._redis: limits.aio.strategies.RateLimiter | None = None
        if settings.rate_limit_storage.startswith("memory://"):
            if settings.rate_limit_strategy == "fixed-window":
                self._windows = FixedWindows()
            else:
                strategy = limits.strategies.STRATEGIES[settings.rate_limit_strategy]
                self._memory = strategy(limits.storage.MemoryStorage())
        else:
            storage = limits.storage.storage_from_string(
                f"async+{settings.rate_limit_storage}", implementation="redispy", key_prefix="baywheels"
            )
            assert isinstance(storage, limits.aio.storage.Storage)
            # mypy reads the aio table's values as the abstract base; each is a concrete strategy.
            self._redis = limits.aio.strategies.STRATEGIES[settings.rate_limit_strategy](storage)  # type: ignore[abstract]
        self._warned_at = -_WARN_EVERY

    @property
    def shared(self) -> bool:
        return self._redis is not None

    def check(self, kind: str, identity: str) -> None:
        """Count one request of ``identity`` (memory storage); raises TooManyRequests over the limit."""
        if self._windows is not None:
            for index, item in enumerate(self._items[kind]):
                allowed, end, remaining = self._windows.hit(item, kind, index, identity)
                if not allowed:
                    raise _refusal(item, end, remaining)
            return
        assert self._memory is not None
        for item in self._items[kind]:
            if not self._memory.hit(item, kind, identity):
                reset, remaining = self._memory.get_window_stats(item, kind, identity)
                raise _refusal(item, reset, remaining)

    async def check_shared(self, kind: str, identity: str) -> None:
        """As ``check``, counted in Redis."""
        assert self._redis is not None
        try:
            for item in self._items[kind]:
                if not await self._redis.hit(item, kind, identity):
                    reset, remaining = await self._redis.get_window_stats(item, kind, identity)
                    raise _refusal(item, reset, remaining)
        except TooManyRequests:
            raise
        except Exception as exc:
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY:
                self._warned_at = now
                log.warning("rate_limit_storage_unavailable", error=type(exc).__name__)


def _refusal(item: limits.RateLimitItem, reset: float, remaining: int) -> TooManyRequests:
    wait = max(1, math.ceil(reset - time.time()))
    headers = {
        "Retry-After": str(wait),
        "RateLimit-Limit": str(item.amount),
        "RateLimit-Remaining": str(max(0, remaining)),
        "RateLimit-Reset": str(wait),
    }
    return TooManyRequests(f"Rate limit exceeded: {item}; retry after {wait} s", headers)
