"""Full loads of the consent index: streamed, built off the event loop, swapped in at once."""

from __future__ import annotations

import datetime as dt
import threading

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
    original = consent_index._CopyBuilder.feed

    def recording(self: consent_index._CopyBuilder, chunk: bytes) -> None:
        built_on.append(threading.get_ident())
        original(self, chunk)

    monkeypatch.setattr(consent_index._CopyBuilder, "feed", recording)
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
