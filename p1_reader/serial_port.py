"""The serial edge: the only module that imports ``serial`` / ``serial_asyncio_fast``.

A P1 port is read-only for us: we open it with the profile's line settings, hand back byte
chunks, and turn every way a port can fail (missing device, unplugged adapter, I/O error, EOF)
into :class:`~p1_reader.errors.SerialPortError`.
"""

from __future__ import annotations

import asyncio
import logging
import termios
from dataclasses import dataclass

import serial
import serial_asyncio_fast

from p1_reader.errors import SerialPortError

log = logging.getLogger(__name__)

#: bytes → bytes with bit 7 cleared (7E1 data read by an 8-bit receiver carries the parity bit)
_MASK_7BIT = bytes(b & 0x7F for b in range(256))
_READ_SIZE = 4096


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


class SerialConnection:
    """An open P1 port delivering byte chunks."""

    def __init__(
        self,
        path: str,
        profile: SerialProfile,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.path = path
        self.profile = profile
        self._reader = reader
        self._writer = writer
        self._closed = False

    async def read(self) -> bytes:
        """Wait for the next chunk (never empty); SerialPortError when the port is gone."""
        try:
            data = await self._reader.read(_READ_SIZE)
        except (serial.SerialException, OSError) as exc:
            raise SerialPortError(f"serial port {self.path}: read failed: {exc}") from exc
        if not data:
            raise SerialPortError(f"serial port {self.path}: end of stream (device closed)")
        if self.profile.mask_7bit:
            data = data.translate(_MASK_7BIT)
        return data

    async def close(self) -> None:
        """Close the port; safe to call twice and after the port failed."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (serial.SerialException, OSError) as exc:
            # the failure was already reported by read(); the handle is gone either way
            log.debug("closing %s after failure: %s", self.path, exc)


async def open_serial(path: str, profile: SerialProfile) -> SerialConnection:
    """Open ``path`` with ``profile``'s settings; SerialPortError when it cannot be opened."""
    try:
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=path,
            baudrate=profile.baudrate,
            bytesize=serial.EIGHTBITS,
            parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE,
            # no software flow control: encrypted frames are binary and may contain XON/XOFF
            xonxoff=False,
            rtscts=False,
        )
    except (serial.SerialException, OSError, ValueError, termios.error) as exc:
        raise SerialPortError(f"serial port {path}: cannot open: {exc}") from exc
    return SerialConnection(path, profile, reader, writer)
