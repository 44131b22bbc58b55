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
import shutil
import signal
import socket
import sys
import tempfile
import tty
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest

from p1_reader.crc import crc16_arc, format_crc
from p1_reader.encode import GasReading, format_telegram
from p1_reader.spool import read_all
from tests.support import leak_audit, make_ean

REPO = Path(__file__).resolve().parents[2]
AMS = ZoneInfo("Europe/Amsterdam")
UTC = dt.UTC
ADMIN = "e2e-admin-token-0123456789abcdef"
STEP = 20.0  # generous per-step limit on a loaded 2-core machine; the test takes a few seconds

E_ID, G_ID = "E0031415926", "G0027182818"
STRANGER_ID, STRANGER_GAS_ID = "E0016180339", "G0014142135"  # not bound to the device


E_EAN, G_EAN = make_ean(201), make_ean(202)


# --- processes -----------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process whose output is collected as it comes (pipes never fill up)."""

    name: str
    process: asyncio.subprocess.Process
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, name: str, args: list[str], env: dict[str, str], cwd: Path) -> Proc:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        proc = cls(name, process)
        assert process.stdout is not None and process.stderr is not None
        proc.pumps = [
            asyncio.create_task(_pump(process.stdout, proc.out)),
            asyncio.create_task(_pump(process.stderr, proc.err)),
        ]
        return proc

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self, sig: int = signal.SIGTERM, limit: float = STEP) -> int:
        """Send ``sig`` (if still running) and wait for the exit and the end of its output."""
        if self.alive():
            self.process.send_signal(sig)
        async with asyncio.timeout(limit):
            code = await self.process.wait()
            await asyncio.gather(*self.pumps)
        leak_audit.add_output(self.name, self.stderr)
        return code

    async def kill(self) -> None:
        if self.alive():
            self.process.kill()
        await self.process.wait()
        await asyncio.gather(*self.pumps)
        leak_audit.add_output(self.name, self.stderr)


async def _pump(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode("utf-8", errors="replace"))


async def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run a one-shot CLI command; it must succeed and print one JSON object."""
    proc = await Proc.start(" ".join(args[1:5]), args, env, cwd)
    code = await _wait(proc)
    assert code == 0, f"{' '.join(args)} failed ({code}): {proc.stderr}"
    assert len(proc.out) == 1, proc.out
    result: dict[str, Any] = json.loads(proc.out[0])
    if isinstance(result.get("token"), str):
        # minted in the child: no log line of the session may hold it either
        leak_audit.add_secret(result["token"])
    return result


async def _wait(proc: Proc) -> int:
    async with asyncio.timeout(STEP):
        code = await proc.process.wait()
        await asyncio.gather(*proc.pumps)
    return code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def eventually(
    predicate: Callable[[], Any], what: str, *, limit: float = STEP, procs: Iterable[Proc] = ()
) -> None:
    """Poll ``predicate`` (sync or async) until it is true; fail early if a process died."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        for proc in procs:
            assert proc.alive(), f"{proc.name} exited early ({proc.process.returncode}):\n" + (
                proc.stderr
            )
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {limit} s")


# --- telegrams and expected rows -----------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    t: dt.datetime
    registers: tuple[int, int, int, int]
    captured: dt.datetime
    volume_dm3: int


def readings(count: int) -> list[Reading]:
    """One reading per 40 s, the last a minute before now (the gateway checks its clock)."""
    last = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    out = []
    for i in range(count):
        t = last - dt.timedelta(seconds=40 * (count - 1 - i))
        captured = t.replace(minute=t.minute - t.minute % 5, second=0)
        out.append(
            Reading(
                t,
                (5_000_000 + 13 * i, 6_000_000 + 5 * i, 700 + i, 800 + 2 * i),
                captured,
                4_000_000 + int(captured.timestamp()) // 300 % 100_000,
            )
        )
    return out


