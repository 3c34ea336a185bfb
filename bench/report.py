"""The report of a run: the one table printed at the end, and the results as the JSON keeps them, both from
the scenarios' typed results."""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from .context import Operation
from .fmt import mb, num, ratio, times
from .scenarios.auth import AuthCost
from .scenarios.dispatch import PEER_WORKERS, Ladder, PeerRun, Point
from .scenarios.history import History
from .scenarios.ingest_approve import IngestApprove
from .scenarios.location import Location, LocationPoint
from .scenarios.longpoll import Longpoll
from .scenarios.pgbouncer import PgBouncerCost
from .scenarios.sustained import Sustained

# The supply of ids ran out before the time did: the rate is a lower bound.
DRY = "   (ran dry: a lower bound)"


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


def table(levels: Sequence[int], results: Mapping[str, msgspec.Struct]) -> Table:
    """The rows of each scenario that ran, in the order they ran; a column per concurrency of the ladder."""
    out = Table([f"c={c}" for c in levels])
    for name, result in results.items():
        if name == "dispatch" and isinstance(result, Ladder):
            dispatch_rows(out, levels, result)
        elif name == "dispatch_sync_off" and isinstance(result, Ladder):
            out.section(
                "Dispatch, synchronous_commit=off (NOT of record: commits do not wait for the WAL flush)"
            )
            ladder_rows(out, levels, result, http=False)
        elif isinstance(result, Location):
            location_rows(out, levels, result)
        elif isinstance(result, IngestApprove):
            ingest_approve_rows(out, result)
        elif name == "complete" and isinstance(result, Operation):
            complete_rows(out, result)
        elif isinstance(result, Longpoll):
            longpoll_rows(out, result)
        elif isinstance(result, Sustained):
            sustained_rows(out, result)
        elif isinstance(result, AuthCost):
            auth_rows(out, result)
        elif isinstance(result, History):
            history_rows(out, result)
        elif isinstance(result, PgBouncerCost):
            pgbouncer_rows(out, result)
        else:
            raise TypeError(f"no rows for scenario {name} ({type(result).__name__})")
    return out


def entries(results: Mapping[str, msgspec.Struct]) -> dict[str, msgspec.Struct]:
    """The JSON's "results": each scenario's under its name, but ingest_approve's two as "ingest" and
    "approve"."""
    out: dict[str, msgspec.Struct] = {}
    for name, result in results.items():
        if isinstance(result, IngestApprove):
            out["ingest"], out["approve"] = result.ingest, result.approve
        else:
            out[name] = result
    return out


def dispatch_rows(table: Table, levels: Sequence[int], ladder: Ladder) -> None:
    table.section("Dispatch, synchronous_commit=on (of record)")
    ladder_rows(table, levels, ladder, http=True)
    top = max(ladder.points)
    table.add(
        f"service memory (PSS) under {top} dispatchers", mb(ladder.points[top].service.service_rss_peak)
    )


def ladder_rows(table: Table, levels: Sequence[int], ladder: Ladder, http: bool) -> None:
    points = ladder.points

    def cells(fn: Callable[[Point], str]) -> list[str]:
        return [fn(points[c]) if c in points else "-" for c in levels]

    def ceiling(p: Point) -> float:
        assert p.http is not None
        return p.http.rate

    table.add("DB ceiling: pgbench task_dispatch, tps", *cells(lambda p: num(p.db.tps)))
    if http:
        table.add("HTTP ceiling: GET /healthz, req/s", *cells(lambda p: num(ceiling(p))))
    table.add("service: POST /dispatch/next, /s", *cells(lambda p: num(p.service.rate)))
    table.add("service / DB ceiling", *cells(lambda p: ratio(p.service.rate, p.db.tps)))
    best = max(p.db.tps for p in points.values())
    table.add("service / best DB ceiling of the row", *cells(lambda p: ratio(p.service.rate, best)))
    if http:
        table.add("service / HTTP ceiling", *cells(lambda p: ratio(p.service.rate, ceiling(p))))
    peer = any(p.peer for p in points.values())
    if peer:
        table.add(
            "service / minimal app (best of 1 and 2 workers)", *cells(lambda p: times(p.service_over_peer))
        )

    def latency_ms(stat: str) -> Callable[[Point], str]:
        return lambda p: f"{getattr(p.service.latency_us, stat) / 1000:.1f}"

    for stat in ("p50", "p95", "p99", "max"):
        table.add(f"dispatch latency {stat}, ms", *cells(latency_ms(stat)))
    table.add(
        "pgbench latency p50 / p99, ms",
        *cells(lambda p: f"{p.db.latency_us.p50 / 1000:.1f} / {p.db.latency_us.p99 / 1000:.1f}"),
    )
    table.add("errors (non-200 + socket)", *cells(lambda p: str(p.service.failures)))
    table.add(
        "exactly once (in flight at stop)",
        *cells(lambda p: ("ok" if p.invariant.ok else "FAIL") + f" ({p.invariant.in_flight})"),
    )
    if peer:
        peer_rows(table, cells)


