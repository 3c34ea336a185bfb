"""``python -m bench``: start PostgreSQL, run the scenarios, print the table, write the JSON."""

import asyncio
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

from baywheels import logs
from baywheels import settings as config

from . import pgbench
from .config import FULL, QUICK, Config
from .context import Context
from .database import Server, connect, q
from .loadgen import LoadGen
from .procs import ensure_wrk, loadavg, machine_seconds, parent
from .report import entries, table
from .scenarios import SCENARIOS

PG_SETTINGS = [
    "autovacuum",
    "autovacuum_vacuum_cost_limit",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_naptime",
    "checkpoint_timeout",
    "fsync",
    "full_page_writes",
    "jit",
    "max_connections",
    "max_wal_size",
    "shared_buffers",
    "synchronous_commit",
    "wal_level",
    "work_mem",
]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "-"


def _memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "-"


def _tool_version(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "-"
    return (
        (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) else "-"
    )


async def environment(server: Server, wrk: str | None) -> dict[str, Any]:
    defaults = config.Settings()
    version = (await server.fetchrow(server.dsn, "bench_server_version"))[0]
    pg = {r["name"]: r["setting"] for r in await server.fetch(server.dsn, "bench_pg_settings", PG_SETTINGS)}
    return {
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": _cpu_model(),
            "memory": _memory(),
            "kernel": platform.release(),
            "loadavg_at_start": loadavg(),
        },
        "versions": {
            "python": platform.python_version(),
            "postgresql": version,
            **{p: _version(p) for p in ("uvicorn", "uvloop", "httptools", "starlette", "asyncpg", "msgspec")},
            "pgbench": _tool_version([str(pgbench.bin_dir() / "pgbench"), "--version"]),
            "wrk": _tool_version([wrk, "-v"]) if wrk else "-",
        },
        "postgresql_settings": pg,
        "service_settings": {
            "DISPATCH_CONCURRENCY": defaults.dispatch_concurrency,
            "DISPATCH_BATCH_MAX": defaults.dispatch_batch_max,
            "uvicorn_processes": 1,
        },
    }


async def postmaster_of(server: Server) -> int | None:
    """The server's main process, when it runs on this machine and /proc shows it."""
    conn = await connect(server.dsn)
    try:
        # Read while the backend lives: once the connection closes it is gone.
        return parent(await conn.fetchval(q("bench_backend_pid")))
    finally:
        await conn.close()


def write(out_dir: Path, report: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = out_dir / f"{stamp}-{report['mode']}.json"
    out.write_bytes(msgspec.json.format(msgspec.json.encode(report)))
    return out


async def run(
    cfg: Config,
    only: Sequence[str],
    loadgen: str,
    out_dir: Path,
    keep: bool,
    dsn: str | None = None,
    workers: int = 2,
) -> int:
    """Everything on the server ``dsn`` points to (databases are created and dropped on it), or on an
    embedded server when it is None."""
    started = time.monotonic()
    steal_before = machine_seconds()[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A thousand long-polling connections on each side; the service inherits the limit.
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wrk = None if loadgen == "asyncio" else ensure_wrk()
    if loadgen == "wrk" and wrk is None:
        print("bench: wrk is not installed and could not be (apt-get install wrk)", file=sys.stderr)
        return 2
    if wrk is None and loadgen == "auto":
        print("wrk not available: using the asyncio client (more CPU per request; see docs/benchmarks.md)")
    workdir = Path(tempfile.mkdtemp(prefix="baywheels-bench-"))
    embedded = None
    if not dsn:
        from baywheels.embedded import EmbeddedPostgres

        embedded = await asyncio.to_thread(EmbeddedPostgres, workdir / "pg", delete_on_stop=True)
        dsn = embedded.dsn()
    server = Server(dsn)
    try:
        env = await environment(server, wrk)
        ctx = Context(
            cfg=cfg,
            server=server,
            load=LoadGen(wrk, workdir),
            workdir=workdir,
            postmaster=await postmaster_of(server),
            workers=workers,
        )
        machine, versions = env["machine"], env["versions"]
        print(
            f"bench {'--quick' if cfg.quick else '(full)'}: {machine['nproc']} x {machine['cpu']}, "
            f"{machine['memory']}, load {' '.join(machine['loadavg_at_start'])}; "
            f"PostgreSQL {versions['postgresql']} ({'DATABASE_URL' if embedded is None else 'embedded'}); "
            f"load generator: {ctx.load.name}; service: {workers} uvicorn worker(s), "
            f"DISPATCH_CONCURRENCY {ctx.dispatch_concurrency} each",
            flush=True,
        )
        for name, scenario in SCENARIOS.items():
            if not only or name in only:
                begun = time.monotonic()
                ctx.results[name] = await scenario(ctx)
                print(f"  ({name}: {time.monotonic() - begun:.1f} s)", flush=True)
    finally:
        await server.drop_all()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    failed = [inv for inv in ctx.invariants if not inv.ok]
    elapsed = time.monotonic() - started
    # Time the hypervisor gave our virtual CPUs to other guests: how noisy the machine was over the run.
    steal = 100 * (machine_seconds()[1] - steal_before) / elapsed
    rendered = table(cfg.levels, ctx.results).render()
    print()
    print(rendered)
    print()
    print(
        f"invariant: {len(ctx.invariants) - len(failed)} of {len(ctx.invariants)} checks passed "
        f"(each task handed out once, none lost; every answered task held by the worker answered)"
    )
    for inv in failed:
        print(f"  FAILED {inv.scenario}: {inv.detail}")
    report = {
        "mode": "quick" if cfg.quick else "full",
        "elapsed_s": elapsed,
        "cpu_steal_percent": steal,
        "config": msgspec.to_builtins(cfg),
        "load_generator": ctx.load.name,
        "service_workers": workers,
        **env,
        "pgbench_script": pgbench.script(),
        "results": entries(ctx.results),
        "invariants": [msgspec.to_builtins(inv.__dict__) for inv in ctx.invariants],
        "table": rendered,
    }
    out = await asyncio.to_thread(write, out_dir, report)
    print(f"results: {out}   ({elapsed:.0f} s; CPU stolen by the hypervisor over the run: {steal:.0f} %)")
    if keep:
        print(f"logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def main(quick: bool, only: Sequence[str], loadgen: str, out_dir: Path, keep: bool, workers: int = 2) -> int:
    cfg = QUICK if quick else FULL
    logs.configure("warning", "console")
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        print(
            f"bench: no scenario {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(run(cfg, only, loadgen, out_dir, keep, os.environ.get("DATABASE_URL"), workers))
