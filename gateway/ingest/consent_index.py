"""The in-memory consent index: meter id → where its readings go over time (EAN, contract) with
the contract's compiled storage policy.

The ingest hot path asks it "which granularities may be stored for this meter's reading measured
at t, processed now" with one dict look-up and a few datetime comparisons (bench/consent_check.py).

Coherence across gateway processes:

* every change of ``contracts``, ``meter_installations`` or ``consents`` NOTIFYs channel
  ``meterpoort_consent`` with the EAN (statement triggers from migrations 0002 and 0011; consent
  changes made here
  also NOTIFY explicitly);
  each process LISTENs and reloads the EANs it is told about, coalescing bursts (a bulk import
  becomes one full reload);
* a periodic full reload is the safety net for anything missed (a LISTEN connection that dropped
  is re-established and followed by a full reload, since notifications are not queued for it);
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from consent.levels import Commodity, Granularity, Level
from consent.model import Consent
from consent.policy import CompiledPolicy, ConnectionState
from gateway.storage.schema import consent_from_row
from gateway.supervisor import stop

log = logging.getLogger(__name__)

CHANNEL = "meterpoort_consent"
#: NOTIFYed when a device row changes (rebind, revocation: migration 0011)
DEVICE_CHANNEL = "meterpoort_device"

#: pending EANs above which a burst of notifications is served by one full reload
FULL_RELOAD_THRESHOLD = 2000

# What the index is built from: every meter installation (with its EAN's reading key), every
# contract, and the interval consents that can still matter for storage decisions: not yet over
# at load time. An entry whose consent expires later stops allowing interval storage by itself
# (the policy checks now).
_INSTALLATION_QUERY = """
SELECT i.ean, k.ean_num, i.commodity, i.meter_id, i.installed_from, i.installed_until
FROM meter_installations i JOIN connections k ON k.ean = i.ean
"""
_CONTRACT_QUERY = """
SELECT k.ean, k.contract_id, k.contract_start, k.contract_end, k.level FROM contracts k
"""
_CONSENT_QUERY = """
SELECT c.ean, c.contract_id, c.consent_id, c.customer_id, c.purpose, c.notice_version,
       c.granted_at, c.expires_at, c.ended_at, c.end_reason, c.channel, c.data_class
FROM consents c
WHERE c.data_class = 'interval'
  AND coalesce(least(c.ended_at, c.expires_at), 'infinity') > now()
"""


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


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later of two starts (None: since ever)."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    """The earlier of two ends (None: open)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _routes_of_installation(
    inst: Mapping[str, Any],
    contracts: Sequence[Mapping[str, Any]],
    consents: Mapping[Any, list[Consent]],
) -> list[MeterRoute]:
    """The routes of one installation: a route per contract overlapping it (clipped to the
    overlap) and a ``no-contract`` route per stretch of it no contract covers.

    ``contracts`` are the installation's EAN's contracts in start order (they never overlap)."""
    commodity = _COMMODITIES[inst["commodity"]]
    ean, ean_num = inst["ean"], int(inst["ean_num"])
    start, until = inst["installed_from"], inst["installed_until"]
    routes: list[MeterRoute] = []
    cursor: datetime | None = start  # the start of what no route covers yet

    def gap(to: datetime | None) -> None:
        if cursor is not None and (to is None or cursor < to):
            state = ConnectionState(ean, commodity, Level.NONE, cursor, to)
            routes.append(MeterRoute(ean, ean_num, commodity, CompiledPolicy(state), None))

    for k in contracts:
        lo = _later(start, k["contract_start"])
        hi = _earlier(until, k["contract_end"])
        if lo is not None and hi is not None and lo >= hi:
            continue  # no overlap
        gap(lo)
        state = ConnectionState(
            ean=ean,
            commodity=commodity,
            level=_LEVELS[k["level"]],
            contract_start=lo,
            contract_end=hi,
            consents=tuple(consents.get(k["contract_id"], ())),
        )
        routes.append(MeterRoute(ean, ean_num, commodity, CompiledPolicy(state), k["contract_id"]))
        cursor = hi
        if hi is None:
            break
    gap(until)
    return routes


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
        # ean → the (commodity, meter id) keys holding its routes
        self._by_ean: dict[str, tuple[tuple[Commodity, str], ...]] = {}
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
        fresh: dict[Commodity, dict[str, tuple[MeterRoute, ...]]] = {
            Commodity.ELECTRICITY: {},
            Commodity.GAS: {},
        }
        by_ean: dict[str, tuple[tuple[Commodity, str], ...]] = {}
        for ean, routes_by_meter in _routes_by_ean(installations, contracts, consents):
            keys = []
            for (commodity, meter_id), routes in routes_by_meter.items():
                table = fresh[commodity]
                table[meter_id] = _merge(table.get(meter_id, ()), routes)
                keys.append((commodity, meter_id))
            by_ean[ean] = tuple(keys)
        self.electricity = fresh[Commodity.ELECTRICITY]
        self.gas = fresh[Commodity.GAS]
        self._by_ean = by_ean
        self.generation += 1

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
        for commodity, meter_id in self._by_ean.pop(ean, ()):
            table = self._table(commodity)
            remaining = tuple(r for r in table.get(meter_id, ()) if r.ean != ean)
            if remaining:
                table[meter_id] = remaining
            else:
                table.pop(meter_id, None)
        for ean_, routes_by_meter in _routes_by_ean(installations, contracts, consents):
            keys = []
            for (commodity, meter_id), routes in routes_by_meter.items():
                table = self._table(commodity)
                table[meter_id] = _merge(table.get(meter_id, ()), routes)
                keys.append((commodity, meter_id))
            self._by_ean[ean_] = tuple(keys)
        self.generation += 1


