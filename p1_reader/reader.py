"""Read telegrams from a P1 source: the supervised read loop and the ``read`` subcommand.

A source is a local serial port, a remote one (``rfc2217://``), a raw TCP stream from a
P1-to-network bridge (``socket://``) or a HomeWizard P1 meter's local API (``http://``); see
:mod:`p1_reader.sources`. The loop is the same for all of them and survives the source going
away: when it disappears (open fails, read raises, the connection drops, or no byte arrives for
``idle_timeout``) it logs ONE warning, retries with capped exponential backoff (debug-level lines
only), and logs once more when bytes flow again. A source that answers but refuses us (the
HomeWizard local API switched off) is logged as an error and retried at the longest backoff.
Whatever a dropped connection left half-framed is discarded, never parsed.

``--profile auto`` opens at 115200 8N1 (DSMR 4/5) and waits for a telegram that validates; after
``detect_timeout`` (or early, when most bytes have bit 7 set, the signature of a 7E1 line read
as 8N1) it tries 9600 7E1 (DSMR 2.2/3), alternating until a telegram validates, then keeps that
profile for good (also across reconnects). On ``rfc2217://`` the same happens: the client sets
the remote port's line. A ``socket://`` bridge has its own line settings, so there auto-detection
only decides whether bit 7 is cleared (a bridge set to 8N1 in front of a 7E1 meter passes the
parity bit on): it switches on the high-bit signature alone and never reconnects just because no
telegram validated in time. An ``http://`` meter hands out text it already validated: no
profile applies.

With a key, the framer looks only for encrypted DLMS frames (0xDB …); without one, only for
plaintext telegrams. Decrypted telegrams are parsed without a CRC requirement: the GCM tag
already authenticated every byte.

Importing this module does not import pyserial or aiohttp: :func:`p1_reader.sources.open_source`
loads the edge module of a source kind when a reader first opens such a source.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from p1_reader.cliargs import add_key_arguments, add_source_arguments
from p1_reader.decrypt import SMARTY_AUTH_KEY, FrameDecryptor
from p1_reader.errors import ChecksumError, P1Error, SourceError, SourceRefusedError
from p1_reader.framing import Frame, FrameKind, Framer
from p1_reader.jsonout import telegram_to_json
from p1_reader.parser import parse_telegram
from p1_reader.profiles import DSMR2, DSMR4, PROFILES, SerialProfile
from p1_reader.sources import Connection, LastTelegram, SourceKind, parse_port
from p1_reader.telegram import Telegram

log = logging.getLogger(__name__)

#: early auto-detect switch: this many bytes with bit 7 set and no valid telegram yet
_HIGH_BIT_SWITCH = 256


@dataclass(slots=True, frozen=True)
class Backoff:
    """Delays between reconnect attempts: initial, ×factor per failure, capped at maximum."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0


@dataclass(slots=True)
class ReaderState:
    """Live counters and connection state of a reader (for logs, metrics and tests)."""

    #: set while the source is open
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    telegrams: int = 0
    rejected: int = 0
    #: rejection counts by ``P1Error.reason``
    reasons: Counter[str] = field(default_factory=Counter)
    disconnects: int = 0
    #: the profile in use once detected or configured (``dsmr2`` / ``dsmr4``)
    profile: str | None = None
    framer: Framer | None = None


