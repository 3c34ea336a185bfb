"""Tokens for people from an OIDC provider: keys made here, the JWKS served by a local HTTP server behind a
discovery document (or read from a file). Only a valid token passes; expired, wrong audience, wrong issuer,
unknown kid, `alg: none` and HS256 signed with the public key are 401."""

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from baywheels import settings
from baywheels.app import create_app
from helpers import bearer, in_process, json_of

AUDIENCE = "baywheels-api"
KID = "test-key-1"


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**public, "kid": KID, "use": "sig", "alg": "RS256"}]}


@pytest.fixture(scope="module")
def issuer(private_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """A local identity provider: its discovery document and its JWKS."""
    documents: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = documents.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body or b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    documents["/.well-known/openid-configuration"] = json.dumps(
        {"issuer": url, "jwks_uri": f"{url}/jwks"}
    ).encode()
    documents["/jwks"] = json.dumps(jwks(private_key)).encode()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


def token(key: Any, issuer: str, algorithm: str = "RS256", kid: str = KID, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "sub": "alice",
        "iss": issuer,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "roles": ["operator"],
    }
    return jwt.encode({**payload, **claims}, key, algorithm=algorithm, headers={"kid": kid})


def part(value: dict[str, Any] | bytes) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged_claims(issuer: str) -> dict[str, Any]:
    return {
        "sub": "mallory",
        "iss": issuer,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 300,
        "roles": ["admin"],
    }


def unsigned(issuer: str) -> str:
    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': KID})}.{part(forged_claims(issuer))}."


def hs256(secret: bytes, issuer: str) -> str:
    """By hand: PyJWT itself refuses to use a public key as an HMAC secret."""
    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT', 'kid': KID})}.{part(forged_claims(issuer))}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


def with_oidc(service_settings: settings.Settings, issuer: str, **extra: Any) -> settings.Settings:
    return msgspec.structs.replace(service_settings, oidc_issuer=issuer, oidc_audience=AUDIENCE, **extra)


async def test_only_a_valid_token_passes(
    service_settings: settings.Settings, issuer: str, private_key: rsa.RSAPrivateKey
) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    refused = {
        "expired": token(private_key, issuer, exp=now - 120, iat=now - 600),
        "not yet valid": token(private_key, issuer, nbf=now + 600),
        "wrong audience": token(private_key, issuer, aud="another-api"),
        "wrong issuer": token(private_key, "https://evil.example"),
        "unknown kid": token(other_key, issuer, kid="not-a-known-key"),
        "signed by another key": token(other_key, issuer),
        "alg none": unsigned(issuer),
        # The classic confusion: the public key used as an HMAC secret.
        "HS256 with the public key": hs256(public_pem, issuer),
    }
    async with in_process(create_app(with_oidc(service_settings, issuer)), headers={}) as client:
        valid = bearer(token(private_key, issuer))
        assert (await client.get("/tasks", headers=valid)).status_code == 200
        # An operator's token: the operator's rights, not more.
        assert (await client.get("/keys", headers=valid)).status_code == 403
        for name, refused_token in refused.items():
            response = await client.get("/tasks", headers=bearer(refused_token))
            assert response.status_code == 401, (name, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer"), name
            assert refused_token not in response.text


async def test_the_actor_is_the_subject_and_the_role_comes_from_the_claim(
    service_settings: settings.Settings, issuer: str, private_key: rsa.RSAPrivateKey
) -> None:
    keycloak = with_oidc(service_settings, issuer, oidc_role_claim="realm_access.roles")
    async with in_process(create_app(keycloak)) as admin:
        ids = json_of(
            await admin.post(
                "/suggestions", json=[{"from_station_id": 1, "to_station_id": 2, "qty": 1, "reason": "r"}]
            ),
            201,
        )["ids"]
        person = bearer(
            token(private_key, issuer, sub="bob", roles=None, realm_access={"roles": ["viewer", "operator"]})
        )
        task = json_of(await admin.post("/task/approve", json={"suggestion_id": ids[0]}, headers=person), 200)
        history = json_of(await admin.get(f"/task/{task['id']}/events"), 200)
        assert history[0]["actor"] == "oidc:bob"
        # A token with no role we know is valid but may do nothing.
        nobody = bearer(token(private_key, issuer, roles=None, realm_access={"roles": ["intern"]}))
        assert (await admin.get("/tasks", headers=nobody)).status_code == 403


async def test_the_keys_can_come_from_a_file(
    service_settings: settings.Settings, private_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    issuer = "https://login.example"
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(private_key)))
    air_gapped = with_oidc(service_settings, issuer, oidc_jwks_file=str(path))
    async with in_process(create_app(air_gapped), headers={}) as client:
        assert (await client.get("/tasks", headers=bearer(token(private_key, issuer)))).status_code == 200
        expired = token(private_key, issuer, exp=int(time.time()) - 120)
        assert json_of(await client.get("/tasks", headers=bearer(expired)), 401) == {
            "detail": "Token expired"
        }


def test_oidc_settings_go_together() -> None:
    with pytest.raises(settings.SettingsError, match="OIDC_AUDIENCE"):
        settings.load({"OIDC_ISSUER": "https://login.example"}, env_file="/nonexistent")
    with pytest.raises(settings.SettingsError, match="OIDC_ISSUER"):
        settings.load({"OIDC_JWKS_FILE": "/x.json"}, env_file="/nonexistent")


async def test_a_client_of_the_issuer_is_not_needed_for_api_keys(client: httpx.AsyncClient) -> None:
    # Without OIDC settings a JWT-looking token is just an unknown credential.
    assert (await client.get("/tasks", headers=bearer("a.b.c"))).status_code == 401
