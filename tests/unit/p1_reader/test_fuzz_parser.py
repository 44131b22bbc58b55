"""Hostile input for the field side's pure core: the framer, the parser, the gateway's body split.

Whatever the bytes (arbitrary, mutated fixtures with a recomputed CRC, telegrams built from
edge-case values), the only exception is a ``P1Error`` with a reason, and what does parse keeps
the Telegram's invariants: registers are exact non-negative integers of at most 18 digits, times
are aware UTC, every raw object splits. The framer never raises, accounts for every byte and
frames alike however the stream is chunked. The generators live in
``tests.support.telegram_fuzz`` and also drive ``bench/fuzz.py`` (hundreds of thousands of
inputs); every input that ever failed is kept in ``REGRESSIONS``.
"""

from __future__ import annotations

import random
from datetime import UTC
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest.pipeline import split_body
from p1_reader.crc import crc16_arc
from p1_reader.errors import P1Error
from p1_reader.framing import FrameKind, Framer
from p1_reader.parser import REGISTER_DIGITS, parse_telegram
from p1_reader.telegram import Telegram
from tests.support.telegram_fuzz import (
    CODES,
    VALUES,
    fixture_telegrams,
    hostile_telegram,
    junk,
    with_crc,
)

BASES = fixture_telegrams()
FUZZ_CASES = Path(__file__).resolve().parents[2] / "fixtures" / "fuzz"
REGISTER_LIMIT = 10**REGISTER_DIGITS
REGISTERS = (
    "import_t1_wh",
    "import_t2_wh",
    "export_t1_wh",
    "export_t2_wh",
    "import_total_wh",
    "export_total_wh",
)
REQUIRE_CRC = st.sampled_from((None, True, False))

#: inputs that once raised something other than P1Error or broke an invariant: the files
#: ``bench/fuzz.py`` writes (moved to tests/fixtures/fuzz/), and the register beyond int64 that
#: failed a shared write batch (issue 11)
REGRESSIONS: list[bytes] = [
    with_crc(
        dict(BASES)["nodedsmr_v5_nl_iskra_am550.txt"].replace(
            b"1-0:1.8.1(003808.351*kWh)", b"1-0:1.8.1(9999999999999999999999.999*kWh)"
        )
    ),
    *(p.read_bytes() for p in sorted(FUZZ_CASES.glob("*.bin"))),
]


def check_telegram(t: Telegram, require_crc: bool | None) -> None:
    """The invariants of a parse result."""
    assert isinstance(t.header, str) and t.header.startswith("/")
    for name in REGISTERS:
        value = getattr(t, name)
        assert value is None or (type(value) is int and 0 <= value < REGISTER_LIMIT), name
    for stamp in (t.timestamp, *(d.measured_at for d in t.mbus)):
        assert stamp is None or (stamp.tzinfo is UTC and 2000 <= stamp.year <= 2070)
    assert t.tariff is None or 0 <= t.tariff <= 99
    assert t.meter_id is None or isinstance(t.meter_id, str)
    for device in t.mbus:
        assert 1 <= device.channel <= 4
        assert device.device_type is None or device.device_type >= 0
        assert (device.value is None) == (device.unit is None)
        assert device.value is None or (type(device.value) is int and 0 <= device.value)
        assert device.value is None or device.value < REGISTER_LIMIT
        assert device.unit in (None, "dm3", "kJ", "Wh")
    # the raw objects split lazily: reading them must not raise either
    for code, values in t.objects.items():
        assert isinstance(code, str) and all(isinstance(v, str) for v in values)
    if require_crc is not False:
        assert t.crc_valid is not False
    if require_crc is True:
        assert t.crc_valid is True


def parse_checked(data: bytes, require_crc: bool | None = None) -> Telegram | None:
    """Parse ``data``: a P1Error with a reason, or a Telegram keeping its invariants."""
    try:
        t = parse_telegram(data, require_crc=require_crc)
    except P1Error as exc:
        assert exc.reason and str(exc)
        return None
    check_telegram(t, require_crc)
    return t


@pytest.mark.parametrize("data", REGRESSIONS)
def test_regression_inputs(data: bytes) -> None:
    for require_crc in (None, True, False):
        parse_checked(data, require_crc)
    frame_checked(data)


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=2048), require_crc=REQUIRE_CRC)
def test_arbitrary_bytes(data: bytes, require_crc: bool | None) -> None:
    parse_checked(data, require_crc)
    parse_checked(b"/" + data, require_crc)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), require_crc=REQUIRE_CRC)
def test_arbitrary_bytes_with_a_valid_crc(data: bytes, require_crc: bool | None) -> None:
    parse_checked(with_crc(b"/ISK5\\2M550T-1012\r\n\r\n" + data), require_crc)


