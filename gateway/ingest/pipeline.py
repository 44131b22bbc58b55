"""The ingest pipeline: telegrams → period readings → one group-committed write.

Per telegram (``IngestPipeline.process``, pure apart from the in-memory caches it is given)::

    parse → resolve meters → time checks → consent policy → period bucketing → "can it improve?"

* **Resolve.** The electricity equipment id (``0-0:96.1.1``) and each gas M-Bus device's id
  (``0-n:96.1.0``, device type 3) are looked up among the meter ids bound to the device, then in
  the consent index (meter id → the EAN it was installed on and the contract in force at the
  measured time, SPEC §3a). A telegram none of whose meters is bound to the device is rejected
  (``meter-not-bound``); bound but installed nowhere at that time → ``unknown-meter``; installed
  but under no contract then → ``no-contract``. Meters of a telegram that are not bound are
  ignored (a gas meter supplied by someone else), so the readings of one meter never land under
  another.
* **Time.** Electricity uses the telegram time, gas the M-Bus capture time (never the telegram
  time). No/unset clock → ``clock-unset``; more than ``future_tolerance_s`` ahead of the server
  clock → ``future-timestamp``; older than the spool horizon → ``too-old``. A telegram is rejected
  when none of its bound readings passes (with the first reading's reason); otherwise it is
  accepted — also when the policy withholds every reading (level ``none``, nothing new).
* **Range.** A register above ``schema.REGISTER_MAX`` (the int4 columns of migration 0014;
  beyond any DSMR meter's range) → ``bad-value`` naming it, before the reading can join a write
  batch: the database would refuse the value, and the writer would have to bisect the batch to
  find whose it was.
* **Policy.** ``ConsentIndex.depth_s`` on the meter's newest route (integer comparisons; the
  rule of ``consent.policy``, pre-computed).
* **Buckets.** ``gateway.ingest.periods.Bucketer``: ``P1M``/``P1D`` at Amsterdam midnight, ``PT15M``
  (electricity) and ``PT1H`` (gas) on UTC quarter/hour boundaries.
* **Improve?** The reading of a period is the one with the earliest measured time. ``BestCache``
  remembers, per EAN and table, the newest period with a measured time already committed (and
  the period's end): the database holds that one or an earlier one, so a reading measured at or
  after it and before the end cannot improve the period and is skipped without a query or any
  period arithmetic (the common case: 90 telegrams per quarter hour, one improves).

Totals-only electricity meters (``1.8.0``/``2.8.0`` without the T1/T2 split) store the total in
``import_t1_wh``/``export_t1_wh`` and NULL in the T2 columns.

Writes (``BatchWriter``): requests enqueue their candidate rows; one writer task merges them
(earliest per period) and flushes them, after gathering for at most ``ingest_batch_max_delay_ms``
while other requests are still on their way (or at ``ingest_batch_max_rows`` rows), in ONE
statement, hence one implicit transaction and one round trip — a data-modifying CTE
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

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from consent.levels import Granularity
from gateway.ingest.best_cache import BestCache
from gateway.ingest.consent_index import NO_CONTRACT, OUTSIDE
from gateway.ingest.periods import AMSTERDAM, Bucketer
from gateway.ingest.sql import (
    E_PT15M,
    G_PT1H,
    Batch,
    new_batch,
)
from gateway.storage.schema import REGISTER_MAX
from p1_reader.errors import P1Error
from p1_reader.parser import parse_telegram
from p1_reader.telegram import DEVICE_TYPE_GAS, Telegram

log = logging.getLogger(__name__)

# --- body splitting -----------------------------------------------------------------------------

_BLANK: Final = b"\r\n \t\x00"
#: measured times whose Unix seconds a pipeline remembers (``IngestPipeline._epoch``)
EPOCHS_MAX: Final = 65536


def split_body(body: bytes, limit: int | None = None) -> list[bytes]:
    """Cut a request body into telegrams: each ends at the line that starts with ``!``, or,
    for one without a ``!`` line (DSMR 2.2), before the next line that starts with ``/``.

    With ``limit``, cutting stops after ``limit + 1`` pieces: enough for the caller to know the
    body holds too many, without the work of cutting a flood of junk frames.

    Deliberately simpler than ``p1_reader.framing.Framer``: the device sends whole telegrams and
    counts them, so every piece (garbage included) keeps its index and gets its own outcome
    instead of being skipped. Blank bytes between telegrams are dropped.
    """
    parts: list[bytes] = []
    pos = 0
    n = len(body)
    while pos < n and (limit is None or len(parts) <= limit):
        while pos < n and body[pos] in _BLANK:
            pos += 1
        if pos >= n:
            break
        bang = body.find(b"\n!", pos)
        if body[pos] == 0x2F:  # '/': a telegram without a '!' line (DSMR 2.2) ends where the
            # next header starts a line
            head = body.find(b"\n/", pos, n if bang < 0 else bang)
            if head >= 0:
                parts.append(body[pos : head + 1])
                pos = head + 1
                continue
        if bang < 0:
            parts.append(body[pos:])
            break
        eol = body.find(b"\n", bang + 2)
        end = n if eol < 0 else eol + 1
        parts.append(body[pos:end])
        pos = end
    return parts


# --- the pipeline -------------------------------------------------------------------------------


class RouteSource(Protocol):
    """What the pipeline needs from the consent index."""

    @property
    def electricity(self) -> dict[str, int]: ...

    @property
    def gas(self) -> dict[str, int]: ...

    @property
    def ean_nums(self) -> Sequence[int]: ...

    def depth_s(self, route: int, ts: int, now_s: int) -> int: ...

    def locate(self, table: dict[str, int], meter_id: str, ts: int) -> int | None: ...

    def ean_of(self, route: int) -> str: ...


@dataclass(slots=True)
class IngestResult:
    """The outcome of one request's telegrams, before the write."""

    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    batch: Batch = field(default_factory=new_batch)
    rows: int = 0
    #: readings per commodity (0 electricity, 1 gas) and policy depth (0 nothing .. 3 interval)
    depths: list[list[int]] = field(default_factory=lambda: [[0, 0, 0, 0], [0, 0, 0, 0]])
    #: parsed telegrams whose S/W flag contradicts the calendar (``Telegram.dst_flag_mismatch``)
    dst_flag_mismatches: int = 0

    @property
    def withheld(self) -> dict[Granularity, int]:
        """Readings the policy did not allow to store, by granularity (for metrics)."""
        out: dict[Granularity, int] = {}
        pairs = ((Granularity.PT15M, self.depths[0]), (Granularity.PT1H, self.depths[1]))
        for interval, counts in pairs:
            # a reading at depth d is withheld from every granularity deeper than d
            monthly = counts[0]
            daily = monthly + counts[1]
            finer = daily + counts[2]
            if not finer:
                continue  # the common case: every reading went as deep as interval data
            for granularity, count in (
                (Granularity.P1M, monthly),
                (Granularity.P1D, daily),
                (interval, finer),
            ):
                if count:
                    out[granularity] = out.get(granularity, 0) + count
        return out


