"""The reader on network sources, over real sockets on 127.0.0.1: a raw TCP bridge
(``socket://``) that drops the connection mid-telegram, an RFC 2217 server in front of a
pseudo-terminal (``rfc2217://``), and a HomeWizard P1 meter's local API (``http://``) with its
repeated telegrams and its documented error answers. Nothing of the reader is replaced: the
dongles are fakes of someone else's device, the reader is the real one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from p1_reader.reader import Backoff, P1Reader
from p1_reader.telegram import Telegram
from tests.support.p1_network import (
    API_DISABLED,
    NO_TELEGRAM,
    NOT_FOUND,
    HomeWizardMeter,
    Rfc2217Server,
    Script,
    TcpBridge,
    telegram,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TELEGRAMS = FIXTURES / "telegrams"
MIXED = (FIXTURES / "streams" / "synthetic_mixed.txt").read_bytes()
AM550 = (TELEGRAMS / "nodedsmr_v5_nl_iskra_am550.txt").read_bytes()
AM550_TWO_MBUS = (TELEGRAMS / "dsmrparser_v5_nl_iskra_am550_two_mbus.txt").read_bytes()
KAIFA = (TELEGRAMS / "dsmrparser_v4.2_nl_kaifa.txt").read_bytes()
FLUVIUS = (TELEGRAMS / "dsmrparser_be_fluvius_emucs_v1.7.1.txt").read_bytes()
MT382 = (TELEGRAMS / "dsmrparser_v2.2_nl_iskra_mt382.txt").read_bytes()
STEP = 5.0  # generous per-step timeout on a loaded 2-core machine
FAST = Backoff(initial=0.02, maximum=0.1)


class Consumer:
    """Runs a reader in a task and queues what it yields."""

    def __init__(self, reader: P1Reader) -> None:
        self.reader = reader
        self.queue: asyncio.Queue[tuple[bytes, Telegram]] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with contextlib.aclosing(self.reader.telegrams()) as items:
            async for item in items:
                await self.queue.put(item)

    async def get(self, wait: float = STEP) -> bytes:
        return (await asyncio.wait_for(self.queue.get(), wait))[0]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def consuming(reader: P1Reader) -> AsyncIterator[Consumer]:
    consumer = Consumer(reader)
    try:
        yield consumer
    finally:
        await consumer.stop()


async def until(condition: Callable[[], bool], limit: float = STEP) -> None:
    for _ in range(int(limit / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


def even_parity_high_bit(data: bytes) -> bytes:
    """What an 8N1 bridge passes on of 7E1 characters: the parity bit in bit 7."""
    return bytes(c | 0x80 if bin(c).count("1") % 2 else c for c in data)


def p1_messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name.startswith("p1_") and r.levelno == level
    ]


# -- socket:// -----------------------------------------------------------------------------------


async def test_tcp_bridge_dropping_mid_telegram_loses_only_that_telegram(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="p1_reader")
    # connection 1 streams the real capture and drops 300 bytes into the Fluvius telegram;
    # meanwhile the meter goes on, so connection 2 starts 200 bytes later, inside the same
    # telegram. Were the two connections glued together, that telegram would come out with a
    # hole in it (a CRC failure, or a bad reading on a CRC-less meter).
    fluvius = MIXED.index(b"/FLU5")
    first, second = MIXED[: fluvius + 300], MIXED[fluvius + 500 :]
    # connection 2 itself drops inside the CRC-less DSMR 2.2 telegram, after a complete line;
    # connection 3 resumes further down that telegram and then carries a whole Kaifa telegram
    mt382 = second.index(b"/ISk5")
    cut = mt382 + MT382.index(b"1-0:1.8.2")
    resume = MT382.index(b"0-0:96.14.0")
    scripts = [
        Script(first, chunk=61),
        Script(second[:cut], chunk=13),
        Script(MT382[resume:] + KAIFA, drop=False),
    ]
    async with TcpBridge(scripts) as bridge:
        reader = P1Reader(bridge.url, "dsmr4", backoff=FAST, idle_timeout=None)
        async with consuming(reader) as consumer:
            got = [await consumer.get() for _ in range(4)]
            await asyncio.wait_for(bridge.done.wait(), STEP)
            await asyncio.sleep(0.2)  # a fifth telegram would be out by now
            assert consumer.queue.empty()
        assert bridge.connections == 3
    assert got == [KAIFA, AM550_TWO_MBUS, AM550, KAIFA]
    state = reader.state
    # the Fluvius and MT382 telegrams were cut: dropped whole, neither read nor rejected
    assert state.telegrams == 4
    assert state.rejected == 0
    assert state.disconnects == 2
    # one truncated frame per drop (at the first, the capture's own cut-short AM550 and the
    # Fluvius telegram its header restarts are still one pending frame)
    assert reader.framer.stats.truncated_frames == 2
    # one warning per drop, one recovery line per drop, no telegram content in the log
    warnings = p1_messages(caplog, logging.WARNING)
    assert len(warnings) == 2 and all("disconnected" in m for m in warnings), warnings
    assert all("closed the connection" in m for m in warnings)
    assert len([m for m in p1_messages(caplog, logging.INFO) if "recovered" in m]) == 2
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "FLU5" not in text and "kWh" not in text


async def test_tcp_bridge_unreachable_at_start_is_logged_once_then_read() -> None:
    # a port nobody listens on yet: the reader retries until the bridge comes up there
    async with TcpBridge([Script(AM550, drop=False)]) as probe:
        url, port = probe.url, probe.port
    reader = P1Reader(url, "dsmr4", backoff=FAST, idle_timeout=None)
    async with consuming(reader) as consumer:
        await asyncio.sleep(0.3)
        assert not reader.state.connected.is_set()
        bridge = TcpBridge([Script(AM550, drop=False)])
        server = await asyncio.start_server(bridge._serve, "127.0.0.1", port)
        try:
            assert await consumer.get() == AM550
        finally:
            server.close()
            for task in list(bridge._tasks):
                task.cancel()
            await server.wait_closed()


async def test_tcp_bridge_in_front_of_a_7e1_meter_gets_bit_7_cleared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader")
    # ser2net set to 9600 8N1 for a DSMR 2.2 meter: the parity bit arrives in bit 7
    wire = even_parity_high_bit(MT382 * 3)
    # the meter goes on sending: each connection gets the stream from where the meter is
    async with TcpBridge([Script(wire, drop=False), Script(wire, drop=False)]) as bridge:
        reader = P1Reader(bridge.url, "auto", backoff=FAST, idle_timeout=None)
        async with consuming(reader) as consumer:
            assert await consumer.get() == MT382
    assert reader.state.profile == "dsmr2"
    # the switch is one reconnect with the mask on
    assert bridge.connections == 2
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "trying bit 7 cleared" in text
    assert "detected dsmr2 (raw TCP stream, bit 7 cleared (7E1 data))" in text


async def test_tcp_bridge_is_not_reconnected_to_detect_a_line_it_does_not_have() -> None:
    # a silent bridge: on a serial port "no telegram within detect_timeout" switches the line
    # settings (a reopen); a bridge has its own, so the reader stays connected and waits
    async with TcpBridge([Script(b"", drop=False)]) as bridge:
        reader = P1Reader(bridge.url, "auto", backoff=FAST, detect_timeout=0.1, idle_timeout=None)
        async with consuming(reader):
            await asyncio.wait_for(reader.state.connected.wait(), STEP)
            await asyncio.sleep(0.6)
            assert bridge.connections == 1
            assert reader.state.disconnects == 0


async def test_silent_tcp_bridge_is_reconnected_after_the_idle_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader")
    async with TcpBridge([Script(b"", drop=False), Script(KAIFA, drop=False)]) as bridge:
        reader = P1Reader(bridge.url, "dsmr4", backoff=FAST, idle_timeout=0.3)
        async with consuming(reader) as consumer:
            assert await consumer.get() == KAIFA
    assert bridge.connections == 2
    warnings = p1_messages(caplog, logging.WARNING)
    assert len(warnings) == 1 and "no data" in warnings[0]


# -- rfc2217:// ----------------------------------------------------------------------------------


async def write_master(master: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(master, data[:256])
        except BlockingIOError:
            n = 0
        data = data[n:]
        await asyncio.sleep(0.002)


async def test_rfc2217_port_gets_the_profile_line_and_survives_a_drop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader")
    with Rfc2217Server() as server:
        reader = P1Reader(server.url, "dsmr2", backoff=FAST, idle_timeout=None)
        async with consuming(reader) as consumer:
            await asyncio.wait_for(reader.state.connected.wait(), STEP)
            # the client set the remote port to the profile's line (9600; read as 8 bits)
            assert server.line() == (9600, 8)
            await write_master(server.master, even_parity_high_bit(MT382))
            assert await consumer.get() == MT382
            server.drop()
            await until(lambda: reader.state.disconnects == 1)
            await asyncio.wait_for(reader.state.connected.wait(), STEP)
            await until(lambda: server.connections == 2)
            await asyncio.sleep(0.3)  # the client's negotiation on the new connection
            await write_master(server.master, even_parity_high_bit(KAIFA))
            assert await consumer.get() == KAIFA
    assert reader.state.rejected == 0
    warnings = p1_messages(caplog, logging.WARNING)
    assert len(warnings) == 1 and "disconnected" in warnings[0]
    assert any("9600 7E1 over RFC 2217" in m for m in p1_messages(caplog, logging.INFO))


async def test_rfc2217_auto_profile_sets_115200_first() -> None:
    with Rfc2217Server() as server:
        reader = P1Reader(server.url, "auto", backoff=FAST, idle_timeout=None)
        async with consuming(reader) as consumer:
            await asyncio.wait_for(reader.state.connected.wait(), STEP)
            assert server.line() == (115200, 8)
            await asyncio.sleep(0.3)
            await write_master(server.master, AM550)
            assert await consumer.get() == AM550
    assert reader.state.profile == "dsmr4"


# -- http:// (HomeWizard) ------------------------------------------------------------------------


async def test_homewizard_repeats_are_dropped_and_error_answers_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="p1_reader")
    answers = [
        NO_TELEGRAM,  # the dongle just booted: no telegram yet
        NO_TELEGRAM,
        # as stored by the dongle, without a final line break after "!CRC"
        telegram(AM550.rstrip(b"\r\n")),
        telegram(AM550.rstrip(b"\r\n")),
        telegram(AM550.rstrip(b"\r\n")),
        telegram(KAIFA),
        telegram(KAIFA),
        API_DISABLED,  # someone switches the local API off…
        API_DISABLED,
        telegram(KAIFA),  # …and on again: the same telegram is still not new
        telegram(MT382),  # no 0-0:1.0.0: a repeat is recognised by its whole text
        telegram(MT382),
        telegram(FLUVIUS),
    ]
    async with HomeWizardMeter(answers) as meter:
        reader = P1Reader(meter.url, "auto", backoff=FAST, poll_interval=0.01, idle_timeout=None)
        async with consuming(reader) as consumer:
            got = [await consumer.get() for _ in range(4)]
            await asyncio.wait_for(meter.done.wait(), STEP)
            await asyncio.sleep(0.2)  # the dongle keeps answering FLUVIUS: nothing new
            assert consumer.queue.empty()
    assert got == [AM550, KAIFA, MT382, FLUVIUS]
    assert reader.state.telegrams == 4 and reader.state.rejected == 0
    warnings = p1_messages(caplog, logging.WARNING)
    errors = p1_messages(caplog, logging.ERROR)
    # 503 at the start: one warning for the outage; 403: one error naming the fix
    assert len(warnings) == 2, warnings
    assert "no telegram (503)" in warnings[0]
    assert "disabled" in warnings[1]  # the running connection ended on the 403
    assert len(errors) == 1 and "switch on 'Local API'" in errors[0], errors
    assert len([m for m in p1_messages(caplog, logging.INFO) if "recovered" in m]) == 2
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "KFM5" not in text and "kWh" not in text


async def test_homewizard_wrong_path_is_refused_and_retried_rarely(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="p1_reader")
    async with HomeWizardMeter([NOT_FOUND] * 1000) as meter:
        wrong = meter.url.replace("/api/v1/telegram", "/api/v1/data")
        reader = P1Reader(
            wrong, "auto", backoff=Backoff(initial=0.01, maximum=0.3), idle_timeout=None
        )
        async with consuming(reader):
            await asyncio.sleep(1.0)
    # refused answers wait the longest backoff each time, not 0.01 s doubling
    errors = p1_messages(caplog, logging.ERROR)
    assert len(errors) == 1 and "404" in errors[0] and "/api/v1/telegram" in errors[0]
    retries = [m for m in p1_messages(caplog, logging.DEBUG) if m.startswith("retry")]
    assert 1 <= len(retries) <= 4, retries


async def test_homewizard_with_a_silent_meter_reconnects_once_and_repeats_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader")
    # the dongle keeps handing out the same telegram: after the idle timeout the reader
    # reconnects, and the telegram it gets again is still recognised as a repeat
    async with HomeWizardMeter([telegram(KAIFA)]) as meter:
        reader = P1Reader(meter.url, "auto", backoff=FAST, poll_interval=0.01, idle_timeout=0.3)
        async with consuming(reader) as consumer:
            assert await consumer.get() == KAIFA
            await until(lambda: reader.state.disconnects >= 2)
            assert consumer.queue.empty()
    warnings = p1_messages(caplog, logging.WARNING)
    assert len(warnings) == 1 and "no data" in warnings[0]


def test_key_is_refused_for_an_http_meter() -> None:
    with pytest.raises(ValueError, match="plaintext"):
        P1Reader("http://192.0.2.1/api/v1/telegram", key=b"\x00" * 16)


@pytest.mark.parametrize(
    "port", ["tcp://host:1", "socket://host", "rfc2217://:23", "http:///api/v1/telegram", ""]
)
def test_malformed_ports_are_refused(port: str) -> None:
    with pytest.raises(ValueError):
        P1Reader(port)


# -- the ``read`` subcommand as a process -----------------------------------------------------


@pytest.mark.parametrize("kind", ["socket", "http"])
async def test_read_subcommand_on_a_network_dongle(kind: str) -> None:
    dongle: TcpBridge | HomeWizardMeter
    if kind == "socket":
        dongle = TcpBridge([Script(KAIFA + AM550, drop=False)])
    else:
        dongle = HomeWizardMeter([telegram(KAIFA), telegram(KAIFA), telegram(AM550)])
    async with dongle:
        url = dongle.url
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "p1_reader", "read", "--port", url,
            "--poll-interval", "50ms", "--count", "2",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 4 * STEP)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [line["header"] for line in lines] == ["/KFM5KAIFA-METER", "/ISK5\\2M550T-1011"]
    assert "opened " + url in err.decode()
