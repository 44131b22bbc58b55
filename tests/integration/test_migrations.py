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
