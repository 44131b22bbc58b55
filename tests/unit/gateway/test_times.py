"""gateway.times: every text a client can send as a time parses to an aware UTC time inside
[EARLIEST, LATEST) or fails with ValueError, never with OverflowError or TypeError."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pydantic
import pytest

from gateway.times import EARLIEST, LATEST, ApiTime, parse_time

_TIME = pydantic.TypeAdapter(ApiTime)


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01",  # local midnight is in year 0 in UTC
        "9999-12-31",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:30:00+01:00",
        "9999-12-31T23:59:59.999999-01:00",
        "1899-12-31T23:59:59Z",
        "9000-01-01T00:00:00Z",
    ],
)
@pytest.mark.parametrize("tz", [ZoneInfo("Europe/Amsterdam"), ZoneInfo("Pacific/Kiritimati")])
def test_times_at_the_edges_of_the_calendar_are_value_errors(text: str, tz: ZoneInfo) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_time(text, tz)


def test_the_range_itself_is_accepted() -> None:
    assert parse_time("1900-01-01T00:00:00Z") == EARLIEST
    assert parse_time("8999-12-31T23:59:59Z") < LATEST
    assert parse_time("2024-03-01") == dt.datetime(2024, 2, 29, 23, tzinfo=dt.UTC)


@pytest.mark.parametrize("value", [1e300, 253402300799, -62135596800, 0, True, None, [1]])
def test_api_times_are_text_not_numbers(value: object) -> None:
    with pytest.raises(pydantic.ValidationError):
        _TIME.validate_python(value)


@pytest.mark.parametrize(
    "value", [dt.datetime(1, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 1), dt.datetime.max]
)
def test_api_times_built_in_code_are_checked_too(value: dt.datetime) -> None:
    with pytest.raises(pydantic.ValidationError):
        _TIME.validate_python(value)
