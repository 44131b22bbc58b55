"""The in-memory consent index: meter id → where its readings go over time (EAN, contract) with
the contract's compiled storage policy.

The ingest hot path asks it "which granularities may be stored for this meter's reading measured
at t, processed now" with one dict look-up and a few datetime comparisons (bench/consent_check.py).

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
import gc
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from consent.levels import Commodity, Granularity, Level
from consent.model import Consent
from consent.policy import CompiledPolicy, ConnectionState
from gateway import metrics
from gateway.storage import db
from gateway.storage.schema import consent_from_row
from gateway.supervisor import stop

log = logging.getLogger(__name__)

CHANNEL = "meterpoort_consent"
#: NOTIFYed when a device row changes (rebind, revocation: migration 0011)
DEVICE_CHANNEL = "meterpoort_device"

#: pending EANs above which a burst of notifications is served by one full reload
FULL_RELOAD_THRESHOLD = 2000

# What the index is built from: every meter installation with the contracts of its EAN that
# overlap it (one row per pair; an installation no contract overlaps comes once, with NULL
# contract columns), and the interval consents that can still matter for storage decisions: not
# yet over at load time. An entry whose consent expires later stops allowing interval storage by
# itself (the policy checks now). The join is PostgreSQL's: one streamed result instead of three
# to match up in Python (start-up time and peak memory with millions of connections, B5).
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
SELECT c.ean, c.contract_id, c.consent_id, c.customer_id, c.purpose, c.notice_version,
       c.granted_at, c.expires_at, c.ended_at, c.end_reason, c.channel, c.data_class
FROM consents c
WHERE c.data_class = 'interval'
  AND coalesce(least(c.ended_at, c.expires_at), 'infinity') > now()
"""
# the time of the newest grant or end a load sees (ended consents are not loaded, but their end
# is a change the index follows): what tells how far behind the database a process is
_NEWEST_CHANGE_QUERY = "SELECT max(greatest(c.granted_at, c.ended_at)) FROM consents c"


@dataclass(slots=True, frozen=True)
class MeterRoute:
    """Where a meter's readings measured in one window go (SPEC §3a): the EAN the meter was
    installed on, under the contract in force then (``contract_id`` None: the meter was installed
    but nobody had a contract, so such readings are rejected ``no-contract``). ``policy`` is that
    contract's compiled storage policy, its window ``[policy.lo_s, policy.hi_s)`` the overlap of
    installation and contract."""

    ean: str
    ean_num: int
    commodity: Commodity
    policy: CompiledPolicy
    contract_id: uuid.UUID | None


# enum members by value: a dict look-up instead of an Enum call per row (2 million at start-up)
_COMMODITIES: dict[str, Commodity] = {c.value: c for c in Commodity}
_LEVELS: dict[str, Level] = {level.value: level for level in Level}

#: the routing of one meter on one EAN: (ean, commodity, meter id) and its routes
Routed = tuple[str, Commodity, str, list[MeterRoute]]
#: where an EAN's routes are: (commodity, meter id)
_Key = tuple[Commodity, str]


def _route(
    row: Mapping[str, Any],
    commodity: Commodity,
    lo: datetime | None,
    hi: datetime | None,
    consents: Mapping[Any, list[Consent]],
) -> MeterRoute:
    """The route of a (installation, contract) row for the window [lo, hi)."""
    contract_id = row["contract_id"]
    state = ConnectionState(
        ean=row["ean"],
        commodity=commodity,
        level=_LEVELS[row["level"]],
        contract_start=lo,
        contract_end=hi,
        consents=tuple(consents.get(contract_id, ())),
    )
    return MeterRoute(
        row["ean"], int(row["ean_num"]), commodity, CompiledPolicy(state), contract_id
    )


def _gap(
    row: Mapping[str, Any], commodity: Commodity, lo: datetime, hi: datetime | None
) -> MeterRoute:
    """A stretch of an installation that no contract covers: readings there are ``no-contract``."""
    state = ConnectionState(row["ean"], commodity, Level.NONE, lo, hi)
    return MeterRoute(row["ean"], int(row["ean_num"]), commodity, CompiledPolicy(state), None)


