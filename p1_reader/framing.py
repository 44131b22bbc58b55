"""Cut a P1 byte stream into frames: plaintext DSMR telegrams and encrypted DLMS frames.

Pure code, no I/O: feed it whatever the serial port returned, in chunks of any size, and it
returns the complete frames; any chunking of the same bytes gives the same frames and the same
statistics (every decision depends on the bytes only, never on where a chunk ended).

Plaintext telegram: from a ``/`` header to ``!`` + 0–4 hex digits (any case) + optional NUL +
CR LF (a bare LF is tolerated). Encrypted frame: DLMS general-glo-ciphering APDU, ``DB 08``
<system title> <A-XDR length> <rest>, framed by its length (it is binary; ``/`` and ``!`` mean
nothing inside it).

Decisions (see DSMR.md §5, §6 and fixtures/streams/README.md):

* A header is a ``/`` whose line (up to CR/LF, at most 128 bytes) is 7-bit, NUL-free text
  without ``(``, ``)`` or ``!``. A header is recognised anywhere, not only after a line break:
  a meter that restarts a telegram puts the new header mid-line. Once inside a telegram, a ``/``
  does not end it (``0-0:96.13.0(test-/-test)`` is legal).
* The framer verifies the CRC when the telegram carries one. On a mismatch it looks for a ``/``
  inside the frame whose sub-frame does match (the restart case: truncated telegram + complete
  one); if found, the prefix is counted as a truncated frame and the sub-frame is emitted.
  Otherwise the whole frame is still emitted with ``crc_ok=False``: the framer is not the judge of
  ``--no-crc-check``; the parser rejects it with ChecksumError and the caller counts it.
* A CRC-less telegram (DSMR 2.2/3: ``!`` CR LF) cannot be checked; if it contains an inner header
  (``/`` + three letters + a digit, as every DSMR 2.2/3 header has) the framer resyncs at the last
  one.
* An encrypted frame that contains another ``DB 08 <same system title>`` was cut short by a
  restart: the prefix is counted as truncated and framing resumes at the inner header. (A frame
  cut so close to its end that the next header is not inside its length window still swallows
  the start of the next frame; decryption then rejects it.)
* Garbage between frames (NUL, 0xFF, a headless partial telegram, stray lines), truncated frames
  and oversize frames (> ``max_size`` bytes) are skipped and counted in :class:`FramerStats`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from p1_reader.crc import crc16_arc

#: largest plaintext telegram accepted (DSMR.md §1: accept ≥ 8 KiB, reject beyond)
MAX_TELEGRAM_SIZE = 8192
#: an encrypted frame may exceed the telegram it carries by its header (≤ 18 bytes) and GCM tag
_ENCRYPTION_OVERHEAD = 64
#: a header line longer than this is not a header (equipment ids are ≤ 96 characters)
_MAX_HEADER_LINE = 128

_SLASH = 0x2F
_BANG = 0x21
_CR = 0x0D
_LF = 0x0A
_NUL = 0x00
_GGC_TAG = 0xDB  # DLMS general-glo-ciphering
_SYSTEM_TITLE_LEN = 0x08
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset(b"0123456789")
_BAD_IN_HEADER = frozenset(b"()!")
#: security-control bytes the framer accepts: suite 0, encrypted (+ authenticated)
_SECURITY_CONTROL = frozenset((0x20, 0x30))


class FrameKind(enum.Enum):
    """What a frame carries."""

    TELEGRAM = "telegram"
    ENCRYPTED = "encrypted"


@dataclass(slots=True, frozen=True)
class Frame:
    """One complete frame cut from the stream."""

    kind: FrameKind
    #: the frame bytes: ``/`` … ``!CRC`` CR LF for telegrams, the whole APDU for encrypted frames
    data: bytes
    #: telegrams: True when the CRC is present and matches, False when it does not match, None
    #: when the telegram has no CRC. Always None for encrypted frames (GCM authenticates them).
    crc_ok: bool | None = None


@dataclass(slots=True)
class FramerStats:
    """What the framer emitted and what it threw away (bytes are never silently lost)."""

    telegrams: int = 0
    encrypted_frames: int = 0
    #: telegrams emitted with ``crc_ok=False``
    crc_mismatches: int = 0
    #: every byte not part of an emitted frame (garbage, truncated and oversize frames)
    skipped_bytes: int = 0
    #: runs of garbage between frames (a headless partial telegram, noise, a stray line)
    skipped_runs: int = 0
    #: frames cut short by a restart or by the end of the stream
    truncated_frames: int = 0
    #: frame candidates with no end within the size limit
    oversize_frames: int = 0


class _State(enum.Enum):
    SCAN = 0
    PLAIN = 1
    CIPHER = 2


# outcomes of _match_end
_NEED_MORE = -2
_NO_END = -1


class Framer:
    """Incremental framer; see the module docstring for the rules.

    ``plaintext`` / ``encrypted`` select what to look for: a reader configured with a key only
    looks for ``0xDB`` frames, a plain reader only for ``/`` headers; both by default.
    """

    def __init__(
        self,
        *,
        max_size: int = MAX_TELEGRAM_SIZE,
        plaintext: bool = True,
        encrypted: bool = True,
    ) -> None:
        if not (plaintext or encrypted):
            raise ValueError("a framer must look for plaintext or encrypted frames (or both)")
        if max_size < 16:
            raise ValueError(f"max_size {max_size} is too small for any telegram")
        self.max_size = max_size
        self.plaintext = plaintext
        self.encrypted = encrypted
        self.stats = FramerStats()
        self._buf = bytearray()
        self._pos = 0  # start of unconsumed bytes (a frame start when not scanning)
        self._state = _State.SCAN
        self._scan = 0  # where the search for the telegram end resumes
        self._header_checked = False
        self._in_garbage = False

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes from the stream; return the frames completed by them, in stream order."""
        buf = self._buf
        buf += data
        out: list[Frame] = []
        while True:
            state = self._state
            if state is _State.SCAN:
                if not self._scan_for_start():
                    break
            elif state is _State.PLAIN:
                if not self._step_plain(out):
                    break
            elif not self._step_cipher(out):
                break
        # compact: what is left is at most one partial frame (≤ max_size), so this is cheap
        if self._pos:
            del buf[: self._pos]
            self._scan -= self._pos
            self._pos = 0
        return out

    def flush(self) -> None:
        """End of stream (or port closed): count whatever is pending as skipped and reset."""
        rest = len(self._buf) - self._pos
        if rest:
            if self._state is _State.SCAN:
                self._skip(rest)
            else:
                self._drop_truncated(rest)
        self._buf.clear()
        self._pos = 0
        self._scan = 0
        self._state = _State.SCAN
        self._header_checked = False
        self._in_garbage = False

    # -- internals -------------------------------------------------------------------------

    def _skip(self, n: int) -> None:
        self.stats.skipped_bytes += n
        if not self._in_garbage:
            self.stats.skipped_runs += 1
            self._in_garbage = True
        self._pos += n

    def _drop_truncated(self, n: int) -> None:
        self.stats.truncated_frames += 1
        self.stats.skipped_bytes += n
        self._in_garbage = False
        self._pos += n

    def _start(self, state: _State) -> None:
        self._state = state
        self._scan = self._pos + 1
        self._header_checked = False

    def _not_a_start(self) -> None:
        """The byte at ``_pos`` looked like a frame start but is not: it is garbage."""
        self._skip(1)
        self._state = _State.SCAN

    def _emit(self, out: list[Frame], frame: Frame, end: int) -> None:
        out.append(frame)
        self._pos = end
        self._state = _State.SCAN
        self._in_garbage = False

    def _scan_for_start(self) -> bool:
        buf, pos = self._buf, self._pos
        slash = buf.find(_SLASH, pos) if self.plaintext else -1
        tag = buf.find(_GGC_TAG, pos) if self.encrypted else -1
        if slash < 0 and tag < 0:
            if len(buf) > pos:
                self._skip(len(buf) - pos)
            return False
        if tag < 0 or 0 <= slash < tag:
            start, state = slash, _State.PLAIN
        else:
            start, state = tag, _State.CIPHER
        if start > pos:
            self._skip(start - pos)
        self._start(state)
        return True

    def _check_header(self) -> bool | None:
        """True/False once the header line is complete (or too long); None: need more bytes."""
        buf, pos = self._buf, self._pos
        n = len(buf)
        stop = min(n, pos + 1 + _MAX_HEADER_LINE)
        for i in range(pos + 1, stop):
            c = buf[i]
            if c == _CR or c == _LF:
                # "/" + at least the three-letter manufacturer id
                return i - pos >= 4
            # control bytes are tolerated (a published Iskra IE sample has 0x02 in its header)
            if c == _NUL or c > 0x7E or c in _BAD_IN_HEADER:
                return False
        if stop < pos + 1 + _MAX_HEADER_LINE:
            return None
        return False

    def _step_plain(self, out: list[Frame]) -> bool:
        buf, pos = self._buf, self._pos
        if not self._header_checked:
            ok = self._check_header()
            if ok is None:
                return False
            if not ok:
                self._not_a_start()
                return True
            self._header_checked = True
        limit = pos + self.max_size
        i = self._scan
        while True:
            bang = buf.find(_BANG, i, limit)
            if bang < 0:
                if len(buf) >= limit:
                    self.stats.oversize_frames += 1
                    self._not_a_start()
                    return True
                self._scan = len(buf)
                return False
            end, ndigits = _match_end(buf, bang)
            if end == _NEED_MORE:
                self._scan = bang
                return False
            if end == _NO_END:
                i = bang + 1
                continue
            if end > limit:
                self.stats.oversize_frames += 1
                self._not_a_start()
                return True
            self._finish_plain(out, bytes(buf[pos:end]), bang - pos, ndigits, end)
            return True

    def _finish_plain(
        self, out: list[Frame], frame: bytes, bang: int, ndigits: int, end: int
    ) -> None:
        """Validate a complete ``/…!`` frame (``bang`` relative to the frame) and emit it."""
        stats = self.stats
        if ndigits:
            expected = int(frame[bang + 1 : bang + 1 + ndigits], 16)
            view = memoryview(frame)
            if crc16_arc(view[: bang + 1]) == expected:
                stats.telegrams += 1
                self._emit(out, Frame(FrameKind.TELEGRAM, frame, True), end)
                return
            # restart case: a complete telegram whose header sits inside the failed frame
            p = frame.find(b"/", 1, bang)
            while p > 0:
                if crc16_arc(view[p : bang + 1]) == expected:
                    self._drop_truncated(p)
                    stats.telegrams += 1
                    self._emit(out, Frame(FrameKind.TELEGRAM, frame[p:], True), end)
                    return
                p = frame.find(b"/", p + 1, bang)
            stats.telegrams += 1
            stats.crc_mismatches += 1
            self._emit(out, Frame(FrameKind.TELEGRAM, frame, False), end)
            return
        # no CRC: an inner DSMR 2.2/3 style header means the frame before it was cut short
        inner = _last_inner_header(frame, bang)
        if inner > 0:
            self._drop_truncated(inner)
            frame = frame[inner:]
        stats.telegrams += 1
        self._emit(out, Frame(FrameKind.TELEGRAM, frame, None), end)

    def _step_cipher(self, out: list[Frame]) -> bool:
        buf, pos = self._buf, self._pos
        n = len(buf)
        if n < pos + 11:
            if n >= pos + 2 and buf[pos + 1] != _SYSTEM_TITLE_LEN:
                self._not_a_start()
                return True
            return False
        if buf[pos + 1] != _SYSTEM_TITLE_LEN:
            self._not_a_start()
            return True
        # A-XDR length: short form < 0x80, else 0x81/0x82 + that many length bytes
        marker = buf[pos + 10]
        if marker < 0x80:
            length, body = marker, pos + 11
        elif marker == 0x81:
            if n < pos + 12:
                return False
            length, body = buf[pos + 11], pos + 12
        elif marker == 0x82:
            if n < pos + 13:
                return False
            length, body = (buf[pos + 11] << 8) | buf[pos + 12], pos + 13
        else:
            self._not_a_start()
            return True
        # security control + frame counter + at least one byte + 12-byte tag
        if length < 1 + 4 + 1 + 12:
            self._not_a_start()
            return True
        end = body + length
        if end - pos > self.max_size + _ENCRYPTION_OVERHEAD:
            self.stats.oversize_frames += 1
            self._not_a_start()
            return True
        if n <= body:
            return False
        if buf[body] not in _SECURITY_CONTROL:
            self._not_a_start()
            return True
        if n < end:
            return False
        frame = bytes(buf[pos:end])
        # a restart: the next frame of the same meter begins inside this one
        inner = frame.find(frame[:10], 1)
        if inner > 0:
            self._drop_truncated(inner)
            self._start(_State.CIPHER)
            return True
        self.stats.encrypted_frames += 1
        self._emit(out, Frame(FrameKind.ENCRYPTED, frame), end)
        return True


