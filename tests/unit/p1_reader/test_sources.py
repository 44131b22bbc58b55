"""The ``--port`` forms, and what makes a HomeWizard answer a repeat (pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p1_reader.homewizard import repeat_key
from p1_reader.sources import SourceKind, parse_port

TELEGRAMS = Path(__file__).resolve().parents[2] / "fixtures" / "telegrams"
AM550 = (TELEGRAMS / "nodedsmr_v5_nl_iskra_am550.txt").read_bytes()
MT382 = (TELEGRAMS / "dsmrparser_v2.2_nl_iskra_mt382.txt").read_bytes()


@pytest.mark.parametrize(
    ("port", "kind"),
    [
        ("/dev/ttyUSB0", SourceKind.SERIAL),
        ("/dev/serial/by-id/usb-FTDI_FT232R-if00-port0", SourceKind.SERIAL),
        ("hwgrep://0403:6001", SourceKind.SERIAL),
        ("socket://192.168.1.50:8088", SourceKind.TCP),
        ("SOCKET://p1-bridge.local:23", SourceKind.TCP),
        ("rfc2217://192.168.1.50:2217", SourceKind.RFC2217),
        ("rfc2217://[fe80::1]:2217", SourceKind.RFC2217),
        ("http://192.168.1.60/api/v1/telegram", SourceKind.HTTP),
        ("https://p1meter.local/api/v1/telegram", SourceKind.HTTP),
    ],
)
def test_port_forms(port: str, kind: SourceKind) -> None:
    spec = parse_port(port)
    assert (spec.kind, spec.text) == (kind, port)


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("tcp://192.168.1.50:8088", "unknown port form"),
        ("socket://192.168.1.50", "socket://HOST:PORT"),
        ("socket://192.168.1.50:http", "socket://HOST:PORT"),
        ("rfc2217://:2217", "rfc2217://HOST:PORT"),
        ("http:///api/v1/telegram", "no host"),
        ("", "empty port"),
    ],
)
def test_malformed_port_forms_say_what_is_accepted(port: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_port(port)


def test_only_serial_and_rfc2217_ports_take_line_settings() -> None:
    assert {k for k in SourceKind if k.sets_line} == {SourceKind.SERIAL, SourceKind.RFC2217}


def test_a_telegram_repeats_by_its_timestamp() -> None:
    assert repeat_key(AM550) == b"0-0:1.0.0(181106140429W)"
    # the same timestamp is the same telegram, whatever else differs (or how it ends)
    assert repeat_key(AM550.rstrip(b"\r\n")) == repeat_key(AM550)
    other = AM550.replace(b"0-0:1.0.0(181106140429W)", b"0-0:1.0.0(181106140430W)")
    assert repeat_key(other) != repeat_key(AM550)


def test_a_timestamp_inside_another_line_is_not_the_telegram_timestamp() -> None:
    # "10-0:1.0.0(" is no telegram timestamp; without a real one, the whole text counts
    body = b"/XXX5\r\n\r\n10-0:1.0.0(181106140429W)\r\n!\r\n"
    assert repeat_key(body) == body


def test_a_dsmr22_telegram_repeats_by_its_whole_text() -> None:
    assert b"0-0:1.0.0" not in MT382
    assert repeat_key(MT382) == MT382
    assert repeat_key(MT382.replace(b"00001.001*kWh", b"00001.002*kWh", 1)) != repeat_key(MT382)