def peer_rows(table: Table, cells: Callable[[Callable[[Point], str]], list[str]]) -> None:
    """The minimal app (bench/peer.py): each run, the better one, and its CPU beside the service's."""

    def run(workers: int) -> Callable[[Point], str]:
        def cell(p: Point) -> str:
            found = [r for r in p.peer if r.workers == workers]
            return num(found[0].rate) if found else "-"

        return cell

    def best(fn: Callable[[PeerRun], str]) -> Callable[[Point], str]:
        def cell(p: Point) -> str:
            found = p.best_peer()
            return "-" if found is None else fn(found)

        return cell

    for workers in PEER_WORKERS:
        table.add(f"minimal app, {workers} worker{'s' if workers > 1 else ''}, /s", *cells(run(workers)))
    table.add("minimal app, best of 1 and 2 workers, /s", *cells(best(lambda r: num(r.rate))))
    table.add(
        "minimal app (best) latency p50 / p99, ms",
        *cells(best(lambda r: f"{r.latency_us.p50 / 1000:.1f} / {r.latency_us.p99 / 1000:.1f}")),
    )
    table.add(
        "CPU, service / minimal app (best), % of a core",
        *cells(lambda p: f"{p.service.cpu_percent.get('service', 0):.0f} / " + best(peer_cpu)(p)),
    )
    table.add(
        "minimal app exactly once, 1 / 2 workers",
        *cells(
            lambda p: " / ".join(
                ("ok" if r.invariant.ok else "FAIL") + f" ({r.invariant.in_flight})" for r in p.peer
            )
        ),
    )


def peer_cpu(run: PeerRun) -> str:
    return f"{run.cpu_percent.get('peer', 0):.0f}"


def location_rows(table: Table, levels: Sequence[int], result: Location) -> None:
    table.section(
        f"Location-aware dispatch ({result.backlog:,} ready tasks over {result.stations} stations, "
        "ONE_VAN_PER_STATION=false: nothing is completed)"
    )

    def cells(fn: Callable[[LocationPoint], str]) -> list[str]:
        return [fn(result.points[c]) if c in result.points else "-" for c in levels]

    table.add("without a position, dispatches/s", *cells(lambda p: num(p.plain.rate)))
    table.add("with a position, dispatches/s", *cells(lambda p: num(p.near.rate)))
    table.add("with / without", *cells(lambda p: times(p.near_over_plain)))
    table.add("without a position, p99 ms", *cells(lambda p: f"{p.plain.latency_us.p99 / 1000:.1f}"))
    table.add("with a position, p99 ms", *cells(lambda p: f"{p.near.latency_us.p99 / 1000:.1f}"))


def ingest_approve_rows(table: Table, result: IngestApprove) -> None:
    ingest, single, many = result.ingest, result.approve.single, result.approve.many
    table.section("Ingest, approve, complete")
    table.add(f"ingest, {ingest.batch_size:,}-item POST /suggestions", f"{num(ingest.rate)} suggestions/s")
    table.add(
        f"approve, POST /task/approve (c={single.connections})",
        f"{num(single.rate)} /s   p99 {single.latency_us.p99 / 1000:.1f} ms"
        + (DRY if single.ran_dry else ""),
    )
    table.add(
        f"approve, POST /tasks/approve x{many.per_request} (c={many.connections})",
        f"{num(many.tasks_rate)} tasks/s   p99 {many.latency_us.p99 / 1000:.1f} ms"
        + (DRY if many.ran_dry else ""),
    )


def complete_rows(table: Table, result: Operation) -> None:
    table.add(
        f"complete, POST /task/{{id}}/complete (c={result.connections})",
        f"{num(result.rate)} /s   p99 {result.latency_us.p99 / 1000:.1f} ms"
        + (DRY if result.ran_dry else ""),
    )


