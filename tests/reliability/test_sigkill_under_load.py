"""SPEC §6: the gateway killed (SIGKILL) under sustained batched ingest.

``python -m gateway serve --workers 2`` (real processes, the test's database) takes batches of
100 telegrams from several devices at once. One worker is SIGKILLed mid-stream (the supervisor
replaces it), then the whole process group. Every batch answered 200 must be in the database;
after a restart, the devices resend what was not acknowledged, and the database then holds
exactly the rows of everything sent: one row per period, the earliest measured reading.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import psutil
import pytest

from tests.support import free_port
from tests.support.fleet import Household, expected_rows, missing, register, stored_rows
from tests.support.load import NO_ANSWER, Load

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "sigkill-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HOUSEHOLDS = [Household(n, interval=n % 2 == 0) for n in range(1, 7)]


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Outside pytest's tmp tree (concurrent pytest sessions prune it)."""
    path = Path(tempfile.mkdtemp(prefix="meterpoort-sigkill-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_serve(
    database_url: str, workdir: Path, port: int, workers: int
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERPOORT_")}
    env |= {
        "DATABASE_URL": database_url,
        "METERPOORT_ADMIN_TOKEN": ADMIN_TOKEN,
        "METERPOORT_RETENTION_ENABLED": "false",
        "METERPOORT_SHUTDOWN_DRAIN_S": "0",  # no load balancer to wait for
        "METERPOORT_WEBHOOK_ENABLED": "false",
        "METERPOORT_POOL_MAX_SIZE": "4",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    }
    args = ["--port", str(port), "--workers", str(workers), "--data-dir", str(workdir / "var")]
    # its own session: killing the group takes the supervisor and its workers, not pytest
    with open(workdir / "serve.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", *args],
            env=env,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )


async def wait_ready(base: str, proc: subprocess.Popen[bytes], limit_s: float = 60) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            assert proc.poll() is None, "serve exited early"
            try:
                async with http.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("serve did not become ready")


def workers_of(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The serving workers (spawned children; the multiprocessing resource tracker excluded)."""
    children = psutil.Process(proc.pid).children()
    return [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]


@pytest.mark.slow
async def test_every_acknowledged_reading_survives_sigkill(
    database_url: str, pool: asyncpg.Pool, workdir: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = start_serve(database_url, workdir, port, workers=2)
    try:
        await wait_ready(base, serve)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        since = now - dt.timedelta(days=30)
        async with aiohttp.ClientSession() as http:
            tokens = await register(http, base, ADMIN, HOUSEHOLDS, since=since)
        # every worker must know the new connections before the load starts (NOTIFY)
        await asyncio.sleep(1.0)
        load = Load(base, HOUSEHOLDS, tokens, start=since + dt.timedelta(hours=1), pause_s=0.0)
        load.begin(probe_ready=False)
        await asyncio.sleep(2.0)

        load.phase = "one worker killed"
        workers = workers_of(serve)
        assert len(workers) == 2, workers
        workers[0].kill()
        await asyncio.sleep(3.0)
        assert serve.poll() is None
        replaced = workers_of(serve)
        assert workers[0].pid not in {w.pid for w in replaced}

        load.phase = "all killed"
        os.killpg(serve.pid, signal.SIGKILL)
        serve.wait(timeout=10)
        await asyncio.sleep(1.0)
        await load.end()
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=10)
    acked = [o for o in load.pushes() if o.status == 200]
    assert len(acked) >= 20, "too little load to prove anything"
    assert any(o.status == 200 for o in load.pushes("one worker killed"))
    statuses = {o.status for o in load.pushes()}
    assert statuses <= {200, 503, NO_ANSWER}, statuses

    # every acknowledged reading is in the database, with nothing running any more
    assert missing(load.acknowledged, await stored_rows(pool)) == []
    checked = len(load.acknowledged)
    requests = len(load.pushes())
    unanswered = sum(o.status != 200 for o in load.pushes())

    # the devices resend what was not acknowledged to a restarted gateway
    serve = start_serve(database_url, workdir, port, workers=1)
    try:
        await wait_ready(base, serve)
        retried = await load.retry_unacknowledged()
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
    stored = await stored_rows(pool)
    assert stored == expected_rows(load.sent)
    print(
        f"\nSIGKILL under load: {requests} requests of 100 telegrams, "
        f"{len(acked)} acknowledged before the kill ({checked} telegrams checked), "
        f"{unanswered} unanswered or 503; "
        f"{retried} batches resent; {sum(len(r) for r in stored.values())} rows, one per period"
    )
