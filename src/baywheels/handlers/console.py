"""The operators' console (/ui): HTML pages for people, beside the JSON API. Each route declares who may use
it (``roles``), as the API's endpoints do; a request is admitted by its session (console/session.py), and a
POST only from the console's own origin with the session's CSRF token. A viewer sees every page without its
action buttons, and the server refuses a viewer's POST (403) whatever the page showed."""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .. import overview, queries, requests
from ..auth import Principal
from ..console import STATIC_DIR, TEMPLATES_DIR, sso, svg
from ..console import session as sessions
from ..console.session import ACTING_ROLES, CONSOLE_ROLES, Session
from ..errors import Conflict, NotFound, TooManyRequests, Unauthorized
from ..metrics import TRANSITIONS
from ..models import EventsQuery, Role, Task
from ..requests import pool
from ..state import app_state
from ..transitions import Action, decide
from .events import stream_events

Page = Callable[[Request, Session], Awaitable[Response]]

TASK_STATES = ("ready", "assigned", "stalled", "failed", "canceled", "completed")
# The tasks list's time windows (created within), the default first.
WINDOWS = {
    "24h": timedelta(hours=24),
    "1h": timedelta(hours=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
LIST_LIMIT = 200
MAP_ARROWS_LIMIT = 2000
REASON_MAX = 500
FLASH_COOKIE = "bw_console_flash"
# A page's live part (#live) reloads itself when a task changes: every kind of task event on the page's event
# stream (/ui/events) triggers it. htmx queues one more request for events that arrive while one is in flight
# (queue:last), so a burst costs at most two reloads and the last one shows its end.
_LIVE_EVENTS = (
    "approved", "assigned", "picked_up", "completed", "released", "attempt_failed", "failed", "lease_expired",
    "canceled", "retried",
)  # fmt: skip
_LIVE_TRIGGER = ", ".join(f"sse:{event}" for event in _LIVE_EVENTS)
_LIVE = ' hx-get="{}" hx-trigger="{}" hx-select="#live > *" hx-swap="innerHTML"'

_templates = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "—"
    seconds = (now - when).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 90:
        text = f"{seconds:.0f} s"
    elif seconds < 5400:
        text = f"{seconds / 60:.0f} min"
    elif seconds < 172_800:
        text = f"{seconds / 3600:.1f} h"
    else:
        text = f"{seconds / 86400:.0f} d"
    return f"in {text}" if future else f"{text} ago"


_templates.filters["ago"] = _ago
_templates.filters["stamp"] = lambda when: (
    "—" if when is None else when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
)
_templates.filters["iso"] = lambda when: (
    "" if when is None else when.astimezone(UTC).isoformat(timespec="seconds")
)


@dataclass(frozen=True, slots=True)
class UiRoute:
    method: str
    path: str
    page: Page
    roles: frozenset[Role]


ROUTES: list[UiRoute] = []


def ui(method: str, path: str, roles: Sequence[Role] = CONSOLE_ROLES) -> Callable[[Page], Page]:
    """Declare a console route and who may use it; ``routes`` enforces it."""

    def declare(page: Page) -> Page:
        ROUTES.append(UiRoute(method, path, page, frozenset(roles)))
        return page

    return declare


def routes() -> list[BaseRoute]:
    """The console's routes for the app: its pages, sign-in and its static files."""
    return [
        Route("/ui/signin", signin_form, methods=["GET"]),
        Route("/ui/signin", signin, methods=["POST"]),
        Route("/ui/sso", sso_begin, methods=["GET"]),
        Route(sso.CALLBACK, sso_callback, methods=["GET"]),
        *(Route(route.path, _admit(route), methods=[route.method]) for route in ROUTES),
        Mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="console-static"),
    ]


def _admit(route: UiRoute) -> Callable[[Request], Awaitable[Response]]:
    page, roles, changes = route.page, route.roles, route.method != "GET"

    async def admitted(request: Request) -> Response:
        session = await sessions.current(request)
        if session is None:
            if changes:
                return _refusal(request, 401, "Sign in to the console first.")
            return RedirectResponse(f"/ui/signin?next={quote(_here(request))}", status_code=303)
        if changes and not sessions.same_origin(request):
            return _refusal(request, 403, "Refused: the request did not come from the console's own pages.")
        if session.principal.role not in roles:
            return _refusal(request, 403, f"Refused: a {session.principal.role} may look but not act.")
        return await page(request, session)

    return admitted


def _here(request: Request) -> str:
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{request.url.path}{query}"


def _back(target: str | None, default: str) -> str:
    """Where to go after an action or sign-in: a console path only, never another site."""
    if not target or not target.startswith("/ui") or target.startswith("//"):
        return default
    parts = urlsplit(target)
    return default if parts.scheme or parts.netloc else target


def _render(
    request: Request, template: str, session: Session | None, status: int = 200, **context: Any
) -> HTMLResponse:
    flash = request.cookies.get(FLASH_COOKIE)
    if flash is not None:
        flash = unquote(flash)
    html = _templates.get_template(template).render(
        request=request,
        session=session,
        may_act=session is not None and session.may_act,
        flash=flash,
        now=datetime.now(UTC),
        path=request.url.path,
        sso=sso.enabled(app_state(request).settings),
        live=Markup(_LIVE).format(_here(request), _LIVE_TRIGGER),  # noqa: S704 (a constant; format escapes)
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path=sessions.COOKIE_PATH)
    return response


def _refusal(request: Request, status: int, message: str) -> HTMLResponse:
    return _render(request, "refused.html", None, status=status, message=message)


def _done(request: Request, target: str, message: str) -> Response:
    """After an action: back to the page it was made from (POST, redirect, GET), with a one-time message."""
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        FLASH_COOKIE, quote(message), max_age=60, path=sessions.COOKIE_PATH, httponly=True, samesite="lax"
    )
    return response


