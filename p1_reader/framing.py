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
* A telegram with no ``!`` line at all (DSMR 2.2 meters and captures that leave it out) ends
  where the next header starts a line, or at the end of the input. It is a telegram when it
  needs no CRC (it does not claim DSMR 4+: :func:`p1_reader.obis.claims_dsmr4`), holds a data
  line and its last line is complete; otherwise it is a truncated frame (a DSMR 4/5 telegram cut
  at a line end by a restart is still counted as truncated, as before).
* End of input (:meth:`Framer.finish`: a file, stdin) implies the line end after the last ``!``
  line: a file that stops right after ``!CRC`` holds a complete telegram. A telegram cut anywhere
  else is truncated. A port that went away (:meth:`Framer.flush`) is not an end of input: the
  stream resumes on the next connection, so whatever is pending there was cut off.
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
from p1_reader.obis import claims_dsmr4

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

    def finish(self) -> list[Frame]:
        """End of input (a file or stdin ended): return the final telegram when what is
        pending is a complete one lacking only the line end after its ``!`` line, or a complete
        telegram with no ``!`` line (see the module docstring); count the rest as
        :meth:`flush` does, and reset."""
        out: list[Frame] = []
        if self._state is _State.PLAIN and self._header_checked:
            buf, pos = self._buf, self._pos
            n = len(buf)
            bang = buf.find(_BANG, self._scan)
            ndigits = -1 if bang < 0 else _match_end_at_eof(buf, bang)
            if ndigits >= 0:
                self._finish_plain(out, bytes(buf[pos:n]), bang - pos, ndigits, n)
            else:
                # a line-start '/' too close to the end to tell whether it is a header: the
                # telegram before it still ends there, the fragment was cut off
                header = _line_start_header(buf, max(self._scan - 1, pos + 1), n)
                end = -header if header < _NO_END else n
                self._finish_unterminated(out, bytes(buf[pos:end]))
                if end < n:
                    self._drop_truncated(n - end)
        self.flush()
        return out

    def flush(self) -> None:
        """The stream broke off (port closed; a reconnect resumes it): count whatever is
        pending as skipped or truncated and reset. At the end of a file use :meth:`finish`."""
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
            # a header at the start of a line before any '!' ends a telegram that has no '!'
            # line (DSMR 2.2), or one cut at a line end by a restart (one C-level find on the
            # hot path; the helper only runs on a hit)
            stop = bang if bang >= 0 else limit
            if buf.find(b"\n/", i - 1 if i > pos + 1 else pos + 1, stop) >= 0:
                header = _line_start_header(buf, i - 1 if i > pos + 1 else pos + 1, stop)
                if header >= 0:
                    self._finish_unterminated(out, bytes(buf[pos:header]))
                    return True
                if header != _NO_END:  # "\n/" at the end of the buffer: is it a header?
                    self._scan = -header
                    return False
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

    def _finish_unterminated(self, out: list[Frame], frame: bytes) -> None:
        """Decide on a frame that ends without a ``!`` line (at a line-start header or at the
        end of input): emit it as a CRC-less telegram, or count it as truncated."""
        inner = _last_inner_header(frame, len(frame))
        if inner > 0:  # a restart mid-line: the part before it was cut short
            self._drop_truncated(inner)
            frame = frame[inner:]
        head = frame.find(b"\n")
        if (
            frame.endswith(b"\n")
            and frame.find(b"(", head) > 0
            and not claims_dsmr4(*_version_objects(frame))
        ):
            self.stats.telegrams += 1
            self._emit(out, Frame(FrameKind.TELEGRAM, frame, None), self._pos + len(frame))
            return
        self._drop_truncated(len(frame))
        self._state = _State.SCAN

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


def _match_end_at_eof(buf: bytearray, bang: int) -> int:
    """At the end of input: the number of CRC digits when ``!`` at ``bang`` starts a valid end
    line whose line end is missing or complete (``!`` [0-4 hex] [NUL] [CR] [LF] and nothing
    after), else -1."""
    n = len(buf)
    j = bang + 1
    while j < n and j - bang <= 4 and buf[j] in _HEX:
        j += 1
    ndigits = j - bang - 1
    for optional in (_NUL, _CR, _LF):
        if j < n and buf[j] == optional:
            j += 1
    return ndigits if j == n else -1


def _line_start_header(buf: bytearray, start: int, stop: int) -> int:
    """Index of the first ``/`` + three letters + a digit that starts a line in
    ``buf[start:stop]``; _NO_END when there is none; ``-(i)`` when the bytes after a
    ``\\n/`` at ``i - 1`` have not all arrived yet (resume the search at ``i``)."""
    p = buf.find(b"\n/", start, stop)
    while p >= 0:
        head = buf[p + 2 : p + 6]
        if len(head) < 4 and p + 2 + len(head) == len(buf):
            return -(p + 1)
        if (
            len(head) == 4
            and head[0] in _LETTERS
            and head[1] in _LETTERS
            and head[2] in _LETTERS
            and head[3] in _DIGITS
        ):
            return p + 1
        p = buf.find(b"\n/", p + 1, stop)
    return _NO_END


def _version_objects(frame: bytes) -> tuple[str | None, bool]:
    """(the ``1-3:0.2.8`` value or None, whether ``0-0:96.1.4`` is present) of a raw frame:
    what :func:`p1_reader.obis.claims_dsmr4` decides on (the parser reads the same two objects
    from its parsed lines)."""
    version: str | None = None
    at = frame.find(b"\n1-3:0.2.8(")
    if at >= 0:
        start = at + 11
        stop = frame.find(b")", start)
        version = frame[start : stop if stop >= 0 else len(frame)].decode("latin-1")
    return version, b"\n0-0:96.1.4(" in frame


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