def _resolve(
    index: RouteSource,
    table: dict[str, int],
    meter_id: str,
    route: int,
    depth: int,
    ts: int,
    now_s: int,
    t: datetime,
) -> tuple[int, int, tuple[str, str] | None]:
    """The ingest's off-path (the newest route answered OUTSIDE or NO_CONTRACT for ``ts``): the
    route whose window holds ``ts`` and its depth, or why the reading belongs nowhere (SPEC
    §3a): the meter was installed on no connection then (``unknown-meter``), or nobody had a
    contract there (``no-contract``). A route storing nothing by level (``none``) passes."""
    if depth == OUTSIDE:
        found = index.locate(table, meter_id, ts)
        if found is None:
            return (
                route,
                0,
                (
                    "unknown-meter",
                    f"the meter was installed on no registered connection at {t.isoformat()}",
                ),
            )
        route, depth = found, index.depth_s(found, ts, now_s)
    if depth == NO_CONTRACT:
        return (
            route,
            0,
            (
                "no-contract",
                f"no supply contract was in force on connection {index.ean_of(route)}"
                f" at {t.isoformat()}",
            ),
        )
    return route, depth, None


#: the energy registers of a telegram with the OBIS code each comes from (C.D.E: the parser
#: also reads them from channel B=1)
_ENERGY_REGISTERS: Final = (
    ("import_t1_wh", "1.8.1"),
    ("import_t2_wh", "1.8.2"),
    ("export_t1_wh", "2.8.1"),
    ("export_t2_wh", "2.8.2"),
    ("import_total_wh", "1.8.0"),
    ("export_total_wh", "2.8.0"),
)


