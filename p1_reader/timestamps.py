"""DSMR timestamps (``TST``): ``YYMMDDhhmmssX`` in Dutch/Belgian/Luxembourg local time.

``X`` is ``S`` (summer time, DST active: UTC+2) or ``W`` (winter time: UTC+1); lower-case
letters occur too. The letter is what makes the repeated October hour unambiguous, and it lets
the hot path compute UTC with one subtraction instead of a tz database lookup. The flag is
trusted as sent (a meter saying ``S`` in January is converted as UTC+2).

A 12-digit TST without the letter (DSMR 3 ``TST12`` in ``24.3.0``, some Belgian ``1.6.0``
values) is resolved with zoneinfo ``Europe/Amsterdam``; in the repeated October hour the first
(summer time) occurrence is taken, as dsmr_parser does.

Placeholders are "unknown", never errors: year ``00`` (meter clock unset, ``000101010000W``;
Kaifa power-failure logs ``000101000001W``), years ``70``–``99`` (Unix-epoch dead M-Bus channels
``700101010000W``), impossible dates (``632525252525S``, month 13) and anything that is not
12/13 characters of digits + S/W (e.g. DLMS octet-string dates ``07E8061C050A2B2B00FF8880``).
Valid years are therefore 2001–2069.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from .errors import TimestampError

#: local time zone of DSMR meters (NL; BE and LU share its offsets and DST rules)
LOCAL_TZ: Final = ZoneInfo("Europe/Amsterdam")

#: UTC offset in hours per DST flag
_OFFSET: Final = {"S": 2, "s": 2, "W": 1, "w": 1}
_HOURS: Final = (timedelta(0), timedelta(hours=1), timedelta(hours=2))
_DAYS_IN_MONTH: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# Gas/M-Bus capture times repeat for 5 min .. 1 h, meter ids and timestamps of replayed spools
# repeat: a small cache turns most conversions into one dict lookup. Bounded: cleared when full.
_CACHE_MAX: Final = 4096
_cache: dict[str, datetime | None] = {}
_MISSING: Final = datetime.min


def parse_tst(s: str) -> datetime | None:
    """Convert a DSMR timestamp to an aware UTC datetime; None when unset, invalid or not a TST.

    Never raises for any input string.
    """
    hit = _cache.get(s, _MISSING)
    if hit is not _MISSING:
        return hit
    n = len(s)
    if n != 12 and n != 13:
        return None  # not cached: arbitrary-length junk must not fill the cache
    result = _convert(s)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[s] = result
    return result


def _convert(s: str) -> datetime | None:
    # Runs once per distinct timestamp (the cache above), but a gateway serving many meters
    # sees mostly distinct ones: one int() of all 12 digits and integer arithmetic instead of
    # six slices and int() calls, and the aware UTC datetime built directly.
    if len(s) == 13:
        offset = _OFFSET.get(s[12])
        if offset is None:
            return None
        digits = s[:12]
    else:
        offset = None
        digits = s
    if not (digits.isascii() and digits.isdecimal()):  # int() would take '２', ' 1' or '1_0'
        return None
    n = int(digits)  # YYMMDDhhmmss
    yy = n // 10_000_000_000
    month = n // 100_000_000 % 100
    day = n // 1_000_000 % 100
    if yy == 0 or yy >= 70:
        return None  # unset clock (2000-01-01 ...) or epoch placeholder (1970/2070)
    if not 1 <= month <= 12 or not 1 <= day <= _DAYS_IN_MONTH[month]:
        return None
    if month == 2 and day == 29 and yy % 4 != 0:  # 2001-2069: every 4th year is a leap year
        return None
    hour = n // 10_000 % 100
    minute = n // 100 % 100
    second = n % 100
    if hour > 23 or minute > 59 or second > 59:
        return None
    if offset is None:
        offset = _local_offset(n // 10_000)
    if hour >= offset:  # the UTC time is on the same day: one datetime, no subtraction
        return datetime(2000 + yy, month, day, hour - offset, minute, second, tzinfo=UTC)
    return datetime(2000 + yy, month, day, hour, minute, second, tzinfo=UTC) - _HOURS[offset]


# UTC offset in hours of a local clock hour (YYMMDDhh) for TST12 values, from zoneinfo.
# Europe/Amsterdam's offsets are whole hours and change only on whole hours, so one lookup
# serves every meter's TST12 of that hour; zoneinfo's conversion cost more than the rest of a
# parse. Bounded: cleared when full.
_hour_offsets: dict[int, int] = {}


def _local_offset(yymmddhh: int) -> int:
    offset = _hour_offsets.get(yymmddhh)
    if offset is None:
        yy, rest = divmod(yymmddhh, 1_000_000)
        month, rest = divmod(rest, 10_000)
        day, hour = divmod(rest, 100)
        # fold=0: the first (summer time) occurrence of the repeated October hour; a time in
        # the skipped March hour gets the offset before the change (zoneinfo's rule)
        utcoffset = datetime(2000 + yy, month, day, hour, tzinfo=LOCAL_TZ).utcoffset()
        assert utcoffset is not None
        hours, part = divmod(utcoffset, _HOURS[1])
        assert not part and 0 <= hours <= 2, utcoffset
        if len(_hour_offsets) >= _CACHE_MAX:
            _hour_offsets.clear()
        offset = _hour_offsets[yymmddhh] = hours
    return offset


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
