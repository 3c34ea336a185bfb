"""A real PgBouncer (Debian's package) in transaction pooling mode, for the benchmark's `pgbouncer` scenario
and the deployment tests (tests/pgbouncer.py): installed when missing and we may (root with apt, as the
benchmark installs wrk), started on a free port in front of a PostgreSQL server, over TCP or its unix
socket (PgBouncer then runs as the socket folder's owner, who may open it)."""

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit


def ensure_pgbouncer() -> str | None:
    """The pgbouncer binary, installed from Debian's packages if missing and we may; None if not."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = subprocess.run(["apt-cache", "policy", "pgbouncer"], capture_output=True, text=True, check=False)
    if "Candidate:" not in policy.stdout or "Candidate: (none)" in policy.stdout:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "pgbouncer"], env=env, check=False, capture_output=True
    )
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def pgbouncer(binary: str, database_url: str, pool_size: int = 4) -> AsyncIterator[str]:
    """PgBouncer (pool_mode = transaction, ``pool_size`` server connections) in front of ``database_url``;
    yields the DSN of the same database through it."""
    parts = urlsplit(database_url)
    params = dict(parse_qsl(parts.query))
    user = unquote(parts.username or params.get("user") or "postgres")
    password = unquote(parts.password or params.get("password") or "")
    database = parts.path.lstrip("/") or params.get("dbname") or user
    host = params.get("host") or parts.hostname or "localhost"
    port = int(params.get("port") or parts.port or 5432)
    # PgBouncer will not run as root: as the owner of a unix socket's folder (who may open the socket: the
    # embedded server's system user), else as postgres.
    owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "root"
    account = "postgres" if owner == "root" else owner
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as folder:
        workdir = Path(folder)
        listen = _free_port()
        config = (
            f"[databases]\n{database} = host={host} port={port} dbname={database}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n"
            f"auth_type = {'plain' if password else 'trust'}\nauth_file = {workdir}/userlist.txt\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 2000\n"
            f"logfile = {workdir}/pgbouncer.log\n"
        )
        userlist = f'"{user}" "{password}"\n'
        process = await asyncio.to_thread(_launch, binary, workdir, config, userlist, account)
        try:
            await _listening(process, listen, workdir)
            credentials = f"{user}:{password}@" if password else f"{user}@"
            yield f"postgresql://{credentials}127.0.0.1:{listen}/{database}"
        finally:
            process.terminate()
            await asyncio.to_thread(process.wait, 10)


def _launch(binary: str, workdir: Path, config: str, userlist: str, account: str) -> subprocess.Popen[bytes]:
    (workdir / "userlist.txt").write_text(userlist)
    (workdir / "pgbouncer.ini").write_text(config)
    command = [binary, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        owner = pwd.getpwnam(account)
        for path in [workdir, *workdir.iterdir()]:
            os.chown(path, owner.pw_uid, owner.pw_gid)
        command[1:1] = ["-u", account]
    with (workdir / "stderr.log").open("wb") as stderr:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)


def _logs(workdir: Path) -> str:
    return " ".join(path.read_text() for path in workdir.glob("*.log"))


async def _listening(process: subprocess.Popen[bytes], port: int, workdir: Path) -> None:
    async with asyncio.timeout(15):
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {process.returncode}: {_logs(workdir)}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)  # polling another process's readiness
            else:
                writer.close()
                return