def _register_problem(telegram: Telegram) -> tuple[str, str]:
    """The reason a telegram with an energy register above ``REGISTER_MAX`` is rejected (the
    rare path: the check itself is inline). Its value is beyond any DSMR meter's range, so the
    telegram is refused as a whole rather than stored in part."""
    too_large = [
        code
        for name, code in _ENERGY_REGISTERS
        if (value := getattr(telegram, name)) is not None and value > REGISTER_MAX
    ]
    return (
        "bad-value",
        f"energy register {', '.join(too_large)} is above {REGISTER_MAX} Wh, the largest"
        " register value stored (DSMR's F9(3,3) reaches 999999999 Wh)",
    )


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
        # measured time → Unix seconds. datetime.timestamp() was a tenth of the pipeline's own
        # time per telegram; the parser hands out the same datetime object for a repeated
        # timestamp text (meters share seconds, gas captures share hours), whose hash is kept
        # in the object, so a look-up here costs a tenth of it. Bounded: cleared when full.
        self._epochs: dict[datetime, int] = {}

    def _epoch(self, t: datetime) -> int:
        """``int(t.timestamp())``, remembered (the ``_epochs`` miss path)."""
        if len(self._epochs) >= EPOCHS_MAX:
            self._epochs.clear()
        ts = self._epochs[t] = int(t.timestamp())
        return ts

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
        index_ = self.index
        electricity = index_.electricity
        gas = index_.gas
        ean_nums = index_.ean_nums
        depth_s = index_.depth_s
        parse = self.parse
        entry_of = self.best.entry
        epochs = self._epochs
        epoch = self._epoch
        latest = now_s + self.future_tolerance_s
        earliest = now_s - self.horizon_s
        top = REGISTER_MAX
        for index, part in enumerate(parts):
            try:
                telegram = parse(part)
            except P1Error as exc:
                rejected.append({"index": index, "reason": exc.reason, "detail": str(exc)})
                continue
            if telegram.dst_flag_mismatch:
                result.dst_flag_mismatches += 1
            bound = False
            valid = 0
            problem: tuple[str, str] | None = None

            meter_id = telegram.meter_id
            if meter_id is not None and meter_id in meter_ids:
                bound = True
                route = electricity.get(meter_id)
                t = telegram.timestamp
                if route is None:
                    problem = ("unknown-meter", f"meter {meter_id} is not registered")
                elif t is None or not earliest <= (ts := epochs.get(t) or epoch(t)) <= latest:
                    problem = self._time_problem(t, now_s, "telegram")
                elif (
                    telegram.import_t1_wh is None
                    and telegram.import_t2_wh is None
                    and telegram.import_total_wh is None
                ):
                    problem = ("bad-value", "telegram carries no import energy register")
                elif (
                    (telegram.import_t1_wh or 0) > top
                    or (telegram.import_t2_wh or 0) > top
                    or (telegram.export_t1_wh or 0) > top
                    or (telegram.export_t2_wh or 0) > top
                    or (telegram.import_total_wh or 0) > top
                    or (telegram.export_total_wh or 0) > top
                ):
                    problem = _register_problem(telegram)
                else:
                    # the newest route first (one dict look-up, integer comparisons); only a
                    # reading outside its window or on a stretch without a contract looks
                    # further
                    depth = depth_s(route, ts, now_s)
                    if depth < 0:
                        route, depth, problem = _resolve(
                            index_, electricity, meter_id, route, depth, ts, now_s, t
                        )
                if problem is None:
                    valid = 1
                    e_depths[depth] += 1
                    if depth:
                        ean = ean_nums[route]  # type: ignore[index]  # no problem: a route
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
                route = gas.get(dev_id)
                if route is None:
                    problem = problem or ("unknown-meter", f"gas meter {dev_id} is not registered")
                    continue
                t = device.measured_at
                if t is None or not earliest <= (ts := epochs.get(t) or epoch(t)) <= latest:
                    problem = problem or self._time_problem(t, now_s, "gas capture")
                    continue
                if device.value is None or device.unit != "dm3":
                    problem = problem or ("bad-value", f"gas meter {dev_id} sent no volume")
                    continue
                if device.value > top:
                    problem = problem or (
                        "bad-value",
                        f"gas meter {dev_id}: the volume is above {REGISTER_MAX} dm3, the largest"
                        " register value stored (DSMR's F8(3,3) reaches 99999999 dm3)",
                    )
                    continue
                depth = depth_s(route, ts, now_s)
                if depth < 0:
                    route, depth, why = _resolve(index_, gas, dev_id, route, depth, ts, now_s, t)
                    if why is not None:
                        problem = problem or why
                        continue
                valid += 1
                g_depths[depth] += 1
                if depth:
                    ean = ean_nums[route]
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
