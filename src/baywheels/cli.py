"""``baywheels``: serve the API, migrate the database, manage API keys, import stations, print a query; and,
as clients of a running service, a command-line worker and a simulated day."""

import argparse
import asyncio
import functools
import getpass
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import structlog

from . import logs, sql
from . import settings as config
from .embedded import EmbeddedPostgres
from .models import ROLES, KeyCreate

log = structlog.get_logger(__name__)

# Where the first start puts the admin key it creates, under DATA_DIR.
ADMIN_KEY_FILE = "admin-api-key"


def _database(settings: config.Settings) -> tuple[config.Settings, EmbeddedPostgres | None]:
    """Use DATABASE_URL, or start the embedded server under DATA_DIR when it is unset."""
    if settings.database_url is not None:
        return settings, None
    server = EmbeddedPostgres(Path(settings.data_dir))
    return msgspec.structs.replace(settings, database_url=server.dsn()), server


def serve(settings: config.Settings, migrate: bool) -> None:
    import uvicorn

    from . import db, direct, protocol
    from .app import create_app, serving_gc

    # uvicorn shuts down gracefully on SIGTERM, then raises it again, and its default action would kill the
    # process before the embedded PostgreSQL is stopped. As Ctrl-C, uvicorn.run returns: clean exit, code 0.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    settings, server = _database(settings)
    assert settings.database_url is not None
    try:
        if migrate:
            asyncio.run(db.migrate(db.session_dsn(settings)))  # a session lock: not through a pooler
        if settings.auth_on:
            asyncio.run(_bootstrap(settings, Path(settings.data_dir).expanduser().resolve() / ADMIN_KEY_FILE))
        else:
            print("WARNING: AUTH=off: anyone who can reach the service may do anything", flush=True)
        scheme = "https" if settings.tls_cert_file else "http"
        base = f"{scheme}://{settings.host}:{settings.port}"
        print(f"Bay Wheels dispatch service on {base}  (API docs: {base}/docs, {base}/redoc)", flush=True)
        run = functools.partial(
            uvicorn.run,
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http=direct.DirectProtocol,  # httptools, with the limits of protocol.py and direct.py's dispatch
            log_config=None,
            access_log=False,
            server_header=False,
            # The rest of SHUTDOWN_GRACE_SECONDS is the lifespan's, to close the pool (app.py).
            timeout_graceful_shutdown=settings.shutdown_grace_seconds - settings.shutdown_cleanup_seconds,
            # X-Forwarded-For and X-Forwarded-Proto are believed from these proxies only.
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            ssl_certfile=settings.tls_cert_file,
            ssl_keyfile=settings.tls_key_file,
        )
        protocol.configure(settings)
        direct.configure(settings)
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


class _NotWritten(Exception):
    """Rolls the first admin key back: nobody could have read it."""


