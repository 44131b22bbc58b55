"""Migrations: applied in order, recorded, idempotent, safe to run concurrently."""

from __future__ import annotations

import asyncio

from gateway.storage import db
from tests.conftest import with_database


async def test_migrations_apply_once_and_rerun_is_a_no_op(postgres_server_url: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(postgres_server_url)
    name = "meterpoort_mig_test"
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(postgres_server_url, name)
        conns = [await db.connect(url) for _ in range(3)]
        try:
            # three concurrent runs: the advisory lock lets exactly one apply each migration
            results = await asyncio.gather(*(db.migrate(c) for c in conns))
            expected = [m.version for m in db.load_migrations()]
            assert sorted(results, key=len)[-1] == expected
            assert sum(len(r) for r in results) == len(expected)
            assert await db.migrate(conns[0]) == []
            recorded = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY 1")
            assert [r["version"] for r in recorded] == expected
        finally:
            for c in conns:
                await c.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_0011_turns_each_connection_into_a_contract_and_an_installation(
    postgres_server_url: str,
) -> None:
    """Each connection row of the old model becomes a connection, one contract and one meter
    installation, losing nothing: customer, window, end reason, level and its history,
    consents; a meter reused on another EAN after a move-out stays on one EAN at a time."""
    import datetime as dt

    import asyncpg

    admin = await asyncpg.connect(postgres_server_url)
    name = "meterpoort_mig_0011"
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await db.connect(with_database(postgres_server_url, name))
        try:
            await conn.execute(
                "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for m in db.load_migrations():
                if m.version < "0011":
                    await conn.execute(m.sql)
                    await conn.execute("INSERT INTO schema_migrations VALUES ($1)", m.version)
            t = [dt.datetime(2024, month, 1, tzinfo=dt.UTC) for month in range(1, 13)]
            old = (
                "INSERT INTO connections (ean, commodity, meter_id, customer_id, contract_start,"
                " contract_end, end_reason, level, level_since)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            )
            # A moved out of EAN1 in March; the same gas meter then went to EAN2 (old model)
            await conn.execute(
                old, "1" * 18, "gas", "G1", "anna", t[0], t[2], "move-out", "monthly", t[1]
            )
            await conn.execute(old, "2" * 18, "gas", "G1", "bert", t[3], None, None, "daily", None)
            await conn.execute(
                old, "3" * 18, "electricity", "E1", "carl", t[0], None, None, "daily", None
            )
            await conn.execute(
                "INSERT INTO level_events (ean, level, at, channel)"
                " VALUES ($1, 'monthly', $2, 'portal')",
                "1" * 18,
                t[1],
            )
            await conn.execute(
                "INSERT INTO consents (ean, consent_id, customer_id, purpose, notice_version,"
                " channel, granted_at) VALUES ($1, gen_random_uuid(), 'carl', 'p', 'v1',"
                " 'api', $2)",
                "3" * 18,
                t[4],
            )
            assert await db.migrate(conn) == [
                m.version for m in db.load_migrations() if m.version >= "0011"
            ]
            contracts = await conn.fetch(
                "SELECT ean, customer_id, contract_start, contract_end, end_reason, level,"
                " level_since FROM contracts ORDER BY ean"
            )
            assert [tuple(r) for r in contracts] == [
                ("1" * 18, "anna", t[0], t[2], "move-out", "monthly", t[1]),
                ("2" * 18, "bert", t[3], None, None, "daily", None),
                ("3" * 18, "carl", t[0], None, None, "daily", None),
            ]
            meters = await conn.fetch(
                "SELECT ean, commodity, meter_id, installed_from, installed_until"
                " FROM meter_installations ORDER BY ean"
            )
            assert [tuple(r) for r in meters] == [
                ("1" * 18, "gas", "G1", t[0], t[3]),  # until the meter went to EAN2
                ("2" * 18, "gas", "G1", t[3], None),
                ("3" * 18, "electricity", "E1", t[0], None),
            ]
            assert await conn.fetchval("SELECT count(*) FROM connections") == 3
            # history and consents name their contract
            joined = await conn.fetchval(
                "SELECT count(*) FROM level_events l JOIN contracts k"
                " ON k.contract_id = l.contract_id AND k.ean = l.ean"
            )
            assert joined == 1
            owner = await conn.fetchval(
                "SELECT k.customer_id FROM consents c JOIN contracts k"
                " ON k.contract_id = c.contract_id AND k.ean = c.ean"
            )
            assert owner == "carl"
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
