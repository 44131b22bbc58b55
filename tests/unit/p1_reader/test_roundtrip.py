"""Round trip: encode.format_telegram → parse_telegram gives back exactly what went in.

Timestamps are drawn around both DST changes of many years, including every second of the
repeated October hour; registers over the whole F9(3,3) range; optional lines; any line order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p1_reader.encode import GasReading, format_telegram, format_telegram_v22
from p1_reader.parser import parse_telegram
from p1_reader.timestamps import LOCAL_TZ


def last_sunday(year: int, month: int) -> datetime:
    day = datetime(year, month, 31, 1, 0, tzinfo=UTC)  # DST changes at 01:00 UTC
    return day - timedelta(days=(day.weekday() + 1) % 7)


@st.composite
def dst_instants(draw: st.DrawFn) -> datetime:
    """Whole seconds within ±3 h of a DST change (March or October) in 2001..2068."""
    change = last_sunday(draw(st.integers(2001, 2068)), draw(st.sampled_from([3, 10])))
    return change + timedelta(seconds=draw(st.integers(-3 * 3600, 3 * 3600)))


registers = st.integers(0, 999_999_999)  # F9(3,3): up to 999999.999 kWh
meter_ids = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=48)
EXTRA = [
    "1-0:32.7.0(230.1*V)",
    "1-0:31.7.0(001*A)",
    "0-0:96.7.21(00004)",
    "1-0:99.97.0(1)(0-0:96.7.19)(180529135630S)(0000002451*s)",
    "0-0:96.13.0()",
    "1-0:21.7.0(01.111*kW)",
]


@settings(max_examples=300, deadline=None)
@given(
    timestamp=dst_instants(),
    meter_id=meter_ids,
    regs=st.tuples(registers, registers, registers, registers),
    tariff=st.integers(1, 2),
    power_w=st.integers(0, 99_999),
    gas=st.none()
    | st.builds(
        GasReading,
        measured_at=dst_instants(),
        volume_dm3=st.integers(0, 99_999_999),
        meter_id=meter_ids,
        channel=st.integers(1, 4),
    ),
    extra=st.lists(st.sampled_from(EXTRA), unique=True),
    seed=st.none() | st.integers(0, 2**32),
)
def test_dsmr5_round_trip(
    timestamp: datetime,
    meter_id: str,
    regs: tuple[int, int, int, int],
    tariff: int,
    power_w: int,
    gas: GasReading | None,
    extra: list[str],
    seed: int | None,
) -> None:
    data = format_telegram(
        meter_id=meter_id,
        timestamp=timestamp,
        import_t1_wh=regs[0],
        import_t2_wh=regs[1],
        export_t1_wh=regs[2],
        export_t2_wh=regs[3],
        tariff=tariff,
        power_w=power_w,
        gas=gas,
        extra_lines=extra,
        shuffle_seed=seed,
    )
    t = parse_telegram(data, require_crc=True)
    assert t.crc_valid is True
    assert t.version == "50"
    assert t.timestamp == timestamp
    assert t.meter_id == meter_id
    assert (t.import_t1_wh, t.import_t2_wh, t.export_t1_wh, t.export_t2_wh) == regs
    assert t.tariff == tariff
    assert t.objects["1-0:1.7.0"] == [f"{power_w // 1000:02d}.{power_w % 1000:03d}*kW"]
    for line in extra:
        code, _, rest = line.partition("(")
        assert t.objects[code] == rest[:-1].split(")(")
    if gas is None:
        assert t.mbus == ()
    else:
        (device,) = t.mbus
        assert device.channel == gas.channel and device.device_type == 3
        assert device.measured_at == gas.measured_at
        assert (device.value, device.unit) == (gas.volume_dm3, "dm3")
        assert device.meter_id == gas.meter_id


@settings(max_examples=100, deadline=None)
@given(
    meter_id=meter_ids,
    regs=st.tuples(registers, registers, registers, registers),
    gas_at=dst_instants(),
    volume=st.integers(0, 99_999_999),
)
def test_dsmr22_round_trip(
    meter_id: str, regs: tuple[int, int, int, int], gas_at: datetime, volume: int
) -> None:
    data = format_telegram_v22(
        meter_id=meter_id,
        import_t1_wh=regs[0],
        import_t2_wh=regs[1],
        export_t1_wh=regs[2],
        export_t2_wh=regs[3],
        gas=GasReading(measured_at=gas_at, volume_dm3=volume),
    )
    t = parse_telegram(data)
    assert t.crc_valid is None and t.timestamp is None
    assert (t.import_t1_wh, t.import_t2_wh, t.export_t1_wh, t.export_t2_wh) == regs
    (device,) = t.mbus
    assert device.value == volume
    # TST12 has no S/W flag: the repeated October hour reads back as its summer occurrence
    local = gas_at.astimezone(LOCAL_TZ)
    first = local.replace(fold=0).astimezone(UTC)
    assert device.measured_at == first
    if local.replace(fold=0).utcoffset() == local.replace(fold=1).utcoffset():
        assert device.measured_at == gas_at


def test_format_rejects_bad_input() -> None:
    now = datetime(2020, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="negative"):
        format_telegram(meter_id="E1", timestamp=now, import_t1_wh=-1, import_t2_wh=0)
    with pytest.raises(ValueError, match="printable ASCII"):
        format_telegram(meter_id="E\n1", timestamp=now, import_t1_wh=1, import_t2_wh=0)
    with pytest.raises(ValueError, match="extra line"):
        format_telegram(
            meter_id="E1", timestamp=now, import_t1_wh=1, import_t2_wh=0, extra_lines=["!x"]
        )
    with pytest.raises(ValueError, match="channel"):
        format_telegram(
            meter_id="E1",
            timestamp=now,
            import_t1_wh=1,
            import_t2_wh=0,
            gas=GasReading(measured_at=now, volume_dm3=1, channel=5),
        )


def test_v22_power_resolution() -> None:
    data = format_telegram_v22(meter_id="X", import_t1_wh=0, import_t2_wh=0, power_w=1019)
    assert parse_telegram(data).objects["1-0:1.7.0"] == ["0001.01*kW"]
