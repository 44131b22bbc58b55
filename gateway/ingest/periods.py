"""Period bucketing: which ``P1M``/``P1D``/``PT1H``/``PT15M`` period a measured time falls in.

Boundaries are local Europe/Amsterdam time (SPEC §3), so a day is 23, 24 or 25 hours and a month
starts at local midnight. Because Amsterdam's UTC offset has been a whole number of hours since
1946, every local quarter-hour and hour boundary is also a UTC one: ``PT15M`` and ``PT1H`` periods
are plain integer arithmetic on epoch seconds, and the repeated October hour (02:00–03:00 local
twice) is naturally two distinct hour periods. Day and month starts depend on the offset, so they
are computed with ``zoneinfo`` once per UTC hour and cached (an hour never straddles a local day).

Times inside the ingest pipeline are integer epoch seconds (telegram times are whole seconds);
the datetime functions are the readable API for everything else.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from consent.levels import Granularity

AMSTERDAM = ZoneInfo("Europe/Amsterdam")

QUARTER_S = 900
HOUR_S = 3600

#: earliest instant the whole-hour-offset shortcut is valid for (Amsterdam: CET/CEST since 1946)
_MIN_SUPPORTED = datetime(1946, 1, 1, tzinfo=UTC)


def period_start(granularity: Granularity, t: datetime, tz: ZoneInfo = AMSTERDAM) -> datetime:
    """Start (UTC) of the ``granularity`` period containing the aware instant ``t``."""
    if t.utcoffset() is None:
        raise ValueError(f"period_start needs an aware datetime, got naive {t.isoformat()}")
    if t < _MIN_SUPPORTED:
        raise ValueError(f"{t.isoformat()} is before 1946; period bucketing is not defined there")
    if granularity is Granularity.PT15M:
        ts = int(t.timestamp())
        return datetime.fromtimestamp(ts - ts % QUARTER_S, UTC)
    if granularity is Granularity.PT1H:
        ts = int(t.timestamp())
        return datetime.fromtimestamp(ts - ts % HOUR_S, UTC)
    local = t.astimezone(tz)
    day = 1 if granularity is Granularity.P1M else local.day
    # local midnight is never in a DST gap or fold for the zones we serve (changes at 02:00/03:00)
    return datetime(local.year, local.month, day, tzinfo=tz).astimezone(UTC)


def period_end(granularity: Granularity, start: datetime, tz: ZoneInfo = AMSTERDAM) -> datetime:
    """End (UTC, exclusive) of the ``granularity`` period starting at ``start``."""
    if granularity is Granularity.PT15M:
        return start + timedelta(seconds=QUARTER_S)
    if granularity is Granularity.PT1H:
        return start + timedelta(seconds=HOUR_S)
    local = start.astimezone(tz)
    if granularity is Granularity.P1D:
        # wall-clock arithmetic then re-localise: a local day is 23, 24 or 25 hours
        nxt = datetime(local.year, local.month, local.day, tzinfo=tz) + timedelta(days=1)
        return datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).astimezone(UTC)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return datetime(year, month, 1, tzinfo=tz).astimezone(UTC)


class Bucketer:
    """Fast period bounds on integer epoch seconds, for the ingest hot path.

    Day and month starts and ends are computed with ``zoneinfo`` once per UTC hour and cached
    (an hour never straddles a local day); the cache is bounded (cleared when it holds
    ``max_hours`` entries — 40 days of spool replay is under 1 000 hours). The returned ints
    are shared between all readings of the hour, which keeps caches holding them small.
    """

    __slots__ = ("_cache", "_max_hours", "_tz")

    def __init__(self, tz: ZoneInfo = AMSTERDAM, max_hours: int = 4096) -> None:
        self._tz = tz
        self._max_hours = max_hours
        self._cache: dict[int, tuple[int, int, int, int]] = {}

    def bounds(self, ts: int) -> tuple[int, int, int, int]:
        """``(P1D start, P1D end, P1M start, P1M end)`` as epoch seconds for the instant ``ts``
        (ends exclusive)."""
        hour = ts // HOUR_S
        hit = self._cache.get(hour)
        if hit is not None:
            return hit
        tz = self._tz
        local = datetime.fromtimestamp(hour * HOUR_S, tz)
        # wall-clock arithmetic, then re-localised: a local day is 23, 24 or 25 hours; local
        # midnight is never in a DST gap or fold for the zones we serve (changes at 02:00/03:00)
        day = datetime(local.year, local.month, local.day, tzinfo=tz)
        nxt = day + timedelta(days=1)
        day_end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
        year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        value = (
            int(day.timestamp()),
            int(day_end.timestamp()),
            int(datetime(local.year, local.month, 1, tzinfo=tz).timestamp()),
            int(datetime(year, month, 1, tzinfo=tz).timestamp()),
        )
        if len(self._cache) >= self._max_hours:
            self._cache.clear()
        self._cache[hour] = value
        return value

    def day_month(self, ts: int) -> tuple[int, int]:
        """``(P1D start, P1M start)`` as epoch seconds for the instant ``ts``."""
        b = self.bounds(ts)
        return b[0], b[2]

    @staticmethod
    def quarter(ts: int) -> int:
        """``PT15M`` period start (epoch seconds) for ``ts``."""
        return ts - ts % QUARTER_S

    @staticmethod
    def hour(ts: int) -> int:
        """``PT1H`` period start (epoch seconds) for ``ts``."""
        return ts - ts % HOUR_S
