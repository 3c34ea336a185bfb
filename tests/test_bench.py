"""The benchmark harness keeps working: every scenario runs at a tiny scale against the test server, the
exactly-once check passes and can fail, and the table has its rows. No timing is asserted."""

import ast
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from baywheels import cli, sql
from bench import pgbench, runner
from bench.config import QUICK
from bench.context import Context, check_dispatch
from bench.database import Server
from bench.loadgen import LoadGen
from bench.scenarios import SCENARIOS

TINY = replace(
    QUICK,
    levels=(1, 4),
    sync_off_levels=(4,),
    backlog=20_000,
    ingest_batches=1,
    batch_size=1_000,
    op_connections=4,
    complete_tasks=3_000,
    pollers=20,
    idle_window=0.2,
    wakeups=5,
    sustained_duration=2,
    sustained_connections=4,
    sustained_backlog=10_000,
    auth_connections=4,
    history_tasks=3_000,
    history_connections=4,
)

ROWS = [
    "DB ceiling: pgbench task_dispatch, tps",
    "HTTP ceiling: GET /healthz, req/s",
    "service: POST /dispatch/next, /s",
    "service / DB ceiling",
    "service / HTTP ceiling",
    "service / best DB ceiling of the row",
    "service / minimal app (best of 1 and 2 workers)",
    "dispatch latency p50, ms",
    "dispatch latency p95, ms",
    "dispatch latency p99, ms",
    "dispatch latency max, ms",
    "pgbench latency p50 / p99, ms",
    "errors (non-200 + socket)",
    "exactly once (in flight at stop)",
    "minimal app, 1 worker, /s",
    "minimal app, 2 workers, /s",
    "minimal app, best of 1 and 2 workers, /s",
    "minimal app (best) latency p50 / p99, ms",
    "CPU, service / minimal app (best), % of a core",
    "minimal app exactly once, 1 / 2 workers",
    "service memory (PSS) under 4 dispatchers",
    "ingest, 1,000-item POST /suggestions",
    "approve, POST /task/approve (c=4)",
    "approve, POST /tasks/approve x100 (c=4)",
    "complete, POST /task/{id}/complete (c=4)",
    "idle DB transactions/s: 0 vs 20 waiting",
    "service memory (PSS): 0 vs 20 waiting",
    "wake-up, approve sent -> worker answered",
    "first 1 s -> last 1 s, dispatches/s",
    "ready-index blocks per dispatch, first -> last",
    "AUTH=off -> on, dispatches/s",
    "direct -> through PgBouncer, dispatches/s",
    "without a position, dispatches/s",
    "with a position, dispatches/s",
    "with / without",
    "with a position, p99 ms",
]


def written(folder: Path) -> dict[str, Any]:
    [path] = folder.glob("*-quick.json")
    report: dict[str, Any] = json.loads(path.read_text())
    return report


