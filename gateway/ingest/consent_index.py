"""The in-memory consent index: meter id → connection route with its compiled storage policy.

The ingest hot path asks it "which granularities may be stored for this meter's reading measured
at t, processed now" with one dict look-up and a few datetime comparisons (bench/consent_check.py).

Coherence across gateway processes:

* every change of ``connections`` or ``consents`` NOTIFYs channel ``meterpoort_consent`` with the
  EAN (statement triggers from migration 0002_consent_notify.sql; consent changes made here
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
from collections.abc import Iterable, Mapping
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

#: pending EANs above which a burst of notifications is served by one full reload
FULL_RELOAD_THRESHOLD = 2000

_CONNECTION_COLUMNS = (
    "ean, ean_num, commodity, meter_id, contract_start, contract_end, level"
)
# Consents that can still matter for storage decisions: not yet over at load time. An index entry
# whose consent expires later stops allowing interval storage by itself (the policy checks now).
_CONSENT_QUERY = """
SELECT c.ean, c.consent_id, c.customer_id, c.purpose, c.notice_version, c.granted_at,
       c.expires_at, c.ended_at, c.end_reason, c.channel, c.data_class
FROM consents c
WHERE c.data_class = 'interval'
  AND coalesce(least(c.ended_at, c.expires_at), 'infinity') > now()
"""


@dataclass(slots=True, frozen=True)
class MeterRoute:
    """Where a meter's readings go: its connection and that connection's compiled policy."""

    ean: str
    ean_num: int
    commodity: Commodity
    policy: CompiledPolicy


# enum members by value: a dict look-up instead of an Enum call per row (2 million at start-up)
_COMMODITIES: dict[str, Commodity] = {c.value: c for c in Commodity}
_LEVELS: dict[str, Level] = {level.value: level for level in Level}


def _route(row: Mapping[str, Any], consents: Iterable[Consent]) -> MeterRoute:
    commodity = _COMMODITIES[row["commodity"]]
    state = ConnectionState(
        ean=row["ean"],
        commodity=commodity,
        level=_LEVELS[row["level"]],
        contract_start=row["contract_start"],
        contract_end=row["contract_end"],
        consents=tuple(consents),
    )
    return MeterRoute(row["ean"], int(row["ean_num"]), commodity, CompiledPolicy(state))


class ConsentIndex:
    """Meter id → MeterRoute(s), per commodity; pure in-memory (loading is ``load_all`` and
    ``load_eans``, keeping it current is ``IndexMaintainer``).

    A meter id maps to a tuple of routes: usually one, several when the meter served several
    connections over time (one active at a time); the pipeline picks by contract window.
    """

    __slots__ = ("_by_ean", "electricity", "gas", "generation")

    def __init__(self) -> None:
        self.electricity: dict[str, tuple[MeterRoute, ...]] = {}
        self.gas: dict[str, tuple[MeterRoute, ...]] = {}
        self._by_ean: dict[str, tuple[Commodity, str]] = {}  # ean → (commodity, meter id)
        #: bumped by every change; lets callers notice that the index moved on
        self.generation = 0

    def _table(self, commodity: Commodity) -> dict[str, tuple[MeterRoute, ...]]:
        return self.electricity if commodity is Commodity.ELECTRICITY else self.gas

    def route(self, meter_id: str, commodity: Commodity, t: datetime) -> MeterRoute | None:
        """The route of ``commodity`` meter ``meter_id`` for a reading at ``t``; None when the
        meter is not registered."""
        routes = self._table(commodity).get(meter_id)
        if routes is None:
            return None
        return pick_route(routes, int(t.timestamp()))

    def granularities(
        self, meter_id: str, commodity: Commodity, t: datetime, now: datetime
    ) -> frozenset[Granularity]:
        """What may be stored for the meter's reading measured at ``t``, processed at ``now``;
        nothing for an unknown meter."""
        routes = self._table(commodity).get(meter_id)
        if routes is None:
            return frozenset()
        if len(routes) == 1:
            return routes[0].policy.check(t, now)
        return pick_route(routes, int(t.timestamp())).policy.check(t, now)

    def __len__(self) -> int:
        return len(self._by_ean)

    def replace_all(
        self, connections: Iterable[Mapping[str, Any]], consents: Iterable[Mapping[str, Any]]
    ) -> None:
        """Rebuild the whole index from connection and consent rows."""
        by_ean: dict[str, list[Consent]] = {}
        for row in consents:
            by_ean.setdefault(row["ean"], []).append(consent_from_row(row))
        tables: dict[Commodity, dict[str, tuple[MeterRoute, ...]]] = {
            Commodity.ELECTRICITY: {},
            Commodity.GAS: {},
        }
        eans: dict[str, tuple[Commodity, str]] = {}
        for row in connections:
            route = _route(row, by_ean.get(row["ean"], ()))
            table = tables[route.commodity]
            meter_id = row["meter_id"]
            table[meter_id] = _add(table.get(meter_id, ()), route)
            eans[route.ean] = (route.commodity, meter_id)
        self.electricity = tables[Commodity.ELECTRICITY]
        self.gas = tables[Commodity.GAS]
        self._by_ean = eans
        self.generation += 1

    def adopt(self, other: ConsentIndex) -> None:
        """Take over ``other``'s entries (a freshly built index) in one step."""
        self.electricity, self.gas, self._by_ean = other.electricity, other.gas, other._by_ean
        self.generation += 1

    def update_ean(
        self,
        ean: str,
        connection: Mapping[str, Any] | None,
        consents: Iterable[Mapping[str, Any]],
    ) -> None:
        """Replace one EAN's entry (``connection`` None: the EAN is gone)."""
        old = self._by_ean.pop(ean, None)
        if old is not None:
            table = self._table(old[0])
            remaining = tuple(r for r in table.get(old[1], ()) if r.ean != ean)
            if remaining:
                table[old[1]] = remaining
            else:
                table.pop(old[1], None)
        if connection is not None:
            route = _route(connection, (consent_from_row(r) for r in consents))
            table = self._table(route.commodity)
            meter_id = connection["meter_id"]
            table[meter_id] = _add(table.get(meter_id, ()), route)
            self._by_ean[ean] = (route.commodity, meter_id)
        self.generation += 1


