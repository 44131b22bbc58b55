"""The in-memory consent index: routes per meter, per-EAN updates, several connections per meter."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from consent.levels import Commodity, Granularity, Level
from consent.model import Consent, EndReason
from consent.policy import ConnectionState, storable_granularities
from gateway.ingest.consent_index import FAR_S, ConsentIndex
from tests.support.index_rows import split_rows

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


def rows(
    connections: list[dict[str, Any]], consents: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    return split_rows(connections, consents or [])


def test_routes_by_commodity_and_policy() -> None:
    idx = ConsentIndex()
    idx.replace_all(
        *rows([conn_row(EAN_E, "E1"), conn_row(EAN_G, "G1", "gas")], [consent_row(EAN_G, T0)])
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
    idx.replace_all(*rows([conn_row(EAN_E, "E1")]))
    t = T0 + timedelta(days=1)
    generation = idx.generation
    idx.update_ean(EAN_E, *rows([conn_row(EAN_E, "E1")], [consent_row(EAN_E, T0)]))
    assert idx.generation > generation
    assert idx.granularities("E1", Commodity.ELECTRICITY, t, t) == {P1M, P1D, PT15M}
    # a revocation: the consent ended before now
    idx.update_ean(EAN_E, *rows([conn_row(EAN_E, "E1")], [consent_row(EAN_E, T0, ended=t)]))
    assert idx.granularities("E1", Commodity.ELECTRICITY, t, t) == {P1M, P1D}
    # level lowered, then meter swapped, then the connection removed
    idx.update_ean(EAN_E, *rows([conn_row(EAN_E, "E1", level="monthly")]))
    assert idx.granularities("E1", Commodity.ELECTRICITY, t, t) == {P1M}
    idx.update_ean(EAN_E, *rows([conn_row(EAN_E, "E9")]))
    assert idx.route("E1", Commodity.ELECTRICITY, t) is None
    assert idx.route("E9", Commodity.ELECTRICITY, t) is not None
    idx.update_ean(EAN_E, [], [], [])
    assert idx.route("E9", Commodity.ELECTRICITY, t) is None and len(idx) == 0


def test_meter_moving_between_connections_picks_by_installation() -> None:
    move = T0 + timedelta(days=10)
    idx = ConsentIndex()
    idx.replace_all(
        *rows(
            [conn_row(EAN_E, "E1", end=move), conn_row(EAN_E2, "E1", level="monthly", start=move)]
        )
    )
    before, after = move - timedelta(hours=1), move + timedelta(hours=1)
    r_before = idx.route("E1", Commodity.ELECTRICITY, before)
    r_after = idx.route("E1", Commodity.ELECTRICITY, after)
    assert r_before is not None and r_before.ean == EAN_E
    assert r_after is not None and r_after.ean == EAN_E2
    assert idx.granularities("E1", Commodity.ELECTRICITY, before, after) == {P1M, P1D}
    assert idx.granularities("E1", Commodity.ELECTRICITY, after, after) == {P1M}
    # removing one connection keeps the other
    idx.update_ean(EAN_E, [], [], [])
    assert idx.route("E1", Commodity.ELECTRICITY, before) is None
    remaining = idx.route("E1", Commodity.ELECTRICITY, after)
    assert remaining is not None and remaining.ean == EAN_E2


def test_tenants_of_one_meter_get_their_own_contract_level_and_consents() -> None:
    """Move-out at T, move-in at T: one installation, two contracts; nothing carries over."""
    move = T0 + timedelta(days=10)
    a, b = uuid.uuid4(), uuid.uuid4()
    installations = [
        {
            "ean": EAN_E,
            "ean_num": int(EAN_E),
            "commodity": "electricity",
            "meter_id": "E1",
            "installed_from": T0,
            "installed_until": None,
        }
    ]
    contracts = [
        {
            "ean": EAN_E,
            "contract_id": b,
            "contract_start": move,
            "contract_end": None,
            "level": "daily",
        },
        {
            "ean": EAN_E,
            "contract_id": a,
            "contract_start": T0,
            "contract_end": move,
            "level": "daily",
        },
    ]
    consent = {**consent_row(EAN_E, T0), "contract_id": a}
    idx = ConsentIndex()
    idx.replace_all(installations, contracts, [consent])
    before, after = move - timedelta(minutes=1), move + timedelta(minutes=1)
    r_a, r_b = (
        idx.route("E1", Commodity.ELECTRICITY, before),
        idx.route("E1", Commodity.ELECTRICITY, after),
    )
    # each tenant's route is its contract's window, with its own consents
    s = int(move.timestamp())
    assert r_a is not None and (r_a.lo_s, r_a.hi_s) == (int(T0.timestamp()), s) and r_a.windows
    assert r_b is not None and (r_b.lo_s, r_b.hi_s) == (s, FAR_S) and not r_b.windows
    # A's consent covered A's time only; B starts at daily without it
    assert idx.granularities("E1", Commodity.ELECTRICITY, before, before) == {P1M, P1D, PT15M}
    assert idx.granularities("E1", Commodity.ELECTRICITY, after, after) == {P1M, P1D}


def test_stretches_without_installation_or_contract() -> None:
    """Before the meter was installed: no route; installed but nobody's contract: a route
    without a contract (ingest answers no-contract)."""
    start, end = T0 + timedelta(days=5), T0 + timedelta(days=8)
    installations = [
        {
            "ean": EAN_E,
            "ean_num": int(EAN_E),
            "commodity": "electricity",
            "meter_id": "E1",
            "installed_from": T0,
            "installed_until": None,
        }
    ]
    k = uuid.uuid4()
    contracts = [
        {
            "ean": EAN_E,
            "contract_id": k,
            "contract_start": start,
            "contract_end": end,
            "level": "daily",
        }
    ]
    idx = ConsentIndex()
    idx.replace_all(installations, contracts, [])
    assert idx.route("E1", Commodity.ELECTRICITY, T0 - timedelta(seconds=1)) is None
    for t in (T0, start - timedelta(seconds=1), end, end + timedelta(days=300)):
        gap = idx.route("E1", Commodity.ELECTRICITY, t)
        assert gap is not None and not gap.under_contract, t
        assert idx.granularities("E1", Commodity.ELECTRICITY, t, t) == frozenset()
    inside = idx.route("E1", Commodity.ELECTRICITY, start)
    assert inside is not None and inside.under_contract
    assert (inside.lo_s, inside.hi_s) == (int(start.timestamp()), int(end.timestamp()))


_times = st.integers(min_value=-5 * 86400, max_value=40 * 86400).map(
    lambda s: T0 + timedelta(seconds=s)
)


@st.composite
def _consents(draw: st.DrawFn) -> Consent:
    granted = draw(_times)
    expires = draw(st.none() | _times.filter(lambda t: t > granted))
    ended = draw(st.none() | _times.filter(lambda t: t >= granted))
    return Consent(
        consent_id=uuid.uuid4(),
        ean=EAN_E,
        customer_id="c1",
        purpose="energy-insights",
        notice_version="v1",
        granted_at=granted,
        expires_at=expires,
        ended_at=ended,
        end_reason=None if ended is None else EndReason.REVOKED,
    )


@settings(max_examples=500, deadline=None)
@given(
    level=st.sampled_from(list(Level)),
    commodity=st.sampled_from(list(Commodity)),
    length=st.none() | st.integers(min_value=1, max_value=30 * 86400),
    consents=st.lists(_consents(), max_size=3),
    t=_times,
    now=_times,
)
@example(  # a consent outliving its contract allows nothing once the contract ended
    level=Level.DAILY,
    commodity=Commodity.ELECTRICITY,
    length=86400,
    consents=[
        Consent(uuid.UUID(int=1), EAN_E, "c1", "energy-insights", "v1", T0 + timedelta(hours=1))
    ],
    t=T0 + timedelta(hours=2),
    now=T0 + timedelta(days=2),
)
def test_the_index_answers_as_the_reference_policy(
    level: Level,
    commodity: Commodity,
    length: int | None,
    consents: list[Consent],
    t: datetime,
    now: datetime,
) -> None:
    """The index's compact policies (depths, windows in epoch seconds) store exactly what the
    rule of SPEC §3, ``consent.policy.storable_granularities``, allows."""
    end = None if length is None else T0 + timedelta(seconds=length)
    state = ConnectionState(EAN_E, commodity, level, T0, end, tuple(consents))
    row = conn_row(EAN_E, "M1", commodity.value, level.value, T0, end)
    consent_rows = [
        {
            "ean": EAN_E,
            "granted_at": c.granted_at,
            "expires_at": c.expires_at,
            "ended_at": c.ended_at,
        }
        for c in consents
    ]
    idx = ConsentIndex()
    idx.replace_all(*split_rows([row], consent_rows))
    expected = storable_granularities(state, t, now)
    assert idx.granularities("M1", commodity, t, now) == expected
