"""``baywheels``: serve the API, migrate the database, print a query; and, as clients of a running service, a
command-line worker and a simulated day."""

import argparse
import asyncio
import functools
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from . import logs, sql
from . import settings as config
from .embedded import EmbeddedPostgres


def _database(settings: config.Settings) -> tuple[config.Settings, EmbeddedPostgres | None]:
    """Use DATABASE_URL, or start the embedded server under DATA_DIR when it is unset."""
    if settings.database_url is not None:
        return settings, None
    server = EmbeddedPostgres(Path(settings.data_dir))
    return msgspec.structs.replace(settings, database_url=server.dsn()), server


def serve(settings: config.Settings, migrate: bool) -> None:
    import uvicorn

    from . import db, protocol
    from .app import create_app, serving_gc

    # uvicorn shuts down gracefully on SIGTERM, then raises it again, and its default action would kill the
    # process before the embedded PostgreSQL is stopped. As Ctrl-C, uvicorn.run returns: clean exit, code 0.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    settings, server = _database(settings)
    assert settings.database_url is not None
    try:
        if migrate:
            asyncio.run(db.migrate(db.session_dsn(settings)))  # a session lock: not through a pooler
        base = f"http://{settings.host}:{settings.port}"
        print(f"Bay Wheels dispatch service on {base}  (API docs: {base}/docs, {base}/redoc)", flush=True)
        run = functools.partial(
            uvicorn.run,
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http=protocol.BoundedHttpToolsProtocol,  # httptools, with header, read-time and connection limits
            log_config=None,
            access_log=False,
            server_header=False,
            # The rest of SHUTDOWN_GRACE_SECONDS is the lifespan's, to close the pool (app.py).
            timeout_graceful_shutdown=settings.shutdown_grace_seconds - settings.shutdown_cleanup_seconds,
        )
        protocol.configure(settings)
        if settings.workers == 1:
            app = create_app(settings, serving=True)
            serving_gc()
            run(app)
        else:
            # uvicorn starts each worker as a fresh interpreter, which builds its app from the environment.
            with tempfile.TemporaryDirectory(prefix="baywheels-metrics-") as metrics_dir:
                os.environ["DATABASE_URL"] = settings.database_url
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
                run("baywheels.app:from_environment", factory=True, workers=settings.workers)
    finally:
        if server is not None:
            server.stop()


def migrate(settings: config.Settings) -> None:
    from . import db

    settings, server = _database(settings)
    assert settings.database_url is not None
    try:
        applied = asyncio.run(db.migrate(db.session_dsn(settings)))  # a session lock: not through a pooler
        print(f"applied {applied}" if applied else "database is up to date")
    finally:
        if server is not None:
            server.stop()


ClientCommand = Callable[[argparse.Namespace], int]


def _client_commands(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> dict[str, ClientCommand]:
    """``worker`` and ``simulate``, which need the client extra (httpx); without it they say so."""
    try:
        from .client import commands as client_commands
        from .simulate import command as simulate_command
    except ModuleNotFoundError as exc:
        if exc.name != "httpx":
            raise
        missing = "needs the client extra: pip install 'baywheels[client]'"
        for name in ("worker", "simulate"):
            commands.add_parser(name, help=missing, add_help=False).add_argument(
                "rest", nargs=argparse.REMAINDER
            )

        def unavailable(args: argparse.Namespace) -> int:
            print(f"baywheels {args.command} {missing}", file=sys.stderr)
            return 2

        return {"worker": unavailable, "simulate": unavailable}
    client_commands.add_worker_command(commands)
    simulate_command.add_command(commands)
    return {"worker": client_commands.worker, "simulate": simulate_command.simulate}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="baywheels", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser(
        "serve", help="migrate, then serve HTTP (embedded PostgreSQL if no DATABASE_URL)"
    )
    serve_cmd.add_argument("--no-migrate", action="store_true", help="do not apply migrations first")
    serve_cmd.add_argument("--host", help="overrides HOST")
    serve_cmd.add_argument("--port", type=int, help="overrides PORT")
    commands.add_parser("migrate", help="apply pending migrations and exit")
    sql_cmd = commands.add_parser("sql", help="print a named query (for psql), or list them")
    sql_cmd.add_argument("name", nargs="?", help="query name; omit to list all")
    clients = _client_commands(commands)
    args = parser.parse_args(argv)
    if args.command in clients:
        return int(clients[args.command](args))

    if args.command == "sql":
        if args.name is None:
            for query in sql.queries().values():
                print(f"{query.name} :{query.cardinality}  ({query.source})")
            return 0
        if args.name not in sql.queries():
            print(f"no query named {args.name!r}; `baywheels sql` lists them", file=sys.stderr)
            return 2
        print(sql.text(args.name))
        return 0

    try:
        settings = config.override(
            config.load(), host=getattr(args, "host", None), port=getattr(args, "port", None)
        )
    except config.SettingsError as exc:
        print(f"baywheels: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "serve":
        serve(settings, migrate=not args.no_migrate)
    else:
        migrate(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
