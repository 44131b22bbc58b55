"""Compaction of closed interval partitions: their indexes rebuilt once (SPEC §6 B6).

Live ingest inserts quarter after quarter across every EAN into primary keys ordered by
``(ean, period_start)``: each insert lands inside the key range, so B-tree leaf pages split and
stay about half full (45 bytes of index per interval reading, 32 once rebuilt: bench/storage.py).
A partition can receive readings only while its periods are within the spool horizon (ingest
refuses readings measured longer ago, ``Settings.spool_horizon_days``); once its last period is
beyond it (``Cutoffs.closed``, a day of margin for batches in flight), its indexes are rebuilt
in key order, once, and the rebuild is recorded in ``reading_compactions`` (migration 0014).

``REINDEX TABLE CONCURRENTLY`` on the partition: ingest, pulls and deletions go on while it runs
(it takes SHARE UPDATE EXCLUSIVE, which only other maintenance of the same partition conflicts
with). It cannot run inside a transaction block, so the retention job calls it on its own
connection between transactions. Before it swaps the new indexes in it waits for every
transaction older than itself, a long readings export included; the wait is bounded only by
``REINDEX_TIMEOUT_S``. Interrupted (timeout, lost connection, shutdown), it leaves its
half-built index behind, invalid (``<index>_ccnew``): the next attempt drops such leftovers
first, and the partition is recorded only once a rebuild has finished.

Correctness never depends on a partition being closed: a reading that still arrived (a longer
horizon configured later) is indexed like any other, only in a less tightly packed index.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Final

import asyncpg

from consent.levels import INTERVAL_GRANULARITIES
from gateway.storage import db

log = logging.getLogger(__name__)

#: how long one rebuild may take (a month of national interval readings is read twice, and the
#: rebuild waits for transactions older than itself): the connection's command timeout is
#: seconds, so the rebuild is given its own
REINDEX_TIMEOUT_S: Final = 24 * 3600.0

_INTERVAL_GRANULARITIES: Final = sorted(INTERVAL_GRANULARITIES)

# The closed, not yet compacted partitions of the interval tables, newest first. A partition's
# bounds are read from its FOR VALUES text (pg_get_expr prints them with this session's
# settings, and the cast reads them back with the same ones); the DEFAULT partition has none and
# is left out (it takes readings of any time). Partitions retention is about to drop (any part
# before the interval cutoff) are left out too: rebuilding them would be wasted work.
_CLOSED_SQL: Final = r"""
SELECT t.table_name, c.oid::regclass::text AS partition
FROM reading_tables t
JOIN pg_inherits i ON i.inhparent = to_regclass(t.table_name)
JOIN pg_class c ON c.oid = i.inhrelid AND c.relkind = 'r'
CROSS JOIN LATERAL (
    SELECT m[1]::timestamptz AS lower, m[2]::timestamptz AS upper
    FROM regexp_match(pg_get_expr(c.relpartbound, c.oid),
                      '^FOR VALUES FROM \(''([^'']*)''\) TO \(''([^'']*)''\)$') AS m
) b
WHERE t.granularity = ANY($1::text[]) AND b.upper <= $2 AND b.lower >= $3
  AND NOT EXISTS (SELECT 1 FROM reading_compactions r WHERE r.partition = c.oid::regclass::text)
