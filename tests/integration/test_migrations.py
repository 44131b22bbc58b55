"""Migrations: applied in order, recorded with their checksum, idempotent, safe to run
concurrently; a file edited after it was applied stops migrate and serve; ``migrate --status``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

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
