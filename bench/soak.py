"""Soak run (SPEC §6): the gateway under half the B2 rate for a long time, with retention and
exports running, must hold its memory, database connections and file descriptors flat.

The B2 setup of ``bench/ingest.py`` (its seeding and its 100-telegram bodies of 25-meter
concentrators, 10-s telegram cadence, 30 % interval consent): ``python -m gateway serve
--workers N`` (the real entry point, its in-process retention job every ``--retention-every``
seconds) on an embedded PostgreSQL (or DATABASE_URL), driven at ``--rate`` telegrams/s (default
half the B2 target of 40 000/s); meanwhile, every ``--export-every`` seconds, a billing system
pulls the interval readings as NDJSON and a customer downloads her export, and every
``--retention-every`` seconds ``python -m gateway retention run`` runs beside the job (its output
shows what each run found). The resident memory (RSS), open file descriptors of every gateway
process and the database connections of the gateway (pg_stat_activity) are sampled after a
warm-up, a few times during the run and at the end; the verdict compares end with start
(flat: end ≤ start × 1.2 + a small slack).

    python bench/soak.py [--minutes 30] [--rate 20000] [--meters 10000] [--gateway-procs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any

import asyncpg
import ingest as b2  # bench/ingest.py, beside this script: the B2 setup
from aiohttp import ClientSession, ClientTimeout, TCPConnector

from gateway.cli.token import mint_dev_token
from gateway.storage import db
from p1_reader.simulate import make_meters

B2_TARGET = 40_000
#: slack on top of "end ≤ start × 1.2" per figure: allocator and pool granularity
SLACK = {"rss_mib": 16.0, "fds": 8, "db_connections": 2}


@dataclass
class Sample:
    at_s: float
    rss_mib: float
    fds: int
    db_connections: int
    pids: list[int]


@dataclass
class Tally:
    telegrams: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)
    pulls: int = 0
    pulled_rows: int = 0
    exports: int = 0
    retention_runs: list[dict[str, Any]] = field(default_factory=list)


# --- gateway processes --------------------------------------------------------------------------


def gateway_pids(serve: int) -> list[int]:
    """The serve supervisor and its worker processes (not multiprocessing's helpers)."""
    workers = []
    for pid in b2._children(serve):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(pid)
    return [serve, *sorted(workers)]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def sample(serve: int, admin: asyncpg.Connection, started: float) -> Sample:
    pids = gateway_pids(serve)
    conns = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    )
    return Sample(
        time.monotonic() - started,
        sum(rss_mib(p) for p in pids),
        sum(len(os.listdir(f"/proc/{p}/fd")) for p in pids),
        conns,
        pids,
    )


# --- load ---------------------------------------------------------------------------------------


