"""The service keeps nothing that matters in memory: what it answered before a restart it answers after,
whether the database is external or the embedded PostgreSQL that `make run` starts under DATA_DIR."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from conftest import LiveServer, free_port
from helpers import ADMIN, bearer


async def arrange(client: httpx.AsyncClient) -> dict[str, Any]:
    """Three suggestions: two approved, one of those dispatched. Returns the task dispatched."""
    items = [
        {"from_station_id": 10 + i, "to_station_id": 20 + i, "qty": 3, "reason": f"r{i}", "priority": i}
        for i in range(3)
    ]
    response = await client.post("/suggestions", json=items)
    assert response.status_code == 201, response.text
    ids = response.json()["ids"]
    response = await client.post("/tasks/approve", json={"suggestion_ids": ids[:2]})
    assert response.status_code == 200, response.text
    response = await client.post("/dispatch/next", json={"worker_id": "van-7"})
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    assert (task["status"], task["worker_id"]) == ("assigned", "van-7")
    return task


async def state(client: httpx.AsyncClient, task_id: int) -> dict[str, Any]:
    """Everything a client can read about the arranged data."""
    answers = {
        "suggestions": await client.get("/suggestions"),
        "tasks": await client.get("/tasks"),
        "task": await client.get(f"/task/{task_id}"),
        "events": await client.get(f"/task/{task_id}/events"),
    }
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 200)
    return {name: r.json() for name, r in answers.items()}


async def test_data_survives_a_restart(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(headers=ADMIN, base_url=live_server.url, timeout=30) as client:
        task = await arrange(client)
        before = await state(client, task["id"])
    assert len(before["suggestions"]) == 1
    (other,) = (t for t in before["tasks"] if t["id"] != task["id"])
    assert (other["status"], other["worker_id"]) == ("ready", None)
    assert next(t for t in before["tasks"] if t["id"] == task["id"]) == task

    process = live_server.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 15) == 0
    live_server.process = None

    await asyncio.to_thread(live_server.start)
    async with httpx.AsyncClient(headers=ADMIN, base_url=live_server.url, timeout=30) as client:
        assert await state(client, task["id"]) == before
        # And it carries on from there: the other task is still there to dispatch, the first is not.
        response = await client.post("/dispatch/next", json={"worker_id": "van-8"})
        assert response.status_code == 200
        assert response.json()["id"] == other["id"]


class Serve:
    """`baywheels serve` as `make run` starts it: no DATABASE_URL, migrations on, the data under DATA_DIR."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "ADMIN_API_KEY"}}
        env |= {"DATA_DIR": str(data_dir), "ACCESS_LOG": "false", "LOG_LEVEL": "warning"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "baywheels", "serve", "--port", str(self.port)],
            env=env,
            # Away from the checkout, so no .env file there can supply a DATABASE_URL.
            cwd=data_dir.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"baywheels serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # polling another process for readiness, with a deadline
        self.process.kill()
        raise RuntimeError("baywheels serve did not become ready")

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "pg" / "postmaster.pid").read_text().split()[0])

    def stop(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def test_embedded_postgres_starts_stops_with_the_service_and_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = Serve(data_dir)
    try:
        # The first start runs initdb.
        await asyncio.to_thread(first.wait_ready, 180)
        # A newcomer is not locked out: the first start made an admin key only this user can read.
        key_file = data_dir / "admin-api-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        admin = bearer(key_file.read_text().strip())
        async with httpx.AsyncClient(headers=admin, base_url=first.url, timeout=30) as client:
            task = await arrange(client)
            before = await state(client, task["id"])
        postgres = first.postmaster_pid()
        assert running(postgres)
    finally:
        # Ctrl-C: the service shuts down, then stops the PostgreSQL it started.
        code = await asyncio.to_thread(first.stop, signal.SIGINT)
    assert code == 0
    assert not running(postgres)
    assert not (data_dir / "pg" / "postmaster.pid").exists()

    second = Serve(data_dir)
    try:
        await asyncio.to_thread(second.wait_ready, 120)
        # Keys exist now: no second bootstrap key.
        assert bearer(key_file.read_text().strip()) == admin
        async with httpx.AsyncClient(headers=admin, base_url=second.url, timeout=30) as client:
            assert await state(client, task["id"]) == before
        postgres = second.postmaster_pid()
    finally:
        # SIGTERM (a service manager's stop) cleans up just the same.
        code = await asyncio.to_thread(second.stop, signal.SIGTERM)
    assert code == 0
    assert not running(postgres)
    assert not (data_dir / "pg" / "postmaster.pid").exists()
