"""Errors raised by the P1 engine.

The tree::

    P1Error                      anything the P1 engine refuses
    ├── FrameError               bytes that are not a (complete) telegram or frame
    │   └── TooLargeError        a telegram or frame over the size limit
    ├── ChecksumError            CRC-16 missing where required, or not matching
    ├── TimestampError           a timestamp that cannot be read (unset clock, bad date)
    ├── ValueFormatError         a value that does not match its OBIS object's format
    │   └── AmbiguousRegistersError  energy registers on two channels B (1-1:… and 1-2:…)
    ├── DecryptionError          a DLMS general-glo-ciphering frame that cannot be opened
    │   ├── AuthenticationError  GCM tag does not verify (wrong key, wrong AAD, tampering)
    │   └── ReplayError          frame counter not above the last one seen
    ├── SourceError              the telegram source cannot be opened, vanished or went quiet
    │   ├── SerialPortError      … a serial port (local, or remote over RFC 2217)
    │   └── SourceRefusedError   … it answers but refuses us (HomeWizard API disabled, wrong URL)
    ├── SpoolError               the spool directory cannot be used
    └── TLSSetupError            the forwarder's CA bundle or client certificate cannot be used

Every message says what is wrong and where (line number, OBIS code, byte offset).
"""

from __future__ import annotations


class P1Error(Exception):
    """Base of every error the P1 engine raises on purpose."""

    #: short, stable machine-readable reason (used in API rejections and metrics labels)
    reason: str = "invalid-telegram"


class FrameError(P1Error):
    reason = "bad-frame"


class TooLargeError(FrameError):
    reason = "too-large"


class ChecksumError(P1Error):
    reason = "bad-crc"


class TimestampError(P1Error):
    reason = "bad-timestamp"


class ValueFormatError(P1Error):
    reason = "bad-value"


class AmbiguousRegistersError(ValueFormatError):
    """The telegram carries the energy registers of its meter on two different channels B
    (e.g. ``1-1:1.8.1`` and ``1-2:1.8.1``, none on B=0): which are the meter's cannot be told."""

    reason = "ambiguous-registers"


class DecryptionError(P1Error):
    reason = "decryption-failed"


class AuthenticationError(DecryptionError):
    reason = "authentication-failed"


class ReplayError(DecryptionError):
    reason = "replayed-frame"


class SourceError(P1Error):
    """The telegram source (serial port, TCP stream, HTTP meter) cannot be read right now; the
    reader reconnects with backoff."""

    reason = "source"


class SerialPortError(SourceError):
    reason = "serial-port"


class SourceRefusedError(SourceError):
    """The source is there but refuses us until someone changes its configuration (the
    HomeWizard local API is switched off, the URL points elsewhere): retried at the longest
    backoff and logged as an error, since waiting alone will not fix it."""

    reason = "source-refused"


class SpoolError(P1Error):
    """The spool directory cannot be used (unreadable, corrupt beyond the tail, misconfigured)."""

    reason = "spool"


class TLSSetupError(P1Error):
    """The forwarder's TLS files (``--ca-bundle``, ``--client-cert``/``--client-key``) cannot
    be read or do not fit together."""

    reason = "tls-setup"