async def test_every_scenario_runs_and_the_invariant_holds(
    server_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The asyncio client: wrk may not be installed where the tests run (the harness installs it itself).
    code = await runner.run(TINY, [], "asyncio", tmp_path, keep=False, dsn=server_dsn)
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = written(tmp_path)
    assert set(report["results"]) == {
        "dispatch",
        "dispatch_sync_off",
        "location",
        "ingest",
        "approve",
        "complete",
        "longpoll",
        "sustained",
        "auth",
        "history",
        "pgbouncer",
    }
    # Per point of the ladder of record: pgbench, the service, the minimal app with 1 and with 2 workers;
    # then the location scenario's two runs (without and with a position), the auth scenario's two (AUTH=off,
    # auth on), the history scenario's three (each side's dispatch, the cleaner) and the pgbouncer scenario's
    # (direct, through).
    assert len(report["invariants"]) == 25
    assert all(inv["ok"] for inv in report["invariants"]), report["invariants"]
    assert [inv["scenario"] for inv in report["invariants"]][:8] == [
        "pgbench c=1",
        "dispatch c=1",
        "minimal app c=1, 1 worker",
        "minimal app c=1, 2 workers",
        "pgbench c=4",
        "dispatch c=4",
        "minimal app c=4, 1 worker",
        "minimal app c=4, 2 workers",
    ]
    table = report["table"]
    assert table in printed
    lines = {line.strip().split("  ")[0]: line for line in table.splitlines()}
    assert set(ROWS) <= set(lines), sorted(set(ROWS) - set(lines))
    # The asyncio client waits for its last answers, so nothing is in flight when it stops.
    checks = [line.split()[-4:] for line in table.splitlines() if "exactly once (" in line]
    assert checks == [["ok", "(0)", "ok", "(0)"], ["stop)", "-", "ok", "(0)"]]
    [peer_checks] = [line for line in table.splitlines() if "minimal app exactly once" in line]
    assert peer_checks.split("workers", 1)[1].split() == ["ok", "(0)", "/", "ok", "(0)"] * 2
    points = report["results"]["dispatch"]["points"]
    assert sorted(points) == ["1", "4"]
    for c, point in points.items():
        assert [run["workers"] for run in point["peer"]] == [1, 2]
        for run in point["peer"]:
            assert run["invariant"]["ok"]
            assert run["invariant"]["answered"] == run["statuses"]["200"] > 0
            assert run["failures"] == 0
            assert run["cpu_percent"]["peer"] > 0
        best = max(point["peer"], key=lambda run: run["rate"])
        assert point["peer_best_workers"] == best["workers"]
        assert point["service_over_peer"] == pytest.approx(point["service"]["rate"] / best["rate"])
        assert f"c={c:<3} minimal app x1 " in printed
        assert f"c={c:<3} minimal app x2 " in printed
        assert f"c={c:<3} service / minimal app {point['service_over_peer']:.2f} x" in printed
    # Not of record: no minimal app with synchronous_commit=off.
    assert all("peer" not in point for point in report["results"]["dispatch_sync_off"]["points"].values())
    assert set(SCENARIOS) == {
        "dispatch",
        "dispatch_sync_off",
        "location",
        "ingest_approve",
        "complete",
        "longpoll",
        "sustained",
        "auth",
        "history",
        "pgbouncer",
    }
    # Authentication's cost is measured: both runs answered, and the ratio is reported.
    cost = report["results"]["auth"]
    assert cost["off"]["statuses"].get("200", 0) > 0
    assert cost["on"]["statuses"].get("200", 0) > 0
    assert set(cost["on"]["statuses"]) <= {"200", "404"}, cost["on"]["statuses"]
    assert cost["on_over_off"] > 0
    # PgBouncer's too (CI installs it, as the deployment tests do).
    through = report["results"]["pgbouncer"]
    assert through["direct"]["statuses"].get("200", 0) > 0
    assert through["pgbouncer"]["statuses"].get("200", 0) > 0
    assert through["pgbouncer_over_direct"] > 0


async def test_the_history_scenario_compares_both_sides_and_cleans_a_day(
    server_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await runner.run(TINY, ["history"], "asyncio", tmp_path, keep=False, dsn=server_dsn)
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = written(tmp_path)
    result = report["results"]["history"]
    assert [inv["scenario"] for inv in report["invariants"]] == [
        "history: dispatch, empty",
        "history: dispatch, history",
        "history cleaner",
    ]
    assert all(inv["ok"] for inv in report["invariants"]), report["invariants"]
    assert (result["history_tasks"], result["history_events"]) == (3_000, 9_000)
    for side in ("empty", "history"):
        assert len(result[side]["runs"]) == 2
        assert result[side]["dispatch_rate"] > 0
        assert result[side]["ingest_rate"] > 0
    assert result["dispatch_ratio"] == pytest.approx(
        result["history"]["dispatch_rate"] / result["empty"]["dispatch_rate"]
    )
    # The oldest of 30 days: 100 tasks (the history ages while the run goes on: one or two more).
    cleaner = result["cleaner"]
    assert 100 <= cleaner["tasks_deleted"] <= 102
    assert cleaner["events_deleted"] == 3 * cleaner["tasks_deleted"]
    assert "dispatches/s, no history -> history" in report["table"]
    assert "cleaner, a day of history" in report["table"]


def test_the_pgbench_script_is_the_dispatch_statement() -> None:
    script = pgbench.script()
    statement = "\n".join(
        line for line in sql.text("task_dispatch").splitlines() if not line.lstrip().startswith("--")
    )
    assert "NULL::text" not in statement
    assert "NULL::timestamptz" not in statement
    assert "$" not in script
    assert script.count(":worker") == statement.count("$1") > 0
    assert script.count(":lease") == statement.count("$2") > 0
    # Nothing but the parameters differs.
    body = script.split("\\set lease 1800\n", 1)[1]
    restored = (
        body.replace(":worker", "$1")
        .replace(":lease", "$2")
        .replace("NULL::text", "$3::text")
        .replace("NULL::timestamptz", "$4::timestamptz")
        .replace("'bench'::text", "$5::text")
        .replace("true::boolean", "$6::boolean")
    )
    assert restored.strip() == statement.strip()


async def test_the_exactly_once_check_catches_a_task_handed_out_twice_or_to_another(
    server_dsn: str, database_url: str, tmp_path: Path
) -> None:
    server = Server(server_dsn)
    await server.execute(database_url, "bench_backlog_insert", 1, 3)
    await server.execute(database_url, "bench_backlog_assign", 2)
    ctx = Context(TINY, server, LoadGen(None, tmp_path), tmp_path, None)

    async def ok(seen: list[tuple[int, str]], connections: int, backlog: int = 3) -> bool:
        result = await check_dispatch(ctx, "t", database_url, seen, connections, backlog)
        return result.ok

    assert await ok([(1, "bench-1"), (2, "bench-2")], 0)
    assert await ok([(1, "bench-1")], 1)  # one answer still in flight when the generator stopped
    assert not await ok([(1, "bench-1")], 0)  # ... but none can be
    assert not await ok([(1, "bench-1"), (1, "bench-1"), (2, "bench-2")], 0)  # handed out twice
    assert not await ok([(1, "bench-2"), (2, "bench-2")], 0)  # answered to a worker who does not hold it
    assert not await ok([(1, "bench-1"), (2, "bench-2")], 0, backlog=4)  # a task lost


def test_the_service_has_no_benchmark_in_it_and_imports_none() -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--quick"])
    assert exit_.value.code == 2  # argparse: no such command
    package = Path(cli.__file__).parent
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        ]
        imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [name for name in imported if "bench" in name], path
        assert "apt-get" not in path.read_text(), path  # installing wrk is the harness's business
