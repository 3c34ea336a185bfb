"""LOG_FORMAT: readable lines for a person at a terminal, JSON for anything else; a set value wins."""

import json
import os
import pty
import re
import subprocess
import sys

import pytest

# Configures logging as `serve` does, then logs one event to stderr.
SCRIPT = (
    "import sys, structlog; from baywheels import logs; "
    "logs.configure('info', sys.argv[1] or None); structlog.get_logger('t').info('hello', n=1)"
)


def logged(fmt: str, *, terminal: bool) -> str:
    """What the script writes to stderr, a pseudo-terminal or a pipe."""
    command = [sys.executable, "-c", SCRIPT, fmt]
    if not terminal:
        return subprocess.run(command, stderr=subprocess.PIPE, check=True, timeout=60).stderr.decode()
    reader, writer = pty.openpty()
    try:
        subprocess.run(command, stderr=writer, check=True, timeout=60)
        return os.read(reader, 65536).decode()
    finally:
        os.close(reader)
        os.close(writer)


@pytest.mark.parametrize(
    ("fmt", "terminal", "as_json"),
    [
        ("", True, False),
        ("", False, True),
        ("json", True, True),
        ("console", False, False),
    ],
    ids=["unset at a terminal", "unset into a pipe", "json at a terminal", "console into a pipe"],
)
def test_log_format(fmt: str, terminal: bool, as_json: bool) -> None:
    line = logged(fmt, terminal=terminal).strip()
    assert "hello" in line
    if as_json:
        assert json.loads(line)["event"] == "hello"
    else:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line)  # colours, on a terminal
        assert not plain.startswith("{")
        assert "n=1" in plain