# Sign-in ---------------------------------------------------------------------------------------------------


async def signin_form(request: Request) -> Response:
    session = await sessions.current(request)
    target = _back(request.query_params.get("next"), "/ui")
    if session is not None:
        return RedirectResponse(target, status_code=303)
    return _render(request, "signin.html", None, next=target, error=None)


async def signin(request: Request) -> Response:
    fields = await sessions.form(request)
    target = _back(next(iter(fields.get("next", [])), None), "/ui")
    if not sessions.same_origin(request):
        return _refusal(request, 403, "Refused: the sign-in did not come from the console's own page.")
    key = next(iter(fields.get("key", [])), "").strip()
    who: Principal | None = None
    error = "Paste an API key to sign in."
    try:
        who = await app_state(request).guard.token_holder(request.scope, key) if key else None
    except Unauthorized as exc:
        error = f"That key was refused: {exc.detail}."
    except TooManyRequests:
        error = "Too many attempts: wait a few seconds and try again."
    return await _open_session(
        request, who, error, target, who.actor if who and key.startswith("bw_") else None
    )


async def _open_session(
    request: Request, who: Principal | None, error: str, target: str, key_id: str | None
) -> Response:
    """Signed in (a session, and on to ``target``), or the sign-in page again saying why not."""
    if who is not None and who.role not in CONSOLE_ROLES:
        kind = who.role or "role-less"
        what = "key" if key_id is not None or who.actor.startswith("env:") else "account"
        error = f"A {kind} {what} cannot sign in to the console: use an operator, viewer or admin {what}."
        who = None
    if who is None:
        return _render(request, "signin.html", None, status=401, next=target, error=error)
    response = RedirectResponse(target, status_code=303)
    await sessions.start(request, response, who, key_id)
    return response


async def sso_begin(request: Request) -> Response:
    settings = app_state(request).settings
    if not sso.enabled(settings):
        return _refusal(request, 404, "Single sign-on is not set up here (OIDC_ISSUER, OIDC_CLIENT_ID).")
    target = _back(request.query_params.get("next"), "/ui")
    try:
        return await sso.begin(request, settings, target)
    except sso.SsoFailed as exc:
        return _render(
            request, "signin.html", None, status=502, next=target, error=f"SSO sign-in failed: {exc}."
        )


async def sso_callback(request: Request) -> Response:
    settings = app_state(request).settings
    if not sso.enabled(settings):
        return _refusal(request, 404, "Single sign-on is not set up here (OIDC_ISSUER, OIDC_CLIENT_ID).")
    target = "/ui"
    who: Principal | None = None
    try:
        token, target = await sso.finish(request, settings)
        target = _back(target, "/ui")
        who = await app_state(request).guard.token_holder(request.scope, token)
        error = ""
    except sso.SsoFailed as exc:
        error = f"SSO sign-in failed: {exc}."
    except Unauthorized as exc:
        error = f"SSO sign-in failed: the provider's token was refused ({exc.detail})."
    except TooManyRequests:
        error = "Too many attempts: wait a few seconds and try again."
    response = await _open_session(request, who, error, target, None)
    response.delete_cookie(
        sso.COOKIE, path=sso.COOKIE_PATH, secure=request.url.scheme == "https", httponly=True
    )
    return response


