"""``GET /v1/me/consumption`` (the portal's charts) over real HTTP on a real PostgreSQL, fed by
real ingest (``POST /v1/telegrams``).

The consumption of a day is the increase from its daily reading to the next day's; the test
computes every expected amount from the registers it sent. It covers gaps (a day without a
reading, a meter exchange between two readings, a contract's end), the contract windows of two
tenants of one EAN (SPEC §3a), the interval profile of a day, the access log, and the refusals.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.app import create_app
from gateway.cli.token import mint_dev_token
from gateway.jsonenc import rfc3339
from gateway.settings import Settings
from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

Client = TestClient[web.Request, web.Application]
AMS = ZoneInfo("Europe/Amsterdam")
EAN = make_ean(4242)
GAS_EAN = make_ean(4243)


@dataclass
class World:
    client: Client
    settings: Settings
    admin: dict[str, str]

    def customer(self, customer_id: str) -> dict[str, str]:
        token = mint_dev_token(
            self.settings.data_dir, customer_id, "meterpoort", dt.timedelta(minutes=10)
        )
        return {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, path: str, headers: dict[str, str], status: int = 200, **kw: Any
    ) -> Any:
        resp = await self.client.request(method, path, headers=headers, **kw)
        text = await resp.text()
        assert resp.status == status, f"{method} {path}: {resp.status} {text}"
        if status >= 400:
            assert resp.content_type == "application/problem+json", text
        return json.loads(text) if text else None

    async def device(self, *meter_ids: str) -> tuple[str, dict[str, str]]:
        data = await self.call(
            "POST", "/v1/admin/devices", self.admin, 201, json={"meter_ids": list(meter_ids)}
        )
        return data["device_id"], {
            "Authorization": f"Bearer {data['token']}",
            "Content-Type": "text/plain",
        }

    async def push(self, device: dict[str, str], telegrams: list[bytes]) -> None:
        resp = await self.client.post("/v1/telegrams", data=b"".join(telegrams), headers=device)
        body = await resp.json()
        assert resp.status == 200 and body["rejected"] == [], body
        assert body["accepted"] == len(telegrams)

    async def consumption(self, customer_id: str, status: int = 200, **params: str) -> Any:
        return await self.call(
            "GET", "/v1/me/consumption", self.customer(customer_id), status, params=params
        )


@pytest.fixture
async def world(gateway_settings: Settings, admin_headers: dict[str, str]) -> AsyncIterator[World]:
    settings = gateway_settings.model_copy(update={"dev_mode": True})
    mint_dev_token(settings.data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
    client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield World(client, settings, admin_headers)
    finally:
        await client.close()


def local_midnight(days_ago: int) -> dt.datetime:
    day = (dt.datetime.now(AMS) - dt.timedelta(days=days_ago)).date()
    return dt.datetime(day.year, day.month, day.day, tzinfo=AMS).astimezone(dt.UTC)


def day_text(t: dt.datetime) -> str:
    return t.astimezone(AMS).date().isoformat()


def registers(n: int, meter_base: int = 0) -> tuple[tuple[int, int], tuple[int, int]]:
    """Import (T1, T2) and export (T1, T2) in Wh of day ``n``'s reading: growing by a
    different amount every day."""
    return (
        (meter_base + 1_000_000 + 700 * n * n, 500_000 + 1_100 * n),
        (30_000 + 250 * n, 9 * n),
    )


async def test_daily_consumption_in_the_contract_window_with_gaps_and_a_meter_exchange(
    world: World, pool: asyncpg.Pool
) -> None:
    w = world
    d = {n: local_midnight(14 - n) for n in range(15)}  # d[0] 14 days ago … d[14] today

    # anna lives at EAN from d0 to d9 (meter M1, exchanged for M2 on d5 at noon), bob from d9
    await w.call(
        "POST",
        "/v1/admin/meters",
        w.admin,
        201,
        json={
            "ean": EAN,
            "commodity": "electricity",
            "meter_id": "M1",
            "customer_id": "anna",
            "contract_start": day_text(d[0]),
        },
    )
    device_id, device = await w.device("M1")
    sent: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {}
    # day 4 has no reading (the dongle was unplugged); M1 until the exchange
    for n in (1, 2, 3, 5):
        sent[n] = registers(n)
    await w.push(
        device,
        [
            build_telegram("M1", d[n] + dt.timedelta(seconds=10), import_wh=i, export_wh=e)
            for n, (i, e) in sent.items()
        ],
    )
    exchange_at = d[5] + dt.timedelta(hours=12)
    await w.call(
        "POST",
        f"/v1/admin/connections/{EAN}/meter-exchange",
        w.admin,
        json={"meter_id": "M2", "at": rfc3339(exchange_at)},
    )
    await w.call("PATCH", f"/v1/admin/devices/{device_id}", w.admin, json={"meter_ids": ["M2"]})
    # M2 starts near zero: a difference across the exchange would be negative
    for n in (6, 7, 8, 9, 10):
        sent[n] = registers(n, meter_base=-990_000)
    await w.push(
        device,
        [
            build_telegram(
                "M2", d[n] + dt.timedelta(seconds=10), import_wh=sent[n][0], export_wh=sent[n][1]
            )
            for n in (6, 7, 8)
        ],
    )
    contracts = await pool.fetch("SELECT contract_id FROM contracts WHERE ean = $1", EAN)
    (anna_contract,) = (str(r["contract_id"]) for r in contracts)
    await w.call(
        "PATCH",
        f"/v1/admin/contracts/{anna_contract}",
        w.admin,
        json={"end": day_text(d[9]), "end_reason": "move-out"},
    )
    bob = await w.call(
        "POST",
        "/v1/admin/contracts",
        w.admin,
        201,
        json={"ean": EAN, "customer_id": "bob", "start": day_text(d[9])},
    )
    await w.push(
        device,
        [
            build_telegram(
                "M2", d[n] + dt.timedelta(seconds=10), import_wh=sent[n][0], export_wh=sent[n][1]
            )
            for n in (9, 10)
        ],
    )

    def expected(n: int, contract: str) -> dict[str, Any]:
        (i1, i2), (e1, e2) = sent[n]
        (j1, j2), (f1, f2) = sent[n + 1]
        return {
            "period_start": rfc3339(d[n]),
            "period_end": rfc3339(d[n + 1]),
            "contract_id": contract,
            "measured_from": rfc3339(d[n] + dt.timedelta(seconds=10)),
            "measured_to": rfc3339(d[n + 1] + dt.timedelta(seconds=10)),
            "import_wh": (j1 + j2) - (i1 + i2),
            "export_wh": (f1 + f2) - (e1 + e2),
        }

    span = {"ean": EAN, "granularity": "P1D", "from": day_text(d[0]), "to": day_text(d[14])}
    anna = await w.consumption("anna", **span)
    assert (anna["ean"], anna["commodity"], anna["unit"]) == (EAN, "electricity", "Wh")
    # day 3 (no day-4 reading), 4 (none), 5 (the next reading is M2's), 8 (its next reading is
    # bob's) are gaps; 0 has no reading
    assert anna["periods"] == [
        expected(1, anna_contract),
        expected(2, anna_contract),
        expected(6, anna_contract),
        expected(7, anna_contract),
    ]
    assert anna["interval"] is None  # no consent: no interval readings
    bobs = await w.consumption("bob", **span)
    assert bobs["periods"] == [expected(9, bob["contract_id"])]

    # a narrower range: periods starting inside it only (the closing reading lies beyond it)
    narrow = await w.consumption("anna", **{**span, "from": day_text(d[2]), "to": day_text(d[3])})
    assert narrow["periods"] == [expected(2, anna_contract)]

    # someone else's connection is not found, like one that does not exist
    problem = await w.consumption("carol", 404, **span)
    assert "connection" in problem["detail"]

    # each read is in the reader's access log, with the customer as actor — and only in theirs
    rows = await pool.fetch(
        "SELECT actor, subject, detail FROM audit_log WHERE kind = 'data.read' ORDER BY seq"
    )
    assert [(r["actor"], r["subject"]) for r in rows] == [
        ("customer:anna", "anna"),
        ("customer:bob", "bob"),
        ("customer:anna", "anna"),
    ]
    first = rows[0]["detail"]
    first = json.loads(first) if isinstance(first, str) else first
    assert first["granularity"] == "P1D" and first["eans"] == [EAN]
    assert first["from"].startswith(rfc3339(d[0])[:19])
    log = await w.call("GET", "/v1/me/access-log", w.customer("anna"))
    mine = [e for e in log["entries"] if e["kind"] == "read"]
    assert [(e["actor"], e["granularity"], e["eans"]) for e in mine] == [
        ("customer:anna", "P1D", [EAN]),
        ("customer:anna", "P1D", [EAN]),
    ]
    log = await w.call("GET", "/v1/me/access-log", w.customer("bob"))
    assert [e["actor"] for e in log["entries"] if e["kind"] == "read"] == ["customer:bob"]


async def test_interval_profile_of_a_day(world: World, pool: asyncpg.Pool) -> None:
    w = world
    day = local_midnight(3)
    await w.call(
        "POST",
        "/v1/admin/meters",
        w.admin,
        201,
        json={
            "ean": GAS_EAN,
            "commodity": "gas",
            "meter_id": "G1",
            "customer_id": "anna",
            "contract_start": day_text(local_midnight(10)),
        },
    )
    await w.call(
        "POST",
        "/v1/admin/consents",
        w.admin,
        201,
        json={
            "ean": GAS_EAN,
            "customer_id": "anna",
            "purpose": "energy-insights",
            "notice_version": "v1",
            "channel": "phone",
            "granted_at": rfc3339(local_midnight(5)),
        },
    )
    _, device = await w.device("G1")
    # hourly gas captures through the day and into the next; hour 7 is missing
    hours = [h for h in range(27) if h != 7]
    volume = {h: 4_000_000 + 37 * h * h for h in hours}
    await w.push(
        device,
        [
            build_telegram(
                None,
                day + dt.timedelta(hours=h, minutes=1),
                gas=("G1", day + dt.timedelta(hours=h), volume[h]),
            )
            for h in hours
        ],
    )
    answer = await w.consumption(
        "anna",
        **{
            "ean": GAS_EAN,
            "granularity": "PT1H",
            "from": day_text(day),
            "to": day_text(local_midnight(2)),
        },
    )
    assert answer["unit"] == "dm3"
    next_day = dt.datetime.fromisoformat(answer["to"])
    in_day = [h for h in hours if day + dt.timedelta(hours=h) < next_day]
    assert answer["periods"] == [
        {
            "period_start": rfc3339(day + dt.timedelta(hours=h)),
            "period_end": rfc3339(day + dt.timedelta(hours=h + 1)),
            "contract_id": answer["periods"][0]["contract_id"],
            "measured_from": rfc3339(day + dt.timedelta(hours=h)),
            "measured_to": rfc3339(day + dt.timedelta(hours=h + 1)),
            "volume_dm3": volume[h + 1] - volume[h],
        }
        for h in in_day
        if h + 1 in volume
    ]
    assert len(answer["periods"]) == len(in_day) - 1  # hour 6 closes at the missing hour 7
    # the daily answer tells the page where a profile is: the stored interval readings' range
    daily = await w.consumption(
        "anna",
        **{"ean": GAS_EAN, "granularity": "P1D", "from": day_text(day), "to": day_text(next_day)},
    )
    assert daily["interval"] == {
        "granularity": "PT1H",
        "first": rfc3339(day),
        "last": rfc3339(day + dt.timedelta(hours=26)),
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"granularity": "P1D", "from": "2026-01-01", "to": "2026-02-01"}, "ean"),
        ({"ean": "123", "granularity": "P1D", "from": "2026-01-01", "to": "2026-02-01"}, "ean"),
        (
            {"ean": EAN, "granularity": "PT5M", "from": "2026-01-01", "to": "2026-02-01"},
            "granularity",
        ),
        (
            {"ean": EAN, "granularity": "PT1H", "from": "2026-01-01", "to": "2026-01-02"},
            "granularity",
        ),
        ({"ean": EAN, "granularity": "P1D", "from": "yesterday", "to": "2026-02-01"}, "from"),
        ({"ean": EAN, "granularity": "P1D", "from": "2026-02-01", "to": "2026-02-01"}, "to"),
        ({"ean": EAN, "granularity": "PT15M", "from": "2026-01-01", "to": "2026-03-01"}, "to"),
        (
            {"ean": EAN, "granularity": "P1D", "from": "2026-01-01", "to": "2026-02-01", "x": "1"},
            "x",
        ),
    ],
)
async def test_bad_parameters_are_422_problems(
    world: World, params: dict[str, str], field: str
) -> None:
    await world.call(
        "POST",
        "/v1/admin/meters",
        world.admin,
        201,
        json={
            "ean": EAN,
            "commodity": "electricity",
            "meter_id": "M1",
            "customer_id": "anna",
            "contract_start": "2025-01-01",
        },
    )
    problem = await world.consumption("anna", 422, **params)
    assert field in [e["loc"][-1] for e in problem["errors"]], problem
    # nothing was read, so nothing is in the access log
    log = await world.call("GET", "/v1/me/access-log", world.customer("anna"))
    assert log["entries"] == []


async def test_without_a_customer_token_401(world: World) -> None:
    resp = await world.client.get(
        "/v1/me/consumption",
        params={"ean": EAN, "granularity": "P1D", "from": "2026-01-01", "to": "2026-02-01"},
    )
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
