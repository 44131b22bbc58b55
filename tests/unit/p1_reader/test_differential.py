"""Differential test: our parser against dsmr_parser on every fixture both parse.

Compared: telegram timestamp, meter id, the four registers, totals, tariff, and per M-Bus
channel the capture time and value. Deliberate differences, asserted as such:
- placeholder timestamps (year 00, epoch 70) are None for us, a datetime for dsmr_parser;
- dsmr_parser keeps the equipment id raw; we hex-decode printable ASCII;
- dsmr_parser gives Decimal kWh / m3 / GJ; we give exact integers in Wh / dm3 / kJ.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from dsmr_parser import telegram_specifications as specs
from dsmr_parser.parsers import TelegramParser

from p1_reader.parser import parse_telegram
from p1_reader.telegram import Telegram

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SCALE = {"kwh": 1000, "wh": 1, "m3": 1000, "gj": 1_000_000}


def cases() -> Iterator[Any]:
    for entry in json.loads((FIXTURES / "index.json").read_text()):
        spec = getattr(specs, entry["dsmr_parser_spec"])
        yield pytest.param(entry, spec, id=entry["file"])


def exact(value: Decimal, unit: str | None, default_unit: str) -> int:
    """dsmr_parser's Decimal in our integer unit; sub-unit digits truncated like ours."""
    return int(value * SCALE[(unit or default_unit).lower()])


def placeholder(moment: datetime) -> bool:
    return moment.year in (1970, 2000, 2070)


def check_timestamp(ours: datetime | None, theirs: datetime | None) -> None:
    if ours is None and theirs is not None:
        assert placeholder(theirs), theirs
    else:
        # both follow the zone rules, also where the flag contradicts them (the IE sample says
        # S in February)
        assert ours == theirs


def expected_id(raw: str) -> str:
    try:
        text = bytes.fromhex(raw).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return raw  # not hex of ASCII: we keep it as sent
    return text if text.isprintable() else raw


@pytest.mark.parametrize(("entry", "spec"), list(cases()))
def test_same_values_as_dsmr_parser(entry: dict[str, Any], spec: dict[str, Any]) -> None:
    raw = (FIXTURES / "telegrams" / entry["file"]).read_bytes()
    checked = entry["crc_valid"] is not False
    ours: Telegram = parse_telegram(raw, require_crc=None if checked else False)
    logging.disable(logging.CRITICAL)  # dsmr_parser logs every line it cannot parse
    try:
        theirs = TelegramParser(spec, apply_checksum_validation=checked).parse(
            raw.decode("latin-1")
        )
    finally:
        logging.disable(logging.NOTSET)
    compared = 0

    if hasattr(theirs, "P1_MESSAGE_TIMESTAMP"):
        check_timestamp(ours.timestamp, theirs.P1_MESSAGE_TIMESTAMP.value)
        compared += 1
    for name in ("EQUIPMENT_IDENTIFIER", "BELGIUM_EQUIPMENT_IDENTIFIER"):
        if hasattr(theirs, name) and not entry["file"].startswith("dsmrparser_ie"):
            assert ours.meter_id == expected_id(getattr(theirs, name).value)
            compared += 1
    registers = {
        "ELECTRICITY_USED_TARIFF_1": ours.import_t1_wh,
        "ELECTRICITY_USED_TARIFF_2": ours.import_t2_wh,
        "ELECTRICITY_DELIVERED_TARIFF_1": ours.export_t1_wh,
        "ELECTRICITY_DELIVERED_TARIFF_2": ours.export_t2_wh,
        "ELECTRICITY_IMPORTED_TOTAL": ours.import_total_wh,
        "ELECTRICITY_EXPORTED_TOTAL": ours.export_total_wh,
    }
    for name, value in registers.items():
        if hasattr(theirs, name):
            obj = getattr(theirs, name)
            assert value == exact(obj.value, obj.unit, "kWh"), name
            compared += 1
    if hasattr(theirs, "ELECTRICITY_ACTIVE_TARIFF"):
        assert ours.tariff == int(theirs.ELECTRICITY_ACTIVE_TARIFF.value)
        compared += 1

    for device in getattr(theirs, "MBUS_DEVICES", []):
        names = dict(device)
        reading = next(
            (
                names[n]
                for n in ("MBUS_METER_READING", "HOURLY_GAS_METER_READING", "GAS_METER_READING")
                if n in names
            ),
            None,
        )
        if reading is None:
            continue
        mine = next(d for d in ours.mbus if d.channel == device.channel_id)
        check_timestamp(mine.measured_at, reading.datetime)
        assert mine.value == exact(reading.value, reading.unit, "m3")
        compared += 2
    assert compared >= 1, "nothing compared"
