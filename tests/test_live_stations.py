"""A real `baywheels serve` with GBFS_URL: it imports the feed at start-up, answers ready only then, and
serves the registry; the import command against the same database sees the same stations."""

from pathlib import Path

from conftest import LiveServer
from gbfs_server import GbfsServer

FIXTURE = Path(__file__).parent / "gbfs" / "v2.3"


async def test_serve_imports_the_feed_before_it_is_ready(database_url: str, tmp_path: Path) -> None:
    with GbfsServer("last-modified") as feed:
        feed.put_folder(FIXTURE, ttl=60)
        server = LiveServer(
            database_url,
            env={"GBFS_URL": feed.url, "GBFS_REFRESH_MIN_SECONDS": "0.5"},
            log_path=tmp_path / "log",
        )
        server.start()  # returns once /readyz answers 200
        try:
            async with server.client() as client:
                stations = (await client.get("/stations")).json()
                assert [s["id"] for s in stations] == [15, 27, 30, 58, 163, 245]
                assert (await client.get("/readyz")).json() == {"status": "ready"}
            # Read once, then not again within the files' ttl (60 s, well beyond this test).
            assert feed.count("station_information", 200) == 1
        finally:
            assert server.stop() == 0
