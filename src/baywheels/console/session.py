"""People's sessions in the console: signed in with an operator, viewer or admin key (or through SSO), kept
as a row in console_sessions and an HttpOnly cookie holding a random secret whose digest names the row.

The cookie is SameSite=Lax: a link into the console from a chat or a ticket opens it signed in (Strict would
show the sign-in page), while a cross-site POST carries no cookie. Every state-changing request made with the
cookie must also come from the console's own origin (Sec-Fetch-Site, else Origin) and carry the session's
CSRF token (a form field or the X-CSRF-Token header). A request with an Authorization header is never
cookie-authenticated: API clients are judged by their key alone, by the API."""

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from .. import queries
from ..auth import ADMIN_ACTOR, ANONYMOUS, Principal
from ..models import Role
from ..requests import header, pool
from ..state import app_state

COOKIE = "bw_console"
COOKIE_PATH = "/ui"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# Who may sign in to the console: a worker's key belongs to a van, ml and metrics keys to programs.
CONSOLE_ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
ACTING_ROLES: tuple[Role, ...] = ("operator", "admin")


@dataclass(frozen=True, slots=True)
class Session:
    """The signed-in person of a console request: who (``principal.actor`` is what events record) and the
    token their forms send back (empty with AUTH=off, where there is no session)."""

    principal: Principal
    csrf_token: str
    digest: bytes | None = None

    @property
    def may_act(self) -> bool:
        return self.principal.role in ACTING_ROLES


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def current(request: Request) -> Session | None:
    """The session of this request's cookie, if it is still good: its row exists and has not run out, and the
    key it was signed in with is neither revoked nor expired (checked through the key cache), nor
    ADMIN_API_KEY unset since."""
    state = app_state(request)
    if not state.settings.auth_on:
        return Session(ANONYMOUS, "")
    if header(request.scope, b"authorization") is not None:
        return None
    secret = request.cookies.get(COOKIE)
    if not secret:
        return None
    digest = _digest(secret)
    row = await queries.console_session_get(pool(request), digest)
    if row is None:
        return None
    if row.key_id is not None:
        holder = await state.guard.key_holder(row.key_id)
        if holder is None or holder.role not in CONSOLE_ROLES:
            return None
        # The key's role as it is now, should it ever change.
        return Session(Principal(actor=row.actor, role=holder.role), row.csrf_token, digest)
    if row.actor == ADMIN_ACTOR and state.settings.admin_api_key is None:
        return None
    expires = row.expires_at.timestamp()
    return Session(Principal(actor=row.actor, role=row.role, expires_at=expires), row.csrf_token, digest)


async def start(request: Request, response: Response, who: Principal, key_id: str | None) -> None:
    """Sign ``who`` in: a session row and its cookie on ``response``. It lasts CONSOLE_SESSION_SECONDS, never
    past the expiry of the key or token it was signed in with."""
    settings = app_state(request).settings
    assert who.role is not None
    lasts = float(settings.console_session_seconds)
    if who.expires_at is not None:
        lasts = min(lasts, who.expires_at - time.time())
    secret = secrets.token_urlsafe(32)
    await queries.console_session_create(
        pool(request), _digest(secret), secrets.token_urlsafe(32), who.actor, who.role, key_id, lasts
    )
    response.set_cookie(
        COOKIE,
        secret,
        max_age=max(1, int(lasts)),
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="lax",
    )


async def end(request: Request, response: Response, session: Session) -> None:
    """Sign out: the row is deleted, so the cookie opens nothing on any instance, and the cookie cleared."""
    if session.digest is not None:
        await queries.console_session_delete(pool(request), session.digest)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=request.url.scheme == "https", httponly=True)


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from the console's own pages: Sec-Fetch-Site says so where the
    browser sends it (every current one does), else Origin must be this origin; with neither, refused."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        return origin == f"{request.url.scheme}://{host}"
    return site is not None


async def form(request: Request) -> dict[str, list[str]]:
    """An application/x-www-form-urlencoded body (the console's forms), as parse_qs reads it."""
    return parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)


def token_matches(request: Request, fields: dict[str, list[str]], session: Session) -> bool:
    """The session's CSRF token came with the request (header or form field). Always true with AUTH=off,
    where there is no session to steal (the origin check still applies)."""
    if session.digest is None and not session.csrf_token:
        return True
    sent = request.headers.get(CSRF_HEADER) or next(iter(fields.get(CSRF_FIELD, [])), "")
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf_token.encode())
