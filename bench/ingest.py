"""End-to-end ingest benchmarks B2 and B3 (SPEC §6), each beside a reference from the same run.

B2  batched pushes: 100 telegrams per request, 10 000 meters (≈80 % with gas), 30 % with interval
    consent, 10-s telegram cadence; every acknowledged reading durable (the gateway answers only
    after its group commit). Figures: telegrams/s and request latency p50/p99.
    Target ≥ 40 000 telegrams/s, p99 ≤ 100 ms.
B3  one telegram per request, gateway requests/s ÷ a bare aiohttp POST handler (reads the body,
    answers a small JSON) driven by the same client with the same bodies. Target ≥ 0.50.
    Like with like: the gateway in one process, as `python -m gateway serve` runs by default,
    against the bare handler in one process. With --gateway-procs N > 1 (B2's default: both
    cores), a one-process gateway is started for B3 and first takes the last window of B2's
    bodies, untimed, so that it has seen every meter as a serving process has; B3 is then also
    run against the N-process gateway and N bare processes and printed below. (Two gateway
    processes and the load generator on two cores contend for them: the gateway's CPU per
    request rises by half there, the bare handler's far less. And each process learns on its
    own which readings are stored (BestCache): a telegram reaching a process that has not seen
    its meter in the period is offered to the database, so that figure also moves with how
    the kernel spread B2's connections over the processes.)
    The telegrams' times start at a quarter hour, so B2 and B3 lie in one period whatever the
    time of the run: a single telegram commits only for a meter the process has not seen in it.

The gateway logs as `serve` does (JSON lines on stderr, one access-log line per request; here
into a file in the bench's temp dir): that is part of what a request costs in production.

The bench starts PostgreSQL (embedded, in a temp dir; or DATABASE_URL), migrates, seeds the
registry, devices and consents directly in SQL, runs the gateway (create_app) and the bare
reference server in their own processes, and drives load from another process with aiohttp.
Devices are concentrators of 25 meters: a 100-telegram body holds 40 s of 25 meters' telegrams.

    python bench/ingest.py [--meters 10000] [--requests 1500] [--single 3000] [--concurrency 4]
                           [--gateway-procs 2] [--registry 2000000]

``--registry N`` adds N more registered connections (a contract and a meter each, no device, as
bench/registry.py seeds them) that push nothing: B5's third part, "B2 within 10 % of its
10 000-connection figure" with 2 million connections in every gateway process's index. Compare
with a run without it.

Besides the rates, it prints the CPU time per telegram of the gateway processes, PostgreSQL and
the load generator (from /proc), which hold on a machine shared with other work, and the rate
those costs would allow on the whole machine. With few keep-alive connections the kernel's
SO_REUSEPORT hash can give one gateway process more of them than the other: expect run-to-run
spread with --gateway-procs 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from pydantic import SecretStr

# this checkout first, as bench/storage.py: the in-place compiled parser (scripts/build-mypyc)
# has its runtime module at the root, and the gateway processes import the parser from here
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.settings import Settings  # noqa: E402
from gateway.storage import db  # noqa: E402
from gateway.tokens import hash_token  # noqa: E402

METERS_PER_DEVICE = 25
TELEGRAMS_PER_METER_PER_BODY = 4  # 25 × 4 = 100 telegrams per request
ADMIN = "bench-admin-token"


def ean_of(index: int, gas: bool) -> str:
    from consent.ean import ean_check_digit

    body = f"87{1 if gas else 0}6{index:013d}"
    return body + str(ean_check_digit(body))


def device_token(group: int) -> str:
    return f"bench-device-token-{group:06d}-0123456789abcdef"


# --- server processes ---------------------------------------------------------------------------


def bare_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"accepted": 1 if body else 0, "rejected": []})

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/v1/telegrams", handler)
    return app


async def serve(kind: str, dsn: str, port: int) -> None:
    if kind == "gateway":
        from gateway.api.app import create_app

        settings = Settings(
            database_url=SecretStr(dsn),
            admin_token=SecretStr(ADMIN),
            max_body_bytes=4 * 1024 * 1024,
            pool_min_size=2,
            pool_max_size=8,
        )
        from gateway.cli.serve import configure_logging

        configure_logging(settings.log_level)  # as `serve`: the access log is part of the cost
        app = create_app(settings)
    else:
        app = bare_app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # several gateway processes share the port (what `serve --workers N` does)
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_port=True)
    await site.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await stop.wait()
    await runner.cleanup()


def start_server(kind: str, dsn: str, port: int, log: Path) -> subprocess.Popen[str]:
    """Start a server process; its stderr (the gateway's JSON log lines) goes to ``log``."""
    with log.open("a") as stderr:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--dsn", dsn, "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{kind} server did not start: {line!r}\n{tail}")
    return proc


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- seeding ------------------------------------------------------------------------------------


async def seed(dsn: str, meters: int, consent_fraction: float) -> None:
    from p1_reader.simulate import make_meters

    conn = await db.connect(dsn)
    try:
        sims = make_meters(meters, gas_fraction=0.8)
        start = time.time() - 400 * 86400
        from datetime import UTC, datetime

        contract_start = datetime.fromtimestamp(start, UTC)
        granted = datetime.fromtimestamp(start + 86400, UTC)
        rng = random.Random(7)
        connections: list[tuple[Any, ...]] = []
        consents: list[tuple[Any, ...]] = []
        for sim in sims:
            e = ean_of(sim.index, False)
            connections.append((e, "electricity", sim.meter_id, f"c{sim.index}", contract_start))
            with_consent = rng.random() < consent_fraction
            if with_consent:
                consents.append(
                    (e, uuid.uuid4(), f"c{sim.index}", "dynamic-tariff-billing", "v1", "api",
                     granted)
                )
            if sim.gas_id:
                g = ean_of(sim.index, True)
                connections.append((g, "gas", sim.gas_id, f"c{sim.index}", contract_start))
                if with_consent:
                    consents.append(
                        (g, uuid.uuid4(), f"c{sim.index}", "dynamic-tariff-billing", "v1", "api",
                         granted)
                    )
        await conn.copy_records_to_table(
            "connections", records=[c[:2] for c in connections], columns=["ean", "commodity"]
        )
        await conn.copy_records_to_table(
            "contracts",
            records=[(c[0], c[3], c[4]) for c in connections],
            columns=["ean", "customer_id", "contract_start"],
        )
        await conn.copy_records_to_table(
            "meter_installations",
            records=[(c[0], c[1], c[2], c[4]) for c in connections],
            columns=["ean", "commodity", "meter_id", "installed_from"],
        )
        contract_of = {r["ean"]: r["contract_id"] for r in await conn.fetch(
            "SELECT ean, contract_id FROM contracts"
        )}
        await conn.copy_records_to_table(
            "consents",
            records=[(*c, contract_of[c[0]]) for c in consents],
            columns=["ean", "consent_id", "customer_id", "purpose", "notice_version", "channel",
                     "granted_at", "contract_id"],
        )
        devices = []
        for group in range((meters + METERS_PER_DEVICE - 1) // METERS_PER_DEVICE):
            ids: list[str] = []
            for sim in sims[group * METERS_PER_DEVICE : (group + 1) * METERS_PER_DEVICE]:
                ids.append(sim.meter_id)
                if sim.gas_id:
                    ids.append(sim.gas_id)
            devices.append((hash_token(device_token(group)), ids))
        await conn.executemany(
            "INSERT INTO devices (token_hash, meter_ids) VALUES ($1, $2)", devices
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


# --- CPU accounting (machine-load independent figures) ------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of a live process, from /proc; None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _children(parent: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _proc_stat(int(name))
            if stat is not None and stat[0] == parent:
                out.append(int(name))
    return out


class CpuMeter:
    """CPU seconds spent by the gateway processes, PostgreSQL (postmaster and its children)
    and this load generator between ``start`` and ``stop``: per-telegram costs that hold on a
    machine shared with other work, where a rate alone does not."""

    def __init__(self, gateway_pids: list[int], postmaster: int) -> None:
        self.gateway_pids = gateway_pids
        self.postmaster = postmaster

    def _sample(self) -> dict[int, float]:
        pids = list(self.gateway_pids)
        if self.postmaster:
            pids += [self.postmaster, *_children(self.postmaster)]
        out = {}
        for pid in pids:
            stat = _proc_stat(pid)
            if stat is not None:
                out[pid] = stat[1]
        return out

    def start(self) -> None:
        self._before = self._sample()
        self._self_before = time.process_time()

    def stop(self) -> dict[str, float]:
        after = self._sample()
        gateway = sum(after.get(p, 0.0) - self._before.get(p, 0.0) for p in self.gateway_pids)
        postgres = sum(
            v - self._before.get(p, 0.0) for p, v in after.items() if p not in self.gateway_pids
        )
        return {
            "cpu_gateway_s": gateway,
            "cpu_postgres_s": postgres if self.postmaster else float("nan"),
            "cpu_driver_s": time.process_time() - self._self_before,
        }


# --- load driver (its own process) --------------------------------------------------------------


def make_bodies(
    meters: int, requests: int, single: int, t0: int
) -> tuple[list[tuple[int, int, bytes]], list[tuple[int, bytes]]]:
    """B2 bodies (group, telegram count, body) and B3 single telegrams (group, telegram)."""
    from p1_reader.simulate import make_meters

    sims = make_meters(meters, gas_fraction=0.8)
    groups = (meters + METERS_PER_DEVICE - 1) // METERS_PER_DEVICE
    step = {s.index: 0 for s in sims}
    batched: list[tuple[int, int, bytes]] = []
    window = 0
    while len(batched) < requests:
        for group in range(groups):
            if len(batched) >= requests:
                break
            parts = []
            for sim in sims[group * METERS_PER_DEVICE : (group + 1) * METERS_PER_DEVICE]:
                for _ in range(TELEGRAMS_PER_METER_PER_BODY):
                    parts.append(sim.telegram_at(t0 + sim.phase + 10 * step[sim.index]))
                    step[sim.index] += 1
            batched.append((group, len(parts), b"".join(parts)))
        window += 1
    singles: list[tuple[int, bytes]] = []
    while len(singles) < single:
        for group in range(groups):
            for sim in sims[group * METERS_PER_DEVICE : (group + 1) * METERS_PER_DEVICE]:
                if len(singles) >= single:
                    break
                singles.append((group, sim.telegram_at(t0 + sim.phase + 10 * step[sim.index])))
                step[sim.index] += 1
    return batched, singles


async def drive(
    url: str,
    bodies: list[tuple[int, int, bytes]],
    concurrency: int,
    cpu: CpuMeter | None = None,
) -> dict[str, Any]:
    latencies: list[float] = []
    telegrams = 0
    errors: dict[int, int] = {}
    queue = list(reversed(bodies))
    connector = TCPConnector(limit=concurrency)
    async with ClientSession(connector=connector, timeout=ClientTimeout(total=60)) as session:

        async def worker() -> None:
            nonlocal telegrams
            while queue:
                group, count, body = queue.pop()
                headers = {
                    "Authorization": f"Bearer {device_token(group)}",
                    "Content-Type": "text/plain",
                }
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
                latencies.append(time.perf_counter() - started)
                if status == 200:
                    telegrams += count
                else:
                    errors[status] = errors.get(status, 0) + 1

        if cpu is not None:
            cpu.start()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        used = cpu.stop() if cpu is not None else {}
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "telegrams": telegrams,
        "elapsed_s": elapsed,
        "telegrams_per_s": telegrams / elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": errors,
        **{k: v / max(telegrams, 1) * 1e6 for k, v in used.items()},  # µs per telegram
    }


def driver_main(args: argparse.Namespace) -> None:
    # three hours ago, at the start of a quarter hour: B2's stream (150 s at the defaults) and
    # B3's telegrams right after it lie in one quarter hour, hour and day, whatever the time of
    # the run. A boundary between them made a run's single telegrams start new periods for
    # every meter, and B3 measured commits for most requests in some runs and none in others.
    t0 = (int(time.time()) - 3 * 3600) // 900 * 900
    procs = args.gateway_procs
    # B3 runs twice when the gateway runs several processes: each run gets its own meters
    batched, singles = make_bodies(args.meters, args.requests, args.single * min(procs, 2), t0)
    single_bodies = [(g, 1, b) for g, b in singles]
    one, many = single_bodies[: args.single], single_bodies[args.single :]
    ports = dict(kind_port.split(":") for kind_port in args.targets.split(","))
    pids = {kind: [int(p) for p in value.split(",") if p] for kind, value in args.pids.items()}

    def run(kind: str, bodies: list[tuple[int, int, bytes]], timed: bool = True) -> dict[str, Any]:
        """Drive the ``kind`` server with ``bodies``; ``timed``: with its CPU (and, for a
        gateway, PostgreSQL's) measured."""
        url = f"http://127.0.0.1:{ports[kind]}/v1/telegrams"
        postgres = args.postmaster if kind.startswith("gateway") else 0
        meter = CpuMeter(pids[kind], postgres) if timed else None
        return asyncio.run(drive(url, bodies, args.concurrency, meter))

    out: dict[str, Any] = {"b2_gateway": run("gateway", batched)}
    if procs > 1:
        # B3 with both servers in one process. The single-process gateway takes the last
        # window of B2's bodies first (untimed, nothing new to store): it has then seen every
        # meter in its current period, as a process that has been serving them has, so a
        # single telegram commits only when it starts a new period (1 in 90 at this cadence)
        groups = (args.meters + METERS_PER_DEVICE - 1) // METERS_PER_DEVICE
        run("gateway1", batched[-groups:], timed=False)
        out["b3_gateway"] = run("gateway1", one)
        out["b3_gateway_n"] = run("gateway", many)
        out["b3_bare_n"] = run("bare_n", many)
    else:
        out["b3_gateway"] = run("gateway", one)
    out["b3_bare"] = run("bare", one)
    out["b2_bare"] = run("bare", batched[: len(batched) // 3], timed=False)
    print(json.dumps(out), flush=True)


# --- orchestration ------------------------------------------------------------------------------


def parser_build() -> str:
    """Which telegram parser the gateway processes import: the optional compiled build
    (``scripts/build-mypyc``) or the pure-Python one."""
    from parse import compiled  # bench/parse.py, which tells the builds apart for B1

    from p1_reader import parser

    return "compiled (mypyc)" if compiled(parser) else "pure Python"


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description="B2/B3 ingest benchmarks")
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1500, help="B2 requests (100 telegrams)")
    parser.add_argument("--single", type=int, default=3000, help="B3 single-telegram requests")
    # 4 requests in flight: the same throughput as 8 here, with half the queueing latency
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--consent-fraction", type=float, default=0.3)
    parser.add_argument(
        "--registry",
        type=int,
        default=0,
        help="more registered connections that push nothing (B5: B2 with 2 000 000)",
    )
    parser.add_argument(
        "--gateway-procs",
        type=int,
        default=2,
        help="gateway processes sharing the port (SO_REUSEPORT; what `serve --workers N` runs)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--targets", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    # the driver's server pids by kind: "gateway=1,2;gateway1=3;bare=4;bare_n=5,6"
    parser.add_argument(
        "--pids",
        type=lambda text: dict(part.split("=") for part in text.split(";")),
        default={},
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--postmaster", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        profile = os.environ.get("BENCH_PROFILE")  # a path: cProfile the server into it
        if profile and args.serve == "gateway":
            import cProfile

            cProfile.runctx(
                "asyncio.run(serve(args.serve, args.dsn or '', args.port))",
                globals(),
                {"args": args},
                f"{profile}.{os.getpid()}",
            )
        else:
            asyncio.run(serve(args.serve, args.dsn or "", args.port))
        return
    if args.drive:
        driver_main(args)
        return

    external = os.environ.get("DATABASE_URL")
    tmp = tempfile.mkdtemp(prefix="meterpoort-bench-")
    os.chmod(tmp, 0o755)  # the embedded server may run as its own user
    server: db.EmbeddedPostgres | None = None
    if external:
        base = external
    else:
        server = db.EmbeddedPostgres(Path(tmp))
        base = server.start()
    procs: list[subprocess.Popen[str]] = []
    name = f"meterpoort_bench_{os.getpid()}"
    try:
        dsn = asyncio.run(_create_database(base, name, args))
        # kind → (server, processes): the gateway as measured for B2 (--gateway-procs) and the
        # bare handler in one process; with several gateway processes, also a one-process
        # gateway and a bare handler with as many processes, so that B3 compares like with like
        servers = {"gateway": ("gateway", args.gateway_procs), "bare": ("bare", 1)}
        if args.gateway_procs > 1:
            servers["gateway1"] = ("gateway", 1)
            servers["bare_n"] = ("bare", args.gateway_procs)
        ports = {kind: free_port() for kind in servers}
        pids: dict[str, list[int]] = {}
        for kind, (program, count) in servers.items():
            for _ in range(count):
                procs.append(start_server(program, dsn, ports[kind], Path(tmp) / f"{kind}.log"))
                pids.setdefault(kind, []).append(procs[-1].pid)
        print(
            f"seeded {args.meters} meters, {args.consent_fraction:.0%} interval consent"
            + (f", {args.registry:,} silent connections besides" if args.registry else "")
            + ";"
            f" driving {args.requests} × 100-telegram and {args.single} × 1-telegram requests,"
            f" concurrency {args.concurrency}, {args.gateway_procs} gateway process(es)"
            f" (cores: {os.cpu_count()}); parser: {parser_build()}",
            flush=True,
        )
        result = subprocess.run(
            [sys.executable, __file__, "--drive",
             "--targets", ",".join(f"{kind}:{port}" for kind, port in ports.items()),
             "--meters", str(args.meters),
             "--requests", str(args.requests), "--single", str(args.single),
             "--concurrency", str(args.concurrency), "--gateway-procs", str(args.gateway_procs),
             "--pids", ";".join(f"{kind}={','.join(map(str, p))}" for kind, p in pids.items()),
             "--postmaster", str(_postmaster_pid(Path(tmp)) if server is not None else 0)],
            capture_output=True, text=True, check=True,
        )
        out = json.loads(result.stdout.strip().splitlines()[-1])
        rows = asyncio.run(_count_rows(dsn))
        _report(out, rows)
    finally:
        for proc in procs:
            stop_server(proc)
        try:
            asyncio.run(_drop_database(base, name))
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"note: could not drop the bench database {name}: {exc}", file=sys.stderr)
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _postmaster_pid(tmp: Path) -> int:
    """The embedded server's postmaster pid (first line of postmaster.pid), 0 if unknown."""
    try:
        return int((tmp / "pg" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


async def _create_database(base: str, name: str, args: argparse.Namespace) -> str:
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_database(base, name)
    conn = await db.connect(dsn)
    try:
        settings = Settings(database_url=SecretStr(dsn))
        await db.prepare_database(conn, settings)
    finally:
        await conn.close()
    await seed(dsn, args.meters, args.consent_fraction)
    if args.registry:
        started = time.perf_counter()
        await seed_registry(dsn, args.registry)
        print(
            f"added {args.registry:,} silent connections in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    return dsn


async def seed_registry(dsn: str, count: int) -> None:
    """``count`` more connections, as bench/registry.py seeds them (B5)."""
    from registry import add_connections  # bench/ is this script's first sys.path entry

    conn = await db.connect(dsn)
    try:
        await add_connections(conn, count)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def _drop_database(base: str, name: str) -> None:
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _count_rows(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            t: await conn.fetchval(f"SELECT count(*) FROM {t}")
            for t in ("readings_e_pt15m", "readings_e_p1d", "readings_e_p1m",
                      "readings_g_pt1h", "readings_g_p1d", "readings_g_p1m")
        }
    finally:
        await conn.close()


def _report(out: dict[str, Any], rows: dict[str, int]) -> None:
    b2 = out["b2_gateway"]
    print(
        f"B2 gateway, 100 telegrams/request: {b2['telegrams_per_s']:,.0f} telegrams/s,"
        f" p50 {b2['p50_ms']:.1f} ms, p99 {b2['p99_ms']:.1f} ms,"
        f" {b2['requests']} requests, errors {b2['errors']}"
        f"   [target ≥ 40 000/s, p99 ≤ 100 ms]"
    )
    cpu = [b2[k] for k in ("cpu_gateway_s", "cpu_postgres_s", "cpu_driver_s")]
    known = sum(c for c in cpu if c == c)  # NaN: an external PostgreSQL, not measured
    ceiling = (os.cpu_count() or 1) / known * 1e6 if known else float("nan")
    print(
        f"   CPU per telegram: gateway {cpu[0]:.1f} µs, PostgreSQL {cpu[1]:.1f} µs,"
        f" load generator {cpu[2]:.1f} µs → ceiling if this run had the machine to itself:"
        f" {ceiling:,.0f} telegrams/s"
    )
    ref = out["b2_bare"]
    print(
        f"   reference: bare aiohttp POST, same bodies: {ref['telegrams_per_s']:,.0f} telegrams/s,"
        f" p99 {ref['p99_ms']:.1f} ms"
    )
    b3, bare = out["b3_gateway"], out["b3_bare"]
    ratio = b3["requests_per_s"] / bare["requests_per_s"]
    print(
        f"B3 gateway in one process (as `serve` runs by default), 1 telegram/request:"
        f" {b3['requests_per_s']:,.0f} req/s (p50 {b3['p50_ms']:.2f} ms, p99"
        f" {b3['p99_ms']:.1f} ms); bare aiohttp POST handler, one process:"
        f" {bare['requests_per_s']:,.0f} req/s (p50 {bare['p50_ms']:.2f} ms)"
        f" → ratio {ratio:.2f}   [target ≥ 0.50]"
    )
    print(
        f"   CPU per single-telegram request: gateway {b3['cpu_gateway_s']:.0f} µs,"
        f" PostgreSQL {b3['cpu_postgres_s']:.0f} µs, load generator {b3['cpu_driver_s']:.0f} µs;"
        f" the bare handler's server {bare['cpu_gateway_s']:.0f} µs"
    )
    if "b3_gateway_n" in out:
        b3n, baren = out["b3_gateway_n"], out["b3_bare_n"]
        print(
            f"   with the B2 gateway's processes and as many bare ones: gateway"
            f" {b3n['requests_per_s']:,.0f} req/s (p99 {b3n['p99_ms']:.1f} ms), bare"
            f" {baren['requests_per_s']:,.0f} req/s → ratio"
            f" {b3n['requests_per_s'] / baren['requests_per_s']:.2f}; CPU per request: gateway"
            f" {b3n['cpu_gateway_s']:.0f} µs, PostgreSQL {b3n['cpu_postgres_s']:.0f} µs,"
            f" load generator {b3n['cpu_driver_s']:.0f} µs, bare {baren['cpu_gateway_s']:.0f} µs"
        )
    print("rows stored:", ", ".join(f"{k}={v}" for k, v in rows.items()))


if __name__ == "__main__":
    main()
