"""Which readings each kind of client sees, table-driven: interval readings before, during and
after a consent, for a purpose that keeps its data and one that deletes it, active, revoked and
expired consents; daily readings for everyone allowed P1D; 403 for a granularity not granted.
Real PostgreSQL, real HTTP; each request's audit row lists exactly the EANs it returned.

The interval rows of ended consents are written AFTER the consent ended (as a restored backup or
a stale replica could leave them), so these tests check the API's own filter, not the deletion
that ending a consent performs.
"""

from __future__ import annotations

import datetime as dt
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
from tests.support import insert_consent, make_ean

HttpClient = TestClient[web.Request, web.Application]
NDJSON = "application/x-ndjson"


NOW = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
T0 = NOW - dt.timedelta(days=10)  # first interval period
GRANT = T0 + dt.timedelta(hours=1)
END = T0 + dt.timedelta(hours=3)
LAST = T0 + dt.timedelta(hours=5)  # interval readings cover [T0, LAST)

KEEP = "dynamic-tariff-billing"
DELETE = "energy-insights"


@dataclass(frozen=True)
class Conn:
    n: int
    commodity: str
    #: None, or (purpose, how the consent is over: None = active, "revoked", "expired")
    consent: tuple[str, str | None] | None

    @property
    def ean(self) -> str:
        return make_ean(self.n)


CONNECTIONS = {
    "keep-revoked": Conn(1, "electricity", (KEEP, "revoked")),
    "delete-revoked": Conn(2, "electricity", (DELETE, "revoked")),
    "no-consent": Conn(3, "electricity", None),
    "keep-active": Conn(4, "electricity", (KEEP, None)),
    "delete-active": Conn(5, "electricity", (DELETE, None)),
    "keep-expired": Conn(6, "electricity", (KEEP, "expired")),
    "gas-keep-revoked": Conn(7, "gas", (KEEP, "revoked")),
    "gas-delete-active": Conn(8, "gas", (DELETE, None)),
}

CLIENTS = {
    "billing": (["P1D", "PT15M", "PT1H"], [KEEP]),
    "insights": (["PT15M", "PT1H"], [DELETE]),
    "both": (["P1M", "P1D", "PT15M", "PT1H"], [KEEP, DELETE]),
    "no-purpose": (["P1D", "PT15M", "PT1H"], []),
    "daily-only": (["P1D"], [KEEP, DELETE]),
}


def phase(measured: dt.datetime) -> str:
    return "before" if measured < GRANT else "during" if measured < END else "after"


# (client, connection) → phases of interval readings it sees; pairs not listed see nothing
D, A = "during", "after"
VISIBLE: dict[tuple[str, str], set[str]] = {
    ("billing", "keep-revoked"): {D},
    ("billing", "keep-active"): {D, A},
    ("billing", "keep-expired"): {D},
    ("billing", "gas-keep-revoked"): {D},
    ("insights", "delete-active"): {D, A},
    ("insights", "gas-delete-active"): {D, A},
    ("both", "keep-revoked"): {D},
    ("both", "keep-active"): {D, A},
    ("both", "keep-expired"): {D},
    ("both", "gas-keep-revoked"): {D},
    ("both", "delete-active"): {D, A},
    ("both", "gas-delete-active"): {D, A},
    # delete-revoked: nobody (its purpose deletes its data when it ends); no-consent: nobody
}


@dataclass
class World:
    http: HttpClient
    pool: asyncpg.Pool
    tokens: dict[str, str]
    client_ids: dict[str, str]


async def _insert_interval(pool: asyncpg.Pool, c: Conn) -> None:
    if c.commodity == "electricity":
        await pool.execute(
            "INSERT INTO readings_e_pt15m (ean, period_start, measured_at, import_t1_wh,"
            " import_t2_wh, export_t1_wh, export_t2_wh)"
            " SELECT $1, p, p + interval '7 seconds', 1000 + i, 2000 + i, i, 0"
            " FROM generate_series(0, 19) i,"
            " LATERAL (SELECT $2::timestamptz + i * interval '15 minutes' AS p) x",
            int(c.ean),
            T0,
        )
    else:
        await pool.execute(
            "INSERT INTO readings_g_pt1h (ean, period_start, measured_at, volume_dm3)"
            " SELECT $1, p, p + interval '7 seconds', 500 + i"
            " FROM generate_series(0, 4) i,"
            " LATERAL (SELECT $2::timestamptz + i * interval '1 hour' AS p) x",
            int(c.ean),
            T0,
        )