@settings(max_examples=600, deadline=None)
@given(rng=st.randoms(), require_crc=REQUIRE_CRC)
def test_mutated_fixture_telegrams(rng: random.Random, require_crc: bool | None) -> None:
    _, data = hostile_telegram(rng, BASES)
    parse_checked(data, require_crc)


# -- telegrams built line by line from edge-case codes and values --------------------------------

LATIN1 = st.characters(min_codepoint=0, max_codepoint=255)
NUMBERS = st.builds(
    lambda n, decimals, unit: (
        (f"{str(n)[:-decimals] or '0'}.{str(n)[-decimals:]}" if decimals else str(n)) + unit
    ),
    st.integers(min_value=0, max_value=10**40),
    st.integers(min_value=0, max_value=9),
    st.sampled_from(("*kWh", "*kwh", "*Wh", "*MWh", "*m3", "*GJ", "*MJ", "*kW", "", "*")),
)
VALUE = st.one_of(st.sampled_from(VALUES), NUMBERS, st.text(LATIN1, max_size=20))
LINE = st.builds(
    lambda code, values: code + "".join(f"({v})" for v in values),
    st.one_of(st.sampled_from(CODES), st.text(LATIN1, max_size=12)),
    st.lists(VALUE, min_size=0, max_size=3),
)


@settings(max_examples=500, deadline=None)
@given(
    lines=st.lists(LINE, max_size=30),
    version=st.sampled_from(
        ("", "1-3:0.2.8(50)\r\n", "1-3:0.2.8(42)\r\n", "0-0:96.1.4(50217)\r\n")
    ),
    crc=st.booleans(),
    require_crc=REQUIRE_CRC,
)
def test_built_telegrams(
    lines: list[str], version: str, crc: bool, require_crc: bool | None
) -> None:
    body = "/XMX5LGBBFFB231216240\r\n\r\n" + version + "".join(line + "\r\n" for line in lines)
    data = body.encode("latin-1") + b"!"
    if crc:
        data += f"{crc16_arc(data[: data.find(b'!') + 1]):04X}\r\n".encode()
    else:
        data += b"\r\n"
    parse_checked(data, require_crc)


# -- the framer ---------------------------------------------------------------------------------


def frame_checked(stream: bytes, cuts: list[int] | None = None) -> None:
    """Frame ``stream`` whole and cut at ``cuts``: never an exception, the same frames and
    statistics either way, every byte either framed or counted, each frame parses or is a
    P1Error."""
    whole = Framer()
    frames = whole.feed(stream)
    frames += whole.finish()  # the end of input, as decode and forward --input see it
    chunked = Framer()
    again = []
    last = 0
    for cut in sorted(set(cuts or [])):
        again += chunked.feed(stream[last:cut])
        last = cut
    again += chunked.feed(stream[last:])
    again += chunked.finish()
    assert again == frames and chunked.stats == whole.stats
    assert sum(len(f.data) for f in frames) + whole.stats.skipped_bytes == len(stream)
    assert whole.pending == 0
    for frame in frames:
        if frame.kind is FrameKind.TELEGRAM:
            assert frame.data.startswith(b"/") and len(frame.data) <= whole.max_size
            parse_checked(frame.data)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Hostile telegrams and junk back to back, and where to cut the stream."""
    rng = draw(st.randoms())
    pieces = []
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        pieces.append(hostile_telegram(rng, BASES)[1] if rng.random() < 0.8 else junk(rng))
    stream = b"".join(pieces)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=8))
    return stream, cuts


@settings(max_examples=300, deadline=None)
@given(case=streams())
def test_framer_on_hostile_streams(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    frame_checked(stream, cuts)


@settings(max_examples=300, deadline=None)
@given(
    stream=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=8),
)
def test_framer_on_arbitrary_bytes(stream: bytes, cuts: list[int]) -> None:
    frame_checked(stream, cuts)


# -- the gateway's body split --------------------------------------------------------------------

BLANK = b"\r\n \t\x00"


def split_checked(body: bytes) -> None:
    """The parts are the body in order, only blank bytes between them dropped; each parses or
    is a P1Error."""
    parts = split_body(body)
    pos = 0
    for part in parts:
        assert part and part[0] not in BLANK
        start = body.index(part, pos)
        assert not body[pos:start].strip(BLANK)
        pos = start + len(part)
    assert not body[pos:].strip(BLANK)
    for part in parts:
        parse_checked(part)


@settings(max_examples=300, deadline=None)
@given(case=streams())
def test_split_body_on_hostile_bodies(case: tuple[bytes, list[int]]) -> None:
    split_checked(case[0])


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=2000))
def test_split_body_on_arbitrary_bytes(body: bytes) -> None:
    split_checked(body)
