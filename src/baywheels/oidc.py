"""Tokens for people, from the organisation's identity provider (OIDC): verified with PyJWT against the
issuer's signing keys (its JWKS, found through its discovery document and cached, or read from
OIDC_JWKS_FILE). Signature, `exp`, `nbf`, `iss`, `aud` and the algorithm are checked; only asymmetric
algorithms of the key's own type are accepted, so neither `alg: none` nor an HS256 token signed with a public
key gets through."""

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import structlog

from .models import Role
from .settings import Settings

log = structlog.get_logger(__name__)

# Per key type, the algorithms a token signed with such a key may name. No HS*: a JWKS holds public keys.
_ALGORITHMS = {
    "RSA": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"],
    "EC": ["ES256", "ES384", "ES512"],
    "OKP": ["EdDSA"],
}
# A person's token may carry several roles; it acts with the most capable. `worker` is not among them: a
# worker is a van's key, bound to its worker_id.
_RANK: tuple[Role, ...] = ("admin", "operator", "viewer", "ml", "metrics")
# An unknown `kid` fetches the issuer's keys again (a rotation), at most this often.
_REFRESH_MIN_SECONDS = 60.0
_KEYS_MAX_AGE = 3600.0
_LEEWAY_SECONDS = 30
_FETCH_TIMEOUT = 5.0


class InvalidToken(Exception):
    """Why a token is refused, in words fit for a 401 body (never the token itself)."""


class Oidc:
    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer is not None
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self._claim = settings.oidc_role_claim.split(".")
        self._file = Path(settings.oidc_jwks_file) if settings.oidc_jwks_file else None
        # kid -> the key and the algorithms a token signed with it may name.
        self._keys: dict[str, tuple[jwt.PyJWK, list[str]]] = {}
        self._fetched_at = -_KEYS_MAX_AGE  # time.monotonic()
        self._fetching: asyncio.Future[None] | None = None

    async def verify(self, token: str) -> tuple[str, Role | None, float]:
        """(subject, role, expiry as a Unix time) of a valid token; else InvalidToken."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("Malformed bearer token") from None
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("Token names no signing key (kid)")
        key, algorithms = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=_LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("Token expired") from None
        except jwt.InvalidTokenError as exc:
            # PyJWT's messages name the claim or the algorithm, never the token's content.
            raise InvalidToken(f"Token refused: {exc}") from None
        return str(claims["sub"]), self._role(claims), float(claims["exp"])

    def _role(self, claims: dict[str, Any]) -> Role | None:
        value: Any = claims
        for part in self._claim:
            value = value.get(part) if isinstance(value, dict) else None
        granted = {value} if isinstance(value, str) else set(value) if isinstance(value, list) else set()
        return next((role for role in _RANK if role in granted), None)

    async def _key(self, kid: str) -> tuple[jwt.PyJWK, list[str]]:
        stale = time.monotonic() - self._fetched_at
        if (kid not in self._keys and stale >= _REFRESH_MIN_SECONDS) or stale >= _KEYS_MAX_AGE:
            await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("Token signed with an unknown key (kid)")
        return key

    async def _refresh(self) -> None:
        # One fetch at a time; requests arriving meanwhile wait for it.
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch())
        fetching = self._fetching
        try:
            await asyncio.shield(fetching)
        finally:
            if fetching.done():
                self._fetching = None

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            document = await asyncio.to_thread(self._read_jwks)
        except Exception as exc:
            # The keys we had stay in use; the next unknown kid tries again after the pause.
            log.warning("oidc_jwks_unavailable", error=f"{type(exc).__name__}: {exc}")
            return
        keys: dict[str, tuple[jwt.PyJWK, list[str]]] = {}
        for jwk in document.get("keys", []):
            if not isinstance(jwk, dict) or jwk.get("kty") not in _ALGORITHMS or jwk.get("use") == "enc":
                continue
            try:
                key = jwt.PyJWK(jwk)
            except jwt.PyJWTError:
                continue
            allowed = _ALGORITHMS[jwk["kty"]]
            if "alg" in jwk:
                if jwk["alg"] not in allowed:
                    continue
                allowed = [jwk["alg"]]
            if isinstance(jwk.get("kid"), str):
                keys[jwk["kid"]] = (key, allowed)
        self._keys = keys
        log.info("oidc_jwks_loaded", keys=len(keys))

    def _read_jwks(self) -> dict[str, Any]:
        if self._file is not None:
            document: dict[str, Any] = json.loads(self._file.read_text())
            return document
        discovery = _get_json(f"{self.issuer.rstrip('/')}/.well-known/openid-configuration")
        return _get_json(str(discovery["jwks_uri"]))


def _get_json(url: str) -> dict[str, Any]:
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"not an http(s) URL: {url}")
    with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT) as response:  # noqa: S310 (scheme checked)
        document: dict[str, Any] = json.loads(response.read())
        return document
