"""The serial reader through real pseudo-terminals: chunked bytes, encryption, reconnects,
profile detection, and the ``read`` subcommand as a process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p1_reader.decrypt import SMARTY_AUTH_KEY
from p1_reader.reader import Backoff, P1Reader, ReaderState, read_telegrams
from p1_reader.telegram import Telegram

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TELEGRAMS = FIXTURES / "telegrams"
ENCRYPTED = FIXTURES / "encrypted"
MIXED = (FIXTURES / "streams" / "synthetic_mixed.txt").read_bytes()
MIXED_FILES = [
    "dsmrparser_v4.2_nl_kaifa.txt",
    "dsmrparser_v5_nl_iskra_am550_two_mbus.txt",
    "dsmrparser_be_fluvius_emucs_v1.7.1.txt",
    "nodedsmr_v5_nl_iskra_am550.txt",
    "dsmrparser_v2.2_nl_iskra_mt382.txt",
]
AM550 = (TELEGRAMS / "nodedsmr_v5_nl_iskra_am550.txt").read_bytes()
KAIFA = (TELEGRAMS / "dsmrparser_v4.2_nl_kaifa.txt").read_bytes()
MT382 = (TELEGRAMS / "dsmrparser_v2.2_nl_iskra_mt382.txt").read_bytes()
STEP = 5.0  # generous per-step timeout on a loaded 2-core machine


@dataclass
class Pty:
    master: int
    slave: int
    path: str

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):  # already closed by the test
                os.close(fd)


def open_pty() -> Pty:
    master, slave = os.openpty()
    # raw: no echo, no CR/LF translation (the reader's pyserial sets raw mode too)
    tty.setraw(slave)
    os.set_blocking(master, False)
    return Pty(master, slave, os.ttyname(slave))


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = open_pty()
    yield p
    p.close()


async def write(master: int, data: bytes, chunk: int = 4096, delay: float = 0.0) -> None:
    """Write ``data`` into the master in ``chunk``-byte pieces, yielding to the loop between
    pieces so the reader (same loop) drains the pty."""
    for i in range(0, len(data), chunk):
        piece = data[i : i + chunk]
        while piece:
            try:
                n = os.write(master, piece)
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            piece = piece[n:]
        await asyncio.sleep(delay)


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

    async def get(self, wait: float = STEP) -> tuple[bytes, Telegram]:
        return await asyncio.wait_for(self.queue.get(), wait)

    async def connected(self) -> None:
        await asyncio.wait_for(self.reader.state.connected.wait(), STEP)

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


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (a counter kept by the reader) until it holds, at most STEP seconds."""
    for _ in range(int(STEP / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


def even_parity_high_bit(data: bytes) -> bytes:
    """What an 8N1 receiver sees of 7E1 characters at the same speed: parity in bit 7."""
    return bytes(c | 0x80 if bin(c).count("1") % 2 else c for c in data)


# -- chunked bytes --------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 333])
async def test_mixed_stream_in_odd_chunks(pty: Pty, chunk: int) -> None:
    reader = P1Reader(pty.path, "dsmr4", idle_timeout=None)
    async with consuming(reader) as consumer:
        await consumer.connected()
        writer = asyncio.create_task(
            write(pty.master, MIXED, chunk, delay=0.002 if chunk > 1 else 0.0)
        )
        got = [await consumer.get() for _ in MIXED_FILES]
        await writer
    assert [data for data, _ in got] == [(TELEGRAMS / n).read_bytes() for n in MIXED_FILES]
    assert [t.header for _, t in got] == [
        "/KFM5KAIFA-METER", "/ISK5\\2M550T-1012", "/FLU5\\253769484_A",
        "/ISK5\\2M550T-1011", "/ISk5\\2MT382-1004",
    ]
    state = reader.state
    assert state.telegrams == 5
    assert state.rejected == 0
    assert reader.framer.stats.truncated_frames == 1


async def test_public_read_telegrams_yields_bytes(pty: Pty) -> None:
    state = ReaderState()
    items = read_telegrams(pty.path, "dsmr4", idle_timeout=None, state=state)
    first = asyncio.ensure_future(anext(items))
    await asyncio.wait_for(state.connected.wait(), STEP)
    await write(pty.master, b"\xff\xff" + KAIFA)
    assert await asyncio.wait_for(first, STEP) == KAIFA
    await items.aclose()
    assert not state.connected.is_set()  # the port was released


async def test_crc_damaged_telegram_is_rejected_and_logged_without_content(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader")
    damaged = AM550.replace(b"003808.351", b"003808.352")
    reader = P1Reader(pty.path, "dsmr4", idle_timeout=None)
    async with consuming(reader) as consumer:
        await consumer.connected()
        await write(pty.master, damaged + KAIFA)
        data, _ = await consumer.get()
    assert data == KAIFA
    assert reader.state.rejected == 1
    assert reader.state.reasons == {"bad-crc": 1}
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1
    assert "bad-crc" in rejected[0]
    # the reason, never the telegram: no header, meter id or reading in the log
    for record in caplog.records:
        text = record.getMessage()
        assert "ISK5" not in text and "003808" not in text and "E0034006810516416" not in text


# -- encrypted meters -------------------------------------------------------------------------


async def test_encrypted_frames_over_pty(pty: Pty) -> None:
    frame = bytes.fromhex((ENCRYPTED / "esphome_smarty_style_t210dr.hex").read_text())
    other_ak = bytes.fromhex((ENCRYPTED / "dsmrparser_test_ggc_t210dr.hex").read_text())
    plaintext = (ENCRYPTED / "plaintext_sagemcom_t210dr.txt").read_bytes()
    reader = P1Reader(
        pty.path, "dsmr4", key=b"\xaa" * 16, auth_key=SMARTY_AUTH_KEY, idle_timeout=None
    )
    async with consuming(reader) as consumer:
        await consumer.connected()
        # garbage, the frame in 7-byte pieces, a replay of it, a frame sealed with another AK
        await write(pty.master, b"\x00\xff" + frame, chunk=7, delay=0.001)
        data, telegram = await consumer.get()
        assert data == plaintext
        assert telegram.header == "/EST5\\253710000_A"
        await write(pty.master, frame + other_ak)
        await until(lambda: reader.state.rejected >= 2)
    assert reader.state.reasons == {"replayed-frame": 1, "authentication-failed": 1}
    assert reader.state.telegrams == 1


# -- reconnect ----------------------------------------------------------------------------------


async def test_reconnect_after_the_device_disappears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="p1_reader")
    link = tmp_path / "ttyP1"
    first = open_pty()
    link.symlink_to(first.path)
    reader = P1Reader(
        str(link), "dsmr4", idle_timeout=None, backoff=Backoff(initial=0.05, maximum=0.2)
    )
    second: Pty | None = None
    try:
        async with consuming(reader) as consumer:
            await consumer.connected()
            await write(first.master, AM550)
            assert (await consumer.get())[0] == AM550
            # unplug: the device node and the pty go away
            link.unlink()
            first.close()
            await until(lambda: not reader.state.connected.is_set())
            await asyncio.sleep(0.8)  # several reconnect attempts fail meanwhile
            # plug in again: a new pty behind the same name
            second = open_pty()
            link.symlink_to(second.path)
            await consumer.connected()
            await write(second.master, KAIFA)
            assert (await consumer.get())[0] == KAIFA
    finally:
        first.close()
        if second is not None:
            second.close()
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("p1_")]
    disconnected = [m for lvl, m in messages if lvl >= logging.WARNING and "disconnected" in m]
    retries = [m for lvl, m in messages if lvl == logging.DEBUG and m.startswith("retry")]
    recovered = [m for lvl, m in messages if "recovered" in m]
    assert len(disconnected) == 1, messages
    assert len(retries) >= 3, messages
    assert [lvl for lvl, m in messages if lvl >= logging.WARNING] == [logging.WARNING]
    assert len(recovered) == 1
    assert reader.state.disconnects == 1


async def test_port_missing_at_start_is_logged_once_and_read_when_it_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="p1_reader")
    link = tmp_path / "ttyLATE"
    reader = P1Reader(
        str(link), "dsmr4", idle_timeout=None, backoff=Backoff(initial=0.02, maximum=0.1)
    )
    late = open_pty()
    try:
        async with consuming(reader) as consumer:
            await asyncio.sleep(0.5)
            assert not reader.state.connected.is_set()
            link.symlink_to(late.path)
            await consumer.connected()
            await write(late.master, MT382)
            assert (await consumer.get())[0] == MT382
    finally:
        late.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0]


