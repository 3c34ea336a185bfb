"""Auth across real `baywheels serve` processes on one database: a key made on one instance works on the
other, revocation and expiry reach the other within 5 seconds, the CLI's keys work on a serving instance,
two instances sharing Redis share one rate-limit budget, X-Forwarded-For believed only from a trusted proxy,
TLS, and no secret in any log line."""

import asyncio
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trustme

from conftest import LiveServer
from helpers import ADMIN, ADMIN_KEY, bearer, json_of
from redis_server import redis_url

# The README's promise: revocation and expiry take effect on every instance within this.
WITHIN = 5.0


@pytest.fixture
def two_servers(database_url: str, tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    env = {"LOG_FORMAT": "json", "ACCESS_LOG": "true"}
    first = LiveServer(database_url, env=env, log_path=tmp_path / "first.log")
    second = LiveServer(database_url, env=env, log_path=tmp_path / "second.log")
    first.start()
    try:
        second.start()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


async def refused_within(client: httpx.AsyncClient, headers: dict[str, str], since: float) -> float:
    """Seconds from ``since`` (time.monotonic) until the server answers 401 for these headers; fails past
    WITHIN."""
    async with asyncio.timeout(WITHIN + 1):
        while (await client.get("/tasks", headers=headers)).status_code != 401:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # polling another process, with the promised deadline
    return time.monotonic() - since


async def test_keys_made_revoked_and_expiring_on_one_instance_reach_the_other(
    two_servers: tuple[LiveServer, LiveServer], tmp_path: Path
) -> None:
    first, second = two_servers
    async with (
        httpx.AsyncClient(headers=ADMIN, base_url=first.url, timeout=30) as a,
        httpx.AsyncClient(base_url=second.url, timeout=30) as b,
    ):
        made = json_of(await a.post("/keys", json={"role": "viewer", "name": "dashboard"}), 201)
        viewer = bearer(made["key"])
        assert (await b.get("/tasks", headers=viewer)).status_code == 200
        assert (await a.delete(f"/keys/{made['key_id']}")).status_code == 204
        assert await refused_within(b, viewer, time.monotonic()) <= WITHIN

        expires_at = datetime.now(UTC) + timedelta(seconds=2)
        expiring = json_of(
            await a.post("/keys", json={"role": "viewer", "expires_at": expires_at.isoformat()}), 201
        )
        soon = bearer(expiring["key"])
        assert (await b.get("/tasks", headers=soon)).status_code == 200
        expiry = time.monotonic() + (expires_at - datetime.now(UTC)).total_seconds()
        assert await refused_within(b, soon, expiry) <= WITHIN
        assert json_of(await b.get("/tasks", headers=soon), 401) == {"detail": "Credential expired"}

        # The secret never appears in a log line or a metric.
        metrics = (await b.get("/metrics", headers=ADMIN)).text
    secrets = [ADMIN_KEY, made["key"], expiring["key"]]
    for text in [metrics, (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()]:
        assert text
        assert not [secret for secret in secrets if secret in text]
        assert made["key"][: len("bw_") + 12 + 1 + 8] not in text  # nor a recognisable part of it


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "baywheels", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_cli_manages_keys_of_a_serving_instance(live_server: LiveServer, database_url: str) -> None:
    created = await asyncio.to_thread(
        cli, database_url, "create", "--role", "worker", "--worker-id", "van-9", "--name", "van 9"
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("bw_")
    assert key not in created.stderr
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30, headers=bearer(key)) as worker:
        assert (await worker.get("/tasks")).status_code == 200
        assert (await worker.post("/dispatch/next", json={"worker_id": "van-1"})).status_code == 403

        listed = await asyncio.to_thread(cli, database_url, "list")
        assert listed.returncode == 0, listed.stderr
        assert key not in listed.stdout
        [line] = [line for line in listed.stdout.splitlines() if "van-9" in line]
        key_id = line.split()[0]
        assert key.startswith(f"bw_{key_id}_")
        assert "cli:" in line

        revoked = await asyncio.to_thread(cli, database_url, "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        assert await refused_within(worker, {}, time.monotonic()) <= WITHIN

    missing = await asyncio.to_thread(cli, database_url, "revoke", "nosuchkey")
    assert missing.returncode == 1
    bad = await asyncio.to_thread(cli, database_url, "create", "--role", "worker")
    assert bad.returncode == 2
    assert "worker_id" in bad.stderr


async def test_two_instances_sharing_redis_share_one_budget(database_url: str, tmp_path: Path) -> None:
    with redis_url(tmp_path) as url:
        if url is None:
            if os.environ.get("CI"):
                pytest.fail(
                    "no Redis: set REDIS_URL, or run as root with apt so the tests install redis-server"
                )
            pytest.skip("NO REDIS: set REDIS_URL or run as root with apt-get to test shared rate limits")
        env = {"RATE_LIMIT_STORAGE": url, "RATE_LIMIT_VIEWER": "10/minute"}
        first, second = LiveServer(database_url, env=env), LiveServer(database_url, env=env)
        first.start()
        second.start()
        try:
            async with (
                httpx.AsyncClient(base_url=first.url, timeout=30, headers=ADMIN) as a,
                httpx.AsyncClient(base_url=second.url, timeout=30) as b,
            ):
                viewer = bearer(json_of(await a.post("/keys", json={"role": "viewer"}), 201)["key"])
                on_first = [(await a.get("/tasks", headers=viewer)).status_code for _ in range(6)]
                on_second = [(await b.get("/tasks", headers=viewer)).status_code for _ in range(6)]
                assert on_first == [200] * 6
                assert on_second == [200] * 4 + [429] * 2
                refused = await b.get("/tasks", headers=viewer)
                assert refused.headers["ratelimit-limit"] == "10"
                assert int(refused.headers["retry-after"]) >= 1
        finally:
            first.stop()
            second.stop()


async def test_tls_terminated_by_the_service(database_url: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    server = LiveServer(database_url, env={"TLS_CERT_FILE": str(cert_file), "TLS_KEY_FILE": str(key_file)})
    await asyncio.to_thread(server.start)
    try:
        assert server.url.startswith("https://")
        async with httpx.AsyncClient(
            base_url=server.url,
            timeout=30,
            verify=ssl.create_default_context(cafile=str(ca_file)),
            headers=ADMIN,
        ) as client:
            assert (await client.get("/tasks")).status_code == 200
        plain = server.url.replace("https://", "http://")
        with pytest.raises(httpx.TransportError):
            async with httpx.AsyncClient(timeout=5) as client:
                await client.get(f"{plain}/healthz")
    finally:
        server.stop()


@pytest.mark.parametrize(("allow", "believed"), [("127.0.0.1", True), ("10.9.9.9", False)])
async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    database_url: str, tmp_path: Path, allow: str, believed: bool
) -> None:
    """The anonymous budget is per client IP: the proxy's X-Forwarded-For names it when the connection comes
    from FORWARDED_ALLOW_IPS; from anyone else the header is ignored, or it would be a way round the limit."""
    env = {"RATE_LIMIT_ANONYMOUS": "3/minute", "FORWARDED_ALLOW_IPS": allow}
    server = LiveServer(database_url, env=env, log_path=tmp_path / "serve.log")
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous:
            statuses = [
                (await anonymous.get("/tasks", headers={"X-Forwarded-For": f"203.0.113.{n}"})).status_code
                for n in range(1, 5)
            ]
    finally:
        server.stop()
    assert statuses == ([401] * 4 if believed else [401] * 3 + [429])
