"""Consent propagation across gateway processes (SPEC §4, issue 14): how long after a grant or a
revocation made through one gateway process another one applies it to its consent index, beside
the same run's bare PostgreSQL NOTIFY round trip (the floor any LISTEN-based scheme sits on).

Starts PostgreSQL (embedded, in a temp dir; or DATABASE_URL), seeds ``--connections``
connections with a contract and a meter each, starts two ``python -m gateway serve`` processes on
one database (A and B), then makes ``--changes`` consent changes through A's admin API, one at a
time: a grant, then its revocation, over ``--eans`` rotating connections. The answering process
applies each change before it answers (SPEC §4); B learns of it from the NOTIFY (LISTEN), with
the change-log catch-up as the safety net.

B publishes the time of the newest consent grant or end its index has loaded and when its latest
reload was applied (``meterpoort_consent_index_*_timestamp_seconds``, gateway/metrics.py). A
change recorded at T (its granted_at / ended_at) has reached B once B shows a newest change at or
after T; its latency is B's applied time minus T. /metrics is polled every ``--poll-ms`` (the
error bound of each figure). The same is printed for A's response (response received minus T:
what the answering process costs, the index reload before the answer included).

    python bench/consent_propagation.py [--connections 10000] [--changes 400] [--eans 50]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from gateway.storage import db

REPO = Path(__file__).resolve().parents[1]
ADMIN = "bench-propagation-admin-token-0123456789"
NEWEST = "meterpoort_consent_index_newest_change_timestamp_seconds "
APPLIED = "meterpoort_consent_index_applied_timestamp_seconds "


def ean_of(n: int) -> str:
    """An 18-digit EAN with a valid GS1 check digit."""
    body = f"8719{n:013d}"
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {p50 * 1000:7.2f} ms   p99 {p99 * 1000:7.2f} ms   (n={len(ordered)})"


async def seed(url: str, count: int) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    eans = [ean_of(i) for i in range(count)]
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "connections",
                records=[(e, "electricity") for e in eans],
                columns=["ean", "commodity"],
            )
            await conn.copy_records_to_table(
                "contracts",
                records=[(e, f"cust-{i}", start) for i, e in enumerate(eans)],
                columns=["ean", "customer_id", "contract_start"],
            )
            await conn.copy_records_to_table(
                "meter_installations",
                records=[(e, "electricity", f"P{i:08d}", start) for i, e in enumerate(eans)],
                columns=["ean", "commodity", "meter_id", "installed_from"],
            )
    finally:
        await conn.close()


async def start_serve(
    env: dict[str, str], http: aiohttp.ClientSession
) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port),
        env=env, cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if process.returncode is not None:
            raise SystemExit(f"gateway on port {port} exited with {process.returncode}")
        try:
            async with http.get(f"{base}/readyz") as resp:
                if resp.status == 200:
                    return process, base
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit("gateway not ready within 60 s")


async def gauges(http: aiohttp.ClientSession, base: str) -> tuple[float, float]:
    """(newest change loaded, applied at) of one process's consent index."""
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    newest = applied = 0.0
    for line in text.splitlines():
        if line.startswith(NEWEST):
            newest = float(line.split()[1])
        elif line.startswith(APPLIED):
            applied = float(line.split()[1])
    return newest, applied


async def until_applied(
    http: aiohttp.ClientSession, base: str, change_at: float, poll_s: float
) -> float:
    """Poll B until its index shows a change at or after ``change_at``; the latency."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        newest, applied = await gauges(http, base)
        if newest >= change_at:
            return applied - change_at
        await asyncio.sleep(poll_s)
    raise SystemExit("B did not apply a change within 30 s")


async def notify_round_trips(url: str, count: int) -> list[float]:
    """The floor: a bare NOTIFY from one connection to a LISTENing other, committed each."""
    listener = await asyncpg.connect(url)
    sender = await asyncpg.connect(url)
    got: asyncio.Queue[float] = asyncio.Queue()
    await listener.add_listener("bench_rtt", lambda *_: got.put_nowait(time.perf_counter()))
    out: list[float] = []
    try:
        for _ in range(count):
            sent = time.perf_counter()
            await sender.execute("NOTIFY bench_rtt, 'x'")
            out.append(await got.get() - sent)
    finally:
        await listener.close()
        await sender.close()
    return out


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="meterpoort-bench-propagation-"))
    embedded = None
    url = os.environ.get("DATABASE_URL")
    name = f"meterpoort_bench_propagation_{os.getpid()}"
    processes: list[asyncio.subprocess.Process] = []
    try:
        if url is None:
            embedded = db.EmbeddedPostgres(tmp)
            url = await asyncio.to_thread(embedded.start)
        admin = await asyncpg.connect(url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        parts = urlsplit(url)
        bench_url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
        env = {
            **os.environ,
            "DATABASE_URL": bench_url,
            "METERPOORT_DATA_DIR": str(tmp / "var"),
            "METERPOORT_ADMIN_TOKEN": ADMIN,
            "METERPOORT_RETENTION_ENABLED": "false",
            "METERPOORT_WEBHOOK_ENABLED": "false",
            "METERPOORT_SHUTDOWN_DRAIN_S": "0",
            "PYTHONPATH": str(REPO),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each process its own gauges
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with aiohttp.ClientSession() as http:
            process, base_a = await start_serve(env, http)  # migrates the database
            processes.append(process)
            await seed(bench_url, args.connections)
            process, base_b = await start_serve(env, http)
            processes.append(process)
            # A learns of the seed from its LISTEN; let both settle before measuring
            await asyncio.sleep(1.0)

            to_b: list[float] = []
            to_answer: list[float] = []
            open_consents: dict[int, str] = {}
            for i in range(args.changes):
                slot = (i // 2) % args.eans
                if slot not in open_consents:
                    body = {
                        "ean": ean_of(slot),
                        "customer_id": f"cust-{slot}",
                        "purpose": "dynamic-tariff-billing",
                        "notice_version": "v1",
                    }
                    async with http.post(
                        f"{base_a}/v1/admin/consents", json=body, headers=headers
                    ) as resp:
                        answered = time.time()
                        data = await resp.json()
                        assert resp.status == 201, data
                    open_consents[slot] = data["consent_id"]
                    change_at = dt.datetime.fromisoformat(data["granted_at"]).timestamp()
                else:
                    consent_id = open_consents.pop(slot)
                    async with http.post(
                        f"{base_a}/v1/admin/consents/{consent_id}/end",
                        json={"reason": "revoked"},
                        headers=headers,
                    ) as resp:
                        answered = time.time()
                        data = await resp.json()
                        assert resp.status == 200, data
                    change_at = dt.datetime.fromisoformat(data["ended_at"]).timestamp()
                to_answer.append(answered - change_at)
                to_b.append(await until_applied(http, base_b, change_at, args.poll_ms / 1000))
            rtt = await notify_round_trips(bench_url, args.changes)

        print(
            f"consent propagation, {args.connections:,} connections, {args.changes} changes "
            f"(grants and revocations through A), /metrics polled every {args.poll_ms} ms"
        )
        print(f"  other process (B) applied : {percentiles(to_b)}")
        print(f"  answering process (A)     : {percentiles(to_answer)}   (response received)")
        print(f"  bare NOTIFY round trip    : {percentiles(rtt)}   (reference)")
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
                await process.wait()
        if url is not None:
            admin = await asyncpg.connect(url)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=400)
    parser.add_argument("--eans", type=int, default=50, help="connections the changes rotate over")
    parser.add_argument("--poll-ms", type=float, default=2.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
