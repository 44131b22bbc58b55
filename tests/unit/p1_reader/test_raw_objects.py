"""Telegram.objects as the parser builds it: RawObjects, split lazily, read-only Mapping."""

from __future__ import annotations

from pathlib import Path

from p1_reader.crc import crc16_arc
from p1_reader.parser import parse_telegram
from p1_reader.telegram import RawObjects

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
AM550 = (FIXTURES / "telegrams" / "nodedsmr_v5_nl_iskra_am550.txt").read_bytes()


def telegram(*lines: str) -> bytes:
    frame = "\r\n".join(["/XMX5TEST", "", *lines, "!"]).encode("latin-1")
    return frame + f"{crc16_arc(frame):04X}\r\n".encode()


def test_mapping_behaviour() -> None:
    objects = RawObjects({"1-0:1.8.1": "000001.000*kWh", "0-1:24.2.1": "200426223001S)(1.0*m3"})
    assert len(objects) == 2 and "1-0:1.8.1" in objects and "x" not in objects
    assert objects._split is None  # keys, len and `in` do not split
    assert list(objects) == ["1-0:1.8.1", "0-1:24.2.1"]
    assert objects["0-1:24.2.1"] == ["200426223001S", "1.0*m3"]
    assert objects["0-1:24.2.1"] is objects["0-1:24.2.1"]  # split once, same lists after
    assert objects.get("nope") is None
    assert dict(objects.items()) == {
        "1-0:1.8.1": ["000001.000*kWh"],
        "0-1:24.2.1": ["200426223001S", "1.0*m3"],
    }
    assert objects == {"1-0:1.8.1": ["000001.000*kWh"], "0-1:24.2.1": ["200426223001S", "1.0*m3"]}
    assert "000001.000*kWh" in repr(objects)


def test_parser_objects_equal_a_full_split() -> None:
    t = parse_telegram(AM550)
    assert isinstance(t.objects, RawObjects)
    text = AM550.decode("latin-1")
    body = text[text.index("\r\n\r\n") + 4 : text.index("!")]
    expected = {}
    for line in body.split("\r\n")[:-1]:
        code, _, rest = line.partition("(")
        expected[code] = rest[:-1].split(")(")
    assert dict(t.objects.items()) == expected
    assert len(t.objects) == len(expected)


def test_first_value_of_multi_value_interpreted_lines() -> None:
    t = parse_telegram(
        telegram(
            "1-3:0.2.8(50)(99)",
            "0-0:1.0.0(200426223001S)(x)",
            "0-0:96.14.0(0002)(7)",
            "0-0:96.1.1()(4530)",
            "0-0:96.1.0(4b38)(0)",
        )
    )
    assert t.version == "50"
    assert t.timestamp is not None and t.timestamp.hour == 20
    assert t.tariff == 2
    assert t.meter_id == "K8"  # the empty first value of 96.1.1 falls through to 96.1.0
    assert t.objects["0-0:96.1.1"] == ["", "4530"]


def test_mbus_reading_with_three_values_is_no_reading() -> None:
    t = parse_telegram(telegram("0-1:24.1.0(003)", "0-1:24.2.1(200426223001S)(1.000*m3)(x)"))
    (gas,) = t.mbus
    assert (gas.device_type, gas.value, gas.measured_at) == (3, None, None)


def test_mbus_value_fast_and_general_paths_agree() -> None:
    for value, dm3 in [("00012.345*m3", 12345), ("12.3*m3", 12300), ("7*m3", 7000)]:
        t = parse_telegram(telegram("0-1:24.1.0(003)", f"0-1:24.2.1(200426223001S)({value})"))
        assert t.mbus[0].value == dm3, value


def test_garbage_codes_with_value_separator_fall_back_to_the_robust_split() -> None:
    # a code holding ')(' or a line with a stray '(' in its value: same result as line by line
    t = parse_telegram(telegram("X)(Y(1)", "0-0:96.13.0(a(b)", "1-0:1.8.1(000001.000*kWh)"))
    assert t.objects["X)"] == ["Y(1"]
    assert t.objects["0-0:96.13.0"] == ["a(b"]
    assert t.import_t1_wh == 1000