async def _build(pool: asyncpg.Pool) -> tuple[dict[str, str], dict[str, str]]:
    async with pool.acquire() as conn:
        for c in CONNECTIONS.values():
            await registry.add_connection(
                conn,
                registry.ConnectionIn(
                    ean=c.ean,
                    commodity=c.commodity,  # type: ignore[arg-type]
                    meter_id=f"M{c.n:08d}",
                    customer_id=f"cust-{c.n}",
                    contract_start=NOW - dt.timedelta(days=400),
                ),
            )
            # daily readings: 3 days, visible to every client with P1D
            table = "readings_e_p1d" if c.commodity == "electricity" else "readings_g_p1d"
            columns = (
                "import_t1_wh, import_t2_wh, export_t1_wh, export_t2_wh"
                if c.commodity == "electricity"
                else "volume_dm3"
            )
            values = "10, NULL, 0, 0" if c.commodity == "electricity" else "77"
            await conn.execute(
                f"INSERT INTO {table} (ean, period_start, measured_at, {columns})"
                f" SELECT $1, $2::timestamptz + i * interval '1 day',"
                f" $2::timestamptz + i * interval '1 day'"
                f" + interval '3 seconds', {values} FROM generate_series(0, 2) i",
                int(c.ean),
                T0 - dt.timedelta(days=3),
            )
            if c.consent is None:
                await _insert_interval(pool, c)
                continue
            purpose, over = c.consent
            if over == "expired":
                # expired already: written with SQL (the store refuses a passed expires_at)
                await insert_consent(
                    conn,
                    ean=c.ean,
                    customer_id=f"cust-{c.n}",
                    purpose=purpose,
                    granted_at=GRANT,
                    expires_at=END,
                )
                await _insert_interval(pool, c)
                continue
            created = await consent_store.create_consent(
                conn,
                ean=c.ean,
                customer_id=f"cust-{c.n}",
                purpose=purpose,
                notice_version="v1",
                granted_at=GRANT,
            )
            if over == "revoked":
                await consent_store.end_consent(
                    conn, created["consent_id"], EndReason.REVOKED, at=END
                )
            await _insert_interval(pool, c)
        tokens: dict[str, str] = {}
        ids: dict[str, str] = {}
        for name, (granularities, purposes) in CLIENTS.items():
            new = await clients.add_client(
                conn,
                clients.ClientIn(
                    name=name,
                    granularities=granularities,  # type: ignore[arg-type]
                    purposes=purposes,
                ),
            )
            tokens[name] = new.token
            ids[name] = str(new.client_id)
    return tokens, ids


@pytest.fixture
async def world(gateway_app: web.Application, pool: asyncpg.Pool) -> AsyncIterator[World]:
    tokens, ids = await _build(pool)
    http: HttpClient = TestClient(TestServer(gateway_app, host="127.0.0.1", port=0))
    await http.start_server()
    try:
        yield World(http, pool, tokens, ids)
    finally:
        await http.close()


async def _read(world: World, client: str, granularity: str, accept: str = NDJSON) -> Any:
    resp = await world.http.get(
        "/v1/readings",
        params={
            "granularity": granularity,
            "from": (T0 - dt.timedelta(days=5)).isoformat(),
            "to": (LAST + dt.timedelta(days=1)).isoformat(),
        },
        headers={"Authorization": f"Bearer {world.tokens[client]}", "Accept": accept},
    )
    return resp


async def _last_audit(pool: asyncpg.Pool) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT kind, actor, subject, ean, detail FROM audit_log ORDER BY seq DESC LIMIT 1"
    )
    assert row is not None
    return row


