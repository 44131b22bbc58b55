"""Admin API over real HTTP against a real PostgreSQL: auth, validation, conflicts, contract end,
devices, and problem+json for routing/body errors."""

from __future__ import annotations

import datetime as dt
import io
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.storage.credentials import Credentials
from gateway.tokens import hash_token
from tests.support import make_ean, meter_body

Client = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"


async def problem(resp: Any, status: int, slug: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    data: dict[str, Any] = await resp.json(content_type=PROBLEM)
    assert data["type"] == f"https://meterpoort.nl/problems/{slug}"
    assert data["status"] == status
    assert data["title"] and data["detail"]
    return data


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic dGVzdDp0ZXN0"},
        {"Authorization": "Bearer "},
    ],
)
async def test_admin_endpoints_need_the_admin_token(
    gateway_client: Client, headers: dict[str, str]
) -> None:
    for method, path, body in [
        ("POST", "/v1/admin/meters", meter_body(1)),
        (
            "PATCH",
            f"/v1/admin/meters/{make_ean(1)}",
            {"contract_end": "2025-01-01T00:00:00Z", "end_reason": "move-out"},
        ),
        ("POST", "/v1/admin/devices", {"meter_ids": ["E1"]}),
    ]:
        resp = await gateway_client.request(method, path, json=body, headers=headers)
        await problem(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_admin_api_disabled_without_configured_token(
    gateway_settings: Any, admin_headers: dict[str, str]
) -> None:
    from aiohttp.test_utils import TestServer

    from gateway.api.app import create_app

    app = create_app(gateway_settings.model_copy(update={"admin_token": None}))
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/v1/admin/meters", json=meter_body(1), headers=admin_headers)
        data = await problem(resp, 401, "unauthorized")
        assert "METERPOORT_ADMIN_TOKEN" in data["detail"]


# --- meters -----------------------------------------------------------------------------------


async def test_register_and_show_a_connection(
    gateway_client: Client, admin_headers: dict[str, str]
) -> None:
    resp = await gateway_client.post("/v1/admin/meters", json=meter_body(7), headers=admin_headers)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["ean"] == make_ean(7)
    assert created["commodity"] == "electricity"
    assert created["contract_start"] == "2023-12-31T23:00:00Z"
    assert created["contract_end"] is None and created["end_reason"] is None
    assert created["level"] == "daily"

    resp = await gateway_client.get(f"/v1/admin/meters/{make_ean(7)}", headers=admin_headers)
    assert resp.status == 200
    assert await resp.json() == created

    resp = await gateway_client.get(f"/v1/admin/meters/{make_ean(8)}", headers=admin_headers)
    await problem(resp, 404, "not-found")


async def test_duplicate_ean_is_a_conflict(
    gateway_client: Client, admin_headers: dict[str, str]
) -> None:
    first = await gateway_client.post("/v1/admin/meters", json=meter_body(1), headers=admin_headers)
    assert first.status == 201
    again = await gateway_client.post(
        "/v1/admin/meters", json=meter_body(1, meter_id="OTHER"), headers=admin_headers
    )
    data = await problem(again, 409, "conflict")
    assert make_ean(1) in data["detail"]


async def test_meter_on_two_active_connections_is_a_conflict(
    gateway_client: Client, admin_headers: dict[str, str]
) -> None:
    resp = await gateway_client.post("/v1/admin/meters", json=meter_body(1), headers=admin_headers)
    assert resp.status == 201
    clash = meter_body(2, meter_id=meter_body(1)["meter_id"])
    await problem(
        await gateway_client.post("/v1/admin/meters", json=clash, headers=admin_headers),
        409,
        "conflict",
    )
    # the same meter id for gas is another meter
    gas = meter_body(2, meter_id=meter_body(1)["meter_id"], commodity="gas")
    ok = await gateway_client.post("/v1/admin/meters", json=gas, headers=admin_headers)
    assert ok.status == 201
    # a move-out leaves the meter on its EAN (the next tenant reads it)...
    end = {"contract_end": "2024-06-01T00:00:00+02:00", "end_reason": "move-out"}
    resp = await gateway_client.patch(
        f"/v1/admin/meters/{make_ean(1)}", json=end, headers=admin_headers
    )
    assert resp.status == 200
    later = meter_body(3, meter_id=meter_body(1)["meter_id"], contract_start="2024-06-01T00:00:00Z")
    data = await problem(
        await gateway_client.post("/v1/admin/meters", json=later, headers=admin_headers),
        409,
        "conflict",
    )
    assert make_ean(1) in data["detail"]
    # ...until it is exchanged there; then it may go elsewhere from the exchange on
    swap = {"meter_id": "REPLACEMENT-1", "at": "2024-06-01"}
    resp = await gateway_client.post(
        f"/v1/admin/connections/{make_ean(1)}/meter-exchange", json=swap, headers=admin_headers
    )
    assert resp.status == 200, await resp.text()
    early = meter_body(3, meter_id=meter_body(1)["meter_id"], contract_start="2024-05-01T00:00:00Z")
    await problem(
        await gateway_client.post("/v1/admin/meters", json=early, headers=admin_headers),
        409,
        "conflict",
    )
    assert (
        await gateway_client.post("/v1/admin/meters", json=later, headers=admin_headers)
    ).status == 201


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (meter_body(1, ean="871687140000000003"), [["body", "ean"]]),
        (meter_body(1, ean="123"), [["body", "ean"]]),
        (meter_body(1, commodity="water"), [["body", "commodity"]]),
        (meter_body(1, contract_start="2024-01-01T00:00:00"), [["body", "contract_start"]]),
        (meter_body(1, contract_end="2023-01-01T00:00:00Z"), [["body"]]),
        (meter_body(1, meter_id=""), [["body", "meter_id"]]),
        (meter_body(1, surprise=1), [["body", "surprise"]]),
        (
            {"ean": make_ean(1)},
            [["body", f] for f in ("commodity", "meter_id", "customer_id", "contract_start")],
        ),
        ([1, 2], [["body"]]),
    ],
)
async def test_invalid_meter_bodies_list_the_fields(
    gateway_client: Client, admin_headers: dict[str, str], body: Any, fields: list[list[str]]
) -> None:
    resp = await gateway_client.post("/v1/admin/meters", json=body, headers=admin_headers)
    data = await problem(resp, 422, "validation-error")
    assert sorted(e["loc"] for e in data["errors"]) == sorted(fields)
    assert all(e["msg"] for e in data["errors"])


