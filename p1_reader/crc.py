"""CRC-16/ARC of DSMR 4+ telegrams.

"CRC16 value calculated over the preceding characters in the data message (from "/" to "!"
using the polynomial: x16+x15+x2+1) ... no XOR in, no XOR out ... least significant bit first.
The value is represented as 4 hexadecimal characters (MSB first)." (DSMR 5.0.2 §6.2) — that is
CRC-16/ARC: reflected polynomial 0xA001, init 0, xorout 0; check("123456789") = 0xBB3D.

Computed by ``fastcrc`` (compiled): a pure-Python table CRC costs more than the whole parse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from fastcrc import crc16 as _fastcrc16

#: CRC-16/ARC over bytes-like data (bytes, bytearray, memoryview)
crc16_arc: Final[Callable[[bytes | bytearray | memoryview], int]] = _fastcrc16.arc


def format_crc(value: int) -> str:
    """The CRC as sent on the wire: 4 upper-case hex digits, zero padded."""
    return f"{value:04X}"


def telegram_crc(frame: bytes) -> str:
    """CRC field for a telegram: ``frame`` runs from ``/`` up to and including ``!``."""
    if not frame.startswith(b"/") or not frame.endswith(b"!"):
        raise ValueError("the CRC covers the telegram from '/' up to and including '!'")
    return format_crc(crc16_arc(frame))
