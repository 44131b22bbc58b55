"""GET /v1/readings formats, ranges, pagination, cursors, validation and the access log; GET
/v1/consents reconciliation. Real PostgreSQL, real HTTP."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consent.model import EndReason
from gateway.services import clients, registry
from gateway.services import consents as consent_store
from gateway.services import customers as customer_data
from tests.support import insert_consent, make_ean

HttpClient = TestClient[web.Request, web.Application]
NDJSON = "application/x-ndjson"
PROBLEM = "application/problem+json"


ELEC = [make_ean(n) for n in (11, 12, 13)]
GAS = [make_ean(n) for n in (21, 22)]
# 2024-03-01 local midnight is 2024-02-29T23:00Z; daily periods start at 23:00Z in winter
DAY0 = dt.datetime(2024, 2, 25, 23, tzinfo=dt.UTC)
DAYS = 10


@dataclass
class World:
    http: HttpClient
    pool: asyncpg.Pool
    token: str
    client_id: str
    other_token: str


async def _seed(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for i, ean in enumerate(ELEC + GAS):
            await registry.add_connection(
                conn,
                registry.ConnectionIn(
                    ean=ean,
                    commodity="electricity" if ean in ELEC else "gas",
                    meter_id=f"M{i:08d}",
                    customer_id=f"cust-{i}",
                    contract_start=dt.datetime(2023, 1, 1, tzinfo=dt.UTC),
                ),
            )
        for ean in ELEC:
            # the last meter is totals-only: no T2 registers (nulls in the API)
            t2 = "NULL" if ean == ELEC[-1] else "2000 + i"
            await conn.execute(
                "INSERT INTO readings_e_p1d (ean, period_start, measured_at, import_t1_wh,"
                f" import_t2_wh, export_t1_wh, export_t2_wh) SELECT $1, p, p + interval '4 s',"
                f" 1000 + i, {t2}, i, 0 FROM generate_series(0, {DAYS - 1}) i,"
                " LATERAL (SELECT $2::timestamptz + i * interval '1 day' AS p) x",
                int(ean),
                DAY0,
            )
        for ean in GAS:
            await conn.execute(
                "INSERT INTO readings_g_p1d (ean, period_start, measured_at, volume_dm3)"
                f" SELECT $1, p, p + interval '1 hour', 300 + i FROM generate_series(0, {DAYS - 1})"
                " i, LATERAL (SELECT $2::timestamptz + i * interval '1 day' AS p) x",
                int(ean),
                DAY0,
            )


@pytest.fixture
async def world(gateway_app: web.Application, pool: asyncpg.Pool) -> AsyncIterator[World]:
    await _seed(pool)
    async with pool.acquire() as conn:
        billing = await clients.add_client(
            conn,
            clients.ClientIn(
                name="billing",
                granularities=["P1D", "PT15M"],
                purposes=["dynamic-tariff-billing"],
            ),
        )
        other = await clients.add_client(
            conn, clients.ClientIn(name="other", granularities=["P1D"], purposes=[])
        )
    http: HttpClient = TestClient(TestServer(gateway_app, host="127.0.0.1", port=0))
    await http.start_server()
    try:
        yield World(http, pool, billing.token, str(billing.client_id), other.token)
    finally:
        await http.close()


def _params(**extra: Any) -> dict[str, Any]:
    return {"granularity": "P1D", "from": "2024-02-20", "to": "2024-03-10", **extra}


async def _get(
    world: World, params: Any, accept: str | None = None, token: str | None = None
) -> Any:
    headers = {"Authorization": f"Bearer {token or world.token}"}
    if accept is not None:
        headers["Accept"] = accept
    return await world.http.get("/v1/readings", params=params, headers=headers)


async def _all_pages(world: World, params: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page_params = dict(params) if cursor is None else {**params, "cursor": cursor}
        resp = await _get(world, page_params)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        out += page["readings"]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


def _from_csv(text: str) -> list[dict[str, Any]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    out = []
    for r in rows:
        if r["commodity"] == "electricity":
            registers: dict[str, Any] = {
                k: (int(r[k]) if r[k] else None)
                for k in ("import_t1_wh", "import_t2_wh", "export_t1_wh", "export_t2_wh")
            }
            assert r["volume_dm3"] == ""
        else:
            registers = {"volume_dm3": int(r["volume_dm3"])}
        out.append(
            {
                "ean": r["ean"],
                "contract_id": r["contract_id"],
                "customer_id": r["customer_id"],
                "commodity": r["commodity"],
                "granularity": r["granularity"],
                "period_start": r["period_start"],
                "measured_at": r["measured_at"],
                "registers": registers,
            }
        )
    return out


async def test_ndjson_csv_and_json_pages_hold_the_same_readings(world: World) -> None:
    resp = await _get(world, _params(), NDJSON)
    assert resp.status == 200 and resp.content_type == NDJSON
    ndjson = [json.loads(line) for line in (await resp.text()).splitlines()]
    resp = await _get(world, _params(), "text/csv")
    assert resp.status == 200 and resp.content_type == "text/csv"
    text = await resp.text()
    assert text.splitlines()[0] == (
        "ean,contract_id,customer_id,commodity,granularity,period_start,measured_at,"
        "import_t1_wh,import_t2_wh,export_t1_wh,export_t2_wh,volume_dm3"
    )
    from_csv = _from_csv(text)
    pages = await _all_pages(world, _params(limit="4"))
    assert len(ndjson) == DAYS * 5
    assert ndjson == from_csv == pages
    # ordered by (ean, period_start)
    keys = [(r["ean"], r["period_start"]) for r in ndjson]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


async def test_reading_shape(world: World) -> None:
    resp = await _get(world, _params(ean=[ELEC[2], GAS[0]], limit="100"), "application/json")
    readings = (await resp.json())["readings"]
    contracts = {
        r["ean"]: (str(r["contract_id"]), r["customer_id"])
        for r in await world.pool.fetch("SELECT ean, contract_id, customer_id FROM contracts")
    }
    first_e = next(r for r in readings if r["ean"] == ELEC[2])
    # each reading names the contract in force when it was measured, and its customer
    assert (first_e.pop("contract_id"), first_e.pop("customer_id")) == contracts[ELEC[2]]
    assert first_e == {
        "ean": ELEC[2],
        "commodity": "electricity",
        "granularity": "P1D",
        "period_start": "2024-02-25T23:00:00Z",
        "measured_at": "2024-02-25T23:00:04Z",
        "registers": {
            "import_t1_wh": 1000,
            "import_t2_wh": None,
            "export_t1_wh": 0,
            "export_t2_wh": 0,
        },
    }
    first_g = next(r for r in readings if r["ean"] == GAS[0])
    assert (first_g.pop("contract_id"), first_g.pop("customer_id")) == contracts[GAS[0]]
    assert first_g == {
        "ean": GAS[0],
        "commodity": "gas",
        "granularity": "P1D",
        "period_start": "2024-02-25T23:00:00Z",
        "measured_at": "2024-02-26T00:00:00Z",
        "registers": {"volume_dm3": 300},
    }
    assert {r["ean"] for r in readings} == {ELEC[2], GAS[0]}


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        # local dates: 2024-02-27 = 2024-02-26T23:00Z, which is a period start (included)
        ("2024-02-27", "2024-03-01", 3),
        # half-open: `to` equal to a period start excludes it
        ("2024-02-26T23:00:00Z", "2024-02-27T23:00:00Z", 1),
        ("2024-02-26T23:00:01Z", "2024-02-27T23:00:01Z", 1),
        ("2024-02-27T00:00:00+01:00", "2024-02-28T00:00:00+01:00", 1),
        ("2030-01-01", "2030-02-01", 0),
    ],
)
async def test_ranges_are_half_open_and_dates_are_local(
    world: World, start: str, end: str, days: int
) -> None:
    resp = await _get(world, {"granularity": "P1D", "from": start, "to": end}, NDJSON)
    assert resp.status == 200
    lines = (await resp.text()).splitlines()
    assert len(lines) == days * 5


async def test_pagination_is_stable_while_readings_are_inserted(world: World) -> None:
    params = _params(limit="7")
    expected = [
        (r["ean"], r["period_start"]) for r in await _all_pages(world, _params(limit="1000"))
    ]
    seen: list[tuple[str, str]] = []
    cursor = None
    inserted = 0
    ahead: set[tuple[str, str]] = set()  # inserted after the position already returned
    while True:
        resp = await _get(world, params if cursor is None else {**params, "cursor": cursor})
        page = await resp.json()
        seen += [(r["ean"], r["period_start"]) for r in page["readings"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # a concurrent writer adds readings before and after the cursor position
        day = DAY0 + dt.timedelta(days=DAYS + inserted)
        for ean in (ELEC[0], ELEC[2]):
            key = (ean, day.strftime("%Y-%m-%dT%H:%M:%SZ"))
            if key > seen[-1] and day < dt.datetime(2024, 3, 9, 23, tzinfo=dt.UTC):
                ahead.add(key)
            await world.pool.execute(
                "INSERT INTO readings_e_p1d (ean, period_start, measured_at, import_t1_wh)"
                " VALUES ($1, $2, $2, 1)",
                int(ean),
                day,
            )
        inserted += 1
    assert inserted >= 5
    assert len(seen) == len(set(seen))  # never twice
    assert set(expected) <= set(seen)  # nothing that was there is skipped
    assert seen == sorted(seen)
    # readings added behind the cursor are not returned; those ahead of it (in range) are
    new = set(seen) - set(expected)
    assert new == ahead and any(ean == ELEC[0] for ean, _ in new)


async def _cursor(world: World) -> str:
    resp = await _get(world, _params(limit="3"))
    cursor: str = (await resp.json())["next_cursor"]
    assert cursor
    return cursor


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


async def test_tampered_and_foreign_cursors_are_400(world: World) -> None:
    cursor = await _cursor(world)
    body, _mac = cursor.split(".")
    bad = [
        _flip(cursor, 3),
        _flip(cursor, len(body) + 3),
        body + ".",
        "garbage",
        "!!!.???",
        json.dumps({"e": 1}),
    ]
    for value in bad:
        resp = await _get(world, _params(limit="3", cursor=value))
        assert resp.status == 400, (value, await resp.text())
        data = await resp.json(content_type=PROBLEM)
        assert "cursor" in data["detail"]
    # a genuine cursor with other query parameters, or from another client
    resp = await _get(world, {**_params(limit="3", cursor=cursor), "to": "2024-03-09"})
    assert resp.status == 400
    resp = await _get(world, _params(limit="3", cursor=cursor), token=world.other_token)
    assert resp.status == 400
    # and the genuine one works
    resp = await _get(world, _params(limit="3", cursor=cursor))
    assert resp.status == 200


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"from": "2024-01-01", "to": "2024-02-01"}, {"granularity"}),
        (_params(granularity="PT5M"), {"granularity"}),
        (_params(granularity="P1D", **{"from": "yesterday"}), {"from"}),
        (_params(to="2024-02-30"), {"to"}),
        (_params(**{"from": "2024-03-10", "to": "2024-03-01"}), {"to"}),
        (_params(**{"from": "2024-03-01T00:00:00"}), {"from"}),  # no offset
        (_params(ean="12345"), {"ean"}),
        (_params(limit="0"), {"limit"}),
        (_params(limit="10001"), {"limit"}),
        (_params(granularty="P1D"), {"granularty"}),
        ({"to": "x"}, {"granularity", "from", "to"}),
    ],
)
async def test_validation_errors_name_the_parameter(
    world: World, params: dict[str, Any], names: set[str]
) -> None:
    resp = await _get(world, params)
    assert resp.status == 422, await resp.text()
    data = await resp.json(content_type=PROBLEM)
    assert {e["loc"][1] for e in data["errors"]} == names
    assert all(e["loc"][0] == "query" and e["msg"] for e in data["errors"])
    for name in names:
        assert name in data["detail"]


async def test_repeated_parameters_and_stream_only_misuse_are_refused(world: World) -> None:
    resp = await _get(world, [*_params().items(), ("granularity", "P1M")])
    assert resp.status == 422
    resp = await _get(world, _params(limit="5"), NDJSON)
    assert resp.status == 422
    assert (await resp.json(content_type=PROBLEM))["errors"][0]["loc"] == ["query", "limit"]


async def test_content_negotiation(world: World) -> None:
    for accept, expected in [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("text/*", "text/csv"),
        ("application/json;q=0.5, application/x-ndjson", NDJSON),
        ("text/csv;q=0.9, application/json;q=0.1", "text/csv"),
    ]:
        resp = await _get(world, _params(), accept)
        assert resp.status == 200 and resp.content_type == expected, accept
        await resp.read()
    resp = await _get(world, _params(), "text/html")
    assert resp.status == 406
    assert resp.content_type == PROBLEM


async def test_authentication_is_required(world: World) -> None:
    resp = await world.http.get("/v1/readings", params=_params())
    assert resp.status == 401
    resp = await _get(world, _params(), token="not-a-token")
    assert resp.status == 401


async def _audit_rows(pool: asyncpg.Pool) -> list[Any]:
    rows = await pool.fetch("SELECT actor, detail FROM audit_log WHERE kind = 'data.read'")
    return list(rows)


async def test_each_request_is_one_audit_row_with_exactly_the_eans_returned(
    world: World,
) -> None:
    before = len(await _audit_rows(world.pool))
    # a page that ends inside the second EAN's readings
    resp = await _get(world, _params(limit=str(DAYS + 2)))
    page = (await resp.json())["readings"]
    rows = await _audit_rows(world.pool)
    assert len(rows) == before + 1
    detail = rows[-1]["detail"]
    assert detail["eans"] == sorted({r["ean"] for r in page}) == sorted(ELEC[:2])
    assert rows[-1]["actor"] == f"client:{world.client_id}"
    assert detail["from"] == "2024-02-19T23:00:00.000000Z"
    assert detail["to"] == "2024-03-09T23:00:00.000000Z"
    assert detail["granularity"] == "P1D" and detail["readings"] == DAYS + 2

    for accept in (NDJSON, "text/csv"):
        resp = await _get(world, _params(ean=[GAS[1], ELEC[1]]), accept)
        await resp.read()
        rows = await _audit_rows(world.pool)
        assert rows[-1]["detail"]["eans"] == sorted([GAS[1], ELEC[1]])
        assert rows[-1]["detail"]["readings"] == 2 * DAYS
        assert rows[-1]["detail"]["complete"] is True
    # an empty answer is a read too: logged, with no EANs
    resp = await _get(
        world, {"granularity": "P1D", "from": "2030-01-01", "to": "2030-01-02"}, NDJSON
    )
    assert await resp.text() == ""
    rows = await _audit_rows(world.pool)
    assert rows[-1]["detail"]["eans"] == [] and len(rows) == before + 4


async def test_an_aborted_stream_still_logs_what_was_sent(world: World) -> None:
    # enough readings that the stream cannot fit in the socket buffers
    eans = [make_ean(1000 + i) for i in range(200)]
    async with world.pool.acquire() as conn:
        for i, ean in enumerate(eans):
            await registry.add_connection(
                conn,
                registry.ConnectionIn(
                    ean=ean,
                    commodity="electricity",
                    meter_id=f"B{i:08d}",
                    customer_id=f"bulk-{i}",
                    contract_start=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                ),
            )
        await conn.execute(
            "INSERT INTO readings_e_p1d (ean, period_start, measured_at, import_t1_wh)"
            " SELECT k.ean_num, d, d, 1 FROM contracts k, generate_series("
            "'2021-01-01T23:00:00Z'::timestamptz, '2023-12-31Z', interval '1 day') d"
            " WHERE k.customer_id LIKE 'bulk-%'"
        )
    params = {"granularity": "P1D", "from": "2021-01-01", "to": "2024-01-01"}
    resp = await _get(world, params, NDJSON)
    assert resp.status == 200
    first = await resp.content.readline()
    assert json.loads(first)["ean"] == eans[0]
    resp.close()  # the client goes away mid-stream
    for _ in range(100):
        rows = await _audit_rows(world.pool)
        if rows and rows[-1]["detail"]["granularity"] == "P1D":
            break
        await asyncio.sleep(0.1)
    detail = rows[-1]["detail"]
    assert detail["complete"] is False
    assert eans[0] in detail["eans"]
    assert detail["readings"] is None  # unknown: the stream stopped early
    assert set(detail["eans"]) < set(eans)
    # the gateway still answers (its database connection was not left hanging)
    resp = await _get(world, _params(limit="1"))
    assert resp.status == 200


# --- GET /v1/consents ---------------------------------------------------------------------


async def test_consent_changes_for_the_clients_purposes(world: World) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    now = dt.datetime.now(dt.UTC)
    async with world.pool.acquire() as conn:
        keep = await consent_store.create_consent(
            conn,
            ean=ELEC[0],
            customer_id="cust-0",
            purpose="dynamic-tariff-billing",
            notice_version="v1",
        )
        await consent_store.create_consent(
            conn, ean=ELEC[1], customer_id="cust-1", purpose="energy-insights", notice_version="v1"
        )
        # expired already: written with SQL (the store refuses an expires_at that has passed)
        expired = {
            "consent_id": await insert_consent(
                conn,
                ean=ELEC[2],
                customer_id="cust-2",
                purpose="dynamic-tariff-billing",
                granted_at=now - dt.timedelta(days=3),
                expires_at=now - dt.timedelta(days=2) + dt.timedelta(seconds=5),
            )
        }
        # ended with a back-dated end: found by when it was recorded, not by its `at`
        await consent_store.end_consent(
            conn, keep["consent_id"], EndReason.REVOKED, at=now - dt.timedelta(seconds=0)
        )
    headers = {"Authorization": f"Bearer {world.token}"}
    resp = await world.http.get(
        "/v1/consents",
        params={"changed_since": (now - dt.timedelta(days=4)).isoformat()},
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    kinds = [(c["consent"]["consent_id"], c["kind"]) for c in data["changes"]]
    assert (str(keep["consent_id"]), "granted") in kinds
    assert (str(keep["consent_id"]), "ended") in kinds
    assert (str(expired["consent_id"]), "expired") in kinds
    assert all(c["consent"]["purpose"] == "dynamic-tariff-billing" for c in data["changes"])
    changed = [c["changed_at"] for c in data["changes"]]
    assert changed == sorted(changed)
    ended = next(c for c in data["changes"] if c["kind"] == "ended")
    assert ended["consent"]["state"] == "ended" and ended["consent"]["end_reason"] == "revoked"
    nxt = dt.datetime.fromisoformat(data["next_changed_since"])
    assert start - dt.timedelta(seconds=30) < nxt <= dt.datetime.now(dt.UTC)

    # consents are personal data: the pull is in the access log, with the EANs it returned,
    # and each customer sees it in their own access log
    rows = await world.pool.fetch(
        "SELECT actor, detail FROM audit_log WHERE kind = 'data.read' ORDER BY seq"
    )
    assert len(rows) == 1
    detail = rows[0]["detail"]
    assert rows[0]["actor"] == f"client:{world.client_id}"
    assert detail["data"] == "consents" and detail["client_id"] == world.client_id
    assert detail["eans"] == sorted({ELEC[0], ELEC[2]}) and detail["changes"] == len(kinds)
    async with world.pool.acquire() as conn:
        seen = await customer_data.access_log(
            conn, "cust-2", await customer_data.connections_of(conn, "cust-2")
        )
        unseen = await customer_data.access_log(
            conn, "cust-1", await customer_data.connections_of(conn, "cust-1")
        )
    assert [(e["kind"], e["data"], e["eans"]) for e in seen] == [("read", "consents", [ELEC[2]])]
    assert unseen == []

    # a client without purposes sees no consents
    resp = await world.http.get(
        "/v1/consents",
        params={"changed_since": "2020-01-01T00:00:00Z"},
        headers={"Authorization": f"Bearer {world.other_token}"},
    )
    assert (await resp.json())["changes"] == []


async def test_consent_changes_page_by_time(world: World) -> None:
    async with world.pool.acquire() as conn:
        for i, ean in enumerate(ELEC):
            await consent_store.create_consent(
                conn,
                ean=ean,
                customer_id=f"cust-{i}",
                purpose="dynamic-tariff-billing",
                notice_version="v1",
            )
    headers = {"Authorization": f"Bearer {world.token}"}
    resp = await world.http.get(
        "/v1/consents", params={"changed_since": "2020-01-01", "limit": "1"}, headers=headers
    )
    data = await resp.json()
    assert len(data["changes"]) >= 1
    resp = await world.http.get(
        "/v1/consents", params={"changed_since": "2020-01-01", "limit": "0"}, headers=headers
    )
    assert resp.status == 422
    resp = await world.http.get("/v1/consents", params={"since": "x"}, headers=headers)
    errors = (await resp.json(content_type=PROBLEM))["errors"]
    assert {e["loc"][1] for e in errors} == {"since", "changed_since"}
