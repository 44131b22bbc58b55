"""Full loads of the consent index: streamed, built off the event loop, swapped in at once."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import asyncpg
import pytest

from consent.levels import Commodity, Granularity
from gateway.ingest import consent_index
from gateway.services import consents as consent_store
from gateway.services import registry
from tests.support import make_ean

UTC = dt.UTC


async def test_a_full_load_builds_in_a_worker_thread_and_swaps_in_place(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = dt.datetime.now(UTC)
    async with pool.acquire() as conn:
        for n, commodity in ((1, "electricity"), (2, "gas")):
            await registry.add_connection(
                conn,
                registry.ConnectionIn(
                    ean=make_ean(n),
                    commodity=commodity,
                    meter_id=f"M{n}",
                    customer_id="cust",
                    contract_start=now - dt.timedelta(days=10),
                ),
            )
        await consent_store.create_consent(
            conn,
            ean=make_ean(1),
            customer_id="cust",
            purpose="dynamic-tariff-billing",
            notice_version="v1",
            granted_at=now - dt.timedelta(days=1),
        )

    built_on: list[int] = []
    original = consent_index._CopyBuilder.add_plain

    def recording(
        self: consent_index._CopyBuilder,
        gas: bool,
        numbers: bytes | None,
        meter_ids: str | None,
        windowed: bool = False,
    ) -> None:
        built_on.append(threading.get_ident())
        original(self, gas, numbers, meter_ids, windowed)

    monkeypatch.setattr(consent_index._CopyBuilder, "add_plain", recording)
    index = consent_index.ConsentIndex()
    before = index.generation
    async with pool.acquire() as conn:
        await consent_index.load_all(conn, index)

    # built in another thread than the event loop's, then taken over by the same object
    assert built_on and built_on[0] != threading.get_ident()
    assert index.generation == before + 1 and len(index) == 2
    t = now - dt.timedelta(hours=1)
    assert Granularity.PT15M in index.granularities("M1", Commodity.ELECTRICITY, t, now)
    assert index.granularities("M2", Commodity.GAS, t, now) == frozenset(
        {Granularity.P1D, Granularity.P1M}
    )
    assert index.route("M1", Commodity.GAS, t) is None


def _dump(index: consent_index.ConsentIndex) -> dict[tuple[bool, str], list[tuple[Any, ...]]]:
    """Every meter's routes, newest first, as (EAN number, window, policy): what the hot path
    reads, whatever route numbers they were given."""
    out: dict[tuple[bool, str], list[tuple[Any, ...]]] = {}
    for gas, table in ((False, index.electricity), (True, index.gas)):
        for meter_id, head in table.items():
            routes = (head, *index._older.get(head, ()))
            out[gas, meter_id] = [
                (index.ean_nums[r], index._lo[r], index._hi[r], index.policy(r)) for r in routes
            ]
    return out


async def test_the_streamed_load_routes_a_varied_world_as_the_row_by_row_build(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contracts over time with a gap, a meter exchange, a meter moving to another connection,
    consents on several levels (active, expiring, revoked, on an ended contract), a connection
    without contract, a meter id needing COPY escapes, times between whole seconds: the full
    load (COPY streams, two paths) builds what the record-based build and per-EAN reloads
    build, and routes as the scenario says."""
    now = dt.datetime.now(UTC).replace(microsecond=250_000)

    def ago(days: float) -> dt.datetime:
        return now - dt.timedelta(days=days, microseconds=1_500)

    eans = {n: make_ean(n) for n in range(1, 10)}
    odd_meter = "M\\1\tx"
    async with pool.acquire() as conn:

        async def connection(n: int, commodity: str) -> None:
            await conn.execute(
                "INSERT INTO connections (ean, commodity) VALUES ($1, $2)", eans[n], commodity
            )

        async def contract(n: int, start: dt.datetime, end: dt.datetime | None, level: str) -> Any:
            return await conn.fetchval(
                "INSERT INTO contracts (ean, customer_id, contract_start, contract_end, level)"
                " VALUES ($1, 'cust', $2, $3, $4) RETURNING contract_id",
                eans[n],
                start,
                end,
                level,
            )

        async def install(
            n: int, commodity: str, meter: str, start: dt.datetime, end: dt.datetime | None
        ) -> None:
            await conn.execute(
                "INSERT INTO meter_installations"
                " (ean, commodity, meter_id, installed_from, installed_until)"
                " VALUES ($1, $2, $3, $4, $5)",
                eans[n],
                commodity,
                meter,
                start,
                end,
            )

        async def consent(
            n: int,
            k: Any,
            granted: dt.datetime,
            expires: dt.datetime | None = None,
            ended: dt.datetime | None = None,
        ) -> None:
            await conn.execute(
                "INSERT INTO consents (ean, consent_id, customer_id, purpose, notice_version,"
                " channel, granted_at, expires_at, ended_at, end_reason, contract_id)"
                " VALUES ($1, gen_random_uuid(), 'cust', 'p', 'v1', 'api', $2, $3, $4, $5, $6)",
                eans[n],
                granted,
                expires,
                ended,
                None if ended is None else "revoked",
                k,
            )

        for n, commodity in (
            (1, "electricity"),
            (2, "electricity"),
            (3, "gas"),
            (4, "electricity"),
            (5, "gas"),
            (6, "electricity"),
            (7, "electricity"),
            (8, "gas"),
            (9, "gas"),
        ):
            await connection(n, commodity)
        # EAN 1: contract A, a gap, contract B (monthly); M1 exchanged for the odd meter
        a = await contract(1, ago(300), ago(100), "daily")
        b = await contract(1, ago(90), None, "monthly")
        await consent(1, a, ago(200))  # on an ended contract: over with it
        await consent(1, b, ago(80))  # monthly: no interval readings anyway
        await install(1, "electricity", "M1", ago(300), ago(50))
        await install(1, "electricity", odd_meter, ago(50), None)
        # EAN 2: M1 moved here; consents active (expiring), revoked, and one ended ahead
        c = await contract(2, ago(45), None, "daily")
        await install(2, "electricity", "M1", ago(40), None)
        await consent(2, c, ago(10), expires=now + dt.timedelta(days=30))
        await consent(2, c, ago(30), ended=ago(20))
        # plain ones: gas daily, electricity level none; gas with consent; no contract at all
        await contract(3, ago(20), None, "daily")
        await install(3, "gas", "G3", ago(20), None)
        await contract(4, ago(20), None, "none")
        await install(4, "electricity", "E4", ago(20), None)
        k5 = await contract(5, ago(20), None, "daily")
        await install(5, "gas", "G5", ago(20), None)
        await consent(5, k5, ago(5))
        await install(6, "electricity", "E6", ago(20), None)
        # EAN 7: the contract starts a few microseconds after the installation (same second)
        await contract(7, ago(20) + dt.timedelta(microseconds=3), None, "daily")
        await install(7, "electricity", "E7", ago(20), None)
        # a gas meter moved between two connections, each time under one contract: plain rows
        await contract(8, ago(60), ago(30), "daily")
        await install(8, "gas", "G8", ago(60), ago(30))
        await contract(9, ago(30), None, "monthly")
        await install(9, "gas", "G8", ago(30), None)

        streamed = consent_index.ConsentIndex()
        await consent_index.load_all(conn, streamed)
        by_records = consent_index.ConsentIndex()
        by_records.replace_rows(
            await conn.fetch(consent_index._ROUTE_QUERY),
            await conn.fetch(consent_index._CONSENT_QUERY),
        )
        by_eans = consent_index.ConsentIndex()
        await consent_index.load_eans(conn, by_eans, eans.values())
        # per-EAN reloads over a full load: every old route replaced, slots reused
        reloaded = consent_index.ConsentIndex()
        await consent_index.load_all(conn, reloaded)
        await consent_index.load_eans(conn, reloaded, eans.values())
        # and again, the EANs' routes found in one pass over all routes (as for many EANs)
        monkeypatch.setattr(consent_index, "_SEARCHES", 0)
        in_one_pass = consent_index.ConsentIndex()
        await consent_index.load_all(conn, in_one_pass)
        await consent_index.load_eans(conn, in_one_pass, eans.values())

    expected = _dump(by_records)
    assert len(expected) == 8
    assert _dump(streamed) == expected
    assert _dump(by_eans) == expected
    assert _dump(reloaded) == expected
    assert _dump(in_one_pass) == expected
    assert len(reloaded.ean_nums) == len(streamed.ean_nums)

    e, g = Commodity.ELECTRICITY, Commodity.GAS
    P1M, P1D, PT15M, PT1H = (
        Granularity.P1M,
        Granularity.P1D,
        Granularity.PT15M,
        Granularity.PT1H,
    )
    for each in (streamed, by_records):

        def where(
            meter: str,
            days: float,
            commodity: Commodity = e,
            index: consent_index.ConsentIndex = each,
        ) -> str | None:
            route = index.route(meter, commodity, ago(days))
            return None if route is None else route.ean

        def grans(
            meter: str,
            days: float,
            commodity: Commodity = e,
            index: consent_index.ConsentIndex = each,
        ) -> frozenset[Granularity]:
            return index.granularities(meter, commodity, ago(days), now)

        assert where("M1", 200) == eans[1] and grans("M1", 200) == {P1M, P1D}
        gap = each.route("M1", e, ago(95))
        assert gap is not None and not gap.under_contract and grans("M1", 95) == frozenset()
        assert grans("M1", 60) == {P1M}
        assert where("M1", 45) is None  # between the two installations
        assert where("M1", 5) == eans[2] and grans("M1", 5) == {P1M, P1D, PT15M}
        assert grans("M1", 25) == {P1M, P1D}  # the revoked consent is no more
        assert where(odd_meter, 1) == eans[1] and grans(odd_meter, 1) == {P1M}
        assert grans("G3", 1, g) == {P1M, P1D}
        assert where("G8", 31, g) == eans[8] and grans("G8", 31, g) == {P1M, P1D}
        assert where("G8", 29, g) == eans[9] and grans("G8", 29, g) == {P1M}
        assert where("E4", 1) == eans[4] and grans("E4", 1) == frozenset()
        assert grans("G5", 1, g) == {P1M, P1D, PT1H} and grans("G5", 6, g) == {P1M, P1D}
        no_contract = each.route("E6", e, ago(1))
        assert no_contract is not None and not no_contract.under_contract
        # the contract starts microseconds after the installation, within the same second:
        # readings carry whole seconds, so there is no stretch without contract to route
        assert len(_dump(each)[False, "E7"]) == 1
        assert grans("E7", 20 - 2 / 86400) == {P1M, P1D}


