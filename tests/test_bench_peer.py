"""The minimal app of the benchmark (bench/peer.py), as the harness runs it: a real uvicorn process with 1 or
2 workers on a real database, answering a dispatch, a 404 when nothing is ready and a 400 for a bad body."""

from pathlib import Path

import httpx
import pytest

from bench.config import QUICK
from bench.context import Context
from bench.database import Server
from bench.loadgen import LoadGen


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_minimal_app_dispatches_in_order_then_answers_404(
    server_dsn: str, database_url: str, tmp_path: Path, workers: int
) -> None:
    server = Server(server_dsn)
    # Tasks 1..3 with priorities 1, 2, 0: dispatch order 2, 1, 3.
    await server.execute(database_url, "bench_backlog_insert", 1, 3)
    ctx = Context(QUICK, server, LoadGen(None, tmp_path), tmp_path, None)
    async with (
        ctx.peer(database_url, pool=4, workers=workers) as peer,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{peer.port}") as http,
    ):
        answers = [
            await http.post("/dispatch/next", json={"worker_id": f"van-{n}", "lease_seconds": 60})
            for n in range(3)
        ]
        assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
        tasks = [a.json() for a in answers]
        assert [t["id"] for t in tasks] == [2, 1, 3]
        assert [t["worker_id"] for t in tasks] == ["van-0", "van-1", "van-2"]
        assert {t["status"] for t in tasks} == {"assigned"}
        assert {t["lease_seconds"] for t in tasks} == {60}

        empty = await http.post("/dispatch/next", json={"worker_id": "van-9"})
        assert empty.status_code == 404
        assert empty.json() == {"detail": "No available tasks with status 'ready'"}

        bad = await http.post("/dispatch/next", json={"worker": "van-9"})
        assert bad.status_code == 400
        assert "worker" in bad.json()["detail"]
        assert (await http.get("/healthz")).status_code == 200
    held = {row["id"]: row["worker_id"] for row in await server.fetch(database_url, "bench_assigned")}
    assert held == {2: "van-0", 1: "van-1", 3: "van-2"}
    assert (await server.fetchrow(database_url, "bench_assigned_twice"))[0] == 0