def _routes_by_ean(
    installations: Iterable[Mapping[str, Any]],
    contracts: Iterable[Mapping[str, Any]],
    consents: Iterable[Mapping[str, Any]],
) -> Iterator[tuple[str, dict[tuple[Commodity, str], list[MeterRoute]]]]:
    """Per EAN with an installation: its routes by (commodity, meter id)."""
    by_contract: dict[Any, list[Consent]] = {}
    for row in consents:
        by_contract.setdefault(row["contract_id"], []).append(consent_from_row(row))
    contracts_of: dict[str, list[Mapping[str, Any]]] = {}
    for row in contracts:
        contracts_of.setdefault(row["ean"], []).append(row)
    installations_of: dict[str, list[Mapping[str, Any]]] = {}
    for row in installations:
        installations_of.setdefault(row["ean"], []).append(row)
    for ean, insts in installations_of.items():
        ks = contracts_of.get(ean, [])
        if len(ks) > 1:
            ks.sort(key=lambda k: k["contract_start"])
        routes: dict[tuple[Commodity, str], list[MeterRoute]] = {}
        for inst in insts:
            key = (_COMMODITIES[inst["commodity"]], inst["meter_id"])
            routes.setdefault(key, []).extend(_routes_of_installation(inst, ks, by_contract))
        yield ean, routes


