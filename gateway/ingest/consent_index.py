"""The in-memory consent index: meter id → where its readings go over time (EAN, contract) with
the contract's compiled storage policy.

The ingest hot path asks it "which granularities may be stored for this meter's reading measured
at t, processed now" with one dict look-up and a few integer comparisons (bench/consent_check.py).
It is compact (about 150 bytes a connection) and a full load reads it from a table the database
keeps in the index's own shape (migration 0015), in batches built as they arrive (B5: 2 million
connections per gateway process in seconds and a few hundred MiB).

Coherence across gateway processes:

* every change of ``contracts``, ``meter_installations`` or ``consents`` NOTIFYs channel
  ``meterpoort_consent`` with the EAN (statement triggers from migrations 0002 and 0011; consent
  changes made here
  also NOTIFY explicitly);
  each process LISTENs and reloads the EANs it is told about, coalescing bursts;
* the same triggers' twins append the EANs to a change log (migration 0013); every few seconds,
  and after a lost LISTEN, a process catches up with what the log recorded since the snapshot
  its index is current to (``IndexMaintainer.catch_up``). No periodic full reload: one only at
  start and as a fallback;
* the process that makes a change reloads its EANs before it answers (``IngestState.refresh``);
* the database enforces the interval rule itself (gateway.ingest.sql ``INTERVAL_CONDITION``),
  so a stale index can at worst store *fewer* interval readings, never one at or after a
  consent's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import re
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from consent.levels import Commodity, Granularity
from gateway import metrics
from gateway.storage import db
from gateway.supervisor import stop

log = logging.getLogger(__name__)

#: epoch seconds standing in for "no end" (and "no start"): plain integer comparisons
FAR_S = 1 << 62

CHANNEL = "meterpoort_consent"
#: NOTIFYed when a device row changes (rebind, revocation: migration 0011)
DEVICE_CHANNEL = "meterpoort_device"

#: pending EANs above which a burst of notifications is served by one full reload
FULL_RELOAD_THRESHOLD = 2000

# Two shapes of the same data feed the index. ``_ROUTE_QUERY`` + ``_CONSENT_QUERY`` give records
# (EAN reloads, tests): every meter installation with the contracts of its EAN that overlap it
# (one row per pair; an installation no contract overlaps comes once, with NULL contract
# columns), and the interval consents that can still matter for storage decisions: not yet over
# at load time (an entry whose consent expires later stops allowing interval storage by itself:
# the policy checks now). A full load reads the same join from table ``index_routes``, which the
# database keeps equal to view ``index_route_lines`` (migration 0015) so that no load joins
# anything: times as whole epoch seconds, the level as its depth, each contract's consent
# windows in one field. The common row ("plain": one contract covering the whole installation,
# no interval consent, a meter id without COPY escapes) is four numbers as int8 (EAN number,
# window start and end, level depth) and the meter id, in a partition per commodity, read a
# range of pages at a time and converted in C-level passes (``_CopyBuilder``). The common row
# with consent ("windowed", migration 0016: the same on a daily contract with one interval
# consent) is read alike, two more numbers giving its consent window. Any other row is the
# meter id and its fields space-separated, streamed with COPY (``_copy_rows``).
_ROUTE_QUERY = """
SELECT i.ean, n.ean_num, i.commodity, i.meter_id, i.installed_from, i.installed_until,
       k.contract_id, k.contract_start, k.contract_end, k.level
FROM meter_installations i
JOIN connections n ON n.ean = i.ean
LEFT JOIN contracts k ON k.ean = i.ean
 AND k.contract_start < coalesce(i.installed_until, 'infinity')
 AND coalesce(k.contract_end, 'infinity') > i.installed_from
"""
_CONSENT_QUERY = """
SELECT c.ean, c.contract_id, c.granted_at, c.expires_at, c.ended_at
FROM consents c
WHERE c.data_class = 'interval'
  AND coalesce(least(c.ended_at, c.expires_at), 'infinity') > now()
"""
#: the plain rows of one commodity's partition (migration 0015) on pages [$1, $2): their numbers
#: (four int8 a row) and their meter ids (one a line), in the same order (two aggregates of one
#: scan). A few thousand rows come as two values: nothing is done per row on the way, neither
#: by PostgreSQL's COPY nor by the client's protocol, and the build converts them in bulk.
_PLAIN_QUERY = """
SELECT string_agg(numbers, ''::bytea), string_agg(meter_id, E'\\n')
FROM {} WHERE ctid >= $1::tid AND ctid < $2::tid
"""
#: (gas, the partition, windowed): windowed rows carry six numbers, plain ones four
_PLAIN_TABLES = (
    (False, "index_routes_e", False),
    (True, "index_routes_g", False),
    (False, "index_routes_ew", True),
    (True, "index_routes_gw", True),
)
#: the pages of a partition: any row the load's snapshot sees is on one of them
_PAGES_QUERY = "SELECT pg_relation_size($1::regclass) / current_setting('block_size')::int"
#: pages read at a time (some 30 000 plain rows, a megabyte or two)
_PAGES_PER_BATCH = 512
#: every other row: kind ('R'), meter id, fields
_OTHER_QUERY = "SELECT kind, meter_id, fields FROM index_routes WHERE kind = 'R'"
#: the load's "now" in epoch seconds: consents over by then are not loaded
_NOW_QUERY = "SELECT date_part('epoch', now())"
# the time of the newest grant or end a load sees (ended consents are not loaded, but their end
# is a change the index follows): what tells how far behind the database a process is
_NEWEST_CHANGE_QUERY = "SELECT max(greatest(c.granted_at, c.ended_at)) FROM consents c"
#: the same of every consent: two index look-ups (migration 0016) instead of a scan of them all
_NEWEST_CHANGE_ALL_QUERY = (
    "SELECT greatest((SELECT max(granted_at) FROM consents), (SELECT max(ended_at) FROM consents))"
)

#: what ``ConsentIndex.depth_s`` answers besides a storage depth (0 nothing, 1 ``P1M``, 2 also
#: ``P1D``, 3 also the interval granularity): the reading lies outside the route's window ...
OUTSIDE = -1
#: ... or inside a stretch where the meter was installed but nobody had a contract
NO_CONTRACT = -2

#: a route's policy: the level's depth (every connection without consent costs no object of its
#: own), NO_CONTRACT, or, for a daily contract with interval consents, the consents'
#: ``[granted, end)`` windows in epoch seconds (clipped to the route's window)
Policy = int | tuple[tuple[int, int], ...]
#: EANs up to which ``routes_of_many`` searches per EAN (each a few ms with 2 million routes)
_SEARCHES = 16
#: a route's depth code when its policy has consent windows
_WINDOWED = 9

_DEPTHS: dict[str, int] = {"none": 0, "monthly": 1, "daily": 2}
_GRANULARITIES: dict[tuple[bool, int], frozenset[Granularity]] = {
    (gas, depth): frozenset(
        (Granularity.P1M, Granularity.P1D, Granularity.PT1H if gas else Granularity.PT15M)[:depth]
    )
    for gas in (False, True)
    for depth in range(4)
}

#: one joined (installation, contract) row in epoch seconds: ean_num, gas, meter id, installed
#: from, installed until (FAR_S: open), contract start (None: no contract), contract end
#: (FAR_S: open), level depth, the contract's consent windows (unclipped; end FAR_S: open)
_Row = tuple[int, bool, str, int, int, int | None, int, int, list[tuple[int, int]]]

#: joined rows of installations to cut into routes, by (EAN number, meter id, installed from)
_Pending = dict[tuple[int, str, int], list[_Row]]


@dataclass(slots=True, frozen=True)
class MeterRoute:
    """A readable view of one route (tests, diagnostics; the hot path uses route numbers): where
    a meter's readings measured in ``[lo_s, hi_s)`` go (SPEC §3a), the EAN the meter was
    installed on and whether a contract was in force then (if not, such readings are rejected
    ``no-contract``)."""

    ean: str
    ean_num: int
    commodity: Commodity
    lo_s: int
    hi_s: int
    under_contract: bool
    #: the contract's level as a depth (0 none, 1 monthly, 2 daily)
    level_depth: int
    #: the interval consent windows, ``[granted, end)`` in epoch seconds
    windows: tuple[tuple[int, int], ...]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ceil_s(t: datetime | None) -> int:
    """Whole epoch seconds at or after ``t`` (FAR_S for no time)."""
    if t is None:
        return FAR_S
    delta = t - _EPOCH  # exact (a float timestamp is not, to the microsecond)
    return delta.days * 86400 + delta.seconds + (1 if delta.microseconds else 0)


def _policy(depth: int, windows: list[tuple[int, int]], hi: int) -> Policy:
    """The policy of a route ending at ``hi``: consent windows only count on a daily contract,
    and end with the route's window (as ``consent.policy.CompiledPolicy``)."""
    if depth != 2 or not windows:
        return depth
    spans = tuple((a, min(b, hi)) for a, b in windows if a < min(b, hi))
    return spans or depth


