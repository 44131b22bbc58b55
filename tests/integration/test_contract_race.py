"""SPEC §3a: ending a supply contract (move-out, switch) racing ingest.

A reading measured at ``t`` belongs to the contract of its EAN in force at ``t``. Ending contract
A at ``T`` therefore means: nothing measured at or after ``T`` stays under A, A's consents end at
``T`` (so no interval reading at or after ``T`` exists), and a next tenant B starting at ``T``
gets the default level ``daily`` without any consent. The database guard in
gateway.ingest.sql (``FOR SHARE OF k`` on the contract row in force at ``measured_at``) is what
keeps this true against a stale cache in another gateway process.

* Full-rate races through HTTP: two gateway app instances on one database ("two gateway
  processes", each with its own pool, consent index and caches); the second runs without LISTEN,
  so its index still believes A's contract open with its interval consent after the end. Its
  period cache (BestCache) is switched off, so every telegram it takes reaches the database and
  its guard (with the cache it would offer a period's rows once and then skip them).
* Both lock orders, held open on purpose at the SQL level (the ingest's FOR SHARE first, the
  contract end's row lock first).
* The per-process period cache (BestCache) does not outlive the contract change: B's reading of
  the day T starts (and of the month, when T is the 1st) is stored by a process that had taken
  a reading of that period before.

Choice of ``T``: the end is "now" on the meters' clock, and that clock is set (as a meter clock
running behind, or a field device's spool delivering) so that "now" crosses an Amsterdam
midnight a second after the race starts. ``T`` is that midnight. Without it every period holding
``T`` (quarter hour, day) would already hold a reading measured before ``T`` — the earliest
reading of a period wins — and a reading at or after ``T`` could never be stored, guard or not:
the race would prove nothing. With it, the readings at and after ``T`` open new interval and day
periods, the "earliest" rule masks nothing, and B's readings do get daily rows of their own.
The gateways run on the meters' clock as well (``CLOCK_KEY``, as tests replaying a past day do).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consent.levels import Commodity, Granularity
from gateway.api.app import create_app
from gateway.api.appkeys import CLOCK_KEY, INGEST_KEY, LISTEN_KEY
from gateway.ingest.best_cache import BestCache
from gateway.ingest.consent_index import FAR_S
from gateway.ingest.periods import AMSTERDAM, Bucketer
from gateway.ingest.sql import (
    E_P1D,
    E_P1M,
    E_PT15M,
    INSERT_SQL,
    N_TABLES,
    TABLE_NAMES,
    Batch,
    flush_sql,
    merge_into,
    new_batch,
)
from gateway.services import consents as consent_store
from gateway.services import devices, registry
from gateway.settings import Settings
from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

Client = TestClient[web.Request, web.Application]
UTC = dt.UTC
E_TABLES = (E_PT15M, E_P1D, E_P1M)
#: how long before T the meters' clock starts when a race begins
LEAD_S = 1.2
#: requests every pusher makes after the last admin change before the race stops
AFTER = 25
#: bound of every wait for something that should happen within milliseconds
WAIT_S = 10.0
#: an outcome a single-telegram push may have during the race
OK, NO_CONTRACT = (200, ()), (422, ("no-contract",))


# --- helpers ------------------------------------------------------------------------------------


def last_midnight(before: dt.datetime) -> dt.datetime:
    """The latest Europe/Amsterdam midnight at or before ``before`` (UTC)."""
    local = before.astimezone(AMSTERDAM)
    return dt.datetime(local.year, local.month, local.day, tzinfo=AMSTERDAM).astimezone(UTC)


class MeterClock:
    """The meters' (and gateways') clock: the system clock shifted by ``skew`` seconds."""

    def __init__(self) -> None:
        self.skew = 0.0

    def read(self) -> float:
        return time.time() + self.skew

    def set_now(self, at: dt.datetime) -> None:
        self.skew = at.timestamp() - time.time()

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.read(), UTC)


class NoBestCache(BestCache):
    """A period cache that remembers nothing: every telegram's rows go to the database."""

    def entry(self, ean: int) -> tuple[int, ...] | None:
        return None

    def lower(self, key: tuple[int, int, int], measured_at: int, since: int | None = None) -> None:
        return None


