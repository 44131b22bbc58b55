"""The raw TCP edge: ``socket://HOST:PORT``, a P1-to-Wi-Fi/Ethernet bridge or ser2net in raw mode.

Such a bridge copies the meter's bytes to whoever connects, unchanged; the baud rate and
character format are configured on the bridge, not by us. What a profile still decides here is
whether bit 7 is cleared: a bridge set to 8N1 in front of a DSMR 2.2/3 meter (7E1) passes the
parity bit on in bit 7, exactly like a local port opened 8N1 (see :mod:`p1_reader.profiles`).

asyncio streams rather than ``serial_asyncio_fast``: for ``socket://`` that library opens the
same asyncio connection underneath, after building a pyserial object in a worker thread only to
discard its line settings, and without a connect timeout (an unreachable bridge would hold an
open attempt for the kernel's two minutes). Here the connect is bounded and TCP keepalive is on,
so a bridge that lost power is noticed even between telegrams; the reader's idle timeout
catches the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import urllib.parse

from p1_reader.errors import SourceError
from p1_reader.profiles import MASK_7BIT, SerialProfile

log = logging.getLogger(__name__)

_READ_SIZE = 4096
#: longest wait for the TCP handshake
CONNECT_TIMEOUT = 10.0


class TcpStreamConnection:
    """An open TCP stream delivering byte chunks."""

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
        mask = "bit 7 cleared (7E1 data)" if self.profile.mask_7bit else "bit 7 kept"
        return f"raw TCP stream, {mask}"

    async def read(self) -> bytes:
        """Wait for the next chunk (never empty); SourceError when the peer closed or failed."""
        try:
            data = await self._reader.read(_READ_SIZE)
        except OSError as exc:
            raise SourceError(f"{self.path}: connection lost: {exc}") from exc
        if not data:
            raise SourceError(f"{self.path}: the bridge closed the connection")
        if self.profile.mask_7bit:
            data = data.translate(MASK_7BIT)
        return data

    async def close(self) -> None:
        """Close the connection; safe to call twice and after a failure."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def open_tcp_stream(path: str, profile: SerialProfile) -> TcpStreamConnection:
    """Connect to ``socket://HOST:PORT``; SourceError when it cannot be reached now."""
    url = urllib.parse.urlsplit(path)
    host, port = url.hostname, url.port
    if host is None or port is None:  # parse_port checked the form already
        raise SourceError(f"{path}: use socket://HOST:PORT")
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise SourceError(f"{path}: no answer within {CONNECT_TIMEOUT:g} s") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot connect: {exc}") from exc
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return TcpStreamConnection(path, profile, reader, writer)
