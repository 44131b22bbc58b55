"""p1_reader.crc: CRC-16/ARC as DSMR 4+ defines it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p1_reader.crc import crc16_arc, format_crc, telegram_crc

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def test_check_value() -> None:
    # CRC-16/ARC catalogue check value
    assert crc16_arc(b"123456789") == 0xBB3D
    assert crc16_arc(b"") == 0


def test_bitwise_reference() -> None:
    # independent bit-by-bit implementation: reflected poly 0xA001, init 0, no xorout
    def reference(data: bytes) -> int:
        crc = 0
        for byte in data:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        return crc

    for data in [b"/", b"/ISk5\\2MT382-1000\r\n\r\n!", bytes(range(256))]:
        assert crc16_arc(data) == reference(data)


@pytest.mark.parametrize(
    "entry",
    [e for e in json.loads((FIXTURES / "index.json").read_text()) if e["has_crc"]],
    ids=lambda e: e["file"],
)
def test_fixture_crcs(entry: dict[str, object]) -> None:
    raw = (FIXTURES / "telegrams" / str(entry["file"])).read_bytes()
    frame = raw[raw.index(b"/") : raw.index(b"!") + 1]
    computed = telegram_crc(frame)
    assert computed == entry["computed_crc"]
    assert (int(str(entry["sample_crc"]), 16) == int(computed, 16)) is entry["crc_valid"]


def test_format_pads_to_four_digits() -> None:
    assert format_crc(0xB9F) == "0B9F"
    assert format_crc(0) == "0000"


def test_telegram_crc_needs_whole_frame() -> None:
    with pytest.raises(ValueError, match="from '/'"):
        telegram_crc(b"1-0:1.8.1(1)\r\n!")
    with pytest.raises(ValueError):
        telegram_crc(b"/XMX5\r\n")
