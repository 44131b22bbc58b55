"""A level change racing an ingest write (SPEC §2: a lowered level stores nothing it forbids).

A level change UPDATEs the connection row, then deletes readings of the granularities it forbids
that were measured at or after the change. Each ingested daily, monthly and interval row takes a
share lock on its connection row and checks the level there, so whichever comes first:

* the level change first: the ingest waits for it, re-reads the level and stores only what the
  new level allows;
* the ingest first: the level change waits for the ingest's commit, then deletes what it stored.

Also: the connection row is locked before the consent row, in ingest as in a revocation, so the
two never deadlock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest

from consent.model import EndReason
from gateway.ingest.sql import E_P1D, E_P1M, E_PT15M, INSERT_SQL, flush_sql
from gateway.services import consents as consent_store
from gateway.services import levels, registry
from tests.support import make_ean

UTC = dt.UTC
TABLES = {E_PT15M: "readings_e_pt15m", E_P1D: "readings_e_p1d", E_P1M: "readings_e_p1m"}


@pytest.fixture
async def ean(pool: asyncpg.Pool) -> str:
    """A connection at level daily with an active interval consent."""
    now = dt.datetime.now(UTC)
    number = make_ean(77)
    async with pool.acquire() as conn:
        await registry.add_connection(
            conn,
            registry.ConnectionIn(
                ean=number,
                commodity="electricity",
                meter_id="E77",
                customer_id="cust-77",
                contract_start=now - dt.timedelta(days=30),
            ),
        )
        await consent_store.create_consent(
            conn,
            ean=number,
            customer_id="cust-77",
            purpose="dynamic-tariff-billing",
            notice_version="v1",
            granted_at=now - dt.timedelta(days=1),
        )
    return number


def rows(ean: str, table: int, times: list[dt.datetime]) -> list[list[Any]]:
    """Column arrays of one reading per time (each its own period) for ``table``."""
    step = {E_PT15M: 900, E_P1D: 86400, E_P1M: 86400 * 31}[table]
    columns: list[list[Any]] = [[], [], [], [], [], [], []]
    first = int(times[0].timestamp())
    for i, t in enumerate(times):
        ts = int(t.timestamp())
        start = first - first % step - 4 * i * step  # distinct periods, none after its reading
        for col, value in zip(columns, (int(ean), start, ts, 1, 2, 3, 4), strict=True):
            col.append(value)
    return columns


async def stored(pool: asyncpg.Pool) -> dict[int, list[dt.datetime]]:
    out = {}
    for table, name in TABLES.items():
        found = await pool.fetch(f"SELECT measured_at FROM {name} ORDER BY measured_at")
        out[table] = [r["measured_at"] for r in found]
    return out


async def locked_connection(conn: asyncpg.Connection, ean: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT k.contract_id, k.ean, k.ean_num, k.level, k.customer_id, n.commodity"
        " FROM contracts k JOIN connections n ON n.ean = k.ean WHERE k.ean = $1"
        " FOR UPDATE OF k",
        ean,
    )
    assert row is not None
    return row


@pytest.mark.parametrize("level", ["monthly", "none"])
async def test_level_change_first_ingest_waits_and_stores_only_what_is_allowed(
    pool: asyncpg.Pool, ean: str, level: str
) -> None:
    after = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(seconds=30)
    async with pool.acquire() as changer, pool.acquire() as ingester:
        tx = changer.transaction()
        await tx.start()
        connection = await locked_connection(changer, ean)
        await levels.change_level(
            changer, connection, level, actor="customer:cust-77", channel="portal"
        )
        tables = (E_PT15M, E_P1D, E_P1M)
        args = [col for table in tables for col in rows(ean, table, [after])]
        task = asyncio.create_task(ingester.fetch(flush_sql(tables), *args))
        await asyncio.sleep(0.3)
        assert not task.done(), "the ingest should wait for the level change's row lock"
        await tx.commit()
        ((counts),) = await task
    allowed = {"monthly": (0, 0, 1), "none": (0, 0, 0)}[level]
    assert tuple(counts) == allowed
    got = await stored(pool)
    assert (len(got[E_PT15M]), len(got[E_P1D]), len(got[E_P1M])) == allowed


@pytest.mark.parametrize("table", [E_PT15M, E_P1D, E_P1M])
async def test_ingest_first_level_change_waits_and_deletes(
    pool: asyncpg.Pool, ean: str, table: int
) -> None:
    now = dt.datetime.now(UTC).replace(microsecond=0)
    before, after = now - dt.timedelta(minutes=20), now + dt.timedelta(seconds=30)
    async with pool.acquire() as ingester, pool.acquire() as changer:
        tx = ingester.transaction()
        await tx.start()
        status = await ingester.execute(INSERT_SQL[table], *rows(ean, table, [before, after]))
        assert status == "INSERT 0 2"

        async def lower() -> dict[str, Any]:
            async with changer.transaction():
                connection = await locked_connection(changer, ean)
                return await levels.change_level(
                    changer, connection, "none", actor="customer:cust-77", channel="portal"
                )

        task = asyncio.create_task(lower())
        await asyncio.sleep(0.3)
        assert not task.done(), "the level change should wait for the ingest's share lock"
        await tx.commit()
        changed = await task
    # measured before the change: lawful then, kept; measured after it: deleted
    assert changed["deleted_readings"][TABLES[table]] == 1
    assert await pool.fetchval("SELECT level_since FROM contracts") == changed["at"]
    assert (await stored(pool))[table] == [before]


async def test_ingest_and_revocation_lock_in_the_same_order(pool: asyncpg.Pool, ean: str) -> None:
    """The revocation holds the connection row, then wants the consent row; an ingest that
    took the consent row's share lock first would deadlock with it."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    end = now - dt.timedelta(minutes=5)
    consent_id: uuid.UUID = await pool.fetchval("SELECT consent_id FROM consents")
    async with pool.acquire() as revoker, pool.acquire() as ingester:
        tx = revoker.transaction()
        await tx.start()
        await locked_connection(revoker, ean)
        late = rows(ean, E_PT15M, [end + dt.timedelta(minutes=1)])
        task = asyncio.create_task(ingester.execute(INSERT_SQL[E_PT15M], *late))
        await asyncio.sleep(0.3)
        assert not task.done()
        # now the consent row: no deadlock (deadlock_timeout is 1 s; this waits past it)
        await consent_store.end_consent(revoker, consent_id, EndReason.REVOKED, end)
        await asyncio.sleep(1.5)
        await tx.commit()
        assert await task == "INSERT 0 0"
    assert (await stored(pool))[E_PT15M] == []


