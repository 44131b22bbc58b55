"""The forwarder delivering to a real in-process gateway, as the forwarding tests set it up: two
registered connections behind one device and a third behind another (``make_world``),
telegrams of known readings (``reading``, ``telegram_of``) and the rows they must leave
(``expected``, ``stored``). Expected rows come from local wall-clock arithmetic, not from
gateway.ingest.periods."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.appkeys import INGEST_KEY
from p1_reader.crc import crc16_arc, format_crc
from p1_reader.encode import GasReading, format_telegram
from p1_reader.forwarder import Forwarder, ForwarderConfig
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


async def make_world(
    gateway_client: Client, pool: asyncpg.Pool, admin_headers: dict[str, str]
) -> World:
    """The gateway with the three connections registered and both devices, once its consent
    index knows them all."""
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
