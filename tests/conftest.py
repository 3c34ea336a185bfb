"""A real PostgreSQL for every test: TEST_DATABASE_URL when set, else a testcontainers PostgreSQL when a
Docker daemon answers, else an embedded server in a temporary folder. The schema is migrated once into a
template database; each test gets its own copy of it (CREATE DATABASE ... TEMPLATE is a file copy)."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import pytest

from baywheels import db, settings
from baywheels.app import create_app
from baywheels.embedded import EmbeddedPostgres
from helpers import ADMIN, ADMIN_KEY, AUTH_ENV, embedded_postgres_dir, in_process


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name.startswith("test_live_"):
            item.add_marker(pytest.mark.live)


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _docker_answers() -> bool:
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN for a database on the server (its default database) with the right to CREATE DATABASE."""
    if dsn := os.environ.get("TEST_DATABASE_URL"):
        yield dsn
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
    else:
        from baywheels.embedded import EmbeddedPostgres

        with embedded_postgres_dir() as folder:
            server = EmbeddedPostgres(folder, delete_on_stop=True)
            try:
                yield server.dsn()
            finally:
                server.stop()


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """Name of a freshly migrated database that tests clone."""
    name = f"baywheels_template_{os.getpid()}"
    asyncio.run(_admin(server_dsn, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"))
    asyncio.run(db.migrate(with_database(server_dsn, name)))
    yield name
    asyncio.run(_admin(server_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@asynccontextmanager
async def cloned_database(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A DSN for a new copy of the migrated template, dropped afterwards."""
    name = f"baywheels_test_{uuid.uuid4().hex[:12]}"
    await _admin(server_dsn, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    try:
        yield with_database(server_dsn, name)
    finally:
        await _admin(server_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def database_url(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A DSN for this test's own migrated database, dropped afterwards."""
    async with cloned_database(server_dsn, template_db) as dsn:
        yield dsn


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's database, for arranging and inspecting state directly."""
    async with asyncpg.create_pool(database_url, min_size=1, max_size=10) as pool:
        yield pool


@pytest.fixture
def service_settings(database_url: str) -> settings.Settings:
    return msgspec.structs.replace(
        settings.load({}),
        database_url=database_url,
        access_log=False,
        admin_api_key=ADMIN_KEY,
        rate_limit_admin="1000000/second",
    )


@pytest.fixture
async def client(service_settings: settings.Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process (its lifespan opens the pool), spoken to over ASGI."""
    async with in_process(create_app(service_settings)) as client:
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A real `baywheels serve` process (uvicorn, uvloop, httptools) on a free port, started (again, after a
    stop) by ``start``. On ``database_url`` without migrating (the template is migrated), or with no
    database_url as `make run` starts it: the embedded PostgreSQL under DATA_DIR, migrations on."""

    database_url: str | None
    env: dict[str, str] = field(default_factory=dict)  # over os.environ and the defaults below
    log_path: Path | None = None  # where its stderr (the log) goes; a temporary file when unset
    cwd: Path | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _temporary_log: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        scheme = "https" if "TLS_CERT_FILE" in self.env else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def client(self, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
        """A client of this server, as the admin (ADMIN_API_KEY) unless other ``headers`` say otherwise."""
        return httpx.AsyncClient(base_url=self.url, timeout=30, headers=ADMIN if headers is None else headers)

    def start(self, timeout: float = 30.0) -> None:
        self.port = free_port()
        # As `make run` starts it on a newcomer's machine (no database_url), no ADMIN_API_KEY either: the
        # first start makes an admin key file under DATA_DIR.
        auth_env = (
            AUTH_ENV if self.database_url is not None else {"RATE_LIMIT_ADMIN": AUTH_ENV["RATE_LIMIT_ADMIN"]}
        )
        outside = {"DATABASE_URL", "ADMIN_API_KEY"}
        env = {k: v for k, v in os.environ.items() if k not in outside} | {"ACCESS_LOG": "false", **auth_env}
        command = [sys.executable, "-m", "baywheels", "serve", "--port", str(self.port)]
        if self.database_url is not None:
            env["DATABASE_URL"] = self.database_url
            command.append("--no-migrate")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="baywheels-serve-", suffix=".log")
            os.close(fd)
            self.log_path, self._temporary_log = Path(name), True
        with self.log_path.open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                command, env=env | self.env, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self._log_tail()
                raise RuntimeError(f"baywheels serve exited with {self.stop()}: {tail}")
            try:
                # Readiness only: whose certificate it is, is the TLS test's business.
                if httpx.get(f"{self.url}/readyz", timeout=1, verify=False).status_code == 200:  # noqa: S501
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling for readiness of another process, not synchronising the test
        tail = self._log_tail()
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"baywheels serve did not become ready: {tail}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15) -> int | None:
        """Signals the process and waits for it: its exit code (None when it was not running)."""
        process, self.process = self.process, None
        if process is None:
            return None
        try:
            if process.poll() is None:
                process.send_signal(sig)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    raise
        finally:
            if self._temporary_log and self.log_path is not None:
                self.log_path.unlink(missing_ok=True)
                self.log_path, self._temporary_log = None, False
        return process.returncode

    def _log_tail(self) -> str:
        assert self.log_path is not None
        return self.log_path.read_text(errors="replace")[-2000:]


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of the test's own (embedded, in a temporary folder), which it may restart or stop:
    never the shared one."""
    with embedded_postgres_dir() as folder:
        server = EmbeddedPostgres(folder, delete_on_stop=True)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def live_server(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(database_url, log_path=tmp_path / "serve.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
