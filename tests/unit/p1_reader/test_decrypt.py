"""DLMS general-glo-ciphering decryption with the four published vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p1_reader.decrypt import (
    SMARTY_AUTH_KEY,
    DecryptedFrame,
    FrameCounterGuard,
    FrameDecryptor,
    decrypt_frame,
    parse_frame_header,
)
from p1_reader.errors import AuthenticationError, DecryptionError, FrameError, ReplayError

ENCRYPTED = Path(__file__).resolve().parents[2] / "fixtures" / "encrypted"
VECTORS: list[dict[str, Any]] = json.loads((ENCRYPTED / "vectors.json").read_text())
PLAINTEXT = {
    # which plaintext file each vector carries (encrypted/README.md)
    "esphome_smarty_style_t210dr.hex": "plaintext_sagemcom_t210dr.txt",
    "dsmrparser_test_ggc_t210dr.hex": "plaintext_sagemcom_t210dr.txt",
    "nodedsmr_lux_spec_example_with_aad.hex": "plaintext_lux_spec_example_as_encrypted.txt",
    "nodedsmr_lux_spec_example_without_aad.hex": "plaintext_lux_spec_example_as_encrypted.txt",
}


def load(name: str) -> bytes:
    return bytes.fromhex((ENCRYPTED / name).read_text())


def auth_key_of(vector: dict[str, Any]) -> bytes | None:
    """vectors.json writes the AAD as '30 + <32 hex> (...)' or 'none (...)'."""
    aad: str = vector["aad"]
    if aad.startswith("none"):
        return None
    assert aad.startswith("30 + ")
    return bytes.fromhex(aad[5:37])


def key_of(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["encryption_key"])


def vector(name: str) -> dict[str, Any]:
    return next(v for v in VECTORS if v["file"] == name)


@pytest.mark.parametrize("vec", VECTORS, ids=[v["file"] for v in VECTORS])
def test_vector_decrypts_to_its_plaintext(vec: dict[str, Any]) -> None:
    frame = load(vec["file"])
    assert len(frame) == vec["bytes"]
    result = decrypt_frame(frame, key_of(vec), auth_key=auth_key_of(vec))
    assert result.plaintext == (ENCRYPTED / PLAINTEXT[vec["file"]]).read_bytes()
    assert result.system_title == bytes.fromhex(vec["system_title"].split()[0])
    assert result.frame_counter == int(vec["frame_counter"], 16)


@pytest.mark.parametrize("vec", VECTORS, ids=[v["file"] for v in VECTORS])
def test_header_fields(vec: dict[str, Any]) -> None:
    frame = load(vec["file"])
    header = parse_frame_header(frame)
    assert header.security_control == int(vec["security_control"], 16)
    assert header.tag_start - header.ciphertext_start == vec["ciphertext_len"]
    assert frame[header.tag_start :].hex().upper() == vec["gcm_tag"]


def test_binary_file_is_the_same_frame() -> None:
    raw = (ENCRYPTED / "esphome_smarty_style_t210dr.bin").read_bytes()
    assert raw == load("esphome_smarty_style_t210dr.hex")
    result = decrypt_frame(raw, b"\xaa" * 16, auth_key=SMARTY_AUTH_KEY)
    assert result.plaintext.startswith(b"/EST5")


def test_wrong_key_fails_authentication() -> None:
    frame = load("esphome_smarty_style_t210dr.hex")
    with pytest.raises(AuthenticationError, match="does not verify"):
        decrypt_frame(frame, b"\xab" * 16, auth_key=SMARTY_AUTH_KEY)


def test_wrong_authentication_key_fails() -> None:
    # same key and frame layout, but the frame was sealed with AK BB..BB, not the Smarty AK
    frame = load("dsmrparser_test_ggc_t210dr.hex")
    with pytest.raises(AuthenticationError):
        decrypt_frame(frame, b"\xaa" * 16, auth_key=SMARTY_AUTH_KEY)
    assert decrypt_frame(frame, b"\xaa" * 16, auth_key=b"\xbb" * 16).plaintext.startswith(b"/")


def test_with_aad_and_without_aad_vectors_are_not_interchangeable() -> None:
    with_aad = load("nodedsmr_lux_spec_example_with_aad.hex")
    without = load("nodedsmr_lux_spec_example_without_aad.hex")
    vec = vector("nodedsmr_lux_spec_example_with_aad.hex")
    key, auth_key = key_of(vec), auth_key_of(vec)
    # identical ciphertext, different tags
    assert with_aad[:-12] == without[:-12]
    assert with_aad[-12:] != without[-12:]
    with pytest.raises(AuthenticationError):
        decrypt_frame(with_aad, key, auth_key=None)
    with pytest.raises(AuthenticationError):
        decrypt_frame(without, key, auth_key=auth_key)
    a = decrypt_frame(with_aad, key, auth_key=auth_key)
    b = decrypt_frame(without, key, auth_key=None)
    assert a.plaintext == b.plaintext


def test_explicit_aad_overrides_the_auth_key() -> None:
    frame = load("nodedsmr_lux_spec_example_with_aad.hex")
    vec = vector("nodedsmr_lux_spec_example_with_aad.hex")
    aad = b"\x30" + bytes.fromhex("FFEEDDCCBBAA99887766554433221100")
    assert decrypt_frame(frame, key_of(vec), auth_key=None, aad=aad).frame_counter == 0x11223344
    with pytest.raises(AuthenticationError):
        decrypt_frame(frame, key_of(vec), auth_key=auth_key_of(vec), aad=b"")


def test_damaged_byte_150_fails_authentication() -> None:
    # dsmr_parser's test_damaged_frame
    frame = bytearray(load("dsmrparser_test_ggc_t210dr.hex"))
    assert frame[150] != 0
    frame[150] = 0
    with pytest.raises(AuthenticationError):
        decrypt_frame(bytes(frame), b"\xaa" * 16, auth_key=b"\xbb" * 16)


def test_tampered_header_fails_authentication() -> None:
    # the frame counter is part of the IV: changing it breaks the tag
    frame = bytearray(load("esphome_smarty_style_t210dr.hex"))
    frame[17] ^= 0x01
    with pytest.raises(AuthenticationError):
        decrypt_frame(bytes(frame), b"\xaa" * 16, auth_key=SMARTY_AUTH_KEY)


def test_truncated_frame_is_a_frame_error_with_offset() -> None:
    frame = load("esphome_smarty_style_t210dr.hex")
    with pytest.raises(FrameError, match=r"byte 10: .*511 bytes, got 400 \(truncated\)"):
        decrypt_frame(frame[:400], b"\xaa" * 16, auth_key=SMARTY_AUTH_KEY)
    with pytest.raises(FrameError, match="inside the system title"):
        decrypt_frame(frame[:7], b"\xaa" * 16, auth_key=SMARTY_AUTH_KEY)
    with pytest.raises(FrameError, match="trailing bytes"):
        decrypt_frame(frame + b"\x00", b"\xaa" * 16, auth_key=SMARTY_AUTH_KEY)


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda f: b"\xdc" + f[1:], FrameError, "byte 0: expected general-glo-ciphering"),
        (lambda f: f[:1] + b"\x09" + f[2:], FrameError, "byte 1: system-title length"),
        (lambda f: f[:10] + b"\x83" + f[11:], FrameError, "byte 10: unsupported"),
        (lambda f: f[:13] + b"\x31" + f[14:], DecryptionError, "byte 13: security suite 1"),
        (lambda f: f[:13] + b"\x10" + f[14:], DecryptionError, "not encrypted"),
        (lambda f: f[:13] + b"\xb0" + f[14:], DecryptionError, "compressed"),
    ],
    ids=["tag", "title-length", "length-marker", "suite", "not-encrypted", "compressed"],
)
def test_malformed_headers(mutate: Any, error: type[Exception], message: str) -> None:
    frame = mutate(load("esphome_smarty_style_t210dr.hex"))
    with pytest.raises(error, match=message):
        decrypt_frame(frame, b"\xaa" * 16, auth_key=SMARTY_AUTH_KEY)


def test_short_form_length_is_read() -> None:
    # a frame with a one-byte A-XDR length parses up to the tag check
    frame = load("esphome_smarty_style_t210dr.hex")
    body = frame[13:13 + 18 + 12]  # SC + FC + 13 bytes of ciphertext + 12-byte "tag"
    short = frame[:10] + bytes((len(body),)) + body
    header = parse_frame_header(short)
    assert header.ciphertext_start == 16
    with pytest.raises(AuthenticationError):
        decrypt_frame(short, b"\xaa" * 16, auth_key=SMARTY_AUTH_KEY)


def test_key_length_is_checked() -> None:
    frame = load("esphome_smarty_style_t210dr.hex")
    with pytest.raises(ValueError, match="16 bytes"):
        decrypt_frame(frame, b"\xaa" * 15, auth_key=SMARTY_AUTH_KEY)
    with pytest.raises(ValueError, match="authentication key must be 16 bytes"):
        decrypt_frame(frame, b"\xaa" * 16, auth_key=b"\x00" * 8)


def test_frame_counter_guard_rejects_repeated_and_decreasing_counters() -> None:
    guard = FrameCounterGuard()
    title_a, title_b = b"SYSTEMID", b"systitle"

    def frame(title: bytes, counter: int) -> DecryptedFrame:
        return DecryptedFrame(title, counter, b"")

    assert guard.check(frame(title_a, 10)) == 0
    assert guard.check(frame(title_a, 11)) == 0
    assert guard.check(frame(title_a, 14)) == 2  # two frames missed
    # counters are per system title
    assert guard.check(frame(title_b, 1)) == 0
    with pytest.raises(ReplayError, match="repeated frame counter 14"):
        guard.check(frame(title_a, 14))
    with pytest.raises(ReplayError, match=r"decreasing frame counter 3 .*\(last accepted 14\)"):
        guard.check(frame(title_a, 3))
    # a rejected counter does not move the guard
    assert guard.check(frame(title_a, 15)) == 0
    guard.reset(title_a)  # key change: the meter restarts at 0
    assert guard.check(frame(title_a, 0)) == 0
    with pytest.raises(ReplayError):
        guard.check(frame(title_b, 1))
    guard.reset()
    assert guard.check(frame(title_b, 1)) == 0


def test_decryptor_rejects_a_replayed_frame() -> None:
    decryptor = FrameDecryptor(b"\xaa" * 16, auth_key=SMARTY_AUTH_KEY)
    frame = load("esphome_smarty_style_t210dr.hex")
    assert decryptor.decrypt(frame).frame_counter == 0x10000001
    with pytest.raises(ReplayError, match="repeated"):
        decryptor.decrypt(frame)


def test_decryptor_does_not_record_unauthenticated_counters() -> None:
    decryptor = FrameDecryptor(b"\xaa" * 16, auth_key=SMARTY_AUTH_KEY)
    # sealed with another AK: fails the tag, so its counter must not be recorded
    with pytest.raises(AuthenticationError):
        decryptor.decrypt(load("dsmrparser_test_ggc_t210dr.hex"))
    assert decryptor.decrypt(load("esphome_smarty_style_t210dr.hex")).plaintext.startswith(b"/")
