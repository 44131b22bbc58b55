"""POST /v1/telegrams over real HTTP into a real PostgreSQL.

* a day of one-per-minute telegrams, on both DST change days, for connections at every level
  (none, monthly, daily, interval electricity and gas) stores exactly the rows SPEC §3 says —
  expected rows are computed here from local wall-clock arithmetic, not with gateway.ingest.periods;
* shuffled arrival and duplicates store identical rows (hypothesis, few DB-backed examples);
* bad tokens, unbound/unknown meters, garbage, oversized and empty bodies: 4xx problem+json,
  nothing stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consent.levels import Commodity
from gateway import metrics
from gateway.api.appkeys import CLOCK_KEY, INGEST_KEY, LISTEN_KEY, SETTINGS_KEY
from gateway.ingest.consent_index import ConsentIndex
from gateway.storage.schema import REGISTER_MAX
from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

Client = TestClient[web.Request, web.Application]
AMS = ZoneInfo("Europe/Amsterdam")
UTC = dt.UTC
PROBLEM = "application/problem+json"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TEXT = {"Content-Type": "text/plain"}

E_TABLES = ("readings_e_pt15m", "readings_e_p1d", "readings_e_p1m")
G_TABLES = ("readings_g_pt1h", "readings_g_p1d", "readings_g_p1m")
ALL_TABLES = E_TABLES + G_TABLES


class Clock:
    """The gateway's clock in these tests: set to just after the telegrams being sent."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    client: Client
    pool: asyncpg.Pool
    clock: Clock
    admin: dict[str, str]


