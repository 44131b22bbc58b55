"""Period bucketing in Europe/Amsterdam local time, across both DST change days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from consent.levels import Granularity
from gateway.ingest.periods import Bucketer, period_end, period_start

Z = UTC
P1M, P1D, PT15M, PT1H = Granularity.P1M, Granularity.P1D, Granularity.PT15M, Granularity.PT1H


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=Z)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("local_day", "start", "hours"),
    [
        ((2026, 3, 29), utc(2026, 3, 28, 23), 23),  # spring forward: 02:00 → 03:00
        ((2026, 10, 25), utc(2026, 10, 24, 22), 25),  # fall back: 03:00 → 02:00
        ((2026, 6, 1), utc(2026, 5, 31, 22), 24),
        ((2026, 1, 15), utc(2026, 1, 14, 23), 24),
    ],
)
def test_day_lengths(local_day: tuple[int, int, int], start: datetime, hours: int) -> None:
    inside = start + timedelta(hours=hours / 2)
    assert period_start(P1D, inside) == start
    end = period_end(P1D, start)
    assert end - start == timedelta(hours=hours)
    assert period_start(P1D, end - timedelta(seconds=1)) == start
    assert period_start(P1D, end) == end
    quarters = {period_start(PT15M, start + timedelta(minutes=m)) for m in range(hours * 60)}
    assert len(quarters) == hours * 4


def test_repeated_october_hour_is_two_hour_periods() -> None:
    first = utc(2026, 10, 25, 0, 30)  # 02:30 CEST
    second = utc(2026, 10, 25, 1, 30)  # 02:30 CET, the same local wall time
    assert period_start(PT1H, first) == utc(2026, 10, 25, 0)
    assert period_start(PT1H, second) == utc(2026, 10, 25, 1)
    assert period_start(PT15M, second + timedelta(minutes=14)) == utc(2026, 10, 25, 1, 30)
    assert period_start(P1D, first) == period_start(P1D, second) == utc(2026, 10, 24, 22)


def test_month_boundaries_follow_local_midnight() -> None:
    assert period_start(P1M, utc(2026, 3, 15)) == utc(2026, 2, 28, 23)  # CET
    assert period_start(P1M, utc(2026, 3, 31, 21, 59)) == utc(2026, 2, 28, 23)
    assert period_start(P1M, utc(2026, 3, 31, 22)) == utc(2026, 3, 31, 22)  # April, CEST
    assert period_end(P1M, utc(2026, 2, 28, 23)) == utc(2026, 3, 31, 22)
    assert period_end(P1M, utc(2026, 11, 30, 23)) == utc(2026, 12, 31, 23)  # December
    assert period_start(P1M, utc(2026, 12, 31, 23)) == utc(2026, 12, 31, 23)  # January 2027


def test_naive_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        period_start(P1D, datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "day", [utc(2026, 3, 28, 12), utc(2026, 10, 24, 12), utc(2026, 12, 30, 12)]
)
def test_bucketer_matches_period_start(day: datetime) -> None:
    b = Bucketer(max_hours=8)  # tiny cache: also exercises the clearing
    for minute in range(0, 48 * 60, 7):
        t = day + timedelta(minutes=minute, seconds=minute % 60)
        ts = int(t.timestamp())
        d, m = b.day_month(ts)
        d0, d1, m0, m1 = b.bounds(ts)
        assert (d0, m0) == (d, m)
        assert datetime.fromtimestamp(d1, Z) == period_end(P1D, period_start(P1D, t))
        assert datetime.fromtimestamp(m1, Z) == period_end(P1M, period_start(P1M, t))
        assert d0 <= ts < d1 and m0 <= ts < m1
        assert datetime.fromtimestamp(d, Z) == period_start(P1D, t)
        assert datetime.fromtimestamp(m, Z) == period_start(P1M, t)
        assert datetime.fromtimestamp(b.quarter(ts), Z) == period_start(PT15M, t)
        assert datetime.fromtimestamp(b.hour(ts), Z) == period_start(PT1H, t)
