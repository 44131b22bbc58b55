"""The ingest SQL: the six reading tables by index, the batch shape and the one-statement flush.

A batch is one list of column arrays per table (``new_batch``); ``flush_sql`` turns the tables a
batch fills into ONE statement of data-modifying CTEs, so a flush is one round trip and one
implicit transaction. The statement itself enforces the storage rules (``INTERVAL_CONDITION``,
``_level_condition``): a stale cache in any process can never store what the policy forbids.
"""

from __future__ import annotations

import functools
from typing import Final

from consent.levels import LEVEL_GRANULARITIES, Granularity
from gateway.storage import schema

# --- tables -------------------------------------------------------------------------------------

E_PT15M: Final = 0
E_P1D: Final = 1
E_P1M: Final = 2
G_PT1H: Final = 3
G_P1D: Final = 4
G_P1M: Final = 5
N_TABLES: Final = 6

#: table index → name (the indices above: rows are kept in a list per batch, not a dict)
TABLE_NAMES: Final = tuple(
    t.name
    for t in (schema.E_PT15M, schema.E_P1D, schema.E_P1M, schema.G_PT1H, schema.G_P1D, schema.G_P1M)
)
TABLE_GRANULARITY: Final = (
    Granularity.PT15M,
    Granularity.P1D,
    Granularity.P1M,
    Granularity.PT1H,
    Granularity.P1D,
    Granularity.P1M,
)
INTERVAL_TABLES: Final = frozenset((E_PT15M, G_PT1H))
ELECTRICITY_TABLES: Final = frozenset((E_PT15M, E_P1D, E_P1M))

#: an electricity row: (ean, period_start, measured_at, import_t1, import_t2, export_t1,
#: export_t2); a gas row: (ean, period_start, measured_at, volume_dm3). Times are epoch seconds.
Row = tuple[int | None, ...]
#: (ean_num, period_start) → row, one dict per table
Batch = list[dict[tuple[int, int], Row]]

_E_COLUMNS = "import_t1_wh, import_t2_wh, export_t1_wh, export_t2_wh"
_E_VALUES = "v.i1, v.i2, v.e1, v.e2"
_E_ALIASES = "v(ean, ps, ma, i1, i2, e1, e2)"
_G_COLUMNS = "volume_dm3"
_G_VALUES = "v.vol"
_G_ALIASES = "v(ean, ps, ma, vol)"


def _unnest(first: int, count: int, aliases: str) -> str:
    params = ", ".join(f"${i}::int8[]" for i in range(first, first + count))
    return f"unnest({params}) AS {aliases}"


# The database's half of the SPEC §3 invariant, evaluated per row IN THE INSERT STATEMENT:
# an interval row is written only while a consent row says granted_at <= measured_at < end and
# the consent is still in force now, end = least(ended_at, expires_at, contract_end), the
# consent belonging to the contract of the EAN in force at measured_at (SPEC §3a).
#
# Why it cannot race with a revocation (which, in one READ COMMITTED transaction, UPDATEs the
# consent row's ended_at, then DELETEs interval rows measured at/after the end, then commits):
# ``FOR SHARE OF c`` takes a share lock on the consent row that justifies each row, and SHARE
# conflicts with the row lock the revocation's UPDATE takes (FOR KEY SHARE would not: a
# non-key UPDATE only takes FOR NO KEY UPDATE).
# * Ingest locks first: the revocation's UPDATE waits until the ingest transaction commits; its
#   DELETE then starts with a snapshot that sees the ingested rows and removes those at/after
#   the end.
# * Revocation locks first: the ingest's lock waits until the revocation commits, then READ
#   COMMITTED re-evaluates the locked row's new version against the WHERE clause (EvalPlanQual):
#   the new ended_at fails ``measured_at < end`` (and ``end > clock_timestamp()``), so the row
#   is not inserted. The revocation's DELETE ran before, but there was nothing to delete.
# tests/integration/test_ingest_consent_race.py holds both orders open on purpose.
#
# The contract is guarded the same way: every reading row takes ``FOR SHARE OF k`` on the
# contract in force at its measured time and checks the window and level there. Ending a
# contract (a move-out, a switch: gateway.services.registry) UPDATEs that row, then DELETEs the
# EAN's readings measured at or after the end that no other contract covers; a level change
# UPDATEs it and DELETEs the lowered granularities' readings (tests/integration/
# test_ingest_level_race.py, test_contract_race.py). Lock order: the contract row before the
# consent row (``OF k, c`` locks in that order), as the consent services and the expiry job take
# them, so ingest and a revocation cannot deadlock.
#
# Both the current level and the level in force when the reading was measured must allow it: a
# reading measured while the customer objected, delivered late from a field device's spool after
# the level went back up, is not stored. The level at measurement is the current one from
# ``level_since`` on (NULL: never changed); before that, the contract's latest level_events row
# at or before measured_at (a contract starts at 'daily'). Looked up only for such late readings:
# the lookup per row would halve single-telegram ingest otherwise (bench/ingest.py B3).

#: SQL: contract ``k`` was in force at the reading's measured time
_IN_CONTRACT: Final = "k.ean_num = v.ean AND " + schema.in_contract("to_timestamp(v.ma)")


