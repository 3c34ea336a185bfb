"""The processes of a run: the service under test, the tools (wrk, pgbench), and their CPU and memory as
Linux's /proc counts them."""

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .client import Connection

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name, in parentheses, may contain spaces: the fields that follow come after the last ')'.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU of a process (all its threads); with ``reaped``, plus its children that exited."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def memory_bytes(pids: list[int]) -> int:
    """Memory of processes that share pages (uvicorn's parent, its workers, multiprocessing's resource
    tracker): the sum of their proportional set sizes, since RSS would count the shared pages once each."""
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:"))
    return total


def parent(pid: int) -> int | None:
    """The parent of a PostgreSQL process (a backend's is the postmaster); None if not one on this machine."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if "(postgres)" not in stat:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, ValueError):
                continue  # exited while we looked
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(root: int) -> float:
    """CPU of a server and everything under it, including children already gone (PostgreSQL backends of
    closed connections are reaped by the postmaster, which then accounts for them)."""
    total = cpu_seconds(root, reaped=True)
    for pid in descendants(root):
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
    return total


def machine_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all cores since boot. Steal is time the hypervisor gave our virtual CPUs
    to someone else: on a shared host, the noise in a run."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq) / TICK, steal / TICK


@dataclass
class CpuMeter:
    """CPU used by named processes over a window, in % of one core (2 cores = 200 %). ``other`` is the rest
    of the machine's busy time (the kernel's own work, such as loopback networking, and any other process);
    ``steal`` the time the hypervisor ran someone else on our virtual CPUs."""

    sources: Mapping[str, Callable[[], float]]
    _start: dict[str, float] = field(default_factory=dict)
    _wall: float = 0.0

    def _read(self) -> dict[str, float]:
        values = {}
        for name, read in self.sources.items():
            try:
                values[name] = read()
            except OSError:
                values[name] = self._start.get(name, 0.0)
        values["machine"], values["steal"] = machine_seconds()
        return values

    def start(self) -> None:
        self._start = self._read()
        self._wall = time.monotonic()

    def stop(self, extra: Mapping[str, float] | None = None) -> dict[str, float]:
        """Percent of one core per source; ``extra`` adds CPU seconds counted another way (rusage)."""
        end = self._read()
        wall = max(time.monotonic() - self._wall, 1e-9)
        used = {name: end[name] - self._start[name] for name in end}
        used.update(extra or {})
        busy, steal = used.pop("machine"), used.pop("steal")
        shares = {name: round(100 * seconds / wall, 1) for name, seconds in used.items()}
        shares["other"] = round(max(0.0, 100 * (busy - sum(used.values())) / wall), 1)
        shares["steal"] = round(100 * steal / wall, 1)
        shares["idle"] = round(max(0.0, 100 * (os.cpu_count() or 1) - 100 * (busy + steal) / wall), 1)
        return shares


def run_tool(command: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> tuple[int, float, str]:
    """Run a tool to completion: (exit code, its CPU seconds from rusage, its stdout and stderr)."""
    log = cwd / f"{Path(command[0]).name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime, log.read_text()


def ensure_wrk() -> str | None:
    """wrk from Debian's packages, installed if missing and we may (root with apt); None if not."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = subprocess.run(["apt-cache", "policy", "wrk"], capture_output=True, text=True, check=False)
    if "Candidate:" not in policy.stdout or "Candidate: (none)" in policy.stdout:
        print("installing wrk: apt-get update", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    print("installing wrk: apt-get install -y wrk", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, check=False, capture_output=True)
    return shutil.which("wrk")


# The folder holding the bench package: the peer runs as ``bench.peer`` from there, as bench.client does.
HOME = Path(__file__).resolve().parents[1]


def service_command(port: int) -> list[str]:
    """``baywheels serve``: uvicorn with uvloop and the service's httptools protocol; WORKERS from the env."""
    return [sys.executable, "-m", "baywheels", "serve", "--no-migrate", "--port", str(port)]


def peer_command(port: int, workers: int) -> list[str]:
    """The minimal app (``bench/peer.py``) under uvicorn with the service's settings: uvloop, httptools, no
    access log, no server header."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.peer:app",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--workers={workers}",
        "--loop=uvloop",
        "--http=httptools",
        "--no-access-log",
        "--no-server-header",
        "--log-level=warning",
    ]


class Service:
    """An HTTP server under test as a real process on its own port: ``baywheels serve`` unless another
    ``command`` is given (the minimal app, ``peer_command``). ``role`` names it in messages and the CPU split.
    """

    def __init__(
        self,
        dsn: str,
        port: int,
        env: Mapping[str, str],
        log: Path,
        command: list[str] | None = None,
        role: str = "service",
    ) -> None:
        self.port = port
        self.log = log
        self.role = role
        self.command = command or service_command(port)
        pythonpath = os.pathsep.join(filter(None, [str(HOME), os.environ.get("PYTHONPATH")]))
        self._env = {
            **os.environ,
            "PYTHONPATH": pythonpath,
            "DATABASE_URL": dsn,
            "ACCESS_LOG": "false",
            "LOG_LEVEL": "warning",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pids(self) -> list[int]:
        """The server's processes: uvicorn's parent and, with several workers, everything it started."""
        return [self.pid, *descendants(self.pid)]

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(self.command, env=self._env, stdout=log, stderr=subprocess.STDOUT)

    async def start(self, within: float = 30.0) -> None:
        self.process = self._spawn()
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.role} exited with {self.process.returncode}; see {self.log}")
            try:
                conn = await Connection.open("127.0.0.1", self.port)
                try:
                    if (await conn.request("GET", "/readyz"))[0] == 200:
                        return
                finally:
                    await conn.close()
            except (OSError, asyncio.IncompleteReadError):
                pass
            await asyncio.sleep(0.05)  # polling another process for readiness, with a deadline
        raise RuntimeError(f"the {self.role} did not become ready; see {self.log}")

    async def stop(self) -> None:
        """SIGTERM: uvicorn lets requests in flight finish (and the service's dispatcher its statements)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
