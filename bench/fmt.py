"""Figures in words, for the progress lines and the table."""

from .stats import Latency


def num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def ms(latency: Latency) -> str:
    """p50 / p95 / p99 / max in milliseconds."""
    parts = (latency.p50, latency.p95, latency.p99, latency.max)
    return " / ".join(f"{us / 1000:.1f}" for us in parts)


def ratio(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"


def times(value: float | None) -> str:
    """A ratio as a multiple (issue 11 states its targets as "1.10 x the minimal app")."""
    return "-" if value is None else f"{value:.2f} x"


def mb(size: float) -> str:
    return f"{size / 2**20:.0f} MB"


def cpu_text(shares: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.0f}%" for name, value in shares.items())
