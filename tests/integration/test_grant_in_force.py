"""SPEC §4: a grant and a revocation take effect for ingest in the answering process before
the response returns (issue 14).

A real gateway on a real socket, with LISTEN (and so the catch-up timer) off: nothing but the
change's own handler can bring the process's consent index up to date. Right after a grant's
response (the next request, sent within 10 ms) a telegram measured after the grant has its
interval reading stored; right after a revocation's response one measured after it has its
interval reading withheld by the index itself (not merely refused by the database).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consent.levels import Commodity, Granularity
from gateway.api.app import create_app
from gateway.api.appkeys import INGEST_KEY, LISTEN_KEY
from gateway.cli.token import mint_dev_token
from gateway.settings import Settings
from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

Client = TestClient[web.Request, web.Application]
UTC = dt.UTC
#: the window the issue names: the telegram leaves within this long after the response
WINDOW_S = 0.010


@dataclass
class Gateway:
    client: Client
    settings: Settings
    admin: dict[str, str]


@pytest.fixture
async def gateway(
    gateway_settings: Settings, admin_headers: dict[str, str]
) -> AsyncIterator[Gateway]:
    settings = gateway_settings.model_copy(update={"dev_mode": True})
    mint_dev_token(settings.data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
    app = create_app(settings)
    app[LISTEN_KEY] = False  # no NOTIFY, no catch-up timer: only the answering handler helps
    client: Client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield Gateway(client, settings, admin_headers)
    finally:
        await client.close()


def next_second() -> dt.datetime:
    """A telegram time after everything so far (telegrams carry whole seconds)."""
    return dt.datetime.fromtimestamp(math.ceil(time.time() + 0.001), UTC)


async def interval_times(pool: asyncpg.Pool, ean: str) -> list[dt.datetime]:
    rows = await pool.fetch(
        "SELECT measured_at FROM readings_e_pt15m WHERE ean = $1 ORDER BY measured_at", int(ean)
    )
    return [r["measured_at"] for r in rows]


@pytest.mark.parametrize("n", [1, 2, 3])
async def test_a_telegram_right_after_a_grant_or_revocation_follows_it(
    gateway: Gateway, pool: asyncpg.Pool, n: int
) -> None:
    g = gateway
    ean, meter, customer = make_ean(900 + n), f"G{n}", f"cust-{n}"
    resp = await g.client.post(
        "/v1/admin/meters",
        json={
            "ean": ean,
            "commodity": "electricity",
            "meter_id": meter,
            "customer_id": customer,
            "contract_start": (dt.datetime.now(UTC) - dt.timedelta(days=3)).isoformat(),
        },
        headers=g.admin,
    )
    assert resp.status == 201, await resp.text()
    resp = await g.client.post("/v1/admin/devices", json={"meter_ids": [meter]}, headers=g.admin)
    device = {
        "Authorization": f"Bearer {(await resp.json())['token']}",
        "Content-Type": "text/plain",
    }
    token = mint_dev_token(g.settings.data_dir, customer, "meterpoort", dt.timedelta(minutes=5))
    me = {"Authorization": f"Bearer {token}"}
    state = g.client.app[INGEST_KEY]

    # the index before: no interval consent, so this process would withhold interval readings
    probe = next_second()
    assert Granularity.PT15M not in state.index.granularities(
        meter, Commodity.ELECTRICITY, probe, probe
    )

    # grant, then at once a telegram measured after it
    at = next_second()
    telegram = build_telegram(meter, at, import_wh=(1_000, 2_000))
    resp = await g.client.post(
        "/v1/me/consents",
        json={"ean": ean, "purpose": "dynamic-tariff-billing", "notice_version": "v1"},
        headers=me,
    )
    answered = time.perf_counter()
    assert resp.status == 201, await resp.text()
    consent_id = (await resp.json())["consent"]["consent_id"]
    sent = time.perf_counter()
    pushed = await g.client.post("/v1/telegrams", data=telegram, headers=device)
    assert sent - answered < WINDOW_S
    assert pushed.status == 200, await pushed.text()
    assert await interval_times(pool, ean) == [at]

    # revoke once that telegram's time has passed (a revocation deletes interval readings
    # measured at or after its end), then at once a telegram measured after it
    await asyncio.sleep(max(0.0, at.timestamp() - time.time()) + 0.05)
    later = next_second() + dt.timedelta(seconds=1)
    telegram = build_telegram(meter, later, import_wh=(1_010, 2_010))
    resp = await g.client.post(f"/v1/me/consents/{consent_id}/revoke", headers=me)
    answered = time.perf_counter()
    assert resp.status == 200, await resp.text()
    # the index of the answering process withholds it (the database would refuse it anyway)
    assert Granularity.PT15M not in state.index.granularities(
        meter, Commodity.ELECTRICITY, later, later
    )
    sent = time.perf_counter()
    pushed = await g.client.post("/v1/telegrams", data=telegram, headers=device)
    assert sent - answered < WINDOW_S
    assert pushed.status == 200, await pushed.text()
    assert await interval_times(pool, ean) == [at]  # kept (purpose: keep), nothing after
    # daily and monthly readings need no consent: stored from both telegrams
    assert await pool.fetchval("SELECT count(*) FROM readings_e_p1d WHERE ean = $1", int(ean)) == 1