async def test_silent_port_is_reopened(pty: Pty, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader")
    reader = P1Reader(
        pty.path, "dsmr4", idle_timeout=0.2, backoff=Backoff(initial=0.05, maximum=0.1)
    )
    async with consuming(reader) as consumer:
        await consumer.connected()
        await asyncio.sleep(1.0)  # several idle periods
        assert reader.state.disconnects >= 2
        await consumer.connected()
        await write(pty.master, AM550)
        assert (await consumer.get())[0] == AM550
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no data" in warnings[0]
    # each reopen during the outage is an attempt, not an INFO line; recovery is one line
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert [m for m in infos if m.startswith("opened")] == [infos[0]]
    assert len([m for m in infos if "recovered" in m]) == 1


# -- profiles -----------------------------------------------------------------------------------


async def send_until_read(consumer: Consumer, master: int, data: bytes) -> bytes:
    """Send like a meter (again and again) until the reader yields a telegram."""
    async with asyncio.timeout(4 * STEP):
        while True:
            await write(master, data, chunk=64, delay=0.001)
            with contextlib.suppress(TimeoutError):
                return (await consumer.get(wait=0.3))[0]


async def test_auto_profile_reads_dsmr5(pty: Pty) -> None:
    reader = P1Reader(pty.path, "auto", detect_timeout=1.0, idle_timeout=None)
    async with consuming(reader) as consumer:
        await consumer.connected()
        assert await send_until_read(consumer, pty.master, AM550) == AM550
    assert reader.state.profile == "dsmr4"


async def test_auto_profile_reads_dsmr22_ascii(pty: Pty) -> None:
    reader = P1Reader(pty.path, "auto", detect_timeout=1.0, idle_timeout=None)
    async with consuming(reader) as consumer:
        await consumer.connected()
        assert await send_until_read(consumer, pty.master, MT382) == MT382


async def test_auto_profile_switches_to_7e1_for_dsmr22_with_parity_bits(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p1_reader")
    wire = even_parity_high_bit(MT382)
    assert wire != MT382  # bit 7 is set on many characters, including '/'
    reader = P1Reader(pty.path, "auto", detect_timeout=1.5, idle_timeout=None)
    async with consuming(reader) as consumer:
        await consumer.connected()
        assert await send_until_read(consumer, pty.master, wire) == MT382
    assert reader.state.profile == "dsmr2"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "trying 9600 7E1" in text
    assert "detected dsmr2" in text


async def test_dsmr2_profile_masks_the_parity_bit(pty: Pty) -> None:
    reader = P1Reader(pty.path, "dsmr2", idle_timeout=None)
    async with consuming(reader) as consumer:
        await consumer.connected()
        await write(pty.master, even_parity_high_bit(MT382 + KAIFA), chunk=333, delay=0.002)
        assert (await consumer.get())[0] == MT382
        assert (await consumer.get())[0] == KAIFA


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        P1Reader("/dev/null", "dsmr9")


# -- the ``read`` subcommand as a process ----------------------------------------------------


async def test_read_subcommand_prints_json_lines(pty: Pty) -> None:
    damaged = AM550.replace(b"003808.351", b"003808.352")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p1_reader", "read", "--port", pty.path, "--profile", "dsmr4",
        "--count", "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(4 * STEP):
            seen = b""
            while b"opened" not in seen:
                line = await proc.stderr.readline()
                assert line, f"reader exited early: {seen!r}"
                seen += line
            await write(pty.master, KAIFA, chunk=7, delay=0.001)
            await write(pty.master, damaged, chunk=333, delay=0.002)
            await write(pty.master, AM550, chunk=1)
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 2
    kaifa, am550 = (json.loads(line) for line in lines)
    assert kaifa["header"] == "/KFM5KAIFA-METER"
    assert kaifa["timestamp"] == "2016-11-13T19:57:57Z"
    assert kaifa["import_t1_wh"] == 1581123
    assert kaifa["mbus"][0]["value"] == 981443
    assert am550["meter_id"] == "E0034006810516416"
    assert am550["import_t1_wh"] == 3808351
    stderr = (seen + err).decode()
    assert stderr.count("rejected") == 1
    assert "bad-crc" in stderr
    assert "003808" not in stderr and "E0034006810516416" not in stderr
    # power values never leave: 1-0:1.7.0 / 2.7.0 / per phase
    assert "kW" not in out.decode()