class P1Reader:
    """Supervised reader of one P1 source; :meth:`telegrams` yields validated telegrams.

    ``port``: a serial device or a URL (:mod:`p1_reader.sources`); ValueError when it is
    neither, or when ``key`` is given for an HTTP meter (it hands out plaintext only).
    ``poll_interval``: seconds between two polls of an HTTP meter.
    """

    def __init__(
        self,
        port: str,
        profile: str = "auto",
        *,
        key: bytes | None = None,
        auth_key: bytes | None = SMARTY_AUTH_KEY,
        backoff: Backoff | None = None,
        detect_timeout: float = 25.0,
        idle_timeout: float | None = 60.0,
        poll_interval: float = 1.0,
        state: ReaderState | None = None,
    ) -> None:
        if profile != "auto" and profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}: use auto, {', '.join(PROFILES)}")
        self._spec = parse_port(port)
        if self._spec.kind is SourceKind.HTTP:
            if key is not None:
                raise ValueError(
                    "--key does not apply to an http:// meter: it hands out plaintext telegrams"
                )
            # the dongle reads the P1 port itself and hands out text: nothing to detect or mask
            profile = DSMR4.name
        if poll_interval <= 0:
            raise ValueError(f"poll interval must be positive, not {poll_interval}")
        self.port = port
        self.poll_interval = poll_interval
        self._last = LastTelegram()
        self._locked = None if profile == "auto" else PROFILES[profile]
        self._candidates = (DSMR4, DSMR2)
        self._candidate = 0
        self._switches = 0
        self._decryptor = FrameDecryptor(key, auth_key=auth_key) if key is not None else None
        self.backoff = backoff or Backoff()
        self.detect_timeout = detect_timeout
        self.idle_timeout = idle_timeout
        self.state = state or ReaderState()
        self.framer = Framer(plaintext=key is None, encrypted=key is not None)
        self.state.framer = self.framer
        if self._locked is not None:
            self.state.profile = self._locked.name

    def _validate(self, frame: Frame) -> tuple[bytes, Telegram] | None:
        """Decrypt/parse one frame; log and count a rejection (never its content)."""
        state = self.state
        try:
            if frame.kind is FrameKind.ENCRYPTED:
                if self._decryptor is None:  # unreachable: the framer only frames what we ask
                    raise P1Error("encrypted frame but no key configured")
                plaintext = self._decryptor.decrypt(frame.data).plaintext
                telegram = parse_telegram(plaintext, require_crc=False)
                data = plaintext
            else:
                if frame.crc_ok is False:
                    raise ChecksumError(f"CRC does not match ({len(frame.data)}-byte telegram)")
                telegram = parse_telegram(frame.data)
                data = frame.data
        except P1Error as exc:
            state.rejected += 1
            state.reasons[exc.reason] += 1
            log.warning("rejected %s from %s: %s: %s", frame.kind.value, self.port, exc.reason, exc)
            return None
        state.telegrams += 1
        return data, telegram

    async def telegrams(self) -> AsyncGenerator[tuple[bytes, Telegram], None]:
        """Yield (telegram bytes, parsed telegram) forever, reconnecting as needed."""
        backoff = self.backoff
        delay = backoff.initial
        outage_since: float | None = None
        attempts = 0
        refused: str | None = None
        wait_before_open = False
        while True:
            if wait_before_open:
                await asyncio.sleep(delay)
                delay = min(delay * backoff.factor, backoff.maximum)
            wait_before_open = True
            profile = self._locked or self._candidates[self._candidate]
            try:
                conn = await self._open(profile)
            except SourceRefusedError as exc:
                attempts += 1
                # waiting does not fix a refusal: say so as an error, once, and ask rarely
                delay = backoff.maximum
                if outage_since is None or refused != str(exc):
                    outage_since = outage_since or time.monotonic()
                    log.error("%s; retrying every %g s", exc, backoff.maximum)
                else:
                    log.debug("retry %d: %s", attempts, exc)
                refused = str(exc)
                continue
            except SourceError as exc:
                attempts += 1
                refused = None
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning(
                        "unavailable: %s; retrying with backoff up to %g s", exc, backoff.maximum
                    )
                else:
                    log.debug("retry %d: %s", attempts, exc)
                continue
            self.state.connected.set()
            # during an outage a reopen is one more attempt, not news (recovery = bytes flow)
            log.log(
                logging.INFO if outage_since is None else logging.DEBUG,
                "opened %s (%s)",
                self.port,
                conn.describe(),
            )
            try:
                async with contextlib.aclosing(self._read_connection(conn)) as items:
                    async for item in items:
                        if outage_since is not None:
                            log.info(
                                "%s recovered after %.1f s (%d failed attempts); reading resumed",
                                self.port,
                                time.monotonic() - outage_since,
                                attempts,
                            )
                            outage_since, attempts, delay = None, 0, backoff.initial
                            refused = None
                        if item is not None:
                            yield item
                # the connection ended without an error: a profile switch; reopen at once
                wait_before_open = False
            except SourceError as exc:
                self.state.disconnects += 1
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning(
                        "disconnected: %s; reconnecting with backoff up to %g s",
                        exc,
                        backoff.maximum,
                    )
                else:
                    log.debug("%s failed again: %s", self.port, exc)
            finally:
                self.state.connected.clear()
                # a telegram cut off by the drop is counted as truncated and discarded here,
                # never completed with what the next connection brings (nor parsed on its own)
                self.framer.flush()
                await conn.close()

    async def _open(self, profile: SerialProfile) -> Connection:
        """Open the source; SourceError when it cannot be opened now."""
        # Each edge module is imported here, where a source of its kind is opened, and nowhere
        # above: the CLI registers every subcommand by importing its module, so a top-level
        # import would load pyserial for the pure ``decode`` command too (and for ``forward
        # --input``, which never opens a port); a network source never loads pyserial either.
        spec = self._spec
        if spec.kind is SourceKind.TCP:
            from p1_reader.tcp_stream import open_tcp_stream

            return await open_tcp_stream(spec.text, profile)
        if spec.kind is SourceKind.HTTP:
            from p1_reader.homewizard import open_homewizard

            return await open_homewizard(
                spec.text, profile, poll_interval=self.poll_interval, last=self._last
            )
        from p1_reader.serial_port import open_serial

        return await open_serial(spec.text, profile)

    async def _read_connection(
        self, conn: Connection
    ) -> AsyncGenerator[tuple[bytes, Telegram] | None, None]:
        """Read one open connection. Yields None when bytes arrived but no telegram completed
        (so the caller can see the source is alive), raises SourceError when the source fails
        or stays silent for ``idle_timeout``, returns to switch the auto-detected profile."""
        detecting = self._locked is None
        # only where the profile sets the line may "no valid telegram in time" mean "wrong line"
        timed = self._spec.kind.sets_line
        deadline = time.monotonic() + self.detect_timeout
        high_bit = 0
        while True:
            timeout = self.idle_timeout
            if detecting and timed:
                left = max(0.0, deadline - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            try:
                chunk = await asyncio.wait_for(conn.read(), timeout)
            except TimeoutError:
                if detecting and timed and time.monotonic() >= deadline:
                    self._switch_profile(conn, f"no valid telegram within {self.detect_timeout} s")
                    return
                raise SourceError(f"no data from {conn.path} for {self.idle_timeout} s") from None
            yielded = False
            for frame in self.framer.feed(chunk):
                item = self._validate(frame)
                if item is None:
                    continue
                if detecting:
                    self._locked = conn.profile
                    self.state.profile = conn.profile.name
                    detecting = False
                    log.info("detected %s (%s)", conn.profile.name, conn.describe())
                yielded = True
                yield item
            if not yielded:
                yield None
            if detecting and not conn.profile.mask_7bit and self._decryptor is None:
                high_bit += len(chunk) - len(chunk.translate(None, _HIGH_BYTES))
                if high_bit >= _HIGH_BIT_SWITCH:
                    self._switch_profile(conn, f"{high_bit} bytes with bit 7 set")
                    return

    def _switch_profile(self, conn: Connection, why: str) -> None:
        self._candidate = (self._candidate + 1) % len(self._candidates)
        nxt = self._candidates[self._candidate]
        self._switches += 1
        # a silent meter makes detection alternate forever: say it once per profile, then quietly
        level = logging.INFO if self._switches <= len(self._candidates) else logging.DEBUG
        if self._spec.kind.sets_line:
            trying = nxt.describe()
        else:
            trying = "bit 7 cleared" if nxt.mask_7bit else "bit 7 kept"
        log.log(
            level, "%s (%s): %s; trying %s (%s)", conn.path, conn.describe(), why, trying, nxt.name
        )


_HIGH_BYTES = bytes(range(0x80, 0x100))


async def read_telegrams(
    port: str,
    profile: str = "auto",
    *,
    key: bytes | None = None,
    auth_key: bytes | None = SMARTY_AUTH_KEY,
    backoff: Backoff | None = None,
    detect_timeout: float = 25.0,
    idle_timeout: float | None = 60.0,
    poll_interval: float = 1.0,
    state: ReaderState | None = None,
) -> AsyncGenerator[bytes, None]:
    """Yield validated plaintext telegrams (``/`` … ``!CRC`` CR LF) from a P1 source, forever.

    ``port``: a serial device or a ``socket://``, ``rfc2217://`` or ``http://`` URL
    (:mod:`p1_reader.sources`); ``poll_interval``: seconds between polls of an ``http://`` meter.

    ``profile``: ``auto``, ``dsmr2`` (9600 7E1) or ``dsmr4`` (115200 8N1). ``key``: 16-byte
    encryption key for DLMS-encrypted meters (frames are decrypted, authenticated and
    replay-checked; the decrypted telegram is yielded); ``auth_key``: the authentication key
    for the AAD (default: the Luxembourg Smarty key), None for frames sealed without AAD.
    Rejected frames are logged (reason only) and counted in ``state``. The port is reopened
    with ``backoff`` when it disappears. Close the generator (``aclose``) to release the port.
    """
    reader = P1Reader(
        port,
        profile,
        key=key,
        auth_key=auth_key,
        backoff=backoff,
        detect_timeout=detect_timeout,
        idle_timeout=idle_timeout,
        poll_interval=poll_interval,
        state=state,
    )
    async with contextlib.aclosing(reader.telegrams()) as items:
        async for data, _telegram in items:
            yield data


# -- the ``read`` subcommand -------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``read``: P1 source → JSON lines on stdout."""
    parser = subparsers.add_parser(
        "read",
        help="read telegrams from a P1 port or network dongle and print them as JSON lines",
        description=(
            "Read DSMR telegrams from a P1 port (a serial device, or a network dongle given as "
            "a URL) and print one JSON object per telegram (registers only, no power values). "
            "Rejected telegrams are logged to stderr."
        ),
    )
    add_source_arguments(parser)
    add_key_arguments(parser)
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        metavar="N",
        help="exit after N telegrams",
    )
    parser.add_argument(
        "--max-backoff",
        type=float,
        default=30.0,
        metavar="S",
        help="longest wait between reconnect attempts (default 30 s)",
    )
    parser.add_argument(
        "--initial-backoff",
        type=float,
        default=0.5,
        metavar="S",
        help="first wait between reconnect attempts (default 0.5 s)",
    )
    parser.add_argument(
        "--detect-timeout",
        type=float,
        default=25.0,
        metavar="S",
        help="auto profile: seconds to wait for a valid telegram before switching (default 25)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="reopen the source after this many seconds without a byte (an http:// meter: "
        "without a new telegram) (default 60; 0 = never)",
    )
    parser.set_defaults(func=run_read)


async def _read_main(args: argparse.Namespace) -> int:
    try:
        reader = P1Reader(
            args.port,
            args.profile,
            key=args.key,
            auth_key=args.auth_key,
            backoff=Backoff(initial=args.initial_backoff, maximum=args.max_backoff),
            detect_timeout=args.detect_timeout,
            idle_timeout=args.idle_timeout or None,
            poll_interval=args.poll_interval,
        )
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    count = 0
    out = sys.stdout
    async with contextlib.aclosing(reader.telegrams()) as items:
        async for _data, telegram in items:
            out.write(telegram_to_json(telegram) + "\n")
            out.flush()
            count += 1
            if args.count is not None and count >= args.count:
                break
    return 0


def run_read(args: argparse.Namespace) -> int:
    """Entry point of ``read``."""
    try:
        return asyncio.run(_read_main(args))
    except KeyboardInterrupt:
        return 130
