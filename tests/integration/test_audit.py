"""The audit trail on real PostgreSQL: concurrent appends keep one linear chain, the table refuses
changes, and `audit verify` finds altered, missing and re-linked rows (SPEC §2, §6)."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.storage import audit
from tests.support.audit_chain import EAN, append_n, run_verify, tamper

REPO = Path(__file__).resolve().parents[2]


async def test_empty_log_verifies(pool: asyncpg.Pool) -> None:
    result = await run_verify(pool)
    assert result.ok
    assert (result.rows, result.head_seq, result.head_hash) == (0, 0, audit.GENESIS_HASH)


async def test_concurrent_appends_from_several_connections_form_one_linear_chain(
    pool: asyncpg.Pool, database_url: str
) -> None:
    writers, per_writer = 6, 40
    conns = [await asyncpg.connect(database_url) for _ in range(writers)]  # bare: no jsonb codec
    try:

        async def writer(index: int, conn: asyncpg.Connection) -> list[int]:
            got: list[int] = []
            for i in range(per_writer):
                async with conn.transaction():
                    got.append(
                        await audit.append(
                            conn,
                            kind=audit.KIND_READ,
                            actor=f"client:{index}",
                            subject=f"cust-{index}",
                            ean=EAN,
                            detail={"i": i},
                        )
                    )
                    # keep the transaction open a moment so the writers really contend
                    await asyncio.sleep(0)
                if i % 10 == 3:
                    # a rolled-back append leaves no gap: seq is only taken under the lock
                    tx = conn.transaction()
                    await tx.start()
                    await audit.append(
                        conn, kind="data.read", actor="x", subject=None, ean=None, detail={}
                    )
                    await tx.rollback()
            return got

        results = await asyncio.gather(*(writer(i, c) for i, c in enumerate(conns)))
    finally:
        for c in conns:
            await c.close()
    total = writers * per_writer
    every_seq = sorted(s for r in results for s in r)
    assert every_seq == list(range(1, total + 1))
    for got in results:  # each writer's rows follow its own order
        assert got == sorted(got)
    rows = await pool.fetch(
        "SELECT seq, actor, detail, prev_hash, hash FROM audit_log ORDER BY seq"
    )
    assert [r["seq"] for r in rows] == every_seq
    for earlier, later in itertools.pairwise(rows):
        assert bytes(later["prev_hash"]) == bytes(earlier["hash"])
    assert bytes(rows[0]["prev_hash"]) == audit.GENESIS_HASH
    # rows of several writers interleave (they did run concurrently)
    actors = [r["actor"] for r in rows]
    assert sum(a != b for a, b in itertools.pairwise(actors)) > writers
    result = await run_verify(pool)
    assert result.ok, result.summary()
    assert (result.rows, result.head_seq) == (total, total)
    assert result.head_hash == bytes(rows[-1]["hash"])


async def test_append_commits_and_rolls_back_with_the_callers_transaction(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="change failed"):
            async with conn.transaction():
                await audit.append(
                    conn,
                    kind=audit.KIND_LEVEL_CHANGE,
                    actor="customer:cust-1",
                    subject="cust-1",
                    ean=EAN,
                    detail={"level": "monthly"},
                )
                raise RuntimeError("change failed")
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 0
        # outside a transaction the row commits on its own
        seq = await audit.append(
            conn, kind="token.create", actor="admin", subject=None, ean=None, detail={}
        )
        assert seq == 1
    assert (await run_verify(pool)).ok


async def test_stored_row_reads_back_as_appended(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 1)
        row = await conn.fetchrow("SELECT * FROM audit_log")
    assert row is not None
    assert (row["seq"], row["kind"], row["actor"], row["subject"], row["ean"]) == (
        1,
        "data.read",
        "client:c1",
        "cust-1",
        EAN,
    )
    assert row["detail"] == {"granularity": "PT15M", "rows": 0, "note": "één"}


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_log SET detail = '{}'::jsonb WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 2",
        "TRUNCATE audit_log",
    ],
)
async def test_changing_rows_is_refused_by_the_trigger(pool: asyncpg.Pool, sql: str) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 3)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(sql)
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 3
    assert (await run_verify(pool)).ok


async def test_public_has_no_update_delete_or_truncate_privilege(pool: asyncpg.Pool) -> None:
    granted = await pool.fetch(
        "SELECT privilege_type FROM information_schema.role_table_grants"
        " WHERE table_name = 'audit_log' AND grantee = 'PUBLIC'"
    )
    assert {g["privilege_type"] for g in granted} & {"UPDATE", "DELETE", "TRUNCATE"} == set()


async def test_altered_detail_is_named(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 10)
    await tamper(pool, "UPDATE audit_log SET detail = '{\"rows\": 0}'::jsonb WHERE seq = 4")
    result = await run_verify(pool)
    assert not result.ok
    assert (result.broken_seq, result.problem, result.rows) == (
        4,
        audit.Problem.CONTENT_ALTERED,
        3,
    )
    assert result.summary().startswith("broken: row 4: content altered:")


@pytest.mark.parametrize(
    "assignment",
    [
        "actor = 'client:someone-else'",
        "at = at + interval '1 microsecond'",
        "subject = NULL",
        "kind = 'data.export'",
        "seq = 100",  # renumbered to the end: row 7 is then missing
    ],
)
async def test_any_altered_field_is_detected(pool: asyncpg.Pool, assignment: str) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 8)
    await tamper(pool, f"UPDATE audit_log SET {assignment} WHERE seq = 7")
    result = await run_verify(pool)
    assert not result.ok
    assert result.broken_seq == 7
    expected = audit.Problem.ROW_MISSING if "seq" in assignment else audit.Problem.CONTENT_ALTERED
    assert result.problem == expected


async def test_rewritten_row_with_recomputed_hash_breaks_the_next_link(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 6)
        row = await conn.fetchrow("SELECT * FROM audit_log WHERE seq = 3")
        assert row is not None
        # an attacker who knows the algorithm rewrites row 3 consistently...
        forged_detail = {"granularity": "P1D", "rows": 1}
        forged_hash = audit.chain_hash(
            bytes(row["prev_hash"]),
            audit.content_bytes(
                seq=3,
                at=row["at"],
                kind=row["kind"],
                actor=row["actor"],
                subject=row["subject"],
                ean=row["ean"],
                detail=forged_detail,
            ),
        )
    await tamper(
        pool,
        'UPDATE audit_log SET detail = \'{"granularity": "P1D", "rows": 1}\'::jsonb,'
        f" hash = '\\x{forged_hash.hex()}'::bytea WHERE seq = 3",
    )
    # ...so row 3 checks out on its own, but row 4 no longer links to it
    result = await run_verify(pool)
    assert (result.ok, result.broken_seq, result.problem) == (
        False,
        4,
        audit.Problem.CHAIN_LINK_BROKEN,
    )
    assert "row 3 or this row was rewritten" in result.message


async def test_deleted_middle_row_is_named_as_a_gap(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 10)
    await tamper(pool, "DELETE FROM audit_log WHERE seq IN (5, 6)")
    result = await run_verify(pool)
    assert (result.ok, result.broken_seq, result.problem) == (False, 5, audit.Problem.ROW_MISSING)
    assert "rows 5..6 are missing (sequence jumps from 4 to 7)" in result.message


async def test_deleted_first_row_is_named(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 3)
    await tamper(pool, "DELETE FROM audit_log WHERE seq = 1")
    result = await run_verify(pool)
    assert (result.broken_seq, result.problem) == (1, audit.Problem.ROW_MISSING)


async def test_truncated_tail_needs_an_anchored_head(pool: asyncpg.Pool) -> None:
    """Honest limit: removing the LAST rows leaves a valid, shorter chain. Only a head recorded
    outside the database (``--expect-head``) shows that rows are gone."""
    async with pool.acquire() as conn:
        await append_n(conn, 10)
    anchored = await run_verify(pool)
    assert anchored.ok
    recorded_head = anchored.head_hash.hex()
    async with pool.acquire() as conn:
        await append_n(conn, 2)  # the chain grows past the recorded head: still fine
    assert (await run_verify(pool, expect_head=recorded_head)).ok

    await tamper(pool, "DELETE FROM audit_log WHERE seq >= 9")
    alone = await run_verify(pool)
    assert alone.ok  # undetectable from the chain alone
    assert (alone.rows, alone.head_seq) == (8, 8)
    result = await run_verify(pool, expect_head=recorded_head)
    assert (result.ok, result.broken_seq, result.problem) == (
        False,
        9,
        audit.Problem.HEAD_NOT_FOUND,
    )
    # appending afterwards links to the shortened head; the anchor still catches it
    async with pool.acquire() as conn:
        await append_n(conn, 3)
    assert (await run_verify(pool)).ok
    assert not (await run_verify(pool, expect_head=recorded_head)).ok


async def test_verify_walks_more_rows_than_one_batch(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "_VERIFY_BATCH", 4)
    async with pool.acquire() as conn:
        await append_n(conn, 11)
    assert (await run_verify(pool)).summary().startswith("ok: 11 rows, head ")
    await tamper(pool, "DELETE FROM audit_log WHERE seq = 9")
    result = await run_verify(pool)
    assert (result.broken_seq, result.problem) == (9, audit.Problem.ROW_MISSING)


async def test_bad_kind_and_detail_are_refused_before_anything_is_written(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(ValueError, match="lower-case dotted name"):
            await audit.append(conn, kind="Data Read", actor="a", subject=None, ean=None, detail={})
        with pytest.raises(TypeError, match="floats"):
            await audit.append(
                conn, kind="data.read", actor="a", subject=None, ean=None, detail={"kw": 1.2}
            )
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 0


# ---------------------------------------------------------------------------------------------
# the CLI, as a subprocess


def cli_command() -> list[str]:
    """``python -m gateway``, as an auditor would run it."""
    return [sys.executable, "-m", "gateway"]


async def run_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERPOORT_")}
    env["DATABASE_URL"] = database_url
    proc = await asyncio.create_subprocess_exec(
        *cli_command(),
        "audit",
        "verify",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_verify_ok_then_broken(pool: asyncpg.Pool, database_url: str) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 5)
    head = (await run_verify(pool)).head_hash.hex()
    code, out, err = await run_cli(database_url)
    assert (code, out) == (0, f"ok: 5 rows, head {head}\n"), err
    code, out, err = await run_cli(database_url, "--expect-head", head)
    assert code == 0, err

    await tamper(pool, "UPDATE audit_log SET actor = 'admin' WHERE seq = 3")
    code, out, err = await run_cli(database_url)
    assert code == 1
    assert out.startswith("broken: row 3: content altered: ")
    assert "fails verification" in err


async def test_cli_names_a_gap_and_a_missing_anchored_head(
    pool: asyncpg.Pool, database_url: str
) -> None:
    async with pool.acquire() as conn:
        await append_n(conn, 6)
    head = (await run_verify(pool)).head_hash.hex()
    await tamper(pool, "DELETE FROM audit_log WHERE seq = 6")
    code, out, _ = await run_cli(database_url)
    assert (code, out.startswith("ok: 5 rows, head ")) == (0, True)
    code, out, _ = await run_cli(database_url, "--expect-head", head)
    assert code == 1
    assert out.startswith("broken: row 6: expected head not found: ")
    await tamper(pool, "DELETE FROM audit_log WHERE seq = 2")
    code, out, _ = await run_cli(database_url)
    assert code == 1
    assert out.startswith("broken: row 2: row missing: row 2 is missing")


async def test_cli_refuses_a_malformed_expected_head(database_url: str) -> None:
    code, out, err = await run_cli(database_url, "--expect-head", "nothex")
    assert (code, out) == (2, "")  # a usage error, before any database work
    assert "argument --expect-head" in err and "not a hex string" in err and "64 hex" in err


async def test_awkward_details_survive_the_jsonb_round_trip(pool: asyncpg.Pool) -> None:
    details: list[dict[str, Any]] = [
        {"text": 'line\nbreak\ttab "quote" \\ back \u2028 \U0001f600 é', "": ""},
        {"big": 2**70, "neg": -(2**63), "nested": {"b": [1, [2, {"c": None}]], "a": False}},
        {"order": {"z": 1, "a": 2, "é": 3, "Z": 4}},
    ]
    async with pool.acquire() as conn:
        for detail in details:
            await audit.append(
                conn,
                kind=audit.KIND_EXPORT,
                actor="customer:c",
                subject="c",
                ean=None,
                detail=detail,
            )
    result = await run_verify(pool)
    assert result.ok, result.summary()
    assert result.rows == 3
