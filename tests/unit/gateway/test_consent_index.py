"""The in-memory consent index: routes per meter, per-EAN updates, several connections per meter."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from consent.levels import Commodity, Granularity
from gateway.ingest.consent_index import ConsentIndex

T0 = datetime(2026, 5, 1, tzinfo=UTC)
EAN_E = "871234567890123456"
EAN_G = "871234567890123457"
EAN_E2 = "871234567890123458"
P1M, P1D, PT15M, PT1H = Granularity.P1M, Granularity.P1D, Granularity.PT15M, Granularity.PT1H


def conn_row(
    ean: str,
    meter_id: str,
    commodity: str = "electricity",
    level: str = "daily",
    start: datetime = T0,
    end: datetime | None = None,
) -> dict[str, Any]:
    return {
        "ean": ean,
        "ean_num": int(ean),
        "commodity": commodity,
        "meter_id": meter_id,
        "contract_start": start,
        "contract_end": end,
        "level": level,
    }


def consent_row(ean: str, granted: datetime, ended: datetime | None = None) -> dict[str, Any]:
    return {
        "ean": ean,
        "consent_id": uuid.uuid4(),
        "customer_id": "c1",
        "purpose": "energy-insights",
        "notice_version": "v1",
        "granted_at": granted,
        "expires_at": None,
        "ended_at": ended,
        "end_reason": None if ended is None else "revoked",
        "channel": "api",
        "data_class": "interval",
    }


def test_routes_by_commodity_and_policy() -> None:
    idx = ConsentIndex()
    idx.replace_all(
        [conn_row(EAN_E, "E1"), conn_row(EAN_G, "G1", "gas")],
        [consent_row(EAN_G, T0)],
    )
    t = T0 + timedelta(days=1)
    assert idx.granularities("E1", Commodity.ELECTRICITY, t, t) == {P1M, P1D}
    assert idx.granularities("G1", Commodity.GAS, t, t) == {P1M, P1D, PT1H}
    assert idx.granularities("G1", Commodity.ELECTRICITY, t, t) == frozenset()
    assert idx.granularities("nope", Commodity.ELECTRICITY, t, t) == frozenset()
    route = idx.route("E1", Commodity.ELECTRICITY, t)
    assert route is not None and route.ean_num == int(EAN_E)
    assert len(idx) == 2


def test_update_ean_adds_changes_and_removes() -> None:
    idx = ConsentIndex()
    idx.replace_all([conn_row(EAN_E, "E1")], [])
    t = T0 + timedelta(days=1)
    generation = idx.generation
    idx.update_ean(EAN_E, conn_row(EAN_E, "E1"), [consent_row(EAN_E, T0)])
    assert idx.generation > generation
    assert idx.granularities("E1", Commodity.ELECTRICITY, t, t) == {P1M, P1D, PT15M}
    # a revocation: the consent ended before now
    idx.update_ean(EAN_E, conn_row(EAN_E, "E1"), [consent_row(EAN_E, T0, ended=t)])
    assert idx.granularities("E1", Commodity.ELECTRICITY, t, t) == {P1M, P1D}
    # level lowered, then meter swapped, then the connection removed
    idx.update_ean(EAN_E, conn_row(EAN_E, "E1", level="monthly"), [])
    assert idx.granularities("E1", Commodity.ELECTRICITY, t, t) == {P1M}
    idx.update_ean(EAN_E, conn_row(EAN_E, "E9"), [])
    assert idx.route("E1", Commodity.ELECTRICITY, t) is None
    assert idx.route("E9", Commodity.ELECTRICITY, t) is not None
    idx.update_ean(EAN_E, None, [])
    assert idx.route("E9", Commodity.ELECTRICITY, t) is None and len(idx) == 0


def test_meter_moving_between_connections_picks_by_contract() -> None:
    move = T0 + timedelta(days=10)
    idx = ConsentIndex()
    idx.replace_all(
        [
            conn_row(EAN_E, "E1", end=move),
            conn_row(EAN_E2, "E1", level="monthly", start=move),
        ],
        [],
    )
    before, after = move - timedelta(hours=1), move + timedelta(hours=1)
    r_before = idx.route("E1", Commodity.ELECTRICITY, before)
    r_after = idx.route("E1", Commodity.ELECTRICITY, after)
    assert r_before is not None and r_before.ean == EAN_E
    assert r_after is not None and r_after.ean == EAN_E2
    assert idx.granularities("E1", Commodity.ELECTRICITY, before, after) == {P1M, P1D}
    assert idx.granularities("E1", Commodity.ELECTRICITY, after, after) == {P1M}
    # removing one connection keeps the other
    idx.update_ean(EAN_E, None, [])
    remaining = idx.route("E1", Commodity.ELECTRICITY, before)
    assert remaining is not None and remaining.ean == EAN_E2
