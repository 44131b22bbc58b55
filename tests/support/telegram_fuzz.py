"""Hostile telegram generators, shared by the property tests and ``bench/fuzz.py``.

Every generator draws from a ``random.Random``: the property tests hand it one from hypothesis
(``st.randoms()``, so failures shrink and replay), the bench a seeded one (reproducible, and
hundreds of thousands of inputs without hypothesis' overhead). Mutations start from the real
fixture telegrams and mostly end with a recomputed CRC, so the input gets past the checksum into
the OBIS, value, unit and timestamp parsing, which a random byte flip alone almost never does.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Final

from p1_reader import obis
from p1_reader.crc import crc16_arc

TELEGRAMS: Final = Path(__file__).resolve().parents[1] / "fixtures" / "telegrams"

#: what the parser must survive inside parentheses: number edge cases (sign, exponent, digit
#: separators, 18/19/30 digits, latin-1 digits), odd units, timestamp edges, ids, blanks, NUL
VALUES: Final = (
    "",
    " ",
    "\x00",
    "0",
    "003",
    "999",
    "-3",
    "x",
    "9" * 18,
    "9" * 19,
    "9" * 30 + ".999*kWh",
    "9999999999999999999999.999*kWh",
    "999999999999999.999*kWh",
    "9223372036854775.807*kWh",
    "-000001.000*kWh",
    "+000001.000*kWh",
    "1e5*kWh",
    "1E+05*kWh",
    "1_000.000*kWh",
    " 000001.000*kWh",
    "000001.000 *kWh",
    "000001.000*",
    "*kWh",
    "*",
    ".5*kWh",
    "5.*kWh",
    "1..0*kWh",
    "1.0.0*kWh",
    "\xb2\xb3.000*kWh",
    "000001.000*KWH",
    "000001.000*mWh",
    "000001.000*MWh",
    "000001*Wh",
    "000001.000*kW",
    "000001.000*kWh*kWh",
    "0.0000000000000000000001*kWh",
    "00001.001*m3",
    "00001.001*m\xb3",
    "00001.001*M3",
    "00001.001*dm3",
    "1*GJ",
    "9" * 19 + "*GJ",
    "00001.001",
    "000101010000W",
    "700101010000W",
    "991231235959S",
    "260229120000W",
    "280229120000W",
    "260330023000S",
    "261025023000W",
    "261025023000S",
    "2603300230",
    "2603300230000",
    "260101000000X",
    "4530303334303031",
    "453030333430303",
    "ZZ",
    "\xff" * 40,
    "1" * 300,
    "1)(2",
    "1)(",
    ")(",
    "(",
    ")",
    "!",
    "/",
)

#: codes worth aiming a value at: every code the parser interprets, a few it keeps raw, and
#: the written variants it normalises
CODES: Final = (
    *sorted(obis.INTERPRETED_CODES),
    "1-0:1.8.1*255",
    "1-0:1.8.1.255",
    " 1-0:1.8.1 ",
    "0-5:24.2.1",
    "1-0:99.97.0",
    "0-0:96.13.0",
    "1-0:1.7.0",
    "",
    "(",
    "1-0:1.8.1(",
)

#: whole lines to insert (continuations, half lines, an inner header, an end line)
LINES: Final = (
    "",
    "(00001.001)",
    "(",
    ")",
    "!",
    "!ZZZZ",
    "/XXX5",
    "/ISK5\\2M550T-1012",
    "1-0:1.8.1",
    "1-0:1.8.1(",
    "0-1:24.3.0(230101120000)(00)(60)(1)(0-1:24.2.1)(m3)",
    "0-1:24.1.0(003)",
    "0-1:96.1.0(4730303332353635353036373837373132)",
    "0-0:96.13.0(" + "41" * 200 + ")",
)


def fixture_telegrams() -> list[tuple[str, bytes]]:
    """(file name, bytes) of every fixture telegram, in name order."""
    return [(p.name, p.read_bytes()) for p in sorted(TELEGRAMS.glob("*.txt"))]


def with_crc(data: bytes) -> bytes:
    """``data`` with the CRC of its first ``/``..``!`` span written after the ``!`` (an end
    line is added when there is none), so a mutation reaches the parsing behind the check."""
    start = data.find(b"/")
    if start < 0:
        return data
    bang = data.find(b"!", start)
    if bang < 0:
        data = data.rstrip(b"\r\n") + b"\r\n!"
        bang = len(data) - 1
    eol = data.find(b"\n", bang)
    tail = b"" if eol < 0 else data[eol + 1 :]
    return data[: bang + 1] + f"{crc16_arc(data[start : bang + 1]):04X}\r\n".encode() + tail


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


def flip_bit(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]


def insert_bytes(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    junk = rng.choice((bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))), b"\x00"))
    return data[:i] + junk + data[i:]


def delete_bytes(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 16) :]


def delete_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return b"\r\n".join(lines)


def duplicate_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines) + 1), lines[i])
    return b"\r\n".join(lines)


def swap_lines(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\r\n".join(lines)


def insert_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    if rng.random() < 0.5:
        line = rng.choice(LINES)
    else:
        line = f"{rng.choice(CODES)}({rng.choice(VALUES)})"
    lines.insert(rng.randrange(len(lines) + 1), line.encode("latin-1"))
    return b"\r\n".join(lines)


def replace_value(rng: random.Random, data: bytes) -> bytes:
    """One value between parentheses replaced by an edge case."""
    lines = _lines(data)
    candidates = [i for i, line in enumerate(lines) if b"(" in line]
    if not candidates:
        return data
    i = rng.choice(candidates)
    groups = lines[i].split(b"(")
    k = rng.randrange(1, len(groups))
    close = groups[k].find(b")")
    rest = groups[k][close:] if close >= 0 else b""
    groups[k] = rng.choice(VALUES).encode("latin-1") + rest
    lines[i] = b"(".join(groups)
    return b"\r\n".join(lines)


def replace_code(rng: random.Random, data: bytes) -> bytes:
    """One line's OBIS code replaced by another (a register code on a text line, …)."""
    lines = _lines(data)
    candidates = [i for i, line in enumerate(lines) if line.find(b"(") > 0]
    if not candidates:
        return data
    i = rng.choice(candidates)
    line = lines[i]
    lines[i] = rng.choice(CODES).encode("latin-1") + line[line.find(b"(") :]
    return b"\r\n".join(lines)


