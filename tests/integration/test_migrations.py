"""Migrations: applied in order, recorded with their checksum, idempotent, safe to run
concurrently; a file edited after it was applied stops migrate and serve; ``migrate --status``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.errors import ConfigurationError
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


# ---------------------------------------------------------------------------------------------
# checksums and `migrate --status`


@contextlib.asynccontextmanager
async def _fresh_database(server_url: str, name: str) -> AsyncIterator[str]:
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _gateway(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERPOORT_")}
    env["DATABASE_URL"] = database_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _lines(out: str) -> dict[str, str]:
    """version → state of `migrate --status` output (the summary line left out)."""
    rows = [line.split() for line in out.splitlines()[:-1]]
    return {row[1]: row[0] for row in rows}


async def test_status_shows_pending_then_applied_and_catches_a_changed_file(
    postgres_server_url: str,
) -> None:
    shipped = db.load_migrations()
    versions = [m.version for m in shipped]
    async with _fresh_database(postgres_server_url, "meterpoort_mig_status") as url:
        # an empty database: everything pending (exit 3), nothing created by looking
        code, out, err = await _gateway(url, "migrate", "--status")
        assert code == 3, err
        assert _lines(out) == dict.fromkeys(versions, "pending")
        assert out.splitlines()[-1] == f"0 applied, {len(versions)} pending, 0 changed, 0 unknown"
        conn = await db.connect(url)
        try:
            assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None

            # an older release applied the first migrations, before checksums were recorded
            await conn.execute(
                "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for m in shipped[:3]:
                await conn.execute(m.sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1)", m.version)
            code, out, err = await _gateway(url, "migrate", "--status")
            assert code == 3, err
            states = _lines(out)
            assert [states[v] for v in versions[:3]] == ["applied"] * 3
            assert set(states[v] for v in versions[3:]) == {"pending"}
            assert out.count("checksum not recorded yet") == 3

            # migrate applies the rest and records every checksum (the old rows' from the files)
            code, out, err = await _gateway(url, "migrate")
            assert code == 0, err
            assert json.loads(out) == {"applied": versions[3:]}
            recorded = dict(await conn.fetch("SELECT version, checksum FROM schema_migrations"))
            assert recorded == {
                m.version: hashlib.sha256(m.sql.encode()).hexdigest() for m in shipped
            }
            code, out, err = await _gateway(url, "migrate", "--status")
            assert code == 0, err
            assert _lines(out) == dict.fromkeys(versions, "applied")
            assert "not recorded" not in out

            # a migration a newer release applied: shown, not an error (rolling upgrades)
            await conn.execute("INSERT INTO schema_migrations VALUES ('9999_from_the_future')")
            code, out, _ = await _gateway(url, "migrate", "--status")
            assert code == 0 and _lines(out)["9999_from_the_future"] == "unknown"

            # 0003's file is not the text that was applied any more (recorded: the old text's
            # checksum); and 0012 is pending again, to see that nothing is applied
            edited = shipped[2]
            old_text = edited.sql.replace("CREATE", "create", 1)
            await conn.execute(
                "UPDATE schema_migrations SET checksum = $2 WHERE version = $1",
                edited.version,
                hashlib.sha256(old_text.encode()).hexdigest(),
            )
            await conn.execute("DELETE FROM schema_migrations WHERE version = $1", versions[-1])
            code, out, err = await _gateway(url, "migrate", "--status")
            assert code == 1, err
            assert _lines(out)[edited.version] == "changed"
            assert _lines(out)[versions[-1]] == "pending"
            assert "migrate refuses to run" in out

            file = f"gateway/storage/migrations/{edited.version}.sql"
            for command in (("migrate",), ("serve", "--port", "0")):
                code, out, err = await _gateway(url, *command)
                assert code == 1, (command, err)
                assert f"changed since they were applied: {file}" in err
                assert "Traceback" not in err
            with pytest.raises(ConfigurationError, match=edited.version):
                await db.migrate(conn)
            pending = "SELECT count(*) FROM schema_migrations WHERE version = $1"
            assert await conn.fetchval(pending, versions[-1]) == 0  # nothing was applied

            # the documented way out once the database matches the file: clear the checksum
            await conn.execute(
                "UPDATE schema_migrations SET checksum = NULL WHERE version = $1", edited.version
            )
            await conn.execute("INSERT INTO schema_migrations VALUES ($1)", versions[-1])
            assert await db.migrate(conn) == []
            state = (await db.migration_status(conn))[2]
            assert (state.version, state.state, state.checked) == (edited.version, "applied", True)
        finally:
            await conn.close()


def test_status_of_a_data_dir_without_a_database_is_an_error(tmp_path: Path) -> None:
    typo = tmp_path / "no" / "such"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "migrate", "--status", "--data-dir", str(typo)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 1 and f"no database in {typo}" in done.stderr
    assert not (tmp_path / "no").exists()


# ---------------------------------------------------------------------------------------------
# 0014: int4 electricity registers

_E_REGISTERS = ("import_t1_wh", "import_t2_wh", "export_t1_wh", "export_t2_wh")
#: docs/operations.md's query for the rows that stop 0014 (read from the guide: it stays true)
_OUT_OF_RANGE_QUERY = re.search(
    r"```sql\n-- before migration 0014: [^\n]*\n(.*?)```",
    (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text(encoding="utf-8"),
    re.DOTALL,
)[1]  # type: ignore[index]


async def _database_at(url: str, below: str) -> asyncpg.Connection:
    """A connection to ``url`` with every migration before ``below`` applied (as a release
    that shipped only those would have left it)."""
    conn = await db.connect(url)
    await conn.execute(
        "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for m in db.load_migrations():
        if m.version < below:
            await conn.execute(m.sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1)", m.version)
    return conn


async def _column_types(conn: asyncpg.Connection, column: str) -> dict[str, str]:
    """relation → type of ``column`` for every reading table and partition that has it."""
    rows = await conn.fetch(
        "SELECT c.relname, format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid WHERE a.attname = $1 AND NOT a.attisdropped"
        " AND c.relkind IN ('r', 'p') AND c.relname LIKE 'readings\\_%'",
        column,
    )
    return {r["relname"]: r["type"] for r in rows}


async def test_0014_makes_the_electricity_registers_int4_and_keeps_every_value(
    postgres_server_url: str,
) -> None:
    """Upgrading a 0013 database with readings in monthly, yearly and DEFAULT partitions: every
    value comes through unchanged (NULL registers of totals-only meters, DSMR's largest
    register, int4's largest), on the parents and every partition the registers are int4, gas
    keeps bigint, a partition created afterwards is int4 too, and an electricity row takes
    16 bytes less heap (72 instead of 88: no padding)."""
    import datetime as dt

    async with _fresh_database(postgres_server_url, "meterpoort_mig_0014") as url:
        conn = await _database_at(url, "0014")
        try:
            start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
            await db.ensure_partitions(conn, start, start + dt.timedelta(days=31))
            values = [
                (1, 2, 3, 4),
                (999_999_999, 0, 999_999_999, 0),  # DSMR F9(3,3): 999,999.999 kWh
                (2**31 - 1, 2**31 - 1, 2**31 - 1, 2**31 - 1),
                (123_456, None, 7, None),  # a totals-only meter
            ]
            q = dt.timedelta(minutes=15)
            inserted: dict[str, list[tuple[Any, ...]]] = {}
            for table, first in (
                ("readings_e_pt15m", start),
                ("readings_e_pt15m", dt.datetime(2031, 6, 1, tzinfo=dt.UTC)),  # DEFAULT
                ("readings_e_p1d", start),
                ("readings_e_p1m", start),
            ):
                rows = [
                    (871687140000000001 + i, first + i * q, first + i * q + q / 3, *v)
                    for i, v in enumerate(values)
                ]
                await conn.executemany(
                    f"INSERT INTO {table} (ean, period_start, measured_at,"
                    f" {', '.join(_E_REGISTERS)}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    rows,
                )
                inserted.setdefault(table, []).extend(rows)
            await conn.execute(
                "INSERT INTO readings_g_pt1h (ean, period_start, measured_at, volume_dm3)"
                " VALUES (871687140000000009, $1, $1, 99999999)",
                start,
            )
            # a month of one meter's quarters, to see what a row costs in the heap
            bulk = "readings_e_pt15m_y2025m01"
            await conn.execute(
                f"INSERT INTO {bulk} (ean, period_start, measured_at, {', '.join(_E_REGISTERS)})"
                " SELECT 871687140000000100, t, t, 4000000, 3000000, 20000, 10000"
                " FROM generate_series($1::timestamptz, $1 + interval '30 days', interval"
                " '15 minutes') t",
                start + dt.timedelta(hours=1),
            )
            # the bytes of one stored row (its heap tuple, header and alignment included):
            # the relation's size would also count the empty pages PostgreSQL adds ahead while
            # it rewrites a table (up to 64 at the end: much of a small table's size)
            per_row = (
                f"SELECT array_agg(DISTINCT pg_column_size(r.*)) FROM {bulk} r"
                " WHERE ean = 871687140000000100"
            )
            heap_before = await conn.fetchval(per_row)
            checksum = "SELECT md5(string_agg(r::text, ',' ORDER BY r::text)) FROM {} r"
            before = {
                t: await conn.fetchval(checksum.format(t))
                for t in ("readings_e_pt15m", "readings_e_p1d", "readings_e_p1m")
            }

            assert await db.migrate(conn) == [
                m.version for m in db.load_migrations() if m.version >= "0014"
            ]

            for table, rows in inserted.items():
                got = await conn.fetch(
                    f"SELECT ean, period_start, measured_at, {', '.join(_E_REGISTERS)}"
                    f" FROM {table} WHERE ean < 871687140000000100"
                )
                assert set(rows) <= {tuple(r) for r in got}, table
            for table, digest in before.items():
                assert await conn.fetchval(checksum.format(table)) == digest, table
            for column in _E_REGISTERS:
                types = await _column_types(conn, column)
                assert "readings_e_pt15m_default" in types and bulk in types
                assert "readings_e_p1d_y2025" in types and "readings_e_p1m_default" in types
                assert set(types.values()) == {"integer"}, types
            assert set((await _column_types(conn, "volume_dm3")).values()) == {"bigint"}
            assert await conn.fetchval("SELECT volume_dm3 FROM readings_g_pt1h") == 99_999_999

            # a partition created after the upgrade copies the parent's columns
            await db.ensure_partitions(
                conn, start.replace(year=2026), start.replace(year=2026, day=2)
            )
            later = await _column_types(conn, "export_t2_wh")
            assert later["readings_e_pt15m_y2026m01"] == "integer"
            assert later["readings_e_p1d_y2026"] == "integer"

            heap_after = await conn.fetchval(per_row)
            assert (heap_before, heap_after) == ([88], [72])
        finally:
            await conn.close()


async def test_0014_fails_whole_on_a_register_beyond_int4(postgres_server_url: str) -> None:
    """A stored register above the int4 range (ingest took up to 18 digits before 0014): the
    migration stops with PostgreSQL's out-of-range error and changes nothing; the operator
    finds the rows as docs/operations.md says, deals with them and runs it again."""
    import datetime as dt

    async with _fresh_database(postgres_server_url, "meterpoort_mig_0014_range") as url:
        conn = await _database_at(url, "0014")
        try:
            at = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
            await conn.execute(
                "INSERT INTO readings_e_p1m (ean, period_start, measured_at, import_t1_wh)"
                " VALUES (871687140000000001, $1, $1, 5), (871687140000000002, $1, $1, $2)",
                at,
                2**31,
            )
            with pytest.raises(asyncpg.NumericValueOutOfRangeError):
                await db.migrate(conn)
            assert await conn.fetchval("SELECT max(version) FROM schema_migrations") < "0014"
            assert set((await _column_types(conn, "import_t1_wh")).values()) == {"bigint"}
            assert await conn.fetchval("SELECT to_regclass('reading_compactions')") is None
            # the query docs/operations.md gives finds it
            found = await conn.fetch(_OUT_OF_RANGE_QUERY)
            assert [tuple(r) for r in found] == [("readings_e_p1m", 871687140000000002, at)]
            await conn.execute("DELETE FROM readings_e_p1m WHERE import_t1_wh > 2147483647")
            assert await db.migrate(conn) == [
                m.version for m in db.load_migrations() if m.version >= "0014"
            ]
        finally:
            await conn.close()
