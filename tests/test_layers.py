"""The house's layer rules, read from the source's imports: a change that breaks one fails here, not in
review. Handlers hold no SQL, queries know nothing of HTTP, models know neither HTTP nor the database, and
settings import nothing of ours."""

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


def test_the_rules_can_fail() -> None:
    # The checks above would pass vacuously if relative imports were misread or SQL went unrecognised.
    assert SQL_TEXT.match("SELECT * FROM tasks WHERE id = $1")
    assert SQL_TEXT.match("with done as (update tasks set x = 1) select 1")
    assert not SQL_TEXT.match("With `worker_id`, only the holder may complete the task")
    assert "baywheels.queries" in imports(PACKAGE / "handlers" / "tasks.py")
    assert "baywheels.settings" in imports(PACKAGE / "db.py")
