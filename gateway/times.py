"""Times as clients write them (SPEC §5): RFC 3339 with an offset, or a plain ``YYYY-MM-DD``
meaning local midnight (Europe/Amsterdam by default). One parser for query strings, request
bodies, CSV files and CLI arguments, so every entry point accepts and rejects the same text.

Every parsed time lies in [``EARLIEST``, ``LATEST``): far from the edges of Python's calendar
(years 1 and 9999), so no conversion or day arithmetic further on can overflow."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Final
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BeforeValidator, Field

AMSTERDAM: Final = ZoneInfo("Europe/Amsterdam")

#: the range of times the gateway accepts from outside
EARLIEST: Final = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
LATEST: Final = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)

_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_EXPECTED: Final = "expected RFC 3339 (e.g. 2024-03-01T00:00:00Z) or YYYY-MM-DD"
_OUT_OF_RANGE: Final = f"out of range: a time from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y}"
_NO_OFFSET: Final = "a time needs a UTC offset ('Z' or '+01:00'); a bare date means local"


def parse_time(value: str, tz: ZoneInfo = AMSTERDAM) -> dt.datetime:
    """RFC 3339 with an offset (``…Z`` or ``…+01:00``), or ``YYYY-MM-DD`` = local midnight in
    ``tz``, as an aware UTC datetime in [EARLIEST, LATEST); ValueError with a reason otherwise."""
    return in_range(_parse(value, tz))


def in_range(value: dt.datetime) -> dt.datetime:
    """``value`` if it is aware and lies in [EARLIEST, LATEST); ValueError otherwise."""
    if value.tzinfo is None:
        raise ValueError(_NO_OFFSET)
    if not EARLIEST <= value < LATEST:
        raise ValueError(_OUT_OF_RANGE)
    return value


def _parse(value: str, tz: ZoneInfo) -> dt.datetime:
    text = value.strip()
    if _DATE_RE.fullmatch(text):
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not a calendar date: {_EXPECTED}") from None
        local = dt.datetime.combine(day, dt.time(0), tzinfo=tz)
    else:
        local = _parse_rfc3339(text)
    try:
        return local.astimezone(dt.UTC)
    except OverflowError:  # local midnight of 0001-01-01 is in year 0 in UTC
        raise ValueError(_OUT_OF_RANGE) from None


def _parse_rfc3339(text: str) -> dt.datetime:
    if "T" not in text and " " in text[:11]:
        raise ValueError(_EXPECTED)
    if " " in text and "T" in text:
        # an unencoded '+' in a query string arrives as a space: 2024-03-01T00:00:00 01:00
        text = text.replace(" ", "+")
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(_EXPECTED) from None
    if parsed.tzinfo is None:
        raise ValueError(_NO_OFFSET)
    return parsed


def _api_time(value: object) -> object:
    # datetimes built in code pass through (in_range checks them after); text is parsed here;
    # numbers are not times in the API (pydantic would read them as Unix seconds)
    if isinstance(value, str):
        return parse_time(value)
    if isinstance(value, dt.datetime):
        return value
    raise ValueError(_EXPECTED)


#: a time field of a request body: RFC 3339 with an offset or a local date
ApiTime = Annotated[
    dt.datetime,
    BeforeValidator(_api_time),
    AfterValidator(in_range),
    Field(description="RFC 3339 time with an offset, or YYYY-MM-DD (midnight Europe/Amsterdam)"),
]