@ui("POST", "/ui/signout")
async def signout(request: Request, session: Session) -> Response:
    if not sessions.token_matches(request, await sessions.form(request), session):
        return _refusal(request, 403, "Refused: the form's security token is missing or stale.")
    response = RedirectResponse("/ui/signin", status_code=303)
    await sessions.end(request, response, session)
    return response


# Pages -----------------------------------------------------------------------------------------------------


def _int(request: Request, name: str) -> int | None:
    value = request.query_params.get(name, "").strip()
    return int(value) if value.isdigit() and len(value) < 10 else None


@ui("GET", "/ui")
async def overview_page(request: Request, session: Session) -> Response:
    stats = await overview.read(pool(request))
    return _render(request, "overview.html", session, stats=stats, chart=svg.hourly_chart(stats.hourly))


@ui("GET", "/ui/events")
async def live_events(request: Request, session: Session) -> Response:
    """The API's event stream (GET /events) for a signed-in page, whose EventSource sends the cookie and no
    Authorization header: the same stream, the session's person as its caller."""
    request.scope["auth"] = session.principal
    return await stream_events(request, query=requests.query(request, EventsQuery))


@ui("GET", "/ui/suggestions")
async def suggestions_page(request: Request, session: Session) -> Response:
    station, priority = _int(request, "station"), _int(request, "priority")
    pending = await queries.ui_suggestion_list(pool(request), station, priority, LIST_LIMIT)
    return _render(
        request, "suggestions.html", session, suggestions=pending, station=station, priority=priority
    )


@ui("GET", "/ui/tasks")
async def tasks_page(request: Request, session: Session) -> Response:
    status = request.query_params.get("state") or None
    status = status if status in TASK_STATES else None
    worker = (request.query_params.get("worker") or "").strip()[:200] or None
    station = _int(request, "station")
    window = request.query_params.get("window", "24h")
    window = window if window in WINDOWS else "24h"
    since = datetime.now(UTC) - WINDOWS[window]
    tasks = await queries.ui_task_list(pool(request), status, worker, station, since, None, LIST_LIMIT)
    return _render(
        request,
        "tasks.html",
        session,
        tasks=tasks,
        state=status,
        states=TASK_STATES,
        worker=worker,
        station=station,
        window=window,
        windows=list(WINDOWS),
        limit=LIST_LIMIT,
    )


@ui("GET", "/ui/task/{task_id:id}")
async def task_page(request: Request, session: Session) -> Response:
    digits: str = request.path_params["task_id"]
    task_id = int(digits) if len(digits) < 19 else 0
    async with pool(request).acquire() as conn:
        task = await queries.task_get(conn, task_id)
        events = await queries.task_event_list(conn, task_id) if task is not None else []
    if task is None:
        return _render(request, "refused.html", session, status=404, message=f"No task {digits[:40]}.")
    return _render(request, "task.html", session, task=task, events=events)


@ui("GET", "/ui/workers")
async def workers_page(request: Request, session: Session) -> Response:
    now = datetime.now(UTC)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    workers = await queries.ui_worker_list(pool(request), day_start)
    return _render(request, "workers.html", session, workers=workers, day_start=day_start)


@ui("GET", "/ui/map")
async def map_page(request: Request, session: Session) -> Response:
    station_id = _int(request, "station")
    async with pool(request).acquire() as conn:
        stations = await queries.ui_map_stations(conn)
        arrows = await queries.ui_map_arrows(conn, MAP_ARROWS_LIMIT)
        station_tasks = (
            await queries.ui_station_tasks(conn, station_id, LIST_LIMIT) if station_id is not None else []
        )
    drawing = svg.station_map(stations, arrows, app_state(request).settings.map_tile_url, station_id)
    chosen = next((s for s in stations if s.id == station_id), None)
    return _render(
        request,
        "map.html",
        session,
        drawing=drawing,
        stations=stations,
        station_id=station_id,
        chosen=chosen,
        station_tasks=station_tasks,
    )


