"""Configuration: defaults, environment variables, the optional .env file, errors that name the variable,
and a DSN that never shows its password."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from baywheels.settings import Settings, SettingsError, load, override


@pytest.fixture
def no_env_file(tmp_path: Path) -> Path:
    return tmp_path / "absent.env"


def test_defaults(no_env_file: Path) -> None:
    settings = load({}, env_file=no_env_file)
    assert settings == Settings()
    assert (settings.host, settings.port, settings.database_url) == ("127.0.0.1", 8000, None)
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert (settings.log_level, settings.log_format, settings.access_log) == ("info", None, True)


def test_environment_overrides(no_env_file: Path) -> None:
    settings = load(
        {
            "PORT": "9001",
            "HOST": "0.0.0.0",
            "DATABASE_URL": "postgresql://app@db/bikes",
            "ACCESS_LOG": "false",
            "POOL_MAX_SIZE": "50",
            "DB_COMMAND_TIMEOUT": "2.5",
            "LOG_LEVEL": "debug",
            "UNRELATED": "ignored",
        },
        env_file=no_env_file,
    )
    assert (settings.port, settings.host, settings.database_url) == (
        9001,
        "0.0.0.0",
        "postgresql://app@db/bikes",
    )
    assert (settings.access_log, settings.pool_max_size, settings.db_command_timeout) == (False, 50, 2.5)
    assert settings.log_level == "debug"


def test_an_empty_variable_means_the_default(no_env_file: Path) -> None:
    assert load({"PORT": "", "DATABASE_URL": ""}, env_file=no_env_file) == Settings()


def test_env_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# local development\nPORT=9002\nLOG_FORMAT=console\nDATABASE_URL=postgresql://me@localhost/dev\n"
    )
    settings = load({}, env_file=env_file)
    assert (settings.port, settings.log_format) == (9002, "console")
    assert settings.database_url == "postgresql://me@localhost/dev"


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9002\nHOST=10.0.0.1\n")
    settings = load({"PORT": "9003"}, env_file=env_file)
    assert (settings.port, settings.host) == (9003, "10.0.0.1")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PORT": "abc"}, "invalid PORT='abc': Expected `int`, got `str`"),
        ({"PORT": "70000"}, "invalid PORT='70000': Expected `int` <= 65535"),
        ({"POOL_MAX_SIZE": "0"}, "invalid POOL_MAX_SIZE='0': Expected `int` >= 1"),
        ({"LOG_LEVEL": "loud"}, "invalid LOG_LEVEL='loud': Invalid enum value 'loud'"),
        ({"ACCESS_LOG": "maybe"}, "invalid ACCESS_LOG='maybe': Expected `bool`, got `str`"),
        ({"MAX_BODY_BYTES": "10"}, "invalid MAX_BODY_BYTES='10': Expected `int` >= 1024"),
        (
            {"DATABASE_URL": "mysql://app:s3cret@db/bikes"},
            "invalid DATABASE_URL: not a postgresql:// or postgres:// URL",
        ),
        (
            {"READ_DATABASE_URL": "mysql://app:s3cret@replica/bikes"},
            "invalid READ_DATABASE_URL: not a postgresql:// or postgres:// URL",
        ),
        ({"RETENTION_DAYS": "0"}, "invalid RETENTION_DAYS='0': Expected `float` > 0.0"),
        (
            {"POOL_MIN_SIZE": "30", "POOL_MAX_SIZE": "20"},
            "invalid settings: POOL_MIN_SIZE must not exceed POOL_MAX_SIZE",
        ),
    ],
)
def test_invalid_values_name_the_variable(no_env_file: Path, environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load(environ, env_file=no_env_file)
    assert str(raised.value) == message


def test_command_line_options_override_and_are_validated(no_env_file: Path) -> None:
    settings = load({"PORT": "9001"}, env_file=no_env_file)
    assert override(settings, host=None, port=None) == settings
    assert (override(settings, host="0.0.0.0", port=0).host, override(settings, port=0).port) == (
        "0.0.0.0",
        0,
    )
    with pytest.raises(SettingsError, match=r"^invalid PORT=70000: Expected `int` <= 65535$"):
        override(settings, port=70000)


def test_serve_with_a_bad_port_exits_2_naming_it(tmp_path: Path) -> None:
    fields = {name.upper() for name in Settings.__struct_fields__}
    env = {key: value for key, value in os.environ.items() if key not in fields}
    result = subprocess.run(
        [sys.executable, "-m", "baywheels", "serve"],
        env={**env, "PORT": "abc"},
        cwd=tmp_path,  # no .env here
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["baywheels: invalid PORT='abc': Expected `int`, got `str`"]


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        (None, "embedded"),
        ("postgresql://app@db:5432/bikes", "postgresql://app@db:5432/bikes"),
        ("postgresql://app:s3cret@db:5432/bikes", "postgresql://app:***@db:5432/bikes"),
        (
            "postgresql://app:s3:c/r%40et@db/bikes?sslmode=require",
            "postgresql://app:***@db/bikes?sslmode=require",
        ),
        ("postgresql://:s3cret@db/bikes", "postgresql://:***@db/bikes"),
        ("postgresql://app@db/bikes?password=s3cret", "postgresql://app@db/bikes?password=***"),
        (
            "postgresql://app@db/bikes?sslmode=require&password=s3cret&application_name=x",
            "postgresql://app@db/bikes?sslmode=require&password=***&application_name=x",
        ),
    ],
)
def test_safe_database_url_hides_the_password(url: str | None, safe: str) -> None:
    shown = Settings(database_url=url).safe_database_url
    assert shown == safe
    assert "s3" not in shown
    if url is not None:
        assert Settings(read_database_url=url).safe_read_database_url == safe
