"""``baywheels simulate`` against a real service: a simulated hour of the morning commute at 600x ends with
every suggestion accounted for (approved, dismissed, expired or pending, by the outcomes feed), every task
finished or open, and the service's counts equal to the simulator's, checked here again from the service's
own answers; its vans are registered workers that reported where they were; on a registry imported from the
made-up stations' GBFS feed, the day runs on the registry's stations."""

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from baywheels.client import MLEngine, Operator, Task
from baywheels.simulate.world import EAST, NORTH, SOUTH, WEST, World, write_gbfs
from conftest import LiveServer
from helpers import ADMIN_KEY


async def simulate(url: str, *args: str, within: float = 120) -> tuple[int, str, str]:
    """`baywheels simulate` as a user runs it: its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "baywheels",
        "simulate",
        "--url",
        url,
        "--key",
        ADMIN_KEY,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), within)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def the_books(url: str, summary: dict[str, Any]) -> list[Task]:
    """The service's own account of the day, checked against the summary: its tasks, and each suggestion's
    fate from the outcomes feed (else pending)."""
    async with Operator(url, ADMIN_KEY) as operator, MLEngine(url, ADMIN_KEY) as ml:
        tasks = [t async for t in operator.all_tasks()]
        pending = [s.id async for s in operator.all_suggestions()]
        fates: dict[int, str] = dict.fromkeys(pending, "pending")
        async for page in ml.outcomes():
            for outcome in page:
                if outcome.outcome in ("approved", "dismissed", "expired"):
                    fates[outcome.suggestion_id] = outcome.outcome
                if outcome.outcome == "dismissed":  # the operator says why, for the ML engine to learn
                    assert outcome.reason == "fewer than 2 bikes: not worth a van's trip", outcome
                    assert outcome.qty < 2, outcome
    statuses = Counter(t.status for t in tasks)
    # Nothing is held or stuck once the vans have gone: finished, or ready for the next day.
    assert set(statuses) <= {"completed", "failed", "canceled", "ready"}, statuses
    assert summary["tasks"] == {
        "created": len(tasks),
        **{s: statuses.get(s, 0) for s in summary["tasks"] if s != "created"},
    }
    # Every suggestion created is accounted for, once, and the counts are the service's.
    suggestions = summary["suggestions"]
    counted = Counter(fates.values())
    assert {f: suggestions[f] for f in ("approved", "dismissed", "expired", "pending")} == {
        f: counted.get(f, 0) for f in ("approved", "dismissed", "expired", "pending")
    }
    assert suggestions["created"] == len(fates)
    assert {i for i, f in fates.items() if f == "approved"} == {t.suggestion_id for t in tasks}
    return tasks


async def test_a_simulated_hour_keeps_the_books(database_url: str) -> None:
    server = LiveServer(
        database_url, env={"REAPER_INTERVAL_SECONDS": "0.2", "TASK_RETRY_BACKOFF_SECONDS": "1"}
    )
    await asyncio.to_thread(server.start)
    try:
        args = ["--seed", "1", "--speed", "600", "--start", "07:00", "--hours", "1", "--stations", "40"]
        args += ["--vans", "10", "--fail-rate", "0.1", "--phone-loss-rate", "0.1", "--json"]
        code, out, err = await simulate(server.url, *args)
        summary = json.loads(out)
        assert (code, summary["violations"]) == (0, []), err
        assert (summary["stations"], summary["stations_from"]) == (40, "made up")

        tasks = await the_books(server.url, summary)
        statuses = Counter(t.status for t in tasks)
        # The day did something: tasks were done, and the vans' troubles happened and were survived.
        assert statuses["completed"] > 0
        assert summary["bikes_moved"] > 0
        assert summary["attempts_failed"] + summary["phones_lost"] > 0
        assert summary["median_suggestion_to_completion_minutes"] > 0
        # The operator dismissed the moves too small for a trip, saying so; nothing expires without a TTL.
        assert summary["suggestions"]["dismissed"] > 0
        assert summary["suggestions"]["expired"] == 0

        # The vans were registered (their capacity), reported where they were, and went off shift at the end.
        async with Operator(server.url, ADMIN_KEY) as operator:
            vans = [w async for w in operator.all_workers()]
        assert [v.worker_id for v in vans] == [f"van-{n:03d}" for n in range(1, 11)]
        assert {(v.capacity, v.on_shift) for v in vans} == {(12, False)}
        for van in vans:
            assert van.lat is not None, van
            assert van.lon is not None, van
            assert (SOUTH <= van.lat <= NORTH, WEST <= van.lon <= EAST) == (True, True), van
        assert {t.worker_id for t in tasks if t.status == "completed"} <= {v.worker_id for v in vans}
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_day_on_the_registrys_stations_with_suggestions_that_expire(
    database_url: str, tmp_path: Path
) -> None:
    """The demo's way: made-up stations written as a GBFS feed, imported into the registry, and a day on
    them; with SUGGESTION_TTL, suggestions the ML engine stops posting expire, and are accounted for."""
    feed = tmp_path / "gbfs"
    code, out, err = await simulate(
        "http://unused", "--write-gbfs", str(feed), "--stations", "30", "--seed", "3"
    )
    assert code == 0, err
    imported = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "baywheels", "stations", "import", str(feed)],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    assert "Imported 30 stations" in imported.stdout

    env = {"REAPER_INTERVAL_SECONDS": "0.2", "TASK_RETRY_BACKOFF_SECONDS": "1", "SUGGESTION_TTL": "2"}
    server = LiveServer(database_url, env=env)
    await asyncio.to_thread(server.start)
    try:
        args = ["--seed", "3", "--speed", "600", "--start", "07:00", "--hours", "1", "--vans", "3"]
        # Three vans leave a backlog, some of which the ML engine stops posting as the morning goes on: those
        # expire. --stations is for made-up stations only: the registry's 30 are used.
        code, out, err = await simulate(server.url, *args, "--stations", "5", "--json")
        summary = json.loads(out)
        assert (code, summary["violations"]) == (0, []), err
        assert (summary["stations"], summary["stations_from"]) == (30, "registry")
        tasks = await the_books(server.url, summary)
        assert summary["suggestions"]["expired"] > 0
        assert summary["tasks"]["completed"] > 0
        async with Operator(server.url, ADMIN_KEY) as operator:
            registry = {s.id async for s in operator.all_stations()}
        assert {t.from_station_id for t in tasks} | {t.to_station_id for t in tasks} <= registry
    finally:
        await asyncio.to_thread(server.stop)


def test_the_made_up_feed_is_the_same_for_the_same_seed(tmp_path: Path) -> None:
    def written(seed: int) -> dict[str, Any]:
        folder = tmp_path / str(seed)
        write_gbfs(World.made_up(20, seed, 6 * 60), folder)
        return {
            f.name: json.loads(f.read_bytes())["data"] for f in folder.iterdir() if "status" not in f.name
        }

    assert written(1) == written(1)
    assert written(1) != written(2)
    stations = written(1)["station_information.json"]["stations"]
    assert [s["station_id"] for s in stations] == [str(i) for i in range(1, 21)]


async def test_simulate_refuses_a_service_with_open_work(live_server: LiveServer) -> None:
    async with Operator(live_server.url, ADMIN_KEY) as operator:
        await operator.call(
            "POST",
            "/suggestions",
            type(None),
            body=[{"from_station_id": 1, "to_station_id": 2, "qty": 1, "reason": "t"}],
        )
    code, _, err = await simulate(live_server.url, "--hours", "0.1", within=60)
    assert (code, "fresh database" in err) == (2, True)
