"""The ingest pipeline: telegrams → period readings → one group-committed write.

Per telegram (``IngestPipeline.process``, pure apart from the in-memory caches it is given)::

    parse → resolve meters → time checks → consent policy → period bucketing → "can it improve?"

* **Resolve.** The electricity equipment id (``0-0:96.1.1``) and each gas M-Bus device's id
  (``0-n:96.1.0``, device type 3) are looked up among the meter ids bound to the device, then in
  the consent index (meter id → connection). A telegram none of whose meters is bound to the
  device is rejected (``meter-not-bound``); bound but unregistered → ``unknown-meter``. Meters of
  a telegram that are not bound are ignored (a gas meter supplied by someone else), so the
  readings of one meter never land under another.
* **Time.** Electricity uses the telegram time, gas the M-Bus capture time (never the telegram
  time). No/unset clock → ``clock-unset``; more than ``future_tolerance_s`` ahead of the server
  clock → ``future-timestamp``; older than the spool horizon → ``too-old``. A telegram is rejected
  when none of its bound readings passes (with the first reading's reason); otherwise it is
  accepted — also when the policy withholds every reading (level ``none``, nothing new).
* **Policy.** ``consent.policy.CompiledPolicy.check(t, now)`` via the index (about 1 µs).
* **Buckets.** ``gateway.periods.Bucketer``: ``P1M``/``P1D`` at Amsterdam midnight, ``PT15M``
  (electricity) and ``PT1H`` (gas) on UTC quarter/hour boundaries.
* **Improve?** The reading of a period is the one with the earliest measured time. ``BestCache``
  remembers, per EAN and table, the newest period with a measured time already committed (and
  the period's end): the database holds that one or an earlier one, so a reading measured at or
  after it and before the end cannot improve the period and is skipped without a query or any
  period arithmetic (the common case: 90 telegrams per quarter hour, one improves).

Totals-only electricity meters (``1.8.0``/``2.8.0`` without the T1/T2 split) store the total in
``import_t1_wh``/``export_t1_wh`` and NULL in the T2 columns.

Writes (``BatchWriter``): requests enqueue their candidate rows; one writer task merges them
(earliest per period) and flushes every ``ingest_batch_max_delay_ms`` or ``ingest_batch_max_rows``
rows in ONE statement, hence one implicit transaction and one round trip — a data-modifying CTE
per table, each ``INSERT … SELECT FROM unnest(arrays) ON CONFLICT DO UPDATE … WHERE
excluded.measured_at < t.measured_at`` — and each request awaits the commit of its rows before it
answers (group commit): every acknowledged reading is durable.

The database enforces the interval rule itself (``INTERVAL_CONDITION``), so a stale consent index
in any process can never store an interval reading at or after a consent's end; likewise the
connection's level for daily and monthly rows (``_level_condition``), so a level change racing a
write never leaves a reading the new level forbids. Raw telegrams and
actual-power values are never stored or logged; the parsed Telegram is dropped after bucketing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

import asyncpg
from aiohttp import web

from consent.levels import LEVEL_GRANULARITIES, Granularity
from gateway import db, metrics
from gateway.consent_index import ConsentIndex, IndexMaintainer, MeterRoute, pick_route
from gateway.errors import DatabaseUnavailableError
from gateway.periods import AMSTERDAM, Bucketer
from p1_reader.errors import P1Error
from p1_reader.parser import parse_telegram
from p1_reader.telegram import DEVICE_TYPE_GAS, Telegram

log = logging.getLogger(__name__)

# --- tables -------------------------------------------------------------------------------------

E_PT15M: Final = 0
E_P1D: Final = 1
E_P1M: Final = 2
G_PT1H: Final = 3
G_P1D: Final = 4
G_P1M: Final = 5
N_TABLES: Final = 6

TABLE_NAMES: Final = (
    "readings_e_pt15m",
    "readings_e_p1d",
    "readings_e_p1m",
    "readings_g_pt1h",
    "readings_g_p1d",
    "readings_g_p1m",
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
# the consent is still in force now, end = least(ended_at, expires_at, contract_end).
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
# The connection's level is guarded the same way: a level change UPDATEs the connection row,
# then DELETEs the readings of the lowered granularities measured at or after the change. Every
# reading row therefore also takes ``FOR SHARE OF k`` on its connection and checks the level
# there (_level_condition below for daily and monthly rows), tests/integration/
# test_ingest_level_race.py holds both orders open. Lock order: the connection row before the
# consent row (``OF k, c`` locks in that order), as consent_store and the expiry job take them,
# so ingest and a revocation cannot deadlock.
#
# Both the current level and the level in force when the reading was measured must allow it: a
# reading measured while the customer objected, delivered late from a field device's spool after
# the level went back up, is not stored. The level at measurement is the current one from
# ``level_since`` on (NULL: never changed); before that, the latest level_events row at or before
# measured_at (a connection starts at 'daily'). Looked up only for such late readings: the
# lookup per row would halve single-telegram ingest otherwise (bench/ingest.py B3).


def _level_at_measurement_in(levels: str) -> str:
    """SQL: the level in force at the reading's measured_at is one of ``levels``."""
    return (
        "(k.level_since IS NULL OR to_timestamp(v.ma) >= k.level_since"
        " OR coalesce((SELECT l.level FROM level_events l WHERE l.ean = k.ean"
        " AND l.at <= to_timestamp(v.ma) ORDER BY l.at DESC LIMIT 1), 'daily')"
        f" IN ({levels}))"
    )