async def test_a_meter_whose_plain_rows_lie_in_several_batches_keeps_all_its_routes(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of plain rows read a page at a time: meters that moved to a connection
    registered later have their two plain rows in different batches, and the load links both
    routes as the row-by-row build does."""
    start = dt.datetime.now(UTC) - dt.timedelta(days=100)
    moved_at = start + dt.timedelta(days=50)
    eans = [make_ean(10_000 + n) for n in range(3000)]
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO connections (ean, commodity)"
            " SELECT e, 'electricity' FROM unnest($1::text[]) e",
            eans,
        )
        await conn.execute(
            "INSERT INTO contracts (ean, customer_id, contract_start)"
            " SELECT e, 'cust', $2 FROM unnest($1::text[]) e",
            eans[:2000],
            start,
        )
        await conn.execute(
            "INSERT INTO meter_installations (ean, commodity, meter_id, installed_from)"
            " SELECT e, 'electricity', 'P' || n, $2"
            " FROM unnest($1::text[]) WITH ORDINALITY AS u(e, n)",
            eans[:2000],
            start,
        )
        # the first ten meters leave at moved_at (their rows are written again, at the end of
        # the table), a thousand other connections follow, then those the ten meters move to
        await conn.execute(
            "UPDATE meter_installations SET installed_until = $2 WHERE meter_id = ANY($1::text[])",
            [f"P{n}" for n in range(1, 11)],
            moved_at,
        )
        await conn.execute(
            "INSERT INTO contracts (ean, customer_id, contract_start)"
            " SELECT e, 'cust', $2 FROM unnest($1::text[]) e",
            eans[2000:2990],
            start,
        )
        await conn.execute(
            "INSERT INTO meter_installations (ean, commodity, meter_id, installed_from)"
            " SELECT e, 'electricity', 'Q' || n, $2"
            " FROM unnest($1::text[]) WITH ORDINALITY AS u(e, n)",
            eans[2000:2990],
            start,
        )
        await conn.execute(
            "INSERT INTO contracts (ean, customer_id, contract_start)"
            " SELECT e, 'cust', $2 FROM unnest($1::text[]) e",
            eans[2990:],
            moved_at,
        )
        await conn.execute(
            "INSERT INTO meter_installations (ean, commodity, meter_id, installed_from)"
            " SELECT e, 'electricity', 'P' || n, $2"
            " FROM unnest($1::text[]) WITH ORDINALITY AS u(e, n)",
            eans[2990:],
            moved_at,
        )
        pages = await conn.fetchval(consent_index._PAGES_QUERY, "index_routes_e")
        assert pages > 3
        monkeypatch.setattr(consent_index, "_PAGES_PER_BATCH", 1)
        streamed = consent_index.ConsentIndex()
        await consent_index.load_all(conn, streamed)
        by_records = consent_index.ConsentIndex()
        by_records.replace_rows(
            await conn.fetch(consent_index._ROUTE_QUERY),
            await conn.fetch(consent_index._CONSENT_QUERY),
        )
    expected = _dump(by_records)
    assert len(expected[False, "P1"]) == 2 and len(expected) == 2990
    assert _dump(streamed) == expected
