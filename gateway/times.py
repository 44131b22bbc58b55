"""Times as clients write them (SPEC §5): RFC 3339 with an offset, or a plain ``YYYY-MM-DD``
meaning local midnight (Europe/Amsterdam by default). One parser for query strings, request
bodies, CSV files and CLI arguments, so every entry point accepts and rejects the same text."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Final
from zoneinfo import ZoneInfo

from pydantic import BeforeValidator, Field

AMSTERDAM: Final = ZoneInfo("Europe/Amsterdam")

_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_EXPECTED: Final = "expected RFC 3339 (e.g. 2024-03-01T00:00:00Z) or YYYY-MM-DD"


def parse_time(value: str, tz: ZoneInfo = AMSTERDAM) -> dt.datetime:
    """RFC 3339 with an offset (``…Z`` or ``…+01:00``), or ``YYYY-MM-DD`` = local midnight in
    ``tz``, as an aware UTC datetime; ValueError with a reason otherwise."""
    text = value.strip()
    if _DATE_RE.fullmatch(text):
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not a calendar date: {_EXPECTED}") from None
        return dt.datetime.combine(day, dt.time(0), tzinfo=tz).astimezone(dt.UTC)
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
        raise ValueError("a time needs a UTC offset ('Z' or '+01:00'); a bare date means local")
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("time out of range") from None


def _api_time(value: object) -> object:
    # datetimes built in code pass through (pydantic checks they are aware); text is parsed here
    return parse_time(value) if isinstance(value, str) else value


#: a time field of a request body: RFC 3339 with an offset or a local date
ApiTime = Annotated[
    dt.datetime,
    BeforeValidator(_api_time),
    Field(description="RFC 3339 time with an offset, or YYYY-MM-DD (midnight Europe/Amsterdam)"),
]