def longpoll_rows(table: Table, result: Longpoll) -> None:
    table.section("Long-poll (wait_seconds=30)")
    table.add(
        f"idle DB transactions/s: 0 vs {result.pollers} waiting",
        f"{result.transactions_per_s_without:.1f} vs {result.transactions_per_s_with:.1f}",
    )
    table.add(
        f"service memory (PSS): 0 vs {result.pollers} waiting",
        f"{mb(result.rss_without)} vs {mb(result.rss_with)}",
    )
    wake = result.wakeup_latency_us
    table.add(
        "wake-up, approve sent -> worker answered",
        f"p50 {wake.p50 / 1000:.1f} ms   p99 {wake.p99 / 1000:.1f} ms",
    )


def auth_rows(table: Table, result: AuthCost) -> None:
    off, on = result.off, result.on
    table.section(f"Authentication, dispatch at c={result.connections} ({result.keys} worker keys)")
    table.add(
        "AUTH=off -> on, dispatches/s",
        f"{num(off.rate)} -> {num(on.rate)}  ({100 * result.on_over_off:.1f} %, target >= 95 %)",
    )
    table.add(
        "AUTH=off -> on, latency p99, ms",
        f"{off.latency_us.p99 / 1000:.1f} -> {on.latency_us.p99 / 1000:.1f}",
    )
    table.add("AUTH on, errors (non-200 + socket)", f"{on.failures}")


def pgbouncer_rows(table: Table, result: PgBouncerCost) -> None:
    table.section(
        f"PgBouncer (transaction mode, no named prepared statements), dispatch at c={result.connections}"
    )
    if result.direct is None or result.pgbouncer is None or result.pgbouncer_over_direct is None:
        table.add("direct -> through PgBouncer", f"skipped: {result.skipped}")
        return
    direct, pooled = result.direct, result.pgbouncer
    table.add(
        "direct -> through PgBouncer, dispatches/s",
        f"{num(direct.rate)} -> {num(pooled.rate)}  ({100 * result.pgbouncer_over_direct:.1f} %)",
    )
    table.add(
        "direct -> through PgBouncer, latency p99, ms",
        f"{direct.latency_us.p99 / 1000:.1f} -> {pooled.latency_us.p99 / 1000:.1f}",
    )
    table.add("through PgBouncer, errors (non-200 + socket)", f"{pooled.failures}")


def sustained_rows(table: Table, result: Sustained) -> None:
    window, tail, keep = result.window_s, result.samples[-1], result.last_over_first
    early, late = result.ready_idx_blocks_per_dispatch_first, result.ready_idx_blocks_per_dispatch_last
    table.section(f"Sustained dispatch, {result.duration_s:g} s at c={result.connections}")
    table.add(
        f"first {window:g} s -> last {window:g} s, dispatches/s",
        f"{num(result.first_window_rate)} -> {num(result.last_window_rate)}  ({100 * keep:.0f} %)",
    )
    table.add("ready-index blocks per dispatch, first -> last", f"{early:.1f} -> {late:.1f}")
    table.add(
        "dead tuples at end, autovacuums of tasks", f"{tail['n_dead_tup']:,}, {tail['autovacuum_count']}"
    )


def history_rows(table: Table, result: History) -> None:
    empty, history, cleaner = result.empty, result.history, result.cleaner
    table.section(
        f"History growth, c={result.connections}: no history vs {result.history_tasks:,} finished tasks and "
        f"{result.history_events:,} events (target >= 95 %)"
    )
    table.add(
        "dispatches/s, no history -> history",
        f"{num(empty.dispatch_rate)} -> {num(history.dispatch_rate)}  ({100 * result.dispatch_ratio:.1f} %)",
    )
    table.add(
        "ingest suggestions/s, no history -> history",
        f"{num(empty.ingest_rate)} -> {num(history.ingest_rate)}  ({100 * result.ingest_ratio:.1f} %)",
    )
    table.add(
        "cleaner, a day of history",
        f"{cleaner.tasks_deleted:,} tasks + {cleaner.events_deleted:,} events in {cleaner.seconds:.1f} s, "
        f"{num(cleaner.rows_per_s)} rows/s",
    )
    table.add("history made and vacuumed in", f"{result.generate_s:.0f} s")
