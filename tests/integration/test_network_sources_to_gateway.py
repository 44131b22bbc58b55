"""Network P1 dongles end to end: the real reader on a ``socket://`` bridge or a HomeWizard's
``http://`` API, the real forwarder and its spool, the REAL gateway over HTTP on 127.0.0.1, a
real PostgreSQL. Each dongle drops out once mid-run; the readings stored must be exactly those of
the telegrams read in full, once each.

The registry, device and expected-row arithmetic are those of ``test_forward_to_gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from p1_reader.forwarder import Forwarder, port_source
from p1_reader.reader import Backoff, P1Reader
from p1_reader.spool import Spool
from tests.support.forward_world import (
    Client,
    World,
    config,
    expected,
    make_world,
    reading,
    recent_times,
    stored,
    telegram_of,
)
from tests.support.p1_network import (
    DROP,
    NO_TELEGRAM,
    HomeWizardMeter,
    Script,
    TcpBridge,
    telegram,
)

FAST = Backoff(initial=0.02, maximum=0.2)
LIMIT = 30.0


@pytest.fixture
async def world(gateway_client: Client, pool: asyncpg.Pool, admin_headers: dict[str, str]) -> World:
    return await make_world(gateway_client, pool, admin_headers)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIMIT
    while not await check():
        assert loop.time() < deadline, f"{what}: not within {LIMIT} s"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def forwarding(w: World, reader: P1Reader, spool: Spool) -> AsyncIterator[Forwarder]:
    """The forwarder reading ``reader`` into ``spool`` and on to the gateway, in a task."""
    forwarder = Forwarder(config(w), spool)
    task = asyncio.create_task(forwarder.run(port_source(reader)))
    try:
        yield forwarder
    finally:
        forwarder.stop()
        async with asyncio.timeout(LIMIT):
            await task


async def test_tcp_bridge_drop_mid_telegram_into_the_gateway(
    world: World,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader")
    readings = [reading(i, t) for i, t in enumerate(recent_times(10))]
    telegrams = [telegram_of(r) for r in readings]
    # the EARLIEST reading's telegram is the one the drop cuts: were it read (whole or glued
    # to what the next connection brings), the day and month rows would be its own
    cut = telegrams[0]
    scripts = [
        Script(b"\xff\x00" + telegrams[1] + telegrams[2] + cut[: len(cut) // 2]),
        # the meter went on meanwhile: the new connection starts further into that telegram
        Script(cut[len(cut) // 2 + 40 :] + b"".join(telegrams[3:]), drop=False),
    ]
    async with TcpBridge(scripts) as bridge:
        reader = P1Reader(bridge.url, "auto", backoff=FAST, idle_timeout=None)
        with Spool(tmp_path / "spool", full_policy="drop-newest") as spool:
            async with forwarding(world, reader, spool) as fwd:

                async def delivered() -> bool:
                    return fwd.stats.accepted + fwd.stats.rejected >= 9

                await eventually(delivered, "the bridge's telegrams delivered")
            assert spool.pending == 0
    assert await stored(world.pool) == expected(readings[1:])
    assert bridge.connections == 2
    assert reader.state.disconnects == 1
    assert reader.state.rejected == 0
    s = fwd.stats
    assert (s.read, s.accepted, s.rejected) == (9, 9, 0)


async def test_homewizard_repeats_and_outages_into_the_gateway(
    world: World,
    tmp_path: Path,
) -> None:
    readings = [reading(i, t) for i, t in enumerate(recent_times(6))]
    t = [telegram(telegram_of(r)) for r in readings]
    answers = [
        NO_TELEGRAM,  # just booted
        t[0], t[0], t[0],
        t[1], t[1],
        # Wi-Fi gone for a moment (twice: aiohttp retries a GET once on a reused connection)
        DROP, DROP,
        t[1],  # after the reconnect: still the same telegram, not read again
        t[2],
        NO_TELEGRAM,  # P1 cable out
        NO_TELEGRAM,
        t[3], t[3], t[4], t[5],
    ]  # fmt: skip
    async with HomeWizardMeter(answers) as meter:
        reader = P1Reader(meter.url, backoff=FAST, poll_interval=0.02, idle_timeout=None)
        with Spool(tmp_path / "spool", full_policy="drop-newest") as spool:
            async with forwarding(world, reader, spool) as fwd:

                async def delivered() -> bool:
                    return fwd.stats.accepted + fwd.stats.rejected >= 6

                await eventually(delivered, "the HomeWizard's telegrams delivered")
                # the dongle keeps answering its last telegram: nothing more is read
                await asyncio.wait_for(meter.done.wait(), LIMIT)
                await asyncio.sleep(0.2)
            assert spool.pending == 0
    assert await stored(world.pool) == expected(readings)
    assert reader.state.disconnects == 2
    s = fwd.stats
    # each telegram read, spooled and delivered once, whatever the dongle repeated
    assert (s.read, s.accepted, s.rejected) == (6, 6, 0)
