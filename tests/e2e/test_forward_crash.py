"""``python -m p1_reader forward`` as a process: SIGKILL with the gateway down loses nothing.

The forwarder reads telegrams from a FIFO while the gateway is down, is killed with SIGKILL once
they are spooled, and is started again with the gateway up: every telegram arrives, in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from p1_reader.simulate import generate, make_meters
from p1_reader.spool import read_all
from p1_reader.timestamps import LOCAL_TZ
from tests.support.fake_gateway import FakeGateway

REPO = Path(__file__).resolve().parents[2]


def telegrams(count: int) -> list[bytes]:
    meters = make_meters(3, seed=11)
    out = []
    for telegram in generate(meters, datetime(2026, 10, 25, 1, 30, tzinfo=LOCAL_TZ), None):
        out.append(telegram)
        if len(out) == count:
            return out
    raise AssertionError("unreachable")


def start_forwarder(gw: FakeGateway, spool_dir: Path, source: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, P1_READER_TOKEN="test-token", PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [
            sys.executable, "-m", "p1_reader", "forward",
            "--input", str(source),
            "--gateway", gw.url,
            "--spool-dir", str(spool_dir),
            "--send-all",
            "--batch-size", "25",
            "--batch-interval", "50ms",
            "--backoff-initial", "20ms",
            "--backoff-max", "200ms",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def eventually(predicate: Callable[[], bool], *, limit: float = 30.0) -> None:
    step = 0.05
    for _ in range(int(limit / step)):
        if predicate():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {limit} s")


async def wait_exit(proc: subprocess.Popen[bytes], limit: float = 30.0) -> int:
    async with asyncio.timeout(limit):
        return await asyncio.to_thread(proc.wait)


async def test_sigkill_with_gateway_down_then_restart_delivers_everything(tmp_path: Path) -> None:
    items = telegrams(120)
    gw = FakeGateway()
    await gw.start()
    await gw.stop()  # down: connection refused on its port
    fifo = tmp_path / "p1.fifo"
    os.mkfifo(fifo)
    spool_dir = tmp_path / "spool"
    proc = start_forwarder(gw, spool_dir, fifo)
    try:
        # opening the FIFO for writing waits for the forwarder to open it for reading
        writer = await asyncio.to_thread(open, fifo, "wb")
        try:
            half = len(items) // 2
            # in two writes, the second splitting a telegram: the framer must join the pieces
            await asyncio.to_thread(writer.write, b"".join(items[:half]) + items[half][:100])
            await asyncio.to_thread(writer.flush)
            await asyncio.to_thread(writer.write, items[half][100:] + b"".join(items[half + 1 :]))
            await asyncio.to_thread(writer.flush)
            await eventually(lambda: spool_dir.exists() and len(read_all(spool_dir)) == len(items))
            proc.kill()  # SIGKILL: no chance to flush or clean up
            assert await wait_exit(proc) == -signal.SIGKILL
        finally:
            writer.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            await wait_exit(proc)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    assert [r.data for r in read_all(spool_dir)] == items
    assert gw.received == []

    # restart with the gateway up and nothing more to read: deliver the spool, then exit
    await gw.start()
    try:
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        proc = start_forwarder(gw, spool_dir, empty)
        code = await wait_exit(proc)
        _, stderr = proc.communicate()
        assert code == 0, stderr.decode(errors="replace")
    finally:
        await gw.stop()
    assert gw.received == items
    assert read_all(spool_dir) == []
    # privacy: the log never carries telegram content
    assert b"0-0:96.1.1" not in stderr and b"kWh" not in stderr


async def test_sigterm_spools_what_was_read_and_exits_cleanly(tmp_path: Path) -> None:
    items = telegrams(40)
    gw = FakeGateway()
    await gw.start()
    await gw.stop()
    fifo = tmp_path / "p1.fifo"
    os.mkfifo(fifo)
    spool_dir = tmp_path / "spool"
    proc = start_forwarder(gw, spool_dir, fifo)
    writer = await asyncio.to_thread(open, fifo, "wb")
    try:
        await asyncio.to_thread(writer.write, b"".join(items))
        await asyncio.to_thread(writer.flush)
        await eventually(lambda: spool_dir.exists() and len(read_all(spool_dir)) == len(items))
        proc.send_signal(signal.SIGTERM)
        code = await wait_exit(proc, 15)
        _, stderr = proc.communicate()
    finally:
        writer.close()
        if proc.poll() is None:
            proc.kill()
            await wait_exit(proc)
    assert code == 0, stderr.decode(errors="replace")
    assert b"stopping" in stderr
    assert [r.data for r in read_all(spool_dir)] == items