async def until(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Wait (bounded) until ``check()`` holds."""
    deadline = time.monotonic() + WAIT_S
    while True:
        got = check()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        await asyncio.sleep(0.005)


async def start(app: web.Application) -> Client:
    client: Client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    return client


@dataclass(frozen=True, slots=True)
class Outcome:
    request: int
    measured_s: int
    status: int
    reasons: tuple[str, ...]
    #: admin changes (see Race.changed) made before the request was sent / answered
    changes_before: int
    changes_after: int


@dataclass
class Pusher:
    """Pushes one telegram per request, measured at the meters' clock, as fast as it is answered."""

    name: str
    #: request ids of this pusher start here (every telegram carries its id in export_t1_wh)
    first_id: int
    client: Client
    headers: dict[str, str]
    meter_id: str
    clock: MeterClock
    changes: list[str]
    outcomes: list[Outcome] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            ts = int(self.clock.read())
            changes_before = len(self.changes)
            request = self.first_id + i
            body = build_telegram(
                self.meter_id,
                dt.datetime.fromtimestamp(ts, UTC),
                import_wh=(1_000_000 + i, 2_000_000 + i),
                export_wh=(request, 0),  # a stored row tells which request it came from
            )
            resp = await self.client.post("/v1/telegrams", data=body, headers=self.headers)
            payload = await resp.json(content_type=None)
            reasons = tuple(r["reason"] for r in payload.get("rejected", ()))
            outcome = Outcome(request, ts, resp.status, reasons, changes_before, len(self.changes))
            if (outcome.status, outcome.reasons) not in (OK, NO_CONTRACT):
                self.unexpected.append(f"{self.name}: {resp.status} {payload}")
            self.outcomes.append(outcome)
            i += 1

    def since(self, changes: int) -> list[Outcome]:
        """Outcomes of requests sent after ``changes`` admin changes had completed."""
        return [o for o in self.outcomes if o.changes_before >= changes]


READING_TABLES = {E_PT15M: "readings_e_pt15m", E_P1D: "readings_e_p1d", E_P1M: "readings_e_p1m"}


async def stored(pool: asyncpg.Pool, ean: str) -> dict[int, list[dt.datetime]]:
    """measured_at of the EAN's rows per electricity table."""
    out: dict[int, list[dt.datetime]] = {}
    for table, name in READING_TABLES.items():
        rows = await pool.fetch(
            f"SELECT measured_at FROM {name} WHERE ean = $1 ORDER BY measured_at", int(ean)
        )
        out[table] = [r["measured_at"] for r in rows]
    return out


async def rows_with_contract(pool: asyncpg.Pool, ean: str) -> list[asyncpg.Record]:
    """Every reading row of the EAN (all six tables) with the contract in force at its
    measured time (NULL: none) — the attribution the readings API makes."""
    union = " UNION ALL ".join(
        f"SELECT '{name}' AS tbl, ean, measured_at FROM {name}" for name in TABLE_NAMES
    )
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT r.tbl, r.measured_at, k.contract_id FROM ({union}) r"
        " LEFT JOIN contracts k ON k.ean_num = r.ean AND k.contract_start <= r.measured_at"
        " AND (k.contract_end IS NULL OR r.measured_at < k.contract_end)"
        " WHERE r.ean = $1 ORDER BY r.measured_at, r.tbl",
        int(ean),
    )
    return rows


# --- the two-process world ----------------------------------------------------------------------


@dataclass
class World:
    fresh: Client  # listens: follows every change by NOTIFY (and answers the admin requests)
    stale: Client  # listen=False, no period cache: still believes A's contract open
    pool: asyncpg.Pool
    clock: MeterClock
    admin: dict[str, str]
    device: dict[str, str]
    ean: str
    meter_id: str
    contract_a: uuid.UUID
    consent_a: uuid.UUID


