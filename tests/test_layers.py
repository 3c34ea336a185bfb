"""The house's layer rules, read from the source's imports: a change that breaks one fails here, not in
review. Handlers hold no SQL, queries know nothing of HTTP, models know neither HTTP nor the database,
settings import nothing of ours, and the clients (``client/``, ``simulate/``) know the service only by its
public API: of ours they import the models and each other, never the server's layers; the server never
imports them."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "baywheels"
# The opening of a statement, as our SQL is written (upper-case keywords), not prose such as "With `x`".
SQL_TEXT = re.compile(r"^\s*(SELECT\b|INSERT INTO\b|UPDATE \w+\s+SET\b|DELETE FROM\b|WITH \w+ AS\b)", re.I)


def module_name(path: Path) -> str:
    return ".".join(("baywheels", *path.relative_to(PACKAGE).with_suffix("").parts))


def imports(path: Path) -> set[str]:
    """Every module the file imports, absolute (relative imports resolved against its package)."""
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
                found.update({base} if node.module else {f"{base}.{alias.name}" for alias in node.names})
            else:
                assert node.module is not None
                found.add(node.module)
    return found


def modules(pattern: str) -> list[Path]:
    paths = sorted(PACKAGE.glob(pattern))
    assert paths, pattern
    return paths


def reaches(found: set[str], prefix: str) -> bool:
    return any(name == prefix or name.startswith(f"{prefix}.") for name in found)


@pytest.mark.parametrize("path", modules("handlers/*.py"), ids=lambda p: p.name)
def test_handlers_hold_no_sql(path: Path) -> None:
    assert not reaches(imports(path), "baywheels.sql"), "handlers call query functions, never the loader"
    strings = [
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    assert [s for s in strings if SQL_TEXT.match(s)] == []


def test_queries_import_no_starlette() -> None:
    assert not reaches(imports(PACKAGE / "queries.py"), "starlette")


def test_models_import_neither_the_database_nor_starlette() -> None:
    found = imports(PACKAGE / "models.py")
    for layer in ("starlette", "asyncpg", "baywheels.db", "baywheels.queries", "baywheels.sql"):
        assert not reaches(found, layer), layer


def test_settings_import_nothing_of_ours() -> None:
    assert not reaches(imports(PACKAGE / "settings.py"), "baywheels")


CLIENT_SIDE = ("baywheels.client", "baywheels.simulate")


@pytest.mark.parametrize(
    "path", [*modules("client/*.py"), *modules("simulate/*.py")], ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_the_clients_use_the_public_api_only(path: Path) -> None:
    found = imports(path)
    ours = {name for name in found if reaches({name}, "baywheels")}
    beyond = {
        n for n in ours if not any(reaches({n}, allowed) for allowed in ("baywheels.models", *CLIENT_SIDE))
    }
    assert beyond == set(), "the clients speak HTTP to the service: no db, queries, handlers, app..."
    for layer in ("starlette", "asyncpg", "uvicorn"):
        assert not reaches(found, layer), layer


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in modules("**/*.py")
        if p.relative_to(PACKAGE).parts[0] not in ("client", "simulate", "cli.py")
    ],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_the_service_does_not_import_the_clients(path: Path) -> None:
    # cli.py imports them inside the `worker` and `simulate` commands only, which need the client extra. The
    # service reads the station feed (gbfs.py) with httpx, and nothing else does.
    found = imports(path)
    for client in (*CLIENT_SIDE, *(() if path.name == "gbfs.py" else ("httpx",))):
        assert not reaches(found, client), client


def test_the_rules_can_fail() -> None:
    # The checks above would pass vacuously if relative imports were misread or SQL went unrecognised.
    assert SQL_TEXT.match("SELECT * FROM tasks WHERE id = $1")
    assert SQL_TEXT.match("with done as (update tasks set x = 1) select 1")
    assert not SQL_TEXT.match("With `worker_id`, only the holder may complete the task")
    assert "baywheels.queries" in imports(PACKAGE / "handlers" / "tasks.py")
    assert "baywheels.settings" in imports(PACKAGE / "db.py")
    assert "baywheels.models" in imports(PACKAGE / "client" / "worker.py")
    assert "baywheels.client.errors" in imports(PACKAGE / "client" / "worker.py")
