"""Where telegram bytes come from: the ``--port`` forms and the connection interface they share.

``--port`` names one of four kinds of source:

==================================== =========================================================
``/dev/ttyUSB0`` (any path)          a local serial port (USB P1 cable); pyserial's own URL
                                     forms (``hwgrep://``, ``spy://``…) count as one too
``rfc2217://HOST:PORT``              a remote serial port over RFC 2217 (ser2net in telnet/
                                     rfc2217 mode, esp-link): we still set the line settings
``socket://HOST:PORT``               a raw TCP stream of the meter's bytes (P1-to-Wi-Fi/
                                     Ethernet bridges, ser2net in raw mode): the bridge owns the
                                     line settings
``http://HOST/api/v1/telegram``      a HomeWizard Wi-Fi P1 meter's local API: polled, it
                                     answers with the last telegram it read
==================================== =========================================================

Every kind opens into a :class:`Connection` that hands out byte chunks, so the reader's
supervision (backoff, recovery log line, idle timeout), its framer and its parser are the same
for all of them. Pure: this module parses the form and states the interface; the edge modules
(``serial_port``, ``tcp_stream``, ``homewizard``) implement it, and the reader imports the one
it needs when it opens a source, so registering a command loads none of them.
"""

from __future__ import annotations

import argparse
import enum
import urllib.parse
from dataclasses import dataclass
from typing import Protocol

from p1_reader.profiles import SerialProfile

#: pyserial's other URL handlers, passed to it unchanged as before (``hwgrep://`` finds a USB
#: adapter by its id, ``spy://`` logs the traffic for debugging)
_PYSERIAL_SCHEMES = frozenset({"hwgrep", "spy", "alt", "loop", "cp2110"})


class SourceKind(enum.Enum):
    """The four kinds of ``--port``."""

    SERIAL = "serial"
    RFC2217 = "rfc2217"
    TCP = "socket"
    HTTP = "http"

    @property
    def sets_line(self) -> bool:
        """Whether opening with another profile changes the baud rate and character format
        (a local or RFC 2217 port); a TCP bridge and an HTTP meter keep their own."""
        return self in (SourceKind.SERIAL, SourceKind.RFC2217)


@dataclass(frozen=True, slots=True)
class PortSpec:
    """A parsed ``--port``: its kind and the text as given (used in every log line)."""

    kind: SourceKind
    text: str


def parse_port(text: str) -> PortSpec:
    """Sort ``--port`` into a kind; ValueError (with the accepted forms) when it is none."""
    if "://" not in text:
        if not text:
            raise ValueError("empty port: give a serial device or a URL")
        return PortSpec(SourceKind.SERIAL, text)
    url = urllib.parse.urlsplit(text)
    scheme = url.scheme.lower()
    if scheme in ("http", "https"):
        if not url.hostname:
            raise ValueError(f"no host in {text!r}: use http://HOST/api/v1/telegram")
        return PortSpec(SourceKind.HTTP, text)
    if scheme in ("socket", "rfc2217"):
        try:
            port = url.port
        except ValueError:
            port = None
        if not url.hostname or port is None:
            raise ValueError(f"{text!r}: use {scheme}://HOST:PORT")
        kind = SourceKind.TCP if scheme == "socket" else SourceKind.RFC2217
        return PortSpec(kind, text)
    if scheme in _PYSERIAL_SCHEMES:
        return PortSpec(SourceKind.SERIAL, text)
    raise ValueError(
        f"unknown port form {text!r}: use a serial device (/dev/ttyUSB0), socket://HOST:PORT, "
        "rfc2217://HOST:PORT or http://HOST/api/v1/telegram"
    )


def port_argument(text: str) -> str:
    """argparse ``type`` for ``--port``: the text unchanged, or a clear error."""
    try:
        parse_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


@dataclass(slots=True)
class LastTelegram:
    """What a polled source handed out last. The reader owns it, so that it outlives a
    reconnect: otherwise every reconnect would hand out the dongle's last telegram again."""

    key: bytes | None = None


class Connection(Protocol):
    """One open source. ``read`` waits for the next non-empty chunk and raises
    :class:`~p1_reader.errors.SourceError` when the source is gone; ``close`` is safe to call
    twice and after a failure."""

    #: the ``--port`` text (for log lines)
    path: str
    #: the profile it was opened with (for a TCP stream: only whether bit 7 is cleared)
    profile: SerialProfile

    def describe(self) -> str:
        """How the bytes are read, for log lines (``115200 8N1``, ``raw TCP, bit 7 kept``)."""
        ...

    async def read(self) -> bytes: ...

    async def close(self) -> None: ...
