"""``baywheels simulate`` against a real service: a simulated hour of the morning commute at 600x ends with
every suggestion accounted for, every task finished or open, and the service's counts equal to the
simulator's, checked here again from the service's own answers."""

import asyncio
import json
import sys
from collections import Counter

from baywheels.client import Operator
from conftest import LiveServer
from helpers import ADMIN_KEY


async def test_a_simulated_hour_keeps_the_books(database_url: str) -> None:
    server = LiveServer(
        database_url, env={"REAPER_INTERVAL_SECONDS": "0.2", "TASK_RETRY_BACKOFF_SECONDS": "1"}
    )
    await asyncio.to_thread(server.start)
    try:
        args = ["--seed", "1", "--speed", "600", "--start", "07:00", "--hours", "1", "--stations", "40"]
        args += ["--vans", "10", "--fail-rate", "0.1", "--phone-loss-rate", "0.1", "--json"]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "baywheels",
            "simulate",
            "--url",
            server.url,
            "--key",
            ADMIN_KEY,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        summary = json.loads(out)
        assert (process.returncode, summary["violations"]) == (0, []), err.decode()

        async with Operator(server.url, ADMIN_KEY) as operator:
            tasks = [t async for t in operator.all_tasks()]
            pending = [s async for s in operator.all_suggestions()]
        statuses = Counter(t.status for t in tasks)
        # Nothing is held or stuck once the vans have gone: finished, or ready for the next day.
        assert set(statuses) <= {"completed", "failed", "canceled", "ready"}, statuses
        assert summary["tasks"] == {
            "created": len(tasks),
            **{s: statuses.get(s, 0) for s in summary["tasks"] if s != "created"},
        }
        suggestions = summary["suggestions"]
        assert (suggestions["approved"], suggestions["pending"]) == (
            len({t.suggestion_id for t in tasks}),
            len(pending),
        )
        assert suggestions["created"] == len(tasks) + len(pending)
        # The day did something: tasks were done, and the vans' troubles happened and were survived.
        assert statuses["completed"] > 0
        assert summary["bikes_moved"] > 0
        assert summary["attempts_failed"] + summary["phones_lost"] > 0
        assert summary["median_suggestion_to_completion_minutes"] > 0
    finally:
        await asyncio.to_thread(server.stop)


async def test_simulate_refuses_a_service_with_open_work(live_server: LiveServer) -> None:
    async with Operator(live_server.url, ADMIN_KEY) as operator:
        await operator.call(
            "POST",
            "/suggestions",
            type(None),
            body=[{"from_station_id": 1, "to_station_id": 2, "qty": 1, "reason": "t"}],
        )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "baywheels",
        "simulate",
        "--url",
        live_server.url,
        "--key",
        ADMIN_KEY,
        "--hours",
        "0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert "fresh database" in err.decode()
