"""The parser's layout cache: a telegram whose lines sit where an earlier one's did is split by
cutting at known offsets. The result must be exactly what the uncached split gives, for every
input of the same header and length, whatever bytes changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p1_reader import parser
from p1_reader.errors import P1Error
from p1_reader.parser import parse_telegram
from p1_reader.telegram import RawObjects, Telegram
from tests.unit.p1_reader.test_raw_objects import telegram

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
INDEX = json.loads((FIXTURES / "index.json").read_text())
TELEGRAMS = {e["file"]: (FIXTURES / "telegrams" / e["file"]).read_bytes() for e in INDEX}
V3 = TELEGRAMS["dsmrparser_v3_nl_iskra_mt382.txt"]
V5 = TELEGRAMS["nodedsmr_v5_nl_iskra_am550.txt"]


def outcome(data: bytes, require_crc: bool | None = False) -> Telegram | tuple[str, str]:
    """The parse result, or (error type, message): what a caller can observe."""
    try:
        return parse_telegram(data, require_crc=require_crc)
    except P1Error as exc:
        return (type(exc).__name__, str(exc))


def uncached(data: bytes, require_crc: bool | None = False) -> Telegram | tuple[str, str]:
    parser._layouts.clear()
    return outcome(data, require_crc)


def learn(data: bytes) -> None:
    """Parse twice: the layout is built on the second sight."""
    parser._layouts.clear()
    parse_telegram(data, require_crc=False)
    parse_telegram(data, require_crc=False)


def layout_used(t: Telegram) -> bool:
    return isinstance(t.objects, RawObjects) and t.objects._load is not None


@pytest.mark.parametrize("name", sorted(TELEGRAMS))
def test_every_fixture_parses_the_same_through_its_layout(name: str) -> None:
    data = TELEGRAMS[name]
    first = uncached(data, None)
    second = outcome(data, None)
    third = outcome(data, None)
    assert first == second == third
    # and objects read through the layout hold every line, as the full split does
    if isinstance(third, Telegram) and isinstance(first, Telegram):
        assert dict(third.objects.items()) == dict(first.objects.items())
        assert list(third.objects) == list(first.objects)


def test_the_third_sight_takes_the_layout_and_splits_objects_lazily() -> None:
    parser._layouts.clear()
    assert not layout_used(parse_telegram(V5))
    assert not layout_used(parse_telegram(V5))
    t = parse_telegram(V5)
    assert layout_used(t)
    assert "1-0:1.8.1" in t.objects and len(t.objects) == 35  # keys need no cutting
    assert t.objects._raw is None
    assert t.objects["0-1:24.2.1"] == ["181106140010W", "01569.646*m3"]
    assert t.objects._raw is not None and t.objects._load is None


def test_dsmr3_gas_value_on_the_next_line_through_the_layout() -> None:
    learn(V3)
    t = parse_telegram(V3)
    assert layout_used(t)
    assert t.mbus[0].value == 1_001  # '(00001.001)' on the line after 0-1:24.3.0
    assert t.objects["0-1:24.3.0"][-1] == "00001.001"
    assert t == uncached(V3)


def same_length(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and old in data
    return data.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        (b"1-0:1.8.2(", b"1-0:1.8.1(", "a code changed: now a duplicate register"),
        (b"1-0:2.8.1(", b"1-0:2.8.3(", "a code changed into one not read"),
        (b"0-0:96.13.0()", b"0-0:96.13.0(\n", "a line end broken"),
        (b"(002*A)\r\n", b"(0\r\n2*A)\n", "a line end moved"),
        (b"(236.0*V)", b"(23\r\n0*V)", "a CRLF inside a value"),
        (b"(236.0*V)", b"(23\n.0*V)", "a bare LF inside a value"),
        (b"*m3)\r\n!", b"*m3 \r\n!", "the last line not closed"),
        (b"\r\n\r\n1-3", b"\r\n 1-3:", "no blank line after the header"),
        (b"(000*A)\r\n1-0", b"(000*A))\r\n1-", "the code starts one byte late"),
        (b"(0-0:96.7.19)", b"(0-0:96.7.19(", "a '(' for a ')' inside a value"),
        (b"(00006)", b"(0)(06)", "a value split in two"),
        (b"0-0:96.14.0(0002)", b"0-0:96.14.0(ABCD)", "tariff text"),
        (b"\n0-0:96.7.21(00006)", b"\n 0-0:96.7.21(0006)", "a blank before the code"),
    ],
)
def test_same_header_and_length_but_different_lines(old: bytes, new: bytes, why: str) -> None:
    mutant = same_length(V5, old, new)
    learn(V5)
    assert outcome(mutant) == uncached(mutant), why


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"\r\n(00001.001)", b"\r\nx00001.001)"),  # the continuation is no longer one
        (b"(m3)\r\n(00001", b"(m3)x\n(00001"),
        (b"(00001.001)\r\n", b"(00001.001 \r\n"),
        (b"(00001.001)", b"(0001)(001)"),
    ],
)
def test_dsmr3_continuation_line_changed(old: bytes, new: bytes) -> None:
    mutant = same_length(V3, old, new)
    learn(V3)
    assert outcome(mutant) == uncached(mutant)


def test_changed_values_of_the_same_layout() -> None:
    learn(V5)
    mutant = same_length(V5, b"(003808.351*kWh)", b"(004808.352*kWh)")
    t = outcome(mutant)
    assert isinstance(t, Telegram) and layout_used(t)
    assert t == uncached(mutant)


def test_layouts_are_bounded() -> None:
    # the real bound, not a patched one: the optional compiled parser (mypyc) inlines its
    # Final constants, so a monkeypatch would not reach it
    limit = parser._LAYOUTS_MAX
    parser._layouts.clear()
    for n in range(limit + 10):
        parse_telegram(telegram(f"1-0:1.8.1({n:06d}.000*kWh)", "0-0:96.13.0(" + "x" * n + ")"))
    assert 0 < len(parser._layouts) <= limit


MUTATION_BYTES = b"()\r\n!*.:-09SWx /"


@settings(max_examples=500, deadline=None)
@given(
    name=st.sampled_from(sorted(TELEGRAMS)),
    edits=st.lists(
        st.tuples(
            st.floats(0, 1, exclude_max=True),  # which line end (or where in the frame)
            st.none() | st.integers(-4, 14),  # near a line end: offset from its LF
            st.sampled_from([bytes([b]) for b in MUTATION_BYTES] + [b"\r\n", b")\r\n"]),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_any_same_length_change_gives_the_uncached_result(
    name: str, edits: list[tuple[float, int | None, bytes]]
) -> None:
    """Edits land anywhere in the frame or, more often, around line ends (the seams a layout
    checks), and may write a whole line end into a value."""
    data = TELEGRAMS[name]
    start, end = data.find(b"/"), data.find(b"!")
    if start < 0 or end < 0:
        return  # no layout without a complete frame
    feeds = [i for i in range(start, end) if data[i] == 10] or [start]
    mutant = bytearray(data)
    for where, offset, replacement in edits:
        if offset is None:
            at = start + 1 + int(where * (end - start - 1))
        else:
            at = feeds[int(where * len(feeds))] + offset
        at = max(start + 1, min(at, end - len(replacement)))
        mutant[at : at + len(replacement)] = replacement
    assert len(mutant) == len(data)
    learn(data)
    cached = outcome(bytes(mutant))
    assert cached == uncached(bytes(mutant))
