"""DSMR timestamps (``TST``): ``YYMMDDhhmmssX`` in Dutch/Belgian/Luxembourg local time.

Local time follows the zone rules of ``Europe/Amsterdam`` (zoneinfo; Belgium and Luxembourg
share its offsets and DST rules). ``X`` is ``S`` (summer time, DST active: UTC+2) or ``W``
(winter time: UTC+1); lower-case letters occur too. The flag only decides where the rules give
two answers: in the repeated October hour (02:00-02:59 happens twice) ``S`` is the first
occurrence and ``W`` the second; in the skipped March hour (02:00-02:59 does not exist) ``S``
reads it as UTC+2 and ``W`` as UTC+1. Everywhere else the calendar decides, whatever the flag
says (SPEC §3: an impossible flag is a fault of the flag, not of the clock): the IE sample's
``230202132747S`` ("summer" in February) is 12:27:47Z. Such a contradiction is reported by
:func:`parse_tst_checked` so that it can be counted (the gateway's
``meterpoort_telegram_dst_flag_mismatch_total``); it never changes the reading.

A 12-digit TST without the letter (DSMR 3 ``TST12`` in ``24.3.0``, some Belgian ``1.6.0``
values) is read the same way; in the repeated October hour the first (summer time) occurrence
is taken, as dsmr_parser does, and a time in the skipped March hour gets the offset before the
change (zoneinfo's ``fold=0``).

Placeholders are "unknown", never errors: year ``00`` (meter clock unset, ``000101010000W``;
Kaifa power-failure logs ``000101000001W``), years ``70``–``99`` (Unix-epoch dead M-Bus channels
``700101010000W``), impossible dates (``632525252525S``, month 13) and anything that is not
12/13 characters of digits + S/W (e.g. DLMS octet-string dates ``07E8061C050A2B2B00FF8880``).
Valid years are therefore 2001–2069.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Final
from zoneinfo import ZoneInfo

from .errors import TimestampError

#: local time zone of DSMR meters (NL; BE and LU share its offsets and DST rules)
LOCAL_TZ: Final = ZoneInfo("Europe/Amsterdam")

#: UTC offset in hours per DST flag
_OFFSET: Final = {"S": 2, "s": 2, "W": 1, "w": 1}
_HOURS: Final = (timedelta(0), timedelta(hours=1), timedelta(hours=2))
_DAYS_IN_MONTH: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

#: (UTC time or None, whether the S/W flag contradicts the calendar)
TstReading = tuple[datetime | None, bool]
_UNKNOWN: Final[TstReading] = (None, False)

# Gas/M-Bus capture times repeat for 5 min .. 1 h, meter ids and timestamps of replayed spools
# repeat: a small cache turns most conversions into one dict lookup. The entry carries the flag
# check too, so knowing about a contradicting flag costs nothing per parse. Bounded: cleared
# when full.
_CACHE_MAX: Final = 4096
_cache: dict[str, TstReading] = {}


def parse_tst(s: str) -> datetime | None:
    """Convert a DSMR timestamp to an aware UTC datetime; None when unset, invalid or not a TST.

    Never raises for any input string.
    """
    hit = _cache.get(s)
    if hit is None:
        hit = _read(s)
    return hit[0]


def parse_tst_checked(s: str) -> TstReading:
    """(:func:`parse_tst` of ``s``, True when its S/W flag contradicts the calendar: ``S`` in
    winter time or ``W`` in summer time, outside the hours where the flag decides). The time
    follows the calendar either way. Never raises."""
    hit = _cache.get(s)
    return hit if hit is not None else _read(s)


def _read(s: str) -> TstReading:
    n = len(s)
    if n != 12 and n != 13:
        return _UNKNOWN  # not cached: arbitrary-length junk must not fill the cache
    result = _convert(s)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[s] = result
    return result


def _convert(s: str) -> TstReading:
    # Runs once per distinct timestamp (the cache above), but a gateway serving many meters
    # sees mostly distinct ones: one int() of all 12 digits and integer arithmetic instead of
    # six slices and int() calls, and the aware UTC datetime built directly.
    if len(s) == 13:
        flag = _OFFSET.get(s[12])
        if flag is None:
            return _UNKNOWN
        digits = s[:12]
    else:
        flag = 0  # TST12: no flag
        digits = s
    if not (digits.isascii() and digits.isdecimal()):  # int() would take '２', ' 1' or '1_0'
        return _UNKNOWN
    n = int(digits)  # YYMMDDhhmmss
    yy = n // 10_000_000_000
    month = n // 100_000_000 % 100
    day = n // 1_000_000 % 100
    if yy == 0 or yy >= 70:
        return _UNKNOWN  # unset clock (2000-01-01 ...) or epoch placeholder (1970/2070)
    if not 1 <= month <= 12 or not 1 <= day <= _DAYS_IN_MONTH[month]:
        return _UNKNOWN
    if month == 2 and day == 29 and yy % 4 != 0:  # 2001-2069: every 4th year is a leap year
        return _UNKNOWN
    hour = n // 10_000 % 100
    minute = n // 100 % 100
    second = n % 100
    if hour > 23 or minute > 59 or second > 59:
        return _UNKNOWN
    offset, other = _wall_offsets(yy, n)
    mismatch = False
    if flag:
        if offset != other:
            offset = flag  # the repeated or skipped hour: the flag picks
        elif flag != offset:
            mismatch = True  # the calendar wins; the flag is wrong
    if hour >= offset:  # the UTC time is on the same day: one datetime, no subtraction
        moment = datetime(2000 + yy, month, day, hour - offset, minute, second, tzinfo=UTC)
    else:
        moment = datetime(2000 + yy, month, day, hour, minute, second, tzinfo=UTC) - _HOURS[offset]
    return moment, mismatch


# The zone's offset changes, per year, as local wall-clock intervals keyed like a TST's digits
# (YYMMDDhhmmss integers): reading the offset of a wall time is then a few integer comparisons
# (zoneinfo's conversion cost more than the rest of a parse). Built from zoneinfo once per year,
# so no DST rule is written here; this is the zone data zoneinfo itself keeps in memory, in
# another shape. Assumes what Europe/Amsterdam's rules hold for 2001-2069: whole-hour offsets
# of 1 or 2 hours, at most one change per month, none near New Year.
#: year (YY) → (offset at its start, ((wall from, wall until, offset before, offset after), ...))
_years: dict[int, tuple[int, tuple[tuple[int, int, int, int], ...]]] = {}


def _wall_offsets(yy: int, wall: int) -> tuple[int, int]:
    """UTC offsets in hours of local wall time ``wall`` (YYMMDDhhmmss) as (fold=0, fold=1):
    equal except in the repeated and the skipped hour, where they are (before, after) the
    change."""
    year = _years.get(yy)
    if year is None:
        year = _years[yy] = _zone_year(2000 + yy)
    offset, changes = year
    for start, stop, before, after in changes:
        if wall < start:
            break
        if wall < stop:
            return before, after
        offset = after
    return offset, offset


def _utc_offset_hours(moment: datetime) -> int:
    hours, part = divmod(moment.astimezone(LOCAL_TZ).utcoffset() or _HOURS[0], _HOURS[1])
    assert not part and 1 <= hours <= 2, (moment, hours)
    return hours


def _wall_key(moment: datetime) -> int:
    return (
        ((((moment.year - 2000) * 100 + moment.month) * 100 + moment.day) * 100 + moment.hour) * 100
        + moment.minute
    ) * 100 + moment.second


def _zone_year(year: int) -> tuple[int, tuple[tuple[int, int, int, int], ...]]:
    """The offset at the start of ``year`` and its changes as wall-clock intervals."""
    hour = _HOURS[1]
    months = [datetime(year, m, 1, tzinfo=UTC) for m in range(1, 13)]
    months.append(datetime(year + 1, 1, 1, tzinfo=UTC))
    first = previous = _utc_offset_hours(months[0])
    changes: list[tuple[int, int, int, int]] = []
    for lo, hi in pairwise(months):
        after = _utc_offset_hours(hi)
        if after == previous:
            continue
        # bisect on whole hours: the first hour of the new offset
        while hi - lo > hour:
            mid = lo + (hi - lo) // hour // 2 * hour
            if _utc_offset_hours(mid) == previous:
                lo = mid
            else:
                hi = mid
        # wall clocks from change+min(offsets) to change+max(offsets) are repeated (autumn)
        # or skipped (spring)
        low, high = sorted((previous, after))
        changes.append((_wall_key(hi + _HOURS[low]), _wall_key(hi + _HOURS[high]), previous, after))
        previous = after
    return first, tuple(changes)


def parse_tst_or_raise(s: str, *, what: str = "timestamp") -> datetime:
    """Like :func:`parse_tst` but raise :class:`TimestampError` saying why, for callers that
    must have a time (the gateway rejecting readings whose meter clock is unset)."""
    result = parse_tst(s)
    if result is None:
        if s[:2] == "00":
            raise TimestampError(f"{what} {s!r}: meter clock not set")
        raise TimestampError(f"{what} {s!r} is not a valid DSMR timestamp (YYMMDDhhmmssS/W)")
    return result


def format_tst(moment: datetime) -> str:
    """Format an aware datetime as a DSMR 4/5 TST in local time with the S/W flag."""
    if moment.tzinfo is None:
        raise ValueError("format_tst needs an aware datetime")
    local = moment.astimezone(LOCAL_TZ)
    if not 2001 <= local.year <= 2069:
        raise ValueError(f"{moment.isoformat()}: DSMR timestamps cover 2001-2069 only")
    flag = "S" if local.dst() else "W"
    return local.strftime("%y%m%d%H%M%S") + flag


def format_tst12(moment: datetime) -> str:
    """Format an aware datetime as a DSMR 3 TST12 (local time, no DST flag)."""
    if moment.tzinfo is None:
        raise ValueError("format_tst12 needs an aware datetime")
    local = moment.astimezone(LOCAL_TZ)
    if not 2001 <= local.year <= 2069:
        raise ValueError(f"{moment.isoformat()}: DSMR timestamps cover 2001-2069 only")
    return local.strftime("%y%m%d%H%M%S")
