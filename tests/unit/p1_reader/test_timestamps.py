"""p1_reader.timestamps: DSMR TST → UTC, S/W flag, placeholders, DST edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p1_reader import timestamps
from p1_reader.errors import TimestampError
from p1_reader.timestamps import (
    format_tst,
    format_tst12,
    parse_tst,
    parse_tst_checked,
    parse_tst_or_raise,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tst", "expected"),
    [
        ("101209113020W", utc(2010, 12, 9, 10, 30, 20)),
        ("200512135409S", utc(2020, 5, 12, 11, 54, 9)),
        ("150701190000s", utc(2015, 7, 1, 17, 0)),  # lower-case flag
        ("150101190000w", utc(2015, 1, 1, 18, 0)),
        # 2020-10-25: 02:00-02:59 local happens twice; the flag tells which
        ("201025023000S", utc(2020, 10, 25, 0, 30)),
        ("201025023000W", utc(2020, 10, 25, 1, 30)),
        ("201025025959S", utc(2020, 10, 25, 0, 59, 59)),
        ("201025030000W", utc(2020, 10, 25, 2, 0)),
        # 2021-03-28: 01:59:59 W is followed by 03:00:00 S
        ("210328015959W", utc(2021, 3, 28, 0, 59, 59)),
        ("210328030000S", utc(2021, 3, 28, 1, 0)),
        ("240229120000W", utc(2024, 2, 29, 11, 0)),  # leap day
        ("691231235959W", utc(2069, 12, 31, 22, 59, 59)),
        # local times before 01:00 (W) / 02:00 (S) are on the previous UTC day
        ("200101003000W", utc(2019, 12, 31, 23, 30)),
        ("200701013000S", utc(2020, 6, 30, 23, 30)),
        ("200401015959S", utc(2020, 3, 31, 23, 59, 59)),
        ("200701020000S", utc(2020, 7, 1, 0, 0)),
        # 12-digit TST12 (DSMR 3): zoneinfo Europe/Amsterdam
        ("090212160000", utc(2009, 2, 12, 15, 0)),
        ("250423090000", utc(2025, 4, 23, 7, 0)),
        ("201025023000", utc(2020, 10, 25, 0, 30)),  # ambiguous: first (summer) occurrence
    ],
)
def test_parse(tst: str, expected: datetime) -> None:
    result = parse_tst(tst)
    assert result == expected
    assert result is not None and result.tzinfo is UTC


@pytest.mark.parametrize(
    "tst",
    [
        "000101010000W",  # clock unset
        "000101000001W",  # Kaifa power-failure placeholder
        "000104180320W",  # clock started at 2000-01-01
        "700101010000W",  # dead M-Bus channel (epoch)
        "632525252525S",  # unset month in 98.1.0 / Smarty
        "201325120000W",  # month 13
        "200230120000W",  # 30 February
        "230229120000W",  # 29 February in a non-leap year
        "200101240000W",  # hour 24
        "200101126000W",
        "200101120060W",
        "200101120000X",  # unknown flag
        "2001011200000",
        "20010112000",
        "20010112000000W",
        "07E8061C050A2B2B00FF8880",  # DLMS octet-string date
        "",
        "2001011200.0W",
        "２００１０１１２００００W",  # non-ASCII digits
    ],
)
def test_placeholders_and_garbage_are_none(tst: str) -> None:
    assert parse_tst(tst) is None


def test_or_raise() -> None:
    with pytest.raises(TimestampError, match="clock not set"):
        parse_tst_or_raise("000101010000W")
    with pytest.raises(TimestampError, match="not a valid DSMR timestamp"):
        parse_tst_or_raise("632525252525S", what="gas capture time")
    assert parse_tst_or_raise("101209113020W") == utc(2010, 12, 9, 10, 30, 20)


def test_cache_is_bounded_and_skips_junk() -> None:
    timestamps._cache.clear()
    parse_tst("x" * 500)
    assert not timestamps._cache
    for i in range(timestamps._CACHE_MAX + 10):
        parse_tst(f"{i:012d}")
    assert len(timestamps._cache) <= timestamps._CACHE_MAX
    assert parse_tst("101209113020W") == utc(2010, 12, 9, 10, 30, 20)
    assert parse_tst("101209113020W") == utc(2010, 12, 9, 10, 30, 20)  # cached


def test_format_round_trip_across_both_dst_changes() -> None:
    for start in (utc(2020, 10, 24, 23, 0), utc(2021, 3, 27, 23, 0)):
        for minutes in range(0, 6 * 60, 7):
            moment = start + timedelta(minutes=minutes)
            assert parse_tst(format_tst(moment)) == moment


def test_format_flags() -> None:
    assert format_tst(utc(2020, 10, 25, 0, 30)) == "201025023000S"
    assert format_tst(utc(2020, 10, 25, 1, 30)) == "201025023000W"
    assert format_tst12(utc(2009, 2, 12, 15, 0)) == "090212160000"
    with pytest.raises(ValueError, match="aware"):
        format_tst(datetime(2020, 1, 1))
    with pytest.raises(ValueError, match="2001-2069"):
        format_tst(utc(2070, 6, 1))


@settings(max_examples=400, deadline=None)
@given(
    local=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2069, 12, 31, 23, 59, 59))
    | st.sampled_from(
        # the hours around the changes: skipped (March) and repeated (October) local times
        [
            datetime(2021, 3, 28, 2, 30),
            datetime(2021, 3, 28, 1, 59, 59),
            datetime(2021, 3, 28, 3, 0),
            datetime(2020, 10, 25, 2, 0),
            datetime(2020, 10, 25, 2, 59, 59),
            datetime(2020, 10, 25, 3, 0),
            datetime(2069, 10, 27, 2, 15),
        ]
    )
)
def test_tst12_agrees_with_zoneinfo(local: datetime) -> None:
    """TST12 offsets are cached per local hour; every second of every hour must still come out
    as zoneinfo converts it (fold=0: the first of a repeated hour)."""
    timestamps._years.clear()
    timestamps._cache.clear()
    # fold=0 as the docstring says: hypothesis also draws fold=1, which TST12 cannot express
    expected = local.replace(microsecond=0, fold=0, tzinfo=timestamps.LOCAL_TZ).astimezone(UTC)
    tst = local.strftime("%y%m%d%H%M%S")
    assert parse_tst(tst) == expected
    # the same hour again, from the offset cache
    timestamps._cache.clear()
    assert parse_tst(tst) == expected


# -- the zone rules decide; the flag picks only in the repeated (and skipped) hour ----------------


@pytest.mark.parametrize(
    ("tst", "expected", "mismatch"),
    [
        # the Iskra IE sample (a real telegram): "summer time" in February is winter time
        ("230202132747S", utc(2023, 2, 2, 12, 27, 47), True),
        ("230202132747W", utc(2023, 2, 2, 12, 27, 47), False),
        # "winter time" in July is summer time
        ("230702132747W", utc(2023, 7, 2, 11, 27, 47), True),
        ("230702132747S", utc(2023, 7, 2, 11, 27, 47), False),
        # next to the October change: 01:59:59 is summer time, 03:00:00 winter time
        ("201025015959W", utc(2020, 10, 24, 23, 59, 59), True),
        ("201025030000S", utc(2020, 10, 25, 2, 0), True),
        # the repeated hour: both flags are right, each picks one occurrence
        ("201025023000S", utc(2020, 10, 25, 0, 30), False),
        ("201025023000W", utc(2020, 10, 25, 1, 30), False),
        # the skipped March hour exists in neither offset: the flag picks, as it always did
        ("210328023000S", utc(2021, 3, 28, 0, 30), False),
        ("210328023000W", utc(2021, 3, 28, 1, 30), False),
        ("210328030000W", utc(2021, 3, 28, 1, 0), True),
        # TST12 has no flag to contradict
        ("230202132747", utc(2023, 2, 2, 12, 27, 47), False),
        ("000101010000W", None, False),
    ],
)
def test_flag_contradicting_the_calendar(
    tst: str, expected: datetime | None, mismatch: bool
) -> None:
    timestamps._cache.clear()
    assert parse_tst_checked(tst) == (expected, mismatch)
    assert parse_tst_checked(tst) == (expected, mismatch)  # the cached entry carries it
    assert parse_tst(tst) == expected


@settings(max_examples=400, deadline=None)
@given(
    local=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2069, 12, 31, 23, 59, 59))
    | st.sampled_from(
        [
            datetime(2020, 10, 25, 1, 59, 59),
            datetime(2020, 10, 25, 2, 0),
            datetime(2020, 10, 25, 2, 59, 59),
            datetime(2020, 10, 25, 3, 0),
            datetime(2021, 3, 28, 1, 59, 59),
            datetime(2021, 3, 28, 3, 0),
            datetime(2069, 10, 27, 2, 15),
        ]
    ),
    flag=st.sampled_from("SWsw"),
)
def test_flagged_tst_agrees_with_zoneinfo(local: datetime, flag: str) -> None:
    """Whatever the flag, a wall time the zone maps to one instant comes out as that instant;
    in the repeated hour S is the first occurrence and W the second (zoneinfo's fold)."""
    timestamps._years.clear()
    timestamps._cache.clear()
    local = local.replace(microsecond=0, fold=0)
    first = local.replace(tzinfo=timestamps.LOCAL_TZ)
    second = local.replace(fold=1, tzinfo=timestamps.LOCAL_TZ)
    if first.utcoffset() == second.utcoffset() and first.dst() == second.dst():
        say_summer = flag in "Ss"
        expected = (first.astimezone(UTC), say_summer != bool(first.dst()))
    elif first.astimezone(UTC).astimezone(timestamps.LOCAL_TZ).hour != local.hour:
        return  # the skipped March hour: covered by the examples above
    else:
        expected = ((first if flag in "Ss" else second).astimezone(UTC), False)
    assert parse_tst_checked(local.strftime("%y%m%d%H%M%S") + flag) == expected
