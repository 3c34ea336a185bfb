"""The console's SSO sign-in (authorization code with PKCE) against a local identity provider over real HTTP:
its discovery document, authorization endpoint (which signs "alice" in at once) and token endpoint (which
checks the code, the redirect URI, the client and the PKCE verifier before it issues a token)."""

import base64
import hashlib
import json
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from baywheels import settings
from baywheels.app import create_app
from helpers import http_server, in_process
from test_api_oidc import AUDIENCE, jwks, token

CLIENT_ID = "baywheels-console"
CLIENT_SECRET = "s3cret-of-the-console-client"  # noqa: S105 (the fake provider's)


@dataclass
class Provider:
    url: str
    # What the next sign-in's token says: claims over the defaults of test_api_oidc.token.
    claims: dict[str, Any] = field(default_factory=dict)
    exchanged: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def provider(private_key: rsa.RSAPrivateKey) -> Iterator[Provider]:
    codes: dict[str, dict[str, str]] = {}
    state = Provider("")

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            params = dict(urllib.parse.parse_qsl(query))
            if path == "/.well-known/openid-configuration":
                self._send(
                    200,
                    {
                        "issuer": state.url,
                        "jwks_uri": f"{state.url}/jwks",
                        "authorization_endpoint": f"{state.url}/authorize",
                        "token_endpoint": f"{state.url}/token",
                    },
                )
            elif path == "/jwks":
                self._send(200, jwks(private_key))
            elif path == "/authorize":
                # The person signs in here; the provider sends the browser back with a one-time code.
                assert params["response_type"] == "code"
                assert params["code_challenge_method"] == "S256"
                code = secrets.token_urlsafe(16)
                codes[code] = params
                answer = urllib.parse.urlencode({"code": code, "state": params["state"]})
                back = f"{params['redirect_uri']}?{answer}"
                self._send(302, {}, {"Location": back})
            else:
                self._send(404, {})

        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            state.exchanged.append(form)
            asked = codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            )
            if (
                self.path != "/token"
                or form.get("grant_type") != "authorization_code"
                or asked is None
                or form.get("redirect_uri") != asked["redirect_uri"]
                or form.get("client_id") != CLIENT_ID
                or form.get("client_secret") != CLIENT_SECRET
                or challenge != asked["code_challenge"]
            ):
                self._send(400, {"error": "invalid_grant"})
                return
            access = token(private_key, state.url, **state.claims)
            self._send(200, {"access_token": access, "token_type": "Bearer", "expires_in": 300})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http_server(Handler) as url:
        state.url = url
        yield state


@pytest.fixture
async def browser(
    service_settings: settings.Settings, provider: Provider
) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(create_app(browser_settings(service_settings, provider)), headers={}) as client:
        yield client


async def through_the_provider(browser: httpx.AsyncClient, next_path: str = "/ui/workers") -> str:
    """To the provider and back: the callback's path and query, as the browser would follow them."""
    begun = await browser.get(f"/ui/sso?next={next_path}")
    assert begun.status_code == 303
    authorize = begun.headers["location"]
    async with httpx.AsyncClient() as internet:
        back = await internet.get(authorize)
    assert back.status_code == 302
    parts = urllib.parse.urlsplit(back.headers["location"])
    assert parts.path == "/ui/sso/callback"
    return f"{parts.path}?{parts.query}"


async def test_sso_signs_a_person_in_with_the_role_of_their_token(
    browser: httpx.AsyncClient, provider: Provider, pool: asyncpg.Pool
) -> None:
    page = await browser.get("/ui/signin")
    assert "Sign in with your organisation's account" in page.text
    begun = await browser.get("/ui/sso?next=/ui/workers")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(begun.headers["location"]).query))
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == "http://testserver/ui/sso/callback"
    assert query["code_challenge_method"] == "S256"
    assert len(query["state"]) >= 32
    provider.claims = {"sub": "alice", "roles": ["viewer", "operator"]}
    callback = await through_the_provider(browser)
    done = await browser.get(callback)
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/ui/workers"
    row = await pool.fetchrow(
        "SELECT actor, role, key_id, expires_at - created_at AS lasts FROM console_sessions"
    )
    assert row is not None
    assert (row["actor"], row["role"], row["key_id"]) == ("oidc:alice", "operator", None)
    assert row["lasts"].total_seconds() <= 300  # never past the token's expiry
    page = await browser.get("/ui/workers")
    assert page.status_code == 200
    assert "oidc:alice" in page.text
    # The exchange carried the verifier whose challenge went out, and the client's secret.
    assert provider.exchanged[-1]["client_secret"] == CLIENT_SECRET
    assert len(provider.exchanged[-1]["code_verifier"]) >= 43


async def test_an_answer_that_belongs_to_another_sign_in_is_refused(
    browser: httpx.AsyncClient, service_settings: settings.Settings, provider: Provider, pool: asyncpg.Pool
) -> None:
    callback = await through_the_provider(browser)
    tampered = callback.replace("state=", "state=x")
    refused = await browser.get(tampered)
    assert refused.status_code == 401
    assert "does not belong to this sign-in" in refused.text
    # A browser that did not begin the sign-in (no state, no verifier) gets nowhere with the code either.
    callback = await through_the_provider(browser)
    async with in_process(create_app(browser_settings(service_settings, provider)), headers={}) as other:
        elsewhere = await other.get(callback)
    assert elsewhere.status_code == 401
    assert "began elsewhere" in elsewhere.text
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0


def browser_settings(service_settings: settings.Settings, provider: Provider) -> settings.Settings:
    return msgspec.structs.replace(
        service_settings,
        oidc_issuer=provider.url,
        oidc_audience=AUDIENCE,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
    )


async def test_a_person_without_a_console_role_is_refused(
    browser: httpx.AsyncClient, provider: Provider, pool: asyncpg.Pool
) -> None:
    provider.claims = {"sub": "bob", "roles": ["ml"]}
    refused = await browser.get(await through_the_provider(browser))
    assert refused.status_code == 401
    assert (
        "A ml account cannot sign in to the console: use an operator, viewer or admin account."
        in refused.text
    )
    provider.claims = {"sub": "carol", "roles": []}
    refused = await browser.get(await through_the_provider(browser))
    assert "A role-less account cannot sign in" in refused.text
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_without_a_client_id_there_is_no_sso(service_settings: settings.Settings) -> None:
    async with in_process(create_app(service_settings), headers={}) as client:
        assert "organisation" not in (await client.get("/ui/signin")).text
        assert (await client.get("/ui/sso")).status_code == 404
        assert (await client.get("/ui/sso/callback?code=x&state=y")).status_code == 404
