"""What a load run returns, and the arithmetic on latencies."""

import math
from collections.abc import Mapping, Sequence

import msgspec


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Microseconds."""

    mean: float = 0
    p50: float = 0
    p95: float = 0
    p99: float = 0
    max: float = 0


class LoadResult(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON that wrk.lua's done() and the asyncio client write."""

    requests: int
    duration_s: float
    statuses: dict[str, int]
    errors: dict[str, int]
    latency_us: Latency

    def count(self, status: int) -> int:
        return self.statuses.get(str(status), 0)

    @property
    def failures(self) -> int:
        """Answers other than 200, and socket errors (connect, read, write, timeout)."""
        return self.requests - self.count(200) + sum(self.errors.values())

    def rate(self, status: int = 200) -> float:
        return self.count(status) / self.duration_s if self.duration_s else 0.0


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest rank of an ascending sequence."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def latency(seconds: Sequence[float]) -> Latency:
    ordered = sorted(seconds)
    if not ordered:
        return Latency()
    us = 1e6
    return Latency(
        mean=sum(ordered) / len(ordered) * us,
        p50=percentile(ordered, 50) * us,
        p95=percentile(ordered, 95) * us,
        p99=percentile(ordered, 99) * us,
        max=ordered[-1] * us,
    )


def summarize(
    seconds: Sequence[float], statuses: Mapping[str, int], errors: Mapping[str, int], elapsed: float
) -> LoadResult:
    return LoadResult(
        requests=len(seconds),
        duration_s=elapsed,
        statuses=dict(statuses),
        errors={key: errors.get(key, 0) for key in ("connect", "read", "write", "timeout")},
        latency_us=latency(seconds),
    )
