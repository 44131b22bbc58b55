"""Open DLMS general-glo-ciphering frames (Luxembourg Smarty, Austrian Sagemcom T210-D-r).

Layout (fixtures/encrypted/README.md)::

    DB 08 <system title: 8> <A-XDR length L> <SC: 1> <frame counter: 4> <ciphertext> <tag: 12>

AES-128-GCM with IV = system title + frame counter and a GCM tag truncated to 96 bits. The AAD is
the security-control byte followed by the 16-byte authentication key (AK); some test vectors and
meters use no AAD at all. Pure code: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from p1_reader.errors import AuthenticationError, DecryptionError, FrameError, ReplayError

#: the authentication key every Luxembourg Smarty meter uses (Smarty P1 spec v1.1.3 §3.2.5)
SMARTY_AUTH_KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF")

GGC_TAG = 0xDB
SYSTEM_TITLE_LEN = 8
TAG_LEN = 12
KEY_LEN = 16
_SC_AUTHENTICATED = 0x10
_SC_ENCRYPTED = 0x20
_SC_BROADCAST = 0x40
_SC_COMPRESSED = 0x80


@dataclass(slots=True, frozen=True)
class FrameHeader:
    """The clear-text fields of a general-glo-ciphering frame."""

    system_title: bytes
    security_control: int
    frame_counter: int
    #: offsets of the ciphertext and of the GCM tag inside the frame
    ciphertext_start: int
    tag_start: int


@dataclass(slots=True, frozen=True)
class DecryptedFrame:
    """A frame whose GCM tag verified."""

    system_title: bytes
    frame_counter: int
    #: the DSMR telegram carried by the frame (``/`` … ``!CRC`` CR LF)
    plaintext: bytes


def parse_frame_header(frame: bytes) -> FrameHeader:
    """Read and check the clear-text header; FrameError (with the byte offset) if malformed."""
    n = len(frame)
    if n < 2 or frame[0] != GGC_TAG:
        got = f"0x{frame[0]:02X}" if n else "nothing"
        raise FrameError(f"byte 0: expected general-glo-ciphering tag 0xDB, got {got}")
    if frame[1] != SYSTEM_TITLE_LEN:
        raise FrameError(f"byte 1: system-title length must be 8, got {frame[1]}")
    if n < 11:
        raise FrameError(f"frame ends at byte {n} inside the system title / length field")
    system_title = frame[2:10]
    marker = frame[10]
    if marker < 0x80:
        length, body = marker, 11
    elif marker in (0x81, 0x82):
        nbytes = marker - 0x80
        if n < 11 + nbytes:
            raise FrameError(f"frame ends at byte {n} inside the length field at byte 10")
        length = int.from_bytes(frame[11 : 11 + nbytes], "big")
        body = 11 + nbytes
    else:
        raise FrameError(f"byte 10: unsupported A-XDR length marker 0x{marker:02X}")
    if length < 1 + 4 + TAG_LEN:
        raise FrameError(f"byte 10: length {length} is shorter than SC + counter + GCM tag")
    if n != body + length:
        raise FrameError(
            f"byte 10: length field says the frame is {body + length} bytes, got {n}"
            + (" (truncated)" if n < body + length else " (trailing bytes)")
        )
    sc = frame[body]
    if sc & 0x0F:
        raise DecryptionError(f"byte {body}: security suite {sc & 0x0F} not supported (only 0)")
    if not sc & _SC_ENCRYPTED:
        raise DecryptionError(f"byte {body}: security control 0x{sc:02X} says not encrypted")
    if sc & _SC_COMPRESSED:
        raise DecryptionError(f"byte {body}: compressed frames (SC 0x{sc:02X}) not supported")
    frame_counter = int.from_bytes(frame[body + 1 : body + 5], "big")
    return FrameHeader(
        system_title=system_title,
        security_control=sc,
        frame_counter=frame_counter,
        ciphertext_start=body + 5,
        tag_start=n - TAG_LEN,
    )


def build_aad(security_control: int, auth_key: bytes | None) -> bytes:
    """AAD for a frame: SC byte + authentication key, or empty when there is no key."""
    if auth_key is None:
        return b""
    if len(auth_key) != KEY_LEN:
        raise ValueError(f"authentication key must be 16 bytes, got {len(auth_key)}")
    return bytes((security_control,)) + auth_key


def decrypt_frame(
    frame: bytes,
    key: bytes,
    *,
    auth_key: bytes | None,
    aad: bytes | None = None,
) -> DecryptedFrame:
    """Decrypt and authenticate one general-glo-ciphering frame.

    ``auth_key`` is the 16-byte authentication key (AAD = SC byte + AK, e.g.
    :data:`SMARTY_AUTH_KEY`); None means the frame was sealed without AAD. ``aad`` overrides the
    AAD verbatim when given. Raises FrameError for a malformed frame, AuthenticationError when
    the GCM tag does not verify (wrong key, wrong AAD, tampered or damaged bytes).
    """
    if len(key) != KEY_LEN:
        raise ValueError(f"encryption key must be 16 bytes, got {len(key)}")
    header = parse_frame_header(frame)
    if aad is None:
        aad = build_aad(header.security_control, auth_key)
    iv = header.system_title + frame[header.ciphertext_start - 4 : header.ciphertext_start]
    tag = frame[header.tag_start :]
    decryptor = Cipher(algorithms.AES(key), modes.GCM(iv, tag, min_tag_length=TAG_LEN)).decryptor()
    if aad:
        decryptor.authenticate_additional_data(aad)
    plaintext = decryptor.update(frame[header.ciphertext_start : header.tag_start])
    try:
        plaintext += decryptor.finalize()
    except InvalidTag as exc:
        title = header.system_title.hex().upper()
        raise AuthenticationError(
            f"GCM tag of frame {header.frame_counter} from system title {title} does not verify"
            " (wrong key, wrong authentication key/AAD, or damaged frame)"
        ) from exc
    return DecryptedFrame(header.system_title, header.frame_counter, plaintext)


class FrameCounterGuard:
    """Reject frames whose counter is not above the last one seen from the same system title.

    The meter increments the counter for every frame (Smarty spec §3.2.5); a repeated or lower
    counter is a replay (or a meter whose key was reset: the counter restarts at 0, and the
    operator resets the guard). Only authenticated frames should be passed in.
    """

    def __init__(self) -> None:
        self._last: dict[bytes, int] = {}

    def check(self, frame: DecryptedFrame) -> int:
        """Record the frame's counter; return how many frames were missed since the last one.

        Raises ReplayError when the counter did not increase.
        """
        last = self._last.get(frame.system_title)
        if last is not None and frame.frame_counter <= last:
            kind = "repeated" if frame.frame_counter == last else "decreasing"
            raise ReplayError(
                f"{kind} frame counter {frame.frame_counter} from system title "
                f"{frame.system_title.hex().upper()} (last accepted {last})"
            )
        self._last[frame.system_title] = frame.frame_counter
        return 0 if last is None else frame.frame_counter - last - 1

    def reset(self, system_title: bytes | None = None) -> None:
        """Forget one system title's counter (after a key change), or all of them."""
        if system_title is None:
            self._last.clear()
        else:
            self._last.pop(system_title, None)


class FrameDecryptor:
    """Decrypt a meter's frames with one key set, rejecting replays."""

    def __init__(self, key: bytes, *, auth_key: bytes | None) -> None:
        if len(key) != KEY_LEN:
            raise ValueError(f"encryption key must be 16 bytes, got {len(key)}")
        if auth_key is not None and len(auth_key) != KEY_LEN:
            raise ValueError(f"authentication key must be 16 bytes, got {len(auth_key)}")
        self.key = key
        self.auth_key = auth_key
        self.guard = FrameCounterGuard()

    def decrypt(self, frame: bytes) -> DecryptedFrame:
        """Decrypt, authenticate and replay-check one frame."""
        result = decrypt_frame(frame, self.key, auth_key=self.auth_key)
        self.guard.check(result)
        return result
