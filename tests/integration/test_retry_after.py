"""Every 503 the gateway sends carries the configured ``Retry-After`` (METERPOORT_RETRY_AFTER_S).

The paths: a request waiting in vain for a pooled connection, the readiness probe, the ingest
writer, the customer-token keys of an unreachable identity provider, and the database errors the
middleware translates itself (connection loss, a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.api.app import create_app
from gateway.api.appkeys import POOL_KEY
from gateway.api.middleware import make_problem_middleware
from gateway.settings import Settings
from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

Client = TestClient[web.Request, web.Application]
RETRY_AFTER = 13
ISSUER = "https://idp.example"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def client(gateway_settings: Settings, tmp_path: Path) -> AsyncIterator[Client]:
    settings = gateway_settings.model_copy(
        update={
            "retry_after_s": RETRY_AFTER,
            "pool_min_size": 1,
            "pool_max_size": 3,
            "pool_acquire_timeout_s": 0.3,
            "customer_jwt_issuer": ISSUER,
            "customer_jwks_url": f"http://127.0.0.1:{closed_port()}/jwks.json",
        }
    )
    c: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()


def assert_503(status: int, headers: Mapping[str, str], what: str) -> None:
    assert status == 503, what
    assert headers["Retry-After"] == str(RETRY_AFTER), what


async def test_every_503_of_a_running_gateway_says_the_configured_retry_after(
    client: Client, admin_headers: dict[str, str]
) -> None:
    ean = make_ean(1)
    resp = await client.post(
        "/v1/admin/meters",
        json={
            "ean": ean,
            "commodity": "electricity",
            "meter_id": "RA1",
            "customer_id": "c1",
            "contract_start": (dt.datetime.now(dt.UTC) - dt.timedelta(days=5)).isoformat(),
        },
        headers=admin_headers,
    )
    assert resp.status == 201, await resp.text()
    resp = await client.post(
        "/v1/admin/devices", json={"meter_ids": ["RA1"]}, headers=admin_headers
    )
    token = (await resp.json())["token"]
    device = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # a push while the pool is free: the device's token is looked up (and cached) now; its body
    # holds no telegram, so the ingest writer has not taken a connection yet
    warm = await client.post("/v1/telegrams", data=b"no telegram here", headers=device)
    assert warm.status in (400, 422), await warm.text()

    pool: asyncpg.Pool = client.server.app[POOL_KEY]
    async with contextlib.AsyncExitStack() as held:
        # take every free connection of the pool: every request must now wait in vain
        while True:
            try:
                await held.enter_async_context(pool.acquire(timeout=0.2))
            except TimeoutError:
                break
        resp = await client.get(f"/v1/admin/meters/{ean}", headers=admin_headers)
        assert_503(resp.status, resp.headers, "request waiting for a pooled connection")
        resp = await client.get("/readyz")
        assert_503(resp.status, resp.headers, "readiness probe")
        resp = await client.post("/v1/telegrams", data=build_telegram("RA1", now), headers=device)
        assert_503(resp.status, resp.headers, "ingest writer")

    key = Ed25519PrivateKey.generate()
    token = jwt.encode(
        {
            "iss": ISSUER,
            "aud": "meterpoort",
            "sub": "c1",
            "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        },
        key,
        algorithm="EdDSA",
        headers={"kid": "k1"},
    )
    resp = await client.get("/v1/me/connections", headers={"Authorization": f"Bearer {token}"})
    assert_503(resp.status, resp.headers, "identity provider's keys unreachable")


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.CannotConnectNowError("the database system is starting up"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
    ],
)
async def test_database_errors_translated_by_the_middleware_say_it_too(
    error: BaseException,
) -> None:
    async def failing(request: web.Request) -> web.Response:
        await asyncio.sleep(0)
        raise error

    app = web.Application(middlewares=[make_problem_middleware(RETRY_AFTER, 1024)])
    app.router.add_get("/", failing)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as c:
        resp = await c.get("/")
        assert_503(resp.status, resp.headers, type(error).__name__)


def test_the_setting_comes_from_meterpoort_retry_after_s(monkeypatch: pytest.MonkeyPatch) -> None:
    # the environment variable an operator sets is the value every 503 above carries
    monkeypatch.setenv("METERPOORT_RETRY_AFTER_S", str(RETRY_AFTER))
    assert Settings(_env_file=None).retry_after_s == RETRY_AFTER  # type: ignore[call-arg]
