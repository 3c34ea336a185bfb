"""A real Redis for the tests that share rate limits between instances: REDIS_URL when set, else a
redis-server of our own on a free port (Debian's package, installed when missing and we may, as the
benchmark installs wrk)."""

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = subprocess.run(
        ["apt-cache", "policy", "redis-server"], capture_output=True, text=True, check=False
    )
    if "Candidate:" not in policy.stdout or "Candidate: (none)" in policy.stdout:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "redis-server"], env=env, check=False, capture_output=True
    )
    return shutil.which("redis-server")


@contextmanager
def redis_url(workdir: Path) -> Iterator[str | None]:
    """A Redis URL for the duration, or None when none can be had (not root, no apt, no package)."""
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    binary = ensure_redis_server()
    if binary is None:
        yield None
        return
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)  # polling another process's start-up, with a deadline
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
