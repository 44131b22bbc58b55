"""The serial edge: the only module that imports ``serial`` / ``serial_asyncio_fast``.

A P1 port is read-only for us: we open it with the profile's line settings, hand back byte
chunks, and turn every way a port can fail (missing device, unplugged adapter, I/O error, EOF)
into :class:`~p1_reader.errors.SerialPortError`. The profiles themselves are pure data in
:mod:`p1_reader.profiles` (every profile is opened as 8N1; the reason is explained there).
"""

from __future__ import annotations

import asyncio
import logging
import termios

import serial
import serial_asyncio_fast

from p1_reader.errors import SerialPortError
from p1_reader.profiles import SerialProfile

log = logging.getLogger(__name__)

#: bytes → bytes with bit 7 cleared (7E1 data read by an 8-bit receiver carries the parity bit)
_MASK_7BIT = bytes(b & 0x7F for b in range(256))
_READ_SIZE = 4096


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
