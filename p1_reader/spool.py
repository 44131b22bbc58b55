"""A durable, bounded, ordered on-disk queue of telegrams (the field device's spool).

The queue logic lives here: appending at the tail, delivering and acknowledging at the head
(the cursor), recovering after a crash, and the policy for a full spool. The bytes on disk
(segment files of checksummed records, the cursor file) are :mod:`p1_reader.spool_format`'s;
which telegrams are worth keeping is :mod:`p1_reader.thinning`'s.

A write torn by a crash or power loss (SIGKILL mid-write, zero-filled blocks after a reboot) only
ever damages the tail of the newest segment: opening the spool truncates the segment at the first
record that does not verify. The cursor file is replaced with write + fsync + rename + directory
fsync, so it is always either the old or the new value; the cursor is written before acknowledged
segments are deleted, so a crash in between only leaves a segment that the next open deletes.

The spool is bounded (``max_bytes``). When it is full, an explicit policy decides what goes; every
dropped telegram is counted in :class:`SpoolStats` and each episode is logged once:

``thin`` (default)
    rewrite the sealed segments keeping the first telegram of every 15-minute period per meter and
    every telegram whose gas capture time enters a new hour (see
    :class:`~p1_reader.thinning.Thinner`); the active segment, holding the newest telegrams, is
    left alone. If that frees too little, the oldest segment is dropped as with ``drop-oldest``
    (also logged and counted).
``drop-newest``
    refuse the telegram being appended.
``drop-oldest``
    delete the oldest segment, delivered or not.

The class does plain blocking file I/O (appends of a few kilobytes and an fsync); callers in an
event loop call it directly, which is fine at P1 rates (one telegram per second).
"""

from __future__ import annotations

import logging
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from p1_reader.errors import SpoolError
from p1_reader.spool_format import (
    CURSOR_NAME,
    HEADER_SIZE,
    MAX_RECORD_BYTES,
    TMP_SUFFIX,
    RecordSpan,
    encode_record,
    fsync_dir,
    open_for_append,
    read_cursor,
    read_header,
    read_record,
    replace_segment,
    scan,
    segment_name,
    segment_paths,
    segment_start,
    truncate_segment,
    write_cursor,
)
from p1_reader.thinning import Marker, Thinner

log = logging.getLogger(__name__)

FsyncPolicy = Literal["batch", "every-second"]
FullPolicy = Literal["thin", "drop-newest", "drop-oldest"]
FSYNC_POLICIES: tuple[FsyncPolicy, ...] = ("batch", "every-second")
FULL_POLICIES: tuple[FullPolicy, ...] = ("thin", "drop-newest", "drop-oldest")

DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One spooled telegram: its spool sequence number and its bytes."""

    seq: int
    data: bytes


@dataclass(slots=True)
class SpoolStats:
    """Counters since the spool was opened (the forwarder logs and exposes them)."""

    appended: int = 0
    acked: int = 0
    #: telegrams removed by the ``thin`` policy (intermediate telegrams of a period)
    dropped_thinned: int = 0
    #: telegrams refused because the spool was full (``drop-newest``)
    dropped_newest: int = 0
    #: undelivered telegrams deleted because the spool was full (``drop-oldest`` or thin fallback)
    dropped_oldest: int = 0
    #: bytes cut from the tail on open (a torn write) and records lost with them
    truncated_bytes: int = 0
    truncated_records: int = 0

    @property
    def dropped(self) -> int:
        """Every telegram the spool gave up on, whatever the reason."""
        return self.dropped_thinned + self.dropped_newest + self.dropped_oldest


# --------------------------------------------------------------------------------------------
# Segments


@dataclass(slots=True)
class _Segment:
    """What the queue knows about one segment file, so that counting never reads the disk."""

    path: Path
    #: sequence number of the first and last record (-1 when empty)
    first_seq: int
    last_seq: int
    count: int
    size: int
    #: the sequence numbers when they are not the contiguous run first_seq..last_seq (thinned)
    seqs: list[int] | None = None
    #: True once thinned (not persisted: after a restart a segment may be thinned once more)
    thinned: bool = False

    def count_from(self, seq: int) -> int:
        """Records with sequence number >= ``seq``."""
        if self.count == 0 or self.last_seq < seq:
            return 0
        if self.first_seq >= seq:
            return self.count
        if self.seqs is None:
            return self.last_seq - seq + 1
        return self.count - bisect_left(self.seqs, seq)


def _segment_from(path: Path, records: list[RecordSpan], size: int) -> _Segment:
    if not records:
        return _Segment(path=path, first_seq=-1, last_seq=-1, count=0, size=size)
    first, last = records[0][0], records[-1][0]
    contiguous = last - first + 1 == len(records)
    return _Segment(
        path=path,
        first_seq=first,
        last_seq=last,
        count=len(records),
        size=size,
        seqs=None if contiguous else [r[0] for r in records],
    )


class Spool:
    """The spool: ``append``/``append_batch`` at the tail, ``peek``/``ack`` at the head.

    Not thread-safe; one process per directory (an exclusive ``flock`` would be the next step if
    two forwarders were ever started on one directory by mistake).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        full_policy: FullPolicy = "thin",
        fsync: FsyncPolicy = "batch",
        segment_bytes: int | None = None,
        marker: Marker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Open (or create) the spool in ``directory`` and recover from any torn write.

        ``marker`` extracts the meter id and timestamps from a telegram; it is required for the
        ``thin`` policy. ``segment_bytes`` defaults to a sixteenth of ``max_bytes`` (at most
        16 MiB), so that dropping or thinning a segment frees a useful amount at once.
        """
        if full_policy not in FULL_POLICIES:
            raise ValueError(
                f"spool full policy must be one of {FULL_POLICIES}, not {full_policy!r}"
            )
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"spool fsync policy must be one of {FSYNC_POLICIES}, not {fsync!r}")
        if full_policy == "thin" and marker is None:
            raise ValueError("the 'thin' spool policy needs a marker to read telegram timestamps")
        if max_bytes < 4 * 4096:
            raise ValueError(f"spool max bytes {max_bytes} is too small (minimum 16 KiB)")
        if segment_bytes is None:
            segment_bytes = min(16 * 1024 * 1024, max(4096, max_bytes // 16))
        if segment_bytes > max_bytes // 4:
            raise ValueError(
                f"spool segment size {segment_bytes} must be at most a quarter of the "
                f"maximum size {max_bytes}"
            )
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.full_policy: FullPolicy = full_policy
        self.fsync_policy: FsyncPolicy = fsync
        self.segment_bytes = segment_bytes
        self.stats = SpoolStats()
        self._marker = marker
        self._clock = clock
        self._segments: list[_Segment] = []
        self._cursor = 0  # next sequence number to deliver
        self._next_seq = 0  # sequence number of the next appended record
        self._pending = 0  # records with seq >= cursor
        # head: first undelivered record = (index into _segments, byte offset)
        self._head_offset = 0
        self._tail_fd: int | None = None
        self._dirty = False
        self._last_sync = clock()
        self._full_episode: str | None = None
        self._episode_drops = 0
        self._closed = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._recover()
        except OSError as exc:
            raise SpoolError(f"cannot open spool directory {self.directory}: {exc}") from exc

    # ---------------------------------------------------------------- opening

    def _recover(self) -> None:
        for stray in self.directory.glob(f"*{TMP_SUFFIX}"):
            # an interrupted cursor write or thinning rewrite; the original is still in place
            log.warning("spool %s: removing interrupted write %s", self.directory, stray.name)
            stray.unlink()
        cursor = read_cursor(self.directory)
        paths = segment_paths(self.directory)
        for index, path in enumerate(paths):
            try:
                segment_start(path.name)
            except ValueError as exc:
                raise SpoolError(f"spool {self.directory}: unexpected file {path.name}") from exc
            buf = path.read_bytes()
            records, valid = scan(buf)
            if valid < len(buf):
                self.stats.truncated_bytes += len(buf) - valid
                # a torn write cuts one record (counted); corruption may hide more (logged)
                self.stats.truncated_records += 1
                level = logging.WARNING if index == len(paths) - 1 else logging.ERROR
                log.log(
                    level,
                    "spool %s: segment %s damaged at byte %d of %d (%s); truncating %d bytes",
                    self.directory,
                    path.name,
                    valid,
                    len(buf),
                    "torn write at the tail" if index == len(paths) - 1 else "corruption",
                    len(buf) - valid,
                )
                truncate_segment(path, valid)
            prev_last = self._segments[-1].last_seq if self._segments else -1
            if records and records[0][0] <= prev_last:
                raise SpoolError(
                    f"spool {self.directory}: segment {path.name} starts at sequence "
                    f"{records[0][0]}, not after {prev_last}"
                )
            self._segments.append(_segment_from(path, records, valid))
        last_seq = max((s.last_seq for s in self._segments), default=-1)
        first_seq = next((s.first_seq for s in self._segments if s.count), last_seq + 1)
        self._cursor = cursor if cursor is not None else first_seq
        # never reuse a sequence number at or below the cursor: it would count as delivered
        self._next_seq = max(last_seq + 1, self._cursor)
        self._delete_acked_segments()
        self._pending = sum(seg.count_from(self._cursor) for seg in self._segments)
        self._locate_head()
        if self._segments:
            self._open_tail(self._segments[-1].path)
        log.info(
            "spool %s opened: %d telegrams pending in %d segments (%d bytes)",
            self.directory,
            self._pending,
            len(self._segments),
            self.size_bytes,
        )

    def _locate_head(self) -> None:
        """Point the head at the first record with seq >= cursor, from the first segment's start."""
        self._head_offset = 0
        self._advance_head()

    def _advance_head(self) -> None:
        """Move the head past records below the cursor, reading only their headers."""
        if not self._segments:
            self._head_offset = 0
            return
        seg = self._segments[0]
        if seg.count == 0 or seg.first_seq >= self._cursor:
            return
        if seg.last_seq < self._cursor:
            self._head_offset = seg.size
            return
        with open(seg.path, "rb") as fh:
            pos = self._head_offset
            while pos < seg.size:
                fh.seek(pos)
                seq, length = read_header(fh)
                if seq >= self._cursor:
                    break
                pos += HEADER_SIZE + length
            self._head_offset = pos

    def _open_tail(self, path: Path) -> None:
        if self._tail_fd is not None:
            os.close(self._tail_fd)
        self._tail_fd = open_for_append(path)

    # ---------------------------------------------------------------- properties

    @property
    def pending(self) -> int:
        """Telegrams spooled and not yet acknowledged."""
        return self._pending

    @property
    def size_bytes(self) -> int:
        """Bytes the segment files take (delivered records still in a live segment included)."""
        return sum(seg.size for seg in self._segments)

    @property
    def cursor(self) -> int:
        """Sequence number of the next telegram to deliver."""
        return self._cursor

    # ---------------------------------------------------------------- writing

    def append(self, data: bytes) -> bool:
        """Append one telegram (fsynced per the fsync policy); False when the policy dropped it."""
        return self.append_batch((data,)) == 1

    def append_batch(self, items: Sequence[bytes]) -> int:
        """Append telegrams in order, then fsync (``batch``) or fsync at most once a second.

        Returns how many were stored; the others were refused by the ``drop-newest`` policy or
        were too large, and are counted and logged.
        """
        self._check_open()
        stored = 0
        chunks: list[bytes] = []
        for data in items:
            if len(data) > MAX_RECORD_BYTES:
                self.stats.dropped_newest += 1
                log.error(
                    "spool: refusing a %d-byte telegram (limit %d bytes)",
                    len(data),
                    MAX_RECORD_BYTES,
                )
                continue
            record_size = HEADER_SIZE + len(data)
            if self._would_overflow(record_size, chunks):
                self._write(chunks)
                chunks = []
                if not self._make_room(record_size):
                    self._note_drop("drop-newest", 1)
                    self.stats.dropped_newest += 1
                    continue
            else:
                self._end_full_episode()
            if self._segments and self._segments[-1].size + sum(map(len, chunks)) >= (
                self.segment_bytes
            ):
                self._write(chunks)
                chunks = []
                self._rotate()
            if not self._segments:
                self._rotate()
            seq = self._next_seq
            self._next_seq += 1
            chunks.append(encode_record(seq, data))
            seg = self._segments[-1]
            if seg.count == 0:
                seg.first_seq = seq
            seg.last_seq = seq
            seg.count += 1
            self._pending += 1
            stored += 1
        self._write(chunks)
        self.stats.appended += stored
        if self.fsync_policy == "batch" or self._clock() - self._last_sync >= 1.0:
            self.sync()
        return stored

    def _would_overflow(self, record_size: int, chunks: list[bytes]) -> bool:
        return self.size_bytes + sum(map(len, chunks)) + record_size > self.max_bytes

    def _write(self, chunks: list[bytes]) -> None:
        if not chunks:
            return
        assert self._tail_fd is not None
        blob = b"".join(chunks)
        view = memoryview(blob)
        while view:
            written = os.write(self._tail_fd, view)
            view = view[written:]
        # size is advanced only once the bytes are in the file, so a failed write is not counted
        self._segments[-1].size += len(blob)
        self._dirty = True

    def _rotate(self) -> None:
        """Seal the tail segment and start a new one named after the next sequence number."""
        if self._tail_fd is not None and self._dirty:
            os.fsync(self._tail_fd)
            self._dirty = False
        path = self.directory / segment_name(self._next_seq)
        self._open_tail(path)
        fsync_dir(self.directory)
        self._segments.append(_Segment(path=path, first_seq=-1, last_seq=-1, count=0, size=0))

    def sync(self) -> None:
        """fsync appended telegrams to disk (no-op when nothing was written since the last one)."""
        if self._dirty and self._tail_fd is not None:
            os.fsync(self._tail_fd)
            self._dirty = False
        self._last_sync = self._clock()

    def sync_if_due(self) -> None:
        """For ``every-second``: fsync when the last fsync is a second old or more."""
        if self._dirty and self._clock() - self._last_sync >= 1.0:
            self.sync()

    # ---------------------------------------------------------------- full spool

    def _make_room(self, needed: int) -> bool:
        """Free space for ``needed`` bytes per the full policy; False when the record must go."""
        if self.full_policy == "drop-newest":
            return False
        if self.full_policy == "thin":
            self._thin_sealed()
            if self.size_bytes + needed <= self.max_bytes:
                return True
            if self._full_episode != "thin-fallback":
                log.warning(
                    "spool %s still full after thinning (%d bytes): dropping oldest telegrams",
                    self.directory,
                    self.size_bytes,
                )
                self._full_episode = "thin-fallback"
        while self.size_bytes + needed > self.max_bytes and len(self._segments) > 1:
            self._drop_oldest_segment()
        return self.size_bytes + needed <= self.max_bytes

    def _drop_oldest_segment(self) -> None:
        seg = self._segments[0]
        lost = seg.count_from(self._cursor)
        self._pending -= lost
        self.stats.dropped_oldest += lost
        self._note_drop("drop-oldest", lost)
        if seg.count:
            self._cursor = max(self._cursor, seg.last_seq + 1)
        self._write_cursor()
        self._segments.pop(0)
        seg.path.unlink()
        fsync_dir(self.directory)
        self._locate_head()

    def _thin_sealed(self) -> None:
        """Rewrite every sealed, not yet thinned segment keeping only what :class:`Thinner` keeps.

        One pass over all of them, oldest first, so the thinner's state runs across segments.
        Delivered records are dropped from the rewrite as well.
        """
        assert self._marker is not None
        thinner = Thinner(per_minute=False)
        dropped = 0
        todo = [i for i, seg in enumerate(self._segments[:-1]) if not seg.thinned]
        if not todo:
            return
        for index in todo:
            seg = self._segments[index]
            buf = seg.path.read_bytes()[: seg.size]
            kept: list[bytes] = []
            seqs: list[int] = []
            first = last = -1
            count = 0
            for seq, start, length in scan(buf)[0]:
                if seq < self._cursor:
                    continue
                data = buf[start : start + length]
                if thinner.keep(self._marker(data)):
                    kept.append(encode_record(seq, data))
                    seqs.append(seq)
                    first = seq if first < 0 else first
                    last = seq
                    count += 1
                else:
                    dropped += 1
            blob = b"".join(kept)
            replace_segment(seg.path, blob)
            self._pending -= seg.count_from(self._cursor) - count
            self._segments[index] = _Segment(
                path=seg.path,
                first_seq=first,
                last_seq=last,
                count=count,
                size=len(blob),
                seqs=seqs,
                thinned=True,
            )
        fsync_dir(self.directory)
        # drop segments the thinning emptied (never the tail)
        keep_segments = [s for s in self._segments[:-1] if s.count] + self._segments[-1:]
        for seg in self._segments[:-1]:
            if not seg.count:
                seg.path.unlink()
        if len(keep_segments) != len(self._segments):
            self._segments = keep_segments
            fsync_dir(self.directory)
        self._locate_head()
        self.stats.dropped_thinned += dropped
        log.warning(
            "spool %s full: thinned to the first telegram of each 15-minute period, "
            "%d telegrams dropped (%d bytes now)",
            self.directory,
            dropped,
            self.size_bytes,
        )

    def _note_drop(self, policy: str, count: int) -> None:
        if count <= 0:
            return
        if self._full_episode is None:
            log.warning(
                "spool %s full (%d bytes, limit %d): policy %s, dropping telegrams",
                self.directory,
                self.size_bytes,
                self.max_bytes,
                policy,
            )
            self._full_episode = policy
        self._episode_drops += count

    def _end_full_episode(self) -> None:
        if self._full_episode is not None:
            log.warning(
                "spool %s has room again: %d telegrams dropped while full (policy %s)",
                self.directory,
                self._episode_drops,
                self._full_episode,
            )
            self._full_episode = None
            self._episode_drops = 0

    # ---------------------------------------------------------------- reading

    def peek(self, n: int) -> list[SpoolRecord]:
        """Return up to ``n`` undelivered telegrams, oldest first, without consuming them."""
        self._check_open()
        out: list[SpoolRecord] = []
        offset = self._head_offset
        for seg in self._segments:
            if len(out) >= n:
                break
            if seg.count == 0 or seg.last_seq < self._cursor:
                offset = 0
                continue
            with open(seg.path, "rb") as fh:
                fh.seek(offset)
                pos = offset
                while pos < seg.size and len(out) < n:
                    record = read_record(fh)
                    if record is None:
                        raise SpoolError(
                            f"spool segment {seg.path} damaged at byte {pos} since it was "
                            "opened (disk error?)"
                        )
                    seq, data = record
                    pos += HEADER_SIZE + len(data)
                    if seq >= self._cursor:
                        out.append(SpoolRecord(seq, data))
            offset = 0
        return out

    def ack(self, count: int) -> None:
        """Acknowledge the ``count`` oldest undelivered telegrams (durably, then free space)."""
        if count <= 0:
            return
        records = self.peek(count)
        if records:
            self.ack_through(records[-1].seq)

    def ack_through(self, seq: int) -> None:
        """Acknowledge every telegram with sequence number <= ``seq`` (durably, then free space).

        Safer than :meth:`ack` for a sender: telegrams dropped meanwhile by the full policy
        cannot shift what is acknowledged.
        """
        self._check_open()
        if seq < self._cursor:
            return
        new_cursor = min(seq + 1, self._next_seq)
        done = 0
        for seg in self._segments:
            if seg.count == 0 or seg.first_seq >= new_cursor:
                break
            done += seg.count_from(self._cursor) - seg.count_from(new_cursor)
        self._cursor = new_cursor
        self._pending -= done
        self.stats.acked += done
        self._write_cursor()
        if self._delete_acked_segments():
            self._head_offset = 0
        self._advance_head()

    def _write_cursor(self) -> None:
        write_cursor(self.directory, self._cursor)

    def _delete_acked_segments(self) -> bool:
        """Delete sealed segments whose records are all delivered (the tail stays open)."""
        deleted = False
        while len(self._segments) > 1 and (
            self._segments[0].count == 0 or self._segments[0].last_seq < self._cursor
        ):
            self._segments.pop(0).path.unlink()
            deleted = True
        if deleted:
            fsync_dir(self.directory)
        return deleted

    # ---------------------------------------------------------------- closing

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"spool {self.directory} is closed")

    def close(self) -> None:
        """fsync what was appended and close the tail segment."""
        if self._closed:
            return
        try:
            self.sync()
        finally:
            if self._tail_fd is not None:
                os.close(self._tail_fd)
                self._tail_fd = None
            self._closed = True

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_all(directory: str | os.PathLike[str]) -> list[SpoolRecord]:
    """Every undelivered telegram in a spool directory, without changing anything on disk.

    For tools and tests that inspect a spool another process owns (the torn tail, if any, is
    skipped in memory instead of being truncated).
    """
    root = Path(directory)
    # lenient on purpose, unlike read_cursor() which guards the owning Spool: inspecting a spool
    # has never refused one for its cursor (missing = 0, no range check)
    cursor_path = root / CURSOR_NAME
    cursor = int(cursor_path.read_text(encoding="ascii")) if cursor_path.exists() else 0
    out: list[SpoolRecord] = []
    for path in segment_paths(root):
        buf = path.read_bytes()
        for seq, start, length in scan(buf)[0]:
            if seq >= cursor:
                out.append(SpoolRecord(seq, buf[start : start + length]))
    return out
