"""The ``decode`` subcommand: telegram files → JSON lines on stdout.

A file may hold several telegrams back to back (a capture): it is cut with the same
:class:`~p1_reader.framing.Framer` as the serial stream, and its end is an end of input
(:meth:`~p1_reader.framing.Framer.finish`): a file that stops right after its last ``!CRC``
(no final line end) or a DSMR 2.2 telegram without a ``!`` line is complete; ``forward
--input`` reads files by the same rule. ``.hex`` files are whitespace-separated
hex (encrypted frames as published); ``.bin`` files and anything else are raw bytes. Encrypted
DLMS frames need ``--key``.

Exit status 0 when every telegram decoded; 1 when any file is unreadable, holds no complete
telegram, a truncated or oversize telegram, or a telegram that fails (each problem is reported on
stderr with the file name, the telegram's index in the file and the reason). Bytes outside
telegrams (leading/trailing garbage) are reported but are not a failure.

Pure apart from reading the named files: nothing here imports the serial port or HTTP modules
(``tests/unit/p1_reader/test_purity.py`` holds it to that).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from p1_reader.cliargs import add_key_arguments
from p1_reader.decrypt import decrypt_frame
from p1_reader.errors import P1Error
from p1_reader.framing import Frame, FrameKind, Framer
from p1_reader.jsonout import telegram_to_json
from p1_reader.parser import parse_telegram
from p1_reader.telegram import Telegram


class InputError(Exception):
    """A file that cannot be read as telegrams at all."""


@dataclass(slots=True, frozen=True)
class Decoded:
    """One telegram of a file: its 1-based index, and the telegram or the error."""

    index: int
    telegram: Telegram | None
    error: P1Error | None


def load_bytes(path: Path) -> bytes:
    """The file's bytes; ``.hex`` files are hex-decoded (whitespace ignored)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}") from exc
    if path.suffix.lower() != ".hex":
        return raw
    try:
        return bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"not a hex file: {exc}") from exc


def decode_bytes(
    data: bytes,
    *,
    require_crc: bool | None = None,
    key: bytes | None = None,
    auth_key: bytes | None = None,
) -> tuple[list[Decoded], Framer]:
    """Frame ``data`` and decode every frame; the framer's stats tell what was skipped."""
    framer = Framer()
    frames = framer.feed(data)
    frames += framer.finish()  # the file ended: its last telegram may lack a final line end
    return list(_decode_frames(frames, require_crc, key, auth_key)), framer


def _decode_frames(
    frames: list[Frame],
    require_crc: bool | None,
    key: bytes | None,
    auth_key: bytes | None,
) -> Iterator[Decoded]:
    for index, frame in enumerate(frames, start=1):
        try:
            if frame.kind is FrameKind.ENCRYPTED:
                if key is None:
                    raise P1Error("encrypted DLMS frame: pass --key (and --auth-key/--no-aad)")
                plaintext = decrypt_frame(frame.data, key, auth_key=auth_key).plaintext
                # the GCM tag authenticated every byte; the inner CRC adds nothing
                telegram = parse_telegram(plaintext, require_crc=False)
            else:
                telegram = parse_telegram(frame.data, require_crc=require_crc)
        except P1Error as exc:
            yield Decoded(index, None, exc)
            continue
        yield Decoded(index, telegram, None)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``decode``: telegram files → JSON lines."""
    parser = subparsers.add_parser(
        "decode",
        help="decode telegram files to JSON lines",
        description=(
            "Decode telegram files (several telegrams back to back allowed; .hex = hex text of "
            "encrypted frames) to one JSON object per telegram on stdout."
        ),
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument(
        "--no-crc-check",
        action="store_true",
        help="accept telegrams whose CRC is missing or does not match",
    )
    add_key_arguments(parser)
    parser.set_defaults(func=run_decode)


def run_decode(args: argparse.Namespace) -> int:
    """Entry point of ``decode``."""
    require_crc = False if args.no_crc_check else None
    failed = False
    out, err = sys.stdout, sys.stderr
    for path in args.files:
        try:
            data = load_bytes(path)
        except InputError as exc:
            err.write(f"decode: {path}: {exc}\n")
            failed = True
            continue
        results, framer = decode_bytes(
            data, require_crc=require_crc, key=args.key, auth_key=args.auth_key
        )
        for item in results:
            if item.telegram is not None:
                out.write(telegram_to_json(item.telegram) + "\n")
            elif item.error is not None:
                err.write(
                    f"decode: {path}: telegram {item.index}: {item.error.reason}: {item.error}\n"
                )
                failed = True
        stats = framer.stats
        if not results:
            err.write(f"decode: {path}: no complete telegram found ({len(data)} bytes)\n")
            failed = True
        if stats.truncated_frames or stats.oversize_frames:
            err.write(
                f"decode: {path}: {stats.truncated_frames} truncated and "
                f"{stats.oversize_frames} oversize telegram(s) skipped\n"
            )
            failed = True
        elif stats.skipped_bytes and results:
            err.write(f"decode: {path}: note: {stats.skipped_bytes} bytes outside telegrams\n")
    out.flush()
    return 1 if failed else 0
