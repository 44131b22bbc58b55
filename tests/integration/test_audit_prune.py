"""Removing the oldest audit rows (`audit prune`, retention's ``audit_years``) keeps the rest of
the chain verifiable: the removal is announced by an ``audit.prune`` row first, and a removal
nobody announced, a tampered row or a forged start is still caught."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from consent.retention import RetentionPolicy
from gateway.jobs import retention
from gateway.storage import audit
from tests.support.audit_chain import append_n, run_verify, tamper

REPO = Path(__file__).resolve().parents[2]


async def mark(pool: asyncpg.Pool) -> dt.datetime:
    """A moment strictly between the rows appended before and after it."""
    await asyncio.sleep(0.01)
    moment: dt.datetime = await pool.fetchval("SELECT clock_timestamp()")
    await asyncio.sleep(0.01)
    return moment


async def seqs(pool: asyncpg.Pool) -> list[int]:
    return [r["seq"] for r in await pool.fetch("SELECT seq FROM audit_log ORDER BY seq")]


async def test_prune_announces_then_removes_and_verify_still_checks_the_rest(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 10)
    cut = await mark(pool)
    async with pool.acquire() as conn:
        await append_n(conn, 5)
        result = await audit.prune(conn, cut, actor="admin", batch_rows=3)
    assert (result.rows, result.first_seq, result.through_seq) == (10, 1, 10)
    assert result.announced_seq == 16
    assert await seqs(pool) == list(range(11, 17))
    announcement = await pool.fetchrow("SELECT kind, actor, detail FROM audit_log WHERE seq = 16")
    assert announcement is not None and announcement["kind"] == audit.KIND_PRUNE
    assert announcement["detail"]["through_seq"] == 10 and announcement["detail"]["rows"] == 10

    checked = await run_verify(pool)
    assert checked.ok and checked.rows == 6 and checked.pruned_through == 10
    assert checked.summary().endswith("; rows 1..10 pruned")

    # a second prune later on: the chain keeps verifying from the newest announcement
    cut2 = await mark(pool)
    async with pool.acquire() as conn:
        await append_n(conn, 2)
        again = await audit.prune(conn, cut2, actor="admin")
    assert (again.first_seq, again.through_seq, again.rows) == (11, 16, 6)
    checked = await run_verify(pool)
    assert checked.ok and checked.pruned_through == 16 and checked.rows == 3


async def test_the_rest_is_still_checked_after_a_prune(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 6)
    cut = await mark(pool)
    async with pool.acquire() as conn:
        await append_n(conn, 4)
        await audit.prune(conn, cut, actor="admin")
    await tamper(pool, "UPDATE audit_log SET actor = 'admin' WHERE seq = 8")
    result = await run_verify(pool)
    assert (result.ok, result.broken_seq, result.problem) == (
        False,
        8,
        audit.Problem.CONTENT_ALTERED,
    )


async def test_the_first_remaining_row_must_link_to_the_announced_hash(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 6)
    cut = await mark(pool)
    async with pool.acquire() as conn:
        await append_n(conn, 3)
        await audit.prune(conn, cut, actor="admin")
    # one more row removed at the front, as if the announcement covered it: the gap shows
    await tamper(pool, "DELETE FROM audit_log WHERE seq = 7")
    result = await run_verify(pool)
    assert not result.ok and result.broken_seq == 1
    assert result.problem == audit.Problem.ROW_MISSING
    assert "no audit.prune row announces their removal" in result.message


async def test_an_unannounced_removal_is_a_missing_row_and_the_trigger_refuses_it(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 5)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit_log WHERE seq <= 2")
    await tamper(pool, "DELETE FROM audit_log WHERE seq <= 2")
    result = await run_verify(pool)
    assert (result.broken_seq, result.problem) == (1, audit.Problem.ROW_MISSING)
    assert "rows 1..2 are missing" in result.message


async def test_a_removal_cut_short_still_verifies_up_to_the_announced_hash(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 8)
    cut = await mark(pool)
    async with pool.acquire() as conn:
        await append_n(conn, 2)
        # the announcement only (as if the process died before deleting), then part of the rows
        dry = await audit.prune(conn, cut, actor="admin", dry_run=True)
        assert (dry.rows, dry.through_seq, dry.announced_seq) == (8, 8, None)
        assert await seqs(pool) == list(range(1, 11))
        head = await conn.fetchrow("SELECT hash FROM audit_log WHERE seq = 8")
        assert head is not None
        await audit.append(
            conn,
            kind=audit.KIND_PRUNE,
            actor="admin",
            subject=None,
            ean=None,
            detail={"through_seq": 8, "through_hash": bytes(head["hash"]).hex(), "rows": 8},
        )
        await conn.execute("DELETE FROM audit_log WHERE seq <= 3")  # allowed: announced
    result = await run_verify(pool)
    assert result.ok and result.pruned_through == 3 and result.rows == 8

    # An attacker rewrites row 5 and re-hashes everything after it, the announcement included
    # (its detail kept): the chain is consistent again, but row 8 no longer has the hash the
    # announcement recorded for it.
    await rehash_from(pool, 4, actor_of={5: "client:someone-else"})
    result = await run_verify(pool)
    assert (result.ok, result.broken_seq, result.problem) == (
        False,
        8,
        audit.Problem.CONTENT_ALTERED,
    )
    assert "is not the one the audit.prune row recorded" in result.message


async def rehash_from(pool: asyncpg.Pool, start: int, actor_of: dict[int, str]) -> None:
    """Rewrite rows ``start``.. with new actors where given, recomputing every hash and link
    (triggers off, as a superuser could)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT seq, at, kind, actor, subject, ean, detail::text AS detail, prev_hash"
            " FROM audit_log WHERE seq >= $1 ORDER BY seq",
            start,
        )
        prev = bytes(rows[0]["prev_hash"])
        updates = []
        for row in rows:
            actor = actor_of.get(row["seq"], row["actor"])
            digest = audit.chain_hash(
                prev,
                audit.content_bytes(
                    seq=row["seq"],
                    at=row["at"],
                    kind=row["kind"],
                    actor=actor,
                    subject=row["subject"],
                    ean=row["ean"],
                    detail=json.loads(row["detail"]),
                ),
            )
            updates.append((row["seq"], actor, prev, digest))
            prev = digest
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await conn.executemany(
            "UPDATE audit_log SET actor = $2, prev_hash = $3, hash = $4 WHERE seq = $1", updates
        )
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


