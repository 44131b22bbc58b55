"""SPEC §3 invariant: no interval reading measured at or after its consent's end is ever stored.

* Two gateway app instances (two create_app on two ports, one database); the second runs without
  LISTEN, so its consent index is deliberately stale after a revocation made through the first.
  The stale process still believes the consent active, builds interval rows — and the database
  refuses them. A meter clock running ahead had delivered a reading "from the future" before the
  revocation: the revocation deletes it.
* Both lock orders of the ingest-vs-revocation race, held open on purpose at the SQL level.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consent.levels import Commodity, Granularity
from consent.model import EndReason
from gateway.api.app import create_app
from gateway.api.appkeys import INGEST_KEY, LISTEN_KEY
from gateway.ingest.best_cache import BestCache
from gateway.ingest.sql import E_PT15M, INSERT_SQL, flush_sql
from gateway.ingest.writer import BatchWriter
from gateway.services import consents as consent_store
from gateway.settings import Settings
from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

Client = TestClient[web.Request, web.Application]
UTC = dt.UTC
REVOKE = {"reason": "revoked"}


async def start(app: web.Application) -> Client:
    client: Client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    return client


@pytest.fixture
async def seeded(
    gateway_settings: Settings, pool: asyncpg.Pool, admin_headers: dict[str, str]
) -> AsyncIterator[tuple[Client, str, dict[str, str], str]]:
    """App A (listening) with a meter, a device and an interval consent registered."""
    a = await start(create_app(gateway_settings))
    try:
        now = dt.datetime.now(UTC)
        ean = make_ean(31)
        resp = await a.post(
            "/v1/admin/meters",
            json={
                "ean": ean,
                "commodity": "electricity",
                "meter_id": "E31",
                "customer_id": "cust-31",
                "contract_start": (now - dt.timedelta(days=10)).isoformat(),
            },
            headers=admin_headers,
        )
        assert resp.status == 201, await resp.text()
        resp = await a.post("/v1/admin/devices", json={"meter_ids": ["E31"]}, headers=admin_headers)
        token = (await resp.json())["token"]
        resp = await a.post(
            "/v1/admin/consents",
            json={
                "ean": ean,
                "customer_id": "cust-31",
                "purpose": "dynamic-tariff-billing",
                "notice_version": "v1",
                "granted_at": (now - dt.timedelta(days=1)).isoformat(),
            },
            headers=admin_headers,
        )
        assert resp.status == 201, await resp.text()
        consent_id: str = (await resp.json())["consent_id"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
        yield a, ean, headers, consent_id
    finally:
        await a.close()


def body(times: list[dt.datetime]) -> bytes:
    return b"".join(
        build_telegram("E31", t, import_wh=(1_000 + i, 2_000 + i)) for i, t in enumerate(times)
    )


async def interval_times(pool: asyncpg.Pool) -> list[dt.datetime]:
    rows = await pool.fetch("SELECT measured_at FROM readings_e_pt15m ORDER BY measured_at")
    return [r["measured_at"] for r in rows]


async def test_stale_second_gateway_cannot_store_after_end(
    seeded: tuple[Client, str, dict[str, str], str],
    gateway_settings: Settings,
    pool: asyncpg.Pool,
    admin_headers: dict[str, str],
) -> None:
    a, _ean, headers, consent_id = seeded
    app_b = create_app(gateway_settings)
    app_b[LISTEN_KEY] = False  # no NOTIFYs: B's index goes stale after the revocation
    b = await start(app_b)
    try:
        state_b = app_b[INGEST_KEY]
        now = dt.datetime.now(UTC).replace(microsecond=0)
        end = now - dt.timedelta(minutes=5)
        # before the revocation, through B: readings before the end, and one "from the future"
        # (meter clock 4 minutes ahead, within the 5-minute tolerance)
        early = [end - dt.timedelta(minutes=m) for m in (40, 25, 10)]
        ahead = now + dt.timedelta(minutes=4)
        resp = await b.post("/v1/telegrams", data=body([*early, ahead]), headers=headers)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["accepted"] == 4
        assert ahead in await interval_times(pool)

        # revoke through A, backdated to `end`
        resp = await a.post(
            f"/v1/admin/consents/{consent_id}/end",
            json={"reason": "revoked", "at": end.isoformat()},
            headers=admin_headers,
        )
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["deleted_readings"] >= 1
        assert await interval_times(pool) == sorted(early)  # the future reading is gone

        # B is stale: it still believes the consent active and builds interval rows
        late = [end, end + dt.timedelta(minutes=2), now - dt.timedelta(seconds=5), ahead]
        assert Granularity.PT15M in state_b.index.granularities(
            "E31", Commodity.ELECTRICITY, end, now
        )
        state_b.pipeline.best.clear()
        probe = state_b.pipeline.process([body(late)], frozenset({"E31"}), int(now.timestamp()))
        assert probe.batch[E_PT15M], "the stale index should have offered interval rows"
        resp = await b.post("/v1/telegrams", data=body(late), headers=headers)
        assert resp.status == 200, await resp.text()
        # ...and a reading measured before the end but processed after it: refused as well
        resp = await b.post(
            "/v1/telegrams", data=body([end - dt.timedelta(minutes=1)]), headers=headers
        )
        assert resp.status == 200

        assert all(t < end for t in await interval_times(pool))
        assert await interval_times(pool) == sorted(early)
        # daily and monthly readings do not need consent: stored as usual
        assert await pool.fetchval("SELECT count(*) FROM readings_e_p1d") >= 1

        # A follows at once (its own change), B after its next full reload
        state_a = a.app[INGEST_KEY]
        assert Granularity.PT15M not in state_a.index.granularities(
            "E31", Commodity.ELECTRICITY, end, now
        )
        assert state_b.maintainer is not None
        await state_b.maintainer.reload_all()
        assert Granularity.PT15M not in state_b.index.granularities(
            "E31", Commodity.ELECTRICITY, end, now
        )
    finally:
        await b.close()


async def test_listening_gateway_follows_a_revocation(
    seeded: tuple[Client, str, dict[str, str], str],
    gateway_settings: Settings,
    admin_headers: dict[str, str],
) -> None:
    a, _ean, _headers, consent_id = seeded
    b_app = create_app(gateway_settings)
    b = await start(b_app)
    try:
        state_b = b_app[INGEST_KEY]
        now = dt.datetime.now(UTC)
        assert Granularity.PT15M in state_b.index.granularities(
            "E31", Commodity.ELECTRICITY, now, now
        )
        resp = await a.post(
            f"/v1/admin/consents/{consent_id}/end", json=REVOKE, headers=admin_headers
        )
        assert resp.status == 200
        for _ in range(500):
            later = dt.datetime.now(UTC)
            if Granularity.PT15M not in state_b.index.granularities(
                "E31", Commodity.ELECTRICITY, later - dt.timedelta(seconds=30), later
            ):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("B's index did not follow the NOTIFY within 5 s")
        # ending twice is a conflict; an unknown consent is 404
        resp = await a.post(
            f"/v1/admin/consents/{consent_id}/end", json=REVOKE, headers=admin_headers
        )
        assert resp.status == 409
        resp = await a.post(
            f"/v1/admin/consents/{uuid.uuid4()}/end", json=REVOKE, headers=admin_headers
        )
        assert resp.status == 404
    finally:
        await b.close()


# --- both lock orders, held open ---------------------------------------------------------------


def interval_rows(ean: str, times: list[dt.datetime]) -> list[list[Any]]:
    columns: list[list[Any]] = [[], [], [], [], [], [], []]
    for i, t in enumerate(times):
        ts = int(t.timestamp())
        for col, value in zip(columns, (int(ean), ts - ts % 900 + i, ts, 1, 2, 3, 4), strict=True):
            col.append(value)
    return columns


async def test_revocation_first_ingest_waits_and_skips(
    seeded: tuple[Client, str, dict[str, str], str], pool: asyncpg.Pool
) -> None:
    _a, ean, _headers, consent_id = seeded
    now = dt.datetime.now(UTC).replace(microsecond=0)
    end = now - dt.timedelta(minutes=5)
    revoker: asyncpg.Connection
    async with pool.acquire() as revoker:
        tx = revoker.transaction()
        await tx.start()
        await consent_store.end_consent(revoker, uuid.UUID(consent_id), EndReason.REVOKED, end)
        # ingest (through the real writer) of rows before and after the end, while the
        # revocation holds the consent row
        writer = BatchWriter(pool, BestCache(), max_delay_s=0.001)
        writer.start()
        times = [end - dt.timedelta(minutes=3), end, end + dt.timedelta(minutes=1)]
        batch: list[dict[tuple[int, int], tuple[int | None, ...]]] = [{} for _ in range(6)]
        for t in times:
            ts = int(t.timestamp())
            batch[E_PT15M][(int(ean), ts - ts % 900 + ts % 7)] = (
                int(ean), ts - ts % 900 + ts % 7, ts, 1, 2, 3, 4
            )
        task = asyncio.create_task(writer.write(batch))
        await asyncio.sleep(0.3)
        assert not task.done(), "the ingest should wait for the revocation's row lock"
        await tx.commit()
        await task
        await writer.close()
    # re-evaluated after the commit: the consent is no longer in force, nothing was inserted
    assert await interval_times(pool) == []


@pytest.mark.parametrize("one_statement_flush", [False, True])
async def test_ingest_first_revocation_waits_and_deletes(
    seeded: tuple[Client, str, dict[str, str], str],
    pool: asyncpg.Pool,
    one_statement_flush: bool,
) -> None:
    _a, ean, _headers, consent_id = seeded
    now = dt.datetime.now(UTC).replace(microsecond=0)
    end = now - dt.timedelta(minutes=5)
    times = [end - dt.timedelta(minutes=3), end, now + dt.timedelta(minutes=2)]
    async with pool.acquire() as ingester, pool.acquire() as revoker:
        tx = ingester.transaction()
        await tx.start()
        if one_statement_flush:  # what BatchWriter sends: the upsert as one CTE of a statement
            (counts,) = await ingester.fetch(flush_sql((E_PT15M,)), *interval_rows(ean, times))
            assert tuple(counts) == (3,)
        else:
            status = await ingester.execute(INSERT_SQL[E_PT15M], *interval_rows(ean, times))
            assert status == "INSERT 0 3"
        task = asyncio.create_task(
            consent_store.end_consent(revoker, uuid.UUID(consent_id), EndReason.REVOKED, end)
        )
        await asyncio.sleep(0.3)
        assert not task.done(), "the revocation should wait for the ingest's share lock"
        await tx.commit()
        ended = await task
    assert ended["deleted_readings"] == 2
    assert await interval_times(pool) == [times[0]]


# --- what an end deletes, by purpose -------------------------------------------------------------


async def test_end_deletes_by_purpose_and_keeps_what_another_consent_covers(
    seeded: tuple[Client, str, dict[str, str], str], pool: asyncpg.Pool
) -> None:
    _a, ean, _headers, keep_id = seeded  # a dynamic-tariff-billing (keep) consent
    now = dt.datetime.now(UTC).replace(microsecond=0)
    async with pool.acquire() as conn:
        insights = await consent_store.create_consent(
            conn,
            ean=ean,
            customer_id="cust-31",
            purpose="energy-insights",
            notice_version="v2",
            granted_at=now - dt.timedelta(hours=2),
        )
        times = [now - dt.timedelta(hours=3), now - dt.timedelta(hours=1), now]
        await conn.execute(INSERT_SQL[E_PT15M], *interval_rows(ean, times))
        assert len(await interval_times(pool)) == 3
        # the delete-purpose consent ends: its readings since its grant go, but the keep
        # consent still covers them, so nothing is deleted
        ended = await consent_store.end_consent(
            conn, insights["consent_id"], EndReason.REVOKED, now - dt.timedelta(minutes=30)
        )
        assert ended["deleted_readings"] == 0
        # the keep consent ends too (contract end): readings at/after the end go, earlier stay
        async with conn.transaction():
            contract_id = await conn.fetchval(
                "SELECT contract_id FROM contracts WHERE ean = $1", ean
            )
            ids = await consent_store.end_consents_of_contract(
                conn, ean, contract_id, now - dt.timedelta(minutes=90), EndReason.CONTRACT_ENDED
            )
        assert ids == [uuid.UUID(keep_id)]
    assert await interval_times(pool) == [times[0]]
    events = await pool.fetch(
        "SELECT kind, detail FROM consent_events WHERE ean = $1 ORDER BY at", ean
    )
    assert [e["kind"] for e in events].count("ended") == 2


async def test_delete_purpose_end_removes_its_readings(
    seeded: tuple[Client, str, dict[str, str], str], pool: asyncpg.Pool
) -> None:
    _a, ean, _headers, keep_id = seeded
    now = dt.datetime.now(UTC).replace(microsecond=0)
    async with pool.acquire() as conn:
        # end the keep consent first, well before the readings
        await consent_store.end_consent(
            conn, uuid.UUID(keep_id), EndReason.REVOKED, now - dt.timedelta(hours=5)
        )
        insights = await consent_store.create_consent(
            conn,
            ean=ean,
            customer_id="cust-31",
            purpose="energy-insights",
            notice_version="v2",
            granted_at=now - dt.timedelta(hours=4),
        )
        times = [now - dt.timedelta(hours=3), now - dt.timedelta(hours=1)]
        await conn.execute(INSERT_SQL[E_PT15M], *interval_rows(ean, times))
        ended = await consent_store.end_consent(conn, insights["consent_id"], EndReason.REVOKED)
    assert ended["deleted_readings"] == 2
    assert await interval_times(pool) == []


async def test_bulk_change_is_caught_up_without_a_full_reload(
    seeded: tuple[Client, str, dict[str, str], str], pool: asyncpg.Pool
) -> None:
    """150 EANs in one statement NOTIFY "*" (migration 0002): the process catches up from the
    change log, reloading just those EANs."""
    a, _ean, _headers, _consent_id = seeded
    state = a.app[INGEST_KEY]
    assert state.maintainer is not None
    full_before = state.maintainer.full_reloads
    before = state.maintainer.catch_ups
    start = dt.datetime.now(UTC) - dt.timedelta(days=1)
    eans = [make_ean(1000 + i) for i in range(150)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.copy_records_to_table(
            "connections", records=[(e, "electricity") for e in eans], columns=["ean", "commodity"]
        )
        await conn.copy_records_to_table(
            "contracts",
            records=[(e, f"c{i}", start) for i, e in enumerate(eans)],
            columns=["ean", "customer_id", "contract_start"],
        )
        await conn.copy_records_to_table(
            "meter_installations",
            records=[(e, "electricity", f"BULK{i}", start) for i, e in enumerate(eans)],
            columns=["ean", "commodity", "meter_id", "installed_from"],
        )
    for _ in range(500):
        if state.maintainer.catch_ups > before and "BULK149" in state.index.electricity:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("a 150-row import should have triggered a catch-up")
    assert len(state.index) == 151
    assert state.maintainer.full_reloads == full_before
