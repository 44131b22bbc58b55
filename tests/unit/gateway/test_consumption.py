"""Consumption from consecutive register snapshots (gateway.services.consumption.differences):
what counts as a period's amount and what is a gap."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from consent.levels import Granularity
from gateway.errors import ValidationError
from gateway.services.consumption import Amount, Snapshot, differences, table_for

AMS = ZoneInfo("Europe/Amsterdam")


def midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=AMS).astimezone(dt.UTC)


DAYS = [dt.date(2026, 3, 1) + dt.timedelta(days=n) for n in range(6)]


def snap(
    n: int, registers: tuple[int | None, ...], contract: str = "k1", late_s: int = 10
) -> Snapshot:
    start = midnight(DAYS[n])
    return Snapshot(start, start + dt.timedelta(seconds=late_s), contract, registers)


def test_a_day_is_the_increase_to_the_next_days_reading() -> None:
    snaps = [snap(0, (1000, 50)), snap(1, (1600, 70)), snap(2, (1600, 95), late_s=3600)]
    assert differences(Granularity.P1D, snaps) == [
        Amount(
            snaps[0].period_start,
            snaps[1].period_start,
            "k1",
            snaps[0].measured_at,
            snaps[1].measured_at,
            (600, 20),
        ),
        Amount(
            snaps[1].period_start,
            snaps[2].period_start,
            "k1",
            snaps[1].measured_at,
            snaps[2].measured_at,
            (0, 25),
        ),
    ]


def test_gaps_missing_reading_other_contract_meter_change_and_a_falling_register() -> None:
    snaps = [
        snap(0, (1000,)),
        # day 1 missing: day 0 has no amount
        snap(2, (1300,)),
        snap(3, (1400,), contract="k2"),  # another contract: day 2 is a gap
        snap(4, (10,), contract="k2"),  # the register fell (an unregistered meter swap)
        snap(5, (30,), contract="k2"),
    ]
    exchange = snaps[3].measured_at + dt.timedelta(hours=5)  # between day 4 and day 5
    assert differences(Granularity.P1D, snaps) == [
        Amount(
            snaps[3].period_start,
            snaps[4].period_start,
            "k2",
            snaps[3].measured_at,
            snaps[4].measured_at,
            (20,),
        ),
    ]
    assert differences(Granularity.P1D, snaps, [exchange]) == []
    # an installation that started before the first reading changes nothing
    assert len(differences(Granularity.P1D, snaps, [snaps[0].measured_at])) == 1


def test_a_register_the_meter_lacks_is_zero_one_missing_on_one_side_is_a_gap() -> None:
    assert [
        a.values for a in differences(Granularity.P1D, [snap(0, (5, None)), snap(1, (9, None))])
    ] == [(4, 0)]
    assert differences(Granularity.P1D, [snap(0, (5, 1)), snap(1, (9, None))]) == []


def test_the_25_hour_day_and_quarters() -> None:
    # 25 October 2026: clocks go back, the local day is 25 hours long
    day, after = midnight(dt.date(2026, 10, 25)), midnight(dt.date(2026, 10, 26))
    assert after - day == dt.timedelta(hours=25)
    snaps = [Snapshot(day, day, "k", (1,)), Snapshot(after, after, "k", (26,))]
    assert [a.values for a in differences(Granularity.P1D, snaps)] == [(25,)]
    q = dt.timedelta(minutes=15)
    quarters = [Snapshot(day + n * q, day + n * q, "k", (n * n,)) for n in (0, 1, 2, 4, 5)]
    assert [(a.period_start, a.values) for a in differences(Granularity.PT15M, quarters)] == [
        (day, (1,)),
        (day + q, (3,)),
        (day + 4 * q, (9,)),
    ]


def test_table_for_refuses_a_granularity_the_commodity_lacks() -> None:
    assert table_for("gas", "PT1H").name == "readings_g_pt1h"
    assert table_for("electricity", "PT15M").name == "readings_e_pt15m"
    with pytest.raises(ValidationError, match="electricity has no PT1H readings"):
        table_for("electricity", "PT1H")