def _merge(routes: tuple[MeterRoute, ...], more: list[MeterRoute]) -> tuple[MeterRoute, ...]:
    if not routes and len(more) == 1:
        return (more[0],)
    # newest window first: a reading of now finds its route first
    return tuple(sorted((*routes, *more), key=lambda r: r.policy.lo_s, reverse=True))


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
) -> tuple[list[asyncpg.Record], list[asyncpg.Record], list[asyncpg.Record]]:
    """Installation, contract and consent rows (of ``eans``, or all) in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if eans is None:
            return (
                await conn.fetch(_INSTALLATION_QUERY),
                await conn.fetch(_CONTRACT_QUERY),
                await conn.fetch(_CONSENT_QUERY),
            )
        return (
            await conn.fetch(_INSTALLATION_QUERY + " WHERE i.ean = ANY($1::text[])", eans),
            await conn.fetch(_CONTRACT_QUERY + " WHERE k.ean = ANY($1::text[])", eans),
            await conn.fetch(_CONSENT_QUERY + " AND c.ean = ANY($1::text[])", eans),
        )


async def load_all(conn: asyncpg.Connection, index: ConsentIndex) -> None:
    """Fill ``index`` from the database in one REPEATABLE READ snapshot.

    The new entries are built in a worker thread and swapped in at once: with millions of
    connections the build takes seconds, and on the event loop it would stall every request
    for that long at each periodic reload (the loop still gets the interpreter every few
    milliseconds while the thread works). Readers see the old entries until the swap.
    """
    installations, contracts, consents = await _fetch(conn, None)
    fresh = await asyncio.to_thread(_build, installations, contracts, consents)
    index.adopt(fresh)


def _build(
    installations: Iterable[Mapping[str, Any]],
    contracts: Iterable[Mapping[str, Any]],
    consents: Iterable[Mapping[str, Any]],
) -> ConsentIndex:
    """A new index of these rows (runs in a worker thread)."""
    fresh = ConsentIndex()
    # Building millions of small objects would run the cyclic garbage collector over all of them
    # again and again (half the build time with 2 million connections); the index holds no
    # reference cycles, so nothing is lost by pausing it for the build.
    paused = gc.isenabled()
    gc.disable()
    try:
        fresh.replace_all(installations, contracts, consents)
    finally:
        if paused:
            gc.enable()
    return fresh


async def load_eans(conn: asyncpg.Connection, index: ConsentIndex, eans: Iterable[str]) -> None:
    """Reload the entries of ``eans`` from the database."""
    wanted = list(eans)
    installations, contracts, consents = await _fetch(conn, wanted)
    for ean in wanted:
        index.update_ean(
            ean,
            [r for r in installations if r["ean"] == ean],
            [r for r in contracts if r["ean"] == ean],
            [r for r in consents if r["ean"] == ean],
        )


class IndexMaintainer:
    """Keeps a ConsentIndex coherent: LISTEN + coalesced EAN reloads + periodic full reloads.

    ``listen=False`` runs without LISTEN (only periodic reloads): what tests use to make one
    process's cache deliberately stale.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        index: ConsentIndex,
        *,
        full_reload_interval_s: float = 300.0,
        listen: bool = True,
        reconnect_delay_s: float = 1.0,
        acquire_timeout_s: float | None = None,
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
        self.full_reload_interval_s = full_reload_interval_s
        self.listen = listen
        self.reconnect_delay_s = reconnect_delay_s
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._full_needed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._listen_conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self.full_reloads = 0
        self.ean_reloads = 0
        self.last_full_reload = 0.0

    async def start(self) -> None:
        """Load the index, then start listening and the periodic reload."""
        if self.listen:
            await self._connect_listener()
        await self.reload_all()
        self._tasks.append(asyncio.create_task(self._apply_loop(), name="consent-index-apply"))
        self._tasks.append(asyncio.create_task(self._periodic_loop(), name="consent-index-reload"))
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
        """Rebuild the whole index now."""
        self._full_needed = False
        self._pending.clear()
        async with self.pool.acquire(timeout=self.acquire_timeout_s) as conn:
            await load_all(conn, self.index)
        if self.on_reloaded is not None:
            self.on_reloaded(None)
        self.full_reloads += 1
        self.last_full_reload = time.monotonic()

    async def reload_eans(self, eans: Iterable[str]) -> None:
        """Reload some EANs now (also what a NOTIFY leads to)."""
        wanted = list(eans)
        async with self.pool.acquire(timeout=self.acquire_timeout_s) as conn:
            await load_eans(conn, self.index, wanted)
        if self.on_reloaded is not None:
            self.on_reloaded(wanted)
        self.ean_reloads += 1

    def notify(self, ean: str) -> None:
        """Schedule a reload of ``ean`` (called for NOTIFYs and by in-process consent changes)."""
        if len(self._pending) >= FULL_RELOAD_THRESHOLD:
            self._full_needed = True
        else:
            self._pending.add(ean)
        self._wake.set()

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == "*":
            self._full_needed = True
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
        if not conn.is_closed():
            try:
                await conn.remove_listener(CHANNEL, self._on_notification)
                if self.on_devices_changed is not None:
                    await conn.remove_listener(DEVICE_CHANNEL, self._on_device_notification)
                conn.remove_termination_listener(self._on_termination)
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                # a broken connection: the pool closes it on release instead of reusing it
                log.warning("consent index: LISTEN connection unusable at release (%s)", exc)
        await self.pool.release(conn)

    async def _listener_guard(self) -> None:
        # Notifications sent while no LISTEN is active are lost: after re-listening, reload all.
        while True:
            await self._lost.wait()
            log.warning("consent index: LISTEN connection lost; reconnecting")
            await self._release_listener()
            while self._listen_conn is None:
                try:
                    await self._connect_listener()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("consent index: LISTEN reconnect failed (%s); retrying", exc)
                    await asyncio.sleep(self.reconnect_delay_s)
            self._full_needed = True
            self._wake.set()
            if self.on_devices_changed is not None:
                self.on_devices_changed()

    async def _apply_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self._full_needed:
                    await self.reload_all()
                elif self._pending:
                    eans, self._pending = self._pending, set()
                    await self.reload_eans(eans)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # keep the old entries (the database still enforces the interval rule) and try
                # again with a full reload: we no longer know which EANs are pending
                log.warning("consent index: reload failed (%s); retrying", exc)
                self._full_needed = True
                await asyncio.sleep(self.reconnect_delay_s)
                self._wake.set()

    async def _periodic_loop(self) -> None:
        while True:
            await asyncio.sleep(self.full_reload_interval_s)
            self._full_needed = True
            self._wake.set()