class ConsentIndex:
    """Meter id → its routes, per commodity; pure in-memory (loading is ``load_all`` and
    ``load_eans``, keeping it current is ``IndexMaintainer``).

    Compact on purpose (B5: 2 million connections per process): ``electricity`` and ``gas`` map
    a meter id to its newest route's *number*, and a route is a row of parallel arrays (EAN
    number, window start and end in epoch seconds) plus its policy, which is a shared small int
    for every route without interval consent. A meter with several routes (moves, switches,
    meter exchanges; rare) has its older ones in ``_older``, newest first. The pipeline asks
    ``depth_s`` about the newest route and only looks further (``locate``) when the reading lies
    outside it.
    """

    __slots__ = (
        "_depth",
        "_free",
        "_hi",
        "_lo",
        "_older",
        "_wend",
        "_wfirst",
        "_windows",
        "_wstart",
        "ean_nums",
        "electricity",
        "gas",
        "generation",
    )

    def __init__(self) -> None:
        self.electricity: dict[str, int] = {}
        self.gas: dict[str, int] = {}
        #: per route: the EAN as a number (0: a removed route whose slot is free for reuse)
        self.ean_nums = array("q")
        self._lo = array("q")
        self._hi = array("q")
        # per route: the policy's depth, or WINDOWED: its consent windows are in ``_windows``
        # (a byte a route; the few routes with interval consent have a dict entry)
        self._depth = array("b")
        self._windows: dict[int, tuple[tuple[int, int], ...]] = {}
        # ... except the windowed routes of a full load (one window each, ``_CopyBuilder``):
        # route ``_wfirst + i`` has ``[_wstart[i], _wend[i])``, 16 bytes instead of a dict entry
        # and three tuples. A WINDOWED route without a ``_windows`` entry is one of those.
        self._wfirst = 0
        self._wstart = array("q")
        self._wend = array("q")
        self._older: dict[int, tuple[int, ...]] = {}
        self._free: list[int] = []
        #: bumped by every change; lets callers notice that the index moved on
        self.generation = 0

    # --- the hot path ----------------------------------------------------------------------

    def depth_s(self, route: int, ts: int, now_s: int) -> int:
        """What may be stored of a reading measured at epoch second ``ts``, processed at
        ``now_s``, under ``route``: a depth 0–3 (``consent.policy.CompiledPolicy.depth_s``),
        OUTSIDE the route's window, or NO_CONTRACT."""
        if ts < self._lo[route] or ts >= self._hi[route]:
            return OUTSIDE
        depth = self._depth[route]
        if depth != _WINDOWED:
            return depth
        windows = self._windows.get(route)
        if windows is None:  # loaded in bulk: one window, in the window arrays
            i = route - self._wfirst
            start, end = self._wstart[i], self._wend[i]
            return 3 if start <= ts < end and start <= now_s < end else 2
        for start, end in windows:
            if start <= ts < end and start <= now_s < end:
                return 3
        return 2

    def locate(self, table: dict[str, int], meter_id: str, ts: int) -> int | None:
        """The route of ``meter_id`` (in ``table``) whose window holds ``ts``; None when the
        meter was installed on no EAN then (windows of one meter never overlap: the database
        enforces it)."""
        head = table.get(meter_id)
        if head is None:
            return None
        for route in (head, *self._older.get(head, ())):
            if self._lo[route] <= ts < self._hi[route]:
                return route
        return None

    def ean_of(self, route: int) -> str:
        """The EAN of ``route`` (EANs are 18 digits: the schema checks it)."""
        return f"{self.ean_nums[route]:018d}"

    # --- reading it ------------------------------------------------------------------------

    def _table(self, commodity: Commodity) -> dict[str, int]:
        return self.electricity if commodity is Commodity.ELECTRICITY else self.gas

    def route(self, meter_id: str, commodity: Commodity, t: datetime) -> MeterRoute | None:
        """The route of ``commodity`` meter ``meter_id`` for a reading at ``t``; None when the
        meter was not installed anywhere at ``t``."""
        found = self.locate(self._table(commodity), meter_id, int(t.timestamp()))
        if found is None:
            return None
        policy = self.policy(found)
        return MeterRoute(
            self.ean_of(found),
            self.ean_nums[found],
            commodity,
            self._lo[found],
            self._hi[found],
            policy != NO_CONTRACT,
            max(policy, 0) if isinstance(policy, int) else 2,
            () if isinstance(policy, int) else policy,
        )

    def granularities(
        self, meter_id: str, commodity: Commodity, t: datetime, now: datetime
    ) -> frozenset[Granularity]:
        """What may be stored for the meter's reading measured at ``t``, processed at ``now``;
        nothing for a meter not installed, or under no contract, at ``t``."""
        ts = int(t.timestamp())
        found = self.locate(self._table(commodity), meter_id, ts)
        if found is None:
            return frozenset()
        depth = self.depth_s(found, ts, int(now.timestamp()))
        return _GRANULARITIES[commodity is Commodity.GAS, max(depth, 0)]

    def __len__(self) -> int:
        """The number of EANs with routes (a scan: for tests and diagnostics)."""
        return len(set(self.ean_nums) - {0})

    # --- changing it -----------------------------------------------------------------------

    def replace_all(
        self,
        installations: Iterable[Mapping[str, Any]],
        contracts: Iterable[Mapping[str, Any]],
        consents: Iterable[Mapping[str, Any]],
    ) -> None:
        """Rebuild the whole index from installation, contract and consent rows."""
        self.replace_rows(join_rows(installations, contracts), consents)

    def replace_rows(
        self, rows: Iterable[Mapping[str, Any]], consents: Iterable[Mapping[str, Any]]
    ) -> None:
        """Rebuild the whole index from joined rows (``_ROUTE_QUERY``) and consent rows."""
        fresh = ConsentIndex()
        fresh._add_rows(_seconds_rows(rows, consents))
        self.adopt(fresh)

    def adopt(self, other: ConsentIndex) -> None:
        """Take over ``other``'s entries (a freshly built index) in one step."""
        # one tuple assignment: readers on the event loop never see a mix (the swap happens
        # on the loop, and the pipeline reads an index within one synchronous call)
        (
            self.electricity,
            self.gas,
            self.ean_nums,
            self._lo,
            self._hi,
            self._depth,
            self._windows,
            self._wfirst,
            self._wstart,
            self._wend,
            self._older,
            self._free,
        ) = (
            other.electricity,
            other.gas,
            other.ean_nums,
            other._lo,
            other._hi,
            other._depth,
            other._windows,
            other._wfirst,
            other._wstart,
            other._wend,
            other._older,
            other._free,
        )
        self.generation += 1

    def update_ean(
        self,
        ean: str,
        installations: Iterable[Mapping[str, Any]],
        contracts: Iterable[Mapping[str, Any]],
        consents: Iterable[Mapping[str, Any]],
    ) -> None:
        """Replace one EAN's routes with those of these rows (no installations: it is gone)."""
        self.update_rows(ean, join_rows(installations, contracts), consents)

    def update_rows(
        self,
        ean: str,
        rows: Iterable[Mapping[str, Any]],
        consents: Iterable[Mapping[str, Any]],
        *,
        old: Iterable[int] | None = None,
    ) -> None:
        """Replace one EAN's routes with those of its joined rows (none: it is gone).
        ``old``: the EAN's current routes, when the caller looked them up (``routes_of_many``)."""
        fresh = list(_seconds_rows(rows, consents))
        gone = set(self._routes_of(int(ean)) if old is None else old)
        if gone:
            # No route records its meter id (8 bytes a connection), so the meters holding the
            # EAN's old routes are looked for among the meters of its new rows: an EAN's
            # installations are only ever added or closed, so they are all there. Should one
            # have been deleted, the tables are searched (slow but rare).
            tables = (self.electricity, self.gas)
            holders = {(row[1], row[2]) for row in fresh}
            heads = [
                (gas, meter_id, head)
                for gas, meter_id in holders
                if (head := tables[gas].get(meter_id)) is not None
            ]
            held = sum(len(gone.intersection(self._chain(head))) for _, _, head in heads)
            if held < len(gone):
                heads = [
                    (gas, meter_id, head)
                    for gas in (False, True)
                    for meter_id, head in tables[gas].items()
                    if not gone.isdisjoint(self._chain(head))
                ]
            for gas, meter_id, head in heads:
                kept = [r for r in self._chain(head) if r not in gone]
                del tables[gas][meter_id]
                self._older.pop(head, None)
                self._link(tables[gas], meter_id, kept)
            for route in gone:
                self.ean_nums[route] = 0
                self._depth[route] = 0
                self._windows.pop(route, None)
                self._free.append(route)
        self._add_rows(fresh)
        self.generation += 1

    def _routes_of(self, ean_num: int) -> list[int]:
        """The routes of an EAN: a search of the EAN numbers' bytes (C speed: milliseconds with
        2 million routes, where a reverse map would cost some 150 bytes a connection)."""
        needle = re.escape(ean_num.to_bytes(8, sys.byteorder, signed=True))
        raw = memoryview(self.ean_nums).cast("B")
        return [m.start() // 8 for m in re.finditer(needle, raw) if m.start() % 8 == 0]

    def routes_of_many(self, eans: Iterable[str]) -> dict[str, list[int]]:
        """The routes of several EANs; beyond a few, one pass over all routes (about 0.1 s
        with 2 million) is cheaper than a search per EAN."""
        wanted = {int(ean): ean for ean in eans}
        if len(wanted) <= _SEARCHES:
            return {ean: self._routes_of(number) for number, ean in wanted.items()}
        found: dict[str, list[int]] = {ean: [] for ean in wanted.values()}
        for route, number in enumerate(self.ean_nums):
            if number in wanted:
                found[wanted[number]].append(route)
        return found

    def _chain(self, head: int) -> tuple[int, ...]:
        return (head, *self._older.get(head, ()))

    def _link(self, table: dict[str, int], meter_id: str, routes: list[int]) -> None:
        """Make ``routes`` (and the meter's current ones) the meter's routes, newest first."""
        head = table.get(meter_id)
        if head is not None:
            routes = [*self._chain(head), *routes]
            self._older.pop(head, None)
        if not routes:
            table.pop(meter_id, None)
            return
        if len(routes) > 1:
            routes.sort(key=self._lo.__getitem__, reverse=True)
            self._older[routes[0]] = tuple(routes[1:])
        table[meter_id] = routes[0]

    def _new_route(self, ean_num: int, lo: int, hi: int, policy: Policy) -> int:
        if self._free:
            route = self._free.pop()
            self.ean_nums[route], self._lo[route], self._hi[route] = ean_num, lo, hi
        else:
            route = len(self._depth)
            self.ean_nums.append(ean_num)
            self._lo.append(lo)
            self._hi.append(hi)
            self._depth.append(0)
        if isinstance(policy, int):
            self._depth[route] = policy
        else:
            self._depth[route] = _WINDOWED
            self._windows[route] = policy
        return route

    def policy(self, route: int) -> Policy:
        """The policy of ``route``."""
        depth = self._depth[route]
        if depth != _WINDOWED:
            return depth
        windows = self._windows.get(route)
        if windows is None:
            i = route - self._wfirst
            return ((self._wstart[i], self._wend[i]),)
        return windows

    def _add_rows(self, rows: Iterable[_Row], pending: _Pending | None = None) -> None:
        """Add the routes of joined rows: the common case, one contract covering the whole
        installation, becomes its one route right away; installations with several contracts,
        or stretches without one, are collected and cut afterwards (``_cut``), or, given
        ``pending``, collected there (rows arriving in parts: ``_cut_pending`` when all came)."""
        later = pending is not None
        if pending is None:
            pending = {}
        electricity, gas_table = self.electricity, self.gas
        new_route, link = self._new_route, self._link
        for row in rows:
            ean_num, gas, meter_id, start, until, k_start, k_end, depth, windows = row
            if k_start is not None and k_start <= start and k_end >= until:
                route = new_route(ean_num, start, until, _policy(depth, windows, until))
                table = gas_table if gas else electricity
                if meter_id in table:
                    link(table, meter_id, [route])
                else:
                    table[meter_id] = route
            else:
                pending.setdefault((ean_num, meter_id, start), []).append(row)
        if not later:
            self._cut_pending(pending)

    def _cut_pending(self, pending: _Pending) -> None:
        for group in pending.values():
            self._cut(group)

    def _cut(self, group: list[_Row]) -> None:
        """The routes of one installation whose contracts do not simply cover it: a route per
        contract (clipped to the installation) and a NO_CONTRACT route per stretch no contract
        covers."""
        ean_num, gas, meter_id, start, until = group[0][:5]
        contracts = sorted((r for r in group if r[5] is not None), key=lambda r: r[5] or 0)
        routes: list[int] = []
        cursor: int | None = start  # the start of what no route covers yet (None: all covered)
        for row in contracts:
            lo, hi = max(start, row[5] or 0), min(until, row[6])
            if cursor is not None and cursor < lo:
                routes.append(self._new_route(ean_num, cursor, lo, NO_CONTRACT))
            routes.append(self._new_route(ean_num, lo, hi, _policy(row[7], row[8], hi)))
            cursor = None if hi >= FAR_S else hi
        if cursor is not None and cursor < until:
            routes.append(self._new_route(ean_num, cursor, until, NO_CONTRACT))
        self._link(self.gas if gas else self.electricity, meter_id, routes)


def _seconds_rows(
    rows: Iterable[Mapping[str, Any]], consents: Iterable[Mapping[str, Any]]
) -> Iterator[_Row]:
    """``_ROUTE_QUERY``-shaped rows and consent rows in the index's own row shape."""
    windows: dict[Any, list[tuple[int, int]]] = {}
    for c in consents:
        ends = [t for t in (c["ended_at"], c["expires_at"]) if t is not None]
        windows.setdefault(c["contract_id"], []).append(
            (_ceil_s(c["granted_at"]), _ceil_s(min(ends)) if ends else FAR_S)
        )
    for row in rows:
        k_start = row["contract_start"]
        level = row["level"]
        yield (
            int(row["ean_num"]),
            row["commodity"] == "gas",
            row["meter_id"],
            _ceil_s(row["installed_from"]),
            _ceil_s(row["installed_until"]),
            None if k_start is None else _ceil_s(k_start),
            _ceil_s(row["contract_end"]),
            0 if level is None else _DEPTHS[level],
            windows.get(row["contract_id"], []) if k_start is not None else [],
        )


def _copy_rows(lines: Iterable[bytes], now_s: float) -> Iterator[_Row]:
    """``index_routes``' other rows (``_OTHER_QUERY``) in the index's row shape, without the
    consent windows over by ``now_s`` (the table keeps a consent until its EAN is written
    again; a load leaves out what is over, as ``_CONSENT_QUERY`` does)."""
    for line in lines:
        _, meter_id, fields = line.split(b"\t")
        ean, gas, start, until, k_start, k_end, depth, *spans = fields.split(b" ")
        windows = [
            (int(spans[i]), FAR_S if spans[i + 1] == b"-" else int(spans[i + 1]))
            for i in range(0, len(spans), 2)
        ]
        yield (
            int(ean),
            gas == b"1",
            _text(meter_id),
            int(start),
            FAR_S if until == b"-" else int(until),
            None if k_start == b"-" else int(k_start),
            FAR_S if k_end == b"-" else int(k_end),
            0 if depth == b"-" else int(depth),
            [w for w in windows if w[1] > now_s],
        )


_ESCAPES = {b"b": "\b", b"f": "\f", b"n": "\n", b"r": "\r", b"t": "\t", b"v": "\v", b"\\": "\\"}


def _text(field: bytes) -> str:
    """A COPY text field's value (backslash escapes undone: meter ids never need them, but
    nothing stops one from holding a backslash)."""
    if b"\\" not in field:
        return field.decode()
    return re.sub(
        rb"\\([0-7]{1,3}|x[0-9a-fA-F]{1,2}|.)",
        lambda m: (
            bytes([int(m[1], 8)])
            if m[1][:1].isdigit()
            else bytes([int(m[1][1:], 16)])
            if m[1][:1] == b"x"
            else _ESCAPES.get(m[1], m[1].decode()).encode()
        ),
        field,
    ).decode()


def join_rows(
    installations: Iterable[Mapping[str, Any]], contracts: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """``_ROUTE_QUERY``'s join done in Python, for callers holding separate rows (tests,
    bench/consent_check.py): installations (ean, ean_num, commodity, meter_id, installed_from,
    installed_until) with their EAN's overlapping contracts (contract_id, contract_start,
    contract_end, level)."""
    contracts_of: dict[str, list[Mapping[str, Any]]] = {}
    for k in contracts:
        contracts_of.setdefault(k["ean"], []).append(k)
    none = {"contract_id": None, "contract_start": None, "contract_end": None, "level": None}
    out: list[dict[str, Any]] = []
    for i in installations:
        start, until = i["installed_from"], i["installed_until"]
        matched = False
        for k in contracts_of.get(i["ean"], ()):
            if (until is None or k["contract_start"] < until) and (
                k["contract_end"] is None or k["contract_end"] > start
            ):
                out.append({**i, **{c: k[c] for c in none}})
                matched = True
        if not matched:
            out.append({**i, **none})
    return out


class _CopyBuilder:
    """Builds a fresh index from the load's batches, in a worker thread (each batch is handed
    over as it arrives: the rows are never all held at once)."""

    def __init__(self, now_s: float) -> None:
        self.index = ConsentIndex()
        self.now_s = now_s
        self._pending: _Pending = {}
        #: CPU seconds the build took (its thread's)
        self.cpu_s = 0.0

    def feed(self, data: bytes) -> None:
        """Add whole lines of ``_OTHER_QUERY``'s COPY text."""
        started = time.thread_time()
        lines = data.split(b"\n")
        lines.pop()  # what follows the last newline
        self.index._add_rows(_copy_rows(lines, self.now_s), self._pending)
        self.cpu_s += time.thread_time() - started

    def add_plain(
        self, gas: bool, numbers: bytes | None, meter_ids: str | None, windowed: bool = False
    ) -> None:
        """Add a batch of plain or windowed rows of one commodity (``_PLAIN_QUERY``). Each
        column is converted in one C-level pass (``array.frombytes``, ``str.split``,
        ``dict.update``): no Python code runs per row, which is what makes 2 million connections
        load in seconds."""
        if numbers is None or meter_ids is None:
            return  # no rows on these pages
        started = time.thread_time()
        try:
            table = self.index.gas if gas else self.index.electricity
            self._plain(table, numbers, meter_ids, 6 if windowed else 4)
        finally:
            self.cpu_s += time.thread_time() - started

    def _plain(self, table: dict[str, int], raw: bytes, joined: str, width: int) -> None:
        meter_ids = joined.split("\n")
        numbers = array("q")
        numbers.frombytes(raw)
        if sys.byteorder == "little":  # int8send is big-endian
            numbers.byteswap()
        if len(numbers) != width * len(meter_ids):
            raise ValueError("consent index: a batch's numbers and meter ids disagree")
        index = self.index
        first = len(index._depth)
        index.ean_nums.extend(numbers[0::width])
        index._lo.extend(numbers[1::width])
        index._hi.extend(numbers[2::width])
        if width == 4:
            index._depth.extend(array("b", numbers[3::4]))
        else:
            self._windowed(first, numbers[4::6], numbers[5::6])
        routes = range(first, len(index._depth))
        if not table.keys().isdisjoint(meter_ids):
            # a meter installed more than once (moved, reinstalled): linked route by route
            for meter_id, route in zip(meter_ids, routes, strict=True):
                index._link(table, meter_id, [route])
            return
        size = len(table)
        table.update(zip(meter_ids, routes, strict=True))
        if len(table) - size < len(meter_ids):  # such a meter twice in this batch
            seen: dict[str, list[int]] = {}
            for meter_id, route in zip(meter_ids, routes, strict=True):
                seen.setdefault(meter_id, []).append(route)
            for meter_id, several in seen.items():
                if len(several) > 1:
                    del table[meter_id]
                    index._link(table, meter_id, several)

    def _windowed(self, first: int, starts: array[int], ends: array[int]) -> None:
        """Routes ``first``… are windowed (one consent window each): their windows go to the
        window arrays, which the windowed batches fill one after the other (their routes are
        consecutive: they are loaded after every plain row and before any other)."""
        index = self.index
        if not index._wstart:
            index._wfirst = first
        if index._wfirst + len(index._wstart) != first:
            raise ValueError("consent index: windowed routes out of order")
        index._wstart.extend(starts)
        index._wend.extend(ends)
        index._depth.extend(array("b", [_WINDOWED]) * len(starts))
        if any(map(self.now_s.__ge__, ends)):
            # a consent that ended since its row was written (rare): it is not loaded, as
            # ``_copy_rows`` leaves it out, and the route stores as its daily level
            for i, end in enumerate(ends):
                if end <= self.now_s:
                    index._depth[first + i] = 2

    def finish(self) -> ConsentIndex:
        started = time.thread_time()
        self.index._cut_pending(self._pending)
        self.cpu_s += time.thread_time() - started
        return self.index


#: bytes of COPY text handed to the build at a time: large enough that the per-batch costs
#: (a thread hand-over, the passes' set-up) vanish, small enough to keep little text alive
_BATCH_BYTES = 1 << 20


class _Batcher:
    """A COPY sink handing whole lines to ``_CopyBuilder.feed`` in the build thread, one batch
    at a time and in order. The build of one batch overlaps the transfer of the next (PostgreSQL
    produces on one core while Python builds on another); at most one batch is being built and
    one collected, so the text held stays about two batches."""

    def __init__(self, builder: _CopyBuilder, executor: Executor) -> None:
        self._builder = builder
        self._executor = executor
        self._parts: list[bytes] = []
        self._size = 0
        self._building: asyncio.Future[None] | None = None
        #: seconds spent waiting for the build (the stream was not the bottleneck then)
        self.waited_s = 0.0

    async def __call__(self, chunk: bytes) -> None:
        self._parts.append(chunk)
        self._size += len(chunk)
        if self._size >= _BATCH_BYTES:
            await self._hand_over(final=False)

    async def _hand_over(self, *, final: bool) -> None:
        data = b"".join(self._parts)
        cut = len(data) if final else data.rfind(b"\n") + 1
        rest = data[cut:]
        self._parts, self._size = ([rest], len(rest)) if rest else ([], 0)
        await self._wait()
        if cut:
            self._building = asyncio.get_running_loop().run_in_executor(
                self._executor, self._builder.feed, data[:cut]
            )

    async def _wait(self) -> None:
        building, self._building = self._building, None
        if building is not None:
            started = time.perf_counter()
            await building
            self.waited_s += time.perf_counter() - started

    async def close(self) -> None:
        """Build what is left (a COPY stream ends with a newline)."""
        if self._size and not b"".join(self._parts).endswith(b"\n"):
            raise ValueError("consent index: COPY stream ended inside a row")
        await self._hand_over(final=True)
        await self._wait()

    async def abandon(self) -> None:
        """After a failed stream: let a batch being built finish, its result unwanted."""
        building, self._building = self._building, None
        if building is not None:
            with contextlib.suppress(Exception):
                await building


@dataclass(slots=True)
class LoadTimes:
    """Where a full load's time went (bench/registry.py prints it)."""

    #: wall seconds from the first query to the last row received
    stream_s: float = 0.0
    #: seconds the stream waited for the build to take a batch
    waited_s: float = 0.0
    #: wall seconds of the build left after the last row arrived (cutting the odd routes)
    finish_s: float = 0.0
    #: CPU seconds of the build (its thread's)
    build_cpu_s: float = 0.0
    #: CPU seconds of this process during the load (all threads: the build and receiving)
    cpu_s: float = 0.0


#: the last full load's times in this process
last_load = LoadTimes()


async def _stream_all(conn: asyncpg.Connection) -> tuple[ConsentIndex, datetime | None]:
    """A new index of every route, and the newest consent change, in one snapshot."""
    global last_load
    times = LoadTimes()
    cpu = time.process_time()
    # one thread builds it all: every thread would get a malloc arena of its own, and the
    # batches' text freed in several arenas is memory the process keeps (B5: RSS)
    with ThreadPoolExecutor(1, thread_name_prefix="consent-index-build") as executor:
        fresh, newest = await _stream_into(conn, executor, times)
    times.cpu_s = time.process_time() - cpu
    last_load = times
    return fresh, newest


async def _stream_into(
    conn: asyncpg.Connection, executor: Executor, times: LoadTimes
) -> tuple[ConsentIndex, datetime | None]:
    loop = asyncio.get_running_loop()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        now_s: float = await conn.fetchval(_NOW_QUERY)
        builder = _CopyBuilder(now_s)
        started = time.perf_counter()
        # PostgreSQL reads the next pages while the thread builds the last ones: the query for
        # batch k + 1 goes out as soon as batch k has arrived, before waiting for the build of
        # batch k - 1 (at most three batches are alive at a time)
        batches = [
            (gas, _PLAIN_QUERY.format(table), first, windowed)
            for gas, table, windowed in _PLAIN_TABLES
            for first in range(0, await conn.fetchval(_PAGES_QUERY, table), _PAGES_PER_BATCH)
        ]

        def fetch(query: str, first: int) -> asyncio.Task[asyncpg.Record | None]:
            return asyncio.ensure_future(
                conn.fetchrow(query, (first, 0), (first + _PAGES_PER_BATCH, 0))
            )

        fetching = fetch(*batches[0][1:3]) if batches else None
        building: asyncio.Future[None] | None = None
        try:
            for n, (gas, _, _, windowed) in enumerate(batches):
                assert fetching is not None
                batch = await fetching
                fetching = fetch(*batches[n + 1][1:3]) if n + 1 < len(batches) else None
                if building is not None:
                    waiting = time.perf_counter()
                    await building
                    times.waited_s += time.perf_counter() - waiting
                assert batch is not None  # an aggregate: one row, NULLs when no rows
                building = loop.run_in_executor(
                    executor, builder.add_plain, gas, batch[0], batch[1], windowed
                )
            if building is not None:
                await building
        except BaseException:
            # let what is under way end (the connection and the executor are used after it)
            for pending in (fetching, building):
                if pending is not None:
                    with contextlib.suppress(Exception):
                        await pending
            raise
        sink = _Batcher(builder, executor)
        try:
            await conn.copy_from_query(_OTHER_QUERY, output=sink)
            await sink.close()
        except BaseException:
            await sink.abandon()
            raise
        times.waited_s += sink.waited_s
        times.stream_s = time.perf_counter() - started
        newest = await conn.fetchval(_NEWEST_CHANGE_ALL_QUERY)
    started = time.perf_counter()
    fresh = await loop.run_in_executor(executor, builder.finish)
    times.finish_s = time.perf_counter() - started
    times.build_cpu_s = builder.cpu_s
    return fresh, newest


async def load_all(conn: asyncpg.Connection, index: ConsentIndex) -> datetime | None:
    """Fill ``index`` from the database in one REPEATABLE READ snapshot; the time of the newest
    consent change loaded.

    The new entries are built in worker threads as the rows stream in and swapped in at once:
    with millions of connections the build takes seconds, and on the event loop it would stall
    every request for that long (the loop still gets the interpreter every few milliseconds
    while a thread works). Readers see the old entries until the swap.
    """
    # Building millions of entries would run the cyclic garbage collector over and over (half
    # the build time with 2 million connections, before the index went compact); the index
    # holds no reference cycles, so nothing is lost by pausing it for the load.
    paused = gc.isenabled()
    gc.disable()
    try:
        fresh, newest = await _stream_all(conn)
    finally:
        if paused:
            gc.enable()
    index.adopt(fresh)
    del fresh
    _return_free_memory()
    return newest


def _libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, where there is one."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # another C library (musl)
        return None
    return trim


_MALLOC_TRIM = _libc_malloc_trim()


def _return_free_memory() -> None:
    """Hand the heap pages a load freed back to the system. The batches of text (and the old
    index, on a reload) are freed between long-lived allocations, where glibc keeps them for
    reuse: about 10 % of the index's size in RSS that nothing uses (B5: RSS per process)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


async def load_eans(
    conn: asyncpg.Connection, index: ConsentIndex, eans: Iterable[str]
) -> datetime | None:
    """Reload the entries of ``eans`` from the database; the time of their newest consent
    change."""
    wanted = list(dict.fromkeys(eans))
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(_ROUTE_QUERY + " WHERE i.ean = ANY($1::text[])", wanted)
        consents = await conn.fetch(_CONSENT_QUERY + " AND c.ean = ANY($1::text[])", wanted)
        newest: datetime | None = await conn.fetchval(
            _NEWEST_CHANGE_QUERY + " WHERE c.ean = ANY($1::text[])", wanted
        )
    rows_of: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        rows_of.setdefault(r["ean"], []).append(r)
    consents_of: dict[str, list[asyncpg.Record]] = {}
    for c in consents:
        consents_of.setdefault(c["ean"], []).append(c)
    current = index.routes_of_many(wanted)
    for ean in wanted:
        index.update_rows(ean, rows_of.get(ean, []), consents_of.get(ean, []), old=current[ean])
    return newest


# --- catching up from the change log (migration 0013) ----------------------------------------

#: EANs of the change log: '' a device changed, '*' "reload everything" (a huge statement)
DEVICES_CHANGED = ""
EVERYTHING = "*"
#: EANs reloaded per step of a catch-up (the loop serves requests between steps)
CATCH_UP_CHUNK = 1000

# The snapshot this transaction reads in (REPEATABLE READ: the one every later statement of the
# transaction uses), and the horizon below which the change log may have been pruned.
_SNAPSHOT_QUERY = """
SELECT pg_current_snapshot()::text AS snapshot,
       (SELECT pruned_below FROM index_changes_mark) AS pruned_below
"""
# The EANs changed by transactions ``$2`` did not see. ``>= xmin`` uses the index and skips what
# every such snapshot saw; the exact test also catches transactions that were still running
# when ``$2`` was taken and committed later (with a lower id than changes seen since): the
# technique of the readings sync feed (gateway.storage.readings_query ``_changed_since``).
_CHANGED_QUERY = """
SELECT DISTINCT ean FROM index_changes
WHERE changed_xid >= $1::bigint
  AND NOT pg_visible_in_snapshot(changed_xid::text::xid8, $2::text::pg_snapshot)
"""


def snapshot_xmin(snapshot: str) -> int:
    """The xmin of a pg_snapshot's text form (``xmin:xmax:xip,…``): every transaction below it
    had ended when the snapshot was taken."""
    return int(snapshot.split(":", 1)[0])


async def prune_change_log(conn: asyncpg.Connection, keep_s: float) -> int:
    """Delete change-log rows older than ``keep_s`` seconds; the number deleted.

    What goes is cut by transaction id, not by time, so the recorded horizon is exact: X is the
    lowest id among rows still young enough to keep, every row below X is deleted, and
    ``pruned_below`` says so. A process whose snapshot's xmin is at or above X had seen every
    deleted row; one below it reloads everything (``IndexMaintainer.catch_up``)."""
    async with conn.transaction():
        horizon = await conn.fetchval(
            """
            SELECT coalesce(
                (SELECT min(changed_xid) FROM index_changes
                 WHERE at >= now() - make_interval(secs => $1)),
                (SELECT max(changed_xid) + 1 FROM index_changes))
            """,
            keep_s,
        )
        if horizon is None:
            return 0
        await conn.execute(
            "UPDATE index_changes_mark SET pruned_below = greatest(pruned_below, $1)", horizon
        )
        status: str = await conn.execute(
            "DELETE FROM index_changes WHERE changed_xid < $1", horizon
        )
    return int(status.rsplit(" ", 1)[-1])


class IndexMaintainer:
    """Keeps a ConsentIndex coherent across processes.

    * at start, a full load in one snapshot, which becomes the *watermark*: the index reflects
      every change that snapshot saw;
    * LISTEN: a NOTIFY reloads its EANs at once (coalesced), the fast path;
    * catch-up (``catch_up``): on a timer, after a lost LISTEN and when notifications pile up, the
      EANs the change log (migration 0013) records since the watermark are reloaded, in one new
      snapshot that becomes the watermark. One indexed query when nothing changed;
    * a full reload only as the fallback: the watermark fell behind the pruned log, or a change
      touched so many EANs that one load of everything is cheaper.

    Every load runs under one lock, so loads apply in the order their snapshots were taken: an
    older snapshot never overwrites what a newer one loaded (an in-process refresh after a grant
    racing a catch-up that started before the grant committed).

    ``listen=False`` and ``catch_up_interval_s=None`` leave the index to explicit calls: what
    tests use to make one process's index deliberately stale.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        index: ConsentIndex,
        *,
        catch_up_interval_s: float | None = 5.0,
        listen: bool = True,
        reconnect_delay_s: float = 1.0,
        acquire_timeout_s: float | None = None,
        change_log_keep_s: float = 86400.0,
        prune_interval_s: float = 3600.0,
        on_devices_changed: Callable[[], None] | None = None,
        on_reloaded: Callable[[list[str] | None], None] | None = None,
    ) -> None:
        self.pool = pool
        #: called right after entries were reloaded (the EANs, None: all of them), so caches
        #: made under the old routing follow (gateway.ingest.best_cache)
        self.on_reloaded = on_reloaded
        #: called when any device changed (or may have, after a lost LISTEN): the credential
        #: cache forgets devices, so a revoked token stops working at once in every process
        self.on_devices_changed = on_devices_changed
        #: how long a reload waits for a pooled connection (None: as long as it takes)
        self.acquire_timeout_s = acquire_timeout_s
        self.index = index
        self.catch_up_interval_s = catch_up_interval_s
        #: how long the change log keeps a change (a process that could not catch up for that
        #: long reloads everything), and how often this process prunes it
        self.change_log_keep_s = change_log_keep_s
        self.prune_interval_s = prune_interval_s
        self.listen = listen
        self.reconnect_delay_s = reconnect_delay_s
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._catch_up_needed = False
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._listen_conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        #: the snapshot (pg_snapshot text) the whole index is current to; None before the load
        self.watermark: str | None = None
        self.full_reloads = 0
        self.ean_reloads = 0
        self.catch_ups = 0
        self.last_full_reload = 0.0
        self._last_prune = time.monotonic()
        #: Unix time of the newest consent grant or end loaded so far
        self.newest_change = 0.0

    async def start(self) -> None:
        """Load the index, then start listening and the periodic catch-up."""
        if self.listen:
            await self._connect_listener()
        await self.reload_all()
        self._tasks.append(asyncio.create_task(self._apply_loop(), name="consent-index-apply"))
        if self.catch_up_interval_s is not None:
            self._tasks.append(
                asyncio.create_task(self._periodic_loop(), name="consent-index-catch-up")
            )
        if self.listen:
            self._tasks.append(
                asyncio.create_task(self._listener_guard(), name="consent-index-listen")
            )

    async def stop(self) -> None:
        """Stop the background tasks and release the LISTEN connection."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await stop(task)
        await self._release_listener()

    async def reload_all(self) -> None:
        """Rebuild the whole index now, in one snapshot that becomes the watermark."""
        async with self._lock, self.pool.acquire(timeout=self.acquire_timeout_s) as conn:
            # whatever was notified so far committed before the snapshot below: it is covered
            self._pending.clear()
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                mark = await conn.fetchrow(_SNAPSHOT_QUERY)
                await self._load_all(conn)
            self.watermark = mark["snapshot"]
        if self.on_reloaded is not None:
            self.on_reloaded(None)

    async def _load_all(self, conn: asyncpg.Connection) -> None:
        # inside the caller's REPEATABLE READ transaction: load_all's own becomes a savepoint
        # of it, so the load reads the snapshot the watermark records
        self._applied(await load_all(conn, self.index))
        self.full_reloads += 1
        self.last_full_reload = time.monotonic()

    async def reload_eans(self, eans: Iterable[str]) -> None:
        """Reload some EANs now (what a NOTIFY leads to, and a change made in this process
        before its answer). The watermark stays: the rest of the index is not re-read."""
        wanted = list(eans)
        async with self._lock, self.pool.acquire(timeout=self.acquire_timeout_s) as conn:
            self._applied(await load_eans(conn, self.index, wanted))
        if self.on_reloaded is not None:
            self.on_reloaded(wanted)
        self.ean_reloads += 1

    async def catch_up(self) -> None:
        """Apply every change the change log records since the watermark, in one snapshot that
        becomes the new watermark (a full reload instead when that is the only safe or the
        cheaper way)."""
        devices_changed = False
        async with self._lock, self.pool.acquire(timeout=self.acquire_timeout_s) as conn:
            # whatever was notified so far committed before the snapshot below: it is covered
            self._pending.clear()
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                mark = await conn.fetchrow(_SNAPSHOT_QUERY)
                since = self.watermark
                if since is None or snapshot_xmin(since) < mark["pruned_below"]:
                    log.warning("consent index: behind the pruned change log; reloading all")
                    changed: set[str] | None = None
                else:
                    records = await conn.fetch(_CHANGED_QUERY, snapshot_xmin(since), since)
                    changed = {r["ean"] for r in records}
                    devices_changed = DEVICES_CHANGED in changed
                    changed.discard(DEVICES_CHANGED)
                    # a full reload when more than half the EANs changed; len(self.index)
                    # counts them by a scan of every route (a second at 2 M), so it runs only
                    # for a change set past the threshold, never on an idle round
                    if EVERYTHING in changed or (
                        len(changed) > FULL_RELOAD_THRESHOLD
                        and len(changed) > len(self.index) // 2
                    ):
                        changed = None
                if changed is None:
                    devices_changed = True  # unknown: as after a lost LISTEN
                    await self._load_all(conn)
                else:
                    await self._load_changed(conn, sorted(changed))
            self.watermark = mark["snapshot"]
            self.catch_ups += 1
        if self.on_reloaded is not None and changed is None:
            self.on_reloaded(None)
        if devices_changed and self.on_devices_changed is not None:
            self.on_devices_changed()

    async def _load_changed(self, conn: asyncpg.Connection, eans: list[str]) -> None:
        for start in range(0, len(eans), CATCH_UP_CHUNK):
            chunk = eans[start : start + CATCH_UP_CHUNK]
            self._applied(await load_eans(conn, self.index, chunk))
            if self.on_reloaded is not None:
                self.on_reloaded(chunk)
        if eans:
            self.ean_reloads += 1
        else:
            metrics.CONSENT_INDEX_APPLIED.set(time.time())  # current, though nothing changed

    async def prune(self) -> int:
        """Prune the change log (every process does now and then; the deletes are idempotent)."""
        async with self.pool.acquire(timeout=self.acquire_timeout_s) as conn:
            return await prune_change_log(conn, self.change_log_keep_s)

    def _applied(self, newest: datetime | None) -> None:
        # the newest change so far: an EAN reload only sees its own EANs' changes
        if newest is not None and newest.timestamp() > self.newest_change:
            self.newest_change = newest.timestamp()
            metrics.CONSENT_INDEX_NEWEST_CHANGE.set(self.newest_change)
        metrics.CONSENT_INDEX_APPLIED.set(time.time())  # wall clock: compared across processes

    def notify(self, ean: str) -> None:
        """Schedule a reload of ``ean`` (called for NOTIFYs and by in-process consent changes);
        a pile of them is served by one catch-up."""
        if len(self._pending) >= FULL_RELOAD_THRESHOLD:
            self._catch_up_needed = True
        else:
            self._pending.add(ean)
        self._wake.set()

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == "*":
            self._catch_up_needed = True
            self._wake.set()
        else:
            self.notify(str(payload))

    def _on_device_notification(
        self, _conn: object, _pid: int, _channel: str, _payload: object
    ) -> None:
        if self.on_devices_changed is not None:
            self.on_devices_changed()

    def _on_termination(self, _conn: object) -> None:
        self._lost.set()

    async def _connect_listener(self) -> None:
        conn: asyncpg.Connection = await self.pool.acquire()
        try:
            await conn.add_listener(CHANNEL, self._on_notification)
            if self.on_devices_changed is not None:
                await conn.add_listener(DEVICE_CHANNEL, self._on_device_notification)
            conn.add_termination_listener(self._on_termination)
        except BaseException:
            await self.pool.release(conn)
            raise
        self._listen_conn = conn
        self._lost.clear()

    async def _release_listener(self) -> None:
        conn, self._listen_conn = self._listen_conn, None
        if conn is None:
            return
        try:
            # a connection that died was handed back to the pool by asyncpg already: every
            # call on it, is_closed() included, raises InterfaceError (release() is a no-op)
            if not conn.is_closed():
                await conn.remove_listener(CHANNEL, self._on_notification)
                if self.on_devices_changed is not None:
                    await conn.remove_listener(DEVICE_CHANNEL, self._on_device_notification)
                conn.remove_termination_listener(self._on_termination)
        except db.RETRYABLE_ERRORS as exc:
            # a broken connection: the pool closes it on release instead of reusing it
            log.warning("consent index: LISTEN connection unusable at release (%s)", exc)
        await self.pool.release(conn)

    async def _listener_guard(self) -> None:
        # Notifications sent while no LISTEN is active are lost: after re-listening, catch up
        # from the change log (it recorded them).
        while True:
            await self._lost.wait()
            log.warning("consent index: LISTEN connection lost; reconnecting")
            await self._release_listener()
            while self._listen_conn is None:
                try:
                    await self._connect_listener()
                except db.RETRYABLE_ERRORS as exc:
                    log.warning("consent index: LISTEN reconnect failed (%s); retrying", exc)
                    await asyncio.sleep(self.reconnect_delay_s)
            self._catch_up_needed = True
            self._wake.set()
            if self.on_devices_changed is not None:
                self.on_devices_changed()

    async def _apply_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self._catch_up_needed:
                    self._catch_up_needed = False
                    await self.catch_up()
                elif self._pending:
                    eans, self._pending = self._pending, set()
                    await self.reload_eans(eans)
            except db.RETRYABLE_ERRORS as exc:
                # keep the old entries (the database still enforces the interval rule) and try
                # again with a catch-up: it finds whatever was pending in the change log
                log.warning("consent index: reload failed (%s); retrying", exc)
                self._catch_up_needed = True
                await asyncio.sleep(self.reconnect_delay_s)
                self._wake.set()

    async def _periodic_loop(self) -> None:
        assert self.catch_up_interval_s is not None
        while True:
            await asyncio.sleep(self.catch_up_interval_s)
            self._catch_up_needed = True
            self._wake.set()
            if time.monotonic() - self._last_prune >= self.prune_interval_s:
                self._last_prune = time.monotonic()
                try:
                    await self.prune()
                except db.RETRYABLE_ERRORS as exc:
                    log.warning("consent index: change log prune failed (%s)", exc)
