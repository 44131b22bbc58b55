"""Command-line vocabulary shared by the subcommands: source and key options, durations, sizes.

Pure argparse helpers (no I/O, no serial port, no HTTP). They live apart from the commands that
use them so that a pure command such as ``decode`` can offer ``--key`` without importing the
serial reader, and the simulator can read ``--duration`` without importing the forwarder.
"""

from __future__ import annotations

import argparse
import re

from p1_reader.decrypt import KEY_LEN, SMARTY_AUTH_KEY
from p1_reader.profiles import PROFILES
from p1_reader.sources import port_argument

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]i?[bB]?|[bB])?\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def hex_key(text: str) -> bytes:
    """An AES-128 key given as 32 hex digits (argparse ``type``)."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        # only a prefix: the argument is a secret and error messages end up in logs
        raise argparse.ArgumentTypeError(f"not a hex string: {text[:8]}…") from None
    if len(key) != KEY_LEN:
        raise argparse.ArgumentTypeError(f"a key is 32 hex digits (16 bytes), got {len(key)} bytes")
    return key


def add_key_arguments(parser: argparse.ArgumentParser) -> None:
    """``--key`` / ``--auth-key`` / ``--no-aad`` (``read``, ``decode`` and ``forward``)."""
    parser.add_argument(
        "--key",
        type=hex_key,
        metavar="HEX",
        help="AES-128 encryption key (32 hex digits) of a DLMS-encrypted meter",
    )
    aad = parser.add_mutually_exclusive_group()
    aad.add_argument(
        "--auth-key",
        type=hex_key,
        metavar="HEX",
        default=SMARTY_AUTH_KEY,
        help="authentication key for the GCM AAD (default: the Luxembourg Smarty key)",
    )
    aad.add_argument(
        "--no-aad",
        action="store_const",
        dest="auth_key",
        const=None,
        help="the meter seals frames without AAD",
    )


#: ``--port`` help (``read`` and ``forward``)
PORT_HELP = (
    "where the telegrams come from: a serial device (/dev/ttyUSB0); socket://HOST:PORT for a "
    "P1-to-Wi-Fi/Ethernet bridge or ser2net serving the raw stream over TCP; "
    "rfc2217://HOST:PORT for an RFC 2217 serial server; http://HOST/api/v1/telegram for a "
    "HomeWizard Wi-Fi P1 meter (local API switched on)"
)


def add_source_arguments(
    parser: argparse.ArgumentParser,
    *,
    port_group: argparse._MutuallyExclusiveGroup | None = None,
) -> None:
    """``--port`` (required, unless it goes into ``port_group``), ``--profile`` and
    ``--poll-interval`` (``read`` and ``forward``)."""
    (port_group or parser).add_argument(
        "--port",
        type=port_argument,
        required=port_group is None,
        metavar="PORT",
        help=PORT_HELP,
    )
    parser.add_argument(
        "--profile",
        choices=("auto", *PROFILES),
        default="auto",
        help="serial line settings: dsmr2 = 9600 7E1 (DSMR 2.2/3), dsmr4 = 115200 8N1 "
        "(DSMR 4/5), auto = detect (default). socket://: the bridge sets the line, auto only "
        "decides whether to clear bit 7; http://: ignored",
    )
    parser.add_argument(
        "--poll-interval",
        type=parse_duration,
        default=1.0,
        metavar="DURATION",
        help="http:// meters: how often to ask for the last telegram (default 1s)",
    )


def parse_duration(text: str) -> float:
    """``"5s"``, ``"250ms"``, ``"5m"``, ``"1h"``, ``"1d"`` or plain seconds → seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (use e.g. 500ms, 5s, 10m, 1h, 1d)"
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def parse_size(text: str) -> int:
    """``"256MiB"``, ``"64k"``, ``"1G"`` or plain bytes → bytes (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 64KiB, 256MiB, 1GiB)")
    unit = (match.group(2) or "")[:1].lower()
    return int(match.group(1)) * _SIZE_UNITS[unit]