# Actions ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Action:
    fields: dict[str, list[str]]
    ids: list[int]
    reason: str | None
    back: str


async def _action(request: Request, session: Session, default: str) -> _Action | Response:
    fields = await sessions.form(request)
    if not sessions.token_matches(request, fields, session):
        return _refusal(request, 403, "Refused: the form's security token is missing or stale.")
    ids = list(
        dict.fromkeys(int(v) for v in fields.get("id", []) if v.isdigit() and 0 < len(v) < 19 and int(v) > 0)
    )
    reason = next(iter(fields.get("reason", [])), "").strip()[:REASON_MAX] or None
    return _Action(fields, ids, reason, _back(next(iter(fields.get("back", [])), None), default))


@ui("POST", "/ui/suggestions/approve", roles=ACTING_ROLES)
async def approve_suggestions(request: Request, session: Session) -> Response:
    action = await _action(request, session, "/ui/suggestions")
    if isinstance(action, Response):
        return action
    if not action.ids:
        return _done(request, action.back, "Nothing approved: select at least one suggestion.")
    async with pool(request).acquire() as conn, conn.transaction():
        created = await queries.task_approve_many(conn, action.ids, actor=session.principal.actor)
    TRANSITIONS.labels("approved").inc(len(created))
    made = ", ".join(f"#{task.id}" for task in created)
    missing = len(action.ids) - len(created)
    message = f"Approved {len(created)}: task {made}." if created else "Nothing approved."
    if missing:
        message += f" {missing} no longer pending (approved or withdrawn meanwhile)."
    return _done(request, action.back, message)


@ui("POST", "/ui/suggestions/dismiss", roles=ACTING_ROLES)
async def dismiss_suggestions(request: Request, session: Session) -> Response:
    action = await _action(request, session, "/ui/suggestions")
    if isinstance(action, Response):
        return action
    if not action.ids:
        return _done(request, action.back, "Nothing dismissed: select at least one suggestion.")
    if action.reason is None:
        return _done(request, action.back, "Nothing dismissed: give a reason (the ML engine learns from it).")
    removed = await queries.suggestion_remove(
        pool(request), action.ids, "dismissed", action.reason, actor=session.principal.actor
    )
    message = f"Dismissed {len(removed)}." if removed else "Nothing dismissed."
    missing = len(action.ids) - len(removed)
    if missing:
        message += f" {missing} no longer pending (approved or withdrawn meanwhile)."
    return _done(request, action.back, message)


async def _change_tasks(request: Request, session: Session, verb: Action) -> Response:
    action = await _action(request, session, "/ui/tasks")
    if isinstance(action, Response):
        return action
    if not action.ids:
        return _done(request, action.back, f"Nothing to {verb}: select at least one task.")
    change = queries.task_cancel if verb == "cancel" else queries.task_retry
    done: list[int] = []
    refused: list[str] = []
    async with pool(request).acquire() as conn, conn.transaction():
        for task_id in action.ids:
            result = await change(conn, task_id, action.reason, actor=session.principal.actor)
            try:
                if decide(verb, task_id, result).changed:
                    done.append(task_id)
            except (Conflict, NotFound) as exc:
                refused.append(exc.detail)
    TRANSITIONS.labels("canceled" if verb == "cancel" else "retried").inc(len(done))
    past = "Canceled" if verb == "cancel" else "Retried"
    message = (
        f"{past} {len(done)}: " + ", ".join(f"#{i}" for i in done) + "."
        if done
        else f"Nothing {past.lower()}."
    )
    if refused:
        message += " " + " ".join(f"{reason}." for reason in refused[:5])
    return _done(request, action.back, message)


@ui("POST", "/ui/tasks/cancel", roles=ACTING_ROLES)
async def cancel_tasks(request: Request, session: Session) -> Response:
    return await _change_tasks(request, session, "cancel")


@ui("POST", "/ui/tasks/retry", roles=ACTING_ROLES)
async def retry_tasks(request: Request, session: Session) -> Response:
    return await _change_tasks(request, session, "retry")


def lease_left(task: Task, now: datetime) -> float | None:
    """Seconds left on a held task's lease (negative once it ran out and the rescue has not come yet)."""
    if task.lease_expires_at is None:
        return None
    return (task.lease_expires_at - now).total_seconds()


_templates.globals["lease_left"] = lease_left
_templates.globals["fill"] = svg.fill_ratio