def _routes(
    rows: Iterable[Mapping[str, Any]], consents: Iterable[Mapping[str, Any]]
) -> Iterator[Routed]:
    """The routes of joined (installation, contract) rows (``_ROUTE_QUERY``'s shape).

    The common case, one contract covering the whole installation, becomes its one route right
    away; installations with several contracts, or stretches without one, are collected and cut
    into contract routes and ``no-contract`` gaps afterwards (``_cut``)."""
    by_contract: dict[Any, list[Consent]] = {}
    for c in consents:
        by_contract.setdefault(c["contract_id"], []).append(consent_from_row(c))
    pending: dict[tuple[str, str, datetime], list[Mapping[str, Any]]] = {}
    for row in rows:
        start, until = row["installed_from"], row["installed_until"]
        k_start, k_end = row["contract_start"], row["contract_end"]
        if (
            k_start is not None
            and k_start <= start
            and (k_end is None or (until is not None and k_end >= until))
        ):
            commodity = _COMMODITIES[row["commodity"]]
            route = _route(row, commodity, start, until, by_contract)
            yield row["ean"], commodity, row["meter_id"], [route]
        else:
            pending.setdefault((row["ean"], row["meter_id"], start), []).append(row)
    for group in pending.values():
        yield _cut(group, by_contract)


def _cut(group: list[Mapping[str, Any]], consents: Mapping[Any, list[Consent]]) -> Routed:
    """The routes of one installation whose contracts do not simply cover it: a route per
    contract (clipped to the installation) and a gap route per stretch no contract covers."""
    first = group[0]
    commodity = _COMMODITIES[first["commodity"]]
    start, until = first["installed_from"], first["installed_until"]
    contracts = sorted(
        (r for r in group if r["contract_id"] is not None), key=lambda r: r["contract_start"]
    )
    routes: list[MeterRoute] = []
    cursor: datetime | None = start  # the start of what no route covers yet (None: all covered)
    for k in contracts:
        lo = max(start, k["contract_start"])
        hi = k["contract_end"] if until is None else min(until, k["contract_end"] or until)
        if cursor is not None and cursor < lo:
            routes.append(_gap(first, commodity, cursor, lo))
        routes.append(_route(k, commodity, lo, hi, consents))
        cursor = hi
    if cursor is not None and (until is None or cursor < until):
        routes.append(_gap(first, commodity, cursor, until))
    return first["ean"], commodity, first["meter_id"], routes


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


class ConsentIndex:
    """Meter id → MeterRoutes, per commodity; pure in-memory (loading is ``load_all`` and
    ``load_eans``, keeping it current is ``IndexMaintainer``).

    A meter id maps to a tuple of routes, newest first: usually one (one installation, one
    contract), more after moves, switches and meter exchanges; the pipeline picks the one whose
    window holds the measured time (``pick_route``).
    """

    __slots__ = ("_by_ean", "electricity", "gas", "generation")

    def __init__(self) -> None:
        self.electricity: dict[str, tuple[MeterRoute, ...]] = {}
        self.gas: dict[str, tuple[MeterRoute, ...]] = {}
        # ean → the (commodity, meter id) key holding its routes, or a tuple of such keys when
        # the EAN had several meters (one key per EAN is the rule: no tuple to hold it)
        self._by_ean: dict[str, _Key | tuple[_Key, ...]] = {}
        #: bumped by every change; lets callers notice that the index moved on
        self.generation = 0

    def _table(self, commodity: Commodity) -> dict[str, tuple[MeterRoute, ...]]:
        return self.electricity if commodity is Commodity.ELECTRICITY else self.gas

    def route(self, meter_id: str, commodity: Commodity, t: datetime) -> MeterRoute | None:
        """The route of ``commodity`` meter ``meter_id`` for a reading at ``t``; None when the
        meter was not installed anywhere at ``t``."""
        routes = self._table(commodity).get(meter_id)
        if routes is None:
            return None
        return pick_route(routes, int(t.timestamp()))

    def granularities(
        self, meter_id: str, commodity: Commodity, t: datetime, now: datetime
    ) -> frozenset[Granularity]:
        """What may be stored for the meter's reading measured at ``t``, processed at ``now``;
        nothing for a meter not installed, or under no contract, at ``t``."""
        routes = self._table(commodity).get(meter_id)
        if routes is None:
            return frozenset()
        route = pick_route(routes, int(t.timestamp()))
        if route is None:
            return frozenset()
        return route.policy.check(t, now)

    def __len__(self) -> int:
        return len(self._by_ean)

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
        for routed in _routes(rows, consents):
            fresh._add(routed)
        self.adopt(fresh)

    def adopt(self, other: ConsentIndex) -> None:
        """Take over ``other``'s entries (a freshly built index) in one step."""
        self.electricity, self.gas, self._by_ean = other.electricity, other.gas, other._by_ean
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
        self, ean: str, rows: Iterable[Mapping[str, Any]], consents: Iterable[Mapping[str, Any]]
    ) -> None:
        """Replace one EAN's routes with those of its joined rows (none: it is gone)."""
        for commodity, meter_id in _keys(self._by_ean.pop(ean, None)):
            table = self._table(commodity)
            remaining = tuple(r for r in table.get(meter_id, ()) if r.ean != ean)
            if remaining:
                table[meter_id] = remaining
            else:
                table.pop(meter_id, None)
        for routed in _routes(rows, consents):
            self._add(routed)
        self.generation += 1

    def _add(self, routed: Routed) -> None:
        ean, commodity, meter_id, routes = routed
        table = self._table(commodity)
        old = table.get(meter_id)
        table[meter_id] = (routes[0],) if old is None and len(routes) == 1 else _merge(old, routes)
        key: _Key = (commodity, meter_id)
        known = self._by_ean.get(ean)
        if known is None:  # the rule: one meter per EAN
            self._by_ean[ean] = key
        elif key not in (keys := _keys(known)):
            self._by_ean[ean] = (*keys, key)


