"""The customer API (SPEC §5 ``/v1/me/...``) over real HTTP on a real PostgreSQL, with customer
JWTs minted by the dev-token path (``gateway.cli.token.mint_dev_token``, trusted in dev mode).

Readings arrive the real way where it matters (device → ``POST /v1/telegrams`` → ingest), so
"revocation is effective before the answer" and "level none stores nothing" are checked against
the actual ingest path, not a stand-in.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from consent.receipts import b64url_decode, canonical_json
from consent.retention import add_years
from gateway.api.app import create_app
from gateway.api.handlers import customer as me
from gateway.api.openapi import customer as customer_doc
from gateway.api.openapi.spec import paths_of
from gateway.cli.token import mint_dev_token
from gateway.settings import Settings
from gateway.storage import audit
from tests.support import insert_consent, make_ean
from tests.support.telegram_builder import build_telegram

Client = TestClient[web.Request, web.Application]
UTC = dt.UTC


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

    async def meter(
        self,
        n: int,
        customer_id: str,
        commodity: str = "electricity",
        contract_start: dt.datetime | None = None,
    ) -> str:
        ean = make_ean(n)
        start = contract_start or dt.datetime.now(UTC) - dt.timedelta(days=30)
        resp = await self.client.post(
            "/v1/admin/meters",
            json={
                "ean": ean,
                "commodity": commodity,
                "meter_id": f"M{n}",
                "customer_id": customer_id,
                "contract_start": start.isoformat(),
            },
            headers=self.admin,
        )
        assert resp.status == 201, await resp.text()
        return ean

    async def device(self, meter_id: str) -> dict[str, str]:
        resp = await self.client.post(
            "/v1/admin/devices", json={"meter_ids": [meter_id]}, headers=self.admin
        )
        assert resp.status == 201, await resp.text()
        token = (await resp.json())["token"]
        return {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}

    async def push(self, headers: dict[str, str], meter_id: str, *times: dt.datetime) -> None:
        body = b"".join(
            build_telegram(meter_id, t, import_wh=(1_000 + i, 2_000 + i))
            for i, t in enumerate(times)
        )
        resp = await self.client.post("/v1/telegrams", data=body, headers=headers)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["rejected"] == []


@pytest.fixture
async def world(gateway_settings: Settings, admin_headers: dict[str, str]) -> AsyncIterator[World]:
    settings = gateway_settings.model_copy(update={"dev_mode": True})
    # the dev key exists before the app's authenticator looks for it
    mint_dev_token(settings.data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
    client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield World(client, settings, admin_headers)
    finally:
        await client.close()


async def grant(
    w: World, who: dict[str, str], ean: str, purpose: str = "dynamic-tariff-billing", **extra: Any
) -> dict[str, Any]:
    resp = await w.client.post(
        "/v1/me/consents",
        json={"ean": ean, "purpose": purpose, "notice_version": "v3", **extra},
        headers=who,
    )
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def verify_receipt(w: World, document: dict[str, Any]) -> dict[str, Any]:
    """Check a receipt with nothing but the served JWKS (what the customer's own tool does)."""
    jwks = await (await w.client.get("/v1/keys")).json()
    [jwk] = [k for k in jwks["keys"] if k["kid"] == document["signature"]["kid"]]
    public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    public.verify(
        b64url_decode(document["signature"]["value"]), canonical_json(document["receipt"])
    )
    receipt: dict[str, Any] = document["receipt"]
    return receipt


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def sleep_past(t: dt.datetime) -> None:
    """Wait until the clock is past ``t`` by more than a whole second (ingest compares consent
    windows in whole seconds, rounding a grant up: a telegram processed within the grant's own
    second does not count as processed while the consent is in force)."""
    delay = (t + dt.timedelta(seconds=1.1) - dt.datetime.now(UTC)).total_seconds()
    await asyncio.sleep(max(delay, 0.0))


# ---------------------------------------------------------------------------------------------
# connections and consents


async def test_a_configured_lifetime_beyond_three_years_applies_to_both_apis(
    world: World,
) -> None:
    settings = world.settings.model_copy(update={"consent_max_lifetime_days": 2000})
    client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await client.start_server()
    try:
        alice = world.customer("alice")
        ean = await world.meter(1, "alice")
        resp = await client.post(
            "/v1/me/consents",
            json={"ean": ean, "purpose": "dynamic-tariff-billing", "notice_version": "v3"},
            headers=alice,
        )
        assert resp.status == 201, await resp.text()
        consent = (await resp.json())["consent"]
        lifetime = parse_time(consent["expires_at"]) - parse_time(consent["granted_at"])
        assert lifetime == dt.timedelta(days=2000)
        resp = await client.post(
            "/v1/admin/consents",
            json={
                "ean": ean,
                "customer_id": "alice",
                "purpose": "energy-insights",
                "notice_version": "v3",
                "expires_at": (dt.datetime.now(UTC) + dt.timedelta(days=1990)).isoformat(),
            },
            headers=world.admin,
        )
        assert resp.status == 201, await resp.text()
    finally:
        await client.close()


async def test_connections_list_only_own_eans_with_level_contract_and_consents(
    world: World,
) -> None:
    alice = world.customer("alice")
    e1 = await world.meter(1, "alice")
    g1 = await world.meter(2, "alice", "gas")
    await world.meter(3, "bob")
    granted = await grant(world, alice, e1)

    resp = await world.client.get("/v1/me/connections", headers=alice)
    assert resp.status == 200 and resp.content_type == "application/json"
    data = await resp.json()
    assert data["customer_id"] == "alice"
    assert [c["ean"] for c in data["connections"]] == sorted([e1, g1])
    by_ean = {c["ean"]: c for c in data["connections"]}
    assert by_ean[g1] | {"consents": []} == by_ean[g1]
    assert by_ean[g1]["commodity"] == "gas" and by_ean[g1]["level"] == "daily"
    assert by_ean[e1]["contract_end"] is None and by_ean[e1]["contract_start"]
    [consent] = by_ean[e1]["consents"]
    assert consent["consent_id"] == granted["consent"]["consent_id"]
    assert consent["status"] == "active" and consent["on_revoke"] == "keep"
    assert consent["purpose"] == "dynamic-tariff-billing" and consent["notice_version"] == "v3"
    assert {p["name"] for p in data["purposes"]} == {"dynamic-tariff-billing", "energy-insights"}


async def test_grant_returns_a_verifiable_receipt_and_caps_the_lifetime(
    world: World, pool: asyncpg.Pool
) -> None:
    alice = world.customer("alice")
    ean = await world.meter(1, "alice")
    before = dt.datetime.now(UTC)
    data = await grant(world, alice, ean, channel="api")
    consent = data["consent"]
    # no expires_at → the maximum lifetime (3 years by default), never open-ended
    granted = parse_time(consent["granted_at"])
    expires = parse_time(consent["expires_at"])
    assert expires - granted == me.max_consent_lifetime(world.settings)
    assert granted >= before - dt.timedelta(seconds=1)
    assert consent["channel"] == "api" and consent["customer_id"] == "alice"
    receipt = await verify_receipt(world, data["receipt"])
    assert receipt["consent_id"] == consent["consent_id"] and receipt["status"] == "granted"
    assert receipt["piiPrincipalId"] == "alice" and receipt["collectionMethod"] == "api"

    # audited as the customer
    row = await pool.fetchrow(
        "SELECT actor, subject, ean FROM audit_log WHERE kind = $1", audit.KIND_CONSENT_GRANT
    )
    assert dict(row) == {"actor": "customer:alice", "subject": "alice", "ean": ean}

    # beyond the maximum → 422; in the past → 422; unknown purpose → 422
    too_late = dt.datetime.now(UTC) + me.max_consent_lifetime(world.settings) + dt.timedelta(days=2)
    for extra, field in (
        ({"expires_at": too_late.isoformat(), "purpose": "energy-insights"}, "expires_at"),
        ({"expires_at": "2020-01-01T00:00:00Z", "purpose": "energy-insights"}, "expires_at"),
        ({"purpose": "selling-to-advertisers"}, "purpose"),
        ({"purpose": "energy-insights", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
    ):
        resp = await world.client.post(
            "/v1/me/consents",
            json={"ean": ean, "notice_version": "v3", **extra},
            headers=alice,
        )
        assert resp.status == 422, (extra, await resp.text())
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
        assert any(e["loc"][-1] == field for e in problem["errors"]), problem
    # an explicit expiry inside the limit is kept as given
    soon = (dt.datetime.now(UTC) + dt.timedelta(days=30)).replace(microsecond=0)
    data = await grant(world, alice, ean, "energy-insights", expires_at=soon.isoformat())
    assert parse_time(data["consent"]["expires_at"]) == soon
    # a second consent for the same purpose while one is in force: 409
    resp = await world.client.post(
        "/v1/me/consents",
        json={"ean": ean, "purpose": "energy-insights", "notice_version": "v3"},
        headers=alice,
    )
    assert resp.status == 409
    # a malformed EAN is a 422, not a 404
    resp = await world.client.post(
        "/v1/me/consents",
        json={"ean": "123", "purpose": "energy-insights", "notice_version": "v3"},
        headers=alice,
    )
    assert resp.status == 422


async def test_grant_on_a_connection_below_daily_is_refused(world: World) -> None:
    alice = world.customer("alice")
    ean = await world.meter(1, "alice")
    resp = await world.client.put(
        f"/v1/me/connections/{ean}/level", json={"level": "monthly"}, headers=alice
    )
    assert resp.status == 200
    resp = await world.client.post(
        "/v1/me/consents",
        json={"ean": ean, "purpose": "energy-insights", "notice_version": "v3"},
        headers=alice,
    )
    assert resp.status == 409 and "level" in (await resp.json())["detail"]


async def interval_times(pool: asyncpg.Pool) -> list[dt.datetime]:
    rows = await pool.fetch("SELECT measured_at FROM readings_e_pt15m ORDER BY measured_at")
    return [r["measured_at"] for r in rows]


async def test_revoke_is_effective_for_ingest_before_the_answer(
    world: World, pool: asyncpg.Pool
) -> None:
    alice = world.customer("alice")
    ean = await world.meter(11, "alice")
    device = await world.device("M11")
    data = await grant(world, alice, ean)  # purpose keeps its data for the consented period
    granted = parse_time(data["consent"]["granted_at"])
    # a reading measured after the grant, then let the clock pass it
    t1 = granted.replace(microsecond=0) + dt.timedelta(seconds=1)
    await sleep_past(t1)
    await world.push(device, "M11", t1)
    # and one "from the future", stored earlier from a meter whose clock ran ahead (its own
    # 15-minute period, so it does not compete with t1 for one)
    ahead = t1 + dt.timedelta(minutes=20)
    await pool.execute(
        "INSERT INTO readings_e_pt15m (ean, period_start, measured_at, import_t1_wh)"
        " VALUES ($1, $2, $2, 5)",
        int(ean),
        ahead,
    )
    assert await interval_times(pool) == [t1, ahead]

    consent_id = data["consent"]["consent_id"]
    resp = await world.client.post(f"/v1/me/consents/{consent_id}/revoke", headers=alice)
    assert resp.status == 200, await resp.text()
    ended = await resp.json()
    assert ended["consent"]["end_reason"] == "revoked" and ended["consent"]["status"] == "revoked"
    assert ended["consent"]["deleted_readings"] >= 1
    end = parse_time(ended["consent"]["ended_at"])
    receipt = await verify_receipt(world, ended["receipt"])
    assert receipt["status"] == "revoked" and receipt["consent_id"] == consent_id
    # processing before the revocation stays (purpose "keep"); the future reading is gone
    assert await interval_times(pool) == [t1]

    # right after the answer, the ingest path stores no interval reading at or after the end
    later = [end + dt.timedelta(seconds=1), end + dt.timedelta(minutes=4)]
    await world.push(device, "M11", *later)
    assert all(t < end for t in await interval_times(pool))
    # daily/monthly readings need no consent and are still stored
    assert await pool.fetchval("SELECT count(*) FROM readings_e_p1d") >= 1

    # a second revoke is a conflict, not a second end
    resp = await world.client.post(f"/v1/me/consents/{consent_id}/revoke", headers=alice)
    assert resp.status == 409
    # unknown or malformed ids: 404
    for bad in (str(uuid.uuid4()), "not-a-uuid"):
        resp = await world.client.post(f"/v1/me/consents/{bad}/revoke", headers=alice)
        assert resp.status == 404


async def test_revoking_a_delete_purpose_removes_its_interval_data(
    world: World, pool: asyncpg.Pool
) -> None:
    alice = world.customer("alice")
    ean = await world.meter(12, "alice")
    device = await world.device("M12")
    data = await grant(world, alice, ean, "energy-insights")
    await sleep_past(parse_time(data["consent"]["granted_at"]))
    ahead = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(minutes=2)
    await world.push(device, "M12", ahead)
    assert await interval_times(pool) == [ahead]
    resp = await world.client.post(
        f"/v1/me/consents/{data['consent']['consent_id']}/revoke", headers=alice
    )
    assert resp.status == 200
    assert (await resp.json())["consent"]["deleted_readings"] == 1
    assert await interval_times(pool) == []


# ---------------------------------------------------------------------------------------------
# level


async def test_level_change_records_event_audits_and_stops_storing(
    world: World, pool: asyncpg.Pool
) -> None:
    alice = world.customer("alice")
    ean = await world.meter(21, "alice")
    device = await world.device("M21")
    now = dt.datetime.now(UTC).replace(microsecond=0)
    past = now - dt.timedelta(days=2)
    ahead = now + dt.timedelta(minutes=3)
    await world.push(device, "M21", past, ahead)
    daily = "SELECT measured_at FROM readings_e_p1d ORDER BY 1"
    assert [r[0] for r in await pool.fetch(daily)] == [past, ahead]

    resp = await world.client.put(
        f"/v1/me/connections/{ean}/level", json={"level": "monthly"}, headers=alice
    )
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result["changed"] is True
    assert (result["level"], result["previous_level"]) == ("monthly", "daily")
    # the reading measured after the objection ("meter clock ahead") is deleted; earlier kept
    assert result["deleted_readings"]["readings_e_p1d"] == 1
    assert [r[0] for r in await pool.fetch(daily)] == [past]

    assert await pool.fetchval("SELECT level FROM contracts WHERE ean = $1", ean) == "monthly"
    events = await pool.fetch("SELECT level, channel FROM level_events WHERE ean = $1", ean)
    assert [(e["level"], e["channel"]) for e in events] == [("monthly", "portal")]
    row = await pool.fetchrow(
        "SELECT actor, subject, ean, detail FROM audit_log WHERE kind = $1",
        audit.KIND_LEVEL_CHANGE,
    )
    assert (row["actor"], row["subject"], row["ean"]) == ("customer:alice", "alice", ean)
    assert row["detail"]["from"] == "daily" and row["detail"]["to"] == "monthly"

    # effective at once in this process: a new day's reading is not stored as P1D any more
    await world.push(device, "M21", now - dt.timedelta(days=1))
    assert [r[0] for r in await pool.fetch(daily)] == [past]
    assert await pool.fetchval("SELECT count(*) FROM readings_e_p1m") >= 1

    # none: nothing at all is stored from now on
    resp = await world.client.put(
        f"/v1/me/connections/{ean}/level", json={"level": "none"}, headers=alice
    )
    assert resp.status == 200
    monthly_before = await pool.fetchval("SELECT count(*) FROM readings_e_p1m")
    next_month = now + dt.timedelta(minutes=4)
    await world.push(device, "M21", next_month)
    assert await pool.fetchval("SELECT count(*) FROM readings_e_p1m") == monthly_before

    # the same level again: no event, no audit row
    resp = await world.client.put(
        f"/v1/me/connections/{ean}/level", json={"level": "none"}, headers=alice
    )
    assert resp.status == 200 and (await resp.json())["changed"] is False
    assert await pool.fetchval("SELECT count(*) FROM level_events WHERE ean = $1", ean) == 2

    # invalid level → 422; back to daily works
    resp = await world.client.put(
        f"/v1/me/connections/{ean}/level", json={"level": "interval"}, headers=alice
    )
    assert resp.status == 422
    resp = await world.client.put(
        f"/v1/me/connections/{ean}/level", json={"level": "daily"}, headers=alice
    )
    assert resp.status == 200 and (await resp.json())["level"] == "daily"


# ---------------------------------------------------------------------------------------------
# logs


async def test_permission_log_lists_grants_revocations_expiries_and_levels(
    world: World, pool: asyncpg.Pool
) -> None:
    alice = world.customer("alice")
    bob = world.customer("bob")
    ean = await world.meter(31, "alice")
    await world.meter(32, "bob")
    first = await grant(world, alice, ean, "energy-insights")
    resp = await world.client.post(
        f"/v1/me/consents/{first['consent']['consent_id']}/revoke", headers=alice
    )
    assert resp.status == 200
    second = await grant(world, alice, ean)
    # an expired consent, granted 10 days ago (written with SQL: the store refuses an
    # expires_at that has passed already)
    async with pool.acquire() as conn:
        old = {
            "consent_id": await insert_consent(
                conn,
                ean=ean,
                customer_id="alice",
                purpose="energy-insights",
                granted_at=dt.datetime.now(UTC) - dt.timedelta(days=10),
                expires_at=dt.datetime.now(UTC) - dt.timedelta(days=5),
            )
        }
    resp = await world.client.put(
        f"/v1/me/connections/{ean}/level", json={"level": "monthly"}, headers=alice
    )
    assert resp.status == 200

    resp = await world.client.get("/v1/me/permission-log", headers=alice)
    assert resp.status == 200
    entries = (await resp.json())["entries"]
    times = [parse_time(e["at"]) for e in entries]
    assert times == sorted(times, reverse=True)
    events = [(e["event"], e.get("consent_id")) for e in entries]
    first_id = first["consent"]["consent_id"]
    second_id = second["consent"]["consent_id"]
    old_id = str(old["consent_id"])
    assert ("granted", first_id) in events and ("revoked", first_id) in events
    assert ("granted", second_id) in events
    assert ("granted", old_id) in events and ("expired", old_id) in events
    assert events[0] == ("level-changed", None)
    revoked = next(e for e in entries if e["event"] == "revoked")
    assert revoked["purpose"] == "energy-insights" and revoked["notice_version"] == "v3"

    # bob sees none of it; limit pages
    resp = await world.client.get("/v1/me/permission-log", headers=bob)
    assert (await resp.json())["entries"] == []
    resp = await world.client.get("/v1/me/permission-log?limit=2", headers=alice)
    assert len((await resp.json())["entries"]) == 2
    resp = await world.client.get("/v1/me/permission-log?limit=0", headers=alice)
    assert resp.status == 422


async def test_access_log_shows_client_reads_of_own_eans_only(
    world: World, pool: asyncpg.Pool
) -> None:
    alice = world.customer("alice")
    e_alice = await world.meter(41, "alice")
    e_bob = await world.meter(42, "bob")
    e_other = await world.meter(43, "carol")
    client_id = str(uuid.uuid4())
    # the contracts began 30 days ago: a read of the days before is of another tenant's time
    month = (dt.datetime.now(UTC) - dt.timedelta(days=20)).date()
    frm, to = f"{month}T00:00:00Z", f"{month + dt.timedelta(days=10)}T00:00:00Z"
    # what the billing read API appends: ONE row per client request, EANs of many customers
    async with pool.acquire() as conn:
        for eans, granularity, start, end in (
            ([e_alice, e_bob], "P1D", frm, to),
            ([e_other], "P1D", frm, to),
            # before alice's contract: another tenant's time, not hers to see
            ([e_alice], "P1M", "2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z"),
            ([e_bob, e_alice], "PT15M", frm, to),
        ):
            await audit.append(
                conn,
                kind=audit.KIND_READ,
                actor=f"client:{client_id}",
                subject=None,
                ean=None,
                detail={
                    "client_id": client_id,
                    "client_name": "Billing BV",
                    "granularity": granularity,
                    "from": start,
                    "to": end,
                    "eans": eans,
                },
            )
    resp = await world.client.get("/v1/me/access-log", headers=alice)
    assert resp.status == 200
    data = await resp.json()
    reads = [e for e in data["entries"] if e["kind"] == "read"]
    assert [r["granularity"] for r in reads] == ["PT15M", "P1D"]  # newest first
    for r in reads:
        assert r["eans"] == [e_alice]  # bob's EAN in the same request is not shown
        assert r["client_name"] == "Billing BV" and r["client_id"] == client_id
        assert r["from"] == frm and r["to"] == to
        assert parse_time(r["at"])
    assert e_bob not in json.dumps(data) and e_other not in json.dumps(data)

    # the customer's own export shows up too
    resp = await world.client.get("/v1/me/export", headers=alice)
    assert resp.status == 200
    await resp.read()
    resp = await world.client.get("/v1/me/access-log?limit=1", headers=alice)
    page = await resp.json()
    assert [e["kind"] for e in page["entries"]] == ["export"]
    assert page["entries"][0]["actor"] == "customer:alice"
    resp = await world.client.get(
        f"/v1/me/access-log?limit=1&before_seq={page['next_before_seq']}", headers=alice
    )
    assert [e["granularity"] for e in (await resp.json())["entries"]] == ["PT15M"]


# ---------------------------------------------------------------------------------------------
# export


async def test_export_streams_everything_and_is_audited(world: World, pool: asyncpg.Pool) -> None:
    alice = world.customer("alice")
    ean = await world.meter(51, "alice")
    gas = await world.meter(52, "alice", "gas")
    e_bob = await world.meter(53, "bob")
    device = await world.device("M51")
    data = await grant(world, alice, ean, "energy-insights")
    await sleep_past(parse_time(data["consent"]["granted_at"]))
    now = dt.datetime.now(UTC).replace(microsecond=0)
    days = [now - dt.timedelta(days=d) for d in (3, 2, 1)]
    await world.push(device, "M51", *days, now + dt.timedelta(minutes=2))
    # many stored readings straight into the tables (more than one cursor batch)
    bob_num = int(e_bob)
    gas_num = int(gas)
    start = now - dt.timedelta(days=20)
    await pool.executemany(
        "INSERT INTO readings_g_pt1h (ean, period_start, measured_at, volume_dm3)"
        " VALUES ($1, $2, $3, $4)",
        [
            (gas_num, start + dt.timedelta(hours=h), start + dt.timedelta(hours=h, seconds=5), h)
            for h in range(2500)
        ],
    )
    await pool.execute(
        "INSERT INTO readings_e_p1d (ean, period_start, measured_at, import_t1_wh)"
        " VALUES ($1, $2, $3, 7)",
        bob_num,
        now - dt.timedelta(days=1),
        now - dt.timedelta(days=1),
    )

    resp = await world.client.get("/v1/me/export", headers=alice)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    assert "attachment" in resp.headers["Content-Disposition"]
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    doc = await resp.json()
    assert doc["customer_id"] == "alice"
    assert {c["ean"] for c in doc["connections"]} == {ean, gas}
    [consent] = doc["consents"]
    assert consent["consent_id"] == data["consent"]["consent_id"]
    assert (await verify_receipt(world, consent["receipt"]))["status"] == "granted"
    assert any(e["event"] == "granted" for e in doc["permission_log"])
    assert any(e["kind"] == "export" for e in doc["access_log"])  # audited before streaming
    readings = doc["readings"]
    assert set(readings) == {
        "readings_e_p1m",
        "readings_e_p1d",
        "readings_e_pt15m",
        "readings_g_p1m",
        "readings_g_p1d",
        "readings_g_pt1h",
    }
    assert len(readings["readings_g_pt1h"]) == 2500
    assert [r["registers"]["volume_dm3"] for r in readings["readings_g_pt1h"][:3]] == [0, 1, 2]
    assert readings["readings_g_pt1h"][0]["granularity"] == "PT1H"
    e_daily = readings["readings_e_p1d"]
    assert {r["ean"] for r in e_daily} == {ean}  # bob's reading is not in alice's export
    assert [parse_time(r["measured_at"]) for r in e_daily] == [
        *days,
        now + dt.timedelta(minutes=2),
    ]
    assert e_daily[0]["registers"]["import_t1_wh"] == 1_000
    assert len(readings["readings_e_pt15m"]) == 1

    row = await pool.fetchrow(
        "SELECT actor, subject, detail FROM audit_log WHERE kind = $1", audit.KIND_EXPORT
    )
    assert (row["actor"], row["subject"]) == ("customer:alice", "alice")
    assert row["detail"]["format"] == "json" and sorted(row["detail"]["eans"]) == sorted([ean, gas])

    # CSV of one table
    resp = await world.client.get("/v1/me/export?format=csv&table=readings_g_pt1h", headers=alice)
    assert resp.status == 200 and resp.content_type == "text/csv"
    rows = list(csv.reader(io.StringIO(await resp.text())))
    assert rows[0] == [
        "ean",
        "contract_id",
        "customer_id",
        "commodity",
        "granularity",
        "period_start",
        "measured_at",
        "volume_dm3",
    ]
    contract_id = await pool.fetchval("SELECT contract_id FROM contracts WHERE ean = $1", gas)
    assert len(rows) == 2501 and rows[1][:3] == [gas, str(contract_id), "alice"]
    assert rows[1][7] == "0"
    assert (
        await pool.fetchval("SELECT count(*) FROM audit_log WHERE kind = $1", audit.KIND_EXPORT)
        == 2
    )

    # CSV without a table, an unknown table, an unknown parameter: 422
    for query in ("format=csv", "format=csv&table=consents", "format=xml", "x=1"):
        resp = await world.client.get(f"/v1/me/export?{query}", headers=alice)
        assert resp.status == 422, query


# ---------------------------------------------------------------------------------------------
# erasure


async def test_erasure_deletes_interval_data_ends_consents_and_explains_what_is_kept(
    world: World, pool: asyncpg.Pool
) -> None:
    alice = world.customer("alice")
    ean = await world.meter(61, "alice")
    e_bob = await world.meter(62, "bob")
    device = await world.device("M61")
    await grant(world, alice, ean)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    await world.push(device, "M61", now - dt.timedelta(days=1), now + dt.timedelta(minutes=2))
    num = int(ean)
    await pool.execute(
        "INSERT INTO readings_e_pt15m (ean, period_start, measured_at, import_t1_wh)"
        " VALUES ($1, $2, $2, 1), ($3, $2, $2, 1)",
        num,
        now - dt.timedelta(hours=5),
        int(e_bob),
    )
    interval_before = await pool.fetchval(
        "SELECT count(*) FROM readings_e_pt15m WHERE ean = $1", num
    )
    assert interval_before >= 1
    daily_before = await pool.fetchval("SELECT count(*) FROM readings_e_p1d WHERE ean = $1", num)
    assert daily_before >= 1

    resp = await world.client.post("/v1/me/erasure", headers=alice)
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result["erased"]["consents_ended"] == 1
    # consent end (purpose keep) deletes what is after the end, the erasure the rest
    assert result["erased"]["readings_e_pt15m"] >= 1
    assert await pool.fetchval("SELECT count(*) FROM readings_e_pt15m WHERE ean = $1", num) == 0
    # bob's interval reading is untouched
    assert (
        await pool.fetchval("SELECT count(*) FROM readings_e_pt15m WHERE ean = $1", int(e_bob)) == 1
    )
    # daily readings are kept (contract running: fiscal hold, no end date yet)
    assert (
        await pool.fetchval("SELECT count(*) FROM readings_e_p1d WHERE ean = $1", num)
        == daily_before
    )
    assert result["erased"]["readings_e_p1d"] == 0
    kept = result["kept"]
    whats = " | ".join(k["what"] for k in kept)
    assert "daily and monthly readings" in whats and "consent record" in whats
    assert "activity log" in whats
    for k in kept:
        assert k["why"] and "until" in k and k["until_rule"]
    billing = next(k for k in kept if "daily and monthly" in k["what"])
    assert billing["until"] is None and "7 years" in billing["until_rule"]
    consent_keep = next(k for k in kept if "consent record" in k["what"])
    ended_at = await pool.fetchval("SELECT ended_at FROM consents WHERE ean = $1", ean)
    # what gateway.jobs.retention does: 4 years (interval data) + 1 year after the consent's end
    assert parse_time(consent_keep["until"]) == add_years(ended_at, 5)
    audit_keep = next(k for k in kept if "activity log" in k["what"])
    assert audit_keep["until"] is None and "hash chain" in audit_keep["why"]

    # the consent is ended with reason 'erasure'; its record is kept
    row = await pool.fetchrow("SELECT end_reason FROM consents WHERE ean = $1", ean)
    assert row["end_reason"] == "erasure"
    audit_row = await pool.fetchrow(
        "SELECT actor, subject, detail FROM audit_log WHERE kind = $1", audit.KIND_ERASURE
    )
    assert (audit_row["actor"], audit_row["subject"]) == ("customer:alice", "alice")
    assert audit_row["detail"]["erased"]["consents_ended"] == 1

    # effective at once: a new interval reading is not stored
    await world.push(device, "M61", now + dt.timedelta(minutes=3))
    assert await pool.fetchval("SELECT count(*) FROM readings_e_pt15m WHERE ean = $1", num) == 0
    # a second erasure finds nothing more to erase
    resp = await world.client.post("/v1/me/erasure", headers=alice)
    again = await resp.json()
    assert again["erased"]["consents_ended"] == 0 and again["erased"]["readings_e_pt15m"] == 0


async def test_erasure_after_the_fiscal_hold_deletes_daily_readings(
    world: World, pool: asyncpg.Pool
) -> None:
    alice = world.customer("alice")
    start = dt.datetime(2010, 1, 1, tzinfo=UTC)
    ean = await world.meter(71, "alice", contract_start=start)
    recent = await world.meter(72, "alice", "gas", contract_start=start)
    # contract of the first ended 8 years ago (past the 7-year hold), the second 2 years ago
    now = dt.datetime.now(UTC)
    ends = {ean: now - dt.timedelta(days=8 * 366), recent: now - dt.timedelta(days=2 * 365)}
    for e, end in ends.items():
        resp = await world.client.patch(
            f"/v1/admin/meters/{e}",
            json={"contract_end": end.isoformat(), "end_reason": "contract-ended"},
            headers=world.admin,
        )
        assert resp.status == 200, await resp.text()
    day = dt.datetime(2012, 3, 1, tzinfo=UTC)
    await pool.execute(
        "INSERT INTO readings_e_p1d (ean, period_start, measured_at, import_t1_wh)"
        " VALUES ($1, $2, $2, 1)",
        int(ean),
        day,
    )
    await pool.execute(
        "INSERT INTO readings_g_p1d (ean, period_start, measured_at, volume_dm3)"
        " VALUES ($1, $2, $2, 1)",
        int(recent),
        day,
    )
    resp = await world.client.post("/v1/me/erasure", headers=alice)
    assert resp.status == 200
    result = await resp.json()
    assert result["erased"]["readings_e_p1d"] == 1 and result["erased"]["readings_g_p1d"] == 0
    [billing] = [k for k in result["kept"] if "daily and monthly" in k["what"]]
    assert recent in billing["what"]
    assert parse_time(billing["until"]) == add_years(ends[recent], 7)
    assert await pool.fetchval("SELECT count(*) FROM readings_g_p1d") == 1


async def test_openapi_lists_the_customer_routes(world: World) -> None:
    app = world.client.app
    assert app is not None
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if not path.startswith("/v1/me") or route.method == "HEAD":
            continue
        paths = paths_of(customer_doc.OPERATIONS)
        assert path in paths, path
        assert paths[path][route.method.lower()].security == "customerToken"
