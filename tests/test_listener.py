"""The listener after an outage (the database behind a TCP proxy that refuses connections for a while): it is
back within a few tens of milliseconds of the database, whatever the outage lasted, and wakes the long-pollers
that slept through it, so a task approved right after the database returns reaches one at once. The 5 s and
the 12 s outage run side by side (two apps, two databases, two proxies), so the test takes 12 s, not 17 s."""

import asyncio

from baywheels import settings
from baywheels.state import AppState
from conftest import cloned_database
from helpers import json_of, serving, suggest, until
from proxy import Proxy

# The figure is 100 ms; asserted with room for a loaded 2-core machine, and still well below the
# seconds that the old backoff took (1.0 s late after 5 s, 4.0 s after 12 s).
BOUND = 0.5


async def until_sleeping(app_state: AppState, n: int) -> None:
    async def sleeping() -> bool:
        return len(app_state.dispatcher._sleeping) == n

    await until(sleeping, within=10)


async def outage(base: settings.Settings, database_url: str, seconds: float) -> float:
    """Seconds from the database's return to a long-poller's answer with the task approved right then."""
    proxy = Proxy(database_url)
    await proxy.start()
    try:
        async with serving(base, proxy.url()) as (client, app_state):
            suggestion = await suggest(client, 1, 2)
            waiting = asyncio.ensure_future(
                client.post("/dispatch/next", json={"worker_id": "w", "wait_seconds": 30})
            )
            await until_sleeping(app_state, 1)

            await proxy.stop()
            await asyncio.sleep(seconds)  # the outage itself: its length is what is tested
            await proxy.start()
            back = asyncio.get_running_loop().time()
            task = json_of(await client.post("/task/approve", json={"suggestion_id": suggestion}), 200)
            response = await waiting
            took = asyncio.get_running_loop().time() - back
            assert (response.status_code, response.json()["id"]) == (200, task["id"])
            return took
    finally:
        await proxy.stop()


async def test_long_pollers_get_a_task_at_once_after_5_s_and_12_s_outages(
    service_settings: settings.Settings, database_url: str, server_dsn: str, template_db: str
) -> None:
    async with cloned_database(server_dsn, template_db) as second:
        short, long = await asyncio.gather(
            outage(service_settings, database_url, 5), outage(service_settings, second, 12)
        )
    print(
        f"\ntask approved on the database's return -> long-poller: after 5 s {short * 1000:.0f} ms, "
        f"after 12 s {long * 1000:.0f} ms"
    )
    assert short < BOUND
    assert long < BOUND
