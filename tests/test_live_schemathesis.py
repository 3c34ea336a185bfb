"""Schemathesis over the whole OpenAPI document of a real server: every operation with schema-valid and
schema-invalid data, all checks (no 5xx, answers that match the schema, valid data accepted, invalid data
refused with 4xx). Bounded examples and a fixed seed keep it short and repeatable."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import LiveServer
from helpers import ADMIN_KEY

TESTS = Path(__file__).parent


def test_schemathesis_finds_nothing(live_server: LiveServer, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        f"--config-file={TESTS / 'schemathesis.toml'}",
        "run",
        f"{live_server.url}/openapi.json",
        "--checks=all",
        "--mode=all",
        "--max-examples=25",
        "--seed=20260101",
        "--generation-database=none",
        "--no-color",
        # As an admin, who may call every operation (the role matrix is tests/test_api_auth.py's).
        f"--header=Authorization: Bearer {ADMIN_KEY}",
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    # Run in a temporary folder: schemathesis keeps a cache of crashes in the working directory.
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
