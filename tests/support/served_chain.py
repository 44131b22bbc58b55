"""The served chain the end-to-end tests drive: processes (``Proc``, ``run_cli``), the
environment they run in (``process_env``), telegrams of known readings and what the database
must then hold (``readings``, ``telegram_of``, ``expected``, ``stored``). Shared by the
pseudo-terminal, network-source and TLS end-to-end tests; the ``workdir`` fixture they run in
lives in ``tests/e2e/conftest.py``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from p1_reader.crc import crc16_arc, format_crc
from p1_reader.encode import GasReading, format_telegram
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