def _write_secret(path: Path, token: str) -> None:
    """Created 0600 (no moment when others could read it), replacing an older file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")


async def _bootstrap(settings: config.Settings, path: Path) -> None:
    """On the first start with no API key (and no ADMIN_API_KEY), create an admin key into a file only this
    user can read, and say where: a newcomer can call the API at once, and the secret is in no log."""
    from . import auth, db, queries

    if settings.admin_api_key is not None:
        return
    conn = await db.connect(db.session_dsn(settings), timeout=settings.db_connect_timeout)
    try:
        async with conn.transaction():
            await queries.api_key_bootstrap_lock(conn)
            if await queries.api_key_count(conn):
                return
            key, record = await auth.create_key(conn, "admin", None, "bootstrap", None, "bootstrap")
            # Before the commit: a key is never created that nobody could read.
            try:
                _write_secret(path, key.token)
            except OSError as exc:
                # A read-only container, say: serve all the same; keys come from ADMIN_API_KEY or the CLI.
                log.warning("admin_key_not_written", file=str(path), error=type(exc).__name__)
                print(f"Could not write a first admin key to {path}: set ADMIN_API_KEY.", flush=True)
                raise _NotWritten from None
    except _NotWritten:
        return
    finally:
        await conn.close()
    log.warning("admin_key_created", key_id=record.key_id, file=str(path))
    print(
        f"Created the first admin API key ({record.key_id}) in {path} (readable only by you).\n"
        f'Use it: curl -H "Authorization: Bearer $(cat {path})" ...  '
        "Make others with `baywheels keys create`.",
        flush=True,
    )


def keys(settings: config.Settings, args: argparse.Namespace) -> int:
    from . import auth, db, queries

    settings, server = _database(settings)
    assert settings.database_url is not None
    actor = f"cli:{getpass.getuser()}"

    async def run() -> int:
        assert settings.database_url is not None
        await db.migrate(settings.database_url)
        conn = await db.connect(settings.database_url, timeout=settings.db_connect_timeout)
        try:
            if args.keys_command == "create":
                expires = None
                if args.expires_in is not None:
                    expires = datetime.now(UTC) + timedelta(days=args.expires_in)
                try:
                    request = msgspec.convert(
                        {
                            "role": args.role,
                            "worker_id": args.worker_id,
                            "name": args.name,
                            "expires_at": expires,
                        },
                        KeyCreate,
                    )
                except msgspec.ValidationError as exc:
                    print(f"baywheels keys create: {exc}", file=sys.stderr)
                    return 2
                key, record = await auth.create_key(
                    conn, request.role, request.worker_id, request.name, request.expires_at, actor
                )
                print(
                    f"Created {record.role} key {record.key_id}"
                    + (f" for worker {record.worker_id}" if record.worker_id else "")
                    + (f", expires {record.expires_at.isoformat()}" if record.expires_at else "")
                    + "."
                )
                print("The key is shown this once; only its digest is kept:")
                print(key.token)
                return 0
            if args.keys_command == "list":
                columns = (
                    "key_id",
                    "role",
                    "worker_id",
                    "name",
                    "created_at",
                    "created_by",
                    "expires_at",
                    "last_used_at",
                    "revoked_at",
                    "revoked_by",
                )
                rows = [
                    [_cell(getattr(record, column)) for column in columns]
                    for record in await queries.api_key_list(conn)
                ]
                widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
                for row in [list(columns), *rows]:
                    print(
                        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                    )
                return 0
            revoked = await queries.api_key_revoke(conn, args.key_id, actor)
            if revoked is None:
                print(f"baywheels keys revoke: no key {args.key_id!r}", file=sys.stderr)
                return 1
            assert revoked.revoked_at is not None
            print(f"Revoked {revoked.key_id} (by {revoked.revoked_by}, {revoked.revoked_at.isoformat()}).")
            return 0
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    finally:
        if server is not None:
            server.stop()


def stations(settings: config.Settings, args: argparse.Namespace) -> int:
    """`stations import`: read a GBFS feed (a gbfs.json URL or a folder of its files) into the registry, in
    one transaction; a feed that cannot be read or is malformed changes nothing."""
    from . import db, gbfs

    settings, server = _database(settings)
    assert settings.database_url is not None

    async def run() -> int:
        assert settings.database_url is not None
        await db.migrate(db.session_dsn(settings))
        conn = await db.connect(db.session_dsn(settings), timeout=settings.db_connect_timeout)
        try:
            result = await gbfs.import_source(conn, args.source, settings.gbfs_timeout_seconds)
        except gbfs.FeedError as exc:
            print(f"baywheels stations import: refused, nothing changed: {exc}", file=sys.stderr)
            return 1
        finally:
            await conn.close()
        print(
            f"Imported {result.stations} stations from {args.source}: {result.created} new, "
            f"{result.deactivated} no longer in the feed (kept, inactive), {result.status_changed} with new "
            f"figures, {result.stale_changed} open tasks re-flagged."
        )
        return 0

    try:
        return asyncio.run(run())
    finally:
        if server is not None:
            server.stop()


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


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
    keys_cmd = commands.add_parser("keys", help="create, list or revoke API keys (DATABASE_URL or embedded)")
    keys_commands = keys_cmd.add_subparsers(dest="keys_command", required=True)
    create_cmd = keys_commands.add_parser("create", help="issue a key; prints it once, as the last line")
    create_cmd.add_argument("--role", required=True, choices=ROLES)
    create_cmd.add_argument(
        "--worker-id", help="the worker a worker key belongs to (required for --role worker)"
    )
    create_cmd.add_argument("--name", help="a note for people: whose key it is")
    create_cmd.add_argument("--expires-in", type=float, metavar="DAYS", help="refused after this many days")
    keys_commands.add_parser("list", help="every key, revoked ones included (never the secret)")
    revoke_cmd = keys_commands.add_parser("revoke", help="revoke a key: refused everywhere within 5 s")
    revoke_cmd.add_argument("key_id")
    stations_cmd = commands.add_parser("stations", help="the station registry (DATABASE_URL or embedded)")
    stations_commands = stations_cmd.add_subparsers(dest="stations_command", required=True)
    import_cmd = stations_commands.add_parser(
        "import", help="import a GBFS feed (v2.3, v3.x) in one transaction; a malformed one changes nothing"
    )
    import_cmd.add_argument(
        "source", metavar="URL_OR_FOLDER", help="a gbfs.json URL, or a folder of GBFS files"
    )
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
    logs.configure(settings.log_level, settings.log_format, trace_ids=settings.tracing_on)
    if args.command == "serve":
        serve(settings, migrate=not args.no_migrate)
    elif args.command == "keys":
        return keys(settings, args)
    elif args.command == "stations":
        return stations(settings, args)
    else:
        migrate(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