@pytest.fixture
async def world(
    gateway_app: web.Application, pool: asyncpg.Pool, admin_headers: dict[str, str]
) -> AsyncIterator[World]:
    clock = Clock()
    gateway_app[CLOCK_KEY] = clock
    client: Client = TestClient(TestServer(gateway_app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield World(client, pool, clock, admin_headers)
    finally:
        await client.close()


async def add_meter(w: World, n: int, commodity: str, meter_id: str, start: dt.datetime) -> str:
    ean = make_ean(n)
    resp = await w.client.post(
        "/v1/admin/meters",
        json={
            "ean": ean,
            "commodity": commodity,
            "meter_id": meter_id,
            "customer_id": f"cust-{n}",
            "contract_start": start.isoformat(),
        },
        headers=w.admin,
    )
    assert resp.status == 201, await resp.text()
    return ean


async def add_device(w: World, *meter_ids: str) -> dict[str, str]:
    resp = await w.client.post(
        "/v1/admin/devices", json={"meter_ids": list(meter_ids)}, headers=w.admin
    )
    assert resp.status == 201, await resp.text()
    token = (await resp.json())["token"]
    return {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}


def has_windows(index: ConsentIndex, meter_id: str, commodity: Commodity) -> bool:
    """Whether the meter's route of now carries interval consent windows (the index caught up
    with a grant)."""
    route = index.route(meter_id, commodity, dt.datetime.now(UTC))
    return route is not None and bool(route.windows)


async def add_consent(w: World, ean: str, n: int, granted: dt.datetime) -> str:
    resp = await w.client.post(
        "/v1/admin/consents",
        json={
            "ean": ean,
            "customer_id": f"cust-{n}",
            "purpose": "dynamic-tariff-billing",
            "notice_version": "v1",
            "granted_at": granted.isoformat(),
        },
        headers=w.admin,
    )
    assert resp.status == 201, await resp.text()
    consent_id: str = (await resp.json())["consent_id"]
    return consent_id


async def wait_for(predicate: Any) -> None:
    """Wait until ``predicate()`` holds (the consent index follows NOTIFYs asynchronously)."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the consent index did not catch up within 5 s")


async def stored(pool: asyncpg.Pool, table: str) -> set[tuple[Any, ...]]:
    rows = await pool.fetch(f"SELECT * FROM {table}")
    # changed_xid (which transaction wrote the row, for sync pulls) is no reading value
    return {tuple(v for k, v in r.items() if k != "changed_xid") for r in rows}


async def count_all(pool: asyncpg.Pool) -> int:
    total = 0
    for table in ALL_TABLES:
        total += await pool.fetchval(f"SELECT count(*) FROM {table}")
    return total


# --- expected rows, computed from local wall-clock time ----------------------------------------


def local_day_start(t: dt.datetime) -> dt.datetime:
    local = t.astimezone(AMS)
    return dt.datetime(local.year, local.month, local.day, tzinfo=AMS).astimezone(UTC)


def local_month_start(t: dt.datetime) -> dt.datetime:
    local = t.astimezone(AMS)
    return dt.datetime(local.year, local.month, 1, tzinfo=AMS).astimezone(UTC)


def local_sub_hour_start(t: dt.datetime, minutes: int) -> dt.datetime:
    # wall-clock floor in local time, keeping the UTC offset (tells the repeated hour apart)
    local = t.astimezone(AMS)
    floored = local.replace(minute=local.minute - local.minute % minutes, second=0)
    return floored.astimezone(UTC)


def expected_rows(
    readings: list[tuple[int, dt.datetime, tuple[int | None, ...]]],
    granularity: str,
) -> set[tuple[Any, ...]]:
    """Earliest reading per period: (ean, period_start, measured_at, *values)."""
    start_of = {
        "P1M": local_month_start,
        "P1D": local_day_start,
        "PT15M": lambda t: local_sub_hour_start(t, 15),
        "PT1H": lambda t: local_sub_hour_start(t, 60),
    }[granularity]
    best: dict[tuple[int, dt.datetime], tuple[dt.datetime, tuple[int | None, ...]]] = {}
    for ean, t, values in readings:
        key = (ean, start_of(t))
        if key not in best or t < best[key][0]:
            best[key] = (t, values)
    return {(ean, start, t, *values) for (ean, start), (t, values) in best.items()}


# --- a day at every level, on both DST change days ---------------------------------------------


@pytest.mark.parametrize(
    "day",
    [dt.date(2026, 3, 29), dt.date(2026, 10, 25)],
    ids=["spring-23h", "autumn-25h"],
)
async def test_a_day_at_every_level(world: World, day: dt.date) -> None:
    w = world
    day_start = dt.datetime(day.year, day.month, day.day, tzinfo=AMS).astimezone(UTC)
    contract = day_start - dt.timedelta(days=60)
    e_none = await add_meter(w, 1, "electricity", "EN", contract)
    e_month = await add_meter(w, 2, "electricity", "EM", contract)
    e_daily = await add_meter(w, 3, "electricity", "ED", contract)
    g_daily = await add_meter(w, 4, "gas", "GD", contract)
    e_int = await add_meter(w, 5, "electricity", "EI", contract)
    g_int = await add_meter(w, 6, "gas", "GI", contract)
    await w.pool.execute("UPDATE contracts SET level = 'none' WHERE ean = $1", e_none)
    await w.pool.execute("UPDATE contracts SET level = 'monthly' WHERE ean = $1", e_month)
    await add_consent(w, e_int, 5, contract)
    await add_consent(w, g_int, 6, contract)
    devices = {
        "EN": await add_device(w, "EN"),
        "EM": await add_device(w, "EM"),
        "ED": await add_device(w, "ED", "GD"),
        "EI": await add_device(w, "EI", "GI"),
    }
    gas_of = {"ED": "GD", "EI": "GI"}
    ean_of = {"EN": e_none, "EM": e_month, "ED": e_daily, "GD": g_daily, "EI": e_int, "GI": g_int}
    # the index follows registry changes through NOTIFY; wait until it has all of them
    state = w.client.app[INGEST_KEY]

    def ready() -> bool:
        index, now = state.index, dt.datetime.now(dt.UTC)
        return (
            len(index) == 6
            and index.granularities("EN", Commodity.ELECTRICITY, now, now) == frozenset()
            and len(index.granularities("EM", Commodity.ELECTRICITY, now, now)) == 1
            and has_windows(index, "EI", Commodity.ELECTRICITY)
            and has_windows(index, "GI", Commodity.GAS)
        )

    await wait_for(ready)

    # one telegram per minute from 30 min before the local day to 30 min after it
    first = day_start - dt.timedelta(minutes=30)
    next_day = day + dt.timedelta(days=1)
    day_end = dt.datetime(next_day.year, next_day.month, next_day.day, tzinfo=AMS).astimezone(UTC)
    last = day_end + dt.timedelta(minutes=29)
    times = []
    t = first
    while t <= last:
        times.append(t)
        t += dt.timedelta(minutes=1)
    readings: dict[str, list[tuple[int, dt.datetime, tuple[int | None, ...]]]] = {
        m: [] for m in ean_of
    }
    bodies: dict[str, list[bytes]] = {m: [] for m in devices}
    for i, t in enumerate(times):
        for k, meter in enumerate(devices):
            imp = (1_000_000 + 7 * i + k, 2_000_000 + 3 * i)
            exp = (500 + i, 0)
            gas = None
            if meter in gas_of:
                captured = t - dt.timedelta(seconds=t.minute % 5 * 60 + 30)  # 5-min capture
                dm3 = 40_000 + int(captured.timestamp()) // 300
                gas = (gas_of[meter], captured, dm3)
                readings[gas_of[meter]].append((int(ean_of[gas_of[meter]]), captured, (dm3,)))
            bodies[meter].append(build_telegram(meter, t, import_wh=imp, export_wh=exp, gas=gas))
            readings[meter].append((int(ean_of[meter]), t, (*imp, *exp)))

    for start in range(0, len(times), 60):
        w.clock.now = times[min(start + 59, len(times) - 1)].timestamp() + 1
        for meter, headers in devices.items():
            body = b"".join(bodies[meter][start : start + 60])
            resp = await w.client.post("/v1/telegrams", data=body, headers=headers)
            assert resp.status == 200, await resp.text()
            outcome = await resp.json()
            assert outcome == {"accepted": len(bodies[meter][start : start + 60]), "rejected": []}

    def exp(meters: list[str], granularity: str) -> set[tuple[Any, ...]]:
        out: set[tuple[Any, ...]] = set()
        for m in meters:
            out |= expected_rows(readings[m], granularity)
        return out

    assert await stored(w.pool, "readings_e_p1m") == exp(["EM", "ED", "EI"], "P1M")
    assert await stored(w.pool, "readings_e_p1d") == exp(["ED", "EI"], "P1D")
    assert await stored(w.pool, "readings_e_pt15m") == exp(["EI"], "PT15M")
    assert await stored(w.pool, "readings_g_p1m") == exp(["GD", "GI"], "P1M")
    assert await stored(w.pool, "readings_g_p1d") == exp(["GD", "GI"], "P1D")
    assert await stored(w.pool, "readings_g_pt1h") == exp(["GI"], "PT1H")
    # sanity on the shape of the day: 23/25 hours of quarters plus the two half-hour margins
    hours = 23 if day.month == 3 else 25
    quarters = await w.pool.fetchval("SELECT count(*) FROM readings_e_pt15m")
    assert quarters == hours * 4 + 4
    days = await w.pool.fetchval("SELECT count(*) FROM readings_e_p1d WHERE ean = $1", int(e_daily))
    assert days == 3


# --- arrival order and duplicates --------------------------------------------------------------


@pytest.fixture
async def small_world(world: World) -> AsyncIterator[tuple[World, dict[str, str], str, str]]:
    start = dt.datetime(2026, 10, 24, 22, tzinfo=UTC)
    e = await add_meter(world, 11, "electricity", "E11", start - dt.timedelta(days=5))
    g = await add_meter(world, 12, "gas", "G12", start - dt.timedelta(days=5))
    await add_consent(world, e, 11, start - dt.timedelta(days=5))
    await add_consent(world, g, 12, start - dt.timedelta(days=5))
    headers = await add_device(world, "E11", "G12")
    state = world.client.app[INGEST_KEY]
    await wait_for(
        lambda: (
            len(state.index) == 2
            and has_windows(state.index, "E11", Commodity.ELECTRICITY)
            and has_windows(state.index, "G12", Commodity.GAS)
        )
    )
    yield world, headers, e, g


ORDER_BASE = dt.datetime(2026, 10, 25, 0, 40, tzinfo=UTC)  # around the repeated hour
ORDER_TELEGRAMS = [
    build_telegram(
        "E11",
        ORDER_BASE + dt.timedelta(minutes=4 * i),
        import_wh=(10_000 + i, 20_000 + i),
        # a capture time always comes with the same value (the meter's 5-minute register)
        gas=("G12", ORDER_BASE + dt.timedelta(minutes=4 * i - 4 * i % 5), 300 + (4 * i) // 5),
    )
    for i in range(24)
]


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    order=st.permutations(list(range(len(ORDER_TELEGRAMS)))),
    dups=st.lists(st.integers(0, len(ORDER_TELEGRAMS) - 1), max_size=10),
    chunk=st.integers(1, 9),
)
async def test_order_and_duplicates_do_not_matter(
    small_world: tuple[World, dict[str, str], str, str],
    order: list[int],
    dups: list[int],
    chunk: int,
) -> None:
    w, headers, _e, _g = small_world
    state = w.client.app[INGEST_KEY]
    w.clock.now = (ORDER_BASE + dt.timedelta(hours=3)).timestamp()

    async def run(sequence: list[int], size: int) -> dict[str, set[tuple[Any, ...]]]:
        for table in ALL_TABLES:
            await w.pool.execute(f"TRUNCATE {table}")
        state.pipeline.best.clear()
        for i in range(0, len(sequence), size):
            body = b"".join(ORDER_TELEGRAMS[j] for j in sequence[i : i + size])
            resp = await w.client.post("/v1/telegrams", data=body, headers=headers)
            assert resp.status == 200, await resp.text()
        return {table: await stored(w.pool, table) for table in ALL_TABLES}

    reference = await run(list(range(len(ORDER_TELEGRAMS))), len(ORDER_TELEGRAMS))
    shuffled = order + dups
    random.Random(chunk).shuffle(dups)
    assert await run(shuffled, chunk) == reference
    assert all(reference[t] for t in ALL_TABLES)


# --- refusals ----------------------------------------------------------------------------------


async def expect_problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    data: dict[str, Any] = await resp.json(content_type=PROBLEM)
    assert data["status"] == status and data["detail"]
    return data


async def test_refusals_store_nothing(world: World) -> None:
    w = world
    now = dt.datetime.now(UTC).replace(microsecond=0)
    w.clock.now = now.timestamp()
    await add_meter(w, 21, "electricity", "E21", now - dt.timedelta(days=10))
    headers = await add_device(w, "E21", "E22")  # E22 is bound but not registered
    good = build_telegram("E21", now - dt.timedelta(seconds=30))

    # no token, unknown token, wrong scheme
    for h in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDp5"}):
        resp = await w.client.post("/v1/telegrams", data=good, headers={**TEXT, **h})
        await expect_problem(resp, 401)
    # an admin token is not a device token
    resp = await w.client.post("/v1/telegrams", data=good, headers={**TEXT, **w.admin})
    await expect_problem(resp, 401)

    cases: list[tuple[bytes, str]] = [
        (build_telegram("E99", now), "meter-not-bound"),
        (build_telegram("E22", now), "unknown-meter"),
        (b"\xff\x00garbage without a telegram\r\n", "bad-frame"),
        (good[:-20], "bad-frame"),
        (build_telegram("E21", now, bad_crc=True), "bad-crc"),
        (build_telegram("E21", None), "clock-unset"),
        (build_telegram("E21", now + dt.timedelta(minutes=10)), "future-timestamp"),
        (build_telegram("E21", now - dt.timedelta(days=45)), "too-old"),
    ]
    for body, reason in cases:
        data = await expect_problem(
            await w.client.post("/v1/telegrams", data=body, headers=headers), 422
        )
        assert data["accepted"] == 0
        assert [(r["index"], r["reason"]) for r in data["rejected"]] == [(0, reason)], data

    resp = await w.client.post("/v1/telegrams", data=b"\r\n", headers=headers)
    await expect_problem(resp, 400)
    resp = await w.client.post(
        "/v1/telegrams", data=good, headers={**headers, "Content-Type": "application/json"}
    )
    await expect_problem(resp, 415)
    too_big = good * (w.client.app[SETTINGS_KEY].max_body_bytes // len(good) + 2)
    resp = await w.client.post("/v1/telegrams", data=io.BytesIO(too_big), headers=headers)
    await expect_problem(resp, 413)
    assert await count_all(w.pool) == 0

    # a mixed body: the good one is stored, the others are reported by index
    mixed = build_telegram("E99", now) + good + b"junk\r\n!\r\n"
    resp = await w.client.post("/v1/telegrams", data=mixed, headers=headers)
    assert resp.status == 200
    outcome = await resp.json()
    assert outcome["accepted"] == 1
    assert [(r["index"], r["reason"]) for r in outcome["rejected"]] == [
        (0, "meter-not-bound"),
        (2, "bad-frame"),
    ]
    assert await w.pool.fetchval("SELECT count(*) FROM readings_e_p1d") == 1
    # idempotent: the same body again changes nothing
    before = {t: await stored(w.pool, t) for t in ALL_TABLES}
    resp = await w.client.post("/v1/telegrams", data=mixed, headers=headers)
    assert resp.status == 200
    assert {t: await stored(w.pool, t) for t in ALL_TABLES} == before


async def test_admin_consent_validation(world: World) -> None:
    w = world
    now = dt.datetime.now(UTC)
    ean = await add_meter(w, 41, "electricity", "E41", now - dt.timedelta(days=3))
    base = {
        "ean": ean,
        "customer_id": "cust-41",
        "purpose": "energy-insights",
        "notice_version": "v1",
    }
    cases: list[tuple[dict[str, Any], int]] = [
        ({**base, "purpose": "marketing"}, 422),
        ({**base, "customer_id": "someone-else"}, 409),
        ({**base, "ean": make_ean(999)}, 404),
        ({**base, "ean": "123"}, 422),
        (
            {
                **base,
                "expires_at": (now - dt.timedelta(days=1)).isoformat(),
                "granted_at": now.isoformat(),
            },
            422,
        ),
        ({**base, "extra": 1}, 422),
    ]
    for body, status in cases:
        resp = await w.client.post("/v1/admin/consents", json=body, headers=w.admin)
        await expect_problem(resp, status)
    resp = await w.client.post("/v1/admin/consents", json=base)
    await expect_problem(resp, 401)
    resp = await w.client.post("/v1/admin/consents", json=base, headers=w.admin)
    assert resp.status == 201
    created = await resp.json()
    assert created["ended_at"] is None and created["expires_at"]  # max lifetime applied
    resp = await w.client.post(
        "/v1/admin/consents/not-a-uuid/end", json={"reason": "revoked"}, headers=w.admin
    )
    await expect_problem(resp, 404)
    resp = await w.client.post(
        f"/v1/admin/consents/{created['consent_id']}/end",
        json={"reason": "revoked", "at": (now + dt.timedelta(days=1)).isoformat()},
        headers=w.admin,
    )
    await expect_problem(resp, 422)
    kinds = await w.pool.fetch("SELECT kind FROM consent_events WHERE ean = $1", ean)
    assert [k["kind"] for k in kinds] == ["granted"]


async def test_a_poisoned_register_is_refused_alone_and_everyone_else_is_stored(
    world: World,
) -> None:
    """A CRC-valid telegram whose register is beyond 18 digits (beyond the database's int8)
    pushed at the same moment as other devices' telegrams: before, it joined their shared
    write batch and the database refused the whole statement (500 for all, nothing stored).
    Now it is rejected alone with its reason; the others are stored and acknowledged."""
    w = world
    start = dt.datetime(2026, 3, 1, tzinfo=UTC)
    t = dt.datetime(2026, 3, 2, 12, 0, 5, tzinfo=UTC)
    w.clock.now = t.timestamp() + 1
    eans = [await add_meter(w, 90 + n, "electricity", f"P{n}", start) for n in range(4)]
    devices = [await add_device(w, f"P{n}") for n in range(4)]
    poison = build_telegram("P0", t, import_wh=(9_999_999_999_999_999_999_999_999, 1))
    bodies = [poison] + [build_telegram(f"P{n}", t) for n in range(1, 4)]
    for _ in range(3):  # several rounds: concurrent requests share the group commit
        responses = await asyncio.gather(
            *(
                w.client.post("/v1/telegrams", data=body, headers=device)
                for body, device in zip(bodies, devices, strict=True)
            )
        )
        statuses = [r.status for r in responses]
        assert statuses == [422, 200, 200, 200], statuses
        problem = await responses[0].json()
        assert [x["reason"] for x in problem["rejected"]] == ["bad-value"]
    daily = await stored(w.pool, "readings_e_p1d")
    assert {row[0] for row in daily} == {int(e) for e in eans[1:]}


async def test_a_register_beyond_int4_is_refused_by_name_and_the_rest_is_stored(
    world: World,
) -> None:
    """The electricity registers are int4 since migration 0014. A telegram carrying a register
    above that range (valid DSMR syntax, beyond any real meter) is rejected alone with a reason
    naming the register, before its rows meet the database; the same request's other telegrams
    and the other devices' concurrent telegrams are stored. The largest value that fits is
    stored exactly. (Without the pipeline's check the database refuses the value: the writer
    bisects and the telegram is rejected with a bare SQLSTATE; before 0014 it was stored.)"""
    w = world
    start = dt.datetime(2026, 3, 1, tzinfo=UTC)
    days = [dt.datetime(2026, 3, d, 12, 0, 5, tzinfo=UTC) for d in (2, 3, 4)]
    w.clock.now = days[-1].timestamp() + 1
    eans = [await add_meter(w, 130 + n, "electricity", f"Q{n}", start) for n in range(3)]
    devices = [await add_device(w, f"Q{n}") for n in range(3)]
    top = REGISTER_MAX
    # device 0: day 2 carries an export register one above int4; days 1 and 3 the largest fit
    mixed = b"".join(
        build_telegram("Q0", t, import_wh=(top, 7), export_wh=(0, top + (i == 1)))
        for i, t in enumerate(days)
    )
    bodies = [mixed] + [b"".join(build_telegram(f"Q{n}", t) for t in days) for n in (1, 2)]
    responses = await asyncio.gather(
        *(
            w.client.post("/v1/telegrams", data=body, headers=device)
            for body, device in zip(bodies, devices, strict=True)
        )
    )
    assert [r.status for r in responses] == [200] * 3
    answers = [await r.json() for r in responses]
    assert answers[0]["accepted"] == 2
    (rejected,) = answers[0]["rejected"]
    assert (rejected["index"], rejected["reason"]) == (1, "bad-value")
    assert f"energy register 2.8.2 is above {REGISTER_MAX} Wh" in rejected["detail"]
    assert all(a == {"accepted": 3, "rejected": []} for a in answers[1:])
    daily = await w.pool.fetch(
        "SELECT ean, period_start, import_t1_wh, export_t2_wh FROM readings_e_p1d"
        " ORDER BY ean, period_start"
    )
    mine = [(r["import_t1_wh"], r["export_t2_wh"]) for r in daily if r["ean"] == int(eans[0])]
    assert mine == [(top, top), (top, top)]  # days 1 and 3, exact
    assert sum(1 for r in daily if r["ean"] != int(eans[0])) == 6


async def test_rows_the_database_refuses_cost_only_their_own_telegram(world: World) -> None:
    """Should the database still refuse a shared batch for a data reason (here: a CHECK the
    operator added, refusing one value), the writer bisects the batch down to the request, and
    the request down to the telegram: that one is rejected (bad-value), the same request's other
    telegrams and every other device's telegrams are stored and acknowledged. Before, every
    request in the batch got a 500 and nothing was stored."""
    w = world
    start = dt.datetime(2026, 3, 1, tzinfo=UTC)
    days = [dt.datetime(2026, 3, d, 12, 0, 5, tzinfo=UTC) for d in (2, 3, 4)]
    w.clock.now = days[-1].timestamp() + 1
    poison_wh = 4_242_424
    await w.pool.execute(
        f"ALTER TABLE readings_e_p1d ADD CONSTRAINT refuse_one CHECK (import_t1_wh <> {poison_wh})"
    )
    eans = [await add_meter(w, 110 + n, "electricity", f"R{n}", start) for n in range(4)]
    devices = [await add_device(w, f"R{n}") for n in range(4)]
    # device 0: three days, the middle one refused by the database; the others: three good days
    mixed = b"".join(
        build_telegram("R0", t, import_wh=(poison_wh if i == 1 else 1000 + i, 7))
        for i, t in enumerate(days)
    )
    bodies = [mixed] + [b"".join(build_telegram(f"R{n}", t) for t in days) for n in range(1, 4)]
    responses = await asyncio.gather(
        *(
            w.client.post("/v1/telegrams", data=body, headers=device)
            for body, device in zip(bodies, devices, strict=True)
        )
    )
    assert [r.status for r in responses] == [200] * 4
    answers = [await r.json() for r in responses]
    assert answers[0]["accepted"] == 2
    assert [(x["index"], x["reason"]) for x in answers[0]["rejected"]] == [(1, "bad-value")]
    assert "SQLSTATE 23514" in answers[0]["rejected"][0]["detail"]
    assert all(a == {"accepted": 3, "rejected": []} for a in answers[1:])
    daily = await w.pool.fetch("SELECT ean, import_t1_wh FROM readings_e_p1d")
    per_ean: dict[int, list[int]] = {}
    for row in daily:
        per_ean.setdefault(row["ean"], []).append(row["import_t1_wh"])
    assert sorted(per_ean[int(eans[0])]) == [1000, 1002]
    assert all(len(per_ean[int(e)]) == 3 for e in eans[1:])


async def test_a_flood_of_junk_frames_gets_a_bounded_answer(world: World) -> None:
    """Tiny junk frames earned a rejection entry each: 220 kB of them made a 2.5 MB answer.
    Now a body with more telegrams than allowed is refused whole (413, the device halves its
    batch), and within the limit the listed rejections stay within the body's size (or 4 kB),
    the rest summarised by reason."""
    w = world
    w.clock.now = dt.datetime(2026, 3, 2, tzinfo=UTC).timestamp()
    device = await add_device(w, "J0")
    frame = b"x\r\n!\r\n"
    limit = w.client.app[SETTINGS_KEY].max_telegrams_per_request  # type: ignore[union-attr]

    flood = frame * 40_000  # 240 kB
    resp = await w.client.post("/v1/telegrams", data=flood, headers=device)
    problem = await expect_problem(resp, 413)
    assert len(await resp.read()) < 1000
    assert str(limit) in problem["detail"]

    body = frame * limit
    resp = await w.client.post("/v1/telegrams", data=body, headers=device)
    problem = await expect_problem(resp, 422)
    assert len(await resp.read()) <= max(4096, len(body)) + 1024
    listed = len(problem["rejected"])
    assert 0 < listed < limit
    assert problem["rejected_omitted"] == limit - listed
    assert problem["rejected_by_reason"] == {problem["rejected"][0]["reason"]: limit}

    # a real batch of rejected telegrams is listed in full: every index gets its reason
    real = b"".join(
        build_telegram("J9", dt.datetime(2026, 3, 1, 23, i, tzinfo=UTC)) for i in range(50)
    )
    resp = await w.client.post("/v1/telegrams", data=real, headers=device)
    problem = await expect_problem(resp, 422)
    assert [x["index"] for x in problem["rejected"]] == list(range(50))
    assert "rejected_omitted" not in problem


async def test_the_bearer_scheme_is_case_insensitive(world: World) -> None:
    """RFC 7235: auth schemes are case-insensitive; some HTTP stacks on dongles send 'bearer'."""
    w = world
    start = dt.datetime(2026, 3, 1, tzinfo=UTC)
    t = dt.datetime(2026, 3, 2, 12, 0, 5, tzinfo=UTC)
    w.clock.now = t.timestamp() + 1
    await add_meter(w, 120, "electricity", "C0", start)
    device = await add_device(w, "C0")
    token = device["Authorization"].split(" ", 1)[1]
    for scheme in ("bearer", "BEARER", "BeArEr"):
        headers = {**device, "Authorization": f"{scheme} {token}"}
        resp = await w.client.post("/v1/telegrams", data=build_telegram("C0", t), headers=headers)
        assert resp.status == 200, (scheme, await resp.text())


async def test_a_meter_is_known_to_ingest_when_its_registration_answers(
    gateway_app: web.Application, pool: asyncpg.Pool, admin_headers: dict[str, str]
) -> None:
    """Registration used to reach this process's index only through its NOTIFY, so a device
    pushing right after it could meet 'unknown-meter', a rejection the device never retries.
    Without LISTEN here, only the registration's own refresh can make the push succeed."""
    clock = Clock()
    gateway_app[CLOCK_KEY] = clock
    gateway_app[LISTEN_KEY] = False
    client: Client = TestClient(TestServer(gateway_app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        w = World(client, pool, clock, admin_headers)
        t = dt.datetime(2026, 3, 2, 12, 0, 5, tzinfo=UTC)
        clock.now = t.timestamp() + 1
        device = await add_device(w, "K0")
        await add_meter(w, 121, "electricity", "K0", dt.datetime(2026, 3, 1, tzinfo=UTC))
        resp = await client.post("/v1/telegrams", data=build_telegram("K0", t), headers=device)
        assert resp.status == 200, await resp.text()
    finally:
        await client.close()


async def test_a_dst_flag_contradicting_the_calendar_is_counted_and_the_calendar_wins(
    world: World,
) -> None:
    """The Iskra IE sample (a real telegram, meter id 09610) says 0-0:1.0.0(230202132747S):
    "summer time" on 2 February. The reading is measured at 12:27:47Z (CET, the calendar), not
    at the flag's 11:27:47Z, and the telegram counts in
    meterpoort_telegram_dst_flag_mismatch_total; a telegram whose flag is right does not."""
    w = world
    sample = (FIXTURES / "telegrams" / "dsmrparser_ie_iskra_ie5.txt").read_bytes()
    w.clock.now = dt.datetime(2023, 2, 2, 12, 30, tzinfo=UTC).timestamp()
    start = dt.datetime(2023, 1, 1, tzinfo=UTC)
    ean = await add_meter(w, 120, "electricity", "09610", start)
    await add_meter(w, 121, "electricity", "E121", start)
    device = await add_device(w, "09610", "E121")

    def mismatches() -> float:
        name = "meterpoort_telegram_dst_flag_mismatch_total"
        return metrics.REGISTRY.get_sample_value(name) or 0.0

    before = mismatches()
    right = build_telegram("E121", dt.datetime(2023, 2, 2, 12, 0, tzinfo=UTC))
    resp = await w.client.post("/v1/telegrams", data=right, headers=device)
    assert resp.status == 200, await resp.text()
    assert mismatches() == before
    resp = await w.client.post("/v1/telegrams", data=sample, headers=device)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"accepted": 1, "rejected": []}
    assert mismatches() == before + 1
    measured = await w.pool.fetchval(
        "SELECT measured_at FROM readings_e_p1d WHERE ean = $1", int(ean)
    )
    assert measured == dt.datetime(2023, 2, 2, 12, 27, 47, tzinfo=UTC)