INTERVAL_CONDITION: Final = f"""
WHERE EXISTS (
    SELECT 1 FROM consents c JOIN connections k ON k.ean = c.ean
    WHERE k.ean_num = v.ean AND k.level = 'daily' AND c.data_class = 'interval'
      AND {_level_at_measurement_in("'daily'")}
      AND k.contract_start <= to_timestamp(v.ma)
      AND c.granted_at <= to_timestamp(v.ma)
      AND to_timestamp(v.ma) < coalesce(least(c.ended_at, c.expires_at, k.contract_end), 'infinity')
      AND coalesce(least(c.ended_at, c.expires_at, k.contract_end), 'infinity') > clock_timestamp()
    FOR SHARE OF k, c
)"""


def _level_condition(granularity: Granularity) -> str:
    """The WHERE clause of a daily or monthly row: its connection's level allows it."""
    allowed = sorted(lv.value for lv, grans in LEVEL_GRANULARITIES.items() if granularity in grans)
    levels = ", ".join(f"'{level}'" for level in allowed)
    return (
        " WHERE EXISTS (SELECT 1 FROM connections k"
        f" WHERE k.ean_num = v.ean AND k.level IN ({levels})"
        f" AND {_level_at_measurement_in(levels)} FOR SHARE OF k)"
    )


