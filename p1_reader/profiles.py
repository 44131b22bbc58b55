"""The line settings of P1 ports (DSMR.md §1): which baud rate and character format a meter uses.

Pure data, apart from :mod:`p1_reader.serial_port` which applies it: the ``read`` and ``forward``
commands offer ``--profile`` and the reader's auto-detection alternates between profiles without
importing pyserial, so that registering those commands costs a pure command nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SerialProfile:
    """Line settings of a P1 port (DSMR.md §1)."""

    name: str
    baudrate: int
    #: character format on the wire, for humans: ``7E1`` or ``8N1``
    framing: str
    #: clear bit 7 of every byte (7E1 lines, see below)
    mask_7bit: bool

    def describe(self) -> str:
        return f"{self.baudrate} {self.framing}"


# Every profile is opened as 8N1. A 7E1 character (start + 7 data + parity + stop) has the same
# 10-bit frame as an 8N1 one, so an 8N1 receiver gets the 7 data bits plus the parity bit in
# bit 7, which ``mask_7bit`` clears. Nothing is lost: pyserial never enables parity checking
# (INPCK) anyway. And it avoids asking termios for CS7/PARENB, which Linux pseudo-terminals
# refuse (EINVAL) — 7E1 would only work on real UARTs.

#: DSMR 2.2 / 3.0: 9600 baud, 7E1 (IEC 62056-21 mode D)
DSMR2 = SerialProfile("dsmr2", 9600, "7E1", mask_7bit=True)
#: DSMR 4 / 5, e-MUCS, Smarty: 115200 baud, 8N1
DSMR4 = SerialProfile("dsmr4", 115200, "8N1", mask_7bit=False)
PROFILES: dict[str, SerialProfile] = {p.name: p for p in (DSMR2, DSMR4)}

#: bytes → bytes with bit 7 cleared (for ``bytes.translate``): what ``mask_7bit`` applies
MASK_7BIT = bytes(b & 0x7F for b in range(256))
