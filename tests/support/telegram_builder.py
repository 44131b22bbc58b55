"""A small, independent DSMR 5 telegram writer for ingest tests (registers we choose, exact)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from p1_reader.crc import crc16_arc

AMS = ZoneInfo("Europe/Amsterdam")


def tst(t: datetime | None) -> str:
    """A DSMR timestamp (local time + S/W flag); the unset-clock placeholder for None."""
    if t is None:
        return "000101010000W"
    local = t.astimezone(AMS)
    flag = "S" if local.dst() else "W"
    return local.strftime("%y%m%d%H%M%S") + flag


def _kwh(wh: int) -> str:
    return f"{wh // 1000:06d}.{wh % 1000:03d}*kWh"


def build_telegram(
    meter_id: str | None,
    t: datetime | None,
    *,
    import_wh: tuple[int, int] = (1_000_000, 2_000_000),
    export_wh: tuple[int, int] = (0, 0),
    totals_only: bool = False,
    gas: tuple[str, datetime | None, int] | None = None,
    power_w: int = 1234,
    bad_crc: bool = False,
) -> bytes:
    """A DSMR 5 telegram; ``gas`` is (gas meter id, capture time, volume in dm³)."""
    lines = ["/ISK5\\2M550T-1012", "", "1-3:0.2.8(50)", f"0-0:1.0.0({tst(t)})"]
    if meter_id is not None:
        lines.append(f"0-0:96.1.1({meter_id.encode().hex().upper()})")
    if totals_only:
        lines.append(f"1-0:1.8.0({_kwh(sum(import_wh))})")
        lines.append(f"1-0:2.8.0({_kwh(sum(export_wh))})")
    else:
        lines.append(f"1-0:1.8.1({_kwh(import_wh[0])})")
        lines.append(f"1-0:1.8.2({_kwh(import_wh[1])})")
        lines.append(f"1-0:2.8.1({_kwh(export_wh[0])})")
        lines.append(f"1-0:2.8.2({_kwh(export_wh[1])})")
    lines.append("0-0:96.14.0(0002)")
    lines.append(f"1-0:1.7.0({power_w // 1000:02d}.{power_w % 1000:03d}*kW)")
    lines.append("1-0:2.7.0(00.000*kW)")
    if gas is not None:
        gas_id, captured, dm3 = gas
        lines.append("0-1:24.1.0(003)")
        lines.append(f"0-1:96.1.0({gas_id.encode().hex().upper()})")
        lines.append(f"0-1:24.2.1({tst(captured)})({dm3 // 1000:05d}.{dm3 % 1000:03d}*m3)")
    body = ("\r\n".join(lines) + "\r\n!").encode("ascii")
    crc = crc16_arc(body) ^ (1 if bad_crc else 0)
    return body + f"{crc:04X}\r\n".encode("ascii")
