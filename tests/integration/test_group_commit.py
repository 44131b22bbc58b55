"""The group-commit writer's gather (gateway.ingest.writer.BatchWriter) on a real PostgreSQL: it
waits for requests on their way to it, and for nothing else.

The gather is long here (``max_delay_s`` of 5 s) so that a wait for it cannot hide in the
timing: a request that is answered after one commit is answered in well under a second.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from gateway.ingest.best_cache import BestCache
from gateway.ingest.sql import E_P1D, E_P1M, Batch, new_batch
from gateway.ingest.writer import BatchWriter
from gateway.settings import Settings
from gateway.storage import db

GATHER_S = 5.0
T0 = int(time.time()) - 3600


def one_row(ean: int) -> Batch:
    """A month row for ``ean`` (no such connection: the statement stores nothing, and commits)."""
    batch = new_batch()
    start = T0 - T0 % 86400
    batch[E_P1M][(ean, start)] = (ean, start, T0, 1, 2, 3, 4)
    return batch


async def test_a_lone_request_waits_for_one_commit_not_for_the_gather(pool: asyncpg.Pool) -> None:
    writer = BatchWriter(pool, BestCache(), max_delay_s=GATHER_S)
    writer.start()
    await asyncio.sleep(0.05)  # the writer idle, waiting for rows
    try:
        started = time.monotonic()
        with writer.arriving():
            pass  # authenticated, body read
        async with asyncio.timeout(2 * GATHER_S):
            await writer.write(one_row(871687140000000001))
        assert time.monotonic() - started < 1.0
        assert writer.flushes == 1
    finally:
        await writer.close()


async def test_the_gather_waits_for_a_request_on_its_way_and_flushes_both_at_once(
    pool: asyncpg.Pool,
) -> None:
    writer = BatchWriter(pool, BestCache(), max_delay_s=GATHER_S)
    writer.start()
    await asyncio.sleep(0.05)  # the writer idle, waiting for rows
    try:
        started = time.monotonic()
        with writer.arriving():  # one request still reading its body ...
            queued = asyncio.create_task(writer.write(one_row(871687140000000002)))
            await asyncio.sleep(0.2)
            # ... so the other one's rows wait for it
            assert not queued.done()
        # it queues its rows right after (no await in between, as in the handler)
        async with asyncio.timeout(2 * GATHER_S):
            await writer.write(one_row(871687140000000003))
            await queued
        assert time.monotonic() - started < 1.5
        assert writer.flushes == 1  # both requests in one commit
    finally:
        await writer.close()


async def test_small_flushes_reuse_one_generic_plan_instead_of_planning_each(
    database_url: str, gateway_settings: Settings
) -> None:
    """A flush of one telegram's day and month rows is not planned afresh each time: the
    custom plan PostgreSQL would otherwise prefer for a few rows costs a third of its CPU per
    flush (bench/ingest.py B3). One pooled connection, so the writer's session is the one read
    back afterwards (its prepared statements and their plan counts outlive the release)."""
    settings = gateway_settings.model_copy(update={"pool_min_size": 1, "pool_max_size": 1})
    pool = await db.create_pool(database_url, settings)
    try:
        writer = BatchWriter(pool, BestCache(), max_delay_s=0.0)
        writer.start()
        ean, start = 871687140000000004, T0 - T0 % 86400
        try:
            for minute in range(10):
                batch = new_batch()
                for table in (E_P1D, E_P1M):
                    batch[table][(ean, start)] = (ean, start, T0 + 60 * minute, 1, 2, 3, 4)
                await writer.write(batch)
        finally:
            await writer.close()
        assert writer.flushes == 10
        async with pool.acquire() as conn:
            plans = await conn.fetch(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE 'WITH w1 AS (INSERT INTO readings_e_p1d%'"
            )
    finally:
        await pool.close()
    assert len(plans) == 1
    assert plans[0]["custom_plans"] == 0
    assert plans[0]["generic_plans"] == 10