async def test_a_reading_measured_while_the_customer_objected_is_not_stored_later(
    pool: asyncpg.Pool, ean: str
) -> None:
    """Level history: monthly from 3 h ago to 1 h ago, daily again since. A field device's
    spool delivers readings from all three stretches now: the ones measured while the level
    was monthly keep only their monthly row."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO level_events (ean, contract_id, level, at, channel) VALUES"
            " ($1, (SELECT contract_id FROM contracts WHERE ean = $1), $2, $3, 'portal')",
            [
                (ean, "monthly", now - dt.timedelta(hours=3)),
                (ean, "daily", now - dt.timedelta(hours=1)),
            ],
        )
        # as change_level leaves it: the current level holds since the last change
        await conn.execute(
            "UPDATE contracts SET level_since = $2 WHERE ean = $1",
            ean,
            now - dt.timedelta(hours=1),
        )
    assert await pool.fetchval("SELECT level FROM contracts") == "daily"
    before = now - dt.timedelta(hours=4)
    during = now - dt.timedelta(hours=2)
    after = now - dt.timedelta(minutes=10)
    for t in (before, during, after):
        tables = (E_PT15M, E_P1D, E_P1M)
        args = [col for table in tables for col in rows(ean, table, [t])]
        async with pool.acquire() as conn:
            await conn.fetch(flush_sql(tables), *args)
            # each stretch in its own periods: clear them for the next
            got = await stored(pool)
            await conn.execute("DELETE FROM readings_e_pt15m")
            await conn.execute("DELETE FROM readings_e_p1d")
            await conn.execute("DELETE FROM readings_e_p1m")
        counts = (len(got[E_PT15M]), len(got[E_P1D]), len(got[E_P1M]))
        assert counts == ((0, 0, 1) if t == during else (1, 1, 1)), t