def _keys(value: _Key | tuple[_Key, ...] | None) -> tuple[_Key, ...]:
    """The (commodity, meter id) keys of an EAN's ``_by_ean`` value."""
    if value is None:
        return ()
    if isinstance(value[0], Commodity):
        return (value,)
    return value


def _merge(routes: tuple[MeterRoute, ...] | None, more: list[MeterRoute]) -> tuple[MeterRoute, ...]:
    # newest window first: a reading of now finds its route first
    return tuple(sorted((*(routes or ()), *more), key=lambda r: r.policy.lo_s, reverse=True))


def pick_route(routes: tuple[MeterRoute, ...], ts: int) -> MeterRoute | None:
    """The route whose window holds epoch second ``ts``; None when the meter was installed on no
    EAN then (windows of one meter never overlap: the database enforces it)."""
    for route in routes:
        policy = route.policy
        if policy.lo_s <= ts < policy.hi_s:
            return route
    return None


async def _fetch(
    conn: asyncpg.Connection, eans: list[str] | None
) -> tuple[list[asyncpg.Record], list[asyncpg.Record], datetime | None]:
    """Joined route rows, consent rows and the newest consent change (of ``eans``, or all) in
    one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if eans is None:
            return (
                await conn.fetch(_ROUTE_QUERY),
                await conn.fetch(_CONSENT_QUERY),
                await conn.fetchval(_NEWEST_CHANGE_QUERY),
            )
        return (
            await conn.fetch(_ROUTE_QUERY + " WHERE i.ean = ANY($1::text[])", eans),
            await conn.fetch(_CONSENT_QUERY + " AND c.ean = ANY($1::text[])", eans),
            await conn.fetchval(_NEWEST_CHANGE_QUERY + " WHERE c.ean = ANY($1::text[])", eans),
        )


async def load_all(conn: asyncpg.Connection, index: ConsentIndex) -> datetime | None:
    """Fill ``index`` from the database in one REPEATABLE READ snapshot; the time of the newest
    consent change loaded.

    The new entries are built in a worker thread and swapped in at once: with millions of
    connections the build takes seconds, and on the event loop it would stall every request
    for that long at each periodic reload (the loop still gets the interpreter every few
    milliseconds while the thread works). Readers see the old entries until the swap.
    """
    rows, consents, newest = await _fetch(conn, None)
    fresh = await asyncio.to_thread(_build, rows, consents)
    index.adopt(fresh)
    return newest


def _build(
    rows: Iterable[Mapping[str, Any]], consents: Iterable[Mapping[str, Any]]
) -> ConsentIndex:
    """A new index of these rows (runs in a worker thread)."""
    fresh = ConsentIndex()
    # Building millions of small objects would run the cyclic garbage collector over all of them
    # again and again (half the build time with 2 million connections); the index holds no
    # reference cycles, so nothing is lost by pausing it for the build.
    paused = gc.isenabled()
    gc.disable()
    try:
        fresh.replace_rows(rows, consents)
    finally:
        if paused:
            gc.enable()
    return fresh


async def load_eans(
    conn: asyncpg.Connection, index: ConsentIndex, eans: Iterable[str]
) -> datetime | None:
    """Reload the entries of ``eans`` from the database; the time of their newest consent
    change."""
    wanted = list(eans)
    rows, consents, newest = await _fetch(conn, wanted)
    for ean in wanted:
        index.update_rows(
            ean, [r for r in rows if r["ean"] == ean], [c for c in consents if c["ean"] == ean]
        )
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
                    if EVERYTHING in changed or len(changed) > max(
                        FULL_RELOAD_THRESHOLD, len(self.index) // 2
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