async def test_garbage_json_and_wrong_media_type(
    gateway_client: Client, admin_headers: dict[str, str]
) -> None:
    resp = await gateway_client.post(
        "/v1/admin/meters",
        data=b'{"ean": "87',
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    await problem(resp, 400, "bad-request")
    resp = await gateway_client.post(
        "/v1/admin/meters",
        data=b"\xff\xfe\x00garbage",
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    await problem(resp, 400, "bad-request")
    resp = await gateway_client.post(
        "/v1/admin/meters",
        data=b"ean=1",
        headers={**admin_headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    await problem(resp, 415, "unsupported-media-type")


async def test_end_contract_ends_consents_and_later_interval_readings(
    gateway_client: Client, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    ean = make_ean(5)
    assert (
        await gateway_client.post("/v1/admin/meters", json=meter_body(5), headers=admin_headers)
    ).status == 201
    consent_id = uuid.uuid4()
    granted = dt.datetime(2024, 2, 1, tzinfo=dt.UTC)
    # a keep-purpose consent: readings before the end survive it, those at or after it do not
    await pool.execute(
        "INSERT INTO consents (ean, consent_id, customer_id, purpose, notice_version, channel,"
        " granted_at, contract_id) VALUES ($1, $2, 'cust-5', 'dynamic-tariff-billing', 'v1',"
        " 'portal', $3, (SELECT contract_id FROM contracts WHERE ean = $1))",
        ean,
        consent_id,
        granted,
    )
    end = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)
    await pool.execute(
        "SELECT meterpoort_ensure_partitions($1, $2)",
        end - dt.timedelta(days=1),
        end + dt.timedelta(days=1),
    )
    rows = [  # (period_start, measured_at)
        (end - dt.timedelta(minutes=15), end - dt.timedelta(minutes=14)),  # before: kept
        (end, end + dt.timedelta(seconds=10)),  # after: deleted
        (end + dt.timedelta(hours=2), end + dt.timedelta(hours=2)),  # clock ahead: deleted
    ]
    num = int(ean)
    await pool.execute(
        "INSERT INTO readings_e_pt15m (ean, period_start, measured_at, import_t1_wh)"
        " VALUES ($1, $2, $3, 1)",
        num,
        rows[0][0],
        rows[0][1],
    )
    for start, measured in rows[1:]:
        await pool.execute(
            "INSERT INTO readings_e_pt15m (ean, period_start, measured_at, import_t1_wh)"
            " VALUES ($1, $2, $3, 1)",
            num,
            start,
            measured,
        )

    body = {"contract_end": "2024-03-01T13:00:00+01:00", "end_reason": "contract-ended"}
    resp = await gateway_client.patch(f"/v1/admin/meters/{ean}", json=body, headers=admin_headers)
    assert resp.status == 200, await resp.text()
    ended = await resp.json()
    assert ended["contract_end"] == "2024-03-01T12:00:00Z"
    assert ended["end_reason"] == "contract-ended"

    consent = await pool.fetchrow("SELECT ended_at, end_reason FROM consents WHERE ean = $1", ean)
    assert consent is not None
    assert consent["ended_at"] == end and consent["end_reason"] == "contract-ended"
    events = await pool.fetch("SELECT kind, at, detail FROM consent_events WHERE ean = $1", ean)
    assert [(e["kind"], e["at"]) for e in events] == [("ended", end)]
    left = await pool.fetch("SELECT measured_at FROM readings_e_pt15m WHERE ean = $1", num)
    assert [r["measured_at"] for r in left] == [rows[0][1]]

    again = await gateway_client.patch(f"/v1/admin/meters/{ean}", json=body, headers=admin_headers)
    await problem(again, 409, "conflict")


async def test_end_contract_errors(gateway_client: Client, admin_headers: dict[str, str]) -> None:
    body = {"contract_end": "2024-03-01T13:00:00+01:00", "end_reason": "move-out"}
    resp = await gateway_client.patch(
        f"/v1/admin/meters/{make_ean(9)}", json=body, headers=admin_headers
    )
    await problem(resp, 404, "not-found")
    resp = await gateway_client.patch(
        "/v1/admin/meters/871687140000000003", json=body, headers=admin_headers
    )
    await problem(resp, 422, "invalid-ean")
    assert (
        await gateway_client.post("/v1/admin/meters", json=meter_body(9), headers=admin_headers)
    ).status == 201
    bad = {"contract_end": "2024-03-01T13:00:00+01:00", "end_reason": "bored"}
    resp = await gateway_client.patch(
        f"/v1/admin/meters/{make_ean(9)}", json=bad, headers=admin_headers
    )
    data = await problem(resp, 422, "validation-error")
    assert [e["loc"] for e in data["errors"]] == [["body", "end_reason"]]
    early = {"contract_end": "2023-03-01T13:00:00+01:00", "end_reason": "move-out"}
    resp = await gateway_client.patch(
        f"/v1/admin/meters/{make_ean(9)}", json=early, headers=admin_headers
    )
    await problem(resp, 422, "validation-error")


# --- devices ----------------------------------------------------------------------------------


async def test_register_device_token_shown_once_stored_hashed(
    gateway_client: Client, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    resp = await gateway_client.post(
        "/v1/admin/devices", json={"meter_ids": ["E0001", "G0001", "E0001"]}, headers=admin_headers
    )
    assert resp.status == 201, await resp.text()
    data = await resp.json()
    device_id = uuid.UUID(data["device_id"])
    token = data["token"]
    assert len(token) >= 43 and data["meter_ids"] == ["E0001", "G0001"]

    stored = await pool.fetchrow("SELECT * FROM devices WHERE device_id = $1", device_id)
    assert stored is not None
    assert stored["token_hash"] == hash_token(token)
    assert token.encode() not in bytes(stored["token_hash"])

    creds = Credentials(pool)
    device = await creds.device(token)
    assert device is not None and device.device_id == device_id
    assert device.meter_ids == frozenset({"E0001", "G0001"})
    assert await creds.device(token + "x") is None

    await pool.execute("UPDATE devices SET revoked_at = now() WHERE device_id = $1", device_id)
    creds.forget_devices()
    assert await creds.device(token) is None


@pytest.mark.parametrize("body", [{"meter_ids": []}, {"meter_ids": ["has space"]}, {}])
async def test_invalid_device_bodies(
    gateway_client: Client, admin_headers: dict[str, str], body: dict[str, Any]
) -> None:
    resp = await gateway_client.post("/v1/admin/devices", json=body, headers=admin_headers)
    await problem(resp, 422, "validation-error")


# --- routing and size errors --------------------------------------------------------------------


async def test_unknown_path_wrong_method_and_oversized_body(
    gateway_client: Client, admin_headers: dict[str, str], gateway_settings: Any
) -> None:
    await problem(await gateway_client.get("/v1/nothing-here"), 404, "not-found")
    resp = await gateway_client.delete("/v1/admin/meters", headers=admin_headers)
    await problem(resp, 405, "method-not-allowed")
    assert "POST" in resp.headers["Allow"]
    huge = b'{"ean": "' + b"8" * (gateway_settings.max_body_bytes + 10) + b'"}'
    resp = await gateway_client.post(
        "/v1/admin/meters",
        data=io.BytesIO(huge),
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    await problem(resp, 413, "payload-too-large")
