"""Registry changes, token creation and consent events land in the audit chain, in the same
transaction as the change, and never carry a secret."""

from __future__ import annotations

import asyncpg
from aiohttp.test_utils import TestClient

from gateway.storage import audit
from tests.support import make_ean, meter_body


async def test_admin_actions_are_audited(
    gateway_client: TestClient, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    ean = make_ean(41)
    resp = await gateway_client.post("/v1/admin/meters", json=meter_body(41), headers=admin_headers)
    assert resp.status == 201, await resp.text()
    resp = await gateway_client.post(
        "/v1/admin/devices", json={"meter_ids": ["E0000000000000041"]}, headers=admin_headers
    )
    assert resp.status == 201, await resp.text()
    token = (await resp.json())["token"]
    resp = await gateway_client.post(
        "/v1/admin/consents",
        json={
            "ean": ean,
            "customer_id": "cust-41",
            "purpose": "dynamic-tariff-billing",
            "notice_version": "v1",
            "granted_at": "2024-02-01T00:00:00Z",
        },
        headers=admin_headers,
    )
    assert resp.status == 201, await resp.text()
    resp = await gateway_client.patch(
        f"/v1/admin/meters/{ean}",
        json={"contract_end": "2024-03-01T00:00:00Z", "end_reason": "move-out"},
        headers=admin_headers,
    )
    assert resp.status == 200, await resp.text()

    rows = await pool.fetch(
        "SELECT kind, actor, subject, ean, detail::text FROM audit_log ORDER BY seq"
    )
    kinds = [(r["kind"], r["ean"]) for r in rows]
    assert kinds == [
        (audit.KIND_REGISTRY_CHANGE, ean),
        (audit.KIND_TOKEN_CREATE, None),
        (audit.KIND_CONSENT_GRANT, ean),
        (audit.KIND_CONSENT_END, ean),
        (audit.KIND_REGISTRY_CHANGE, ean),
    ]
    assert {r["actor"] for r in rows} == {"admin"}
    assert rows[0]["subject"] == "cust-41"
    assert "move-out" in rows[3]["detail"] and "move-out" in rows[4]["detail"]
    assert all(token not in r["detail"] for r in rows)  # the token itself is never recorded
    async with pool.acquire() as conn:
        result = await audit.verify(conn)
    assert result.ok and result.rows == 5


async def test_a_refused_change_leaves_no_audit_row(
    gateway_client: TestClient, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    body = meter_body(42)
    assert (
        await gateway_client.post("/v1/admin/meters", json=body, headers=admin_headers)
    ).status == 201
    again = await gateway_client.post("/v1/admin/meters", json=body, headers=admin_headers)
    assert again.status == 409
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 1
