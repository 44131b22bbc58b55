"""SPEC §6: the gateway down for 24 hours, time-compressed.

A field device (the real forwarder and spool) reads a day of telegrams, one every 10 s (8,640),
fed as fast as it takes them, while its gateway is down; half-way through the device reboots
(a new forwarder on the same spool directory). Its spool then holds every telegram it must
deliver, in order. The gateway comes back: the spool delivers everything in order, exactly once,
and the database holds exactly what a second gateway fed the same telegrams live (its clock
following the telegrams) holds, for a household with interval consent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from pydantic import SecretStr

from gateway.api.app import create_app
from gateway.api.appkeys import CLOCK_KEY
from gateway.settings import RetentionSettings, Settings
from gateway.storage import db
from p1_reader.forwarder import Forwarder, ForwarderConfig
from p1_reader.spool import Spool, read_all
from p1_reader.telegram import Telegram
from tests.support.fleet import Household, cadence, expected_rows, register, stored_rows

ADMIN_TOKEN = "outage-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HOUSEHOLD = Household(7, interval=True)
COUNT = 8_640  # 24 h at a 10-s cadence
REBOOT_AT = 4_326  # 12:01:00, a whole minute: the rebooted thinner keeps it either way


@dataclass
class Gateway:
    """A gateway process as far as the device can tell: start, stop, start again, same port."""

    settings: Settings
    clock: Callable[[], float] | None = None
    port: int = 0
    received: list[bytes] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = create_app(self.settings)
        if self.clock is not None:
            app[CLOCK_KEY] = self.clock
        app.middlewares.append(self._record)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # the bodies the gateway acknowledged, in the order it acknowledged them
        response = await handler(request)
        if request.path == "/v1/telegrams" and response.status == 200:
            self.received.append(await request.read())
        return response


def settings_for(dsn: str, data_dir: Path) -> Settings:
    return Settings(
        database_url=SecretStr(dsn),
        data_dir=data_dir,
        admin_token=SecretStr(ADMIN_TOKEN),
        pool_min_size=1,
        pool_max_size=4,
        retention=RetentionSettings(enabled=False),
    )


@pytest.fixture
async def reference_url(postgres_server_url: str, migrated_template: str) -> AsyncIterator[str]:
    """A second fresh database, for the gateway that never goes down."""
    name = f"meterpoort_ref_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
        yield urlsplit(postgres_server_url)._replace(path=f"/{name}").geturl()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def config(gateway: Gateway, token: str) -> ForwarderConfig:
    return ForwarderConfig(
        gateway=gateway.base,
        token=token,
        batch_size=100,
        batch_interval=0.05,
        request_timeout=10.0,
        backoff_initial=0.05,
        backoff_max=0.2,
        stats_interval=0.0,
    )


async def items(
    data: Iterable[bytes], on_each: Callable[[int], None] = lambda i: None
) -> AsyncIterator[tuple[bytes, Telegram | None]]:
    for i, item in enumerate(data):
        on_each(i)
        yield item, None
        await asyncio.sleep(0)


async def read_everything(forwarder: Forwarder, count: int) -> None:
    """Wait until ``forwarder`` has read and spooled (or thinned) ``count`` telegrams."""
    async with asyncio.timeout(120):
        while True:
            stats = forwarder.stats
            if stats.read == count and stats.spooled + stats.thinned == count:
                return
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_day_offline_with_a_reboot_is_delivered_exactly(
    database_url: str, reference_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    start = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=2)
    times = cadence(start, COUNT)
    telegrams = [HOUSEHOLD.telegram(t) for t in times]
    # what the device sends: the first telegram of every minute (the forwarder's thinning;
    # gas capture hours start on whole minutes too)
    kept = [tg for t, tg in zip(times, telegrams, strict=True) if t.second == 0]

    live_now = [start.timestamp()]
    outage = Gateway(settings_for(database_url, tmp_path / "a"))
    live = Gateway(settings_for(reference_url, tmp_path / "b"), clock=lambda: live_now[0] + 1)
    await outage.start()
    await live.start()
    ref_pool = await db.create_pool(reference_url, live.settings)
    try:
        async with aiohttp.ClientSession() as http:
            since = start - dt.timedelta(days=1)
            token = (await register(http, outage.base, ADMIN, [HOUSEHOLD], since=since))[7]
            live_token = (await register(http, live.base, ADMIN, [HOUSEHOLD], since=since))[7]

        # the reference: the same telegrams, delivered as they are read, its clock following
        def tick(i: int) -> None:
            live_now[0] = times[i].timestamp()

        with Spool(tmp_path / "live-spool", full_policy="drop-newest") as spool:
            forwarder = Forwarder(config(live, live_token), spool)
            async with asyncio.timeout(120):
                await forwarder.run(items(telegrams, tick), exit_when_drained=True)

        # the outage: the gateway goes down, the device reads half a day, reboots, reads the rest
        await outage.stop()
        spool_dir = tmp_path / "spool"
        with Spool(spool_dir, full_policy="drop-newest") as spool:
            before = Forwarder(config(outage, token), spool)
            run = asyncio.create_task(before.run(items(telegrams[:REBOOT_AT])))
            await read_everything(before, REBOOT_AT)
            before.stop()
            await run
        assert before.stats.delivered == 0
        with Spool(spool_dir, full_policy="drop-newest") as spool:
            after = Forwarder(config(outage, token), spool)
            run = asyncio.create_task(
                after.run(items(telegrams[REBOOT_AT:]), exit_when_drained=True)
            )
            await read_everything(after, COUNT - REBOOT_AT)
            # everything the device must deliver is spooled, in order, once
            assert [r.data for r in read_all(spool_dir)] == kept
            await outage.start()
            recovered = asyncio.get_running_loop().time()
            async with asyncio.timeout(120):
                await run
            drained_s = asyncio.get_running_loop().time() - recovered
            assert spool.pending == 0

        # delivered in order, exactly once, every telegram accepted
        assert b"".join(outage.received) == b"".join(kept)
        assert (after.stats.delivered, after.stats.accepted, after.stats.rejected) == (
            len(kept),
            len(kept),
            0,
        )
        held = await stored_rows(pool)
        assert held == await stored_rows(ref_pool)
        assert held == expected_rows((HOUSEHOLD, t) for t in times if t.second == 0)
        assert len(held["readings_e_pt15m"]) >= 96 and len(held["readings_g_pt1h"]) >= 24
    finally:
        await ref_pool.close()
        await outage.stop()
        await live.stop()
    print(
        f"\n24-h outage: {COUNT} telegrams read, {len(kept)} spooled across a reboot, delivered "
        f"in {len(outage.received)} requests {drained_s:.2f} s after the gateway came back; "
        f"{sum(len(r) for r in held.values())} rows identical to the live gateway's"
    )
