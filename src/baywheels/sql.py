"""Load the named queries of ``sql/queries/*.sql`` and the migrations of ``sql/migrations/``, once.

A query block starts with ``-- name: <name> :<cardinality>`` (``:one``, ``:many`` or ``:exec``); the comment
lines right under it describe the query; everything up to the next ``-- name:`` is its text.
"""

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal, cast

Cardinality = Literal["one", "many", "exec"]

_NAME = re.compile(r"^-- name: (?P<name>[a-z][a-z0-9_]*) :(?P<card>one|many|exec)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(?P<version>\d{3})_(?P<name>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    cardinality: Cardinality
    text: str
    source: str


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str


def sql_dir() -> Path:
    """The installed copy (wheel) or, in a checkout, the top-level ``sql/`` folder."""
    installed = Path(str(resources.files("baywheels"))) / "sql"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "sql"


def parse(text: str, source: str) -> dict[str, Query]:
    matches = list(_NAME.finditer(text))
    queries: dict[str, Query] = {}
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        body = text[match.end() : end].strip()
        name = match["name"]
        if not body:
            raise ValueError(f"{source}: query {name} has no text")
        if name in queries:
            raise ValueError(f"{source}: query {name} is defined twice")
        cardinality = cast(Cardinality, match["card"])
        queries[name] = Query(name, cardinality, body, source)
    return queries


@cache
def queries() -> dict[str, Query]:
    found: dict[str, Query] = {}
    for path in sorted((sql_dir() / "queries").glob("*.sql")):
        for name, query in parse(path.read_text(), path.name).items():
            if name in found:
                raise ValueError(f"query {name} is defined in {found[name].source} and {path.name}")
            found[name] = query
    return found


@cache
def migrations() -> tuple[Migration, ...]:
    found = []
    for path in sorted((sql_dir() / "migrations").glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name} is not named NNN_name.sql")
        found.append(Migration(int(match["version"]), match["name"], path.read_text()))
    versions = [m.version for m in found]
    # Gaps are allowed: parallel branches each hold a number of their own and land in any order; the
    # migration table records each version applied, so a lower one merged later is still applied.
    if len(set(versions)) != len(versions):
        raise ValueError(f"migrations must have distinct numbers, found {versions}")
    return tuple(found)


def text(name: str) -> str:
    """The SQL of one query; an unknown name raises KeyError (checked for every name at start-up)."""
    return queries()[name].text