def line_ends(rng: random.Random, data: bytes) -> bytes:
    """CRLF → LF, CR or CRCRLF everywhere."""
    return data.replace(b"\r\n", rng.choice((b"\n", b"\r", b"\r\r\n", b"\n\r")))


MUTATIONS: Final[tuple[Callable[[random.Random, bytes], bytes], ...]] = (
    flip_bit,
    insert_bytes,
    delete_bytes,
    delete_line,
    duplicate_line,
    swap_lines,
    insert_line,
    replace_value,
    replace_value,
    replace_value,
    replace_code,
    line_ends,
)


def mutate(rng: random.Random, base: bytes) -> bytes:
    """1–4 mutations of ``base``; the CRC recomputed afterwards, four times out of five."""
    data = base
    for _ in range(rng.randint(1, 4)):
        data = rng.choice(MUTATIONS)(rng, data)
    return with_crc(data) if rng.random() < 0.8 else data


def junk(rng: random.Random) -> bytes:
    """Arbitrary bytes, sometimes dressed as a telegram (a header, an end, a valid CRC)."""
    data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    if rng.random() < 0.5:
        data = b"/" + data + b"\r\n!"
        if rng.random() < 0.8:
            data = with_crc(data)
    return data


def hostile_telegram(rng: random.Random, bases: list[tuple[str, bytes]]) -> tuple[int, bytes]:
    """(index of the base fixture in ``bases``, input): a mutated fixture nine times out of
    ten, else junk (index of a random base then: the bench needs some spec for its reference)."""
    k = rng.randrange(len(bases))
    if rng.random() < 0.1:
        return k, junk(rng)
    return k, mutate(rng, bases[k][1])
