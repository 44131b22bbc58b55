"""Framer: fixture streams, restart/resync rules, noise accounting, chunking invariance."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p1_reader.crc import crc16_arc
from p1_reader.framing import Frame, FrameKind, Framer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TELEGRAMS = FIXTURES / "telegrams"
ENCRYPTED = FIXTURES / "encrypted"
INDEX = {entry["file"]: entry for entry in json.loads((FIXTURES / "index.json").read_text())}


def fixture(name: str) -> bytes:
    return (TELEGRAMS / name).read_bytes()


def hex_fixture(name: str) -> bytes:
    return bytes.fromhex((ENCRYPTED / name).read_text())


def frame_all(data: bytes, framer: Framer | None = None) -> tuple[list[Frame], Framer]:
    """Frame ``data`` as a whole input (a file): ``finish`` at its end."""
    framer = framer or Framer()
    frames = framer.feed(data)
    frames += framer.finish()
    return frames, framer


def frame_chunked(data: bytes, cuts: list[int], **kwargs: bool) -> tuple[list[Frame], Framer]:
    framer = Framer(**kwargs)
    frames: list[Frame] = []
    last = 0
    for cut in sorted(set(cuts)):
        frames += framer.feed(data[last:cut])
        last = cut
    frames += framer.feed(data[last:])
    frames += framer.finish()
    return frames, framer


def with_crc(body: bytes) -> bytes:
    """body runs from '/' up to and including '!'."""
    return body + f"{crc16_arc(body):04X}\r\n".encode()


SIMPLE = (
    b"/XMX5LGBBFFB231216240\r\n\r\n1-3:0.2.8(50)\r\n0-0:1.0.0(200426223325S)\r\n"
    b"1-0:1.8.1(000001.234*kWh)\r\n0-0:96.13.0(test-/-test)\r\n!"
)


# -- the mixed stream of the fixtures (streams/README.md) ---------------------------------------

# The five complete telegrams of synthetic_mixed.txt, in order, as their fixture files.
MIXED_FILES = [
    "dsmrparser_v4.2_nl_kaifa.txt",
    "dsmrparser_v5_nl_iskra_am550_two_mbus.txt",
    "dsmrparser_be_fluvius_emucs_v1.7.1.txt",
    "nodedsmr_v5_nl_iskra_am550.txt",
    "dsmrparser_v2.2_nl_iskra_mt382.txt",
]


def test_synthetic_mixed_stream_yields_exactly_the_five_complete_telegrams() -> None:
    data = (FIXTURES / "streams" / "synthetic_mixed.txt").read_bytes()
    frames, framer = frame_all(data)
    assert [f.data for f in frames] == [fixture(name) for name in MIXED_FILES]
    assert [f.crc_ok for f in frames] == [True, True, True, True, None]
    assert all(f.kind is FrameKind.TELEGRAM for f in frames)
    stats = framer.stats
    assert stats.telegrams == 5
    # the truncated AM550 whose successor (Fluvius) starts mid-line
    assert stats.truncated_frames == 1
    # the partial head, 33 x 0xFF + 2 NUL, the stray "  25803103" line
    assert stats.skipped_runs == 3
    assert stats.crc_mismatches == 0
    assert stats.oversize_frames == 0
    # every byte is accounted for: in a frame or counted as skipped
    assert stats.skipped_bytes == len(data) - sum(len(f.data) for f in frames)


def test_mixed_stream_fed_byte_by_byte_gives_the_same_result() -> None:
    data = (FIXTURES / "streams" / "synthetic_mixed.txt").read_bytes()
    whole, framer_whole = frame_all(data)
    single, framer_single = frame_chunked(data, list(range(1, len(data))))
    assert single == whole
    assert framer_single.stats == framer_whole.stats


# -- every fixture telegram alone -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(INDEX))
def test_each_fixture_telegram_frames_to_itself(name: str) -> None:
    data = fixture(name)
    frames, framer = frame_all(data)
    assert len(frames) == 1
    frame = frames[0]
    assert data.startswith(frame.data)
    assert frame.data.startswith(b"/")
    last_line = frame.data.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    if name == NO_END_LINE:
        # DSMR 2.2 without a '!' line: complete at the end of the input
        assert frame.data == data and frame.crc_ok is None
        assert last_line == b"0-1:24.4.0(1)"
    else:
        assert last_line.startswith(b"!")
    # the framer's CRC verdict agrees with the CRC computed when the fixtures were collected
    assert frame.crc_ok == INDEX[name]["crc_valid"]
    # trailing gateway garbage (EasyMeter) is skipped and counted, nothing else
    assert framer.stats.skipped_bytes == len(data) - len(frame.data)
    assert framer.stats.truncated_frames == 0


# -- the end of the input, telegrams without a '!' line -----------------------------------------

#: a real DSMR 2.2 capture with no '!' end line at all
NO_END_LINE = "nodedsmr_v2.2_nl_iskra_mt382_real.txt"
#: one meter's telegrams back to back, as a capture file holds them
CAPTURE_FILES = [
    "nodedsmr_v5_nl_iskra_am550.txt",
    "dsmrparser_v5_nl_iskra_am550_two_mbus.txt",
    "dsmrparser_v4.2_nl_kaifa.txt",
    "dsmrparser_v5_nl_warmtelink_heat_unpadded_crc.txt",
]


@pytest.mark.parametrize("name", CAPTURE_FILES)
def test_capture_without_its_final_line_end_yields_every_telegram(name: str) -> None:
    """A file that stops right after '!CRC' (how projects store samples) is complete."""
    capture = b"".join(fixture(n) for n in CAPTURE_FILES if n != name) + fixture(name)
    stripped = capture.rstrip(b"\r\n")
    assert stripped.endswith(fixture(name).rstrip(b"\r\n"))
    for frames, framer in (frame_all(stripped), frame_chunked(stripped, [len(stripped) - 2])):
        assert [f.data for f in frames][:-1] == [f.data for f in frame_all(capture)[0]][:-1]
        assert frames[-1].data == fixture(name).rstrip(b"\r\n")
        assert all(f.crc_ok is True for f in frames)
        assert framer.stats.truncated_frames == 0 and framer.stats.skipped_bytes == 0


@pytest.mark.parametrize("ending", [b"", b"\r", b"\x00", b"\x00\r"])
def test_end_of_input_implies_the_line_end_after_the_crc(ending: bytes) -> None:
    good = with_crc(SIMPLE)
    data = good[:-2] + ending
    frames, framer = frame_all(data)
    assert [(f.data, f.crc_ok) for f in frames] == [(data, True)]
    assert framer.stats.truncated_frames == 0


def test_end_of_input_after_a_bare_bang_leaves_the_crc_rule_to_the_parser() -> None:
    # a DSMR 4 telegram without its CRC digits: framed (like '!' CR LF), the parser says bad-crc
    kaifa = fixture("dsmrparser_v4.2_nl_kaifa.txt")
    data = kaifa[: kaifa.index(b"!") + 1]
    frames, _ = frame_all(data)
    assert [(f.data, f.crc_ok) for f in frames] == [(data, None)]


def test_a_port_that_went_away_is_not_an_end_of_input() -> None:
    # flush (reconnect): the stream resumes elsewhere, so a pending telegram was cut off
    framer = Framer()
    good = with_crc(SIMPLE)
    assert framer.feed(good[:-2]) == []
    framer.flush()
    assert framer.stats.truncated_frames == 1
    assert framer.feed(good[:-2]) == []
    assert [f.data for f in framer.finish()] == [good[:-2]]


def test_telegrams_without_a_bang_line_end_at_the_next_header() -> None:
    real = fixture(NO_END_LINE)
    for frames, framer in (
        frame_all(real * 3),
        frame_chunked(real * 3, list(range(1, 3 * len(real)))),
    ):
        assert [(f.data, f.crc_ok) for f in frames] == [(real, None)] * 3
        assert framer.stats.truncated_frames == 0 and framer.stats.skipped_bytes == 0


def test_telegram_without_a_bang_line_before_a_crc_telegram() -> None:
    real, am550 = fixture(NO_END_LINE), fixture("nodedsmr_v5_nl_iskra_am550.txt")
    frames, framer = frame_all(real + am550)
    assert [(f.data, f.crc_ok) for f in frames] == [(real, None), (am550, True)]
    assert framer.stats.truncated_frames == 0


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda t: t[:300], id="mid-line"),
        pytest.param(lambda t: t[: t.index(b"\n1-0:1.8.2") + 1], id="at-a-line-end"),
        pytest.param(lambda t: t[: t.index(b"\r\n") + 4], id="header-only"),
        pytest.param(lambda t: t[: t.index(b"!")], id="before-the-bang"),
    ],
)
def test_cut_off_telegrams_stay_truncated(cut: Callable[[bytes], bytes]) -> None:
    am550 = fixture("nodedsmr_v5_nl_iskra_am550.txt")  # claims DSMR 5: needs its '!CRC' line
    head = cut(am550)
    # at the end of the input
    frames, framer = frame_all(head)
    assert frames == [] and framer.stats.truncated_frames == 1
    assert framer.stats.skipped_bytes == len(head)
    # and followed by a restart
    frames, framer = frame_all(head + am550)
    assert [f.data for f in frames] == [am550]
    assert framer.stats.truncated_frames == 1 and framer.stats.skipped_bytes == len(head)


@pytest.mark.parametrize("fragment", [b"/", b"/I", b"/ISk"])
def test_telegram_without_a_bang_line_before_a_header_cut_by_the_end(fragment: bytes) -> None:
    real = fixture(NO_END_LINE)
    for frames, framer in (frame_all(real + fragment), frame_chunked(real + fragment, [400])):
        assert [f.data for f in frames] == [real]
        assert framer.stats.truncated_frames == 1
        assert framer.stats.skipped_bytes == len(fragment)


def test_crc_less_telegram_cut_mid_line_at_the_end_is_truncated() -> None:
    real = fixture(NO_END_LINE)
    frames, framer = frame_all(real + real[:-5])
    assert [f.data for f in frames] == [real]
    assert framer.stats.truncated_frames == 1


# -- telegram end and header rules ------------------------------------------------------------


def test_slash_inside_a_value_does_not_break_the_telegram() -> None:
    telegram = with_crc(SIMPLE)
    frames, framer = frame_all(b"noise" + telegram)
    assert [f.data for f in frames] == [telegram]
    assert frames[0].crc_ok is True
    assert framer.stats.skipped_bytes == 5


def test_slash_inside_a_crc_less_telegram_value_is_kept() -> None:
    telegram = SIMPLE + b"\r\n"
    frames, _ = frame_all(telegram)
    assert [f.data for f in frames] == [telegram]
    assert frames[0].crc_ok is None


@pytest.mark.parametrize(
    "ending",
    [b"\r\n", b"\n", b"\x00\r\n"],
    ids=["crlf", "bare-lf", "nul-before-crlf"],
)
def test_end_line_variants(ending: bytes) -> None:
    crc = f"{crc16_arc(SIMPLE):04x}".encode()  # lower-case hex digits
    telegram = SIMPLE + crc + ending
    frames, _ = frame_all(telegram + with_crc(SIMPLE))
    assert [f.data for f in frames] == [telegram, with_crc(SIMPLE)]
    assert [f.crc_ok for f in frames] == [True, True]


def test_unpadded_crc_is_verified_numerically() -> None:
    data = fixture("dsmrparser_v5_nl_warmtelink_heat_unpadded_crc.txt")
    assert data.rstrip().endswith(b"!B9F")
    frames, _ = frame_all(data)
    assert frames[0].crc_ok is True
    # and a wrong unpadded CRC is a mismatch
    frames, framer = frame_all(data.replace(b"!B9F", b"!B9E"))
    assert frames[0].crc_ok is False
    assert framer.stats.crc_mismatches == 1


def test_bang_followed_by_non_hex_is_not_an_end() -> None:
    # "!x" and five hex digits are not end lines; the real end comes later
    body = SIMPLE[:-1] + b"0-0:96.13.1(hey!x)\r\n0-0:96.13.2(!ABCDE)\r\n!"
    telegram = with_crc(body)
    frames, _ = frame_all(telegram)
    assert [f.data for f in frames] == [telegram]
    assert frames[0].crc_ok is True


def test_crc_mismatch_without_inner_header_is_emitted_for_the_parser_to_reject() -> None:
    good = with_crc(SIMPLE)
    damaged = good.replace(b"1.234", b"1.235")
    frames, framer = frame_all(damaged + good)
    assert [f.data for f in frames] == [damaged, good]
    assert [f.crc_ok for f in frames] == [False, True]
    assert framer.stats.crc_mismatches == 1
    assert framer.stats.truncated_frames == 0


def test_restart_mid_line_resyncs_on_the_inner_header() -> None:
    good = with_crc(SIMPLE)
    cut = good[:60]  # ends inside a line
    frames, framer = frame_all(cut + good)
    assert [f.data for f in frames] == [good]
    assert frames[0].crc_ok is True
    assert framer.stats.truncated_frames == 1
    assert framer.stats.skipped_bytes == len(cut)


def test_restart_of_crc_less_telegrams_resyncs_on_the_last_inner_header() -> None:
    full = fixture("dsmrparser_v2.2_nl_iskra_mt382.txt")
    stream = full[:150] + full[:70] + full
    frames, framer = frame_all(stream)
    assert [f.data for f in frames] == [full]
    assert framer.stats.truncated_frames == 1
    assert framer.stats.skipped_bytes == 220


def test_slash_that_does_not_start_a_header_line_is_garbage() -> None:
    # headless tail of a telegram whose text message holds a '/'
    garbage = b"-/-test)\r\n!\r\n"
    good = with_crc(SIMPLE)
    frames, framer = frame_all(garbage + good)
    assert [f.data for f in frames] == [good]
    assert framer.stats.skipped_bytes == len(garbage)
    assert framer.stats.skipped_runs == 1


def test_noise_between_telegrams_is_counted() -> None:
    good = with_crc(SIMPLE)
    noise = b"\xff" * 33 + b"\x00\x00"
    frames, framer = frame_all(noise + good + noise + good + b"\x00")
    assert [f.data for f in frames] == [good, good]
    assert framer.stats.skipped_bytes == 2 * len(noise) + 1
    assert framer.stats.skipped_runs == 3


def test_oversize_telegram_is_skipped_and_the_next_one_found() -> None:
    framer = Framer(max_size=1024)
    huge = b"/ABC5 huge\r\n" + b"0-0:96.13.0(" + b"41" * 700 + b")\r\n"
    good = with_crc(SIMPLE)
    frames = framer.feed(huge + with_crc(huge + b"!")[len(huge) :] + good)
    framer.flush()
    assert [f.data for f in frames] == [good]
    assert framer.stats.oversize_frames == 1


def test_telegram_exactly_at_the_size_limit_is_accepted() -> None:
    good = with_crc(SIMPLE)
    frames, _ = frame_all(good, Framer(max_size=len(good)))
    assert [f.data for f in frames] == [good]
    frames, framer = frame_all(good, Framer(max_size=len(good) - 1))
    assert frames == []
    assert framer.stats.oversize_frames == 1


def test_flush_counts_a_pending_partial_frame_as_truncated() -> None:
    framer = Framer()
    good = with_crc(SIMPLE)
    assert framer.feed(good[:-3]) == []
    assert framer.pending == len(good) - 3
    framer.flush()
    assert framer.pending == 0
    assert framer.stats.truncated_frames == 1
    assert framer.stats.skipped_bytes == len(good) - 3
    # after a flush the framer starts afresh
    assert [f.data for f in framer.feed(good)] == [good]


def test_framer_needs_a_kind_to_look_for() -> None:
    with pytest.raises(ValueError, match="plaintext or encrypted"):
        Framer(plaintext=False, encrypted=False)


# -- encrypted frames ---------------------------------------------------------------------------

ESPHOME = hex_fixture("esphome_smarty_style_t210dr.hex")
GGC = hex_fixture("dsmrparser_test_ggc_t210dr.hex")
LUX = hex_fixture("nodedsmr_lux_spec_example_with_aad.hex")
LUX_NO_AAD = hex_fixture("nodedsmr_lux_spec_example_without_aad.hex")
ENCRYPTED_FRAMES = [ESPHOME, GGC, LUX, LUX_NO_AAD]


def test_encrypted_frames_back_to_back_with_garbage() -> None:
    garbage = b"\x00\xff\x13garbage\xdb\x07\x01"  # includes a 0xDB that is not a frame start
    stream = garbage + ESPHOME + LUX + garbage + GGC + LUX_NO_AAD + garbage
    frames, framer = frame_all(stream, Framer(plaintext=False))
    assert [f.data for f in frames] == [ESPHOME, LUX, GGC, LUX_NO_AAD]
    assert all(f.kind is FrameKind.ENCRYPTED and f.crc_ok is None for f in frames)
    assert framer.stats.encrypted_frames == 4
    assert framer.stats.skipped_bytes == 3 * len(garbage)
    assert framer.stats.skipped_runs == 3


def test_binary_file_equals_hex_file() -> None:
    raw = (ENCRYPTED / "esphome_smarty_style_t210dr.bin").read_bytes()
    frames, _ = frame_all(raw)
    assert [f.data for f in frames] == [ESPHOME]


def test_truncated_encrypted_frame_resyncs_on_the_next_frame_of_the_same_meter() -> None:
    stream = ESPHOME[:300] + GGC + ESPHOME
    frames, framer = frame_all(stream, Framer(plaintext=False))
    assert [f.data for f in frames] == [GGC, ESPHOME]
    assert framer.stats.truncated_frames == 1
    assert framer.stats.skipped_bytes == 300


def test_encrypted_frame_with_bad_security_control_is_not_a_frame() -> None:
    bad = ESPHOME[:13] + b"\x31" + ESPHOME[14:]
    frames, framer = frame_all(bad + ESPHOME, Framer(plaintext=False))
    assert [f.data for f in frames] == [ESPHOME]
    assert framer.stats.skipped_bytes == len(bad)


def test_plaintext_only_framer_ignores_encrypted_frames() -> None:
    good = with_crc(SIMPLE)
    frames, framer = frame_all(good + ESPHOME + good, Framer(encrypted=False))
    assert [f.data for f in frames] == [good, good]
    assert framer.stats.encrypted_frames == 0


# -- chunking invariance (hypothesis) -----------------------------------------------------------

MIXED = (FIXTURES / "streams" / "synthetic_mixed.txt").read_bytes()
# every fixture telegram, back to back (the one without a "!" line ends at the next header)
CONCATENATED_NAMES = sorted(INDEX)
CONCATENATED = b"".join(fixture(n) for n in CONCATENATED_NAMES)
ENCRYPTED_STREAM = (
    b"\xff\xff" + ESPHOME + LUX + b"\x00junk\x00" + GGC + LUX_NO_AAD + ESPHOME[:100] + GGC + b"\xff"
)


def cuts_for(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_value=1, max_value=len(data) - 1), max_size=60)


@settings(max_examples=150, deadline=None)
@given(cuts=cuts_for(MIXED))
def test_mixed_stream_any_chunking_same_frames(cuts: list[int]) -> None:
    whole, framer_whole = frame_all(MIXED)
    chunked, framer_chunked = frame_chunked(MIXED, cuts)
    assert chunked == whole
    assert framer_chunked.stats == framer_whole.stats


@settings(max_examples=100, deadline=None)
@given(cuts=cuts_for(CONCATENATED))
def test_concatenated_fixtures_any_chunking_same_frames(cuts: list[int]) -> None:
    chunked, framer = frame_chunked(CONCATENATED, cuts)
    # each fixture's own frame, in order (EasyMeter trailing garbage is skipped between them)
    expected = [frame_all(fixture(n))[0][0].data for n in CONCATENATED_NAMES]
    assert [f.data for f in chunked] == expected
    assert framer.stats.truncated_frames == 0


@settings(max_examples=150, deadline=None)
@given(cuts=cuts_for(ENCRYPTED_STREAM))
def test_encrypted_stream_any_chunking_same_frames(cuts: list[int]) -> None:
    chunked, framer = frame_chunked(ENCRYPTED_STREAM, cuts, plaintext=False)
    assert [f.data for f in chunked] == [ESPHOME, LUX, GGC, LUX_NO_AAD, GGC]
    assert framer.stats.truncated_frames == 1
    _, framer_whole = frame_all(ENCRYPTED_STREAM, Framer(plaintext=False))
    assert framer.stats == framer_whole.stats


@settings(max_examples=100, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from(["good", "damaged", "cut", "noise", "crcless", "no-end-line", "no-crlf"]),
        min_size=1,
        max_size=8,
    ),
    data=st.data(),
)
def test_generated_streams_any_chunking_same_frames(parts: list[str], data: st.DataObject) -> None:
    good = with_crc(SIMPLE)
    pieces = {
        "good": good,
        "damaged": good.replace(b"1.234", b"9.234"),
        "cut": good[:45],
        "noise": b"\xff\x00 stray\r\n",
        "crcless": fixture("dsmrparser_v2.2_nl_iskra_mt382.txt"),
        "no-end-line": fixture(NO_END_LINE),
        "no-crlf": good[:-2],
    }
    stream = b"".join(pieces[p] for p in parts)
    whole, framer_whole = frame_all(stream)
    if len(stream) > 1:
        cuts = data.draw(cuts_for(stream))
    else:
        cuts = []
    chunked, framer_chunked = frame_chunked(stream, cuts)
    assert chunked == whole
    assert framer_chunked.stats == framer_whole.stats
    assert framer_whole.stats.skipped_bytes == len(stream) - sum(len(f.data) for f in whole)
