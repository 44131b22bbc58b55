"""The forwarder (in-process) delivering to the REAL gateway over HTTP on 127.0.0.1, into a real
PostgreSQL: what the gateway stores, what it rejects and how the forwarder accounts for it.

* a mixed stream (good telegrams, one with a bad CRC, one of a meter not bound to the device):
  every telegram is acknowledged (the spool drains), the two rejections are counted with their
  reasons, and exactly the expected P1D/P1M rows are stored;
* a batch whose telegrams are ALL rejected: the gateway answers 422 problem+json carrying
  ``{accepted, rejected}``; the forwarder treats it as answered (no retry, no halving, nothing
  given up as "refused") and still delivers the batch after it;
* ``file_source`` (``--input``): a telegram with a wrong CRC never leaves the house.

Expected rows are computed here from local wall-clock arithmetic (not with gateway.ingest.periods).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.appkeys import INGEST_KEY
from p1_reader.crc import crc16_arc, format_crc
from p1_reader.encode import GasReading, format_telegram
from p1_reader.forwarder import Forwarder, ForwarderConfig, file_source
from p1_reader.spool import Spool
from p1_reader.telegram import Telegram
from tests.support import make_ean

Client = TestClient[web.Request, web.Application]
AMS = ZoneInfo("Europe/Amsterdam")
UTC = dt.UTC
PROBLEM = "application/problem+json"

E_ID = "E0047110815"  # the device's electricity meter
G_ID = "G0047110816"  # the gas meter behind it
OTHER_ID = "E0099999999"  # registered, but bound to another device
OTHER_GAS_ID = "G0099999998"  # the gas meter behind OTHER_ID (not registered)
ALL_TABLES = (
    "readings_e_pt15m",
    "readings_e_p1d",
    "readings_e_p1m",
    "readings_g_pt1h",
    "readings_g_p1d",
    "readings_g_p1m",
)


E_EAN, G_EAN, OTHER_EAN = make_ean(101), make_ean(102), make_ean(103)


# --- telegrams and the rows they should produce --------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """What one telegram says: electricity registers at ``t``, gas volume at ``captured``."""

    t: dt.datetime
    registers: tuple[int, int, int, int]
    captured: dt.datetime
    volume_dm3: int


def reading(i: int, t: dt.datetime) -> Reading:
    # distinct values per telegram so that a row from the wrong telegram is noticed
    captured = t.replace(minute=t.minute - t.minute % 5, second=0)
    return Reading(
        t=t,
        registers=(1_234_000 + 17 * i, 2_345_000 + 11 * i, 10_000 + 3 * i, 20_000 + i),
        captured=captured,
        # a capture time always comes with the same value (the meter's 5-minute register)
        volume_dm3=3_210_000 + int(captured.timestamp()) // 300 % 100_000,
    )


def telegram_of(r: Reading, meter_id: str = E_ID) -> bytes:
    """A DSMR 5 telegram of ``r``; a meter other than E_ID gets another gas meter too (a
    telegram with one bound meter is accepted for that meter: unbound ones are ignored)."""
    i1, i2, e1, e2 = r.registers
    gas_id = G_ID if meter_id == E_ID else OTHER_GAS_ID
    return format_telegram(
        meter_id=meter_id,
        timestamp=r.t,
        import_t1_wh=i1,
        import_t2_wh=i2,
        export_t1_wh=e1,
        export_t2_wh=e2,
        power_w=1234,
        gas=GasReading(measured_at=r.captured, volume_dm3=r.volume_dm3, meter_id=gas_id),
    )


def with_bad_crc(telegram: bytes) -> bytes:
    """The same telegram with a CRC that does not match its content."""
    bang = telegram.rindex(b"!")
    frame = telegram[: bang + 1]
    wrong = format_crc(crc16_arc(frame) ^ 0x5A5A).encode("ascii")
    return frame + wrong + b"\r\n"


def local_day_start(t: dt.datetime) -> dt.datetime:
    local = t.astimezone(AMS)
    return dt.datetime(local.year, local.month, local.day, tzinfo=AMS).astimezone(UTC)


def local_month_start(t: dt.datetime) -> dt.datetime:
    local = t.astimezone(AMS)
    return dt.datetime(local.year, local.month, 1, tzinfo=AMS).astimezone(UTC)


def earliest_per_period(
    items: Iterable[tuple[dt.datetime, tuple[int, ...]]],
    ean: str,
    start_of: Callable[[dt.datetime], dt.datetime],
) -> set[tuple[Any, ...]]:
    """(ean, period_start, measured_at, *values) of the earliest reading of each period."""
    best: dict[dt.datetime, tuple[dt.datetime, tuple[int, ...]]] = {}
    for t, values in items:
        start = start_of(t)
        if start not in best or t < best[start][0]:
            best[start] = (t, values)
    return {(int(ean), start, t, *values) for start, (t, values) in best.items()}


def expected(readings: Sequence[Reading]) -> dict[str, set[tuple[Any, ...]]]:
    """Rows of a daily-level electricity + gas connection pair (no interval consent)."""
    e = [(r.t, r.registers) for r in readings]
    g = [(r.captured, (r.volume_dm3,)) for r in readings]
    return {
        "readings_e_pt15m": set(),
        "readings_e_p1d": earliest_per_period(e, E_EAN, local_day_start),
        "readings_e_p1m": earliest_per_period(e, E_EAN, local_month_start),
        "readings_g_pt1h": set(),
        "readings_g_p1d": earliest_per_period(g, G_EAN, local_day_start),
        "readings_g_p1m": earliest_per_period(g, G_EAN, local_month_start),
    }


async def stored(pool: asyncpg.Pool) -> dict[str, set[tuple[Any, ...]]]:
    out: dict[str, set[tuple[Any, ...]]] = {}
    for table in ALL_TABLES:
        rows = await pool.fetch(f"SELECT * FROM {table}")
        # changed_xid (the writing transaction, for sync pulls) is no reading value
        out[table] = {tuple(v for k, v in r.items() if k != "changed_xid") for r in rows}
    return out


def recent_times(count: int, *, step: dt.timedelta = dt.timedelta(seconds=50)) -> list[dt.datetime]:
    """``count`` whole-second times ending a minute before now (the gateway checks its clock)."""
    last = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    return [last - step * (count - 1 - i) for i in range(count)]


# --- the gateway with two registered connections and a device --------------------------------


@dataclass
class World:
    client: Client
    pool: asyncpg.Pool
    token: str

    @property
    def url(self) -> str:
        return str(self.client.make_url("/")).rstrip("/")


async def register(client: Client, admin: dict[str, str], ean: str, kind: str, meter: str) -> None:
    start = dt.datetime.now(UTC) - dt.timedelta(days=400)
    resp = await client.post(
        "/v1/admin/meters",
        json={
            "ean": ean,
            "commodity": kind,
            "meter_id": meter,
            "customer_id": f"cust-{ean[-4:]}",
            "contract_start": start.isoformat(),
        },
        headers=admin,
    )
    assert resp.status == 201, await resp.text()


async def new_device(client: Client, admin: dict[str, str], *meter_ids: str) -> str:
    resp = await client.post(
        "/v1/admin/devices", json={"meter_ids": list(meter_ids)}, headers=admin
    )
    assert resp.status == 201, await resp.text()
    token: str = (await resp.json())["token"]
    return token


@pytest.fixture
async def world(
    gateway_client: Client, pool: asyncpg.Pool, admin_headers: dict[str, str]
) -> World:
    await register(gateway_client, admin_headers, E_EAN, "electricity", E_ID)
    await register(gateway_client, admin_headers, G_EAN, "gas", G_ID)
    await register(gateway_client, admin_headers, OTHER_EAN, "electricity", OTHER_ID)
    token = await new_device(gateway_client, admin_headers, E_ID, G_ID)
    await new_device(gateway_client, admin_headers, OTHER_ID)
    # the consent index follows the registry through NOTIFY: wait until it knows all three
    app = gateway_client.app
    assert app is not None
    index = app[INGEST_KEY].index
    for _ in range(500):
        if {E_ID, OTHER_ID} <= set(index.electricity) and G_ID in index.gas:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the consent index did not learn the new connections within 5 s")
    return World(gateway_client, pool, token)


def config(w: World, **changes: Any) -> ForwarderConfig:
    settings: dict[str, Any] = {
        "gateway": w.url,
        "token": w.token,
        "batch_size": 4,
        "batch_interval": 0.05,
        "send_all": True,
        "request_timeout": 10.0,
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
        "auth_retry": 0.2,
        "stats_interval": 0.0,
    }
    settings.update(changes)
    return ForwarderConfig(**settings)


async def items_of(data: Iterable[bytes]) -> AsyncIterator[tuple[bytes, Telegram | None]]:
    for item in data:
        yield item, None
        await asyncio.sleep(0)


async def forward(
    cfg: ForwarderConfig,
    spool: Spool,
    source: AsyncIterator[tuple[bytes, Telegram | None]],
) -> Forwarder:
    forwarder = Forwarder(cfg, spool)
    async with asyncio.timeout(30):
        await forwarder.run(source, exit_when_drained=True)
    return forwarder


# --- tests ---------------------------------------------------------------------------------------


async def test_mixed_stream_is_acknowledged_and_stored(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader.forwarder")
    times = recent_times(12)
    readings = [reading(i, t) for i, t in enumerate(times)]
    # the EARLIEST telegram has a bad CRC and the second earliest comes from a meter bound to
    # another device: storing either would change the day and month rows checked below
    data = [with_bad_crc(telegram_of(readings[0])), telegram_of(readings[1], OTHER_ID)]
    data += [telegram_of(r) for r in readings[2:]]

    with Spool(tmp_path / "spool", full_policy="drop-newest") as spool:
        fwd = await forward(config(world), spool, items_of(data))
        assert spool.pending == 0

    s = fwd.stats
    assert (s.read, s.spooled, s.delivered) == (12, 12, 12)
    assert (s.accepted, s.rejected, s.refused) == (10, 2, 0)
    assert s.rejected_reasons == {"bad-crc": 1, "meter-not-bound": 1}
    assert s.failures == 0
    # batches of at most 4: at least 3 requests, none of them retried or split
    assert 3 <= s.requests <= 12

    assert await stored(world.pool) == expected(readings[2:])
    rejections = [r.getMessage() for r in caplog.records if "rejected telegram" in r.getMessage()]
    assert len(rejections) == 2
    assert any("bad-crc" in m for m in rejections)
    assert any("meter-not-bound" in m for m in rejections)
    # privacy: the forwarder's log never carries telegram content
    messages = [r.getMessage() for r in caplog.records]
    assert not any("96.1.1" in m or "/XMX5" in m or "kWh" in m for m in messages)


async def test_all_rejected_batch_is_answered_not_retried(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader.forwarder")
    times = recent_times(6)
    readings = [reading(i, t) for i, t in enumerate(times)]
    future = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(hours=2)
    doomed = [
        with_bad_crc(telegram_of(readings[0])),
        telegram_of(readings[1], OTHER_ID),
        telegram_of(reading(99, future)),
    ]
    good = [telegram_of(r) for r in readings[3:]]

    # the premise: the gateway answers such a batch with 422 problem+json and the outcome
    resp = await world.client.post(
        "/v1/telegrams",
        data=b"".join(doomed),
        headers={"Authorization": f"Bearer {world.token}", "Content-Type": "text/plain"},
    )
    assert resp.status == 422 and resp.content_type == PROBLEM
    problem = await resp.json(content_type=PROBLEM)
    assert problem["accepted"] == 0
    assert [(r["index"], r["reason"]) for r in problem["rejected"]] == [
        (0, "bad-crc"),
        (1, "meter-not-bound"),
        (2, "future-timestamp"),
    ]
    assert await stored(world.pool) == expected([])

    # spooled before the forwarder starts, so that the first batch is exactly the doomed three
    with Spool(tmp_path / "spool", full_policy="drop-newest") as spool:
        assert spool.append_batch(doomed + good) == 6
        fwd = await forward(config(world, batch_size=3), spool, items_of(()))
        assert spool.pending == 0

    s = fwd.stats
    # two requests: the 422 batch was neither retried nor split into smaller ones
    assert s.requests == 2
    assert (s.delivered, s.accepted, s.rejected, s.refused, s.failures) == (6, 3, 3, 0, 0)
    assert s.rejected_reasons == {"bad-crc": 1, "meter-not-bound": 1, "future-timestamp": 1}
    assert await stored(world.pool) == expected(readings[3:])
    messages = [r.getMessage() for r in caplog.records]
    assert not any("giving it up" in m or "retrying in batches" in m for m in messages)


async def test_last_batch_all_rejected_does_not_block_exit(world: World, tmp_path: Path) -> None:
    # the 422 batch is the last one: the forwarder must acknowledge it and exit, not loop
    times = recent_times(3)
    readings = [reading(i, t) for i, t in enumerate(times)]
    data = [telegram_of(readings[0]), telegram_of(readings[1], OTHER_ID)]
    data.append(with_bad_crc(telegram_of(readings[2])))
    with Spool(tmp_path / "spool", full_policy="drop-newest") as spool:
        spool.append_batch(data)
        fwd = await forward(config(world, batch_size=1), spool, items_of(()))
        assert spool.pending == 0
    s = fwd.stats
    assert (s.requests, s.accepted, s.rejected, s.refused) == (3, 1, 2, 0)
    assert await stored(world.pool) == expected(readings[:1])


async def test_input_file_with_a_bad_crc_telegram(world: World, tmp_path: Path) -> None:
    # --input reads through the framer, which drops a telegram whose CRC does not match: it is
    # never sent, so the gateway sees (and stores) only the good ones
    times = recent_times(5)
    readings = [reading(i, t) for i, t in enumerate(times)]
    stream = with_bad_crc(telegram_of(readings[0])) + b"".join(telegram_of(r) for r in readings[1:])
    source = tmp_path / "p1.txt"
    source.write_bytes(stream)
    with Spool(tmp_path / "spool", full_policy="drop-newest") as spool:
        fwd = await forward(config(world), spool, file_source(str(source), chunk_size=97))
        assert spool.pending == 0
    s = fwd.stats
    assert (s.read, s.delivered, s.accepted, s.rejected) == (4, 4, 4, 0)
    assert await stored(world.pool) == expected(readings[1:])


async def test_input_file_without_its_final_line_end(world: World, tmp_path: Path) -> None:
    # a capture that stops right after the last '!CRC' (as files are often stored): the end of
    # the input completes the last telegram, which is delivered like the others
    times = recent_times(4)
    readings = [reading(i, t) for i, t in enumerate(times)]
    source = tmp_path / "p1.txt"
    source.write_bytes(b"".join(telegram_of(r) for r in readings).rstrip(b"\r\n"))
    with Spool(tmp_path / "spool", full_policy="drop-newest") as spool:
        fwd = await forward(config(world), spool, file_source(str(source), chunk_size=97))
        assert spool.pending == 0
    s = fwd.stats
    assert (s.read, s.delivered, s.accepted, s.rejected) == (4, 4, 4, 0)
    assert await stored(world.pool) == expected(readings)
