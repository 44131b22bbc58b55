"""A small billing world on a served gateway (dev mode): a data client subscribed to webhooks,
two of alice's meters (one with a paper consent two hours old and an hour of telegrams, one
without consent), a device, and alice's customer token; plus the client's readings requests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.cli.token import mint_dev_token
from gateway.settings import Settings
from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

Client = TestClient[web.Request, web.Application]
PURPOSE = "dynamic-tariff-billing"
NOW = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
#: telegrams every two minutes over the last hour: four quarter-hours or so of readings
TIMES = [NOW - dt.timedelta(minutes=62) + n * dt.timedelta(minutes=2) for n in range(30)]


@dataclass
class World:
    client_id: str
    client_token: str
    alice: dict[str, str]
    readings_ean: str
    consent_ean: str


async def build(http: Client, settings: Settings, admin: dict[str, str], hook: str) -> World:
    resp = await http.post(
        "/v1/admin/clients",
        json={
            "name": "billing",
            "granularities": ["PT15M"],
            "purposes": [PURPOSE],
            "webhook_url": hook,
        },
        headers=admin,
    )
    assert resp.status == 201, await resp.text()
    added = await resp.json()
    client_id, client_token = added["client_id"], added["token"]
    readings_ean, consent_ean = make_ean(71), make_ean(72)
    for ean, meter in ((readings_ean, "E71"), (consent_ean, "E72")):
        resp = await http.post(
            "/v1/admin/meters",
            json={
                "ean": ean,
                "commodity": "electricity",
                "meter_id": meter,
                "customer_id": "alice",
                "contract_start": (NOW - dt.timedelta(days=30)).isoformat(),
            },
            headers=admin,
        )
        assert resp.status == 201, await resp.text()
    # a consent given on paper two hours ago covers the readings of the last hour
    resp = await http.post(
        "/v1/admin/consents",
        json={
            "ean": readings_ean,
            "customer_id": "alice",
            "purpose": PURPOSE,
            "notice_version": "v1",
            "granted_at": (NOW - dt.timedelta(hours=2)).isoformat(),
        },
        headers=admin,
    )
    assert resp.status == 201, await resp.text()
    resp = await http.post("/v1/admin/devices", json={"meter_ids": ["E71"]}, headers=admin)
    assert resp.status == 201, await resp.text()
    device = {"Authorization": f"Bearer {(await resp.json())['token']}"}
    body = b"".join(
        build_telegram("E71", t, import_wh=(1_000_000 + n, 2_000_000)) for n, t in enumerate(TIMES)
    )
    resp = await http.post(
        "/v1/telegrams", data=body, headers={**device, "Content-Type": "text/plain"}
    )
    assert resp.status == 200, await resp.text()
    token = mint_dev_token(settings.data_dir, "alice", "meterpoort", dt.timedelta(minutes=30))
    alice = {"Authorization": f"Bearer {token}"}
    return World(client_id, client_token, alice, readings_ean, consent_ean)


async def page(http: Client, w: World, **params: str) -> Any:
    query = {
        "granularity": "PT15M",
        "from": (NOW - dt.timedelta(hours=2)).isoformat(),
        "to": NOW.isoformat(),
        "limit": "1",
        **params,
    }
    return await http.get(
        "/v1/readings",
        params=query,
        headers={"Authorization": f"Bearer {w.client_token}", "Accept": "application/json"},
    )


async def sync(http: Client, w: World, since: str) -> Any:
    return await http.get(
        "/v1/readings",
        params={"granularity": "PT15M", "changed_since": since},
        headers={"Authorization": f"Bearer {w.client_token}", "Accept": "application/x-ndjson"},
    )
