"""The service keeps nothing that matters in memory: what it answered before a restart it answers after,
whether the database is external or the embedded PostgreSQL that `make run` starts under DATA_DIR."""

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil

from conftest import LiveServer
from helpers import Json, approve_many, bearer, dispatch, ingest, item


async def arrange(client: httpx.AsyncClient) -> Json:
    """Three suggestions: two approved, one of those dispatched. Returns the task dispatched."""
    ingested = await ingest(client, [item(10 + i, 20 + i, reason=f"r{i}", priority=i) for i in range(3)])
    await approve_many(client, ingested["ids"][:2])
    task = await dispatch(client, "van-7")
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
    async with live_server.client() as client:
        task = await arrange(client)
        before = await state(client, task["id"])
    assert len(before["suggestions"]) == 1
    (other,) = (t for t in before["tasks"] if t["id"] != task["id"])
    assert (other["status"], other["worker_id"]) == ("ready", None)
    assert next(t for t in before["tasks"] if t["id"] == task["id"]) == task

    assert await asyncio.to_thread(live_server.stop, signal.SIGTERM) == 0
    await asyncio.to_thread(live_server.start)
    async with live_server.client() as client:
        assert await state(client, task["id"]) == before
        # And it carries on from there: the other task is still there to dispatch, the first is not.
        response = await client.post("/dispatch/next", json={"worker_id": "van-8"})
        assert response.status_code == 200
        assert response.json()["id"] == other["id"]


def as_make_run_starts_it(data_dir: Path) -> LiveServer:
    """`baywheels serve` as `make run` starts it: no DATABASE_URL, migrations on, the data under DATA_DIR.
    Away from the checkout, so no .env file there can supply a DATABASE_URL."""
    env = {"DATA_DIR": str(data_dir), "LOG_LEVEL": "warning"}
    return LiveServer(None, env=env, cwd=data_dir.parent)


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])


def running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def test_embedded_postgres_starts_stops_with_the_service_and_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = as_make_run_starts_it(data_dir)
    try:
        # The first start runs initdb.
        await asyncio.to_thread(first.start, 180)
        # A newcomer is not locked out: the first start made an admin key only this user can read.
        key_file = data_dir / "admin-api-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        admin = bearer(key_file.read_text().strip())
        async with first.client(headers=admin) as client:
            task = await arrange(client)
            before = await state(client, task["id"])
        postgres = postmaster_pid(data_dir)
        assert running(postgres)
    finally:
        # Ctrl-C: the service shuts down, then stops the PostgreSQL it started.
        code = await asyncio.to_thread(first.stop, signal.SIGINT, 60)
    assert code == 0
    assert not running(postgres)
    assert not (data_dir / "pg" / "postmaster.pid").exists()

    second = as_make_run_starts_it(data_dir)
    try:
        await asyncio.to_thread(second.start, 120)
        # Keys exist now: no second bootstrap key.
        assert bearer(key_file.read_text().strip()) == admin
        async with second.client(headers=admin) as client:
            assert await state(client, task["id"]) == before
        postgres = postmaster_pid(data_dir)
    finally:
        # SIGTERM (a service manager's stop) cleans up just the same.
        code = await asyncio.to_thread(second.stop, signal.SIGTERM, 60)
    assert code == 0
    assert not running(postgres)
    assert not (data_dir / "pg" / "postmaster.pid").exists()
