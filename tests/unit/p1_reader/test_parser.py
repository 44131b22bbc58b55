"""p1_reader.parser: every fixture, the CRC rule, and each DSMR.md §6 pitfall a parser meets."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p1_reader import parser as parser_mod
from p1_reader.crc import crc16_arc
from p1_reader.errors import (
    AmbiguousRegistersError,
    ChecksumError,
    FrameError,
    TimestampError,
    TooLargeError,
    ValueFormatError,
)
from p1_reader.parser import (
    MAX_TELEGRAM_BYTES,
    decode_equipment_id,
    mbus_device,
    parse_telegram,
    telegram_timestamp_or_raise,
)
from p1_reader.telegram import DEVICE_TYPE_GAS, DEVICE_TYPE_WATER, Telegram

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
INDEX: list[dict[str, Any]] = json.loads((FIXTURES / "index.json").read_text())


def fixture(name: str) -> bytes:
    return (FIXTURES / "telegrams" / name).read_bytes()


def with_crc(frame: bytes) -> bytes:
    """``frame`` runs from '/' to '!' inclusive; append its CRC-16/ARC and CRLF."""
    return frame + f"{crc16_arc(frame):04X}\r\n".encode()


def telegram(*lines: str, header: str = "/XMX5TEST") -> bytes:
    """A DSMR 5 telegram with a valid CRC from data lines."""
    return with_crc("\r\n".join([header, "", *lines, "!"]).encode("latin-1"))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


AM550 = fixture("nodedsmr_v5_nl_iskra_am550.txt")


# --- every fixture -------------------------------------------------------------------------


@pytest.mark.parametrize("entry", INDEX, ids=lambda e: e["file"])
def test_every_fixture_parses_and_crc_rule_holds(entry: dict[str, Any]) -> None:
    data = fixture(entry["file"])
    if entry["crc_valid"] is False:
        with pytest.raises(ChecksumError, match="CRC mismatch"):
            parse_telegram(data)
        t = parse_telegram(data, require_crc=False)
        assert t.crc_valid is False
    else:
        t = parse_telegram(data)
        assert t.crc_valid is entry["crc_valid"]
    assert t.header.startswith("/")
    assert t.objects  # every line kept
    # every electricity fixture has tariff registers or totals (Warmtelink is a heat meter)
    if "warmtelink" not in entry["file"]:
        assert t.import_t1_wh is not None or t.import_total_wh is not None
    else:
        assert t.mbus[0].value is not None


@pytest.mark.parametrize(
    "entry", [e for e in INDEX if e["crc_valid"] is None], ids=lambda e: e["file"]
)
def test_crc_less_fixtures_fail_when_crc_forced(entry: dict[str, Any]) -> None:
    with pytest.raises((ChecksumError, FrameError)):
        parse_telegram(fixture(entry["file"]), require_crc=True)


def test_am550_fields_exact() -> None:
    t = parse_telegram(AM550)
    assert t.header == "/ISK5\\2M550T-1011"
    assert t.version == "50"
    assert t.timestamp == utc(2018, 11, 6, 13, 4, 29)  # 181106140429W = UTC+1
    assert t.meter_id == "E0034006810516416"
    assert (t.import_t1_wh, t.import_t2_wh) == (3808351, 2948827)
    assert (t.export_t1_wh, t.export_t2_wh) == (1285951, 2876514)
    assert t.import_total_wh is None and t.export_total_wh is None
    assert t.tariff == 2
    (gas,) = t.mbus
    assert gas.channel == 1 and gas.device_type == DEVICE_TYPE_GAS
    assert gas.meter_id == "G0039001700460117"
    assert gas.measured_at == utc(2018, 11, 6, 13, 0, 10)
    assert (gas.value, gas.unit) == (1569646, "dm3")
    assert t.objects["1-0:99.97.0"] == ["1", "0-0:96.7.19", "180529135630S", "0000002451*s"]
    assert t.objects["1-0:1.7.0"] == ["00.000*kW"]


def test_str_input_equals_bytes_input() -> None:
    assert parse_telegram(AM550.decode("latin-1")) == parse_telegram(AM550)


def test_non_latin1_str_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="offset"):
        parse_telegram("/XMX5\r\n\r\n0-0:96.1.1(€)\r\n!\r\n")


# --- CRC -----------------------------------------------------------------------------------


def test_unpadded_crc_accepted() -> None:
    t = parse_telegram(fixture("dsmrparser_v5_nl_warmtelink_heat_unpadded_crc.txt"))
    assert t.crc_valid is True
    assert t.meter_id == "ADC3100000158491"  # hex, but not of printable ASCII: as sent
    (heat,) = t.mbus
    assert (heat.device_type, heat.value, heat.unit) == (4, 240860000, "kJ")


def test_lower_case_crc_accepted() -> None:
    lowered = AM550.replace(b"!1F28", b"!1f28")
    assert parse_telegram(lowered).crc_valid is True


def test_crc_mismatch_names_both_values() -> None:
    bad = AM550.replace(b"!1F28", b"!1F29")
    with pytest.raises(ChecksumError, match="telegram says 1F29, computed 1F28"):
        parse_telegram(bad)
    assert parse_telegram(bad, require_crc=False).crc_valid is False


def test_single_changed_digit_fails_crc() -> None:
    with pytest.raises(ChecksumError):
        parse_telegram(AM550.replace(b"003808.351", b"003808.352"))


def test_malformed_crc_field() -> None:
    with pytest.raises(ChecksumError, match="not 1-4 hex digits"):
        parse_telegram(AM550.replace(b"!1F28", b"!1G28"))
    assert parse_telegram(AM550.replace(b"!1F28", b"!1G28"), require_crc=False).crc_valid is False


def test_dsmr4_without_crc_rejected_by_default() -> None:
    stripped = AM550.replace(b"!1F28", b"!")
    with pytest.raises(ChecksumError, match="CRC missing"):
        parse_telegram(stripped)
    t = parse_telegram(stripped, require_crc=False)
    assert t.crc_valid is None and t.import_t1_wh == 3808351


def test_belgian_version_object_requires_crc() -> None:
    data = "/FLU5\\253769484_A\r\n\r\n0-0:96.1.4(50217)\r\n1-0:1.8.1(000000.034*kWh)\r\n!\r\n"
    with pytest.raises(ChecksumError):
        parse_telegram(data)


def test_header_five_does_not_require_crc() -> None:
    # '/ISk5' is the IEC 62056-21 baud letter, also sent by DSMR 2.2 meters without CRC
    t = parse_telegram(fixture("dsmrparser_v2.2_nl_iskra_mt382.txt"))
    assert t.header[4] == "5" and t.crc_valid is None


def test_require_crc_true_accepts_matching_crc() -> None:
    assert parse_telegram(AM550, require_crc=True).crc_valid is True


# --- framing -------------------------------------------------------------------------------


def test_not_a_telegram() -> None:
    with pytest.raises(FrameError, match="no '/'"):
        parse_telegram(b"hello world\r\n!\r\n")
    with pytest.raises(FrameError):
        parse_telegram(b"")


def test_too_large() -> None:
    big = b"/XMX5\r\n\r\n" + b"0-0:96.13.0(" + b"30" * MAX_TELEGRAM_BYTES + b")\r\n!\r\n"
    with pytest.raises(TooLargeError):
        parse_telegram(big)


def test_truncated_dsmr5_without_end_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="truncated"):
        parse_telegram(AM550[: AM550.index(b"!")])


def test_truncated_mid_line_is_a_frame_error_even_without_crc_rule() -> None:
    v22 = fixture("dsmrparser_v2.2_nl_iskra_mt382.txt")
    with pytest.raises(FrameError, match="truncated"):
        parse_telegram(v22[:150])


def test_dsmr22_capture_without_end_line_parses() -> None:
    t = parse_telegram(fixture("nodedsmr_v2.2_nl_iskra_mt382_real.txt"))
    assert t.import_t1_wh == 39837604 and t.crc_valid is None
    (gas,) = t.mbus
    assert gas.value == 13032850
    assert gas.measured_at == utc(2025, 4, 23, 7, 0)  # 12-digit TST, zoneinfo: CEST


def test_leading_garbage_and_trailing_garbage_ignored() -> None:
    t = parse_telegram(b"\xff\xff\x00" + AM550 + b"  25803103\r\n" + b"\xff" * 33)
    assert t.crc_valid is True and t.import_t1_wh == 3808351


def test_q3d_trailing_garbage_and_star_255_codes() -> None:
    t = parse_telegram(fixture("dsmrparser_de_easymeter_q3d_b1024.txt"))
    assert t.crc_valid is None
    assert t.import_total_wh == 52185782  # 52185.7825309 kWh, sub-Wh digits truncated
    assert t.export_total_wh == 19949322
    assert t.objects["1-0:21.7.0"] == ["000747.85*W"]
    assert t.meter_id == "1ESY1313002565"


def test_lf_only_line_ends() -> None:
    t = parse_telegram(AM550.replace(b"\r\n", b"\n"), require_crc=False)
    assert t.import_t2_wh == 2948827 and t.mbus[0].value == 1569646


def test_missing_blank_line_after_header() -> None:
    t = parse_telegram(fixture("nodedsmr_be_emucs_v2.1.1_spec_example1.txt"), require_crc=False)
    assert t.header == "/FLU5\\253769484_A"
    assert t.objects["0-0:96.1.4"] == ["50221"]
    assert t.import_t2_wh == 15758


def test_octal_escape_header_stays_two_characters() -> None:
    t = parse_telegram(fixture("dsmrparser_v3_nl_iskra_mt382.txt"))
    assert t.header == "/ISk5\\2MT382-1000" and len(t.header) == 17
    # the IE fixture carries a real 0x02 byte: kept as is, not re-escaped
    assert parse_telegram(fixture("dsmrparser_ie_iskra_ie5.txt")).header == "/ISk5\x02MIE5T-200"


# --- values --------------------------------------------------------------------------------


def test_dsmr22_gas_value_on_next_line() -> None:
    t = parse_telegram(fixture("dsmrparser_v3_nl_iskra_mt382.txt"))
    (gas,) = t.mbus
    assert gas.measured_at == utc(2009, 2, 12, 15, 0)  # 090212160000, CET
    assert (gas.value, gas.unit, gas.device_type) == (1001, "dm3", 3)
    assert gas.meter_id == "2222ABCD123456789"
    assert t.objects["0-1:24.3.0"][-2:] == ["m3", "00001.001"]


@pytest.mark.parametrize(
    ("value", "wh"),
    [
        ("003808.351*kWh", 3808351),
        ("00000003.997*kWh", 3997),
        ("3.997*kWh", 3997),
        ("12345.678*kWh", 12345678),
        ("12345.6*kWh", 12345600),
        ("000000286*Wh", 286),
        ("006545766*Wh", 6545766),
        ("1*kWh", 1000),
        ("000123.456*kwh", 123456),
        ("000123.456*KWH", 123456),
        ("0001.234567*MWh", 1234567),
    ],
)
def test_register_widths_and_units(value: str, wh: int) -> None:
    t = parse_telegram(telegram(f"1-0:1.8.1({value})"))
    assert t.import_t1_wh == wh


@pytest.mark.parametrize(
    "value",
    [
        "000123.456",
        "000123.456*kW",
        "0001x3.456*kWh",
        "+00123.456*kWh",
        "12.*kWh",
        ".5*kWh",
        "1_000*Wh",
        "000123.456*kWh*kWh",
        "-00123.456*kWh",
        "0002\x00.051*kWh",
    ],
)
def test_garbled_register_is_rejected_naming_line_and_code(value: str) -> None:
    data = telegram("1-3:0.2.8(50)", f"1-0:1.8.2({value})")
    with pytest.raises(ValueFormatError, match=r"line 4: 1-0:1\.8\.2"):
        parse_telegram(data)


def test_two_values_on_a_register_line_are_rejected() -> None:
    with pytest.raises(ValueFormatError, match=r"1-0:1\.8\.1"):
        parse_telegram(telegram("1-0:1.8.1(000001.000*kWh)(000002.000*kWh)"))


def test_lowercase_units_fixture() -> None:
    t = parse_telegram(
        fixture("nodedsmr_v5.0.2_spec_example_lowercase_units.txt"), require_crc=False
    )
    assert t.import_t1_wh == 123456789 and t.mbus[0].value == 12785123


def test_empty_values() -> None:
    t = parse_telegram(
        telegram(
            "1-0:1.8.1()",
            "0-0:96.13.0()",
            "0-1:24.1.0(003)",
            "0-1:96.1.0()",
            "1-0:99.97.0()",
            "0-0:96.1.1()",
        )
    )
    assert t.import_t1_wh is None and t.meter_id is None
    assert t.objects["0-0:96.13.0"] == [""]
    (dev,) = t.mbus
    assert (dev.device_type, dev.meter_id, dev.value, dev.measured_at) == (3, None, None, None)


def test_channel_with_only_an_empty_id_is_not_a_device() -> None:
    t = parse_telegram(fixture("dsmrparser_ie_iskra_ie5.txt"))
    assert t.mbus == ()
    assert t.objects["0-1:96.1.1"] == [""]


def test_gas_unit_variants() -> None:
    t = parse_telegram(
        telegram(
            "0-1:24.1.0(003)",
            "0-1:24.2.1(200426223001S)(00246.138*M3)",
            "0-2:24.1.0(003)",
            "0-2:24.2.1(200426223001S)(00246.138*m\xb3)",
            "0-3:24.1.0(003)",
            "0-3:24.2.1(200426223001S)(12785.12*m3)",
            "0-4:24.1.0(007)",
            "0-4:24.2.1(200426223001S)(00000004)",
        )
    )
    assert [d.value for d in t.mbus] == [246138, 246138, 12785120, 4000]
    assert {d.unit for d in t.mbus} == {"dm3"}


def test_unknown_gas_unit_rejected() -> None:
    with pytest.raises(ValueFormatError, match=r"0-1:24\.2\.1: unknown unit 'ft3'"):
        parse_telegram(telegram("0-1:24.1.0(003)", "0-1:24.2.1(200426223001S)(12.3*ft3)"))


def test_unitless_value_on_heat_channel_has_no_value() -> None:
    t = parse_telegram(telegram("0-1:24.1.0(004)", "0-1:24.2.1(200426223001S)(12.3)"))
    assert (t.mbus[0].value, t.mbus[0].unit) == (None, None)


def test_dead_mbus_channel_and_gas_on_channel_2() -> None:
    t = parse_telegram(fixture("dsmrparser_v5_nl_iskra_am550_two_mbus.txt"))
    dead, live = t.mbus
    assert (dead.channel, dead.measured_at, dead.value, dead.meter_id) == (1, None, 0, None)
    assert live.channel == 2 and live.measured_at == utc(2020, 4, 26, 20, 30, 1)
    assert mbus_device(t, DEVICE_TYPE_GAS) is live  # by device type, not channel


def test_belgian_gas_on_24_2_3_and_water_on_24_2_1() -> None:
    t = parse_telegram(fixture("dsmrparser_be_fluvius_emucs_v1.7.1.txt"))
    assert t.meter_id == "1SAG3101021605"  # from 0-0:96.1.1 only, not 0-1:96.1.1
    gas = mbus_device(t, DEVICE_TYPE_GAS)
    water = mbus_device(t, DEVICE_TYPE_WATER)
    assert gas is not None and water is not None
    assert (gas.channel, gas.meter_id, gas.value) == (1, "7FLO2119033733", 112384)
    assert (water.channel, water.meter_id, water.value) == (2, "8SAG1234567890", 872234)
    assert gas.measured_at == utc(2020, 5, 12, 11, 45, 58)


def test_smarty_unset_water_channels_and_multi_value_line() -> None:
    t = parse_telegram(fixture("lu_smarty_spec_example_restored.txt"))
    assert t.meter_id == "SAG1030790002574"  # 0-0:42.0.0
    assert (t.import_total_wh, t.export_total_wh) == (25653, 40)
    water = [d for d in t.mbus if d.device_type == DEVICE_TYPE_WATER]
    assert [(d.measured_at, d.value) for d in water] == [(None, 0), (None, 0)]
    assert t.objects["1-1:31.4.0"] == ["100*A", "-063*A"]
    assert mbus_device(t, DEVICE_TYPE_GAS) is t.mbus[0]


def test_comma_multi_value_kept_raw() -> None:
    t = parse_telegram(telegram("1-1:31.4.0(100.0*A,-100.0*A)"))
    assert t.objects["1-1:31.4.0"] == ["100.0*A,-100.0*A"]


def test_obis_variants() -> None:
    t = parse_telegram(fixture("nodedsmr_v4.2.2_spec_example.txt"), require_crc=False)
    assert t.objects["1-0:31.7.0"] == ["001*A"]  # sent as 1-0:31.7.0.255
    assert t.objects["1-0:72:32.0"] == ["00000"]  # typo kept as sent
    t4 = parse_telegram(fixture("nodedsmr_v4.0_spec_example.txt"), require_crc=False)
    assert t4.objects["1-0:99:97.0"][1] == "0:96.7.19"
    spaced = parse_telegram(telegram("0-1:24.1.0(003)", "0-1:24.2.1 (200426223001S)(00001.000*m3)"))
    assert spaced.mbus[0].value == 1000


def test_f_group_other_than_255_is_a_different_quantity() -> None:
    t = parse_telegram(telegram("1-0:1.8.1*01(000001.000*kWh)", "1-0:1.8.1(000002.000*kWh)"))
    assert t.import_t1_wh == 2000
    assert t.objects["1-0:1.8.1*01"] == ["000001.000*kWh"]


def test_duplicate_codes() -> None:
    with pytest.raises(ValueFormatError, match=r"1-0:1\.8\.1 occurs twice"):
        parse_telegram(telegram("1-0:1.8.1(000001.000*kWh)", "1-0:1.8.1(000002.000*kWh)"))
    same = parse_telegram(telegram("1-0:1.8.1(000001.000*kWh)", "1-0:1.8.1(000001.000*kWh)"))
    assert same.import_t1_wh == 1000
    unknown = parse_telegram(telegram("1-0:32.7.0(230.0*V)", "1-0:32.7.0(231.0*V)"))
    assert unknown.objects["1-0:32.7.0"] == ["230.0*V"]  # first kept


def test_invalid_timestamps_never_raise() -> None:
    t = parse_telegram(fixture("nodedsmr_v4.0_nl_landisgyr_e350_clock_unset.txt"))
    assert t.timestamp is None
    assert t.objects["0-0:1.0.0"] == ["000101010000W"]
    with pytest.raises(TimestampError, match="clock not set"):
        telegram_timestamp_or_raise(t)
    for stamp in ["632525252525S", "201325120000W", "07E8061C050A2B2B00FF8880", "", "abc"]:
        t2 = parse_telegram(telegram(f"0-0:1.0.0({stamp})"))
        assert t2.timestamp is None
        with pytest.raises(TimestampError):
            telegram_timestamp_or_raise(t2)
    with pytest.raises(TimestampError, match="no timestamp"):
        telegram_timestamp_or_raise(parse_telegram(telegram("1-0:1.8.1(000001.000*kWh)")))
    ok = parse_telegram(telegram("0-0:1.0.0(150701190000s)"))
    assert telegram_timestamp_or_raise(ok) == utc(2015, 7, 1, 17, 0)


def test_non_dsmr_tariff_encoding() -> None:
    assert parse_telegram(telegram("0-0:96.14.0(5431)")).tariff is None
    assert parse_telegram(telegram("0-0:96.14.0(0002)")).tariff == 2
    assert parse_telegram(telegram("0-0:96.14.0()")).tariff is None


def test_corrupted_bytes() -> None:
    # NUL inside an uninterpreted value, 0xFF in a text message: kept raw, no crash
    t = parse_telegram(telegram("1-0:1.7.0(02\x00.051*kW)", "0-0:96.13.0(\xff\xff)"))
    assert t.objects["1-0:1.7.0"] == ["02\x00.051*kW"]
    assert t.objects["0-0:96.13.0"] == ["\xff\xff"]
    with pytest.raises(ValueFormatError, match=r"1-0:2\.8\.1"):
        parse_telegram(telegram("1-0:2.8.1(000\xb301.000*kWh)"))


def test_garbled_lines() -> None:
    t = parse_telegram(
        telegram("garbage without parens", "0%0:96.1.4(50217)", "1-0:1.8.1(000001.000*kWh)")
    )
    assert t.import_t1_wh == 1000 and t.objects["0%0:96.1.4"] == ["50217"]
    with pytest.raises(ValueFormatError, match="register line"):
        parse_telegram(telegram("1-0:1.8.1 000001.000*kWh"))
    with pytest.raises(ValueFormatError, match="no closing"):
        parse_telegram(telegram("1-0:1.8.1(000001.000*kWh"))


def test_value_broken_over_two_lines() -> None:
    t = parse_telegram(telegram("0-0:96.13.0(3031", "3233)", "1-0:1.8.1(000001.000*kWh)"))
    assert t.objects["0-0:96.13.0"] == ["30313233"] and t.import_t1_wh == 1000


def test_decode_equipment_id() -> None:
    assert decode_equipment_id("4530303334") == "E0034"
    assert decode_equipment_id("4b38") == "K8"
    for raw in ["00000000000000", "0123456789ABCDEF", "ADC3100000158491", "serienummer", "453"]:
        assert decode_equipment_id(raw) == raw
    # not strictly hex pairs: blanks between pairs, non-ASCII digits, a sign
    for raw in ["45 30", "45\t30", "\uff14\uff15", "+453", "4530 "]:
        assert decode_equipment_id(raw) == raw


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from("0123456789abcdefABCDEF 7e\t\xff\uff10g"), max_size=12))
def test_decode_equipment_id_decodes_exactly_printable_ascii_hex(raw: str) -> None:
    parser_mod._ids.clear()
    pairs = len(raw) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in raw)
    text = "".join(chr(int(raw[i : i + 2], 16)) for i in range(0, len(raw), 2)) if pairs else ""
    printable = all(" " <= c <= "~" for c in text)
    assert decode_equipment_id(raw) == (text if pairs and printable else raw)


@pytest.mark.parametrize(
    "line",
    [
        "1-0:1.8.1(9999999999999999999999.999*kWh)",  # the fast path's shape, 25 digits
        "1-0:1.8.1(1000000000000000.000*kWh)",  # 19 digits in Wh
        "1-0:1.8.1(1000000000000000000*Wh)",
        "0-1:24.2.1(230101120000W)(1000000000000000.000*m3)",
    ],
)
def test_a_register_has_at_most_18_digits(line: str) -> None:
    """Beyond 18 digits in Wh or dm³ no meter counts, and no int8 column holds it: a CRC-valid
    telegram carrying one is refused with bad-value, not handed on."""
    lines = ["/ISK5\\2M550T-1012", "", "0-0:96.1.1(4530303034303031)", line]
    if line.startswith("0-1"):
        lines.insert(3, "0-1:24.1.0(003)")
    body = "\r\n".join(lines) + "\r\n!"
    raw = (body + f"{crc16_arc(body.encode()):04X}\r\n").encode()
    with pytest.raises(ValueFormatError, match="more than 18 digits"):
        parser_mod.parse_telegram(raw)
    largest = raw.replace(b"1000000000000000", b"999999999999999").replace(
        b"9999999999999999999999.999", b"999999999999999.999"
    )
    body2 = largest.split(b"!")[0] + b"!"
    fixed = body2 + f"{crc16_arc(body2):04X}\r\n".encode()
    parsed = parser_mod.parse_telegram(fixed)
    assert parsed is not None


# -- timestamps follow the zone rules; a contradicting S/W flag is reported --------------------


def test_summer_flag_in_february_follows_the_calendar() -> None:
    # the Iskra IE sample, a real telegram: 0-0:1.0.0(230202132747S), "S" in February
    t = parse_telegram(fixture("dsmrparser_ie_iskra_ie5.txt"))
    assert t.timestamp == utc(2023, 2, 2, 12, 27, 47)  # CET, not the flag's UTC+2
    assert t.dst_flag_mismatch is True
    # the same telegram from the layout cache (second sight) says the same
    again = parse_telegram(fixture("dsmrparser_ie_iskra_ie5.txt"))
    assert (again.timestamp, again.dst_flag_mismatch) == (t.timestamp, True)


def test_flags_that_agree_with_the_calendar_are_no_mismatch() -> None:
    for name in ("nodedsmr_v5_nl_iskra_am550.txt", "dsmrparser_v4.2_nl_kaifa.txt"):
        assert parse_telegram(fixture(name)).dst_flag_mismatch is False


def test_m_bus_capture_flag_contradicting_the_calendar() -> None:
    # AM550 (real): telegram time 181106140429W agrees; its gas capture time made to say S
    data = AM550.replace(b"(181106140010W)", b"(181106140010S)")
    t = parse_telegram(with_crc(data[: data.index(b"!") + 1]))
    assert t.timestamp == utc(2018, 11, 6, 13, 4, 29)
    assert t.mbus[0].measured_at == utc(2018, 11, 6, 13, 0, 10)  # CET, as the calendar says
    assert t.dst_flag_mismatch is True


# -- energy registers on a channel B other than 0 ------------------------------------------------

XT211 = fixture("written_v5_sagemcom_xt211_channel1_registers.txt")
XT211_REGISTERS = (4512873, 3977104, 812330, 1904067)


def registers(t: Telegram) -> tuple[int | None, ...]:
    return (t.import_t1_wh, t.import_t2_wh, t.export_t1_wh, t.export_t2_wh)


def test_registers_on_channel_1_are_read() -> None:
    for _ in range(3):  # first sight, second sight (layout learnt), layout cache
        t = parse_telegram(XT211)
        assert registers(t) == XT211_REGISTERS
        assert (t.import_total_wh, t.export_total_wh) == (None, None)
        assert t.meter_id == "XT2110000000015"


def test_a_real_telegram_moved_to_channel_1_reads_the_same() -> None:
    # the AM550 capture with its energy registers sent as 1-1:… (as an XT211 does)
    body = AM550[: AM550.index(b"!") + 1]
    moved = with_crc(
        body.replace(b"\n1-0:1.8.", b"\n1-1:1.8.").replace(b"\n1-0:2.8.", b"\n1-1:2.8.")
    )
    assert b"1-1:1.8.1(" in moved and b"1-0:1.8.1(" not in moved
    assert registers(parse_telegram(moved)) == registers(parse_telegram(AM550))


def test_channel_0_wins_when_present() -> None:
    body = XT211[: XT211.index(b"!")]
    both = with_crc(body + b"1-0:1.8.1(000001.000*kWh)\r\n1-0:1.8.2(000002.000*kWh)\r\n!")
    t = parse_telegram(both)
    assert registers(t) == (1000, 2000, None, None)
    assert t.objects["1-1:1.8.1"] == ["004512.873*kWh"]  # kept raw, not read


def test_registers_on_two_channels_are_ambiguous() -> None:
    body = XT211[: XT211.index(b"!")]
    two = with_crc(body + b"1-2:1.8.1(000001.000*kWh)\r\n!")
    with pytest.raises(AmbiguousRegistersError, match=r"channels 1-1: and 1-2:") as info:
        parse_telegram(two)
    assert info.value.reason == "ambiguous-registers"
    assert isinstance(info.value, ValueFormatError)


def test_channel_register_line_without_value_is_rejected() -> None:
    body = XT211[: XT211.index(b"!")]
    with pytest.raises(ValueFormatError, match=r"register line '1-2:2\.8\.0' has no value"):
        parse_telegram(with_crc(body + b"1-2:2.8.0\r\n!"))


def test_a_bad_value_on_channel_1_is_rejected_like_on_channel_0() -> None:
    bad = with_crc(XT211[: XT211.index(b"!") + 1].replace(b"(004512.873*kWh)", b"(0045x2.873*kWh)"))
    with pytest.raises(ValueFormatError, match=r"1-1:1\.8\.1"):
        parse_telegram(bad)


def test_equipment_id_cache_holds_a_fleet_of_tens_of_thousands() -> None:
    """A gateway worker sees every meter of its fleet in turn: 20 000 meters (far above the old
    bound of 4096, which was cleared when full) stay cached once seen, and the cache stays
    bounded when junk ids pour in, keeping the newest."""
    parser_mod._ids.clear()
    fleet = [f"E{n:016d}".encode().hex().upper() for n in range(20_000)]
    for raw in fleet:
        decode_equipment_id(raw)
    assert len(parser_mod._ids) == len(fleet)
    for raw in fleet:  # a second round: every id is a hit, nothing is evicted
        assert parser_mod._ids.get(raw) == decode_equipment_id(raw)
    assert len(parser_mod._ids) == len(fleet)
    junk = [f"junk{n}" for n in range(parser_mod._IDS_MAX + 10)]
    for raw in junk:
        assert decode_equipment_id(raw) == raw
    assert len(parser_mod._ids) <= parser_mod._IDS_MAX
    assert len(parser_mod._ids) >= parser_mod._IDS_MAX * 3 // 4
    assert junk[-1] in parser_mod._ids and fleet[0] not in parser_mod._ids
    parser_mod._ids.clear()