def _match_end(buf: bytearray, bang: int) -> tuple[int, int]:
    """Match ``!`` [0-4 hex] [NUL] (CR LF | LF) at ``bang``.

    Returns (end index, number of hex digits), or (_NEED_MORE, 0) / (_NO_END, 0).
    """
    n = len(buf)
    j = bang + 1
    ndigits = 0
    while ndigits < 4:
        if j >= n:
            return _NEED_MORE, 0
        if buf[j] not in _HEX:
            break
        ndigits += 1
        j += 1
    if j >= n:
        return _NEED_MORE, 0
    c = buf[j]
    if c == _NUL:
        j += 1
        if j >= n:
            return _NEED_MORE, 0
        c = buf[j]
    if c == _LF:
        return j + 1, ndigits
    if c == _CR:
        j += 1
        if j >= n:
            return _NEED_MORE, 0
        if buf[j] == _LF:
            return j + 1, ndigits
    return _NO_END, 0


def _last_inner_header(frame: bytes, bang: int) -> int:
    """Offset of the last ``/`` + 3 letters + digit inside ``frame[1:bang]``, or -1."""
    best = -1
    p = frame.find(b"/", 1, bang)
    while p > 0:
        head = frame[p + 1 : p + 5]
        if (
            len(head) == 4
            and head[0] in _LETTERS
            and head[1] in _LETTERS
            and head[2] in _LETTERS
            and head[3] in _DIGITS
        ):
            best = p
        p = frame.find(b"/", p + 1, bang)
    return best
