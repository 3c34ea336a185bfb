"""The benchmark's PostgreSQL: the server (DATABASE_URL or an embedded one), a migrated template database
per kind of starting state, and a fresh copy of it for every measurement."""

import itertools
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from baywheels import db, sql

# The harness's own queries, beside it: the service's sql/ holds only what the service runs.
SQL_FILE = Path(__file__).resolve().parent / "bench.sql"


@cache
def _queries() -> dict[str, sql.Query]:
    return sql.parse(SQL_FILE.read_text(), SQL_FILE.name)


def q(name: str, /, **identifiers: str) -> str:
    """A query of bench.sql, with {placeholders} filled by quoted identifiers."""
    quoted = {key: '"' + value.replace('"', '""') + '"' for key, value in identifiers.items()}
    return _queries()[name].text.format(**quoted) if quoted else _queries()[name].text


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings=db.SERVER_SETTINGS)


class Server:
    """Creates and drops the benchmark's databases on the server ``dsn`` points to."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._names = itertools.count(1)
        self._prefix = f"bench_{os.getpid()}"
        self.created: list[str] = []

    def url(self, name: str) -> str:
        return with_database(self.dsn, name)

    async def admin(self, *statements: str) -> None:
        conn = await connect(self.dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def template(self, kind: str, backlog: int = 0) -> str:
        """A migrated database with ``backlog`` ready tasks, vacuumed and analysed, to copy from."""
        name = f"{self._prefix}_tpl_{kind}"
        await self.admin(q("bench_database_drop", name=name), q("bench_database_create_empty", name=name))
        self.created.append(name)
        await db.migrate(self.url(name))
        conn = await connect(self.url(name))
        try:
            if backlog:
                await conn.execute(q("bench_backlog_insert"), 1, backlog)
                await conn.execute(q("bench_station_claims_insert"))
            await conn.execute(q("bench_vacuum_analyze"))
        finally:
            await conn.close()
        return name

    async def clone(self, template: str, *, sync_commit: bool = True) -> str:
        """A fresh copy (CREATE DATABASE ... TEMPLATE is a file copy); its URL."""
        name = f"{self._prefix}_{next(self._names)}"
        statements = [
            q("bench_database_drop", name=name),
            q("bench_database_create", name=name, template=template),
        ]
        if not sync_commit:
            statements.append(q("bench_database_sync_off", name=name))
        await self.admin(*statements)
        self.created.append(name)
        return self.url(name)

    async def drop(self, url: str) -> None:
        name = database_name(url)
        await self.admin(q("bench_database_drop", name=name))
        if name in self.created:
            self.created.remove(name)

    async def drop_all(self) -> None:
        for name in reversed(self.created):
            await self.admin(q("bench_database_drop", name=name))
        self.created.clear()

    async def fetch(self, url: str, name: str, *args: Any) -> Sequence[asyncpg.Record]:
        conn = await connect(url)
        try:
            return await conn.fetch(q(name), *args)
        finally:
            await conn.close()

    async def fetchrow(self, url: str, name: str, *args: Any) -> asyncpg.Record:
        rows = await self.fetch(url, name, *args)
        return rows[0]

    async def execute(self, url: str, name: str, *args: Any) -> None:
        conn = await connect(url)
        try:
            await conn.execute(q(name), *args)
        finally:
            await conn.close()
