"""Build DSMR telegrams: for the simulator, demos, load tests and round-trip tests.

:func:`format_telegram` writes a DSMR 5.0.2 telegram (CRC-16/ARC appended);
:func:`format_telegram_v22` writes a DSMR 2.2-style one (no telegram timestamp, gas value on
the line after ``0-1:24.3.0``, no CRC). Both return the exact bytes with CRLF line ends.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from .crc import crc16_arc, format_crc
from .timestamps import format_tst, format_tst12

__all__ = ["GasReading", "format_telegram", "format_telegram_v22"]


@dataclass(frozen=True, slots=True)
class GasReading:
    """A gas meter behind the E-meter, as it appears on an M-Bus channel."""

    #: capture time of the value (aware datetime)
    measured_at: datetime
    #: meter reading in dm3 (litres)
    volume_dm3: int
    #: equipment id (sent hex-encoded on 0-n:96.1.0)
    meter_id: str = "G0012345678901234"
    channel: int = 1


def format_telegram(
    *,
    meter_id: str,
    timestamp: datetime,
    import_t1_wh: int,
    import_t2_wh: int,
    export_t1_wh: int = 0,
    export_t2_wh: int = 0,
    tariff: int = 1,
    power_w: int = 0,
    export_power_w: int = 0,
    gas: GasReading | None = None,
    header: str = "/XMX5LGBBFG1012345678",
    version: str = "50",
    extra_lines: Sequence[str] = (),
    shuffle_seed: int | None = None,
) -> bytes:
    """A DSMR 5 telegram: header, blank line, ``1-3:0.2.8``, ``0-0:1.0.0`` (local time with
    S/W), hex-encoded ``0-0:96.1.1``, the four registers (kWh, 3 decimals), tariff, actual
    power, optional gas channel with its own capture time, ``extra_lines`` as given (without
    CRLF), then ``!`` and the CRC. ``shuffle_seed`` shuffles the data lines (meters may send
    them in any order)."""
    lines = [
        f"1-3:0.2.8({version})",
        f"0-0:1.0.0({format_tst(timestamp)})",
        f"0-0:96.1.1({_hex_id(meter_id)})",
        f"1-0:1.8.1({_kwh(import_t1_wh, 6)}*kWh)",
        f"1-0:1.8.2({_kwh(import_t2_wh, 6)}*kWh)",
        f"1-0:2.8.1({_kwh(export_t1_wh, 6)}*kWh)",
        f"1-0:2.8.2({_kwh(export_t2_wh, 6)}*kWh)",
        f"0-0:96.14.0({_tariff(tariff)})",
        f"1-0:1.7.0({_kwh(power_w, 2)}*kW)",
        f"1-0:2.7.0({_kwh(export_power_w, 2)}*kW)",
    ]
    if gas is not None:
        ch = _channel(gas.channel)
        lines += [
            f"0-{ch}:24.1.0(003)",
            f"0-{ch}:96.1.0({_hex_id(gas.meter_id)})",
            f"0-{ch}:24.2.1({format_tst(gas.measured_at)})({_kwh(gas.volume_dm3, 5)}*m3)",
        ]
    lines += _checked_extra(extra_lines)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(lines)
    frame = "\r\n".join([_header(header), "", *lines, "!"]).encode("latin-1")
    return frame + format_crc(crc16_arc(frame)).encode("ascii") + b"\r\n"


def format_telegram_v22(
    *,
    meter_id: str,
    import_t1_wh: int,
    import_t2_wh: int,
    export_t1_wh: int = 0,
    export_t2_wh: int = 0,
    tariff: int = 1,
    power_w: int = 0,
    gas: GasReading | None = None,
    header: str = "/ISk5\\2MT382-1004",
    extra_lines: Sequence[str] = (),
) -> bytes:
    """A DSMR 2.2-style telegram: no version, no telegram timestamp, 10 W power resolution,
    gas as ``0-1:24.3.0(TST12)(00)(60)(1)(0-1:24.2.1)(m3)`` with the value on the next line,
    and ``!`` without a CRC. The gas TST12 has no S/W flag, so a capture time inside the
    repeated October hour reads back as its first (summer-time) occurrence."""
    lines = [
        f"0-0:96.1.1({_hex_id(meter_id)})",
        f"1-0:1.8.1({_kwh(import_t1_wh, 5)}*kWh)",
        f"1-0:1.8.2({_kwh(import_t2_wh, 5)}*kWh)",
        f"1-0:2.8.1({_kwh(export_t1_wh, 5)}*kWh)",
        f"1-0:2.8.2({_kwh(export_t2_wh, 5)}*kWh)",
        f"0-0:96.14.0({_tariff(tariff)})",
        f"1-0:1.7.0({power_w // 1000:04d}.{power_w // 10 % 100:02d}*kW)",
        "0-0:96.13.1()",
        "0-0:96.13.0()",
    ]
    if gas is not None:
        ch = _channel(gas.channel)
        lines += [
            f"0-{ch}:24.1.0(3)",
            f"0-{ch}:96.1.0({_hex_id(gas.meter_id)})",
            f"0-{ch}:24.3.0({format_tst12(gas.measured_at)})(00)(60)(1)(0-{ch}:24.2.1)(m3)",
            f"({_kwh(gas.volume_dm3, 5)})",
        ]
    lines += _checked_extra(extra_lines)
    return "\r\n".join([_header(header), "", *lines, "!", ""]).encode("latin-1")


def _kwh(milli: int, width: int) -> str:
    """An integer in thousandths as ``F(width+3, 3)``: 3808351 → '003808.351' (width 6)."""
    if milli < 0:
        raise ValueError(f"register values cannot be negative: {milli}")
    return f"{milli // 1000:0{width}d}.{milli % 1000:03d}"


def _tariff(tariff: int) -> str:
    if not 0 <= tariff <= 9999:
        raise ValueError(f"tariff {tariff} does not fit S4")
    return f"{tariff:04d}"


def _channel(channel: int) -> int:
    if not 1 <= channel <= 4:
        raise ValueError(f"M-Bus channel {channel} is not 1..4")
    return channel


def _hex_id(meter_id: str) -> str:
    if not meter_id.isascii() or not meter_id.isprintable() or len(meter_id) > 48:
        raise ValueError(f"equipment id {meter_id!r} must be 0..48 printable ASCII characters")
    return meter_id.encode("ascii").hex().upper()


def _header(header: str) -> str:
    if not header.startswith("/"):
        header = "/" + header
    if any(c in header for c in "\r\n!"):
        raise ValueError(f"header {header!r} must not contain CR, LF or '!'")
    return header


def _checked_extra(extra_lines: Sequence[str]) -> list[str]:
    for line in extra_lines:
        if any(c in line for c in "\r\n!") or "(" not in line:
            raise ValueError(f"extra line {line!r} must be one 'CODE(value)' line without '!'")
    return list(extra_lines)
