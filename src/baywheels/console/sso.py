"""Signing in to the console through the organisation's identity provider: OpenID Connect's authorization-code
flow with PKCE (S256), where OIDC_ISSUER and OIDC_CLIENT_ID are set.

A small implementation rather than a library: the service already verifies the provider's tokens (oidc.py:
signature, issuer, audience, expiry, the role claim), so what is left is two redirects and one POST, and
authlib's Starlette client would bring httpx and a signed-cookie session middleware into the service for them.

The browser is sent to the provider with a fresh ``state`` and the S256 challenge of a fresh code verifier,
both kept in a short-lived HttpOnly cookie on /ui/sso; the callback must bring the same state back, and the
code is exchanged at the token endpoint with the verifier (and the client secret of a confidential client).
The access token it returns is judged exactly as a bearer token (a JWT for OIDC_AUDIENCE, its role from
OIDC_ROLE_CLAIM); the session it opens lasts no longer than that token."""

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse

from ..oidc import _get_json
from ..settings import Settings

COOKIE = "bw_console_sso"
COOKIE_PATH = "/ui/sso"
CALLBACK = "/ui/sso/callback"
_COOKIE_SECONDS = 600
_DISCOVERY_SECONDS = 3600.0
_TIMEOUT = 10.0


class SsoFailed(Exception):
    """Why the sign-in did not go through, in words fit for the sign-in page (never a token)."""


@dataclass(frozen=True, slots=True)
class _Provider:
    authorization_endpoint: str
    token_endpoint: str
    fetched_at: float


_providers: dict[str, _Provider] = {}


def enabled(settings: Settings) -> bool:
    return settings.oidc_issuer is not None and settings.oidc_client_id is not None


async def _provider(issuer: str) -> _Provider:
    found = _providers.get(issuer)
    if found is None or time.monotonic() - found.fetched_at > _DISCOVERY_SECONDS:
        url = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
        try:
            document = await asyncio.to_thread(_get_json, url)
            found = _Provider(
                str(document["authorization_endpoint"]), str(document["token_endpoint"]), time.monotonic()
            )
        except Exception as exc:
            raise SsoFailed(f"the identity provider's discovery document could not be read ({exc})") from None
        _providers[issuer] = found
    return found


def _callback_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}{CALLBACK}"


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


async def begin(request: Request, settings: Settings, next_path: str) -> RedirectResponse:
    """To the provider's authorization endpoint, with state and PKCE kept in a cookie for the callback."""
    assert settings.oidc_issuer is not None
    assert settings.oidc_client_id is not None
    provider = await _provider(settings.oidc_issuer)
    state = secrets.token_urlsafe(24)
    verifier = secrets.token_urlsafe(48)  # 64 characters, within RFC 7636's 43 to 128
    params = {
        "response_type": "code",
        "client_id": settings.oidc_client_id,
        "redirect_uri": _callback_url(request),
        "scope": "openid profile",
        "state": state,
        "code_challenge": _challenge(verifier),
        "code_challenge_method": "S256",
    }
    if settings.oidc_audience:
        params["audience"] = settings.oidc_audience  # asked for by some providers to issue a JWT for the API
    separator = "&" if "?" in provider.authorization_endpoint else "?"
    response = RedirectResponse(
        f"{provider.authorization_endpoint}{separator}{urllib.parse.urlencode(params)}", status_code=303
    )
    response.set_cookie(
        COOKIE,
        json.dumps([state, verifier, next_path], separators=(",", ":")),
        max_age=_COOKIE_SECONDS,
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="lax",
    )
    return response


async def finish(request: Request, settings: Settings) -> tuple[str, str]:
    """The callback: (the access token, where to go next), or SsoFailed."""
    assert settings.oidc_issuer is not None
    assert settings.oidc_client_id is not None
    error = request.query_params.get("error")
    if error:
        raise SsoFailed(f"the identity provider said {error[:100]!r}")
    try:
        state, verifier, next_path = json.loads(request.cookies.get(COOKIE, ""))
    except (ValueError, TypeError):
        raise SsoFailed("the sign-in took too long or began elsewhere: start again") from None
    returned = request.query_params.get("state", "")
    if not hmac.compare_digest(returned.encode(), str(state).encode()):
        raise SsoFailed("the identity provider's answer does not belong to this sign-in")
    code = request.query_params.get("code")
    if not code:
        raise SsoFailed("the identity provider sent no authorization code")
    provider = await _provider(settings.oidc_issuer)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": _callback_url(request),
        "client_id": settings.oidc_client_id,
        "code_verifier": str(verifier),
    }
    if settings.oidc_client_secret:
        form["client_secret"] = settings.oidc_client_secret
    try:
        answer = await asyncio.to_thread(_post_form, provider.token_endpoint, form)
    except Exception as exc:
        raise SsoFailed(f"the code could not be exchanged for a token ({type(exc).__name__})") from None
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise SsoFailed("the identity provider returned no access token")
    return token, str(next_path)


def _post_form(url: str, form: dict[str, str]) -> dict[str, Any]:
    if not url.startswith(("https://", "http://")):
        raise ValueError("not an http(s) URL")
    body = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(  # noqa: S310 (scheme checked)
        url,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:  # noqa: S310 (scheme checked)
        document: dict[str, Any] = json.loads(response.read())
        return document