def _level_at_measurement_in(levels: str) -> str:
    """SQL: the level in force at the reading's measured_at is one of ``levels``."""
    return (
        "(k.level_since IS NULL OR to_timestamp(v.ma) >= k.level_since"
        " OR coalesce((SELECT l.level FROM level_events l WHERE l.ean = k.ean"
        " AND l.contract_id = k.contract_id"
        " AND l.at <= to_timestamp(v.ma) ORDER BY l.at DESC LIMIT 1), 'daily')"
        f" IN ({levels}))"
    )


INTERVAL_CONDITION: Final = f"""
WHERE EXISTS (
    SELECT 1 FROM contracts k JOIN consents c ON c.ean = k.ean AND c.contract_id = k.contract_id
    WHERE {_IN_CONTRACT} AND k.level = 'daily' AND c.data_class = 'interval'
      AND {_level_at_measurement_in("'daily'")}
      AND c.granted_at <= to_timestamp(v.ma)
      AND to_timestamp(v.ma) < coalesce(least(c.ended_at, c.expires_at, k.contract_end), 'infinity')
      AND coalesce(least(c.ended_at, c.expires_at, k.contract_end), 'infinity') > clock_timestamp()
    FOR SHARE OF k, c
)"""


def _level_condition(granularity: Granularity) -> str:
    """The WHERE clause of a daily or monthly row: the contract in force at its measured time
    exists and its level allows it."""
    allowed = sorted(lv.value for lv, grans in LEVEL_GRANULARITIES.items() if granularity in grans)
    levels = ", ".join(f"'{level}'" for level in allowed)
    return (
        f" WHERE EXISTS (SELECT 1 FROM contracts k WHERE {_IN_CONTRACT}"
        f" AND k.level IN ({levels})"
        f" AND {_level_at_measurement_in(levels)} FOR SHARE OF k)"
    )


#: the writing transaction's id as stored in ``changed_xid``, once per statement
_XID: Final = "(SELECT pg_current_xact_id()::text::bigint)"


def _insert_sql(table: int, first: int = 1) -> str:
    """The upsert of one table's rows, its column arrays being parameters ``$first``…"""
    electricity = table in ELECTRICITY_TABLES
    columns = _E_COLUMNS if electricity else _G_COLUMNS
    values = _E_VALUES if electricity else _G_VALUES
    source = _unnest(first, 7, _E_ALIASES) if electricity else _unnest(first, 4, _G_ALIASES)
    # changed_xid: the writing transaction's id, so the sync feed finds new rows and replaced
    # periods alike (migration 0012). An uncorrelated subquery is evaluated once per statement
    # (an InitPlan), where the column default would call and cast per row.
    updates = ", ".join(
        f"{c} = excluded.{c}" for c in ("measured_at", *columns.split(", "), "changed_xid")
    )
    if table in INTERVAL_TABLES:
        where = INTERVAL_CONDITION
    else:
        where = _level_condition(TABLE_GRANULARITY[table])
    return (
        f"INSERT INTO {TABLE_NAMES[table]} AS t"
        f" (ean, period_start, measured_at, {columns}, changed_xid)"
        f" SELECT v.ean, to_timestamp(v.ps), to_timestamp(v.ma), {values}, {_XID} FROM {source}"
        f"{where}"
        f" ON CONFLICT (ean, period_start) DO UPDATE SET {updates}"
        " WHERE excluded.measured_at < t.measured_at"
    )


INSERT_SQL: Final = tuple(_insert_sql(t) for t in range(N_TABLES))
_N_COLUMNS: Final = tuple(7 if t in ELECTRICITY_TABLES else 4 for t in range(N_TABLES))


@functools.cache
def flush_sql(tables: tuple[int, ...]) -> str:
    """One statement upserting the rows of ``tables`` (ascending), the column arrays of each
    table being consecutive parameters; it returns how many rows each table took.

    One statement is one implicit transaction, so a flush costs one round trip instead of
    BEGIN, an INSERT per table and COMMIT, with the same atomicity. The data-modifying CTEs run
    in the order written (a fixed table order, as deadlock avoidance wants); each keeps its own
    INTERVAL_CONDITION with its row locks, exactly as the single-table INSERT_SQL does.
    """
    parts = []
    first = 1
    for table in tables:
        parts.append(f"w{table} AS ({_insert_sql(table, first)} RETURNING 1)")
        first += _N_COLUMNS[table]
    counts = ", ".join(f"(SELECT count(*) FROM w{table})" for table in tables)
    return f"WITH {', '.join(parts)} SELECT {counts}"


def new_batch() -> Batch:
    """An empty batch: one dict per reading table."""
    return [{} for _ in range(N_TABLES)]


def merge_into(target: Batch, source: Batch) -> int:
    """Merge ``source`` into ``target`` keeping the earliest measured row per period; returns
    how many rows ``target`` gained."""
    added = 0
    for table in range(N_TABLES):
        dst = target[table]
        for key, row in source[table].items():
            old = dst.get(key)
            if old is None:
                dst[key] = row
                added += 1
            elif row[2] < old[2]:  # type: ignore[operator]
                dst[key] = row
    return added
