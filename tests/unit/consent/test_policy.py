"""The storage policy: levels × consent states × times, and the compiled form against it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent import (
    Commodity,
    CompiledPolicy,
    ConnectionState,
    Consent,
    EndReason,
    Granularity,
    Level,
    storable_granularities,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
GRANT = T0 + timedelta(days=1)
END = T0 + timedelta(days=10)
EXPIRES = T0 + timedelta(days=20)
CONTRACT_END = T0 + timedelta(days=30)
P1M, P1D, PT15M, PT1H = Granularity.P1M, Granularity.P1D, Granularity.PT15M, Granularity.PT1H


def consent(
    granted: datetime = GRANT,
    expires: datetime | None = EXPIRES,
    ended: datetime | None = None,
) -> Consent:
    return Consent(
        consent_id=uuid.uuid4(),
        ean="871234567890123456",
        customer_id="cust-1",
        purpose="dynamic-tariff-billing",
        notice_version="v1",
        granted_at=granted,
        expires_at=expires,
        ended_at=ended,
        end_reason=None if ended is None else EndReason.REVOKED,
    )


def state(
    level: Level,
    consents: tuple[Consent, ...] = (),
    commodity: Commodity = Commodity.ELECTRICITY,
    contract_end: datetime | None = None,
) -> ConnectionState:
    return ConnectionState(
        ean="871234567890123456",
        commodity=commodity,
        level=level,
        contract_start=T0,
        contract_end=contract_end,
        consents=consents,
    )


def both(s: ConnectionState, t: datetime, now: datetime) -> frozenset[Granularity]:
    """The reference function's answer, asserted equal to the compiled policy's (all forms)."""
    expected = storable_granularities(s, t, now)
    compiled = CompiledPolicy(s)
    assert compiled.check(t, now) == expected
    ts, now_s = int(t.timestamp()), int(now.timestamp())
    assert ts == t.timestamp() and now_s == now.timestamp()  # whole seconds, as readings are
    assert compiled.check_s(ts, now_s) == expected
    # the depth form: levels nest, so the number of granularities says which they are
    depth = compiled.depth_s(ts, now_s)
    outside = t < s.contract_start if s.contract_start else False
    outside = outside or (s.contract_end is not None and t >= s.contract_end)
    assert depth == (-1 if outside else len(expected))
    depth = max(depth, 0)
    order = [P1M, P1D, PT15M if s.commodity is Commodity.ELECTRICITY else PT1H]
    assert set(order[:depth]) == expected
    return expected


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (Level.NONE, set()),
        (Level.MONTHLY, {P1M}),
        (Level.DAILY, {P1M, P1D}),
    ],
)
def test_levels_without_consent(level: Level, expected: set[Granularity]) -> None:
    t = T0 + timedelta(days=5)
    assert both(state(level), t, t) == expected


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (Level.NONE, set()),
        (Level.MONTHLY, {P1M}),  # interval needs the daily level
        (Level.DAILY, {P1M, P1D, PT15M}),
    ],
)
def test_levels_with_active_consent(level: Level, expected: set[Granularity]) -> None:
    t = T0 + timedelta(days=5)
    assert both(state(level, (consent(),)), t, t) == expected


def test_gas_interval_is_hourly() -> None:
    t = T0 + timedelta(days=5)
    s = state(Level.DAILY, (consent(),), commodity=Commodity.GAS)
    assert both(s, t, t) == {P1M, P1D, PT1H}


@pytest.mark.parametrize(
    ("t", "now", "interval"),
    [
        (GRANT - timedelta(seconds=1), GRANT, False),  # before the grant
        (GRANT, GRANT, True),  # exactly at the grant
        (END - timedelta(seconds=1), END - timedelta(seconds=1), True),
        (END, END, False),  # exactly at the end: ended
        (END + timedelta(hours=1), END + timedelta(hours=1), False),
        # measured before the end but processed after it: revocation stops processing at once
        (END - timedelta(hours=1), END, False),
        (END - timedelta(hours=1), END + timedelta(days=1), False),
        # measured before the end, processed before it
        (END - timedelta(hours=1), END - timedelta(minutes=1), True),
    ],
)
def test_revoked_consent_times(t: datetime, now: datetime, interval: bool) -> None:
    s = state(Level.DAILY, (consent(ended=END),))
    expected = {P1M, P1D, PT15M} if interval else {P1M, P1D}
    assert both(s, t, now) == expected


@pytest.mark.parametrize(
    ("t", "interval"),
    [
        (EXPIRES - timedelta(seconds=1), True),
        (EXPIRES, False),  # exactly at expiry
        (EXPIRES + timedelta(seconds=1), False),
    ],
)
def test_expiry(t: datetime, interval: bool) -> None:
    s = state(Level.DAILY, (consent(),))
    now = EXPIRES - timedelta(seconds=1)
    expected = {P1M, P1D, PT15M} if interval else {P1M, P1D}
    assert both(s, t, min(now, t)) == expected
    # once expired, nothing more is processed as interval, even for earlier readings
    assert PT15M not in both(s, EXPIRES - timedelta(hours=1), EXPIRES)


def test_contract_end_ends_consent_and_everything() -> None:
    s = state(Level.DAILY, (consent(expires=None),), contract_end=CONTRACT_END)
    before = CONTRACT_END - timedelta(seconds=1)
    assert both(s, before, before) == {P1M, P1D, PT15M}
    assert both(s, CONTRACT_END, CONTRACT_END) == set()
    assert both(s, before, CONTRACT_END) == {P1M, P1D}


def test_before_contract_start_nothing() -> None:
    s = state(Level.DAILY, (consent(granted=T0 - timedelta(days=1)),))
    t = T0 - timedelta(seconds=1)
    assert both(s, t, T0) == set()
    assert both(s, T0, T0) == {P1M, P1D, PT15M}


def test_any_active_consent_suffices() -> None:
    ended = consent(ended=END)
    later = consent(granted=END + timedelta(days=1))
    s = state(Level.DAILY, (ended, later))
    gap = END + timedelta(hours=1)
    assert both(s, gap, gap) == {P1M, P1D}
    t = END + timedelta(days=2)
    assert both(s, t, t) == {P1M, P1D, PT15M}


_times = st.integers(min_value=-2 * 86400, max_value=40 * 86400).map(
    lambda s: T0 + timedelta(seconds=s)
)


@settings(max_examples=300, deadline=None)
@given(
    level=st.sampled_from(list(Level)),
    commodity=st.sampled_from(list(Commodity)),
    windows=st.lists(st.tuples(_times, st.one_of(st.none(), _times), st.booleans()), max_size=3),
    contract_end=st.one_of(st.none(), _times),
    t=_times,
    now=_times,
)
def test_compiled_policy_equals_reference(
    level: Level,
    commodity: Commodity,
    windows: list[tuple[datetime, datetime | None, bool]],
    contract_end: datetime | None,
    t: datetime,
    now: datetime,
) -> None:
    consents = []
    for granted, other, ended in windows:
        if other is not None and other <= granted:
            other = None
        consents.append(
            consent(granted, expires=None if ended else other, ended=other if ended else None)
        )
    if contract_end is not None and contract_end <= T0:
        contract_end = None
    s = state(level, tuple(consents), commodity, contract_end)
    both(s, t, now)
