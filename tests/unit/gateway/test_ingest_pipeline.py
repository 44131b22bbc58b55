"""The ingest pipeline without I/O: outcomes, rows, the best-measured cache, body splitting."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.ingest.best_cache import BestCache
from gateway.ingest.consent_index import ConsentIndex
from gateway.ingest.pipeline import IngestPipeline, split_body
from gateway.ingest.sql import E_P1D, E_P1M, E_PT15M, G_P1D, G_P1M, G_PT1H, merge_into, new_batch
from gateway.storage.schema import REGISTER_MAX
from p1_reader.crc import crc16_arc
from tests.support.index_rows import split_rows
from tests.support.telegram_builder import build_telegram

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "telegrams"
NOW = datetime(2026, 10, 25, 12, 0, tzinfo=UTC)
NOW_S = int(NOW.timestamp())
EAN_E, EAN_G, EAN_N, EAN_I = (
    "871234567890123456",
    "871234567890123457",
    "871234567890123458",
    "871234567890123459",
)
START = NOW - timedelta(days=100)


def conn_row(
    ean: str, meter_id: str, commodity: str = "electricity", level: str = "daily"
) -> dict[str, Any]:
    return {
        "ean": ean,
        "ean_num": int(ean),
        "commodity": commodity,
        "meter_id": meter_id,
        "contract_start": START,
        "contract_end": None,
        "level": level,
    }


def consent_row(ean: str) -> dict[str, Any]:
    return {
        "ean": ean,
        "consent_id": uuid.uuid4(),
        "customer_id": "c",
        "purpose": "energy-insights",
        "notice_version": "v1",
        "granted_at": START,
        "expires_at": None,
        "ended_at": None,
        "end_reason": None,
        "channel": "api",
        "data_class": "interval",
    }


@pytest.fixture
def pipeline() -> IngestPipeline:
    idx = ConsentIndex()
    idx.replace_all(
        *split_rows(
            [
                conn_row(EAN_E, "E1"),
                conn_row(EAN_G, "G1", "gas"),
                conn_row(EAN_N, "N1", level="none"),
                conn_row(EAN_I, "I1"),
            ],
            [consent_row(EAN_I), consent_row(EAN_G)],
        )
    )
    return IngestPipeline(idx, BestCache())


BOUND = frozenset({"E1", "G1", "N1", "I1"})


def ts(t: datetime) -> int:
    return int(t.timestamp())


def test_daily_electricity_rows(pipeline: IngestPipeline) -> None:
    t = NOW - timedelta(minutes=3)
    telegram = build_telegram("E1", t, import_wh=(5, 6), export_wh=(7, 8))
    r = pipeline.process([telegram], BOUND, NOW_S)
    assert (r.accepted, r.rejected) == (1, [])
    assert r.batch[E_PT15M] == {}
    day = ts(datetime(2026, 10, 24, 22, tzinfo=UTC))  # the 25-hour local day
    month = ts(datetime(2026, 9, 30, 22, tzinfo=UTC))
    assert r.batch[E_P1D] == {(int(EAN_E), day): (int(EAN_E), day, ts(t), 5, 6, 7, 8)}
    assert r.batch[E_P1M] == {(int(EAN_E), month): (int(EAN_E), month, ts(t), 5, 6, 7, 8)}
    assert r.rows == 2


def test_interval_consent_adds_quarter(pipeline: IngestPipeline) -> None:
    t = NOW - timedelta(minutes=3)  # 11:57 UTC → quarter 11:45
    r = pipeline.process([build_telegram("I1", t)], BOUND, NOW_S)
    q = ts(datetime(2026, 10, 25, 11, 45, tzinfo=UTC))
    assert list(r.batch[E_PT15M]) == [(int(EAN_I), q)]


def test_gas_uses_capture_time_not_telegram_time(pipeline: IngestPipeline) -> None:
    captured = NOW - timedelta(minutes=65)  # 10:55 → hour 10:00
    t = NOW - timedelta(minutes=1)
    r = pipeline.process([build_telegram("X9", t, gas=("G1", captured, 12345))], BOUND, NOW_S)
    assert r.accepted == 1
    h = ts(datetime(2026, 10, 25, 10, tzinfo=UTC))
    assert r.batch[G_PT1H] == {(int(EAN_G), h): (int(EAN_G), h, ts(captured), 12345)}
    assert len(r.batch[G_P1D]) == 1 and len(r.batch[G_P1M]) == 1
    assert all(not r.batch[i] for i in (E_PT15M, E_P1D, E_P1M))  # X9 is not bound: ignored


def test_totals_only_meter_stores_total_in_t1(pipeline: IngestPipeline) -> None:
    t = NOW - timedelta(minutes=3)
    r = pipeline.process(
        [build_telegram("E1", t, import_wh=(1000, 234), export_wh=(5, 0), totals_only=True)],
        BOUND,
        NOW_S,
    )
    (row,) = r.batch[E_P1D].values()
    assert row[3:] == (1234, None, 5, None)


def test_level_none_is_accepted_and_stores_nothing(pipeline: IngestPipeline) -> None:
    r = pipeline.process([build_telegram("N1", NOW)], BOUND, NOW_S)
    assert (r.accepted, r.rejected, r.rows) == (1, [], 0)
    assert sum(r.withheld.values()) == 3


@pytest.mark.parametrize(
    ("telegram", "reason"),
    [
        (build_telegram("E1", None), "clock-unset"),
        (build_telegram("E1", NOW + timedelta(minutes=6)), "future-timestamp"),
        (build_telegram("E1", NOW - timedelta(days=41)), "too-old"),
        (build_telegram("ZZ", NOW), "meter-not-bound"),
        (build_telegram("E1", NOW, bad_crc=True), "bad-crc"),
        (b"garbage\r\n", "bad-frame"),
        (build_telegram(None, NOW), "unknown-meter"),
    ],
)
def test_rejections(pipeline: IngestPipeline, telegram: bytes, reason: str) -> None:
    r = pipeline.process([telegram], BOUND, NOW_S)
    assert r.accepted == 0 and r.rows == 0
    assert [(x["index"], x["reason"]) for x in r.rejected] == [(0, reason)]
    assert r.rejected[0]["detail"]


def test_bound_but_unregistered_meter() -> None:
    p = IngestPipeline(ConsentIndex(), BestCache())
    r = p.process([build_telegram("E1", NOW)], frozenset({"E1"}), NOW_S)
    assert [x["reason"] for x in r.rejected] == ["unknown-meter"]


def test_outside_installation_and_contract_windows() -> None:
    """SPEC §3a: measured before the meter's installation → unknown-meter; installed but under
    no contract (after a move-out, before the next tenant) → no-contract; and inside the
    contract the reading is stored."""
    moved_out = NOW - timedelta(hours=2)
    installations = [
        {
            "ean": EAN_E,
            "ean_num": int(EAN_E),
            "commodity": "electricity",
            "meter_id": "E1",
            "installed_from": NOW - timedelta(days=10),
            "installed_until": None,
        }
    ]
    contracts = [
        {
            "ean": EAN_E,
            "contract_id": uuid.uuid4(),
            "contract_start": NOW - timedelta(days=5),
            "contract_end": moved_out,
            "level": "daily",
        }
    ]
    idx = ConsentIndex()
    idx.replace_all(installations, contracts, [])
    p = IngestPipeline(idx, BestCache())
    bound = frozenset({"E1"})
    cases = [
        (NOW - timedelta(days=11), "unknown-meter"),
        (NOW - timedelta(days=7), "no-contract"),
        (NOW - timedelta(hours=1), "no-contract"),
    ]
    for t, reason in cases:
        r = p.process([build_telegram("E1", t)], bound, NOW_S)
        assert [x["reason"] for x in r.rejected] == [reason], t
        assert r.rejected[0]["detail"] and r.rows == 0
    r = p.process([build_telegram("E1", moved_out - timedelta(hours=1))], bound, NOW_S)
    assert r.accepted == 1 and r.rows > 0


def test_future_tolerance_is_five_minutes(pipeline: IngestPipeline) -> None:
    r = pipeline.process([build_telegram("E1", NOW + timedelta(minutes=5))], BOUND, NOW_S)
    assert r.accepted == 1


def test_outcomes_keep_indices_and_meters_apart(pipeline: IngestPipeline) -> None:
    parts = [
        build_telegram("E1", NOW - timedelta(minutes=1), import_wh=(1, 1)),
        build_telegram("ZZ", NOW - timedelta(minutes=1), import_wh=(2, 2)),
        build_telegram("I1", NOW - timedelta(minutes=1), import_wh=(3, 3)),
    ]
    r = pipeline.process(parts, BOUND, NOW_S)
    assert r.accepted == 2
    assert [(x["index"], x["reason"]) for x in r.rejected] == [(1, "meter-not-bound")]
    by_ean = {key[0]: row[3] for key, row in r.batch[E_P1D].items()}
    assert by_ean == {int(EAN_E): 1, int(EAN_I): 3}


def test_earliest_in_request_wins(pipeline: IngestPipeline) -> None:
    late = build_telegram("E1", NOW - timedelta(minutes=1), import_wh=(9, 9))
    early = build_telegram("E1", NOW - timedelta(minutes=2), import_wh=(8, 8))
    r = pipeline.process([late, early, late], BOUND, NOW_S)
    (row,) = r.batch[E_P1D].values()
    assert row[2:4] == (ts(NOW - timedelta(minutes=2)), 8)


def test_best_cache_skips_what_cannot_improve(pipeline: IngestPipeline) -> None:
    t = NOW - timedelta(minutes=2)
    first = pipeline.process([build_telegram("E1", t)], BOUND, NOW_S)
    for table, rows in enumerate(first.batch):
        for (ean, start), row in rows.items():
            pipeline.best.lower((ean, table, start), row[2])  # type: ignore[arg-type]
    later = pipeline.process([build_telegram("E1", t + timedelta(seconds=10))], BOUND, NOW_S)
    assert later.accepted == 1 and later.rows == 0
    same = pipeline.process([build_telegram("E1", t)], BOUND, NOW_S)
    assert same.rows == 0
    earlier = pipeline.process([build_telegram("E1", t - timedelta(seconds=10))], BOUND, NOW_S)
    assert earlier.rows == 2


def test_best_cache_is_bounded() -> None:
    cache = BestCache(max_entries=10)
    for i in range(100):
        cache.lower((i, 0, 0), i)
    assert len(cache) <= 10
    assert cache.get((99, 0, 0)) == 99
    cache.lower((99, 0, 0), 200)
    assert cache.get((99, 0, 0)) == 99  # keeps the minimum


def test_best_cache_keeps_the_newest_period_per_table() -> None:
    cache = BestCache()
    day = ts(datetime(2026, 10, 24, 22, tzinfo=UTC))  # a 25-hour local day
    nxt = ts(datetime(2026, 10, 25, 23, tzinfo=UTC))
    cache.lower((1, E_P1D, day), day + 100)
    cache.lower((1, E_PT15M, day), day + 100)
    assert cache.get((1, E_P1D, day)) == day + 100
    slots = cache.entry(1)
    assert slots is not None and slots[3:6] == (day, nxt, day + 100)  # the day's end: 25 h on
    assert slots[0:3] == (day, day + 900, day + 100)
    cache.lower((1, E_P1D, nxt), nxt + 5)  # a newer day replaces the slot
    assert cache.get((1, E_P1D, day)) is None
    assert cache.get((1, E_P1D, nxt)) == nxt + 5
    cache.lower((1, E_P1D, day), day + 1)  # an older day is not recorded: a miss, not a skip
    assert cache.get((1, E_P1D, nxt)) == nxt + 5 and cache.get((1, E_P1D, day)) is None
    assert cache.get((1, E_PT15M, day)) == day + 100  # other tables untouched
    assert cache.get((2, E_P1D, nxt)) is None


def test_best_cache_entries_share_their_times() -> None:
    # the times of a period are the same for every EAN: an entry refers to one shared object
    # per distinct time instead of holding copies (int(str(x)): a fresh object, as rows bring)
    cache = BestCache()
    day = ts(datetime(2026, 10, 24, 22, tzinfo=UTC))
    for ean in (1, 2):
        cache.lower((ean, E_PT15M, int(str(day))), int(str(day + 7)))
        cache.lower((ean, E_P1D, int(str(day))), int(str(day + 7)))
    one, two = cache.entry(1), cache.entry(2)
    assert one is not None and two is not None
    assert one == two == (day, day + 900, day + 7, day, day + 25 * 3600, day + 7, 0, 0, 0)
    assert all(a is b for a, b in zip(one, two, strict=True))
    # the record of shared times is bounded; entries made before a restart keep their values
    for i in range(BestCache.SHARED_LIMIT + 10):
        cache.lower((10 + i, E_PT15M, day), day + i % 900)
    assert len(cache._shared) <= BestCache.SHARED_LIMIT
    assert cache.entry(1) == one
    last = BestCache.SHARED_LIMIT + 9
    assert cache.get((10 + last, E_PT15M, day)) == day + last % 900


def test_best_cache_does_not_skip_the_next_period(pipeline: IngestPipeline) -> None:
    t = datetime(2026, 10, 25, 11, 44, 50, tzinfo=UTC)  # quarter 11:30
    first = pipeline.process([build_telegram("I1", t)], BOUND, NOW_S)
    for table, rows in enumerate(first.batch):
        for (ean, start), row in rows.items():
            pipeline.best.lower((ean, table, start), row[2])  # type: ignore[arg-type]
    later = pipeline.process([build_telegram("I1", t + timedelta(seconds=10))], BOUND, NOW_S)
    q = ts(datetime(2026, 10, 25, 11, 45, tzinfo=UTC))
    assert list(later.batch[E_PT15M]) == [(int(EAN_I), q)]  # the new quarter only
    assert later.rows == 1


def test_merge_keeps_earliest() -> None:
    a, b = new_batch(), new_batch()
    a[E_P1D][(1, 0)] = (1, 0, 50, 1, 1, 1, 1)
    b[E_P1D][(1, 0)] = (1, 0, 40, 2, 2, 2, 2)
    b[E_P1D][(2, 0)] = (2, 0, 60, 3, 3, 3, 3)
    assert merge_into(a, b) == 1
    assert a[E_P1D][(1, 0)][2] == 40


def test_split_body() -> None:
    one = build_telegram("E1", NOW)
    two = build_telegram("E1", NOW - timedelta(seconds=10))
    assert split_body(one + two) == [one, two]
    assert split_body(b"\r\n" + one + b"\r\n\r\n" + two + b"\r\n") == [one, two]
    assert split_body(b"junk\r\n" + one) == [b"junk\r\n" + one]
    assert split_body(one + b"trailing junk") == [one, b"trailing junk"]
    assert split_body(b"") == [] and split_body(b"\r\n \x00") == []
    lf_only = one.replace(b"\r\n", b"\n")
    assert split_body(lf_only + lf_only) == [lf_only, lf_only]


def test_split_body_cuts_telegrams_without_a_bang_line_at_the_next_header() -> None:
    # a real DSMR 2.2 capture without a '!' line, as the reader now frames and forwards it
    real = (FIXTURES / "nodedsmr_v2.2_nl_iskra_mt382_real.txt").read_bytes()
    one = build_telegram("E1", NOW)
    assert split_body(real + real + one + real) == [real, real, one, real]
    # each gets its own outcome, not one for the lot (here: a meter nobody registered)
    r = IngestPipeline(ConsentIndex(), BestCache()).process(
        split_body(real * 3), frozenset({"00112233445566778899aabbccddeeff"}), NOW_S
    )
    assert [(x["index"], x["reason"]) for x in r.rejected] == [
        (i, "unknown-meter") for i in range(3)
    ]


def test_best_cache_forgets_what_a_registry_change_may_have_undone() -> None:
    """A reload of an EAN's routing forgets its entry, and a write routed before that reload
    does not record its rows when it commits after it (the database may have refused them)."""
    best = BestCache()
    key, other = (int(EAN_E), E_P1D, 1_000), (int(EAN_G), E_P1D, 1_000)
    best.lower(key, 1_005)
    assert best.get(key) == 1_005
    routed = best.mark()
    best.forget(int(EAN_E))
    assert best.get(key) is None
    best.lower(key, 1_010, routed)  # routed under the old registry: not recorded
    best.lower(other, 1_010, routed)  # another EAN: recorded
    assert best.get(key) is None and best.get(other) == 1_010
    best.lower(key, 1_020, best.mark())  # routed after the reload: recorded
    assert best.get(key) == 1_020
    routed = best.mark()
    best.forget_all()
    best.lower(other, 1_001, routed)
    assert best.get(other) is None and len(best) == 0


@pytest.mark.parametrize(
    ("registers", "named"),
    [
        ({"import_wh": (9_999_999_999_999_999_999_999_999, 5)}, None),  # beyond the parser's
        ({"import_wh": (10**18, 5)}, None),  # 18 digits: refused while parsing
        ({"import_wh": (REGISTER_MAX + 1, 5)}, "1.8.1"),  # beyond int4 (migration 0014)
        ({"import_wh": (5, REGISTER_MAX + 1)}, "1.8.2"),
        ({"export_wh": (REGISTER_MAX + 1, 0)}, "2.8.1"),
        ({"export_wh": (0, 10**17)}, "2.8.2"),
        ({"import_wh": (REGISTER_MAX + 1, 0), "totals_only": True}, "1.8.0"),
        ({"export_wh": (REGISTER_MAX, 1), "totals_only": True}, "2.8.0"),
    ],
)
def test_registers_beyond_what_is_stored_are_refused_before_any_batch(
    pipeline: IngestPipeline, registers: dict[str, Any], named: str | None
) -> None:
    r = pipeline.process([build_telegram("E1", NOW, **registers)], BOUND, NOW_S)
    assert [x["reason"] for x in r.rejected] == ["bad-value"] and r.rows == 0
    if named is not None:
        detail = r.rejected[0]["detail"]
        assert f"energy register {named} is above {REGISTER_MAX} Wh" in detail, detail
    # the largest register stored is a reading like any other, stored exactly
    ok = pipeline.process(
        [build_telegram("E1", NOW, import_wh=(REGISTER_MAX, 0), export_wh=(0, REGISTER_MAX))],
        BOUND,
        NOW_S,
    )
    assert ok.accepted == 1 and ok.rows > 0
    assert {row[3:] for row in ok.batch[E_P1D].values()} == {(REGISTER_MAX, 0, 0, REGISTER_MAX)}


@pytest.mark.parametrize("volume", [10**18, REGISTER_MAX + 1])
def test_a_gas_volume_beyond_what_is_stored_is_refused(
    pipeline: IngestPipeline, volume: int
) -> None:
    bad = build_telegram("ZZ", NOW, gas=("G1", NOW - timedelta(minutes=5), volume))
    r = pipeline.process([bad], BOUND, NOW_S)
    assert [x["reason"] for x in r.rejected] == ["bad-value"] and r.rows == 0
    if volume == REGISTER_MAX + 1:
        assert f"above {REGISTER_MAX} dm3" in r.rejected[0]["detail"]
    top = build_telegram("ZZ", NOW, gas=("G1", NOW - timedelta(minutes=5), REGISTER_MAX))
    ok = pipeline.process([top], BOUND, NOW_S)
    assert ok.accepted == 1
    assert {row[3] for row in ok.batch[G_P1D].values()} == {REGISTER_MAX}


def _on_channel(telegram: bytes, channel: int) -> bytes:
    """The telegram with its energy registers moved from B=0 to ``channel`` (CRC redone)."""
    body = telegram[: telegram.index(b"!")]
    for code in (b"1.8.1", b"1.8.2", b"2.8.1", b"2.8.2"):
        body = body.replace(b"\n1-0:" + code + b"(", b"\n1-%d:" % channel + code + b"(")
    body += b"!"
    return body + f"{crc16_arc(body):04X}\r\n".encode()


def test_registers_on_channel_1_are_readings_and_two_channels_a_reason(
    pipeline: IngestPipeline,
) -> None:
    # an XT211-style telegram (1-1:1.8.1 ...) stores the same rows as its 1-0 twin
    plain = build_telegram("E1", NOW, import_wh=(1234, 5678), export_wh=(9, 10))
    twin = pipeline.process([plain], BOUND, NOW_S)
    channel_1 = IngestPipeline(pipeline.index, BestCache()).process(
        [_on_channel(plain, 1)], BOUND, NOW_S
    )
    assert channel_1.accepted == 1 and channel_1.rows == twin.rows > 0
    assert channel_1.batch == twin.batch
    # registers on 1-1: and 1-2: (none on 1-0:): rejected with its own reason
    both = _on_channel(plain, 1)
    both = both[: both.index(b"!")] + b"1-2:1.8.1(000001.000*kWh)\r\n!"
    r = pipeline.process([both + f"{crc16_arc(both):04X}\r\n".encode()], BOUND, NOW_S)
    assert [x["reason"] for x in r.rejected] == ["ambiguous-registers"] and r.rows == 0
