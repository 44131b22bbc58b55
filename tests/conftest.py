"""Shared fixtures: a real PostgreSQL for the session, a fresh database per test, a pool, and the
gateway served over real TCP.

``DATABASE_URL`` (a PostgreSQL ≥ 14 superuser URL) is used when set; otherwise an embedded server
runs under a temporary directory and is stopped at the end of the session. Every test that asks
for ``database_url`` gets its own database, created from a migrated template (fast: a file copy,
not a migration run).

Fixtures for other test modules:

* ``postgres_server_url`` (session) — the server's URL (its default database)
* ``migrated_template`` (session) — name of the migrated template database
* ``database_url`` — URL of a fresh, migrated database for this test (dropped afterwards)
* ``pool`` — an asyncpg pool on ``database_url``
* ``gateway_settings`` — Settings for that database, admin token ``ADMIN_TOKEN``
* ``gateway_app`` — ``create_app(gateway_settings)`` (not started); tweak app keys before use
* ``gateway_client`` — aiohttp TestClient: a real TCP server on a free port + ClientSession,
  served through the same runner as ``serve`` (``gateway.api.protocol.make_runner``)
* ``admin_headers`` — ``{"Authorization": "Bearer <ADMIN_TOKEN>"}``
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from gateway.settings import RetentionSettings, Settings
from gateway.storage import db

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"

# SPEC §6: every log line of the session is audited for secrets and telegram data at its end
pytest_plugins = ["tests.support.leak_audit"]


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead (keeps user, host, socket query)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server for the whole session: DATABASE_URL, or an embedded one."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    # not under pytest's tmp_path_factory: concurrent pytest sessions prune each other's numbered
    # base directories, which would delete a running server's data directory
    base = Path(tempfile.mkdtemp(prefix="meterpoort-test-pg-"))
    server = db.EmbeddedPostgres(base)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=False)


async def _admin_connect(server_url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(server_url)
    return conn


@pytest.fixture(scope="session")
async def migrated_template(postgres_server_url: str) -> AsyncIterator[str]:
    """A database migrated once per session, used as the template of every test database."""
    name = f"meterpoort_tpl_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await _admin_connect(postgres_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await db.connect(with_database(postgres_server_url, name))
        try:
            await db.migrate(conn)
            now = dt.datetime.now(dt.UTC)
            # wide enough for tests replaying fixed dates around now
            await db.ensure_partitions(
                conn, now - dt.timedelta(days=60), now + dt.timedelta(days=90)
            )
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database_url(postgres_server_url: str, migrated_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test; dropped afterwards."""
    name = f"meterpoort_t_{uuid.uuid4().hex[:12]}"
    admin = await _admin_connect(postgres_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
        yield with_database(postgres_server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def gateway_settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings for a gateway on this test's database, with ADMIN_TOKEN as admin token.

    The hourly retention job is switched off: its tests drive it directly with a chosen clock.
    """
    return Settings(
        database_url=SecretStr(database_url),
        data_dir=tmp_path / "var",
        admin_token=SecretStr(ADMIN_TOKEN),
        pool_min_size=1,
        pool_max_size=4,
        retention=RetentionSettings(enabled=False),
    )


@pytest.fixture
async def pool(database_url: str, gateway_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool on this test's database (same session setup as the gateway's)."""
    p = await db.create_pool(database_url, gateway_settings)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def gateway_app(gateway_settings: Settings) -> web.Application:
    """The gateway app for this test's database, not yet started."""
    from gateway.api.app import create_app

    return create_app(gateway_settings)


class GatewayTestServer(TestServer):
    """aiohttp's test server on the gateway's runner (``make_runner``, as ``serve`` uses)."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        from gateway.api.protocol import make_runner

        return make_runner(self.app, **kwargs)


@pytest.fixture
async def gateway_client(
    gateway_app: web.Application,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The gateway served on a free TCP port, with a ClientSession pointed at it."""
    server = GatewayTestServer(gateway_app, host="127.0.0.1", port=0)
    client: TestClient[web.Request, web.Application] = TestClient(server)
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
