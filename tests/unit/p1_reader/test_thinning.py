"""Thinning: which telegrams leave the house (pure functions, simulated telegrams)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from p1_reader.parser import parse_telegram
from p1_reader.simulate import generate, make_meters
from p1_reader.thinning import TelegramMark, Thinner, mark_of, mark_telegram, select_kept
from p1_reader.timestamps import LOCAL_TZ

T0 = int(datetime(2026, 1, 12, 10, 0, tzinfo=LOCAL_TZ).timestamp())


def local_quarter(epoch: int) -> tuple[int, int, int, int, int, int]:
    """Quarter-hour period in Europe/Amsterdam local time, computed with the tz database.

    The UTC offset is part of the key so that the repeated October hour gives new periods.
    """
    local = datetime.fromtimestamp(epoch, LOCAL_TZ)
    offset = local.utcoffset()
    assert offset is not None
    return (
        local.year,
        local.month,
        local.day,
        local.hour,
        local.minute // 15,
        int(offset.total_seconds()),
    )


def test_first_of_each_quarter_per_meter() -> None:
    marks = []
    for i in range(0, 3600, 10):
        marks.append(TelegramMark("E1", T0 + 5 + i))
        marks.append(TelegramMark("E2", T0 + 7 + i))
    kept = [m for m, keep in zip(marks, select_kept(marks), strict=True) if keep]
    # four quarters in the hour, for each meter
    assert [(m.meter_id, m.timestamp) for m in kept] == [
        (meter, T0 + offset + q * 900)
        for q in range(4)
        for meter, offset in (("E1", 5), ("E2", 7))
    ]


def test_per_minute_adds_the_first_telegram_of_every_minute() -> None:
    marks = [TelegramMark("E1", T0 + 3 + i) for i in range(0, 600)]  # 1-s cadence, 10 min
    flags = select_kept(marks, per_minute=True)
    kept = [m.timestamp for m, k in zip(marks, flags, strict=True) if k]
    assert kept == [T0 + 3 + i for i in range(0, 600) if (T0 + 3 + i) % 60 == 0 or i == 0]
    # 10:00:03 .. 10:10:02 touches 11 minutes
    assert len(kept) == 11


def test_gas_capture_entering_a_new_hour_is_kept_within_a_quarter() -> None:
    # DSMR 4: the hourly gas value shows up minutes after the hour, mid-quarter
    hour = T0 + 3600
    marks = [
        TelegramMark("E1", hour + 300, (("G1", hour - 3600),)),  # opens the quarter
        TelegramMark("E1", hour + 310, (("G1", hour - 3600),)),  # dropped
        TelegramMark("E1", hour + 420, (("G1", hour),)),  # new gas hour: kept
        TelegramMark("E1", hour + 430, (("G1", hour),)),  # dropped
    ]
    assert select_kept(marks) == [True, False, True, False]


def test_unjudgeable_telegrams_are_kept() -> None:
    thinner = Thinner()
    assert thinner.keep(None)
    assert thinner.keep(None)
    assert thinner.keep(TelegramMark("E1", None))
    assert thinner.keep(TelegramMark("E1", None))


def test_clock_set_back_starts_new_periods() -> None:
    marks = [TelegramMark("E1", t) for t in (T0 + 1000, T0 + 10, T0 + 20)]
    assert select_kept(marks) == [True, True, False]


def test_simulated_day_across_dst_end_matches_local_quarters() -> None:
    """Real telegrams through the real parser: the kept ones are exactly the first telegram of
    every Europe/Amsterdam quarter (the repeated October hour counts twice) plus, with
    ``per_minute``, the first of every minute."""
    start = datetime(2026, 10, 24, 23, 0, tzinfo=LOCAL_TZ)
    meters = make_meters(2, seed=7, gas_fraction=1.0, interval=10)
    telegrams = list(generate(meters, start, 6 * 3600))
    parsed = [parse_telegram(t) for t in telegrams]
    marks = [mark_of(p) for p in parsed]
    assert all(m.timestamp is not None for m in marks)

    kept = select_kept(marks)
    expected: list[bool] = []
    last: dict[str | None, tuple[int, ...]] = {}
    last_gas: dict[str, int] = {}
    for p in parsed:
        assert p.timestamp is not None
        key = local_quarter(int(p.timestamp.timestamp()))
        keep = last.get(p.meter_id) != key
        last[p.meter_id] = key
        for device in p.mbus:
            assert device.meter_id is not None and device.measured_at is not None
            hour = int(device.measured_at.timestamp()) // 3600
            if last_gas.get(device.meter_id) != hour:
                keep = True
                last_gas[device.meter_id] = hour
        expected.append(keep)
    assert kept == expected
    # 6 hours of wall time through a 25-hour night: 24 quarters, each meter (+1 at the start)
    quarters = {local_quarter(int(p.timestamp.timestamp())) for p in parsed if p.timestamp}
    assert len(quarters) == 24
    assert sum(kept) >= 2 * 24

    per_minute = select_kept(marks, per_minute=True)
    minutes = {(p.meter_id, int(p.timestamp.timestamp()) // 60) for p in parsed if p.timestamp}
    assert sum(per_minute) >= len(minutes)
    assert sum(per_minute) <= len(minutes) + sum(kept)


def test_mark_telegram_reads_meter_time_and_gas() -> None:
    start = datetime(2026, 7, 1, 12, 0, 3, tzinfo=UTC)
    (meter,) = make_meters(1, seed=3, gas_fraction=1.0)
    telegram = next(iter(generate([meter], start, 10)))
    mark = mark_telegram(telegram)
    assert mark is not None
    assert mark.meter_id == "E0000000000000001"
    assert mark.timestamp is not None
    assert start.timestamp() <= mark.timestamp < start.timestamp() + 10
    ((gas_id, captured),) = mark.gas
    assert gas_id == "G0000000000000001"
    assert captured % 300 == 0 and 0 <= mark.timestamp - captured < 300


def test_mark_telegram_of_garbage_falls_back_to_arrival_time() -> None:
    assert mark_telegram(b"not a telegram") is None
    arrived = (datetime(2026, 7, 1, tzinfo=UTC) + timedelta(seconds=42)).timestamp()
    mark = mark_telegram(b"not a telegram", arrived=arrived)
    assert mark == TelegramMark(None, int(arrived))
