"""Compaction of closed interval partitions (gateway.jobs.compaction, run by retention) on a real
PostgreSQL, the clock moved instead of waited for: a partition beyond the spool horizon gets its
indexes rebuilt once and they shrink, the readings stay exactly as they were, a partition that
can still receive readings is left alone, a rebuild interrupted earlier is cleaned up, and a
dropped partition's record goes with it."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest

from consent.retention import RetentionPolicy
from gateway.jobs import compaction, retention
from gateway.storage import db

UTC = dt.UTC
#: the spool horizon reaches back to 2025-02-08: January's partitions are closed (with the day
#: of margin, from 2025-02-07), February's and March's still receive readings
NOW = dt.datetime(2025, 3, 20, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy(spool_horizon_days=40, compactions_per_run=10)
JAN, FEB, MAR = (f"readings_e_pt15m_y2025m0{m}" for m in (1, 2, 3))
EAN0 = 871687140000000000


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await db.connect(database_url)
    try:
        yield c
    finally:
        await c.close()


async def seed(conn: asyncpg.Connection, first: dt.datetime, days: int, eans: int = 150) -> None:
    """Quarter-hour readings of ``eans`` meters over ``days`` days, inserted the way devices
    deliver them: period after period, every meter's reading of a period together."""
    await conn.execute(
        "INSERT INTO readings_e_pt15m (ean, period_start, measured_at, import_t1_wh,"
        " import_t2_wh, export_t1_wh, export_t2_wh)"
        " SELECT $1::bigint + e, p, p + interval '7 seconds', e * 1000 + n, e, n, 0"
        " FROM generate_series(0, $3 * 96 - 1) n, generate_series(1, $4) e,"
        " LATERAL (SELECT $2::timestamptz + n * interval '15 minutes' AS p) q ORDER BY n, e",
        EAN0,
        first,
        days,
        eans,
    )


async def index_state(conn: asyncpg.Connection, partition: str) -> tuple[int, list[int]]:
    """The partition's index bytes and the files its indexes live in (a rebuild changes
    them)."""
    size: int = await conn.fetchval("SELECT pg_indexes_size($1::regclass)", partition)
    files = await conn.fetch(
        "SELECT c.relfilenode FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
        " WHERE x.indrelid = $1::regclass ORDER BY c.relname",
        partition,
    )
    return size, [f[0] for f in files]


async def digest(conn: asyncpg.Connection) -> str:
    value: str = await conn.fetchval(
        "SELECT md5(string_agg(r::text, ',' ORDER BY r.ean, r.period_start))"
        " FROM readings_e_pt15m r"
    )
    return value


async def test_a_closed_partition_is_compacted_once_and_an_open_one_is_left_alone(
    conn: asyncpg.Connection,
) -> None:
    await db.ensure_partitions(conn, dt.datetime(2025, 1, 1, tzinfo=UTC), NOW)
    await seed(conn, dt.datetime(2025, 1, 10, tzinfo=UTC), 6)
    await seed(conn, dt.datetime(2025, 2, 10, tzinfo=UTC), 6)
    await seed(conn, dt.datetime(2025, 3, 10, tzinfo=UTC), 1)
    readings = await digest(conn)
    jan_before = await index_state(conn, JAN)
    feb_before = await index_state(conn, FEB)
    mar_before = await index_state(conn, MAR)

    report = await retention.run_retention(conn, NOW, POLICY)

    assert report.completed
    assert report.tables["readings_e_pt15m"].partitions_compacted == [JAN]
    assert report.tables["readings_g_pt1h"].partitions_compacted == ["readings_g_pt1h_y2025m01"]
    assert report.as_json()["cutoffs"]["closed_period_end"] == "2025-02-07T12:00:00.000000Z"
    jan_after = await index_state(conn, JAN)
    assert jan_after[1] != jan_before[1]  # rebuilt
    # insertion in time order across meters leaves the key's leaf pages about half full
    assert jan_after[0] < 0.8 * jan_before[0], (jan_before, jan_after)
    assert await index_state(conn, FEB) == feb_before  # still receives readings
    assert await index_state(conn, MAR) == mar_before
    assert await digest(conn) == readings
    recorded = await conn.fetch(
        "SELECT partition, table_name, index_bytes_before, index_bytes_after"
        " FROM reading_compactions ORDER BY partition"
    )
    assert tuple(recorded[0]) == (
        JAN,
        "readings_e_pt15m",
        jan_before[0],
        jan_after[0],
    )
    assert [r["partition"] for r in recorded] == [JAN, "readings_g_pt1h_y2025m01"]
    # the rebuilt index is still the primary key, and used
    plan = await conn.fetch(
        f"EXPLAIN SELECT * FROM {JAN} WHERE ean = $1 AND period_start = $2",
        EAN0 + 3,
        dt.datetime(2025, 1, 11, tzinfo=UTC),
    )
    assert f"{JAN}_pkey" in "\n".join(p[0] for p in plan)

    # once: the next run leaves it (and everything else) alone
    again = await retention.run_retention(conn, NOW + dt.timedelta(hours=1), POLICY)
    assert all(not t.partitions_compacted for t in again.tables.values())
    assert await index_state(conn, JAN) == jan_after

    # a month later February is closed too, and only February is rebuilt
    later = await retention.run_retention(conn, NOW + dt.timedelta(days=31), POLICY)
    assert later.tables["readings_e_pt15m"].partitions_compacted == [FEB]
    assert await index_state(conn, JAN) == jan_after
    assert (await index_state(conn, FEB))[0] < 0.8 * feb_before[0]
    assert await digest(conn) == readings

    # when retention drops a partition its record goes with it
    gone = await retention.run_retention(conn, NOW.replace(year=2029, month=6), POLICY)
    assert JAN in gone.tables["readings_e_pt15m"].partitions_dropped
    left = await conn.fetch("SELECT partition FROM reading_compactions")
    assert JAN not in {r["partition"] for r in left}


