"""A real PostgreSQL for every test: TEST_DATABASE_URL when set, else a testcontainers PostgreSQL when a
Docker daemon answers, else an embedded server in a temporary folder. The schema is migrated once into a
template database; each test gets its own copy of it (CREATE DATABASE ... TEMPLATE is a file copy)."""

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import pytest

from baywheels import db, settings
from baywheels.app import create_app
from helpers import ADMIN_KEY, AUTH_ENV, in_process


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
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN for a database on the server (its default database) with the right to CREATE DATABASE."""
    if dsn := os.environ.get("TEST_DATABASE_URL"):
        yield dsn
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
    else:
        from baywheels.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"), delete_on_stop=True)
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
    """A real `baywheels serve` process (uvicorn, uvloop, httptools) on a free port."""

    database_url: str
    env: dict[str, str]
    log_path: Path | None = None  # where its stderr (the log) goes; discarded when unset
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if "TLS_CERT_FILE" in self.env else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.port = free_port()
        env = {**os.environ, "DATABASE_URL": self.database_url, "ACCESS_LOG": "false", **AUTH_ENV, **self.env}
        log = None if self.log_path is None else self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "baywheels", "serve", "--no-migrate", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if log is None else log,
        )
        if log is not None:
            log.close()  # the child has its own copy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"baywheels serve exited with {self.process.returncode}")
            try:
                # Readiness only: whose certificate it is, is the TLS test's business.
                if httpx.get(f"{self.url}/readyz", timeout=1, verify=False).status_code == 200:  # noqa: S501
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling for readiness of another process, not synchronising the test
        raise RuntimeError("baywheels serve did not become ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None


@pytest.fixture
def live_server(database_url: str) -> Iterator[LiveServer]:
    server = LiveServer(database_url, env={})
    server.start()
    try:
        yield server
    finally:
        server.stop()
