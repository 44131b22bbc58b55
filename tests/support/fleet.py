"""A fleet of field devices for load and fault tests: registration over the admin HTTP API,
deterministic telegrams, and the rows the gateway must hold for them.

Each :class:`Household` is an electricity meter with a gas meter behind it and one device bound
to both. A telegram's registers are a function of (household, time), so the rows a set of
telegrams must produce are computed here from local wall-clock arithmetic (Europe/Amsterdam),
independently of ``gateway.ingest.periods``: the earliest measured reading of every period.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg

from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

AMS = ZoneInfo("Europe/Amsterdam")
UTC = dt.UTC
PURPOSE = "dynamic-tariff-billing"
E_TABLES = ("readings_e_pt15m", "readings_e_p1d", "readings_e_p1m")
G_TABLES = ("readings_g_pt1h", "readings_g_p1d", "readings_g_p1m")
TABLES = E_TABLES + G_TABLES

Rows = dict[str, set[tuple[Any, ...]]]


@dataclass(frozen=True, slots=True)
class Household:
    """Meters and connections of household ``n``; ``interval``: 15-minute/hourly consent."""

    n: int
    interval: bool

    @property
    def e_id(self) -> str:
        return f"E{self.n:010d}"

    @property
    def g_id(self) -> str:
        return f"G{self.n:010d}"

    @property
    def e_ean(self) -> str:
        return make_ean(2 * self.n)

    @property
    def g_ean(self) -> str:
        return make_ean(2 * self.n + 1)

    def telegram(self, t: dt.datetime) -> bytes:
        """The DSMR 5 telegram this household's meter sends at ``t`` (whole seconds, UTC)."""
        ts = int(t.timestamp())
        captured = gas_capture(t)
        return build_telegram(
            self.e_id,
            t,
            import_wh=_import_wh(self.n, ts),
            export_wh=(self.n, ts % 1000),
            gas=(self.g_id, captured, _volume_dm3(self.n, captured)),
        )


def _import_wh(n: int, ts: int) -> tuple[int, int]:
    return (1_000_000 * n + ts // 9 % 10**8, 2_000_000 + ts // 13 % 10**8)


def _volume_dm3(n: int, captured: dt.datetime) -> int:
    return 100_000 * n + int(captured.timestamp()) // 300 % 10**7


def gas_capture(t: dt.datetime) -> dt.datetime:
    """A DSMR 5 meter's gas register is captured every 5 minutes."""
    return t.replace(minute=t.minute - t.minute % 5, second=0)


def cadence(start: dt.datetime, count: int, step_s: int = 10) -> list[dt.datetime]:
    """``count`` telegram times from ``start``, ``step_s`` apart."""
    return [start + dt.timedelta(seconds=step_s * i) for i in range(count)]


# --- registration --------------------------------------------------------------------------------


async def register(
    http: aiohttp.ClientSession,
    base: str,
    admin: Mapping[str, str],
    households: Iterable[Household],
    *,
    since: dt.datetime,
) -> dict[int, str]:
    """Register every household (contracts from ``since``, interval consent from ``since`` where
    asked) and a device per household; the device tokens by household number."""
    tokens: dict[int, str] = {}
    for h in households:
        for ean, commodity, meter_id in (
            (h.e_ean, "electricity", h.e_id),
            (h.g_ean, "gas", h.g_id),
        ):
            body = {
                "ean": ean,
                "commodity": commodity,
                "meter_id": meter_id,
                "customer_id": f"cust-{h.n}",
                "contract_start": since.isoformat(),
            }
            await _created(http, f"{base}/v1/admin/meters", body, admin)
            if h.interval:
                consent = {
                    "ean": ean,
                    "customer_id": f"cust-{h.n}",
                    "purpose": PURPOSE,
                    "notice_version": "v1",
                    "granted_at": since.isoformat(),
                }
                await _created(http, f"{base}/v1/admin/consents", consent, admin)
        device = await _created(
            http, f"{base}/v1/admin/devices", {"meter_ids": [h.e_id, h.g_id]}, admin
        )
        tokens[h.n] = device["token"]
    return tokens


async def _created(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], admin: Mapping[str, str]
) -> dict[str, Any]:
    async with http.post(url, json=body, headers=admin) as resp:
        assert resp.status == 201, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


