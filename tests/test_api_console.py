"""The console (/ui) in-process: sign-in and sessions, the cookie's flags, CSRF, what a viewer may do, the
pages on an empty and on a large database (and the indexes their queries read), and escaping."""

import html
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import msgspec
import pytest

from baywheels import settings
from baywheels.app import create_app
from baywheels.console import STATIC_DIR
from baywheels.console.session import ACTING_ROLES
from baywheels.handlers import console
from helpers import ADMIN_KEY, approve, dispatch, in_process, json_of, make_task, suggest

ORIGIN = {"Origin": "http://testserver"}
PAGES = ["/ui", "/ui/suggestions", "/ui/tasks", "/ui/workers", "/ui/map", "/ui/map?station=1"]
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def console_settings(service_settings: settings.Settings) -> settings.Settings:
    # Revocation is seen on the next request (no cache), so the tests need not wait out AUTH_CACHE_SECONDS.
    return msgspec.structs.replace(service_settings, auth_cache_seconds=0)


@pytest.fixture
async def browser(console_settings: settings.Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no Authorization header (a browser), on its own app."""
    async with in_process(create_app(console_settings), headers={}) as client:
        yield client


@pytest.fixture
async def api(console_settings: settings.Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(create_app(console_settings)) as client:
        yield client


async def new_key(api: httpx.AsyncClient, role: str, **fields: object) -> dict[str, str]:
    body = {"role": role, "name": f"console {role}", **fields}
    created: dict[str, str] = json_of(await api.post("/keys", json=body), 201)
    return created


async def sign_in(browser: httpx.AsyncClient, key: str) -> str:
    """Sign in; the CSRF token of the session."""
    response = await browser.post("/ui/signin", data={"key": key, "next": "/ui/tasks"}, headers=ORIGIN)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui/tasks"
    page = await browser.get("/ui/tasks")
    assert page.status_code == 200
    return csrf_of(page.text)


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found is not None, "no CSRF token on the page"
    return found[1]


async def test_the_vendored_scripts_are_served_from_the_package(browser: httpx.AsyncClient) -> None:
    listed = (STATIC_DIR / "vendor" / "VENDORED.md").read_text()
    for name in ["htmx-2.0.11.min.js", "htmx-ext-sse-2.2.4.min.js"]:
        assert name in listed
        response = await browser.get(f"/ui/static/vendor/{name}")
        assert response.status_code == 200
        assert "javascript" in response.headers["content-type"]
    for name in ["console.css", "console.js"]:
        assert (await browser.get(f"/ui/static/{name}")).status_code == 200
    # Every script the pages load is one of them: nothing from another site.
    page = (await browser.get("/ui/signin")).text
    assert re.findall(r'<script src="([^"]+)"', page) == [
        "/ui/static/vendor/htmx-2.0.11.min.js",
        "/ui/static/vendor/htmx-ext-sse-2.2.4.min.js",
        "/ui/static/console.js",
    ]


# Signing in and out ----------------------------------------------------------------------------------------


async def test_pages_ask_for_sign_in(browser: httpx.AsyncClient) -> None:
    for path in [*PAGES, "/ui/task/1"]:
        response = await browser.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/ui/signin?next=")
    page = await browser.get("/ui/signin")
    assert page.status_code == 200
    assert '<label for="key">' in page.text


async def test_sign_in_sets_a_session_cookie_with_its_flags(
    browser: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    response = await browser.post("/ui/signin", data={"key": ADMIN_KEY, "next": "/ui/map"}, headers=ORIGIN)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    name, _, flags = cookie.partition(";")
    assert name.startswith("bw_console=")
    flags_set = {flag.strip().split("=")[0].lower() for flag in flags.split(";")}
    assert {"httponly", "max-age", "path", "samesite"} <= flags_set
    assert "samesite=lax" in cookie.lower()
    assert "path=/ui" in cookie.lower()
    assert "max-age=28800" in cookie.lower()
    assert "secure" not in flags_set  # plain HTTP here; the TLS test below sees Secure
    row = await pool.fetchrow(
        "SELECT actor, role, key_id, expires_at - created_at AS lasts FROM console_sessions"
    )
    assert row is not None
    assert (row["actor"], row["role"], row["key_id"]) == ("env:ADMIN_API_KEY", "admin", None)
    assert row["lasts"] == timedelta(hours=8)
    # The secret itself is not stored.
    secret = name.split("=", 1)[1]
    assert (
        await pool.fetchval("SELECT count(*) FROM console_sessions WHERE digest::text LIKE $1", f"%{secret}%")
        == 0
    )


async def test_the_cookie_is_secure_over_tls(browser: httpx.AsyncClient) -> None:
    # Behind a TLS-terminating proxy the scheme comes from X-Forwarded-Proto (uvicorn); here, from the URL.
    response = await browser.post(
        "https://testserver/ui/signin",
        data={"key": ADMIN_KEY},
        headers={"Origin": "https://testserver"},
    )
    assert response.status_code == 303
    assert "secure" in response.headers["set-cookie"].lower()


@pytest.mark.parametrize("role", ["worker", "ml", "metrics"])
async def test_a_key_of_another_role_cannot_sign_in(
    api: httpx.AsyncClient, browser: httpx.AsyncClient, pool: asyncpg.Pool, role: str
) -> None:
    fields = {"worker_id": "van-1"} if role == "worker" else {}
    key = await new_key(api, role, **fields)
    response = await browser.post("/ui/signin", data={"key": key["key"]}, headers=ORIGIN)
    assert response.status_code == 401
    assert (
        f"A {role} key cannot sign in to the console: use an operator, viewer or admin key." in response.text
    )
    assert "set-cookie" not in response.headers
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_a_wrong_key_is_refused_with_the_reason(browser: httpx.AsyncClient) -> None:
    response = await browser.post("/ui/signin", data={"key": "bw_nonsense"}, headers=ORIGIN)
    assert response.status_code == 401
    assert "That key was refused: Malformed API key (its checksum does not match)." in response.text
    unknown = await browser.post("/ui/signin", data={"key": "x" * 40}, headers=ORIGIN)
    assert "That key was refused: Unknown credential." in unknown.text
    empty = await browser.post("/ui/signin", data={"key": ""}, headers=ORIGIN)
    assert empty.status_code == 401
    assert "Paste an API key to sign in." in empty.text


async def test_sign_in_goes_back_only_to_the_console(browser: httpx.AsyncClient) -> None:
    for target in ["https://evil.example/", "//evil.example/ui", "/ui/../x", "/elsewhere"]:
        response = await browser.post("/ui/signin", data={"key": ADMIN_KEY, "next": target}, headers=ORIGIN)
        assert response.headers["location"] in ("/ui", "/ui/../x"), target
        assert not response.headers["location"].startswith("//")


async def test_sign_out_ends_the_session(browser: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    token = await sign_in(browser, ADMIN_KEY)
    cookie = browser.cookies["bw_console"]
    response = await browser.post("/ui/signout", data={"csrf_token": token}, headers=ORIGIN)
    assert response.status_code == 303
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0
    # The same cookie, replayed, opens nothing.
    browser.cookies.set("bw_console", cookie, path="/ui")
    assert (await browser.get("/ui/tasks")).status_code == 303


async def test_the_workers_page_lists_registered_vans_that_have_held_nothing(
    api: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    key = await new_key(api, "viewer")
    await sign_in(browser, key["key"])
    body = {"name": "Van nine", "capacity": 10, "on_shift": True}
    assert (await api.put("/workers/van-9", json=body)).status_code == 200
    assert 'href="/ui/tasks?worker=van-9&amp;' in (await browser.get("/ui/workers")).text


async def test_revoking_the_key_ends_its_sessions(api: httpx.AsyncClient, browser: httpx.AsyncClient) -> None:
    key = await new_key(api, "operator")
    await sign_in(browser, key["key"])
    assert (await browser.get("/ui/workers")).status_code == 200
    assert (await api.delete(f"/keys/{key['key_id']}")).status_code == 204
    response = await browser.get("/ui/workers")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/ui/signin")


async def test_an_expired_key_ends_its_sessions(
    api: httpx.AsyncClient, browser: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    key = await new_key(api, "viewer", expires_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    await sign_in(browser, key["key"])
    # The session never outlasts the key.
    lasts = await pool.fetchval("SELECT expires_at - created_at FROM console_sessions")
    assert timedelta(minutes=59) < lasts <= timedelta(hours=1)
    await pool.execute("UPDATE api_keys SET expires_at = now() - interval '1 second'")
    assert (await browser.get("/ui/workers")).status_code == 303


async def test_a_bearer_request_is_never_cookie_authenticated(
    api: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    token = await sign_in(browser, ADMIN_KEY)
    with_bearer = {"Authorization": f"Bearer {ADMIN_KEY}", **ORIGIN}
    assert (await browser.get("/ui/tasks", headers=with_bearer)).status_code == 303
    refused = await browser.post(
        "/ui/tasks/cancel", data={"csrf_token": token, "id": "1"}, headers=with_bearer
    )
    assert refused.status_code == 401
    # And the API never reads the cookie: without a key it is 401 whatever the cookie.
    assert (await browser.get("/tasks")).status_code == 401


async def test_with_auth_off_the_console_needs_no_sign_in_but_still_its_origin(
    service_settings: settings.Settings, pool: asyncpg.Pool
) -> None:
    async with in_process(
        create_app(msgspec.structs.replace(service_settings, auth="off")), headers={}
    ) as anyone:
        assert (await anyone.get("/ui/signin")).headers["location"] == "/ui"
        assert (await anyone.get("/ui/tasks")).status_code == 200
        suggestion_id = await suggest(anyone, 1, 2)
        form = {"id": str(suggestion_id)}
        assert (await anyone.post("/ui/suggestions/approve", data=form)).status_code == 403
        assert (await anyone.post("/ui/suggestions/approve", data=form, headers=ORIGIN)).status_code == 303
    assert await pool.fetchval("SELECT actor FROM task_events") == "anonymous"


# CSRF ------------------------------------------------------------------------------------------------------


async def test_a_state_change_needs_the_token_and_the_console_origin(
    api: httpx.AsyncClient, browser: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    task = await make_task(api, 1, 2)
    token = await sign_in(browser, ADMIN_KEY)
    form = {"id": str(task["id"]), "reason": "test"}
    refusals = [
        ({**form}, ORIGIN),  # no token
        ({**form, "csrf_token": "forged"}, ORIGIN),  # a wrong one
        ({**form, "csrf_token": token}, {"Origin": "http://evil.example"}),
        ({**form, "csrf_token": token}, {"Sec-Fetch-Site": "cross-site", **ORIGIN}),
        ({**form, "csrf_token": token}, {"Sec-Fetch-Site": "same-site"}),
        ({**form, "csrf_token": token}, {}),  # neither Origin nor Sec-Fetch-Site
    ]
    for data, headers in refusals:
        response = await browser.post("/ui/tasks/cancel", data=data, headers=headers)
        assert response.status_code == 403, (data, headers)
    assert await pool.fetchval("SELECT status FROM tasks WHERE id = $1", task["id"]) == "ready"
    # The header form of the token (htmx sends it so) and Sec-Fetch-Site alone both do.
    response = await browser.post(
        "/ui/tasks/cancel", data=form, headers={"X-CSRF-Token": token, "Sec-Fetch-Site": "same-origin"}
    )
    assert response.status_code == 303
    assert await pool.fetchval("SELECT status FROM tasks WHERE id = $1", task["id"]) == "canceled"


async def test_sign_in_from_another_site_is_refused(browser: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    response = await browser.post(
        "/ui/signin", data={"key": ADMIN_KEY}, headers={"Origin": "http://evil.example"}
    )
    assert response.status_code == 403
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0


# Actions ---------------------------------------------------------------------------------------------------


async def test_approve_cancel_and_retry_are_recorded_with_the_actor(
    api: httpx.AsyncClient, browser: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    operator = await new_key(api, "operator")
    token = await sign_in(browser, operator["key"])
    ids = [await suggest(api, n, n + 1) for n in (1, 3, 5)]
    one = await browser.post(
        "/ui/suggestions/approve", data={"csrf_token": token, "id": str(ids[0])}, headers=ORIGIN
    )
    assert one.status_code == 303
    many = await browser.post(
        "/ui/suggestions/approve",
        content=f"csrf_token={token}&id={ids[1]}&id={ids[2]}&back=/ui/tasks",
        headers={**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert many.headers["location"] == "/ui/tasks"
    page = await browser.get("/ui/tasks")
    assert "Approved 2: task" in page.text  # the one-time message
    assert "Approved 2" not in (await browser.get("/ui/tasks")).text
    tasks = await pool.fetch("SELECT id, suggestion_id FROM tasks ORDER BY id")
    assert sorted(t["suggestion_id"] for t in tasks) == sorted(ids)
    task_ids = [str(t["id"]) for t in tasks]
    await browser.post(
        "/ui/tasks/cancel",
        content=f"csrf_token={token}&reason=road+closed+%3Cscript%3E&id={task_ids[0]}&id={task_ids[1]}",
        headers={**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"},
    )
    await browser.post(
        "/ui/tasks/retry",
        data={"csrf_token": token, "reason": "open again", "id": task_ids[0]},
        headers=ORIGIN,
    )
    rows = await pool.fetch("SELECT task_id, event, detail, actor FROM task_events ORDER BY id")
    assert [(r["event"], r["actor"]) for r in rows] == [
        ("approved", operator["key_id"]),
        ("approved", operator["key_id"]),
        ("approved", operator["key_id"]),
        ("canceled", operator["key_id"]),
        ("canceled", operator["key_id"]),
        ("retried", operator["key_id"]),
    ]
    assert rows[3]["detail"] == "road closed <script>"
    # Retrying a task that is not failed, canceled or stalled is refused, and says why.
    refused = await browser.post(
        "/ui/tasks/retry",
        data={"csrf_token": token, "reason": "x", "id": task_ids[2], "back": "/ui/tasks"},
        headers=ORIGIN,
    )
    assert refused.status_code == 303
    text = html.unescape((await browser.get("/ui/tasks")).text)
    assert (
        f"Nothing retried. Cannot retry task {task_ids[2]}: it is 'ready', not failed, canceled or stalled."
        in text
    )


async def test_a_viewer_sees_no_action_and_cannot_act(
    api: httpx.AsyncClient, browser: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    suggestion_id = await suggest(api, 1, 2)
    task = await make_task(api, 3, 4)
    viewer = await new_key(api, "viewer")
    token = await sign_in(browser, viewer["key"])
    for path in ["/ui/suggestions", "/ui/tasks", f"/ui/task/{task['id']}", "/ui/map"]:
        page = (await browser.get(path)).text
        # One form that posts: signing out. No approve, cancel or retry button, no checkbox to select with.
        assert page.count('method="post"') == 1, path
        for absent in ["formaction", 'type="checkbox"', ">Approve", ">Dismiss", ">Cancel", ">Retry"]:
            assert absent not in page, (path, absent)
    for path, data in [
        ("/ui/suggestions/approve", {"id": str(suggestion_id)}),
        ("/ui/suggestions/dismiss", {"id": str(suggestion_id), "reason": "x"}),
        ("/ui/tasks/cancel", {"id": str(task["id"]), "reason": "x"}),
        ("/ui/tasks/retry", {"id": str(task["id"]), "reason": "x"}),
    ]:
        response = await browser.post(path, data={"csrf_token": token, **data}, headers=ORIGIN)
        assert response.status_code == 403, path
        assert "a viewer may look but not act" in response.text
    assert await pool.fetchval("SELECT count(*) FROM tasks") == 1
    assert await pool.fetchval("SELECT status FROM tasks") == "ready"


async def test_dismissing_needs_a_reason_and_is_recorded_with_the_actor(
    api: httpx.AsyncClient, browser: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    operator = await new_key(api, "operator")
    token = await sign_in(browser, operator["key"])
    ids = [await suggest(api, n, n + 1) for n in (1, 3)]
    form = {"csrf_token": token, "id": [str(i) for i in ids], "back": "/ui/suggestions"}
    await browser.post("/ui/suggestions/dismiss", data=form, headers=ORIGIN)
    page = await browser.get("/ui/suggestions")
    assert "Nothing dismissed: give a reason (the ML engine learns from it)." in page.text
    assert await pool.fetchval("SELECT count(*) FROM suggestions") == 2
    await browser.post("/ui/suggestions/dismiss", data={**form, "reason": "van shortage"}, headers=ORIGIN)
    assert "Dismissed 2." in (await browser.get("/ui/suggestions")).text
    rows = await pool.fetch(
        "SELECT suggestion_id, outcome, reason, actor FROM suggestion_outcomes ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [(i, "dismissed", "van shortage", operator["key_id"]) for i in ids]
    assert await pool.fetchval("SELECT count(*) FROM suggestions") == 0


def test_every_console_route_declares_its_roles() -> None:
    for route in console.ROUTES:
        assert route.roles, route.path
        if route.method == "POST" and route.path != "/ui/signout":
            assert route.roles <= set(ACTING_ROLES), route.path


# Pages -----------------------------------------------------------------------------------------------------


async def test_every_page_renders_on_an_empty_database(browser: httpx.AsyncClient) -> None:
    await sign_in(browser, ADMIN_KEY)
    for path in PAGES:
        response = await browser.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
    assert (await browser.get("/ui/task/1")).status_code == 404
    assert (await browser.get(f"/ui/task/{'9' * 40}")).status_code == 404


async def test_text_from_users_is_escaped(
    api: httpx.AsyncClient, browser: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    evil = '<script>alert("x")</script>'
    await suggest(api, 1, 2, reason=evil)
    task = await approve(api, await suggest(api, 3, 4, reason=evil))
    await pool.execute(
        "INSERT INTO stations (id, gbfs_station_id, name, lat, lon, capacity, num_bikes_available)"
        " VALUES (1, 'a', $1, 37.77, -122.41, 10, 3), (2, 'b', 'Plain', 37.78, -122.40, 10, 9)",
        evil,
    )
    await sign_in(browser, ADMIN_KEY)
    for path in ["/ui/suggestions", "/ui/tasks", f"/ui/task/{task['id']}", "/ui/map?station=1"]:
        page = (await browser.get(path)).text
        assert evil not in page, path
        assert "&lt;script&gt;alert(" in page, path


async def test_the_overview_shows_what_needs_a_person_first(
    api: httpx.AsyncClient, browser: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    tasks = [await make_task(api, n, n + 1) for n in (1, 3, 5)]
    await dispatch(api, "van-1")
    await pool.execute(
        "UPDATE tasks SET status = 'failed', last_error = '<script>jammed</script>' WHERE id = $1",
        tasks[2]["id"],
    )
    await sign_in(browser, ADMIN_KEY)
    page = (await browser.get("/ui")).text
    assert page.index("Needs a person") < page.index("ready (")
    assert f'href="/ui/task/{tasks[2]["id"]}"' in page
    assert "&lt;script&gt;jammed&lt;/script&gt;" in page
    assert "<script>jammed" not in page
    # The chart: a bar for the hour's approvals (3) and its dispatch (1), the hours labelled.
    assert re.search(r'<rect class="series-created"[^>]*><title>3 created</title>', page)
    assert re.search(r'<rect class="series-dispatched"[^>]*><title>1 dispatched</title>', page)
    assert page.count('text-anchor="middle"') == 9  # every third hour of 24, and the last


async def test_the_map_draws_stations_and_moves(
    api: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    pool: asyncpg.Pool,
    console_settings: settings.Settings,
) -> None:
    await pool.execute(
        "INSERT INTO stations (id, gbfs_station_id, name, lat, lon, capacity, num_bikes_available) VALUES"
        " (1, 'a', 'Empty', 37.77, -122.41, 10, 0), (2, 'b', 'Full', 37.78, -122.40, 10, 10),"
        " (3, 'c', 'Unknown', 37.76, -122.42, NULL, NULL)"
    )
    await suggest(api, 1, 2)
    task = await make_task(api, 2, 3)
    await dispatch(api, "van-1")
    await sign_in(browser, ADMIN_KEY)
    page = (await browser.get("/ui/map?station=2")).text
    assert page.count("<circle") == 3
    for fill in ("fill-empty", "fill-full", "fill-unknown"):
        assert re.search(f'class="station[^"]* {fill}"', page), fill
    assert 'class="arrow arrow-suggestion"' in page
    assert 'class="arrow arrow-assigned"' in page
    assert f'href="/ui/task/{task["id"]}"' in page  # the chosen station's open task
    assert "<image" not in page  # no MAP_TILE_URL: a plain background
    tiled = msgspec.structs.replace(console_settings, map_tile_url="https://tiles.example/{z}/{x}/{y}.png")
    async with in_process(create_app(tiled), headers={}) as other:
        await sign_in(other, ADMIN_KEY)
        page = (await other.get("/ui/map")).text
    assert re.search(r'<image href="https://tiles.example/\d+/\d+/\d+.png"', page)


@pytest.fixture
async def large(pool: asyncpg.Pool) -> asyncpg.Pool:
    """200,000 finished tasks over 30 days with their events, 2,000 open ones, 400 suggestions, 400 stations,
    50 workers; analysed, as autovacuum would have."""
    await pool.execute(
        """
        INSERT INTO stations (id, gbfs_station_id, name, lat, lon, capacity, num_bikes_available)
        SELECT i, 's' || i, 'Station ' || i, 37.70 + (i % 20) * 0.005, -122.50 + (i / 20) * 0.006, 20, i % 21
        FROM generate_series(1, 400) i;
        INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, priority, status,
                           worker_id, created_at, assigned_at, completed_at, attempts, last_error)
        SELECT i, 1 + i % 400, 1 + (i + 7) % 400, 1 + i % 9, 'history', i % 5,
               CASE WHEN i % 97 = 0 THEN 'failed' ELSE 'completed' END, 'van-' || (i % 50),
               now() - interval '30 days' + i * interval '12 seconds',
               now() - interval '30 days' + i * interval '12 seconds' + interval '1 minute',
               now() - interval '30 days' + i * interval '12 seconds' + interval '20 minutes',
               1, CASE WHEN i % 97 = 0 THEN 'jammed' END
        FROM generate_series(1, 200000) i;
        INSERT INTO task_events (task_id, event, worker_id, at, actor)
        SELECT id, CASE status WHEN 'failed' THEN 'failed' ELSE 'completed' END, worker_id, completed_at, 'k'
        FROM tasks;
        INSERT INTO tasks (suggestion_id, from_station_id, to_station_id, qty, reason, priority)
        SELECT 1000000 + i, 1 + i % 400, 1 + (i + 3) % 400, 2, 'open', i % 5 FROM generate_series(1, 2000) i;
        INSERT INTO suggestions (from_station_id, to_station_id, qty, reason, priority)
        SELECT 1 + i % 400, 1 + (i + 11) % 400, 3, 'pending', i % 5 FROM generate_series(1, 400) i;
        ANALYZE;
        """
    )
    return pool


async def test_every_page_renders_on_a_large_database(
    large: asyncpg.Pool, browser: httpx.AsyncClient
) -> None:
    await sign_in(browser, ADMIN_KEY)
    for path in [
        *PAGES,
        "/ui/tasks?state=failed&window=30d",
        "/ui/tasks?worker=van-7&window=7d",
        "/ui/tasks?station=17&window=30d",
        "/ui/task/1000",
        "/ui/suggestions?station=12&priority=3",
    ]:
        response = await browser.get(path)
        assert response.status_code == 200, path
    workers = (await browser.get("/ui/workers")).text
    assert workers.count('href="/ui/tasks?worker=van-') == 50
    failed = (await browser.get("/ui/tasks?state=failed&window=30d")).text
    assert failed.count('class="row-failed"') == console.LIST_LIMIT


def _plan_nodes(plan: object) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    if isinstance(plan, dict):
        found.append(plan)
        for child in plan.get("Plans", []):
            found += _plan_nodes(child)
    return found


async def _scans(pool: asyncpg.Pool, sql: str, *args: object) -> set[str]:
    """How the plan reads each table: '<relation>:<index or Seq Scan>'."""
    import json

    async with pool.acquire() as conn:
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    nodes = _plan_nodes(json.loads(raw)[0]["Plan"])
    scans = set()
    for node in nodes:
        relation = node.get("Relation Name")
        if relation is not None:
            scans.add(f"{relation}:{node.get('Index Name') or node['Node Type']}")
    return scans


async def test_the_pages_read_indexes(large: asyncpg.Pool) -> None:
    from baywheels import sql

    queries = sql.queries()
    since = datetime.now(UTC) - timedelta(days=1)
    month = datetime.now(UTC) - timedelta(days=30)
    day_start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    text = queries["ui_task_list"].text
    for args in [
        (None, None, None, since, None, 200),
        ("failed", None, None, month, None, 200),
        (None, "van-7", None, month, None, 200),
        (None, None, 17, month, None, 200),
    ]:
        scans = await _scans(large, text, *args)
        assert "tasks:Seq Scan" not in scans, (args, scans)
    assert "tasks:Seq Scan" not in await _scans(large, queries["ui_worker_list"].text, day_start)
    assert "task_events:Seq Scan" not in await _scans(large, queries["ui_worker_list"].text, day_start)
    assert "tasks:Seq Scan" not in await _scans(large, queries["ui_station_tasks"].text, 17, 200)
    assert "tasks:Seq Scan" not in await _scans(large, queries["ui_map_arrows"].text, 2000)
    scans = await _scans(large, queries["ui_suggestion_list"].text, None, None, 200)
    assert scans == {"suggestions:suggestions_priority_idx"}, scans