async def drive(
    base: str, meters: int, rate: float, until: float, concurrency: int, tally: Tally
) -> None:
    """B2 bodies at ``rate`` telegrams/s (paced; slower if the machine cannot keep up)."""
    sims = make_meters(meters, gas_fraction=0.8)
    per = b2.METERS_PER_DEVICE
    groups = [(g, sims[g * per : (g + 1) * per]) for g in range((meters + per - 1) // per)]
    # as many hours back as the run needs at this rate (a meter sends every 10 s)
    duration = until - time.monotonic()
    t0 = int(time.time() - rate / meters * 10 * duration - 3600)
    steps = {s.index: 0 for s in sims}
    order = cycle(groups)
    interval = 100 / rate
    next_at = time.monotonic()

    def body() -> tuple[int, int, bytes]:
        group, members = next(order)
        parts = []
        for sim in members:
            for _ in range(b2.TELEGRAMS_PER_METER_PER_BODY):
                parts.append(sim.telegram_at(t0 + sim.phase + 10 * steps[sim.index]))
                steps[sim.index] += 1
        return group, len(parts), b"".join(parts)

    async with ClientSession(
        connector=TCPConnector(limit=concurrency), timeout=ClientTimeout(total=60)
    ) as http:

        async def worker() -> None:
            nonlocal next_at
            while (now := time.monotonic()) < until:
                next_at = max(next_at + interval, now - 1.0)  # no burst after a stall
                await asyncio.sleep(max(0.0, next_at - now))
                group, count, data = body()
                headers = {
                    "Authorization": f"Bearer {b2.device_token(group)}",
                    "Content-Type": "text/plain",
                }
                started = time.perf_counter()
                async with http.post(f"{base}/v1/telegrams", data=data, headers=headers) as resp:
                    await resp.read()
                tally.latencies.append(time.perf_counter() - started)
                if resp.status == 200:
                    tally.telegrams += count
                else:
                    tally.errors[resp.status] = tally.errors.get(resp.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def exports(
    base: str,
    client_token: str,
    customers: list[str],
    data_dir: Path,
    every: float,
    until: float,
    tally: Tally,
) -> None:
    """A billing pull of all interval readings (NDJSON) and a customer's export, every ``every``
    seconds."""
    frm = (dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).date()
    to = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date()
    who = cycle(customers)
    async with ClientSession(timeout=ClientTimeout(total=600)) as http:
        while time.monotonic() + every < until:
            await asyncio.sleep(every)
            headers = {"Authorization": f"Bearer {client_token}", "Accept": "application/x-ndjson"}
            url = f"{base}/v1/readings?granularity=PT15M&from={frm}&to={to}"
            async with http.get(url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                async for _line in resp.content:
                    tally.pulled_rows += 1
            tally.pulls += 1
            jwt = mint_dev_token(data_dir, next(who), "meterpoort", dt.timedelta(minutes=5))
            async with http.get(
                f"{base}/v1/me/export", headers={"Authorization": f"Bearer {jwt}"}
            ) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            tally.exports += 1


async def retention(
    env: dict[str, str], every: float, until: float, lock: asyncio.Lock, tally: Tally
) -> None:
    """``python -m gateway retention run`` every ``every`` seconds, beside the in-process job."""
    while time.monotonic() + every < until:
        await asyncio.sleep(every)
        async with lock:  # not while connections are counted: this process is not the gateway
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "retention",
                "run",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            out, _ = await proc.communicate()
        tally.retention_runs.append(json.loads(out) if proc.returncode == 0 else {"failed": True})


async def soak(
    args: argparse.Namespace, dsn: str, env: dict[str, str], base: str, serve: int, data_dir: Path
) -> tuple[list[Sample], Tally]:
    tally = Tally()
    started = time.monotonic()
    until = started + args.minutes * 60
    warmup = min(30.0, args.minutes * 6)  # pools and caches at working size before "start"
    admin = await asyncpg.connect(dsn)
    lock = asyncio.Lock()
    samples: list[Sample] = []
    try:
        customers = [
            r["customer_id"]
            for r in await admin.fetch(
                "SELECT customer_id FROM consents ORDER BY customer_id LIMIT 20"
            )
        ]
        async with ClientSession() as http:
            resp = await http.post(
                f"{base}/v1/admin/clients",
                json={
                    "name": "soak-billing",
                    "granularities": ["P1D", "PT15M"],
                    "purposes": ["dynamic-tariff-billing"],
                },
                headers={"Authorization": f"Bearer {b2.ADMIN}"},
            )
            assert resp.status == 201, await resp.text()
            client_token = (await resp.json())["token"]
        work = asyncio.gather(
            drive(base, args.meters, args.rate, until, args.concurrency, tally),
            exports(base, client_token, customers, data_dir, args.export_every, until, tally),
            retention(env, args.retention_every, until, lock, tally),
        )
        await asyncio.sleep(warmup)
        moments = [
            warmup + (args.minutes * 60 - warmup - 5) * i / args.samples
            for i in range(args.samples + 1)
        ]
        for moment in moments:
            await asyncio.sleep(max(0.0, started + moment - time.monotonic()))
            async with lock:
                samples.append(await sample(serve, admin, started))
            s = samples[-1]
            print(
                f"  t={s.at_s:6.0f} s  RSS {s.rss_mib:7.1f} MiB  fds {s.fds:4d}"
                f"  db connections {s.db_connections:3d}  ({len(s.pids)} processes,"
                f" {tally.telegrams:,} telegrams so far)",
                flush=True,
            )
        await work
    finally:
        await admin.close()
    return samples, tally


def report(samples: list[Sample], tally: Tally, args: argparse.Namespace, elapsed: float) -> bool:
    lat = sorted(tally.latencies) or [0.0]

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

    print(
        f"load: {tally.telegrams:,} telegrams in {elapsed:.0f} s ="
        f" {tally.telegrams / elapsed:,.0f}/s (asked {args.rate:,.0f}/s), request p50"
        f" {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, errors {tally.errors}"
    )
    found = [r for r in tally.retention_runs if r.get("ran")]
    print(
        f"exports: {tally.pulls} billing NDJSON pulls ({tally.pulled_rows:,} rows),"
        f" {tally.exports} customer exports; retention: {len(tally.retention_runs)} CLI runs"
        f" ({len(found)} ran, the others found the job's lock), in-process job every"
        f" {args.retention_every:g} s"
    )
    first, last = samples[0], samples[-1]
    flat = True
    for name, slack in SLACK.items():
        a, b = getattr(first, name), getattr(last, name)
        ok = b <= a * 1.2 + slack
        flat &= ok
        print(
            f"{name}: start {a:,.1f}, end {b:,.1f} ({'flat' if ok else 'GREW'};"
            f" limit {a * 1.2 + slack:,.1f})"
        )
    if first.pids[1:] != last.pids[1:]:
        print(f"note: worker processes changed: {first.pids} → {last.pids}")
    print("verdict:", "flat" if flat else "NOT flat")
    return flat and not tally.errors


def main() -> None:
    parser = argparse.ArgumentParser(description="soak run: flat RSS, connections and fds")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=B2_TARGET / 2, help="telegrams/s")
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--consent-fraction", type=float, default=0.3)
    parser.add_argument("--gateway-procs", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--samples", type=int, default=6, help="samples after the warm-up")
    parser.add_argument("--export-every", type=float, default=30.0)
    parser.add_argument("--retention-every", type=float, default=60.0)
    args = parser.parse_args()

    external = os.environ.get("DATABASE_URL")
    tmp = Path(tempfile.mkdtemp(prefix="meterpoort-soak-"))
    os.chmod(tmp, 0o755)  # the embedded server may run as its own user
    server = None if external else db.EmbeddedPostgres(tmp)
    base_url = external or server.start()  # type: ignore[union-attr]
    name = f"meterpoort_soak_{os.getpid()}"
    serve: subprocess.Popen[bytes] | None = None
    ok = False
    try:
        dsn = asyncio.run(b2._create_database(base_url, name, args))
        data_dir = tmp / "var"
        mint_dev_token(data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
        port = b2.free_port()
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "METERPOORT_DATA_DIR": str(data_dir),
            "METERPOORT_ADMIN_TOKEN": b2.ADMIN,
            "METERPOORT_DEV_MODE": "1",
            "METERPOORT_MAX_BODY_BYTES": str(4 * 1024 * 1024),
            "METERPOORT_POOL_MAX_SIZE": "8",
            "METERPOORT_RETENTION_RUN_EVERY_S": str(args.retention_every),
            "METERPOORT_RETENTION_FIRST_RUN_DELAY_S": "10",
        }
        log_path = tmp / "serve.log"
        with log_path.open("wb") as log:
            serve = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--port",
                    str(port),
                    "--workers",
                    str(args.gateway_procs),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        base = f"http://127.0.0.1:{port}"
        asyncio.run(wait_ready(base, serve))
        print(
            f"soak: {args.minutes:g} min at {args.rate:,.0f} telegrams/s, {args.meters} meters"
            f" ({args.consent_fraction:.0%} interval consent), {args.gateway_procs} worker(s);"
            f" exports every {args.export_every:g} s, retention every"
            f" {args.retention_every:g} s (cores: {os.cpu_count()})",
            flush=True,
        )
        started = time.monotonic()
        samples, tally = asyncio.run(soak(args, dsn, env, base, serve.pid, data_dir))
        ok = report(samples, tally, args, time.monotonic() - started)
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
        problems = [
            line
            for line in log_path.read_text().splitlines()
            if '"level": "ERROR"' in line or "Traceback" in line
        ]
        print(
            f"gateway log: {len(problems)} error lines"
            + "".join(f"\n  {line[:200]}" for line in problems[:5])
        )
        ok &= not problems
    finally:
        if serve is not None and serve.poll() is None:
            serve.kill()
            serve.wait()
        try:
            asyncio.run(b2._drop_database(base_url, name))
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"note: could not drop the soak database {name}: {exc}", file=sys.stderr)
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if ok else 1)


async def wait_ready(base: str, serve: subprocess.Popen[bytes]) -> None:
    async with ClientSession() as http:
        for _ in range(600):
            if serve.poll() is not None:
                raise RuntimeError(f"serve exited with {serve.returncode}")
            try:
                async with http.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("serve did not become ready within 60 s")


if __name__ == "__main__":
    main()
