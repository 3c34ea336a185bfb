"""The one table printed at the end, and the figures in words."""

from collections.abc import Sequence
from dataclasses import dataclass, field

from .stats import Latency


def num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def ms(latency: Latency) -> str:
    """p50 / p95 / p99 / max in milliseconds."""
    parts = (latency.p50, latency.p95, latency.p99, latency.max)
    return " / ".join(f"{us / 1000:.1f}" for us in parts)


def ratio(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"


def mb(size: float) -> str:
    return f"{size / 2**20:.0f} MB"


@dataclass
class Table:
    """Rows of a figure and its values per column; a row with one value spans the columns, a row with a
    name only is a section heading."""

    columns: Sequence[str]
    rows: list[tuple[str, list[str]]] = field(default_factory=list)

    def add(self, figure: str, *values: str) -> None:
        self.rows.append((figure, list(values)))

    def section(self, title: str) -> None:
        self.rows.append((title, []))

    def render(self) -> str:
        multi = [values for _, values in self.rows if len(values) > 1]
        widths = [
            max([len(column)] + [len(values[i]) for values in multi if i < len(values)])
            for i, column in enumerate(self.columns)
        ]
        label = max(len(figure) for figure, values in self.rows if values) + 4
        lines = ["".ljust(label) + "  ".join(c.rjust(w) for c, w in zip(self.columns, widths, strict=True))]
        lines.append("-" * len(lines[0]))
        for figure, values in self.rows:
            if not values:
                lines.append(f"{figure}")
            elif len(values) == 1:
                lines.append(f"  {figure}".ljust(label) + values[0])
            else:
                cells = [v.rjust(w) for v, w in zip(values, widths, strict=False)]
                lines.append(f"  {figure}".ljust(label) + "  ".join(cells))
        return "\n".join(lines)
