"""The audit log as the audit tests drive it: appends of access rows, tampering as a superuser
could (the append-only triggers disabled), and ``audit.verify``."""

from __future__ import annotations

import asyncpg

from gateway.storage import audit

EAN = "871687140000000001"


async def append_n(conn: asyncpg.Connection, n: int, *, actor: str = "client:c1") -> list[int]:
    seqs = []
    for i in range(n):
        async with conn.transaction():
            seqs.append(
                await audit.append(
                    conn,
                    kind=audit.KIND_READ,
                    actor=actor,
                    subject="cust-1",
                    ean=EAN,
                    detail={"granularity": "PT15M", "rows": i, "note": "één"},
                )
            )
    return seqs


async def tamper(pool: asyncpg.Pool, sql: str) -> None:
    """Run ``sql`` with the append-only triggers disabled, as a superuser could."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await conn.execute(sql)
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


async def run_verify(pool: asyncpg.Pool, expect_head: str | None = None) -> audit.VerifyResult:
    async with pool.acquire() as conn:
        return await audit.verify(conn, expect_head=expect_head)
