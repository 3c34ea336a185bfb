"""The load generator: wrk with ``wrk.lua`` (compiled, two threads: a fraction of a core at the service's
ceiling), or the asyncio client in a separate process when wrk cannot be had. Both write the same JSON."""

import asyncio
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from .procs import run_tool
from .stats import LoadResult

LUA = Path(__file__).resolve().parent / "wrk.lua"
# The folder holding this package: the asyncio client runs as ``python -m bench.client`` in the work folder.
HOME = Path(__file__).resolve().parents[1]
# Longer than any answer we expect, so that a slow one is measured rather than dropped as a timeout.
TIMEOUT = "30s"
_runs = itertools.count(1)


@dataclass(frozen=True)
class Load:
    result: LoadResult
    cpu_seconds: float  # the generator's own CPU, from its rusage
    seen: list[tuple[int, str]]  # (task id, worker id) from each 200 of a dispatch


@dataclass(frozen=True)
class LoadGen:
    """``wrk``: the path of the wrk binary; None for the asyncio client."""

    wrk: str | None
    workdir: Path

    @property
    def name(self) -> str:
        return "wrk" if self.wrk else "asyncio client"

    async def run(self, port: int, mode: str, connections: int, duration: float, *params: object) -> Load:
        """``connections`` concurrent clients for ``duration`` seconds; see wrk.lua for the modes."""
        out = self.workdir / f"{next(_runs):03d}-{mode}-c{connections}.json"
        env = None
        if self.wrk:
            threads = min(2, connections)
            command = [
                self.wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(duration))}s",
                f"--timeout={TIMEOUT}",
                "-s",
                str(LUA),
                f"http://127.0.0.1:{port}",
                "--",
                mode,
                str(out),
                str(threads),
                *map(str, params),
            ]
        else:
            command = [
                sys.executable,
                "-m",
                "bench.client",
                f"--port={port}",
                f"--connections={connections}",
                f"--duration={duration}",
                mode,
                str(out),
                *map(str, params),
            ]
            pythonpath = os.pathsep.join(filter(None, [str(HOME), os.environ.get("PYTHONPATH")]))
            env = {**os.environ, "PYTHONPATH": pythonpath}
        code, cpu, log = await asyncio.to_thread(run_tool, command, self.workdir, env)
        if code != 0 or not out.exists():
            raise RuntimeError(f"{self.name} failed ({code}):\n{log}")
        result = msgspec.json.decode(out.read_bytes(), type=LoadResult)
        seen = []
        for path in sorted(self.workdir.glob(f"{out.name}.ids.*")):
            for line in path.read_text().splitlines():
                task_id, worker = line.split(" ", 1)
                seen.append((int(task_id), worker))
            path.unlink()
        return Load(result, cpu, seen)
