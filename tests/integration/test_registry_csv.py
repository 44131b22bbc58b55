"""Registry CSV import (CLI path and library): all-or-nothing, every bad row reported, fast."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from gateway.errors import CsvImportError
from gateway.services.registry_csv import import_connections_csv
from gateway.storage import db
from tests.support import make_ean

TZ = ZoneInfo("Europe/Amsterdam")
HEADER = "ean,commodity,meter_id,customer_id,contract_start,contract_end\n"


def good_rows(count: int, first: int = 0) -> list[str]:
    return [
        f"{make_ean(n)},{'gas' if n % 3 == 0 else 'electricity'},M{n:012d},cust-{n % 7919},"
        f"2024-01-01,\n"
        for n in range(first, first + count)
    ]


async def test_import_100k_rows(pool: asyncpg.Pool, database_url: str) -> None:
    text = HEADER + "".join(good_rows(100_000))
    started = time.perf_counter()
    # a connection of its own, as the CLI has: the pool's statements are bounded by
    # db_command_timeout_s (meant for requests), a bulk import is not
    conn = await db.connect(database_url)
    try:
        count = await import_connections_csv(conn, text, TZ)
    finally:
        await conn.close()
    elapsed = time.perf_counter() - started
    print(f"\nimported 100 000 connections in {elapsed:.2f} s")
    assert count == 100_000
    assert await pool.fetchval("SELECT count(*) FROM connections") == 100_000
    row = await pool.fetchrow(
        "SELECT n.ean_num, n.commodity, m.meter_id, k.contract_start FROM connections n"
        " JOIN contracts k USING (ean) JOIN meter_installations m USING (ean) WHERE n.ean = $1",
        make_ean(12),
    )
    assert row is not None
    assert row["commodity"] == "gas" and row["meter_id"] == "M000000000012"
    # a date means local midnight
    assert row["contract_start"] == dt.datetime(2023, 12, 31, 23, tzinfo=dt.UTC)
    assert row["ean_num"] == int(make_ean(12))


async def test_every_bad_row_is_reported_and_nothing_imported(pool: asyncpg.Pool) -> None:
    rows = good_rows(50)
    rows[3] = f"{make_ean(3)[:-1]}9,electricity,MX3,c,2024-01-01,\n"  # check digit (line 5)
    rows[10] = f"{make_ean(10)},water,MX10,c,2024-01-01,\n"  # commodity (line 12)
    rows[20] = f"{make_ean(20)},gas,MX20,c,2024-01-01T00:00:00,\n"  # naive time (line 22)
    rows[30] = f"{make_ean(30)},gas,MX30,c\n"  # too few fields (line 32)
    rows[40] = rows[41].replace("M0000", "MDUP0")  # EAN repeated (line 42 vs 43)
    rows[45] = f"{make_ean(45)},gas,MX45,c,2024-02-01,2024-01-01\n"  # end before start (line 47)
    rows[47] = (
        f"{make_ean(47)},electricity,{rows[46].split(',')[2]},c,2024-01-01,\n"  # meter twice (49)
    )
    text = HEADER + "".join(rows)
    async with pool.acquire() as conn:
        with pytest.raises(CsvImportError) as info:
            await import_connections_csv(conn, text, TZ)
    found = {(e.loc[1], e.loc[2]) for e in info.value.errors}
    assert found == {
        (5, "ean"),
        (12, "commodity"),
        (22, "contract_start"),
        (32, "row"),
        (43, "ean"),
        (47, "contract_end"),
        (49, "meter_id"),
    }
    assert all(e.msg for e in info.value.errors)
    assert "nothing imported" in info.value.detail
    assert await pool.fetchval("SELECT count(*) FROM connections") == 0


async def test_rows_clashing_with_the_database_are_reported(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await import_connections_csv(conn, HEADER + "".join(good_rows(10)), TZ) == 10
        clashing = good_rows(5, first=100)
        clashing[1] = good_rows(1, first=4)[0]  # EAN already registered (line 3)
        clashing[3] = clashing[3].replace("M000000000103", "M000000000007")  # meter in use (5)
        with pytest.raises(CsvImportError) as info:
            await import_connections_csv(conn, HEADER + "".join(clashing), TZ)
    assert {(e.loc[1], e.loc[2]) for e in info.value.errors} == {(3, "ean"), (5, "meter_id")}
    assert await pool.fetchval("SELECT count(*) FROM connections") == 10


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty file"),
        ("ean,commodity\n", "missing columns"),
        (HEADER.strip() + ",colour\n", "unknown columns"),
    ],
)
async def test_bad_header(pool: asyncpg.Pool, text: str, why: str) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(CsvImportError) as info:
            await import_connections_csv(conn, text, TZ)
    assert why in info.value.errors[0].msg and info.value.errors[0].loc[1] == 1


def _cli(args: list[str], database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_import_and_admin_commands(database_url: str, tmp_path: Path) -> None:
    import json

    good = tmp_path / "good.csv"
    good.write_text(HEADER + "".join(good_rows(1000)))
    done = _cli(["admin", "meters", "import", str(good)], database_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["imported"] == 1000

    bad = tmp_path / "bad.csv"
    rows = good_rows(5, first=2000)
    rows[2] = "123,electricity,X,c,2024-01-01,\n"
    bad.write_text(HEADER + "".join(rows))
    failed = _cli(["admin", "meters", "import", str(bad)], database_url)
    assert failed.returncode == 1 and failed.stdout == ""
    assert "line 4 ean: an EAN is exactly 18 digits" in failed.stderr

    ean = make_ean(5000)
    added = _cli(
        [
            "admin",
            "meters",
            "add",
            "--ean",
            ean,
            "--commodity",
            "electricity",
            "--meter-id",
            "E5000",
            "--customer-id",
            "c-5000",
            "--contract-start",
            "2024-01-01",
        ],
        database_url,
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["ean"] == ean
    dup = _cli(
        [
            "admin",
            "meters",
            "add",
            "--ean",
            ean,
            "--commodity",
            "electricity",
            "--meter-id",
            "E5001",
            "--customer-id",
            "c-5000",
            "--contract-start",
            "2024-01-01",
        ],
        database_url,
    )
    assert dup.returncode == 1 and "already registered" in dup.stderr

    ended = _cli(
        [
            "admin",
            "meters",
            "end",
            "--ean",
            ean,
            "--at",
            "2024-06-01T00:00:00Z",
            "--reason",
            "move-out",
        ],
        database_url,
    )
    assert ended.returncode == 0, ended.stderr
    assert json.loads(ended.stdout)["end_reason"] == "move-out"

    device = _cli(
        ["admin", "devices", "add", "--meter-id", "E5000", "--meter-id", "G5000"], database_url
    )
    assert device.returncode == 0, device.stderr
    out = json.loads(device.stdout)
    assert set(out) == {"device_id", "token", "meter_ids"}
    assert out["meter_ids"] == ["E5000", "G5000"]
    assert out["token"] not in device.stderr

    again = _cli(["migrate"], database_url)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"applied": []}