async def test_an_anchor_at_the_announced_hash_still_counts(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 4)
    anchor = (await run_verify(pool)).head_hash.hex()
    cut = await mark(pool)
    async with pool.acquire() as conn:
        await audit.prune(conn, cut, actor="admin")
    assert (await run_verify(pool, expect_head=anchor)).ok


async def test_retention_prunes_only_when_audit_years_is_set(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 3)
        now = dt.datetime.now(dt.UTC)
        # off by default: nothing removed, even ten years on
        later = now.replace(year=now.year + 10)
        report = await retention.run_retention(conn, later, RetentionPolicy())
        assert report.audit_rows_pruned == 0
        present = await seqs(pool)  # the three rows, and the run's own row
        assert present[:3] == [1, 2, 3]
        report = await retention.run_retention(conn, later, RetentionPolicy(audit_years=8))
    # everything recorded before later - 8 years (all of it) is gone, announced
    assert report.audit_rows_pruned == len(present)
    assert report.as_json()["audit_rows_pruned"] == len(present)
    kinds = [r["kind"] for r in await pool.fetch("SELECT kind FROM audit_log ORDER BY seq")]
    assert kinds == [audit.KIND_PRUNE, retention.KIND_RETENTION_RUN]
    assert (await run_verify(pool)).ok


async def run_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "audit",
        "prune",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_prune_dry_run_then_run(pool: asyncpg.Pool, database_url: str) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 4)
    cut = (await mark(pool)).isoformat()
    code, out, err = await run_cli(database_url, "--before", cut, "--dry-run")
    assert (code, out) == (0, "would remove 4 rows 1..4\n"), err
    assert await seqs(pool) == [1, 2, 3, 4]
    code, out, err = await run_cli(database_url, "--before", cut)
    assert (code, out) == (0, "removed 4 rows 1..4 (announced by row 5)\n"), err
    assert await seqs(pool) == [5]
    code, out, err = await run_cli(database_url, "--before", "2999-01-01")
    assert code != 0 and "in the future" in err