def _add(routes: tuple[MeterRoute, ...], route: MeterRoute) -> tuple[MeterRoute, ...]:
    if not routes:
        return (route,)
    # newest contract first: the active connection is found first
    return tuple(sorted((*routes, route), key=lambda r: r.policy.lo, reverse=True))


def pick_route(routes: tuple[MeterRoute, ...], ts: int) -> MeterRoute:
    """The route whose contract covers epoch second ``ts`` (a meter id may have served several
    connections over time, one at a time); otherwise the newest, whose policy stores nothing."""
    if len(routes) == 1:
        return routes[0]
    for route in routes:
        if route.policy.lo_s <= ts < route.policy.hi_s:
            return route
    return routes[0]


async def load_all(conn: asyncpg.Connection, index: ConsentIndex) -> None:
    """Fill ``index`` from the database in one REPEATABLE READ snapshot.

    The new entries are built in a worker thread and swapped in at once: with millions of
    connections the build takes seconds, and on the event loop it would stall every request
    for that long at each periodic reload (the loop still gets the interpreter every few
    milliseconds while the thread works). Readers see the old entries until the swap.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        connections = await conn.fetch(f"SELECT {_CONNECTION_COLUMNS} FROM connections")
        consents = await conn.fetch(_CONSENT_QUERY)
    fresh = await asyncio.to_thread(_build, connections, consents)
    index.adopt(fresh)


def _build(
    connections: Iterable[Mapping[str, Any]], consents: Iterable[Mapping[str, Any]]
) -> ConsentIndex:
    """A new index of these rows (runs in a worker thread)."""
    fresh = ConsentIndex()
    # Building millions of small objects would run the cyclic garbage collector over all of them
    # again and again (half the build time with 2 million connections); the index holds no
    # reference cycles, so nothing is lost by pausing it for the build.
    paused = gc.isenabled()
    gc.disable()
    try:
        fresh.replace_all(connections, consents)
    finally:
        if paused:
            gc.enable()
    return fresh


async def load_eans(conn: asyncpg.Connection, index: ConsentIndex, eans: Iterable[str]) -> None:
    """Reload the entries of ``eans`` from the database."""
    wanted = list(eans)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        connections = await conn.fetch(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE ean = ANY($1::text[])", wanted
        )
        consents = await conn.fetch(_CONSENT_QUERY + " AND c.ean = ANY($1::text[])", wanted)
    found = {row["ean"]: row for row in connections}
    by_ean: dict[str, list[Mapping[str, Any]]] = {}
    for row in consents:
        by_ean.setdefault(row["ean"], []).append(row)
    for ean in wanted:
        index.update_ean(ean, found.get(ean), by_ean.get(ean, ()))


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
    ) -> None:
        self.pool = pool
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
        self.full_reloads += 1
        self.last_full_reload = time.monotonic()

    async def reload_eans(self, eans: Iterable[str]) -> None:
        """Reload some EANs now (also what a NOTIFY leads to)."""
        async with self.pool.acquire(timeout=self.acquire_timeout_s) as conn:
            await load_eans(conn, self.index, eans)
        self.ean_reloads += 1

    def notify(self, ean: str) -> None:
        """Schedule a reload of ``ean`` (called for NOTIFYs and by in-process consent changes)."""
        if len(self._pending) >= FULL_RELOAD_THRESHOLD:
            self._full_needed = True
        else:
            self._pending.add(ean)
        self._wake.set()

    def _on_notification(
        self, _conn: object, _pid: int, _channel: str, payload: object
    ) -> None:
        if payload == "*":
            self._full_needed = True
            self._wake.set()
        else:
            self.notify(str(payload))

    def _on_termination(self, _conn: object) -> None:
        self._lost.set()

    async def _connect_listener(self) -> None:
        conn: asyncpg.Connection = await self.pool.acquire()
        try:
            await conn.add_listener(CHANNEL, self._on_notification)
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