def telegram_of(r: Reading, meter_id: str = E_ID, gas_id: str = G_ID) -> bytes:
    i1, i2, e1, e2 = r.registers
    return format_telegram(
        meter_id=meter_id,
        timestamp=r.t,
        import_t1_wh=i1,
        import_t2_wh=i2,
        export_t1_wh=e1,
        export_t2_wh=e2,
        power_w=2718,
        gas=GasReading(measured_at=r.captured, volume_dm3=r.volume_dm3, meter_id=gas_id),
    )


def with_bad_crc(telegram: bytes) -> bytes:
    frame = telegram[: telegram.rindex(b"!") + 1]
    return frame + format_crc(crc16_arc(frame) ^ 0x0F0F).encode("ascii") + b"\r\n"


def day_start(t: dt.datetime) -> dt.datetime:
    local = t.astimezone(AMS)
    return dt.datetime(local.year, local.month, local.day, tzinfo=AMS).astimezone(UTC)


def month_start(t: dt.datetime) -> dt.datetime:
    local = t.astimezone(AMS)
    return dt.datetime(local.year, local.month, 1, tzinfo=AMS).astimezone(UTC)


def earliest(
    items: Iterable[tuple[dt.datetime, tuple[int, ...]]],
    ean: str,
    start_of: Callable[[dt.datetime], dt.datetime],
) -> set[tuple[Any, ...]]:
    best: dict[dt.datetime, tuple[dt.datetime, tuple[int, ...]]] = {}
    for t, values in items:
        start = start_of(t)
        if start not in best or t < best[start][0]:
            best[start] = (t, values)
    return {(int(ean), start, t, *values) for start, (t, values) in best.items()}


TABLES = ("readings_e_p1d", "readings_e_p1m", "readings_g_p1d", "readings_g_p1m")


def expected(rs: list[Reading]) -> dict[str, set[tuple[Any, ...]]]:
    e = [(r.t, r.registers) for r in rs]
    g = [(r.captured, (r.volume_dm3,)) for r in rs]
    return {
        "readings_e_p1d": earliest(e, E_EAN, day_start),
        "readings_e_p1m": earliest(e, E_EAN, month_start),
        "readings_g_p1d": earliest(g, G_EAN, day_start),
        "readings_g_p1m": earliest(g, G_EAN, month_start),
    }


async def stored(pool: asyncpg.Pool) -> dict[str, set[tuple[Any, ...]]]:
    out = {}
    for table in TABLES:
        rows = await pool.fetch(f"SELECT * FROM {table}")
        # changed_xid (the writing transaction, for sync pulls) is no reading value
        out[table] = {tuple(v for k, v in r.items() if k != "changed_xid") for r in rows}
    return out


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


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Where the processes run (no stray ``.env`` from the checkout; spool and data dir inside).
    Outside pytest's tmp tree: concurrent pytest sessions prune that tree."""
    path = Path(tempfile.mkdtemp(prefix="meterpoort-e2e-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def process_env(database_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METERPOORT_", "P1_READER_")) and k != "DATABASE_URL"
    }
    env["DATABASE_URL"] = database_url
    env["METERPOORT_ADMIN_TOKEN"] = ADMIN
    env["METERPOORT_SHUTDOWN_DRAIN_S"] = "0"  # no load balancer to wait for
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


async def test_reader_process_forwards_a_pty_to_the_serving_gateway(
    database_url: str, pool: asyncpg.Pool, pty: Pty, workdir: Path
) -> None:
    env = process_env(database_url)
    start = (dt.datetime.now(UTC) - dt.timedelta(days=30)).date().isoformat()

    # the operator registers the connections and the device (the CLI talks to the database)
    added = await asyncio.gather(
        *(
            run_cli(
                ["-m", "gateway", "admin", "meters", "add", "--ean", ean, "--commodity", kind,
                 "--meter-id", meter, "--customer-id", "cust-e2e", "--contract-start", start],
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
                ["-m", "p1_reader", "forward", "--port", pty.path, "--profile", "dsmr4",
                 "--gateway", base, f"--token={device['token']}", "--spool-dir", str(spool_dir),
                 "--send-all", "--batch-size", "4", "--batch-interval", "200ms",
                 "--backoff-initial", "100ms", "--backoff-max", "1s"],
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
