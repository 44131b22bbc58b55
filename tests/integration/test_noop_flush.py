"""A flush whose rows cannot improve what is stored commits like a read (gateway.ingest.sql).

Readings the gateway's BestCache has not seen (after a restart, with several workers, with more
EANs than the cache holds) are offered to the database, which keeps the earliest reading per
period. Offering one that cannot improve its period must not take the storage rules' row locks
on the contract and the consent: a lock is a write (the locked row's xmax), so the flush would
get a transaction id, write WAL and wait for its flush at commit, for nothing stored.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.ingest.best_cache import BestCache
from gateway.ingest.sql import E_P1D, E_PT15M, Batch, new_batch
from gateway.ingest.writer import BatchWriter
from tests.support import make_ean, meter_body

Client = TestClient[web.Request, web.Application]

NOW = int(time.time())
PERIOD = NOW - NOW % 900 - 900  # the last closed quarter hour
DAY = NOW - NOW % 86400


@pytest.fixture
async def ean(gateway_client: Client, admin_headers: dict[str, str]) -> int:
    """An electricity connection with a contract since 2024 and an interval consent."""
    body = meter_body(41)
    resp = await gateway_client.post("/v1/admin/meters", json=body, headers=admin_headers)
    assert resp.status == 201, await resp.text()
    granted = dt.datetime.fromtimestamp(NOW - 86400 * 3, dt.UTC)
    resp = await gateway_client.post(
        "/v1/admin/consents",
        json={
            "ean": body["ean"],
            "customer_id": body["customer_id"],
            "purpose": "dynamic-tariff-billing",
            "notice_version": "v1",
            "granted_at": granted.isoformat(),
        },
        headers=admin_headers,
    )
    assert resp.status == 201, await resp.text()
    assert body["ean"] == make_ean(41)
    return int(body["ean"])


@pytest.fixture
async def writer(pool: asyncpg.Pool) -> AsyncIterator[BatchWriter]:
    # a fresh cache per flush below would do too: the point is what reaches the database
    w = BatchWriter(pool, BestCache(), max_delay_s=0.0)
    w.start()
    try:
        yield w
    finally:
        await w.close()


def readings(ean: int, measured_at: int) -> Batch:
    """The quarter-hour and the day row of one telegram measured at ``measured_at``."""
    batch = new_batch()
    batch[E_PT15M][(ean, PERIOD)] = (ean, PERIOD, measured_at, 1000, 2000, 0, 0)
    batch[E_P1D][(ean, DAY)] = (ean, DAY, measured_at, 1000, 2000, 0, 0)
    return batch


async def stored(pool: asyncpg.Pool, ean: int) -> dict[str, Any]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT (SELECT extract(epoch FROM measured_at)::int8 FROM readings_e_pt15m"
            "        WHERE ean = $1) AS interval_at,"
            "       (SELECT extract(epoch FROM measured_at)::int8 FROM readings_e_p1d"
            "        WHERE ean = $1) AS day_at,"
            "       (SELECT xmax::text FROM contracts WHERE ean_num = $1) AS contract_xmax,"
            "       (SELECT xmax::text FROM consents WHERE ean = $1::text) AS consent_xmax",
            ean,
        )
    assert row is not None
    return dict(row)


async def test_a_reading_that_cannot_improve_its_period_locks_nothing(
    pool: asyncpg.Pool, writer: BatchWriter, ean: int
) -> None:
    first = PERIOD + 100
    await writer.write(readings(ean, first))
    before = await stored(pool, ean)
    assert before["interval_at"] == first
    assert before["day_at"] == first
    assert before["contract_xmax"] != "0"  # the storing flush locked them (and that is right)

    # a later reading of the same periods, offered by a process that has not cached them
    fresh = BatchWriter(pool, BestCache(), max_delay_s=0.0)
    fresh.start()
    try:
        await fresh.write(readings(ean, first + 10))
    finally:
        await fresh.close()
    assert fresh.flushes == 1
    assert await stored(pool, ean) == before  # nothing stored, nothing locked

    # an earlier reading still improves both periods, under the locks
    await writer.write(readings(ean, first - 10))
    after = await stored(pool, ean)
    assert after["interval_at"] == first - 10
    assert after["day_at"] == first - 10
    assert after["contract_xmax"] != before["contract_xmax"]