async def test_a_run_compacts_at_most_its_share_newest_first_and_a_dry_run_nothing(
    conn: asyncpg.Connection,
) -> None:
    await db.ensure_partitions(conn, dt.datetime(2024, 10, 1, tzinfo=UTC), NOW)
    await seed(conn, dt.datetime(2024, 11, 3, tzinfo=UTC), 1, eans=20)
    nov = "readings_e_pt15m_y2024m11"
    before = await index_state(conn, nov)
    before_jan = await index_state(conn, "readings_e_pt15m_y2025m01")
    one = RetentionPolicy(spool_horizon_days=40, compactions_per_run=1)

    dry = await retention.run_retention(conn, NOW, one, dry_run=True)
    assert dry.tables["readings_e_pt15m"].partitions_compacted == ["readings_e_pt15m_y2025m01"]
    assert await index_state(conn, "readings_e_pt15m_y2025m01") == before_jan
    assert await conn.fetchval("SELECT count(*) FROM reading_compactions") == 0

    # newest first: January (gas sorts after electricity), then the ones before
    done: list[str] = []
    for hour in range(8):
        report = await retention.run_retention(conn, NOW + dt.timedelta(hours=hour), one)
        done += [p for t in report.tables.values() for p in t.partitions_compacted]
    assert done[:2] == ["readings_e_pt15m_y2025m01", "readings_g_pt1h_y2025m01"]
    assert sorted(done) == sorted(
        f"readings_{t}_y{m}"
        for t in ("e_pt15m", "g_pt1h")
        for m in ("2024m10", "2024m11", "2024m12", "2025m01")
    )
    assert (await index_state(conn, nov))[1] != before[1]
    off = RetentionPolicy(spool_horizon_days=40, compactions_per_run=0)
    assert await compaction.compact_closed_partitions(conn, NOW, NOW.replace(year=2020), 0) == []
    assert (
        not (await retention.run_retention(conn, NOW, off))
        .tables["readings_e_pt15m"]
        .partitions_compacted
    )


async def test_a_rebuild_interrupted_earlier_is_cleaned_up_first(
    conn: asyncpg.Connection,
) -> None:
    """An interrupted REINDEX CONCURRENTLY leaves an invalid ``<index>_ccnew`` behind (here made
    the same way: a concurrent build that fails). The next compaction drops it, then rebuilds."""
    await db.ensure_partitions(conn, dt.datetime(2025, 1, 1, tzinfo=UTC), NOW)
    await seed(conn, dt.datetime(2025, 1, 10, tzinfo=UTC), 1, eans=10)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            f"CREATE UNIQUE INDEX CONCURRENTLY {JAN}_pkey_ccnew ON {JAN} (export_t2_wh)"
        )
    invalid = "SELECT count(*) FROM pg_index WHERE indrelid = $1::regclass AND NOT indisvalid"
    assert await conn.fetchval(invalid, JAN) == 1

    done = await compaction.compact_partition(conn, "readings_e_pt15m", JAN)

    assert done.partition == JAN
    assert await conn.fetchval(invalid, JAN) == 0
    assert await conn.fetchval(f"SELECT to_regclass('{JAN}_pkey_ccnew')") is None
    names = await conn.fetch(
        "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
        " WHERE x.indrelid = $1::regclass ORDER BY 1",
        JAN,
    )
    assert [n[0] for n in names] == [f"{JAN}_changed_xid_idx", f"{JAN}_pkey"]