def _lines(text: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("client", sorted(CLIENTS))
async def test_interval_visibility(world: World, client: str) -> None:
    granularities = CLIENTS[client][0]
    seen: dict[str, set[str]] = {}
    returned_eans: set[str] = set()
    for granularity in ("PT15M", "PT1H"):
        if granularity not in granularities:
            continue
        resp = await _read(world, client, granularity)
        assert resp.status == 200, await resp.text()
        assert resp.content_type == NDJSON
        rows = _lines(await resp.text())
        for row in rows:
            assert row["granularity"] == granularity
            measured = dt.datetime.fromisoformat(row["measured_at"])
            name = next(k for k, c in CONNECTIONS.items() if c.ean == row["ean"])
            seen.setdefault(name, set()).add(phase(measured))
        eans = sorted({r["ean"] for r in rows})
        returned_eans |= set(eans)
        # one audit row per request, listing exactly the EANs returned
        audit = await _last_audit(world.pool)
        assert audit["kind"] == "data.read"
        assert audit["actor"] == f"client:{world.client_ids[client]}"
        assert audit["subject"] is None and audit["ean"] is None
        detail = audit["detail"]
        assert detail["eans"] == eans
        assert detail["client_id"] == world.client_ids[client]
        assert detail["client_name"] == client
        assert detail["granularity"] == granularity
        assert detail["readings"] == len(rows) and detail["complete"] is True

    expected = {name: phases for (who, name), phases in VISIBLE.items() if who == client}
    # interval readings the client may see are ALL there: every phase fully
    assert seen == expected
    if expected:
        assert returned_eans == {CONNECTIONS[n].ean for n in expected}


async def test_every_visible_interval_reading_is_returned(world: World) -> None:
    resp = await _read(world, "both", "PT15M")
    rows = _lines(await resp.text())
    per_ean: dict[str, int] = {}
    for row in rows:
        per_ean[row["ean"]] = per_ean.get(row["ean"], 0) + 1
    # 8 readings during [GRANT, END), 8 after END: exact counts, not just phases
    assert per_ean == {
        CONNECTIONS["keep-revoked"].ean: 8,
        CONNECTIONS["keep-expired"].ean: 8,
        CONNECTIONS["keep-active"].ean: 16,
        CONNECTIONS["delete-active"].ean: 16,
    }


@pytest.mark.parametrize("client", ["billing", "both", "no-purpose", "daily-only"])
async def test_daily_readings_are_visible_for_every_connection(world: World, client: str) -> None:
    resp = await _read(world, client, "P1D")
    assert resp.status == 200
    rows = _lines(await resp.text())
    assert len(rows) == 3 * len(CONNECTIONS)
    assert {r["ean"] for r in rows} == {c.ean for c in CONNECTIONS.values()}
    assert {r["commodity"] for r in rows} == {"electricity", "gas"}
    audit = await _last_audit(world.pool)
    assert audit["detail"]["eans"] == sorted(c.ean for c in CONNECTIONS.values())


@pytest.mark.parametrize(
    ("client", "granularity"),
    [("daily-only", "PT15M"), ("daily-only", "PT1H"), ("insights", "P1D"), ("billing", "P1M")],
)
async def test_a_granularity_not_granted_is_403(
    world: World, client: str, granularity: str
) -> None:
    before = await world.pool.fetchval("SELECT count(*) FROM audit_log")
    for accept in (NDJSON, "application/json", "text/csv"):
        resp = await _read(world, client, granularity, accept)
        assert resp.status == 403, await resp.text()
        assert resp.content_type == "application/problem+json"
        assert granularity in (await resp.json(content_type=None))["detail"]
    # nothing was read, nothing is logged as read
    assert await world.pool.fetchval("SELECT count(*) FROM audit_log") == before


async def test_revoking_a_delete_purpose_consent_hides_its_data_at_once(world: World) -> None:
    name = "delete-active"
    resp = await _read(world, "insights", "PT15M")
    assert CONNECTIONS[name].ean in {r["ean"] for r in _lines(await resp.text())}
    consent_id = await world.pool.fetchval(
        "SELECT consent_id FROM consents WHERE ean = $1", CONNECTIONS[name].ean
    )
    async with world.pool.acquire() as conn:
        await consent_store.end_consent(conn, consent_id, EndReason.REVOKED)
    resp = await _read(world, "insights", "PT15M")
    assert CONNECTIONS[name].ean not in {r["ean"] for r in _lines(await resp.text())}


async def test_revoking_a_keep_purpose_consent_keeps_the_consented_period(world: World) -> None:
    name = "keep-active"
    consent_id = await world.pool.fetchval(
        "SELECT consent_id FROM consents WHERE ean = $1", CONNECTIONS[name].ean
    )
    async with world.pool.acquire() as conn:
        await consent_store.end_consent(conn, consent_id, EndReason.REVOKED)
    resp = await _read(world, "billing", "PT15M")
    mine = [r for r in _lines(await resp.text()) if r["ean"] == CONNECTIONS[name].ean]
    # ended now: every stored reading was measured while it was active
    assert len(mine) == 16
