"""B6 storage: bytes per stored interval reading (heap + every index), realistic arrival order.

Registers ``--eans`` electricity connections with an interval consent each, then ingests
``--days`` of 15-minute readings the way devices deliver them: period after period, every
meter's reading of a period in the same few flushes (``--flush`` rows each), through the ingest
path's own statement (``gateway.ingest.sql.flush_sql``, with its consent checks and upsert).
A share of the periods (``--late``) is delivered a second time later by a spooling device with
an earlier measured reading, which replaces the stored one (an improving upsert).

Prints the size of every partition of ``readings_e_pt15m`` (``pg_total_relation_size``: heap,
TOAST, free-space and visibility maps, every index) divided by the rows stored, twice: fresh,
as ingest left it, and after the retention job's compaction of the then closed month
(``gateway.jobs.compaction``: its indexes rebuilt, packed). SPEC §6 B6: ≤ 120 bytes. Beside
them the same-run reference: the same rows packed in a heap without indexes. A byte count, not
a timing: it does not need a quiet machine.

    python bench/storage.py [--eans 400] [--days 31]   # DATABASE_URL or embedded PG
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.ingest import sql as ingest_sql  # noqa: E402
from gateway.jobs import compaction  # noqa: E402
from gateway.storage import db  # noqa: E402

START = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
EAN0 = 871687140000000000
PERIOD_S = 900


async def seed(conn: asyncpg.Connection, n_eans: int) -> None:
    await conn.execute(
        "INSERT INTO connections (ean, commodity) SELECT ($1::bigint + e)::text, 'electricity'"
        " FROM generate_series(1, $2) e",
        EAN0,
        n_eans,
    )
    await conn.execute(
        "INSERT INTO contracts (ean, customer_id, contract_start)"
        " SELECT ean, 'C' || ean, '2020-01-01Z' FROM connections"
    )
    await conn.execute(
        "INSERT INTO meter_installations (ean, commodity, meter_id, installed_from)"
        " SELECT ean, commodity, 'M' || ean, '2020-01-01Z' FROM connections"
    )
    await conn.execute(
        "INSERT INTO consents (ean, consent_id, contract_id, customer_id, purpose, data_class,"
        " notice_version, channel, granted_at)"
        " SELECT k.ean, gen_random_uuid(), k.contract_id, k.customer_id, 'energy-insight',"
        " 'interval', 'v1', 'portal', '2020-01-01Z' FROM contracts k"
    )


async def ingest(conn: asyncpg.Connection, n_eans: int, days: int, flush: int, late: float) -> int:
    """Deliver the readings in time order; returns how many flushes ran."""
    rng = random.Random(12)
    statement = ingest_sql.flush_sql((ingest_sql.E_PT15M,))
    t0 = int(START.timestamp())
    flushes = 0
    spooled: list[tuple[int, ...]] = []
    meters = list(range(1, n_eans + 1))
    for p in range(days * 86400 // PERIOD_S):
        ps = t0 + p * PERIOD_S
        rng.shuffle(meters)  # devices report in no particular order within a period
        rows: list[tuple[int, ...]] = []
        for e in meters:
            wh = e * 1_000_000 + p * 40
            # a telegram a few seconds into the period; a spooling device's later replay of the
            # same period carries the reading taken right at the boundary (measured earlier)
            rows.append((EAN0 + e, ps, ps + 10 + rng.randrange(10), wh, wh // 2, 0, 0))
            if rng.random() < late:
                spooled.append((EAN0 + e, ps, ps + 1, wh - 1, wh // 2, 0, 0))
        # a spool replays late: an hour behind the live stream
        replay = [r for r in spooled if r[1] <= ps - 3600]
        spooled = [r for r in spooled if r[1] > ps - 3600]
        batch = rows + replay
        for i in range(0, len(batch), flush):
            part = batch[i : i + flush]
            columns = [list(col) for col in zip(*part, strict=True)]
            await conn.fetchrow(statement, *columns)
            flushes += 1
    return flushes


#: SPEC §6 B6
TARGET_BYTES = 120


async def measure(conn: asyncpg.Connection) -> dict[str, float]:
    rows: int = await conn.fetchval("SELECT count(*) FROM readings_e_pt15m")
    size: int = await conn.fetchval(
        "SELECT sum(pg_total_relation_size(inhrelid))::bigint FROM pg_inherits"
        " WHERE inhparent = 'readings_e_pt15m'::regclass"
    )
    heap: int = await conn.fetchval(
        "SELECT sum(pg_relation_size(inhrelid))::bigint FROM pg_inherits"
        " WHERE inhparent = 'readings_e_pt15m'::regclass"
    )
    return {
        "rows": rows,
        "total_bytes": size,
        "heap_bytes": heap,
        "bytes_per_reading": round(size / rows, 1),
        "heap_bytes_per_reading": round(heap / rows, 1),
        "index_bytes_per_reading": round((size - heap) / rows, 1),
    }


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="meterpoort-bench-storage-"))
    embedded = None
    url = os.environ.get("DATABASE_URL")
    try:
        if url is None:
            embedded = db.EmbeddedPostgres(tmp)
            url = await asyncio.to_thread(embedded.start)
        else:
            # a database of its own on the given server
            name = f"bench_storage_{uuid.uuid4().hex[:8]}"
            admin = await db.connect(url)
            await admin.execute(f'CREATE DATABASE "{name}"')
            await admin.close()
            url = url.rsplit("/", 1)[0] + "/" + name
        conn = await db.connect(url)
        try:
            await db.migrate(conn)
            await db.ensure_partitions(
                conn, START - dt.timedelta(days=1), START + dt.timedelta(days=args.days + 1)
            )
            await seed(conn, args.eans)
            flushes = await ingest(conn, args.eans, args.days, args.flush, args.late)
            result: dict[str, object] = dict(await measure(conn))
            result.update(eans=args.eans, days=args.days, flushes=flushes, late=args.late)
            # the same-run reference: the same rows copied densely into one table without
            # indexes, free space or update history: what the heap alone cannot go below
            await conn.execute(
                "CREATE TEMP TABLE packed AS"
                " SELECT * FROM readings_e_pt15m ORDER BY ean, period_start"
            )
            packed_rows: int = await conn.fetchval("SELECT count(*) FROM packed")
            packed: int = await conn.fetchval("SELECT pg_relation_size('packed')")
            result["reference_packed_heap_bytes_per_reading"] = round(packed / packed_rows, 1)
            # the month closes (the spool horizon passes its end): the retention job's
            # compaction, as it runs, on every interval partition closed by then
            closed = START + dt.timedelta(days=args.days + 60)
            done = await compaction.compact_closed_partitions(
                conn, closed, START - dt.timedelta(days=1), limit=100
            )
            result["compacted_partitions"] = sorted(c.partition for c in done)
            compacted = await measure(conn)
            result["after_compaction"] = compacted
            print(json.dumps(result))
            reference = result["reference_packed_heap_bytes_per_reading"]
            for label, m in (("fresh", result), ("after compaction", compacted)):
                print(
                    f"B6 {label}: {m['bytes_per_reading']} bytes per stored interval reading"
                    f" (heap {m['heap_bytes_per_reading']}"
                    f" + indexes {m['index_bytes_per_reading']})   [target ≤ {TARGET_BYTES}]"
                )
            print(f"reference, the same rows packed in a heap without indexes: {reference}")
        finally:
            await conn.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eans", type=int, default=400)
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument("--flush", type=int, default=200, help="rows per ingest flush")
    parser.add_argument(
        "--late", type=float, default=0.01, help="share of periods replayed later, improved"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
