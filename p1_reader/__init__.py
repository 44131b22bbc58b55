"""The field side of Meterpoort: DSMR P1 telegrams from serial bytes to typed readings.

The pure core is importable without any I/O dependency: parsing, CRC, framing, decryption and
the telegram encoder. The serial reader, spool, forwarder and simulator live in their own modules
(``p1_reader.reader``, ``.spool``, ``.forwarder``, ``.simulate``) and are not imported here.

The layers, imports pointing from the later ones to the earlier ones only:

pure
    ``errors``, ``crc``, ``obis``, ``timestamps``, ``telegram``, ``parser``, ``framing``,
    ``decrypt``, ``encode``, ``jsonout``, ``thinning``, ``profiles``, ``sources`` (the
    ``--port`` forms and the connection interface), ``cliargs``
I/O edges
    ``serial_port`` (the only module that imports pyserial: local and RFC 2217 ports),
    ``tcp_stream`` (``socket://`` bridges), ``homewizard`` (a HomeWizard P1 meter's HTTP API),
    ``spool_format`` and ``spool`` (files), ``gateway_client`` (HTTP)
commands
    ``decode`` (pure apart from reading its files), ``reader`` (``read``), ``forwarder``
    (``forward``), ``simulate``; ``cli`` registers them all, so a command module imports the
    serial port only where it opens one (``tests/unit/p1_reader/test_purity.py``)
"""

from p1_reader.decrypt import DecryptedFrame, FrameCounterGuard, decrypt_frame
from p1_reader.encode import GasReading, format_telegram, format_telegram_v22
from p1_reader.errors import (
    AmbiguousRegistersError,
    AuthenticationError,
    ChecksumError,
    DecryptionError,
    FrameError,
    P1Error,
    ReplayError,
    SerialPortError,
    SourceError,
    SourceRefusedError,
    SpoolError,
    TimestampError,
    TooLargeError,
    ValueFormatError,
)
from p1_reader.framing import Frame, FrameKind, Framer
from p1_reader.parser import parse_telegram
from p1_reader.telegram import MbusDevice, Telegram
from p1_reader.timestamps import parse_tst, parse_tst_checked

__all__ = [
    "AmbiguousRegistersError",
    "AuthenticationError",
    "ChecksumError",
    "DecryptedFrame",
    "DecryptionError",
    "Frame",
    "FrameCounterGuard",
    "FrameError",
    "FrameKind",
    "Framer",
    "GasReading",
    "MbusDevice",
    "P1Error",
    "ReplayError",
    "SerialPortError",
    "SourceError",
    "SourceRefusedError",
    "SpoolError",
    "Telegram",
    "TimestampError",
    "TooLargeError",
    "ValueFormatError",
    "decrypt_frame",
    "format_telegram",
    "format_telegram_v22",
    "parse_telegram",
    "parse_tst",
    "parse_tst_checked",
]