ORDER BY b.upper DESC, t.table_name
LIMIT $4
"""

# leftovers of an interrupted REINDEX CONCURRENTLY on the partition: PostgreSQL names the
# transient indexes <index>_ccnew / _ccold (with a number when taken) and leaves them invalid
_LEFTOVERS_SQL: Final = r"""
SELECT x.indexrelid::regclass::text FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
WHERE x.indrelid = $1::regclass AND NOT x.indisvalid AND c.relname ~ '_cc(new|old)[0-9]*$'
"""


@dataclass(frozen=True, slots=True)
class Compaction:
    """One partition whose indexes were rebuilt (or, dry, would be)."""

    table_name: str
    partition: str
    index_bytes_before: int
    index_bytes_after: int
    #: why the rebuild did not finish (an SQLSTATE, or "timeout"); None: it did
    failed: str | None = None


async def closed_partitions(
    conn: asyncpg.Connection, closed: dt.datetime, expired: dt.datetime, limit: int
) -> list[tuple[str, str]]:
    """``(table_name, partition)`` of at most ``limit`` interval partitions not compacted yet
    whose periods all end at or before ``closed`` and none starts before ``expired``, newest
    first."""
    rows = await conn.fetch(_CLOSED_SQL, _INTERVAL_GRANULARITIES, closed, expired, limit)
    return [(r["table_name"], r["partition"]) for r in rows]


async def compact_partition(
    conn: asyncpg.Connection,
    table_name: str,
    partition: str,
    *,
    timeout_s: float = REINDEX_TIMEOUT_S,
) -> Compaction:
    """Rebuild the indexes of ``partition`` (of reading table ``table_name``) and record it.
    ``conn`` must not be in a transaction."""
    if conn.is_in_transaction():
        raise RuntimeError("REINDEX CONCURRENTLY cannot run inside a transaction block")
    for leftover in await conn.fetch(_LEFTOVERS_SQL, partition):
        log.warning("compaction: dropping %s, left by an interrupted rebuild", leftover[0])
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {leftover[0]}", timeout=timeout_s)
    size = "SELECT pg_indexes_size($1::regclass)"
    before: int = await conn.fetchval(size, partition)
    # `partition` is the regclass text PostgreSQL printed: quoted where it needs quoting
    await conn.execute(f"REINDEX TABLE CONCURRENTLY {partition}", timeout=timeout_s)
    after: int = await conn.fetchval(size, partition)
    await conn.execute(
        "INSERT INTO reading_compactions (partition, table_name, index_bytes_before,"
        " index_bytes_after) VALUES ($1, $2, $3, $4) ON CONFLICT (partition) DO NOTHING",
        partition,
        table_name,
        before,
        after,
    )
    log.info(
        "compaction: rebuilt the indexes of %s: %d bytes before, %d after",
        partition,
        before,
        after,
    )
    return Compaction(table_name, partition, before, after)


async def compact_closed_partitions(
    conn: asyncpg.Connection,
    closed: dt.datetime,
    expired: dt.datetime,
    limit: int,
    *,
    dry_run: bool = False,
    timeout_s: float = REINDEX_TIMEOUT_S,
) -> list[Compaction]:
    """Compact at most ``limit`` closed interval partitions (see ``closed_partitions``), one
    after the other; with ``dry_run`` only list them (sizes: the current ones).

    A rebuild that fails or times out is reported (``failed``) and tried again on a later
    run; it does not fail the caller, whose deletions are the legal obligation. Losing the
    database does."""
    if limit <= 0:
        return []
    done: list[Compaction] = []
    size = "SELECT pg_indexes_size($1::regclass)"
    for table_name, partition in await closed_partitions(conn, closed, expired, limit):
        if dry_run:
            current: int = await conn.fetchval(size, partition)
            done.append(Compaction(table_name, partition, current, current))
            continue
        try:
            done.append(await compact_partition(conn, table_name, partition, timeout_s=timeout_s))
        except TimeoutError:  # before the connection errors: TimeoutError is an OSError
            done.append(await _failed(conn, table_name, partition, "timeout"))
        except db.CONNECTION_ERRORS:
            raise
        except asyncpg.PostgresError as exc:
            done.append(await _failed(conn, table_name, partition, exc.sqlstate))
    return done


async def _failed(
    conn: asyncpg.Connection, table_name: str, partition: str, why: str
) -> Compaction:
    log.warning("compaction: rebuilding %s failed (%s); a later run retries", partition, why)
    current: int = await conn.fetchval("SELECT pg_indexes_size($1::regclass)", partition)
    return Compaction(table_name, partition, current, current, why)


async def forget(conn: asyncpg.Connection, partition: str) -> None:
    """Drop the record of ``partition`` (retention drops the partition in the same
    transaction: a partition created later under the same name is compacted afresh)."""
    await conn.execute("DELETE FROM reading_compactions WHERE partition = $1", partition)