async def test_compaction_refuses_to_run_inside_a_transaction(conn: asyncpg.Connection) -> None:
    await db.ensure_partitions(conn, dt.datetime(2025, 1, 1, tzinfo=UTC), NOW)
    async with conn.transaction():
        with pytest.raises(RuntimeError, match="transaction block"):
            await compaction.compact_partition(conn, "readings_e_pt15m", JAN)


async def test_ingest_goes_on_while_a_rebuild_waits_for_an_old_reader(
    conn: asyncpg.Connection, database_url: str
) -> None:
    """A rebuild waits for the transactions that have the partition open (a long export), but
    holds no lock that writes wait for: a late reading into the partition being rebuilt and
    readings into the open months are stored meanwhile, and the late one is in the new index."""
    import asyncio

    await db.ensure_partitions(conn, dt.datetime(2025, 1, 1, tzinfo=UTC), NOW)
    await seed(conn, dt.datetime(2025, 1, 10, tzinfo=UTC), 1, eans=10)
    reader = await db.connect(database_url)
    writer = await db.connect(database_url)
    try:
        export = reader.transaction()
        await export.start()
        await reader.fetchval(f"SELECT count(*) FROM {JAN}")
        rebuild = asyncio.create_task(compaction.compact_partition(conn, "readings_e_pt15m", JAN))
        for _ in range(200):
            phase = await writer.fetchval(
                "SELECT phase FROM pg_stat_progress_create_index WHERE relid = $1::regclass",
                JAN,
            )
            if phase is not None and phase.startswith("waiting"):
                break
            await asyncio.sleep(0.02)
        await writer.execute("SET statement_timeout = '5s'")
        late = dt.datetime(2025, 1, 20, tzinfo=UTC)
        insert = (
            "INSERT INTO readings_e_pt15m (ean, period_start, measured_at, import_t1_wh)"
            " VALUES ($1, $2, $2, 1)"
        )
        await writer.execute(insert, EAN0 + 500, late)
        await writer.execute(insert, EAN0 + 500, dt.datetime(2025, 3, 19, tzinfo=UTC))
        assert not rebuild.done()  # still waiting for the export
        await export.commit()
        done = await asyncio.wait_for(rebuild, 60)
        assert done.partition == JAN
        await conn.execute("SET enable_seqscan = off")
        await conn.execute("SET enable_bitmapscan = off")
        lookup = f"SELECT count(*) FROM {JAN} WHERE ean = $1 AND period_start = $2"
        plan = await conn.fetch(f"EXPLAIN (COSTS OFF) {lookup}", EAN0 + 500, late)
        assert f"{JAN}_pkey" in "\n".join(r[0] for r in plan)
        assert await conn.fetchval(lookup, EAN0 + 500, late) == 1
    finally:
        await reader.close()
        await writer.close()


async def test_a_rebuild_that_times_out_is_reported_and_finished_by_a_later_run(
    conn: asyncpg.Connection, database_url: str
) -> None:
    """A rebuild stuck behind an old reader past its time limit is cut off: it leaves its
    invalid half-built index, the run reports the partition as not compacted (and does not
    record it), and the next run cleans up and finishes it."""
    await db.ensure_partitions(conn, dt.datetime(2025, 1, 1, tzinfo=UTC), NOW)
    await seed(conn, dt.datetime(2025, 1, 10, tzinfo=UTC), 1, eans=10)
    reader = await db.connect(database_url)
    closed, expired = NOW - dt.timedelta(days=41), NOW.replace(year=2021)
    try:
        async with reader.transaction():
            await reader.fetchval(f"SELECT count(*) FROM {JAN}")
            cut = await compaction.compact_closed_partitions(
                conn, closed, expired, 1, timeout_s=1.0
            )
        assert [(c.partition, c.failed) for c in cut] == [(JAN, "timeout")]
    finally:
        await reader.close()
    invalid = "SELECT count(*) FROM pg_index WHERE indrelid = $1::regclass AND NOT indisvalid"
    assert await conn.fetchval(invalid, JAN) >= 1
    assert await conn.fetchval("SELECT count(*) FROM reading_compactions") == 0

    again = await compaction.compact_closed_partitions(conn, closed, expired, 1)
    assert [(c.partition, c.failed) for c in again] == [(JAN, None)]
    assert await conn.fetchval(invalid, JAN) == 0
    recorded = await conn.fetchval("SELECT partition FROM reading_compactions")
    assert recorded == JAN