# --- what the gateway must hold ------------------------------------------------------------------


def _quarter(t: dt.datetime) -> dt.datetime:
    return t.replace(minute=t.minute - t.minute % 15, second=0)


def _hour(t: dt.datetime) -> dt.datetime:
    return t.replace(minute=0, second=0)


def _day(t: dt.datetime) -> dt.datetime:
    local = t.astimezone(AMS)
    return dt.datetime(local.year, local.month, local.day, tzinfo=AMS).astimezone(UTC)


def _month(t: dt.datetime) -> dt.datetime:
    local = t.astimezone(AMS)
    return dt.datetime(local.year, local.month, 1, tzinfo=AMS).astimezone(UTC)


def expected_rows(sent: Iterable[tuple[Household, dt.datetime]]) -> Rows:
    """The rows of every table for telegrams ``sent`` as (household, time), in any order and
    with repeats: per connection and period, the reading measured earliest."""
    best: dict[tuple[str, int, dt.datetime], tuple[dt.datetime, tuple[int, ...]]] = {}

    def offer(
        table: str, ean: str, start: dt.datetime, t: dt.datetime, values: tuple[int, ...]
    ) -> None:
        key = (table, int(ean), start)
        if key not in best or t < best[key][0]:
            best[key] = (t, values)

    for h, t in sent:
        ts = int(t.timestamp())
        e_values = (*_import_wh(h.n, ts), h.n, ts % 1000)
        captured = gas_capture(t)
        g_values = (_volume_dm3(h.n, captured),)
        if h.interval:
            offer("readings_e_pt15m", h.e_ean, _quarter(t), t, e_values)
            offer("readings_g_pt1h", h.g_ean, _hour(captured), captured, g_values)
        offer("readings_e_p1d", h.e_ean, _day(t), t, e_values)
        offer("readings_e_p1m", h.e_ean, _month(t), t, e_values)
        offer("readings_g_p1d", h.g_ean, _day(captured), captured, g_values)
        offer("readings_g_p1m", h.g_ean, _month(captured), captured, g_values)
    rows: Rows = {table: set() for table in TABLES}
    for (table, ean, start), (t, values) in best.items():
        rows[table].add((ean, start, t, *values))
    return rows


async def stored_rows(pool: asyncpg.Pool) -> Rows:
    """Every row of every readings table."""
    out: Rows = {}
    for table in TABLES:
        rows = await pool.fetch(f"SELECT * FROM {table}")
        # changed_xid (the writing transaction, for sync pulls) is no reading value
        out[table] = {tuple(v for k, v in r.items() if k != "changed_xid") for r in rows}
    return out


def missing(acknowledged: Sequence[tuple[Household, dt.datetime]], stored: Rows) -> list[str]:
    """Acknowledged readings the database does not cover: for each, every period it falls in
    must hold a row measured no later than it (an earlier telegram may have won the period)."""
    held = {table: {(r[0], r[1]): r[2] for r in rows} for table, rows in stored.items()}
    gaps: list[str] = []
    for h, t in acknowledged:
        captured = gas_capture(t)
        wanted = [
            ("readings_e_p1d", h.e_ean, _day(t), t),
            ("readings_e_p1m", h.e_ean, _month(t), t),
            ("readings_g_p1d", h.g_ean, _day(captured), captured),
            ("readings_g_p1m", h.g_ean, _month(captured), captured),
        ]
        if h.interval:
            wanted += [
                ("readings_e_pt15m", h.e_ean, _quarter(t), t),
                ("readings_g_pt1h", h.g_ean, _hour(captured), captured),
            ]
        for table, ean, start, at in wanted:
            measured = held[table].get((int(ean), start))
            if measured is None or measured > at:
                gaps.append(f"{table} {ean} {start.isoformat()} (telegram at {at.isoformat()})")
    return gaps
