"""A served gateway with one of everything, for the fuzz tests: a customer's electricity and gas
meters, a consent, a device bound to both meters, a data client, and a credential of each kind."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.cli.token import mint_dev_token
from gateway.settings import Settings
from tests.support import make_ean

Client = TestClient[web.Request, web.Application]
METER_ID = "E0000000000000001"
GAS_ID = "G0000000000000001"


@dataclass
class World:
    """The served gateway and what is registered in it; ``credentials`` by kind: admin,
    device, client, customer, none."""

    client: Client
    settings: Settings
    ean: str
    consent_id: str
    device_id: str
    client_id: str
    credentials: dict[str, dict[str, str]]

    def ids(self) -> dict[str, str]:
        """Path parameters that exist, so a fuzzed body reaches its handler's logic."""
        return {
            "ean": self.ean,
            "consent": self.consent_id,
            "device": self.device_id,
            "client": self.client_id,
        }


async def build_world(http: Client, settings: Settings, admin_headers: dict[str, str]) -> World:
    """Register the world over the admin and customer APIs of the served gateway (dev mode)."""
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).isoformat()
    ean = make_ean(1)
    for n, (commodity, meter_id) in enumerate((("electricity", METER_ID), ("gas", GAS_ID))):
        resp = await http.post(
            "/v1/admin/meters",
            json={
                "ean": make_ean(1 + n),
                "commodity": commodity,
                "meter_id": meter_id,
                "customer_id": "alice",
                "contract_start": start,
            },
            headers=admin_headers,
        )
        assert resp.status == 201, await resp.text()
    token = mint_dev_token(settings.data_dir, "alice", "meterpoort", dt.timedelta(hours=1))
    customer = {"Authorization": f"Bearer {token}"}
    resp = await http.post(
        "/v1/me/consents",
        json={"ean": ean, "purpose": "energy-insights", "notice_version": "v1"},
        headers=customer,
    )
    assert resp.status == 201, await resp.text()
    consent_id = (await resp.json())["consent"]["consent_id"]
    resp = await http.post(
        "/v1/admin/devices", json={"meter_ids": [METER_ID, GAS_ID]}, headers=admin_headers
    )
    assert resp.status == 201, await resp.text()
    device = await resp.json()
    resp = await http.post(
        "/v1/admin/clients",
        json={
            "name": "billing",
            "granularities": ["P1D", "PT15M"],
            "purposes": ["dynamic-tariff-billing"],
        },
        headers=admin_headers,
    )
    assert resp.status == 201, await resp.text()
    data_client = await resp.json()
    return World(
        http,
        settings,
        ean,
        consent_id,
        device["device_id"],
        data_client["client_id"],
        {
            "admin": admin_headers,
            "device": {"Authorization": f"Bearer {device['token']}"},
            "client": {"Authorization": f"Bearer {data_client['token']}"},
            "customer": customer,
            "none": {},
        },
    )
