"""The on-disk spool: ordering, durability of the cursor, torn tails, bounded size policies."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from p1_reader.spool import Spool, SpoolError, read_all
from p1_reader.thinning import TelegramMark

QUARTER = 900


def payload(i: int, *, meter: str = "E1", ts: int | None = None, size: int = 100) -> bytes:
    """A stand-in telegram for our own Marker interface: ``meter|timestamp|index|padding``."""
    stamp = 1_700_000_000 + i if ts is None else ts
    head = f"{meter}|{stamp}|{i}|".encode()
    return head + b"x" * max(0, size - len(head))


def marker(data: bytes) -> TelegramMark | None:
    meter, stamp, _rest = data.split(b"|", 2)
    return TelegramMark(meter.decode(), int(stamp))


def index_of(data: bytes) -> int:
    return int(data.split(b"|")[2])


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_fifo_order_peek_does_not_consume_and_ack_advances(tmp_path: Path) -> None:
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        assert spool.append_batch([payload(i) for i in range(10)]) == 10
        assert spool.pending == 10
        first = spool.peek(4)
        assert [index_of(r.data) for r in first] == [0, 1, 2, 3]
        assert [r.data for r in spool.peek(4)] == [r.data for r in first]
        spool.ack(3)
        assert spool.pending == 7
        assert [index_of(r.data) for r in spool.peek(100)] == list(range(3, 10))
        spool.ack_through(spool.peek(1)[0].seq + 1)
        assert [index_of(r.data) for r in spool.peek(100)] == list(range(5, 10))
        # acknowledging what is already acknowledged changes nothing
        spool.ack_through(first[0].seq)
        assert spool.pending == 5


def test_reopen_resumes_at_durable_cursor_and_never_reuses_sequence_numbers(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, full_policy="drop-newest")
    spool.append_batch([payload(i) for i in range(10)])
    spool.ack(4)
    last_seq = spool.peek(100)[-1].seq
    # no close(): a crash right after the acknowledgement
    del spool
    assert (tmp_path / "cursor").exists()
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        assert spool.pending == 6
        assert [index_of(r.data) for r in spool.peek(100)] == list(range(4, 10))
        spool.ack(6)
        assert spool.pending == 0
        spool.append(payload(10))
        assert spool.peek(1)[0].seq > last_seq
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        assert [index_of(r.data) for r in spool.peek(100)] == [10]


def test_interrupted_cursor_write_leaves_the_previous_cursor(tmp_path: Path) -> None:
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        spool.append_batch([payload(i) for i in range(5)])
        spool.ack(2)
    # a crash between writing the temporary cursor and renaming it
    (tmp_path / "cursor.tmp").write_text("4\n")
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        assert [index_of(r.data) for r in spool.peek(100)] == [2, 3, 4]
    assert not (tmp_path / "cursor.tmp").exists()


@pytest.mark.parametrize("cut", [1, 7, 15, 16, 60])
def test_torn_tail_record_is_truncated_on_open(tmp_path: Path, cut: int) -> None:
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        spool.append_batch([payload(i) for i in range(5)])
    seg = segments(tmp_path)[-1]
    size = seg.stat().st_size
    # SIGKILL in the middle of writing the last record: only part of it reached the file
    with open(seg, "r+b") as fh:
        fh.truncate(size - cut)
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        assert [index_of(r.data) for r in spool.peek(100)] == [0, 1, 2, 3]
        assert spool.stats.truncated_records == 1
        assert spool.stats.truncated_bytes == 116 - cut
        spool.append(payload(5))
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        assert [index_of(r.data) for r in spool.peek(100)] == [0, 1, 2, 3, 5]
        assert spool.stats.truncated_bytes == 0


def test_zero_filled_and_garbage_tails_are_truncated(tmp_path: Path) -> None:
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        spool.append_batch([payload(i) for i in range(3)])
    seg = segments(tmp_path)[-1]
    # power loss on ext4 can leave zero-filled blocks after the last complete write
    with open(seg, "ab") as fh:
        fh.write(b"\0" * 4096)
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        assert spool.pending == 3
        assert spool.stats.truncated_bytes == 4096
    data = seg.read_bytes()
    # a record whose CRC does not match (bit flip in the payload of the last record)
    seg.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    with Spool(tmp_path, full_policy="drop-newest") as spool:
        assert [index_of(r.data) for r in spool.peek(100)] == [0, 1]


def test_read_all_inspects_without_changing_anything(tmp_path: Path) -> None:
    spool = Spool(tmp_path, full_policy="drop-newest")
    spool.append_batch([payload(i) for i in range(6)])
    spool.ack(2)
    seg = segments(tmp_path)[-1]
    with open(seg, "ab") as fh:
        fh.write(b"torn")
    before = seg.stat().st_size
    assert [index_of(r.data) for r in read_all(tmp_path)] == [2, 3, 4, 5]
    assert seg.stat().st_size == before
    spool.close()


def test_segments_rotate_and_acknowledged_ones_are_deleted(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=64 * 1024, segment_bytes=1024, full_policy="drop-newest") as s:
        for i in range(100):
            s.append(payload(i))
        assert len(segments(tmp_path)) > 5
        s.ack(95)
        assert len(segments(tmp_path)) <= 2
        assert [index_of(r.data) for r in s.peek(100)] == list(range(95, 100))
        s.ack(5)
        assert len(segments(tmp_path)) == 1
        assert s.pending == 0
    with Spool(tmp_path, max_bytes=64 * 1024, segment_bytes=1024, full_policy="drop-newest") as s:
        assert s.pending == 0
        s.append(payload(100))
        assert [index_of(r.data) for r in s.peek(10)] == [100]


def test_drop_newest_refuses_counts_and_logs_once_per_episode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="p1_reader.spool")
    with Spool(tmp_path, max_bytes=16 * 1024, segment_bytes=2048, full_policy="drop-newest") as s:
        results = [s.append(payload(i)) for i in range(300)]
        stored = results.count(True)
        assert 0 < stored < 300
        assert results == [True] * stored + [False] * (300 - stored)
        assert s.stats.dropped_newest == 300 - stored
        assert s.size_bytes <= s.max_bytes
        assert [index_of(r.data) for r in s.peek(1000)] == list(range(stored))
        full_lines = [r for r in caplog.records if "full" in r.getMessage()]
        assert len(full_lines) == 1
        # room again after delivery: the episode ends with a count, appends work again
        s.ack(stored)
        assert s.append(payload(1000))
        assert any(f"{300 - stored} telegrams dropped" in r.getMessage() for r in caplog.records)


def test_drop_oldest_keeps_the_newest_in_order(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=16 * 1024, segment_bytes=2048, full_policy="drop-oldest") as s:
        for i in range(500):
            assert s.append(payload(i))
            assert s.size_bytes <= s.max_bytes
        kept = [index_of(r.data) for r in s.peek(1000)]
        assert kept == list(range(500 - len(kept), 500))
        assert s.stats.dropped_oldest == 500 - len(kept)
        assert s.pending == len(kept)
    with Spool(tmp_path, max_bytes=16 * 1024, segment_bytes=2048, full_policy="drop-oldest") as s:
        assert [index_of(r.data) for r in s.peek(1000)] == kept


def test_thin_keeps_first_telegram_of_each_quarter_per_meter(tmp_path: Path) -> None:
    # two meters, a telegram every 10 s each: 90 per quarter per meter
    items = []
    t0 = 1_700_000_100  # not on a quarter boundary
    for k in range(1200):
        ts = t0 + 10 * (k // 2)
        items.append(payload(k, meter="E1" if k % 2 == 0 else "E2", ts=ts))
    with Spool(
        tmp_path, max_bytes=64 * 1024, segment_bytes=4096, full_policy="thin", marker=marker
    ) as s:
        for item in items:
            assert s.append(item)
            assert s.size_bytes <= s.max_bytes
        assert s.stats.dropped_thinned > 0
        assert s.stats.dropped_oldest == 0
        kept = [r.data for r in s.peek(10_000)]
        assert s.pending == len(kept) == 1200 - s.stats.dropped_thinned
    indexes = [index_of(d) for d in kept]
    assert indexes == sorted(indexes)
    # every telegram that opens a quarter for its meter survived ...
    seen: dict[str, int] = {}
    firsts = []
    for item in items:
        mark = marker(item)
        assert mark is not None and mark.timestamp is not None and mark.meter_id is not None
        quarter = mark.timestamp // QUARTER
        if seen.get(mark.meter_id) != quarter:
            firsts.append(item)
        seen[mark.meter_id] = quarter
    assert set(firsts) <= set(kept)
    # ... and so did the newest telegrams (the live segment is never thinned)
    assert kept[-1] == items[-1]
    # the thinned part holds only quarter openers
    thinned_part = [d for d in kept if index_of(d) < index_of(kept[-1]) - 200]
    assert thinned_part and set(thinned_part) <= set(firsts)


def test_thin_falls_back_to_dropping_oldest_when_thinning_frees_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="p1_reader.spool")
    # one telegram per quarter: nothing is redundant
    items = [payload(i, ts=1_700_000_000 + QUARTER * i) for i in range(400)]
    with Spool(
        tmp_path, max_bytes=16 * 1024, segment_bytes=2048, full_policy="thin", marker=marker
    ) as s:
        for item in items:
            assert s.append(item)
            assert s.size_bytes <= s.max_bytes
        kept = [index_of(r.data) for r in s.peek(1000)]
        assert kept == list(range(400 - len(kept), 400))
        assert s.stats.dropped_thinned == 0
        assert s.stats.dropped_oldest == 400 - len(kept)
    assert any("still full after thinning" in r.getMessage() for r in caplog.records)


def test_thinned_spool_survives_reopen_and_acks_sparse_sequences(tmp_path: Path) -> None:
    items = [payload(i, ts=1_700_000_000 + 30 * i) for i in range(800)]
    options = {"max_bytes": 32 * 1024, "segment_bytes": 2048, "marker": marker}
    with Spool(tmp_path, full_policy="thin", **options) as s:  # type: ignore[arg-type]
        for item in items:
            s.append(item)
        before = [r.data for r in s.peek(10_000)]
    assert len(before) < 800
    with Spool(tmp_path, full_policy="thin", **options) as s:  # type: ignore[arg-type]
        assert [r.data for r in s.peek(10_000)] == before
        s.ack(5)
        assert [r.data for r in s.peek(10_000)] == before[5:]
        assert s.pending == len(before) - 5
    with Spool(tmp_path, full_policy="thin", **options) as s:  # type: ignore[arg-type]
        assert [r.data for r in s.peek(10_000)] == before[5:]


def test_oversized_record_is_refused_and_counted(tmp_path: Path) -> None:
    with Spool(tmp_path, full_policy="drop-newest") as s:
        assert not s.append(b"/" + b"x" * (70 * 1024))
        assert s.stats.dropped_newest == 1
        assert s.pending == 0


def test_bad_configuration_and_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="marker"):
        Spool(tmp_path, full_policy="thin")
    with pytest.raises(ValueError, match="quarter"):
        Spool(tmp_path, max_bytes=64 * 1024, segment_bytes=32 * 1024, full_policy="drop-newest")
    (tmp_path / "cursor").write_text("not a number")
    with pytest.raises(SpoolError, match="cursor"):
        Spool(tmp_path, full_policy="drop-newest")
    os.remove(tmp_path / "cursor")
    (tmp_path / "junk.seg").write_bytes(b"")
    with pytest.raises(SpoolError, match=r"junk\.seg"):
        Spool(tmp_path, full_policy="drop-newest")


def test_closed_spool_refuses_use(tmp_path: Path) -> None:
    s = Spool(tmp_path, full_policy="drop-newest")
    s.close()
    with pytest.raises(SpoolError, match="closed"):
        s.append(payload(0))


def test_every_second_fsync_policy_syncs_when_due(tmp_path: Path) -> None:
    now = [0.0]
    s = Spool(tmp_path, full_policy="drop-newest", fsync="every-second", clock=lambda: now[0])
    s.append(payload(0))
    assert s._dirty  # within the second: not yet synced
    now[0] = 1.5
    s.sync_if_due()
    assert not s._dirty
    s.append(payload(1))
    now[0] = 3.0
    s.append(payload(2))  # the append itself syncs once the second is over
    assert not s._dirty
    s.close()
