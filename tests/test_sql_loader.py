"""The SQL files and their loader: every query parses under PostgreSQL, names are unique and alphabetical
within a file, and queries.py uses exactly the queries that exist."""

import re
from pathlib import Path

import asyncpg
import pytest

from baywheels import queries, sql

QUERY_FILES = sorted((sql.sql_dir() / "queries").glob("*.sql"))
NAME_LINE = re.compile(r"^-- name: (\w+) :(\w+)\s*$", re.MULTILINE)


def test_every_block_is_loaded() -> None:
    declared = [name for path in QUERY_FILES for name in NAME_LINE.findall(path.read_text())]
    assert len(declared) == len(sql.queries()) > 0
    assert {name for name, _ in declared} == set(sql.queries())
    assert {card for _, card in declared} <= {"one", "many", "exec"}


async def test_every_query_parses_under_postgresql(pool: asyncpg.Pool) -> None:
    # PREPARE plans the statement against the migrated schema without running it: a typo, an unknown
    # column or a type error fails here.
    async with pool.acquire() as conn:
        for query in sql.queries().values():
            try:
                await conn.prepare(query.text)
            except asyncpg.PostgresError as exc:
                pytest.fail(f"{query.source}: {query.name}: {exc}")


@pytest.mark.parametrize("path", QUERY_FILES, ids=lambda path: path.name)
def test_names_are_alphabetical_within_a_file(path: Path) -> None:
    names = [name for name, _ in NAME_LINE.findall(path.read_text())]
    assert names == sorted(names)


def test_queries_py_uses_exactly_the_defined_queries() -> None:
    source = Path(queries.__file__).read_text()
    used = re.findall(r'_query_text\("(\w+)", "(\w+)"\)', source)
    assert sorted(name for name, _ in used) == sorted(sql.queries())
    for name, cardinality in used:
        assert sql.queries()[name].cardinality == cardinality, name
    # Each bound statement is also run by a function.
    for constant in re.findall(r"^(_[A-Z_]+) = _query_text\(", source, re.MULTILINE):
        assert len(re.findall(rf"\b{constant}\b", source)) >= 2, f"{constant} is bound but never run"


def test_parse_reads_name_cardinality_and_text() -> None:
    text = """-- comment about the file

-- name: b_get :one
-- Why it exists.
SELECT 1;

-- name: a_list :many
SELECT 2;
"""
    parsed = sql.parse(text, "x.sql")
    assert list(parsed) == ["b_get", "a_list"]
    assert parsed["b_get"] == sql.Query("b_get", "one", "-- Why it exists.\nSELECT 1;", "x.sql")
    assert (parsed["a_list"].cardinality, parsed["a_list"].text) == ("many", "SELECT 2;")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("-- name: a :one\nSELECT 1;\n-- name: a :one\nSELECT 2;\n", "x.sql: query a is defined twice"),
        ("-- name: a :one\n\n-- name: b :one\nSELECT 2;\n", "x.sql: query a has no text"),
        ("-- name: a :one\nSELECT 1;\n-- name: b :exec\n   \n", "x.sql: query b has no text"),
    ],
    ids=["duplicate", "empty block", "empty last block"],
)
def test_parse_rejects(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(error)}$"):
        sql.parse(text, "x.sql")


def test_text_of_an_unknown_query_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        sql.text("no_such_query")


def test_migrations_are_numbered_in_order() -> None:
    migrations = sql.migrations()
    versions = [m.version for m in migrations]
    assert versions == sorted(set(versions))
    assert versions[0] == 1
    files = sorted(path.name for path in (sql.sql_dir() / "migrations").glob("*.sql"))
    assert [f"{m.version:03d}_{m.name}.sql" for m in migrations] == files