@pytest.fixture
async def world(
    gateway_settings: Settings, pool: asyncpg.Pool, admin_headers: dict[str, str]
) -> AsyncIterator[World]:
    """Customer A's contract (level daily, an interval consent) on an EAN whose meter is bound
    to a device; gateway ``fresh`` (listening) and, started after the set-up, ``stale``."""
    clock = MeterClock()
    fresh_app = create_app(gateway_settings)
    fresh_app[CLOCK_KEY] = clock.read
    fresh = await start(fresh_app)
    stale: Client | None = None
    try:
        wall = dt.datetime.now(UTC)
        ean, meter_id = make_ean(41), "E41"
        resp = await fresh.post(
            "/v1/admin/meters",
            json={
                "ean": ean,
                "commodity": "electricity",
                "meter_id": meter_id,
                "customer_id": "cust-a",
                "contract_start": (wall - dt.timedelta(days=10)).isoformat(),
            },
            headers=admin_headers,
        )
        assert resp.status == 201, await resp.text()
        contract_a = uuid.UUID((await resp.json())["contract_id"])
        resp = await fresh.post(
            "/v1/admin/devices", json={"meter_ids": [meter_id]}, headers=admin_headers
        )
        assert resp.status == 201, await resp.text()
        token = (await resp.json())["token"]
        resp = await fresh.post(
            "/v1/admin/consents",
            json={
                "ean": ean,
                "customer_id": "cust-a",
                "purpose": "dynamic-tariff-billing",
                "notice_version": "v1",
                "granted_at": (wall - dt.timedelta(days=3)).isoformat(),
            },
            headers=admin_headers,
        )
        assert resp.status == 201, await resp.text()
        consent_a = uuid.UUID((await resp.json())["consent_id"])

        stale_app = create_app(gateway_settings)
        stale_app[CLOCK_KEY] = clock.read
        stale_app[LISTEN_KEY] = False  # no NOTIFYs: its index keeps A's contract open
        stale = await start(stale_app)
        state = stale_app[INGEST_KEY]
        state.pipeline.best = state.writer.best = NoBestCache()  # type: ignore[attr-defined]
        yield World(
            fresh=fresh,
            stale=stale,
            pool=pool,
            clock=clock,
            admin=admin_headers,
            device={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
            ean=ean,
            meter_id=meter_id,
            contract_a=contract_a,
            consent_a=consent_a,
        )
    finally:
        if stale is not None:
            await stale.close()
        await fresh.close()


class Race:
    """Two pushers per gateway, running until stopped."""

    def __init__(self, w: World) -> None:
        self.changes: list[str] = []
        self.stop = asyncio.Event()
        gateways = (("fresh", w.fresh), ("fresh", w.fresh), ("stale", w.stale), ("stale", w.stale))
        self.pushers = [
            Pusher(f"{name}{n}", n * 1_000_000, client, w.device, w.meter_id, w.clock, self.changes)
            for n, (name, client) in enumerate(gateways)
        ]
        self.tasks: list[asyncio.Task[None]] = []

    def of(self, name: str) -> list[Pusher]:
        return [p for p in self.pushers if p.name.startswith(name)]

    async def __aenter__(self) -> Race:
        self.tasks = [asyncio.create_task(p.run(self.stop)) for p in self.pushers]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    def changed(self, what: str) -> None:
        self.changes.append(what)

    async def run_on(self, requests: int) -> None:
        """Until every pusher made ``requests`` more requests after the last change."""
        n = len(self.changes)

        def enough() -> bool:
            if any(t.done() for t in self.tasks):
                return True  # a pusher failed: its exception surfaces at __aexit__
            return all(len(p.since(n)) >= requests for p in self.pushers)

        await until(enough, f"{requests} pushes per pusher after {self.changes}")

    def accepted_at_or_after(self, name: str, at: dt.datetime) -> bool:
        return any(
            o.status == 200 and o.measured_s >= at.timestamp()
            for p in self.of(name)
            for o in p.outcomes
        )

    def outcome(self, request: int) -> Outcome:
        return next(o for p in self.pushers for o in p.outcomes if o.request == request)

    def unexpected(self) -> list[str]:
        return [u for p in self.pushers for u in p.unexpected]


async def race_to_t(w: World, race: Race, t_end: dt.datetime) -> None:
    """Run the race until both gateways have stored readings measured at or after ``t_end``
    under A (the contract is still open): the end will have something to take back."""
    await until(
        lambda: (
            race.accepted_at_or_after("fresh", t_end) and race.accepted_at_or_after("stale", t_end)
        ),
        "both gateways accept readings measured at or after T",
    )
    late = await w.pool.fetchval(
        "SELECT count(*) FROM readings_e_pt15m WHERE ean = $1 AND measured_at >= $2",
        int(w.ean),
        t_end,
    )
    assert late >= 1, "before the end, readings at/after T are A's interval readings"


def stale_still_offers_interval_rows(w: World, t: dt.datetime) -> None:
    """The stale process still routes ``t`` to A's open contract with its consent, and its
    pipeline builds interval rows for it: only the database guard keeps them out."""
    state = w.stale.app[INGEST_KEY]
    route = state.index.route(w.meter_id, Commodity.ELECTRICITY, t)
    # A's route, still open-ended: the stale process does not know of its end
    assert route is not None and route.under_contract and route.hi_s == FAR_S
    now = w.clock.now()
    assert Granularity.PT15M in state.index.granularities(w.meter_id, Commodity.ELECTRICITY, t, now)
    probe = state.pipeline.process(
        [build_telegram(w.meter_id, t)], frozenset({w.meter_id}), int(now.timestamp())
    )
    assert probe.batch[E_PT15M], "the stale index should offer interval rows"


# --- 1. a move-out racing full-rate ingest ------------------------------------------------------


async def test_move_out_and_move_in_racing_ingest_in_two_gateways(world: World) -> None:
    w = world
    t_end = last_midnight(dt.datetime.now(UTC))
    w.clock.set_now(t_end - dt.timedelta(seconds=LEAD_S))
    async with Race(w) as race:
        await race_to_t(w, race, t_end)
        # the move-out at T = now (meters' clock), and at once B's move-in from T
        resp = await w.fresh.patch(
            f"/v1/admin/contracts/{w.contract_a}",
            json={"end": t_end.isoformat(), "end_reason": "move-out"},
            headers=w.admin,
        )
        assert resp.status == 200, await resp.text()
        race.changed("end")
        race.changed("move-in sent")
        resp = await w.fresh.post(
            "/v1/admin/contracts",
            json={"ean": w.ean, "customer_id": "cust-b", "start": t_end.isoformat()},
            headers=w.admin,
        )
        assert resp.status == 201, await resp.text()
        contract_b = uuid.UUID((await resp.json())["contract_id"])
        race.changed("move-in")
        await race.run_on(AFTER)
    assert race.unexpected() == []

    # the stale process never learnt of either change: the database guard did the work
    stale_still_offers_interval_rows(w, w.clock.now())
    # the listening process follows at once: B's contract, daily, no consent
    fresh = w.fresh.app[INGEST_KEY].index
    route = fresh.route(w.meter_id, Commodity.ELECTRICITY, w.clock.now())
    # B's route: it starts at B's start
    assert route is not None and route.under_contract and route.lo_s == int(t_end.timestamp())
    assert Granularity.PT15M not in fresh.granularities(
        w.meter_id, Commodity.ELECTRICITY, w.clock.now(), w.clock.now()
    )
    # what each gateway answered: the fresh one accepts for B once the move-in is answered;
    # the stale one accepts throughout (and the guard decides what is stored)
    for p in race.of("fresh"):
        assert p.since(3) and all((o.status, o.reasons) == OK for o in p.since(3))
    for p in race.of("stale"):
        assert all((o.status, o.reasons) == OK for o in p.outcomes)

    # --- the database after the race
    contracts = {
        r["contract_id"]: r
        for r in await w.pool.fetch(
            "SELECT contract_id, customer_id, contract_start, contract_end, end_reason"
            " FROM contracts WHERE ean = $1",
            w.ean,
        )
    }
    assert contracts[w.contract_a]["contract_end"] == t_end
    assert contracts[w.contract_a]["end_reason"] == "move-out"
    assert contracts[contract_b]["contract_start"] == t_end
    assert contracts[contract_b]["contract_end"] is None

    # no interval reading at or after T at all (B has no consent; A's consent ended at T)
    got = await stored(w.pool, w.ean)
    assert got[E_PT15M], "A's interval readings measured before T stay"
    assert all(t < t_end for t in got[E_PT15M]), got[E_PT15M]
    # every row is attributed to the contract in force at its measured time: before T to A's,
    # at or after T to B's and then only daily/monthly (the key invariant: no reading of the
    # new tenant is stored under the old contract, and none of the old one after its end)
    rows = await rows_with_contract(w.pool, w.ean)
    for r in rows:
        if r["measured_at"] < t_end:
            assert r["contract_id"] == w.contract_a, dict(r)
        else:
            assert r["contract_id"] == contract_b, dict(r)
            assert r["tbl"] in ("readings_e_p1d", "readings_e_p1m"), dict(r)
    # ...and by arrival: no row measured at or after T comes from a request answered before
    # B's move-in was even sent (such a request was processed under A's open contract or in
    # the gap without a contract): what A's contract let in before the end was deleted, and
    # nothing got in between (export_t1_wh holds the request id)
    union = " UNION ALL ".join(
        f"SELECT measured_at, export_t1_wh FROM {READING_TABLES[t]} WHERE ean = $1"
        for t in E_TABLES
    )
    marks = await w.pool.fetch(
        f"SELECT * FROM ({union}) r WHERE measured_at >= $2", int(w.ean), t_end
    )
    assert marks
    for r in marks:
        answered = race.outcome(r["export_t1_wh"])
        assert answered.changes_after >= 2, (dict(r), answered)
    # B's readings do exist: the day starting at T is B's (what A had stored in it was deleted)
    assert [t for t in got[E_P1D] if t >= t_end], got[E_P1D]
    assert any(r["measured_at"] < t_end for r in rows if r["tbl"] == "readings_e_p1d")

    # A's consent ended at T with the move-out, and every interval row it justified lies in
    # [granted_at, T); B's contract has no consent
    consents = await w.pool.fetch(
        "SELECT consent_id, contract_id, granted_at, ended_at, end_reason FROM consents"
        " WHERE ean = $1",
        w.ean,
    )
    assert [(c["consent_id"], c["ended_at"], c["end_reason"]) for c in consents] == [
        (w.consent_a, t_end, "move-out")
    ]
    assert all(consents[0]["granted_at"] <= t < t_end for t in got[E_PT15M])


# --- 2. a switch-out racing full-rate ingest ----------------------------------------------------


async def test_switch_out_racing_ingest_leaves_nothing_after_the_end(world: World) -> None:
    w = world
    t_end = last_midnight(dt.datetime.now(UTC))
    w.clock.set_now(t_end - dt.timedelta(seconds=LEAD_S))
    async with Race(w) as race:
        await race_to_t(w, race, t_end)
        resp = await w.fresh.patch(
            f"/v1/admin/contracts/{w.contract_a}",
            json={"end": t_end.isoformat(), "end_reason": "switch"},
            headers=w.admin,
        )
        assert resp.status == 200, await resp.text()
        race.changed("end")
        await race.run_on(AFTER)
    assert race.unexpected() == []

    # no reading of any granularity measured at or after the end, in any table
    rows = await rows_with_contract(w.pool, w.ean)
    assert [dict(r) for r in rows if r["measured_at"] >= t_end] == []
    assert {r["contract_id"] for r in rows} == {w.contract_a}
    assert {r["tbl"] for r in rows} == {"readings_e_pt15m", "readings_e_p1d", "readings_e_p1m"}
    ended = await w.pool.fetchrow(
        "SELECT ended_at, end_reason FROM consents WHERE consent_id = $1", w.consent_a
    )
    assert tuple(ended) == (t_end, "switch")

    # the listening gateway caught up before the PATCH answered: every telegram sent after it
    # was rejected no-contract; the stale one accepted them (nothing stored: the guard)
    for p in race.of("fresh"):
        assert p.since(1) and all((o.status, o.reasons) == NO_CONTRACT for o in p.since(1))
    for p in race.of("stale"):
        assert all((o.status, o.reasons) == OK for o in p.outcomes)
    stale_still_offers_interval_rows(w, w.clock.now())

    # a caught-up gateway rejects a telegram measured after the end: the listening one, and the
    # stale one after its (periodic) full reload
    stale_state = w.stale.app[INGEST_KEY]
    assert stale_state.maintainer is not None
    await stale_state.maintainer.reload_all()
    for client in (w.fresh, w.stale):
        later = w.clock.now() + dt.timedelta(seconds=30)
        resp = await client.post(
            "/v1/telegrams", data=build_telegram(w.meter_id, later), headers=w.device
        )
        assert resp.status == 422, await resp.text()
        problem = await resp.json(content_type=None)
        assert [r["reason"] for r in problem["rejected"]] == ["no-contract"]
    assert [r for r in await rows_with_contract(w.pool, w.ean) if r["measured_at"] >= t_end] == []


# --- 3. both lock orders, held open -------------------------------------------------------------

BUCKETS = Bucketer(AMSTERDAM)


def batch_of(ean: str, times: list[dt.datetime]) -> Batch:
    """The interval, day and month rows of one reading per time, merged as the writer does
    (the earliest reading per period)."""
    batch = new_batch()
    for i, t in enumerate(times):
        ts = int(t.timestamp())
        day, _, month, _ = BUCKETS.bounds(ts)
        one = new_batch()
        for table, start in ((E_PT15M, ts - ts % 900), (E_P1D, day), (E_P1M, month)):
            one[table][(int(ean), start)] = (int(ean), start, ts, 1_000 + i, 2_000 + i, 0, 0)
        merge_into(batch, one)
    return batch


def columns(batch: Batch, table: int) -> list[list[Any]]:
    ordered = [batch[table][k] for k in sorted(batch[table])]
    return [list(col) for col in zip(*ordered, strict=True)]


def flush_args(batch: Batch) -> tuple[tuple[int, ...], list[list[Any]]]:
    """The tables and parameters of the writer's one-statement flush of ``batch``."""
    tables = tuple(t for t in range(N_TABLES) if batch[t])
    return tables, [col for t in tables for col in columns(batch, t)]


def measured(
    batch: Batch, keep: Callable[[int, dt.datetime], bool]
) -> dict[int, list[dt.datetime]]:
    """measured_at of ``batch``'s rows per electricity table, those ``keep(table, t)`` accepts."""
    out: dict[int, list[dt.datetime]] = {}
    for table in E_TABLES:
        times = sorted(dt.datetime.fromtimestamp(r[2], UTC) for r in batch[table].values())  # type: ignore[arg-type]
        out[table] = [t for t in times if keep(table, t)]
    return out


@dataclass
class Contract:
    ean: str
    contract_id: uuid.UUID
    consent_id: uuid.UUID
    t_end: dt.datetime
    times: list[dt.datetime]


@pytest.fixture
async def contract(pool: asyncpg.Pool) -> Contract:
    """A's contract (level daily, an interval consent since 3 days); T the last midnight, and
    readings just before it, at it, and after it (in its day, its quarter hour's successor)."""
    wall = dt.datetime.now(UTC).replace(microsecond=0)
    ean = make_ean(43)
    async with pool.acquire() as conn:
        created = await registry.add_connection(
            conn,
            registry.ConnectionIn(
                ean=ean,
                commodity="electricity",
                meter_id="E43",
                customer_id="cust-a",
                contract_start=wall - dt.timedelta(days=10),
            ),
        )
        consent = await consent_store.create_consent(
            conn,
            ean=ean,
            customer_id="cust-a",
            purpose="dynamic-tariff-billing",
            notice_version="v1",
            granted_at=wall - dt.timedelta(days=3),
        )
    t_end = last_midnight(wall)
    times = [t_end - dt.timedelta(minutes=10), t_end, t_end + dt.timedelta(minutes=20)]
    return Contract(ean, created["contract_id"], consent["consent_id"], t_end, times)


async def waits_on_a_lock(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """Until ``conn``'s backend is blocked on a lock (a row or transaction lock)."""
    pid = conn.get_server_pid()

    async def blocked() -> bool:
        kind = await pool.fetchval(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
        )
        return bool(kind == "Lock")

    await until(blocked, f"backend {pid} waits on a lock")


@pytest.mark.parametrize("reason", ["move-out", "switch"])
@pytest.mark.parametrize("one_statement_flush", [True, False])
async def test_ingest_first_end_contract_waits_then_deletes(
    pool: asyncpg.Pool, contract: Contract, reason: str, one_statement_flush: bool
) -> None:
    k = contract
    batch = batch_of(k.ean, k.times)
    async with pool.acquire() as ingester, pool.acquire() as admin:
        tx = ingester.transaction()
        await tx.start()
        if one_statement_flush:  # what BatchWriter sends
            tables, args = flush_args(batch)
            (counts,) = await ingester.fetch(flush_sql(tables), *args)
            assert tuple(counts) == tuple(len(batch[t]) for t in tables)
        else:
            for table in E_TABLES:
                status = await ingester.execute(INSERT_SQL[table], *columns(batch, table))
                assert status == f"INSERT 0 {len(batch[table])}"
        # the ingest holds FOR SHARE on A's contract row (and its consent row): the end waits
        task = asyncio.create_task(registry.end_contract(admin, k.contract_id, k.t_end, reason))
        await waits_on_a_lock(pool, admin)
        assert not task.done(), "the contract end should wait for the ingest's share lock"
        await tx.commit()
        ended = await task
    assert (ended["end"], ended["end_reason"]) == (k.t_end, reason)
    # it saw the committed rows and deleted every one measured at or after the end
    got = await stored(pool, k.ean)
    assert got == measured(batch, lambda _table, t: t < k.t_end)
    assert got[E_PT15M] and got[E_P1D], "rows measured before the end stay"
    consent = await pool.fetchrow(
        "SELECT ended_at, end_reason FROM consents WHERE consent_id = $1", k.consent_id
    )
    assert tuple(consent) == (k.t_end, reason)


@pytest.mark.parametrize("move_in", [False, True])
async def test_end_contract_first_ingest_waits_and_stores_nothing_after_the_end(
    pool: asyncpg.Pool, contract: Contract, move_in: bool
) -> None:
    k = contract
    batch = batch_of(k.ean, k.times)
    tables, args = flush_args(batch)
    async with pool.acquire() as admin, pool.acquire() as ingester:
        tx = admin.transaction()
        await tx.start()
        await registry.end_contract(admin, k.contract_id, k.t_end, "move-out")
        if move_in:  # the move-in in the same transaction: B's contract from T
            await registry.add_contract(
                admin, registry.ContractIn(ean=k.ean, customer_id="cust-b", start=k.t_end)
            )
        # the end holds A's contract row: the ingest's FOR SHARE waits for it
        task = asyncio.create_task(ingester.fetch(flush_sql(tables), *args))
        await waits_on_a_lock(pool, ingester)
        assert not task.done(), "the ingest should wait for the contract end's row lock"
        await tx.commit()
        await task
    # re-evaluated against A's ended row: nothing at or after T (not even under B, whose row
    # the waiting statement could not see), no interval row at all (the consent is no longer in
    # force), the daily and monthly rows before T (A's, no consent needed)
    before_t = measured(batch, lambda table, t: table != E_PT15M and t < k.t_end)
    assert await stored(pool, k.ean) == before_t
    if move_in:
        # the next flush (a later telegram, or the device's retry) stores B's daily and
        # monthly readings; still no interval reading
        await pool.fetch(flush_sql(tables), *args)
        got = await stored(pool, k.ean)
        assert got == measured(batch, lambda table, _t: table != E_PT15M)
        assert [t for t in got[E_P1D] if t >= k.t_end], "B's day starting at T"
        rows = await rows_with_contract(pool, k.ean)
        contract_b = await pool.fetchval(
            "SELECT contract_id FROM contracts WHERE ean = $1 AND customer_id = 'cust-b'", k.ean
        )
        for r in rows:
            owner = k.contract_id if r["measured_at"] < k.t_end else contract_b
            assert r["contract_id"] == owner, dict(r)


# --- the period cache does not outlive a contract change --------------------------------------


@pytest.mark.parametrize("how", ["deleted-by-the-end", "refused-by-the-guard"])
async def test_new_tenant_gets_the_move_in_day_reading(
    gateway_settings: Settings, pool: asyncpg.Pool, how: str
) -> None:
    """A move-out at midnight T, B's move-in from T. A gateway took one of the meter's readings
    of day T before it knew of the move: under A's still open contract (stored, then deleted
    by the end), or (a process not yet caught up) after the end, refused by the guard. Once it
    routes the meter to B, B's next reading of day T must be stored: B's day row (and B's
    month row when T is the 1st), although the process's BestCache had recorded a committed
    reading of day T before the change."""
    clock = MeterClock()
    app = create_app(gateway_settings)
    app[CLOCK_KEY] = clock.read
    app[LISTEN_KEY] = how == "deleted-by-the-end"
    wall = dt.datetime.now(UTC)
    ean, meter_id = make_ean(45), "E45"
    async with pool.acquire() as conn:
        made = await registry.add_connection(
            conn,
            registry.ConnectionIn(
                ean=ean,
                commodity="electricity",
                meter_id=meter_id,
                customer_id="cust-a",
                contract_start=wall - dt.timedelta(days=10),
            ),
        )
        device = await devices.add_device(conn, [meter_id])
    headers = {"Authorization": f"Bearer {device.token}", "Content-Type": "text/plain"}
    t_end = last_midnight(wall)
    clock.set_now(t_end + dt.timedelta(minutes=2))
    client = await start(app)
    try:
        state = app[INGEST_KEY]

        async def push(t: dt.datetime) -> None:
            resp = await client.post(
                "/v1/telegrams", data=build_telegram(meter_id, t), headers=headers
            )
            assert resp.status == 200, await resp.text()

        async with pool.acquire() as conn:
            if how == "deleted-by-the-end":
                await push(t_end + dt.timedelta(seconds=5))
                assert (await stored(pool, ean))[E_P1D] == [t_end + dt.timedelta(seconds=5)]
            await registry.end_contract(conn, made["contract_id"], t_end, "move-out")
            if how == "refused-by-the-guard":
                await push(t_end + dt.timedelta(seconds=5))  # the index still routes to A
            assert (await stored(pool, ean))[E_P1D] == []
            await registry.add_contract(
                conn, registry.ContractIn(ean=ean, customer_id="cust-b", start=t_end)
            )
        if how == "refused-by-the-guard":
            assert state.maintainer is not None
            await state.maintainer.reload_all()

        def routes_to_b() -> bool:
            route = state.index.route(meter_id, Commodity.ELECTRICITY, clock.now())
            # B's route: it starts at B's start (t_end: a whole second)
            return (
                route is not None and route.under_contract and route.lo_s == int(t_end.timestamp())
            )

        await until(routes_to_b, "the gateway routes the meter to B")
        await push(t_end + dt.timedelta(seconds=60))
        rows = await rows_with_contract(pool, ean)
        assert [r["measured_at"] for r in rows if r["tbl"] == "readings_e_p1d"] == [
            t_end + dt.timedelta(seconds=60)
        ], "B's reading of day T was acknowledged but not stored"
    finally:
        await client.close()
