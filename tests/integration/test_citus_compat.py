"""The schema stays Citus-compatible (SPEC §7, deploy/citus.md): every table but the reference
tables carries ``ean``, and every primary key, unique constraint, unique index and exclusion
constraint of such a table includes it (Citus can only enforce uniqueness and exclusion that
include the distribution column, with ``=`` for an exclusion)."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest

from tests.support import make_ean

EAN_A = make_ean(501)
EAN_B = make_ean(502)

#: small tables replicated to every Citus node (create_reference_table), or coordinator-local
#: ``meter_installations`` is one: its rule "a meter is on one EAN at a time" spans EANs
#: (migration 0011), and every ingest node reads it to route a meter to its EAN
REFERENCE_TABLES = {
    "devices",
    "reading_tables",
    "schema_migrations",
    "audit_log",
    "clients",
    "meter_installations",
    # one row: where the readings.changed job left off (migration 0012), coordinator-local
    "readings_changed_mark",
    # one row: below which transaction the index change log was pruned (migration 0013)
    "index_changes_mark",
    # which closed partitions had their indexes rebuilt (migration 0014), coordinator-local:
    # the retention job that reads and writes it runs on the coordinator
    "reading_compactions",
}


async def test_every_table_is_distributable_on_ean(pool: asyncpg.Pool) -> None:
    tables = await pool.fetch(
        "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
    )
    names = {t["relname"] for t in tables}
    assert {"connections", "consents", "consent_events", "readings_e_pt15m"} <= names
    problems: list[str] = []
    for table in tables:
        if table["relname"] in REFERENCE_TABLES:
            continue
        ean_attnum = await pool.fetchval(
            "SELECT attnum FROM pg_attribute WHERE attrelid = $1 AND attname = 'ean'"
            " AND NOT attisdropped",
            table["oid"],
        )
        if ean_attnum is None:
            problems.append(f"{table['relname']}: no ean column")
            continue
        uniques = await pool.fetch(
            "SELECT i.indexrelid::regclass::text AS name, i.indkey::int2[] AS cols"
            " FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique",
            table["oid"],
        )
        for index in uniques:
            if ean_attnum not in index["cols"]:
                problems.append(f"{table['relname']}: unique index {index['name']} lacks ean")
        exclusions = await pool.fetch(
            "SELECT conname, conkey::int2[] AS cols, pg_get_constraintdef(oid) AS def"
            " FROM pg_constraint WHERE conrelid = $1 AND contype = 'x'",
            table["oid"],
        )
        for constraint in exclusions:
            if ean_attnum not in constraint["cols"] or "ean WITH =" not in constraint["def"]:
                problems.append(
                    f"{table['relname']}: exclusion {constraint['conname']} lacks 'ean WITH ='"
                )
    assert problems == []


async def test_contracts_of_one_ean_cannot_overlap(pool: asyncpg.Pool) -> None:
    """The database itself refuses overlapping contracts and a meter on two EANs at once."""
    await pool.execute("INSERT INTO connections (ean, commodity) VALUES ($1, 'gas')", EAN_A)
    await pool.execute("INSERT INTO connections (ean, commodity) VALUES ($1, 'gas')", EAN_B)
    insert = (
        "INSERT INTO contracts (ean, customer_id, contract_start, contract_end)"
        " VALUES ($1, 'c', $2::timestamptz, $3::timestamptz)"
    )
    jan, mar, may, may2, jun, jul = (
        dt.datetime(2024, m, d, tzinfo=dt.UTC)
        for m, d in ((1, 1), (3, 1), (5, 1), (5, 2), (6, 1), (7, 1))
    )
    await pool.execute(insert, EAN_A, jan, jun)
    await pool.execute(insert, EAN_A, jun, None)  # back to back: fine
    await pool.execute(insert, EAN_B, mar, None)  # another EAN: fine
    with pytest.raises(asyncpg.ExclusionViolationError):
        await pool.execute(insert, EAN_A, may, jul)
    install = (
        "INSERT INTO meter_installations (ean, commodity, meter_id, installed_from,"
        " installed_until) VALUES ($1, 'gas', $2, $3::timestamptz, $4::timestamptz)"
    )
    await pool.execute(install, EAN_A, "G1", jan, jun)
    await pool.execute(install, EAN_B, "G1", jun, None)  # moved on after removal
    with pytest.raises(asyncpg.ExclusionViolationError):  # on two EANs at once
        await pool.execute(install, EAN_B, "G1", may, may2)
    with pytest.raises(asyncpg.ExclusionViolationError):  # two meters on one EAN at once
        await pool.execute(install, EAN_A, "G2", may, None)


async def test_reading_tables_are_range_partitioned_on_period_start(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        "SELECT c.relname, pg_get_partkeydef(c.oid) AS key FROM pg_class c"
        " JOIN reading_tables r ON r.table_name = c.relname"
    )
    assert len(rows) == 6
    assert {r["key"] for r in rows} == {"RANGE (period_start)"}


async def test_ensure_partitions_moves_rows_out_of_the_default_partition(
    pool: asyncpg.Pool,
) -> None:
    # a reading far in the past lands in the DEFAULT partition...
    await pool.execute(
        "INSERT INTO readings_g_p1d (ean, period_start, measured_at, volume_dm3)"
        " VALUES (871687140000000002, '2001-05-01T22:00:00Z', '2001-05-01T22:00:05Z', 42)"
    )
    where = "SELECT tableoid::regclass::text FROM readings_g_p1d"
    assert await pool.fetchval(where) == "readings_g_p1d_default"
    # ...and moves to its own partition once that is created; twice is a no-op
    created = await pool.fetchval(
        "SELECT meterpoort_ensure_partitions('2001-05-01Z', '2001-06-01Z')"
    )
    assert created == 6
    assert await pool.fetchval(where) == "readings_g_p1d_y2001"
    assert (
        await pool.fetchval("SELECT meterpoort_ensure_partitions('2001-05-01Z', '2001-06-01Z')")
        == 0
    )
