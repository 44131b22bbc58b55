"""The serial edge: the only module that imports ``serial`` / ``serial_asyncio_fast``.

A P1 port is read-only for us: we open it with the profile's line settings, hand back byte
chunks, and turn every way a port can fail (missing device, unplugged adapter, I/O error, EOF)
into :class:`~p1_reader.errors.SerialPortError`. The profiles themselves are pure data in
:mod:`p1_reader.profiles` (every profile is opened as 8N1; the reason is explained there).

Two kinds of port, one interface (:class:`p1_reader.sources.Connection`):

* a local device (``/dev/ttyUSB0``) through ``serial_asyncio_fast``, which watches the file
  descriptor in the event loop;
* a remote port over RFC 2217 (``rfc2217://HOST:PORT``) through pyserial's own client, which
  negotiates the baud rate and character format with the server, so the profiles and their
  auto-detection work exactly as on a local port. ``serial_asyncio_fast`` cannot carry it: its
  transport sets ``write_timeout`` (pyserial's RFC 2217 client raises NotImplementedError) and
  watches ``fileno()``, which that client does not have (its socket is read by a thread of its
  own into a queue). So the queue is read here from a worker thread, a short timeout at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import termios
from typing import Any

import serial
import serial_asyncio_fast

from p1_reader.errors import SerialPortError
from p1_reader.profiles import MASK_7BIT, SerialProfile

log = logging.getLogger(__name__)

_READ_SIZE = 4096
#: RFC 2217: longest blocking read in the worker thread (bounds how long a close waits for it)
_REMOTE_POLL = 0.5


def _line_settings(profile: SerialProfile) -> dict[str, Any]:
    return {
        "baudrate": profile.baudrate,
        "bytesize": serial.EIGHTBITS,
        "parity": serial.PARITY_NONE,
        "stopbits": serial.STOPBITS_ONE,
        # no software flow control: encrypted frames are binary and may contain XON/XOFF
        "xonxoff": False,
        "rtscts": False,
    }


class SerialConnection:
    """An open local P1 port delivering byte chunks."""

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

    def describe(self) -> str:
        return self.profile.describe()

    async def read(self) -> bytes:
        """Wait for the next chunk (never empty); SerialPortError when the port is gone."""
        try:
            data = await self._reader.read(_READ_SIZE)
        except (serial.SerialException, OSError) as exc:
            raise SerialPortError(f"serial port {self.path}: read failed: {exc}") from exc
        if not data:
            raise SerialPortError(f"serial port {self.path}: end of stream (device closed)")
        if self.profile.mask_7bit:
            data = data.translate(MASK_7BIT)
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


class RemoteSerialConnection:
    """An open RFC 2217 port: pyserial's client, read from a worker thread."""

    def __init__(self, path: str, profile: SerialProfile, port: Any) -> None:
        self.path = path
        self.profile = profile
        self._port = port
        self._closed = False

    def describe(self) -> str:
        return f"{self.profile.describe()} over RFC 2217"

    def _read_blocking(self) -> bytes:
        # waits at most _REMOTE_POLL for a first byte, then takes whatever else is queued
        data: bytes = self._port.read(1)
        if data:
            waiting = self._port.in_waiting
            if waiting:
                data += self._port.read(min(waiting, _READ_SIZE))
        return data

    async def read(self) -> bytes:
        """Wait for the next chunk (never empty); SerialPortError when the link is gone."""
        loop = asyncio.get_running_loop()
        while True:
            # Cancelled (idle timeout, profile switch, stop), the worker's read still finishes
            # within _REMOTE_POLL and its bytes are lost; every such path closes the connection
            # anyway, and a reconnect starts a fresh telegram.
            try:
                data = await loop.run_in_executor(None, self._read_blocking)
            except (serial.SerialException, OSError) as exc:
                raise SerialPortError(f"{self.path}: read failed: {exc}") from exc
            if data:
                break
        if self.profile.mask_7bit:
            data = data.translate(MASK_7BIT)
        return data

    async def close(self) -> None:
        """Close the link (joins pyserial's reader thread, so off the event loop)."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        with contextlib.suppress(serial.SerialException, OSError):
            await loop.run_in_executor(None, self._port.close)


async def open_serial(
    path: str, profile: SerialProfile
) -> SerialConnection | RemoteSerialConnection:
    """Open ``path`` (a device or ``rfc2217://HOST:PORT``) with ``profile``'s settings;
    SerialPortError when it cannot be opened."""
    if path.lower().startswith("rfc2217://"):
        return await _open_remote(path, profile)
    try:
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=path, **_line_settings(profile)
        )
    except (serial.SerialException, OSError, ValueError, termios.error) as exc:
        raise SerialPortError(f"serial port {path}: cannot open: {exc}") from exc
    return SerialConnection(path, profile, reader, writer)


async def _open_remote(path: str, profile: SerialProfile) -> RemoteSerialConnection:
    loop = asyncio.get_running_loop()

    def connect() -> Any:
        # the client connects (5 s timeout), negotiates Telnet/RFC 2217 options and sets the
        # remote line: blocking work, so in a worker thread
        return serial.serial_for_url(path, timeout=_REMOTE_POLL, **_line_settings(profile))

    try:
        port = await loop.run_in_executor(None, connect)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise SerialPortError(f"{path}: cannot open: {exc}") from exc
    return RemoteSerialConnection(path, profile, port)
