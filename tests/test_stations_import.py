"""The GBFS import into the station registry, against a real PostgreSQL: v2.3 (the fixture folder) and v3.0
shapes, string ids, missing optional fields, how a feed's stations are matched and numbered on re-import, a
station that left the feed, a malformed feed refused with the registry as it was, and the CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from baywheels import gbfs

FIXTURE = Path(__file__).parent / "gbfs" / "v2.3"
POWELL = "a1b2c3d4-0001-4e1a-9a3b-6f0e1d2c3b01"


def copy_fixture(tmp_path: Path) -> Path:
    folder = tmp_path / "feed"
    shutil.copytree(FIXTURE, folder)
    return folder


def load(folder: Path, name: str) -> Any:
    return json.loads((folder / f"{name}.json").read_text())


def save(folder: Path, name: str, document: Any) -> None:
    (folder / f"{name}.json").write_text(json.dumps(document))


async def import_folder(pool: asyncpg.Pool, folder: Path) -> gbfs.ImportResult:
    async with pool.acquire() as conn:
        return await gbfs.import_source(conn, str(folder))


async def registry(pool: asyncpg.Pool) -> dict[int, dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM stations ORDER BY id")
    return {row["id"]: dict(row) for row in rows}


async def test_the_v2_3_fixture_is_imported_under_its_legacy_ids(pool: asyncpg.Pool) -> None:
    result = await import_folder(pool, FIXTURE)
    assert (result.stations, result.created, result.deactivated) == (6, 6, 0)
    stations = await registry(pool)
    # The old small integers (legacy_id) stay the service's ids: suggestions that named them mean the same.
    assert sorted(stations) == [15, 27, 30, 58, 163, 245]
    powell = stations[27]
    assert {k: powell[k] for k in ("gbfs_station_id", "short_name", "legacy_id", "name", "capacity")} == {
        "gbfs_station_id": POWELL,
        "short_name": "SF-F27",
        "legacy_id": "27",
        "name": "Powell St BART Station (Market St at 4th St)",
        "capacity": 35,
    }
    assert (powell["lat"], powell["lon"]) == (37.786375, -122.404904)
    assert (powell["num_bikes_available"], powell["num_docks_available"]) == (20, 15)
    assert (powell["is_renting"], powell["is_returning"], powell["active"]) == (True, True, True)
    assert powell["last_reported"].timestamp() == 1767225540
    system = await pool.fetchrow("SELECT system_id, name, timezone FROM gbfs_system")
    assert system is not None
    assert dict(system) == {
        "system_id": "bay_wheels",
        "name": "Bay Wheels",
        "timezone": "America/Los_Angeles",
    }


def v3_files(folder: Path) -> Path:
    """A GBFS 3.0 feed: localized names, numeric-looking string ids, RFC 3339 times, vehicles not bikes, and
    optional fields missing (a capacity, a station's status, a station's docks)."""
    folder.mkdir()
    en_fr = [{"text": "Lake Merritt BART", "language": "en"}, {"text": "BART Lac Merritt", "language": "fr"}]
    save(
        folder,
        "system_information",
        {
            "last_updated": "2026-01-01T00:00:00-08:00",
            "ttl": 3600,
            "version": "3.0",
            "data": {
                "system_id": "bay_wheels_v3",
                "languages": ["fr", "en"],
                "name": [
                    {"text": "Bay Wheels", "language": "en"},
                    {"text": "Bay Wheels FR", "language": "fr"},
                ],
                "timezone": "America/Los_Angeles",
                "opening_hours": "24/7",
            },
        },
    )
    save(
        folder,
        "station_information",
        {
            "last_updated": "2026-01-01T00:00:00-08:00",
            "ttl": 60,
            "version": "3.0",
            "data": {
                "stations": [
                    {"station_id": "101", "name": en_fr, "lat": 37.79732, "lon": -122.26532, "capacity": 27},
                    {
                        "station_id": "OK-X1",
                        "name": [{"text": "Oakland City Hall", "language": "en"}],
                        "short_name": [{"text": "OK-X1", "language": "en"}],
                        "lat": 37.8053,
                        "lon": -122.2725,
                    },
                    {
                        "station_id": "103",
                        "name": [{"text": "Grand Ave", "language": "en"}],
                        "lat": 37.81,
                        "lon": -122.25,
                    },
                ]
            },
        },
    )
    save(
        folder,
        "station_status",
        {
            "last_updated": "2026-01-01T00:00:00-08:00",
            "ttl": 30,
            "version": "3.0",
            "data": {
                "stations": [
                    {
                        "station_id": "101",
                        "num_vehicles_available": 4,
                        "num_docks_available": 23,
                        "is_renting": True,
                        "is_returning": False,
                        "last_reported": "2026-01-01T07:59:00Z",
                    },
                    {
                        "station_id": "OK-X1",
                        "num_vehicles_available": 2,
                        "is_renting": True,
                        "is_returning": True,
                    },
                ]
            },
        },
    )
    return folder


async def test_a_v3_0_feed_with_missing_optional_fields(pool: asyncpg.Pool, tmp_path: Path) -> None:
    result = await import_folder(pool, v3_files(tmp_path / "v3"))
    assert (result.stations, result.created) == (3, 3)
    stations = {s["gbfs_station_id"]: s for s in (await registry(pool)).values()}
    lake = stations["101"]
    # The system's first language (fr) names it; a numeric station_id is its id.
    assert (lake["id"], lake["name"], lake["legacy_id"], lake["short_name"]) == (
        101,
        "BART Lac Merritt",
        None,
        None,
    )
    assert (lake["num_bikes_available"], lake["num_docks_available"], lake["is_returning"]) == (4, 23, False)
    assert lake["last_reported"].isoformat() == "2026-01-01T07:59:00+00:00"
    # Not a number: the next id after the largest (103, the feed's next station's).
    hall = stations["OK-X1"]
    assert (hall["id"], hall["name"], hall["short_name"], hall["capacity"]) == (
        104,
        "Oakland City Hall",
        "OK-X1",
        None,
    )
    assert (hall["num_bikes_available"], hall["num_docks_available"]) == (2, None)
    grand = stations["103"]
    assert grand["id"] == 103
    assert [
        grand[k] for k in ("num_bikes_available", "num_docks_available", "is_renting", "last_reported")
    ] == [
        None,
        None,
        None,
        None,
    ]
    assert await pool.fetchval("SELECT name FROM gbfs_system") == "Bay Wheels FR"


async def test_reimport_matches_by_legacy_id_and_short_name_and_keeps_stations_that_left(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    # The feed as it was years ago: small integer station_ids, no legacy_id.
    old = copy_fixture(tmp_path)
    info = load(old, "station_information")
    status = load(old, "station_status")
    for station in info["data"]["stations"]:
        station["station_id"] = station.pop("legacy_id")
    for station, entry in zip(info["data"]["stations"], status["data"]["stations"], strict=True):
        entry["station_id"] = station["station_id"]
    # One station without a legacy_id in the new feed is found by its short_name only.
    save(old, "station_information", info)
    save(old, "station_status", status)
    await import_folder(pool, old)
    before = await registry(pool)
    assert before[27]["gbfs_station_id"] == "27"

    new = copy_fixture(tmp_path / "new")
    info = load(new, "station_information")
    del info["data"]["stations"][2]["legacy_id"]  # Market St at 10th (58): short_name SF-H24 only
    removed = info["data"]["stations"].pop(5)  # Downtown Berkeley (245) leaves the feed
    save(new, "station_information", info)
    result = await import_folder(pool, new)
    assert (result.stations, result.created, result.deactivated) == (5, 0, 1)
    after = await registry(pool)
    assert sorted(after) == sorted(before)  # same ids, nothing deleted
    assert (after[27]["gbfs_station_id"], after[27]["legacy_id"]) == (POWELL, "27")
    assert after[58]["gbfs_station_id"] == "a1b2c3d4-0003-4e1a-9a3b-6f0e1d2c3b03"
    assert (after[245]["active"], after[245]["gbfs_station_id"]) == (False, "245")
    assert all(after[i]["active"] for i in (15, 27, 30, 58, 163))

    # Back in the feed: active again, under the same id.
    info["data"]["stations"].append(removed)
    save(new, "station_information", info)
    result = await import_folder(pool, new)
    assert (result.created, result.deactivated) == (0, 0)
    again = await registry(pool)
    assert (again[245]["active"], again[245]["gbfs_station_id"]) == (True, removed["station_id"])


async def test_a_new_station_whose_legacy_id_is_taken_gets_the_next_id(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await import_folder(pool, FIXTURE)
    folder = copy_fixture(tmp_path)
    info = load(folder, "station_information")
    info["data"]["stations"].append(
        {"station_id": "new-1", "legacy_id": "27", "name": "Taken", "lat": 37.78, "lon": -122.4}
    )
    info["data"]["stations"].append(
        {"station_id": "00200", "name": "Not canonical", "lat": 37.78, "lon": -122.41}
    )
    save(folder, "station_information", info)
    result = await import_folder(pool, folder)
    assert result.created == 2
    stations = {s["gbfs_station_id"]: s["id"] for s in (await registry(pool)).values()}
    # "27" belongs to Powell: no match for two stations at once, so the next ids past the largest (245).
    assert (stations["new-1"], stations["00200"]) == (246, 247)
    # The identity follows: a row added without an id does not collide.
    assert (
        await pool.fetchval(
            "INSERT INTO stations (gbfs_station_id, name, lat, lon) VALUES ('x', 'x', 0, 0) RETURNING id"
        )
        == 248
    )


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        (
            "station_information",
            lambda doc: doc["data"]["stations"][1].update(lat="north"),
            "station_information: Expected `float`, got `str` - at `$.data.stations[1].lat`",
        ),
        (
            "station_information",
            lambda doc: doc["data"]["stations"][3].update(lon=-190),
            "station_information: Expected `float` >= -180.0 - at `$.data.stations[3].lon`",
        ),
        (
            "station_information",
            lambda doc: doc["data"]["stations"][0].pop("name"),
            "station_information: Object missing required field `name` - at `$.data.stations[0]`",
        ),
        (
            "station_information",
            lambda doc: doc["data"]["stations"].append(dict(doc["data"]["stations"][0])),
            f"station_information: station '{POWELL}' (at `$.data.stations[6]`) appears twice",
        ),
        (
            "station_status",
            lambda doc: doc["data"]["stations"][2].update(num_docks_available=-1),
            "station_status: Expected `int` >= 0 - at `$.data.stations[2].num_docks_available`",
        ),
        (
            "station_status",
            lambda doc: doc.pop("data"),
            "station_status: Object missing required field `data`",
        ),
        (
            "station_status",
            lambda doc: doc["data"]["stations"][0].update(last_reported=10**20),
            f"station_status: station '{POWELL}' has last_reported {10**20}, not a time",
        ),
        (
            "station_information",
            lambda doc: doc["data"]["stations"][0].update(short_name="SF\u0000F27"),
            f"station_information: station '{POWELL}' (at `$.data.stations[0]`) has a NUL character in its "
            "name, short_name or legacy_id",
        ),
    ],
)
async def test_a_malformed_feed_is_refused_and_the_registry_kept(
    pool: asyncpg.Pool, tmp_path: Path, name: str, change: Any, message: str
) -> None:
    await import_folder(pool, FIXTURE)
    before = await registry(pool)
    folder = copy_fixture(tmp_path)
    # Changes that would be visible had anything been written.
    status = load(folder, "station_status")
    for entry in status["data"]["stations"]:
        entry["num_bikes_available"] = 0
    save(folder, "station_status", status)
    document = load(folder, name)
    change(document)
    save(folder, name, document)
    with pytest.raises(gbfs.FeedError) as refused:
        await import_folder(pool, folder)
    assert str(refused.value) == message
    assert await registry(pool) == before


async def test_invalid_json_and_a_missing_file_are_refused(pool: asyncpg.Pool, tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path)
    (folder / "station_status.json").write_text('{"ttl": 60, "data": {"stations": [')
    with pytest.raises(
        gbfs.FeedError, match=r"^station_status: not valid JSON \(Input data was truncated\)$"
    ):
        await import_folder(pool, folder)
    (folder / "station_information.json").unlink()
    with pytest.raises(gbfs.FeedError, match=r"^the feed has no station_information$"):
        await import_folder(pool, folder)
    with pytest.raises(gbfs.FeedError, match="is not a folder"):
        await import_folder(pool, tmp_path / "nowhere")
    assert await pool.fetchval("SELECT count(*) FROM stations") == 0


def test_the_cli_imports_and_refuses(database_url: str, tmp_path: Path) -> None:
    def run(source: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "warning"}
        command = [sys.executable, "-m", "baywheels", "stations", "import", str(source)]
        # In tmp_path: no .env of the checkout.
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    done = run(FIXTURE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Imported 6 stations from {FIXTURE}: 6 new, 0 no longer in the feed")

    folder = copy_fixture(tmp_path)
    (folder / "station_information.json").write_text("[]")
    refused = run(folder)
    assert refused.returncode == 1
    assert refused.stderr.endswith(
        "baywheels stations import: refused, nothing changed: station_information: Expected `object`, got "
        "`array`\n"
    )
