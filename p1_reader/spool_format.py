"""The spool's on-disk format: segment files of checksummed records, and the cursor file.

Layout of a spool directory::

    00000000000000000000.seg   segment files, append-only, named after the sequence number
    00000000000000004711.seg   the segment started with (the name orders them; nothing more)
    cursor                     the next sequence number to deliver, replaced atomically

A segment is a run of records; a record is a 16-byte header followed by the telegram bytes::

    seq    u64 little-endian   strictly increasing over the whole spool, never reused
    length u32 little-endian   payload length
    crc    u32 little-endian   zlib.crc32 over seq + length + payload

This module knows bytes and files only: how records are encoded and verified, how files are
named, and how they are written so that a crash leaves either the old or the new state. What the
records mean as a queue (what is delivered, what is pending, what to drop when full) is
:mod:`p1_reader.spool`'s business; keeping the two apart lets tools read a spool directory
(:func:`p1_reader.spool.read_all`) with the same verification the spool itself uses.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from p1_reader.errors import SpoolError

#: a record larger than this is refused (DSMR.md recommends rejecting telegrams beyond 8 KiB; the
#: margin keeps odd but real meters working), and a header claiming more is treated as torn
MAX_RECORD_BYTES = 64 * 1024

_HEADER = struct.Struct("<QII")
HEADER_SIZE = _HEADER.size
#: the CRC covers the header's seq and length fields, i.e. its first 12 bytes
_CRC_COVERED = 12
SEGMENT_SUFFIX = ".seg"
CURSOR_NAME = "cursor"
#: suffix of a file being written before it replaces its original (a leftover = interrupted)
TMP_SUFFIX = ".tmp"

#: type of one entry of :func:`scan`: (sequence number, payload offset, payload length)
RecordSpan = tuple[int, int, int]


def segment_name(seq: int) -> str:
    """The file name of a segment whose first record is ``seq``."""
    return f"{seq:020d}{SEGMENT_SUFFIX}"


def segment_start(name: str) -> int:
    """The sequence number a segment file name carries; ValueError when it is not one."""
    return int(name[: -len(SEGMENT_SUFFIX)])


def segment_paths(directory: Path) -> list[Path]:
    """The segment files of a spool directory, oldest first."""
    return sorted(p for p in directory.iterdir() if p.name.endswith(SEGMENT_SUFFIX))


def _crc(covered: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(covered))


def encode_record(seq: int, data: bytes) -> bytes:
    """Header + payload of one record."""
    head = struct.pack("<QI", seq, len(data))
    return head + struct.pack("<I", _crc(head, data)) + data


def scan(buf: bytes) -> tuple[list[RecordSpan], int]:
    """Walk the records of a segment image: ([(seq, payload offset, length)], valid length).

    Stops at the first record that is incomplete, fails its CRC or does not continue the sequence;
    everything from there on is a torn write.
    """
    records: list[RecordSpan] = []
    pos = 0
    end = len(buf)
    last = -1
    while pos + HEADER_SIZE <= end:
        seq, length, crc = _HEADER.unpack_from(buf, pos)
        start = pos + HEADER_SIZE
        if length > MAX_RECORD_BYTES or start + length > end or seq <= last:
            break
        if _crc(buf[pos : pos + _CRC_COVERED], buf[start : start + length]) != crc:
            break
        records.append((seq, start, length))
        last = seq
        pos = start + length
    return records, pos


def read_header(fh: BinaryIO) -> tuple[int, int]:
    """(seq, payload length) of the record at the file position, without reading its payload."""
    seq, length, _ = _HEADER.unpack(fh.read(HEADER_SIZE))
    return seq, length


def read_record(fh: BinaryIO) -> tuple[int, bytes] | None:
    """(seq, payload) of the record at the file position; None when it does not verify."""
    head = fh.read(HEADER_SIZE)
    seq, length, crc = _HEADER.unpack(head)
    data = fh.read(length)
    if len(data) != length or _crc(head[:_CRC_COVERED], data) != crc:
        return None
    return seq, data


def open_for_append(path: Path) -> int:
    """A descriptor appending to segment ``path`` (created owner-only: telegrams are personal)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def replace_segment(path: Path, blob: bytes) -> None:
    """Replace segment ``path`` by ``blob`` atomically (the caller fsyncs the directory)."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def truncate_segment(path: Path, length: int) -> None:
    """Cut segment ``path`` to ``length`` bytes, durably (a torn tail must not come back)."""
    with open(path, "r+b") as fh:
        fh.truncate(length)
        os.fsync(fh.fileno())


def read_cursor(directory: Path) -> int | None:
    """The cursor stored in ``directory``; None when there is none yet."""
    path = directory / CURSOR_NAME
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise SpoolError(f"spool cursor {path} is not a number: {text[:40]!r}") from exc
    if value < 0:
        raise SpoolError(f"spool cursor {path} is negative: {value}")
    return value


def write_cursor(directory: Path, cursor: int) -> None:
    """Store ``cursor`` with write + fsync + rename + directory fsync: old or new, never torn."""
    path = directory / CURSOR_NAME
    tmp = path.with_name(CURSOR_NAME + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{cursor}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that files created, renamed or deleted in it stay so."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