def _insert_sql(table: int, first: int = 1) -> str:
    """The upsert of one table's rows, its column arrays being parameters ``$first``…"""
    electricity = table in ELECTRICITY_TABLES
    columns = _E_COLUMNS if electricity else _G_COLUMNS
    values = _E_VALUES if electricity else _G_VALUES
    source = _unnest(first, 7, _E_ALIASES) if electricity else _unnest(first, 4, _G_ALIASES)
    updates = ", ".join(f"{c} = excluded.{c}" for c in ("measured_at", *columns.split(", ")))
    if table in INTERVAL_TABLES:
        where = INTERVAL_CONDITION
    else:
        where = _level_condition(TABLE_GRANULARITY[table])
    return (
        f"INSERT INTO {TABLE_NAMES[table]} AS t (ean, period_start, measured_at, {columns})"
        f" SELECT v.ean, to_timestamp(v.ps), to_timestamp(v.ma), {values} FROM {source}"
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


# --- body splitting -----------------------------------------------------------------------------

_BLANK: Final = b"\r\n \t\x00"


def split_body(body: bytes) -> list[bytes]:
    """Cut a request body into telegrams: each ends at the line that starts with ``!``.

    Deliberately simpler than ``p1_reader.framing.Framer``: the device sends whole telegrams and
    counts them, so every piece (garbage included) keeps its index and gets its own outcome
    instead of being skipped. Blank bytes between telegrams are dropped.
    """
    parts: list[bytes] = []
    pos = 0
    n = len(body)
    while pos < n:
        while pos < n and body[pos] in _BLANK:
            pos += 1
        if pos >= n:
            break
        bang = body.find(b"\n!", pos)
        if bang < 0:
            parts.append(body[pos:])
            break
        eol = body.find(b"\n", bang + 2)
        end = n if eol < 0 else eol + 1
        parts.append(body[pos:end])
        pos = end
    return parts


# --- the best-measured cache --------------------------------------------------------------------


class BestCache:
    """Per EAN, the newest period of each of its three tables with a committed measured time.

    An entry is a tuple ``(i_start, i_end, i_best, d_start, d_end, d_best, m_start, m_end,
    m_best)`` for the interval (``PT15M``/``PT1H``), ``P1D`` and ``P1M`` tables of the EAN's
    commodity (an EAN has one commodity, so three slots suffice); an empty slot is all zeros.
    ``best`` is a measured time (epoch s) a committed transaction offered to the database,
    which keeps the earliest, so the stored reading is at or before it: a reading with
    ``best <= ts < end`` cannot improve that period and is skipped without a query — with one
    dict look-up and no period arithmetic, the common case (90 telegrams per quarter hour, one
    improves). Only the newest period per slot is kept: a late reading of an older period is a
    miss, i.e. simply offered to the database again, which decides.

    Bounded: two generations of at most ``max_entries // 2`` EANs; the older one is dropped
    whole. Rows deleted later (consent end, erasure, retention) can leave an entry behind; it
    can then only make the gateway store *less* for that period (a skipped reading), never
    more, which is the safe direction; interval rows a database consent check refused are
    cached the same way (a later reading of the same period would be refused too).
    """

    __slots__ = ("_bucketer", "_cur", "_half", "_old")

    def __init__(self, max_entries: int = 400_000, bucketer: Bucketer | None = None) -> None:
        self._half = max(1, max_entries // 2)
        self._bucketer = bucketer or Bucketer(AMSTERDAM)
        self._cur: dict[int, tuple[int, ...]] = {}
        self._old: dict[int, tuple[int, ...]] = {}

    def entry(self, ean: int) -> tuple[int, ...] | None:
        """The EAN's slots (see the class docstring), or None."""
        value = self._cur.get(ean)
        if value is None:
            value = self._old.get(ean)
            if value is not None:
                self._put(ean, value)
        return value

    def get(self, key: tuple[int, int, int]) -> int | None:
        """The cached measured time for ``(ean, table, period_start)``, or None."""
        ean, table, start = key
        value = self.entry(ean)
        if value is None:
            return None
        slot = 3 * (table % 3)
        if value[slot] != start or value[slot + 1] == 0:
            return None
        return value[slot + 2]

    def lower(self, key: tuple[int, int, int], measured_at: int) -> None:
        """Record that ``measured_at`` was committed for ``(ean, table, period_start)`` (keeps
        the minimum; a period older than the slot's is not recorded)."""
        ean, table, start = key
        value = self.entry(ean) or _EMPTY_SLOTS
        slot = 3 * (table % 3)
        if value[slot + 1] and value[slot] == start:
            if measured_at >= value[slot + 2]:
                return
            end = value[slot + 1]
        elif value[slot + 1] and start < value[slot]:
            return
        else:
            end = self._end(table, start)
        updated = list(value)
        updated[slot : slot + 3] = (start, end, measured_at)
        self._put(ean, tuple(updated))

    def _end(self, table: int, start: int) -> int:
        if table == E_PT15M:
            return start + 900
        if table == G_PT1H:
            return start + 3600
        bounds = self._bucketer.bounds(start)
        return bounds[1] if table in _DAY_TABLES else bounds[3]

    def _put(self, ean: int, value: tuple[int, ...]) -> None:
        if len(self._cur) >= self._half and ean not in self._cur:
            self._old, self._cur = self._cur, {}
        self._cur[ean] = value

    def clear(self) -> None:
        self._cur.clear()
        self._old.clear()

    def __len__(self) -> int:
        return len(self._cur) + len(self._old)


_EMPTY_SLOTS: Final = (0,) * 9
_DAY_TABLES: Final = frozenset((E_P1D, G_P1D))


# --- the pipeline -------------------------------------------------------------------------------


class RouteSource(Protocol):
    """What the pipeline needs from the consent index."""

    @property
    def electricity(self) -> dict[str, tuple[MeterRoute, ...]]: ...

    @property
    def gas(self) -> dict[str, tuple[MeterRoute, ...]]: ...


@dataclass(slots=True)
class IngestResult:
    """The outcome of one request's telegrams, before the write."""

    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    batch: Batch = field(default_factory=new_batch)
    rows: int = 0
    #: readings per commodity (0 electricity, 1 gas) and policy depth (0 nothing .. 3 interval)
    depths: list[list[int]] = field(default_factory=lambda: [[0, 0, 0, 0], [0, 0, 0, 0]])

    @property
    def withheld(self) -> dict[Granularity, int]:
        """Readings the policy did not allow to store, by granularity (for metrics)."""
        out: dict[Granularity, int] = {}
        pairs = ((Granularity.PT15M, self.depths[0]), (Granularity.PT1H, self.depths[1]))
        for interval, counts in pairs:
            for depth, count in enumerate(counts):
                if not count:
                    continue
                for granularity in (Granularity.P1M, Granularity.P1D, interval)[depth:]:
                    out[granularity] = out.get(granularity, 0) + count
        return out


class IngestPipeline:
    """Parse, check and bucket telegrams into candidate rows (no I/O)."""

    def __init__(
        self,
        index: RouteSource,
        best: BestCache,
        *,
        bucketer: Bucketer | None = None,
        future_tolerance_s: int = 300,
        horizon_s: int = 40 * 86400,
        parse: Callable[[bytes], Telegram] = parse_telegram,
    ) -> None:
        self.index = index
        self.best = best
        self.bucketer = bucketer or Bucketer(AMSTERDAM)
        self.future_tolerance_s = future_tolerance_s
        self.horizon_s = horizon_s
        self.parse = parse

    def _time_problem(self, t: datetime | None, now_s: int, what: str) -> tuple[str, str]:
        """The (reason, detail) that rules out ``t`` (called once the fast check failed)."""
        if t is None:
            return "clock-unset", f"{what} carries no valid time (meter clock unset or absent)"
        if int(t.timestamp()) > now_s + self.future_tolerance_s:
            return (
                "future-timestamp",
                f"{what} time {t.isoformat()} is more than {self.future_tolerance_s} s ahead"
                " of the server clock",
            )
        return (
            "too-old",
            f"{what} time {t.isoformat()} is older than the spool horizon"
            f" ({self.horizon_s // 86400} days)",
        )

    def process(
        self, parts: Sequence[bytes], meter_ids: frozenset[str], now_s: int
    ) -> IngestResult:
        """Turn the telegrams of one request into per-telegram outcomes and candidate rows."""
        result = IngestResult()
        rejected = result.rejected
        e_depths, g_depths = result.depths
        electricity = self.index.electricity
        gas = self.index.gas
        parse = self.parse
        entry_of = self.best.entry
        latest = now_s + self.future_tolerance_s
        earliest = now_s - self.horizon_s
        for index, part in enumerate(parts):
            try:
                telegram = parse(part)
            except P1Error as exc:
                rejected.append({"index": index, "reason": exc.reason, "detail": str(exc)})
                continue
            bound = False
            valid = 0
            problem: tuple[str, str] | None = None

            meter_id = telegram.meter_id
            if meter_id is not None and meter_id in meter_ids:
                bound = True
                routes = electricity.get(meter_id)
                t = telegram.timestamp
                if routes is None:
                    problem = ("unknown-meter", f"meter {meter_id} is not registered")
                elif t is None or not earliest <= (ts := int(t.timestamp())) <= latest:
                    problem = self._time_problem(t, now_s, "telegram")
                elif (
                    telegram.import_t1_wh is None
                    and telegram.import_t2_wh is None
                    and telegram.import_total_wh is None
                ):
                    problem = ("bad-value", "telegram carries no import energy register")
                else:
                    valid = 1
                    route = routes[0] if len(routes) == 1 else pick_route(routes, ts)
                    depth = route.policy.depth_s(ts, now_s)
                    e_depths[depth] += 1
                    if depth:
                        ean = route.ean_num
                        e = entry_of(ean)
                        # the common case: every period this reading could fill already holds
                        # a committed reading measured at or before it (see BestCache)
                        if e is None or not (
                            e[8] <= ts < e[7]
                            and (depth < 2 or e[5] <= ts < e[4])
                            and (depth < 3 or e[2] <= ts < e[1])
                        ):
                            i1, i2 = telegram.import_t1_wh, telegram.import_t2_wh
                            if i1 is None and i2 is None:
                                i1 = telegram.import_total_wh
                            ex1, ex2 = telegram.export_t1_wh, telegram.export_t2_wh
                            if ex1 is None and ex2 is None:
                                ex1 = telegram.export_total_wh
                            self._emit(result, ean, depth, ts, (i1, i2, ex1, ex2), E_PT15M, e)

            for device in telegram.mbus:
                dev_id = device.meter_id
                if device.device_type != DEVICE_TYPE_GAS or dev_id is None:
                    continue
                if dev_id not in meter_ids:
                    continue
                bound = True
                routes = gas.get(dev_id)
                if routes is None:
                    problem = problem or ("unknown-meter", f"gas meter {dev_id} is not registered")
                    continue
                t = device.measured_at
                if t is None or not earliest <= (ts := int(t.timestamp())) <= latest:
                    problem = problem or self._time_problem(t, now_s, "gas capture")
                    continue
                if device.value is None or device.unit != "dm3":
                    problem = problem or ("bad-value", f"gas meter {dev_id} sent no volume")
                    continue
                valid += 1
                route = routes[0] if len(routes) == 1 else pick_route(routes, ts)
                depth = route.policy.depth_s(ts, now_s)
                g_depths[depth] += 1
                if depth:
                    ean = route.ean_num
                    e = entry_of(ean)
                    if e is None or not (
                        e[8] <= ts < e[7]
                        and (depth < 2 or e[5] <= ts < e[4])
                        and (depth < 3 or e[2] <= ts < e[1])
                    ):
                        self._emit(result, ean, depth, ts, (device.value,), G_PT1H, e)

            if valid:
                result.accepted += 1
            elif problem is not None:
                rejected.append({"index": index, "reason": problem[0], "detail": problem[1]})
            elif not bound:
                ids = [meter_id] if meter_id else []
                ids += [d.meter_id for d in telegram.mbus if d.meter_id]
                detail = (
                    f"meter {', '.join(ids)} is not bound to this device"
                    if ids
                    else "telegram carries no meter equipment id"
                )
                reason = "meter-not-bound" if ids else "unknown-meter"
                rejected.append({"index": index, "reason": reason, "detail": detail})
            else:  # bound gas device of another type only: nothing to read
                rejected.append(
                    {"index": index, "reason": "unknown-meter", "detail": "no readable meter"}
                )
        return result

    def _emit(
        self,
        result: IngestResult,
        ean: int,
        depth: int,
        ts: int,
        values: tuple[int | None, ...],
        interval_table: int,
        cached: tuple[int, ...] | None,
    ) -> None:
        # depth (CompiledPolicy.depth_s): 1 P1M, 2 +P1D, 3 +interval. interval_table is E_PT15M
        # or G_PT1H; its day and month tables follow it (+1, +2), as do the BestCache slots.
        day, _, month, _ = self.bucketer.bounds(ts)
        if depth == 1:
            targets: tuple[tuple[int, int], ...] = ((interval_table + 2, month),)
        elif depth == 2:
            targets = ((interval_table + 2, month), (interval_table + 1, day))
        else:
            size = 900 if interval_table == E_PT15M else 3600
            targets = (
                (interval_table + 2, month),
                (interval_table + 1, day),
                (interval_table, ts - ts % size),
            )
        batch = result.batch
        for table, start in targets:
            if cached is not None:
                slot = 3 * (table - interval_table)
                # best <= ts < end: this period holds a committed reading at or before ts
                if cached[slot + 2] <= ts < cached[slot + 1]:
                    continue
            key = (ean, start)
            rows = batch[table]
            old = rows.get(key)
            if old is None:
                rows[key] = (ean, start, ts, *values)
                result.rows += 1
            elif ts < old[2]:  # type: ignore[operator]
                rows[key] = (ean, start, ts, *values)


# --- the writer ---------------------------------------------------------------------------------

#: errors after which a batch is simply tried again (another process held conflicting locks)
_RETRYABLE: Final = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_MAX_ATTEMPTS: Final = 5


class RowWriter(Protocol):
    """Where the pipeline's rows go; returns once they are committed."""

    async def write(self, batch: Batch) -> None: ...


class BatchWriter:
    """Group commit: merges concurrent requests' rows and writes them in one transaction.

    ``write`` returns when the transaction holding the rows has committed (or raises what made
    it fail: DatabaseUnavailableError when PostgreSQL cannot be reached).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        best: BestCache,
        *,
        max_delay_s: float = 0.005,
        max_rows: int = 5000,
        acquire_timeout_s: float = 5.0,
    ) -> None:
        self.pool = pool
        self.best = best
        self.max_delay_s = max_delay_s
        self.max_rows = max_rows
        self.acquire_timeout_s = acquire_timeout_s
        self._batch = new_batch()
        self._rows = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._full: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._conn: asyncpg.Connection | None = None
        self.flushes = 0

    def start(self) -> None:
        """Start the flush task (in the running loop)."""
        self._task = asyncio.create_task(self._run(), name="ingest-writer")

    async def close(self) -> None:
        """Flush what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._full is not None and not self._full.done():
            self._full.set_result(None)
        if self._task is not None:
            try:
                await self._task
            finally:
                self._task = None
                await self._release()

    async def write(self, batch: Batch) -> None:
        """Queue ``batch`` and wait until it is committed."""
        if self._task is None or self._closing:
            raise DatabaseUnavailableError("the gateway is shutting down; retry later")
        self._rows += merge_into(self._batch, batch)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake.set()
        if self._rows >= self.max_rows and self._full is not None and not self._full.done():
            self._full.set_result(None)
        await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiters:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                if not self._waiters:
                    continue
                if self._rows < self.max_rows and self.max_delay_s > 0 and not self._closing:
                    # gather concurrent requests for a few ms (or until the batch is full)
                    self._full = loop.create_future()
                    await asyncio.wait((self._full,), timeout=self.max_delay_s)
                    self._full = None
            # rows queued while the previous flush ran are flushed at once: they have waited
            batch, waiters = self._batch, self._waiters
            self._batch, self._rows, self._waiters = new_batch(), 0, []
            await self._flush(batch, waiters)

    async def _flush(self, batch: Batch, waiters: list[asyncio.Future[None]]) -> None:
        error: BaseException | None = None
        try:
            # shielded: a shutdown must not cut a transaction whose waiters expect an answer
            await asyncio.shield(self._write_with_retries(batch))
        except asyncio.CancelledError:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(DatabaseUnavailableError("write interrupted; retry"))
            raise
        except db.CONNECTION_ERRORS as exc:
            log.warning("ingest write failed: database unavailable (%s)", type(exc).__name__)
            error = DatabaseUnavailableError("the database is temporarily unavailable")
        except (TimeoutError, DatabaseUnavailableError) as exc:
            log.warning("ingest write failed: %s", type(exc).__name__)
            error = DatabaseUnavailableError("the database did not accept the write in time")
        except Exception as exc:
            # not swallowed: every waiting request re-raises it (a 500 via the middleware)
            log.exception("ingest write failed")
            error = exc
        self.flushes += 1
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    async def _write_with_retries(self, batch: Batch) -> None:
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                await self._write_once(batch)
                break
            except _RETRYABLE as exc:
                if attempt == _MAX_ATTEMPTS:
                    raise
                log.info("ingest write retried after %s", type(exc).__name__)
                await asyncio.sleep(0.001 * attempt)
        best = self.best
        for table in range(N_TABLES):
            for (ean, start), row in batch[table].items():
                best.lower((ean, table, start), row[2])  # type: ignore[arg-type]

    async def _connection(self) -> asyncpg.Connection:
        # The writer keeps one pooled connection between flushes: releasing it after every
        # flush costs a reset round trip; on any failure it goes back to the pool (which
        # closes a broken one) and the next flush acquires afresh.
        if self._conn is None:
            try:
                self._conn = await self.pool.acquire(timeout=self.acquire_timeout_s)
            except TimeoutError as exc:
                raise DatabaseUnavailableError(
                    "the database is busy: no connection came free in time"
                ) from exc
        return self._conn

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.pool.release(conn)

    async def _write_once(self, batch: Batch) -> None:
        started = time.perf_counter()
        tables: list[int] = []
        args: list[list[int | None]] = []
        for table in range(N_TABLES):
            rows = batch[table]
            if not rows:
                continue
            # a fixed order (table, ean, period) keeps concurrent writers from deadlocking
            ordered = [rows[k] for k in sorted(rows)]
            tables.append(table)
            args.extend(list(col) for col in zip(*ordered, strict=True))
        if not tables:
            return
        conn = await self._connection()
        try:
            (written,) = await conn.fetch(flush_sql(tuple(tables)), *args)
        except BaseException:
            await self._release()
            raise
        total = 0
        for table, count in zip(tables, written, strict=True):
            total += len(batch[table])
            if count:
                metrics.READINGS_STORED.labels(TABLE_GRANULARITY[table].value).inc(count)
        metrics.INGEST_BATCH_SIZE.observe(total)
        metrics.DB_WRITE_SECONDS.observe(time.perf_counter() - started)


# --- app wiring ---------------------------------------------------------------------------------


@dataclass(slots=True)
class IngestState:
    """The ingest machinery of one gateway process."""

    pipeline: IngestPipeline
    writer: RowWriter
    index: ConsentIndex
    maintainer: IndexMaintainer | None
    clock: Callable[[], float]


INGEST_KEY: Final = web.AppKey("ingest", IngestState)
#: set before start-up to run the app on another clock (tests replaying a past day)
CLOCK_KEY: Final[web.AppKey[Callable[[], float]]] = web.AppKey("ingest_clock")
#: set to False before start-up to run without LISTEN (tests making a cache stale on purpose)
LISTEN_KEY: Final = web.AppKey("ingest_listen", bool)


def setup_ingest(app: web.Application) -> None:
    """Add ``POST /v1/telegrams``, the admin consent endpoints and the ingest cleanup context
    (consent index + LISTEN, batch writer) to ``app``."""
    from gateway.handlers import consents, telegrams

    telegrams.setup_routes(app)
    consents.setup_routes(app)
    app.cleanup_ctx.append(_ingest_ctx)


async def _ingest_ctx(app: web.Application) -> AsyncIterator[None]:
    from gateway.app import POOL_KEY, SETTINGS_KEY

    settings = app[SETTINGS_KEY]
    pool = app[POOL_KEY]
    index = ConsentIndex()
    maintainer = IndexMaintainer(pool, index, listen=app.get(LISTEN_KEY, True))
    await maintainer.start()
    best = BestCache()
    writer = BatchWriter(
        pool,
        best,
        max_delay_s=settings.ingest_batch_max_delay_ms / 1000,
        max_rows=settings.ingest_batch_max_rows,
        acquire_timeout_s=settings.pool_acquire_timeout_s,
    )
    writer.start()
    pipeline = IngestPipeline(
        index,
        best,
        future_tolerance_s=settings.future_tolerance_s,
        horizon_s=settings.spool_horizon_days * 86400,
    )
    clock = app.get(CLOCK_KEY, time.time)
    app[INGEST_KEY] = IngestState(pipeline, writer, index, maintainer, clock)
    try:
        yield
    finally:
        try:
            await writer.close()
        finally:
            await maintainer.stop()
