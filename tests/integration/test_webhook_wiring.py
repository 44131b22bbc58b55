"""Every consent grant, end and level change is announced through the outbox (the wiring of
gateway.storage.outbox into the consents, registry and customers services), delivered in order
per EAN to a real HTTP receiver."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consent.model import EndReason
from gateway.jobs.webhooks import WebhookWorker
from gateway.keys import KeyRing
from gateway.services import consents as consent_store
from gateway.services import levels, registry
from gateway.services.registry import ConnectionIn
from gateway.settings import WebhookSettings
from gateway.tokens import generate_token, hash_token
from tests.support import make_ean

BILLING = "dynamic-tariff-billing"
INSIGHTS = "energy-insights"
FAST = WebhookSettings(timeout_s=2.0, backoff_base_s=0.05, backoff_cap_s=0.2)


@pytest.fixture
async def inbox() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    events: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        events.append(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", events
    finally:
        await runner.cleanup()


async def test_grants_ends_and_level_changes_are_announced_in_order(
    pool: asyncpg.Pool, inbox: tuple[str, list[dict[str, Any]]]
) -> None:
    url, events = inbox
    await pool.execute(
        "INSERT INTO clients (name, token_hash, granularities, purposes, webhook_url)"
        " VALUES ('billing', $1, '{PT15M}', $2, $3)",
        hash_token(generate_token()),
        [BILLING],
        url,
    )
    ean = make_ean(1)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    async with pool.acquire() as conn:
        await registry.add_connection(
            conn,
            ConnectionIn(
                ean=ean,
                commodity="electricity",
                meter_id="E0001",
                customer_id="cust-1",
                contract_start=start,
            ),
        )
        first = await consent_store.create_consent(
            conn, ean=ean, customer_id="cust-1", purpose=BILLING, notice_version="v1"
        )
        # a purpose the client does not serve: not sent to it
        await consent_store.create_consent(
            conn, ean=ean, customer_id="cust-1", purpose=INSIGHTS, notice_version="v1"
        )
        await consent_store.end_consent(conn, first["consent_id"], EndReason.REVOKED)
        second = await consent_store.create_consent(
            conn, ean=ean, customer_id="cust-1", purpose=BILLING, notice_version="v2"
        )
        async with conn.transaction():
            k = await conn.fetchrow(
                "SELECT k.*, n.commodity FROM contracts k JOIN connections n USING (ean)"
                " WHERE k.ean = $1 FOR UPDATE OF k",
                ean,
            )
            await levels.change_level(
                conn, k, "monthly", actor="customer:cust-1", channel="portal"
            )
        moved = dt.datetime.now(dt.UTC)
        await registry.end_current_contract(conn, ean, moved, "move-out")

    async with aiohttp.ClientSession() as http:
        worker = WebhookWorker(pool, KeyRing(Ed25519PrivateKey.generate()), FAST, http)
        while await worker.run_once():
            pass
    got = [(e["kind"], e["data"].get("consent_id"), e["data"].get("end_reason")) for e in events]
    assert got == [
        ("consent.granted", str(first["consent_id"]), None),
        ("consent.ended", str(first["consent_id"]), "revoked"),
        ("consent.granted", str(second["consent_id"]), None),
        ("level.changed", None, None),
        ("consent.ended", str(second["consent_id"]), "move-out"),
    ]
    assert events[3]["data"] == {"level": "monthly", "previous_level": "daily"}
    assert {e["ean"] for e in events} == {ean}
    assert len({e["event_id"] for e in events}) == 5
    # the insights consent was announced too (to nobody here), and ended by the move-out
    kinds = await pool.fetch(
        "SELECT kind, payload->>'purpose' AS p FROM outbox_events ORDER BY seq"
    )
    assert [(r["kind"], r["p"]) for r in kinds].count(("consent.ended", INSIGHTS)) == 1
