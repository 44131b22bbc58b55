"""The whole chain as a user runs it, every part a process: ``python -m gateway admin`` registers
an electricity + gas connection and a device, ``python -m gateway serve`` serves, ``python -m
p1_reader forward`` reads a pseudo-terminal (a P1 port as far as it can tell) and pushes to the
gateway. Telegram bytes go into the pty master in odd chunk sizes; the readings must reach the
database (the test's own fresh database, handed to the processes as ``DATABASE_URL``), and both
processes must stop cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from p1_reader.spool import read_all
from tests.support import free_port
from tests.support.served_chain import (
    ADMIN,
    E_EAN,
    E_ID,
    G_EAN,
    G_ID,
    STRANGER_GAS_ID,
    STRANGER_ID,
    UTC,
    Proc,
    eventually,
    expected,
    process_env,
    readings,
    run_cli,
    stored,
    telegram_of,
    with_bad_crc,
)

# --- the pseudo-terminal -------------------------------------------------------------------------


@dataclass
class Pty:
    master: int
    slave: int
    path: str


@pytest.fixture
def pty() -> Iterator[Pty]:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no CR/LF translation
    os.set_blocking(master, False)
    yield Pty(master, slave, os.ttyname(slave))
    for fd in (master, slave):
        os.close(fd)


CHUNKS = (1, 7, 13, 61, 3, 255, 29, 2, 97)


async def write_chunked(master: int, data: bytes) -> None:
    """Write ``data`` into the pty master in odd-sized pieces, as a slow UART would."""
    pos, k = 0, 0
    while pos < len(data):
        piece = data[pos : pos + CHUNKS[k % len(CHUNKS)]]
        k += 1
        try:
            written = os.write(master, piece)
        except BlockingIOError:
            written = 0
        pos += written
        await asyncio.sleep(0.002 if written else 0.02)


# --- the test ------------------------------------------------------------------------------------


async def test_reader_process_forwards_a_pty_to_the_serving_gateway(
    database_url: str, pool: asyncpg.Pool, pty: Pty, workdir: Path
) -> None:
    env = process_env(database_url)
    start = (dt.datetime.now(UTC) - dt.timedelta(days=30)).date().isoformat()

    # the operator registers the connections and the device (the CLI talks to the database)
    added = await asyncio.gather(
        *(
            run_cli(
                [
                    "-m",
                    "gateway",
                    "admin",
                    "meters",
                    "add",
                    "--ean",
                    ean,
                    "--commodity",
                    kind,
                    "--meter-id",
                    meter,
                    "--customer-id",
                    "cust-e2e",
                    "--contract-start",
                    start,
                ],
                env,
                workdir,
            )
            for ean, kind, meter in ((E_EAN, "electricity", E_ID), (G_EAN, "gas", G_ID))
        )
    )
    assert [(a["ean"], a["meter_id"], a["level"]) for a in added] == [
        (E_EAN, E_ID, "daily"),
        (G_EAN, G_ID, "daily"),
    ]
    device = await run_cli(
        ["-m", "gateway", "admin", "devices", "add", "--meter-id", E_ID, "--meter-id", G_ID],
        env,
        workdir,
    )
    assert device["meter_ids"] == [E_ID, G_ID] and len(device["token"]) >= 20

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spool_dir = workdir / "spool"
    serve = await Proc.start(
        "serve",
        ["-m", "gateway", "serve", "--port", str(port), "--data-dir", str(workdir / "var")],
        env,
        workdir,
    )
    forwarder: Proc | None = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def ready() -> bool:
                try:
                    async with http.get(base + "/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False  # not listening yet

            await eventually(ready, "serve answers /readyz", procs=[serve])

            forwarder = await Proc.start(
                "forward",
                [
                    "-m",
                    "p1_reader",
                    "forward",
                    "--port",
                    pty.path,
                    "--profile",
                    "dsmr4",
                    "--gateway",
                    base,
                    f"--token={device['token']}",
                    "--spool-dir",
                    str(spool_dir),
                    "--send-all",
                    "--batch-size",
                    "4",
                    "--batch-interval",
                    "200ms",
                    "--backoff-initial",
                    "100ms",
                    "--backoff-max",
                    "1s",
                ],
                env,
                workdir,
            )
            fwd = forwarder
            # bytes written before the port is open would be flushed by the open
            await eventually(
                lambda: f"opened {pty.path}" in fwd.stderr, "forwarder opens the pty", procs=[fwd]
            )

            rs = readings(10)
            # the earliest telegram has a bad CRC (dropped by the reader) and the second comes
            # from a meter this device may not report for (rejected by the gateway): storing
            # either would change the day/month rows checked below
            stream = (
                b"\x00garbage before the first telegram\r\n"
                + with_bad_crc(telegram_of(rs[0]))
                + telegram_of(rs[1], STRANGER_ID, STRANGER_GAS_ID)
                + b"".join(telegram_of(r) for r in rs[2:])
            )
            await write_chunked(pty.master, stream)

            want = expected(rs[2:])

            async def arrived() -> bool:
                return await stored(pool) == want

            await eventually(arrived, "readings stored", procs=[serve, fwd])
            # the stranger's telegram was answered too (after the last reading's batch at worst)
            await eventually(
                lambda: "meter-not-bound" in fwd.stderr, "rejection logged", procs=[serve, fwd]
            )

            # the admin API of the serving process sees the connection
            async with http.get(
                f"{base}/v1/admin/meters/{E_EAN}", headers={"Authorization": f"Bearer {ADMIN}"}
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["meter_id"] == E_ID

        assert await forwarder.stop() == 0, forwarder.stderr
        assert await serve.stop() == 0, serve.stderr
    finally:
        for proc in (forwarder, serve):
            if proc is not None and proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    await proc.kill()

    # nothing left behind: everything read was delivered and acknowledged
    assert read_all(spool_dir) == []
    fwd_log = forwarder.stderr
    assert "stopping" in fwd_log
    assert "bad-crc" in fwd_log  # the reader dropped the corrupted telegram itself
    assert fwd_log.count("gateway rejected telegram") == 1
    assert "Traceback" not in fwd_log and "Traceback" not in serve.stderr
    # the gateway's structured log: one JSON object per line
    for line in serve.err:
        assert isinstance(json.loads(line), dict), line
    # privacy: neither log carries telegram content
    for text in (fwd_log, serve.stderr):
        assert "96.1.1" not in text and "kWh" not in text and "/XMX5" not in text
    # and no other table got anything (no interval consent: no PT15M/PT1H rows)
    assert await pool.fetchval("SELECT count(*) FROM readings_e_pt15m") == 0
    assert await pool.fetchval("SELECT count(*) FROM readings_g_pt1h") == 0
    assert await stored(pool) == expected(rs[2:])
