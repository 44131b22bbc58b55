"""Telegram → JSON: the shape, RFC 3339 UTC times, and no power values."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from p1_reader.jsonout import rfc3339, telegram_to_dict, telegram_to_json
from p1_reader.parser import parse_telegram
from p1_reader.telegram import DEVICE_TYPE_GAS, MbusDevice, Telegram

TELEGRAMS = Path(__file__).resolve().parents[2] / "fixtures" / "telegrams"

KEYS = [
    "meter_id", "timestamp", "header", "version", "import_t1_wh", "import_t2_wh",
    "export_t1_wh", "export_t2_wh", "import_total_wh", "export_total_wh", "tariff", "mbus",
]
MBUS_KEYS = ["channel", "device_type", "meter_id", "measured_at", "value", "unit"]


def sample() -> Telegram:
    cest = timezone(timedelta(hours=2))
    return Telegram(
        header="/ISK5\\2M550T-1011",
        version="50",
        timestamp=datetime(2018, 11, 6, 14, 4, 29, tzinfo=UTC),
        meter_id="E0034006810516416",
        import_t1_wh=3808351,
        import_t2_wh=2948827,
        export_t1_wh=1285951,
        export_t2_wh=2876514,
        tariff=2,
        mbus=(
            MbusDevice(
                channel=1,
                device_type=DEVICE_TYPE_GAS,
                meter_id="G0039001700460117",
                measured_at=datetime(2018, 11, 6, 15, 0, 10, tzinfo=cest),
                value=1569646,
                unit="dm3",
            ),
            MbusDevice(2, None, None, None, None, None),
        ),
        objects={"1-0:1.7.0": ["00.123*kW"], "1-0:21.7.0": ["00.123*kW"]},
        crc_valid=True,
    )


def test_shape_and_values() -> None:
    out = telegram_to_dict(sample())
    assert list(out) == KEYS
    assert out["header"] == "/ISK5\\2M550T-1011"
    assert out["timestamp"] == "2018-11-06T14:04:29Z"
    assert out["import_t1_wh"] == 3808351
    assert out["export_t2_wh"] == 2876514
    assert out["import_total_wh"] is None
    assert out["tariff"] == 2
    assert [list(m) for m in out["mbus"]] == [MBUS_KEYS, MBUS_KEYS]
    gas = out["mbus"][0]
    # 15:00:10 at UTC+2 is 13:00:10 UTC
    assert gas["measured_at"] == "2018-11-06T13:00:10Z"
    assert (gas["channel"], gas["device_type"], gas["value"], gas["unit"]) == (
        1, 3, 1569646, "dm3",
    )
    assert out["mbus"][1] == dict.fromkeys(MBUS_KEYS) | {"channel": 2}


def test_no_power_values_or_raw_objects_leave() -> None:
    text = telegram_to_json(sample())
    assert "kW" not in text
    assert "00.123" not in text
    assert "objects" not in text
    assert "\n" not in text
    assert json.loads(text) == telegram_to_dict(sample())


def test_parsed_fixture_round_trip_has_no_power_values() -> None:
    raw = (TELEGRAMS / "nodedsmr_v5_nl_iskra_am550.txt").read_bytes()
    telegram = parse_telegram(raw)
    text = telegram_to_json(telegram)
    out = json.loads(text)
    assert list(out) == KEYS
    assert out["meter_id"] == telegram.meter_id
    assert out["import_t1_wh"] == telegram.import_t1_wh
    powers = [
        values[0].split("*")[0]
        for code, values in telegram.objects.items()
        if code.endswith((":1.7.0", ":2.7.0", ":21.7.0", ":22.7.0", ":41.7.0", ":61.7.0"))
    ]
    assert any(p.strip("0.") for p in powers)  # the sample does carry non-zero power values
    for value in powers:
        assert value not in text
    assert "kW" not in text


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2024, 3, 31, 1, 0, tzinfo=UTC), "2024-03-31T01:00:00Z"),
        (datetime(2024, 3, 31, 3, 0, tzinfo=timezone(timedelta(hours=2))), "2024-03-31T01:00:00Z"),
        (datetime(2024, 1, 1, 0, 0, 0, 250000, tzinfo=UTC), "2024-01-01T00:00:00.25Z"),
        (None, None),
    ],
)
def test_rfc3339(moment: datetime | None, expected: str | None) -> None:
    assert rfc3339(moment) == expected


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        rfc3339(datetime(2024, 1, 1))
