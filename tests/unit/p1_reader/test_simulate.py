"""The simulator: valid DSMR 5 telegrams with realistic, monotonic registers and correct clocks."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from p1_reader.cli import main
from p1_reader.framing import Framer
from p1_reader.parser import parse_telegram
from p1_reader.simulate import (
    batches,
    generate,
    generate_timed,
    has_gas,
    is_low_tariff,
    make_meters,
    meter_ids,
)
from p1_reader.telegram import Telegram
from p1_reader.timestamps import LOCAL_TZ


def parsed_day(start: datetime, hours: int = 24, meters: int = 3, **kw: object) -> list[Telegram]:
    fleet = make_meters(meters, seed=2, gas_fraction=1.0, **kw)  # type: ignore[arg-type]
    return [parse_telegram(t, require_crc=True) for t in generate(fleet, start, hours * 3600)]


def test_ids_are_deterministic_and_gas_follows_the_fraction() -> None:
    ids = meter_ids(1000, seed=9, gas_fraction=0.8)
    assert ids[0][0] == "E0000000000000001"
    assert ids[-1][0] == "E0000000000001000"
    with_gas = [g for _, g in ids if g is not None]
    assert 700 < len(with_gas) < 900
    assert all(g == "G" + e[1:] for e, g in ids if g is not None)
    assert ids == meter_ids(1000, seed=9, gas_fraction=0.8)
    assert ids != meter_ids(1000, seed=10, gas_fraction=0.8)
    meters = make_meters(1000, seed=9, gas_fraction=0.8)
    assert [(m.meter_id, m.gas_id) for m in meters] == ids
    assert meter_ids(2, first=41)[0][0] == "E0000000000000041"
    assert not has_gas(5, seed=1, gas_fraction=0.0) and has_gas(5, seed=1, gas_fraction=1.0)


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    start = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)

    def run(seed: int) -> list[bytes]:
        return list(generate(make_meters(3, seed=seed), start, 120))

    assert run(4) == run(4)
    assert run(4) != run(5)


def test_telegrams_are_valid_dsmr5_with_crc_and_frame_cleanly() -> None:
    start = datetime(2026, 1, 5, 8, 0, tzinfo=LOCAL_TZ)
    stream = b"".join(generate(make_meters(4, seed=3), start, 600))
    framer = Framer()
    frames = framer.feed(stream)
    assert len(frames) == 4 * 60
    assert all(f.crc_ok for f in frames)
    assert framer.stats.skipped_bytes == 0
    for frame in frames:
        telegram = parse_telegram(frame.data, require_crc=True)
        assert telegram.version == "50" and telegram.crc_valid
        assert telegram.meter_id is not None and telegram.meter_id.startswith("E")


def test_registers_are_monotonic_and_grow_with_power() -> None:
    series: dict[str | None, list[Telegram]] = defaultdict(list)
    for t in parsed_day(datetime(2026, 2, 2, 0, 0, tzinfo=LOCAL_TZ), meters=2):
        series[t.meter_id].append(t)
    assert len(series) == 2
    for telegrams in series.values():
        assert len(telegrams) == 8640
        for a, b in itertools.pairwise(telegrams):
            for field in ("import_t1_wh", "import_t2_wh", "export_t1_wh", "export_t2_wh"):
                assert getattr(b, field) >= getattr(a, field)
            assert b.mbus[0].value is not None and a.mbus[0].value is not None
            assert b.mbus[0].value >= a.mbus[0].value
        first, last = telegrams[0], telegrams[-1]
        assert first.import_t1_wh is not None and last.import_t1_wh is not None
        assert first.import_t2_wh is not None and last.import_t2_wh is not None
        used = last.import_t1_wh + last.import_t2_wh - first.import_t1_wh - first.import_t2_wh
        # a household day: a few kWh, not nothing, not a factory
        assert 1_000 < used < 60_000
        gas = telegrams[-1].mbus[0].value - telegrams[0].mbus[0].value  # type: ignore[operator]
        assert 100 < gas < 10_000  # dm3


def test_tariff_switches_at_23_and_7_and_weekends() -> None:
    assert is_low_tariff(datetime(2026, 3, 4, 23, 0, tzinfo=LOCAL_TZ))  # Wednesday night
    assert is_low_tariff(datetime(2026, 3, 5, 6, 59, tzinfo=LOCAL_TZ))
    assert not is_low_tariff(datetime(2026, 3, 5, 7, 0, tzinfo=LOCAL_TZ))
    assert not is_low_tariff(datetime(2026, 3, 6, 22, 59, tzinfo=LOCAL_TZ))  # Friday evening
    assert is_low_tariff(datetime(2026, 3, 7, 12, 0, tzinfo=LOCAL_TZ))  # Saturday noon
    for t in parsed_day(datetime(2026, 3, 6, 12, 0, tzinfo=LOCAL_TZ), hours=36, meters=1):
        assert t.timestamp is not None
        local = t.timestamp.astimezone(LOCAL_TZ)
        assert t.tariff == (1 if is_low_tariff(local) else 2)


def test_only_the_register_of_the_active_tariff_moves() -> None:
    telegrams = parsed_day(datetime(2026, 3, 5, 12, 0, tzinfo=LOCAL_TZ), hours=14, meters=1)
    for a, b in itertools.pairwise(telegrams):
        if b.tariff == 1:
            assert b.import_t2_wh == a.import_t2_wh and b.export_t2_wh == a.export_t2_wh
        else:
            assert b.import_t1_wh == a.import_t1_wh and b.export_t1_wh == a.export_t1_wh


def test_gas_is_captured_every_five_minutes_with_its_own_timestamp() -> None:
    telegrams = parsed_day(datetime(2026, 1, 20, 6, 0, tzinfo=LOCAL_TZ), hours=2, meters=1)
    captures = {}
    for t in telegrams:
        (gas,) = t.mbus
        assert gas.device_type == 3 and gas.meter_id == "G0000000000000001"
        assert gas.measured_at is not None and t.timestamp is not None
        assert gas.measured_at.timestamp() % 300 == 0
        assert timedelta(0) <= t.timestamp - gas.measured_at < timedelta(minutes=5)
        # the value belongs to the capture: the same capture time always shows the same value
        assert captures.setdefault(gas.measured_at, gas.value) == gas.value
    assert len(captures) == 24


@pytest.mark.parametrize(
    ("start", "flags"),
    [
        # spring forward: 02:00 W → 03:00 S
        (datetime(2026, 3, 29, 1, 0, tzinfo=LOCAL_TZ), {"W", "S"}),
        # fall back: 03:00 S → 02:00 W, the hour 02:00–03:00 is repeated
        (datetime(2026, 10, 25, 1, 0, tzinfo=LOCAL_TZ), {"W", "S"}),
    ],
)
def test_dst_flags_make_time_run_forward(start: datetime, flags: set[str]) -> None:
    telegrams = parsed_day(start, hours=3, meters=1)
    raw_flags = {t.objects["0-0:1.0.0"][0][-1] for t in telegrams}
    assert raw_flags == flags
    times = [t.timestamp for t in telegrams]
    assert all(a is not None and b is not None and b - a == timedelta(seconds=10)
               for a, b in itertools.pairwise(times))
    for t in telegrams:
        assert t.timestamp is not None
        dst = t.timestamp.astimezone(LOCAL_TZ).dst()
        assert t.objects["0-0:1.0.0"][0][-1] == ("S" if dst else "W")


def test_each_meter_sends_every_interval_at_its_own_phase() -> None:
    meters = make_meters(50, seed=8, interval=10)
    start = 1_780_000_000
    seen: dict[int, list[int]] = defaultdict(list)
    by_id = {m.meter_id: m for m in meters}
    for t, telegram in generate_timed(meters, start, 60):
        meter = parse_telegram(telegram).meter_id
        assert meter is not None
        seen[by_id[meter].index].append(t)
    assert len(seen) == 50
    assert all(len(ts) == 6 and all(b - a == 10 for a, b in itertools.pairwise(ts))
               for ts in seen.values())
    assert len({m.phase for m in meters}) > 5  # spread over the interval


def test_batches_join_bodies() -> None:
    items = [b"a", b"b", b"c", b"d", b"e"]
    assert list(batches(items, 2)) == [(2, b"ab"), (2, b"cd"), (1, b"e")]


def test_time_going_back_is_refused() -> None:
    (meter,) = make_meters(1)
    meter.telegram_at(1_780_000_100)
    with pytest.raises(ValueError, match="time went back"):
        meter.telegram_at(1_780_000_000)


def test_cli_writes_a_file_and_lists_meters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "telegrams.txt"
    code = main([
        "simulate", "--meters", "2", "--speed", "0", "--start", "2026-03-29T01:59:00",
        "--duration", "2m", "--seed", "4", "--output", str(out),
    ])
    assert code == 0
    frames = Framer().feed(out.read_bytes())
    assert len(frames) == 2 * 12 and all(f.crc_ok for f in frames)
    stamps = [parse_telegram(f.data).objects["0-0:1.0.0"][0] for f in frames]
    assert stamps[0].startswith("2603290159") and stamps[0].endswith("W")
    assert stamps[-1].startswith("26032903") and stamps[-1].endswith("S")
    assert main(["simulate", "--meters", "3", "--list-meters", "--gas-fraction", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == '{"meter_id": "E0000000000000001", "gas_id": "G0000000000000001"}'
    assert len(lines) == 3


def test_simulated_telegrams_agree_with_the_reference_encoder() -> None:
    """The simulator formats telegrams itself (fast, for load tests); the project's encoder built
    from the same values must read back identically."""
    from p1_reader.encode import GasReading, format_telegram

    start = datetime(2026, 10, 25, 2, 30, tzinfo=LOCAL_TZ)
    for raw in generate(make_meters(3, seed=6, gas_fraction=1.0), start, 30):
        sim = parse_telegram(raw, require_crc=True)
        assert sim.timestamp is not None and sim.meter_id is not None
        (gas,) = sim.mbus
        assert gas.measured_at is not None and gas.value is not None and gas.meter_id
        ref = parse_telegram(
            format_telegram(
                meter_id=sim.meter_id,
                timestamp=sim.timestamp.astimezone(LOCAL_TZ),
                import_t1_wh=sim.import_t1_wh or 0,
                import_t2_wh=sim.import_t2_wh or 0,
                export_t1_wh=sim.export_t1_wh or 0,
                export_t2_wh=sim.export_t2_wh or 0,
                tariff=sim.tariff or 1,
                gas=GasReading(gas.measured_at.astimezone(LOCAL_TZ), gas.value, gas.meter_id),
            ),
            require_crc=True,
        )
        for name in ("meter_id", "timestamp", "import_t1_wh", "import_t2_wh", "export_t1_wh",
                     "export_t2_wh", "tariff"):
            assert getattr(ref, name) == getattr(sim, name), name
        assert ref.mbus[0].measured_at == gas.measured_at and ref.mbus[0].value == gas.value
